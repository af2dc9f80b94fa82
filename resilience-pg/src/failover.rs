//! Postgres' steps of a failover ([`resilience_core::failover`]): fence the old primary where it
//! can be reached, promote the warm standby (or, without one, recover the newest base backup to
//! the end of the repository's WAL), and check the new primary with queries.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use resilience_core::failover::{FailoverStep, StepError, StepOutcome};
use resilience_core::repo::Repository;

use crate::archive::WalArchive;
use crate::base::connect;
use crate::recovery::{self, RecoveryOptions, RecoveryTarget, StartOptions};
use crate::standby;

/// Fences the old primary: where it answers (within its DSN's `connect_timeout`; give one),
/// new transactions become read-only (`default_transaction_read_only`, written with `ALTER
/// SYSTEM` so a restart keeps it) and every other session is ended. An old primary that does
/// not answer (its region is down) is reported, not an error: there is nothing to fence.
pub struct FenceOldPrimary {
    /// The old region's name, for the step's name.
    pub region: String,
    /// Connection to the old primary, as a superuser.
    pub dsn: String,
}

#[async_trait]
impl FailoverStep for FenceOldPrimary {
    fn name(&self) -> String {
        format!("fence postgres in region {}", self.region)
    }

    fn describe(&self) -> String {
        format!(
            "where region {}'s primary answers, make it read-only and end its sessions",
            self.region
        )
    }

    async fn run(&self) -> Result<StepOutcome, StepError> {
        let client = match tokio::time::timeout(Duration::from_secs(10), connect(&self.dsn)).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                return Ok(StepOutcome::done(format!(
                    "the old primary does not answer ({e}): nothing to fence"
                )))
            }
            Err(_) => {
                return Ok(StepOutcome::done(
                    "the old primary did not answer within 10 s: nothing to fence",
                ))
            }
        };
        // One statement at a time (ALTER SYSTEM cannot run in the implicit transaction of a
        // multi-statement query); this session writes even on a primary fenced already.
        for sql in [
            "SET default_transaction_read_only = off",
            "ALTER SYSTEM SET default_transaction_read_only = on",
            "SELECT pg_reload_conf()",
        ] {
            client
                .batch_execute(sql)
                .await
                .map_err(|e| format!("fencing the old primary ({sql}): {}", pg_words(&e)))?;
        }
        let ended: i64 = client
            .query_one(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE pid <> pg_backend_pid() AND backend_type = 'client backend') t",
                &[],
            )
            .await
            .map_err(|e| format!("ending the old primary's sessions: {}", pg_words(&e)))?
            .get(0);
        Ok(StepOutcome::done(format!(
            "the old primary answers: made read-only, {ended} session(s) ended"
        )))
    }
}

/// Promotes the warm standby in `pgdata` ([`standby::promote`]); the last commit it replayed is
/// the point Postgres is recovered to.
pub struct PromoteStandby {
    /// The standby's data directory.
    pub pgdata: PathBuf,
    /// Its port, user, server programs and how long the promotion may take.
    pub start: StartOptions,
}

#[async_trait]
impl FailoverStep for PromoteStandby {
    fn name(&self) -> String {
        "promote postgres standby".into()
    }

    fn describe(&self) -> String {
        format!(
            "promote the standby in {} (port {}) after it replays the WAL the repository holds",
            self.pgdata.display(),
            self.start.port
        )
    }

    async fn run(&self) -> Result<StepOutcome, StepError> {
        let p = standby::promote(&self.pgdata, &self.start).await?;
        Ok(StepOutcome::done(format!(
            "{} at LSN {}, last commit {}{}",
            if p.already_promoted {
                "promoted earlier"
            } else {
                "promoted"
            },
            p.lsn.map(|l| l.to_string()).unwrap_or_else(|| "?".into()),
            p.commit_time
                .map(|t| t.to_rfc3339())
                .unwrap_or_else(|| "none replayed".into()),
            p.timeline
                .map(|t| format!(", timeline {t}"))
                .unwrap_or_default()
        ))
        .recovered_to(p.commit_time))
    }
}

/// Without a standby: restores the newest base backup of `source` from the repository into
/// `pgdata` and recovers it to the end of the archived WAL, then starts it (promoted). A data
/// directory that already holds a running, promoted cluster (an earlier run's) is left as is.
pub struct RecoverFromRepository {
    /// The region's repository (the replica).
    pub repo: Repository,
    /// The WAL archive and source name.
    pub source: String,
    /// Where the cluster goes.
    pub pgdata: PathBuf,
    /// Recovery settings (the target is always the end of the archive).
    pub options: RecoveryOptions,
    /// How it is started and watched.
    pub start: StartOptions,
}

#[async_trait]
impl FailoverStep for RecoverFromRepository {
    fn name(&self) -> String {
        "recover postgres from the repository".into()
    }

    fn describe(&self) -> String {
        format!(
            "restore the newest base backup of {} into {} and replay all archived WAL (port {})",
            self.source,
            self.pgdata.display(),
            self.start.port
        )
    }

    async fn run(&self) -> Result<StepOutcome, StepError> {
        let dsn = format!(
            "host=127.0.0.1 port={} user={} dbname=postgres connect_timeout=5",
            self.start.port, self.start.user
        );
        if let Ok(status) = standby::status(&dsn).await {
            if !status.in_recovery && self.pgdata.join("PG_VERSION").exists() {
                return Ok(StepOutcome::done("recovered by an earlier run; running")
                    .recovered_to(status.commit_time));
            }
        }
        let wal = WalArchive::new(&self.repo, &self.source)?;
        let mut options = self.options.clone();
        options.target = RecoveryTarget::Latest;
        let plan =
            recovery::plan(&self.repo, &wal, &options.target, &options.target_timeline).await?;
        recovery::prepare(&self.repo, &plan, &self.pgdata, &options).await?;
        let outcome = recovery::start(&self.pgdata, &self.start, options.action).await?;
        Ok(StepOutcome::done(format!(
            "base backup {} recovered to LSN {} in {:.1} s",
            plan.backup.record.id,
            outcome
                .lsn
                .map(|l| l.to_string())
                .unwrap_or_else(|| "?".into()),
            outcome.recovery_seconds
        ))
        .recovered_to(outcome.commit_time))
    }
}

/// Checks the new primary: it accepts a write, and each query runs (and returns a row).
pub struct CheckPrimary {
    /// Connection to the new primary.
    pub dsn: String,
    /// Named queries, each expected to succeed and return at least one row.
    pub queries: Vec<(String, String)>,
}

#[async_trait]
impl FailoverStep for CheckPrimary {
    fn name(&self) -> String {
        "check postgres".into()
    }

    fn describe(&self) -> String {
        format!(
            "check that the new primary accepts writes and answers {} quer{}",
            self.queries.len(),
            if self.queries.len() == 1 { "y" } else { "ies" }
        )
    }

    async fn run(&self) -> Result<StepOutcome, StepError> {
        let client = connect(&self.dsn).await?;
        let read_only: String = client
            .query_one("SHOW transaction_read_only", &[])
            .await
            .map_err(|e| format!("asking the new primary: {}", pg_words(&e)))?
            .get(0);
        if read_only != "off" {
            return Err("the new primary is read-only (still a standby?)".into());
        }
        let mut answers = Vec::new();
        for (name, sql) in &self.queries {
            let rows = client
                .simple_query(sql)
                .await
                .map_err(|e| format!("check {name}: {}", pg_words(&e)))?;
            let first = rows.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    Some(r.get(0).unwrap_or("NULL").to_owned())
                }
                _ => None,
            });
            match first {
                Some(v) => answers.push(format!("{name} = {v}")),
                None => return Err(format!("check {name} returned no row").into()),
            }
        }
        Ok(StepOutcome::done(if answers.is_empty() {
            "accepts writes".to_owned()
        } else {
            format!("accepts writes; {}", answers.join(", "))
        }))
    }
}

/// The server's own message, where it sent one (tokio-postgres' `Display` says only "db error").
fn pg_words(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    }
}
