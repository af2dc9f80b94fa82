//! The drill of a Postgres base backup ([`PgDrill`]): restore it into a new data directory,
//! start a cluster on a free loopback port (no Unix socket, no archiving), let it recover to the
//! end of the archived WAL and promote, then connect and run the [`DrillQuery`]s, comparing
//! each with the figure the backup recorded ([`backup_figures`]). The cluster is stopped
//! (`-m immediate`) once the drill is measured.
//!
//! ```no_run
//! use resilience_core::drill::{self, DrillOptions};
//! use resilience_pg::drill::{DrillQuery, PgDrill, WalFetch};
//! # async fn demo(repo: resilience_core::repo::Repository) -> Result<(), resilience_core::drill::DrillError> {
//! let pg = PgDrill::new("main", WalFetch::Prefetch)
//!     .with_dsn("host=db.internal user=app dbname=app")
//!     .with_queries(vec![DrillQuery::at_least("jobs", "select count(*) from jobs")]);
//! let report = drill::run(&repo, &pg, None, &DrillOptions::default()).await?;
//! assert!(report.ok, "{:?}", report.failures());
//! # Ok(()) }
//! ```

mod copy;
mod figures;
mod wal;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use resilience_core::catalog::BackupRecord;
use resilience_core::drill::{error_chain, free_loopback_port, Drill, DrillCheck, Drilled};
use resilience_core::ops::restore::RestoreOptions;
use resilience_core::repo::Repository;

pub use figures::{
    backup_figures, Compare, DrillQuery, QueryFigures, QUERY_ERROR_LABEL, QUERY_LABEL,
};
pub use wal::{RestoreCommandFn, WalFetch};

use crate::archive::WalArchive;
use crate::base::BaseBackupInfo;
use crate::error::PgError;
use crate::recovery::{self, RecoveryOptions, RecoveryTarget, StartOptions, TargetAction};
use crate::{check, cluster};
use copy::ScratchCluster;

/// How long recovery of the scratch cluster may take, unless told otherwise.
pub const DEFAULT_RECOVERY_TIMEOUT: Duration = Duration::from_secs(3600);

/// The drill of a Postgres source's base backups: restore, recover to the end of the archived
/// WAL, promote, connect, compare the queries' results with the backup's figures.
#[derive(Clone, Debug)]
pub struct PgDrill {
    source: String,
    wal: WalFetch,
    dsn: Option<String>,
    queries: Vec<DrillQuery>,
    bindir: Option<PathBuf>,
    recovery_timeout: Duration,
}

impl PgDrill {
    /// The drill of the Postgres source `source` (its id in the catalog), whose scratch cluster
    /// fetches WAL as `wal` says.
    pub fn new(source: impl Into<String>, wal: WalFetch) -> Self {
        PgDrill {
            source: source.into(),
            wal,
            dsn: None,
            queries: Vec::new(),
            bindir: None,
            recovery_timeout: DEFAULT_RECOVERY_TIMEOUT,
        }
    }

    /// The original's DSN: the copy is reached as its user, in its database, with its password
    /// (default: the data directory's owner, database `postgres`).
    pub fn with_dsn(mut self, dsn: impl Into<String>) -> Self {
        self.dsn = Some(dsn.into());
        self
    }

    /// The queries run on the copy and compared with the backup's figures.
    pub fn with_queries(mut self, queries: Vec<DrillQuery>) -> Self {
        self.queries = queries;
        self
    }

    /// The directory of the server programs (default: [`cluster::find_bindir`]).
    pub fn with_bindir(mut self, bindir: impl Into<PathBuf>) -> Self {
        self.bindir = Some(bindir.into());
        self
    }

    /// How long recovery of the scratch cluster may take (default
    /// [`DEFAULT_RECOVERY_TIMEOUT`]).
    pub fn with_recovery_timeout(mut self, timeout: Duration) -> Self {
        self.recovery_timeout = timeout;
        self
    }

    /// The queries.
    pub fn queries(&self) -> &[DrillQuery] {
        &self.queries
    }

    fn original(&self) -> Option<tokio_postgres::Config> {
        self.dsn.as_deref().and_then(|d| d.parse().ok())
    }

    /// Restores, writes the settings, starts and recovers; on success returns the port, the
    /// user to connect as and the newest point the copy holds so far (the backup's stop, or the
    /// last commit replayed).
    async fn prepare_and_start(
        &self,
        repo: &Repository,
        record: &BackupRecord,
        scratch: &Path,
        cluster: &ScratchCluster,
        checks: &mut Vec<DrillCheck>,
    ) -> Option<(u16, String, DateTime<Utc>)> {
        let fail = |checks: &mut Vec<DrillCheck>, name: &str, detail: String| {
            checks.push(DrillCheck::fail(name, detail));
            None
        };
        let pgdata = &cluster.pgdata;
        let Some(info) = BaseBackupInfo::from_metadata(&record.source_metadata) else {
            return fail(
                checks,
                "restore",
                format!("backup {} carries no base backup metadata", record.id),
            );
        };
        let plan = match plan(repo, &info, record).await {
            Ok(p) => p,
            Err(e) => return fail(checks, "wal", error_chain(&e)),
        };
        let restore_command = match self.wal.restore_command(&info.wal_source, scratch) {
            Ok(c) => c,
            Err(e) => return fail(checks, "restore", e.to_string()),
        };
        let port = match free_loopback_port() {
            Ok(p) => p,
            Err(e) => {
                return fail(
                    checks,
                    "restore",
                    format!("no free loopback port for the scratch copy: {e}"),
                )
            }
        };
        let options = RecoveryOptions {
            target: RecoveryTarget::Latest,
            action: TargetAction::Promote,
            restore_command,
            target_timeline: "latest".into(),
            port: Some(port),
            archive: false,
            restore: RestoreOptions::default(),
            tablespaces: Default::default(),
            resume: false,
            archive_command: None,
        };
        match recovery::prepare(repo, &plan, pgdata, &options).await {
            Ok(r) => checks.push(DrillCheck::pass(
                "restore",
                format!(
                    "base backup {} ({} bytes, ends at {} / {}) restored in {:.1} s, every \
                     blob's checksum verified",
                    record.id,
                    r.bytes,
                    info.stop_lsn,
                    info.stop_time.to_rfc3339(),
                    r.duration.as_secs_f64()
                ),
            )),
            Err(e) => return fail(checks, "restore", error_chain(&e)),
        }
        if let WalFetch::Prefetch = self.wal {
            match wal::prefetch(repo, &plan, scratch, pgdata).await {
                Ok(f) => checks.push(DrillCheck::pass(
                    "wal",
                    format!(
                        "{} WAL file(s), {} bytes, fetched from archive {:?} up to {}",
                        f.files,
                        f.bytes,
                        info.wal_source,
                        plan.last_segment.as_deref().unwrap_or("-")
                    ),
                )),
                Err(e) => return fail(checks, "wal", error_chain(&e)),
            }
        }
        if let Err(e) = copy::scratch_settings(scratch, pgdata) {
            return fail(checks, "recovery", e.to_string());
        }
        let user = match self
            .original()
            .and_then(|c| c.get_user().map(str::to_owned))
        {
            Some(u) => u,
            None => match copy::owner_name(pgdata) {
                Ok(u) => u,
                Err(e) => return fail(checks, "recovery", e.to_string()),
            },
        };
        let start = StartOptions {
            bindir: cluster.bindir.clone(),
            port,
            user: user.clone(),
            timeout: self.recovery_timeout,
        };
        match recovery::start(pgdata, &start, TargetAction::Promote).await {
            Ok(outcome) => {
                checks.push(DrillCheck::pass(
                    "recovery",
                    format!(
                        "consistent and promoted on 127.0.0.1:{port} in {:.1} s: replayed to \
                         LSN {} (last commit {}), now on timeline {}",
                        outcome.recovery_seconds,
                        outcome
                            .lsn
                            .map(|l| l.to_string())
                            .unwrap_or_else(|| "?".into()),
                        outcome
                            .commit_time
                            .map(|t| t.to_rfc3339())
                            .unwrap_or_else(|| "none replayed".into()),
                        outcome
                            .timeline
                            .map(|t| t.to_string())
                            .unwrap_or_else(|| "?".into())
                    ),
                ));
                Some((
                    port,
                    user,
                    outcome
                        .commit_time
                        .unwrap_or(info.stop_time)
                        .max(info.stop_time),
                ))
            }
            Err(e) => fail(
                checks,
                "recovery",
                format!(
                    "{} (log: {})",
                    error_chain(&e),
                    recovery::log_path(pgdata).display()
                ),
            ),
        }
    }
}

#[async_trait]
impl Drill for PgDrill {
    fn source(&self) -> &str {
        &self.source
    }

    fn kind(&self) -> &str {
        "postgres"
    }

    async fn restore_and_check(
        &self,
        repo: &Repository,
        record: &BackupRecord,
        scratch: &Path,
    ) -> Drilled {
        let cluster = ScratchCluster {
            pgdata: scratch.join("pgdata"),
            bindir: cluster::find_bindir(self.bindir.as_deref()),
        };
        let mut checks = Vec::new();
        let mut newest = None;
        let started = self
            .prepare_and_start(repo, record, scratch, &cluster, &mut checks)
            .await;
        if let Some((port, user, stop_time)) = started {
            newest = Some(stop_time);
            let original = self.original();
            if let Some((client, replayed)) =
                copy::connect_to_copy(original.as_ref(), port, &user, &mut checks).await
            {
                if let Some(t) = replayed {
                    newest = Some(t);
                }
                for q in &self.queries {
                    let found = figures::value(&client, &q.sql).await;
                    checks.push(figures::compare(q, record, found));
                }
            }
        }
        Drilled::new(checks, newest).with_running(Box::new(cluster))
    }
}

/// The recovery plan for this very backup, to the end of the archived WAL.
async fn plan(
    repo: &Repository,
    info: &BaseBackupInfo,
    record: &BackupRecord,
) -> Result<recovery::RecoveryPlan, PgError> {
    let wal = WalArchive::new(repo, &info.wal_source)?;
    let newest = recovery::plan(repo, &wal, &RecoveryTarget::Latest, "latest").await?;
    if newest.backup.record.id == record.id {
        return Ok(newest);
    }
    // An older backup: the plan that ends at its stop picks it (and checks its WAL).
    let plan = recovery::plan(repo, &wal, &RecoveryTarget::Lsn(info.stop_lsn), "latest").await?;
    if plan.backup.record.id != record.id {
        let known = check::base_backups(repo, &info.wal_source).await?;
        return Err(PgError::Invalid(format!(
            "backup {} is not among the {} base backup(s) of WAL archive {:?}",
            record.id,
            known.len(),
            info.wal_source
        )));
    }
    Ok(plan)
}
