//! Drill of a Postgres base backup: restore it into a new data directory, start a cluster on a
//! free loopback port (no Unix socket, no archiving), let it recover to the end of the
//! archived WAL and promote, then connect and run the configured queries, comparing each with
//! the figure the backup recorded. The cluster is stopped (`-m immediate`) afterwards.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use resilience_core::catalog::BackupRecord;
use resilience_core::drill::DrillCheck;
use resilience_core::ops::restore::RestoreOptions;
use resilience_core::repo::Repository;
use resilience_pg::archive::WalArchive;
use resilience_pg::base::BaseBackupInfo;
use resilience_pg::recovery::{self, RecoveryOptions, RecoveryTarget, StartOptions, TargetAction};
use resilience_pg::{check, cluster};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use super::{chain, free_port, Drilled, QUERY_ERROR_LABEL, QUERY_LABEL};
use crate::config::{Compare, DaemonConfig, QueryCheck, SourceConfig};
use crate::{commands, daemon, CliError};

/// How long recovery of the scratch cluster may take.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(3600);

async fn connect(config: &tokio_postgres::Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "drill connection ended");
        }
    });
    Ok(client)
}

/// The single value `sql` returns, as text (`NULL` for a null).
async fn value(client: &Client, sql: &str) -> Result<String, String> {
    let messages = client
        .simple_query(sql)
        .await
        .map_err(|e| resilience_pg::describe(&e))?;
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap_or("NULL").to_owned()),
            _ => None,
        })
        .ok_or_else(|| "the query returned no row".to_owned())
}

/// Runs each configured query against the source and returns the labels to record.
pub(crate) async fn backup_figures(
    source: &SourceConfig,
) -> Result<BTreeMap<String, String>, CliError> {
    let dsn = source
        .dsn
        .as_deref()
        .ok_or_else(|| CliError::Usage(format!("source {}: `dsn` is missing", source.name)))?;
    let mut labels = BTreeMap::new();
    if source.drill.queries.is_empty() {
        return Ok(labels);
    }
    // The source's own connection rules: libpq sslmode up to verify-full, client certificates.
    let client = match resilience_pg::connect::connect(dsn).await {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(source = %source.name, error = %e, "cannot connect to take the drill figures");
            for q in &source.drill.queries {
                labels.insert(
                    format!("{QUERY_ERROR_LABEL}{}", q.name),
                    format!("cannot connect: {e}"),
                );
            }
            None
        }
    };
    if let Some(client) = client {
        for q in &source.drill.queries {
            match value(&client, &q.sql).await {
                Ok(v) => {
                    labels.insert(format!("{QUERY_LABEL}{}", q.name), v);
                }
                Err(e) => {
                    tracing::warn!(source = %source.name, query = %q.name, error = %e, "drill figure not taken");
                    labels.insert(format!("{QUERY_ERROR_LABEL}{}", q.name), e);
                }
            }
        }
    }
    Ok(labels)
}

/// Compares a query's result on the copy with the figure of the backup.
fn compare(q: &QueryCheck, record: &BackupRecord, found: Result<String, String>) -> DrillCheck {
    let name = format!("query:{}", q.name);
    let Some(figure) = record.labels.get(&format!("{QUERY_LABEL}{}", q.name)) else {
        let why = record
            .labels
            .get(&format!("{QUERY_ERROR_LABEL}{}", q.name))
            .map(|e| format!(": taking it failed: {e}"))
            .unwrap_or_else(|| {
                ": the backup was not made by a daemon with this query configured".into()
            });
        return DrillCheck::fail(
            name,
            format!(
                "no figure for {:?} in backup {} (label {QUERY_LABEL}{}){why}",
                q.name, record.id, q.name
            ),
        );
    };
    let found = match found {
        Ok(v) => v,
        Err(e) => return DrillCheck::fail(name, format!("{:?} failed on the copy: {e}", q.sql)),
    };
    match q.compare {
        Compare::Equal => {
            let detail = format!("{found} on the copy, {figure} at backup time (equal expected)");
            if found == *figure {
                DrillCheck::pass(name, detail)
            } else {
                DrillCheck::fail(name, detail)
            }
        }
        Compare::AtLeast => match (found.trim().parse::<f64>(), figure.trim().parse::<f64>()) {
            (Ok(f), Ok(b)) => {
                let detail =
                    format!("{found} on the copy, {figure} at backup time (at least expected)");
                if f >= b {
                    DrillCheck::pass(name, detail)
                } else {
                    DrillCheck::fail(name, detail)
                }
            }
            _ => DrillCheck::fail(
                name,
                format!(
                    "compare = at_least needs numbers: {found:?} on the copy, {figure:?} at \
                     backup time"
                ),
            ),
        },
    }
}

/// Restores `record` into `scratch/pgdata`, recovers it and checks it.
pub(crate) async fn drill(
    repo: &Repository,
    config: &DaemonConfig,
    source: &SourceConfig,
    record: &BackupRecord,
    scratch: &Path,
) -> Drilled {
    let pgdata = scratch.join("pgdata");
    let mut checks = Vec::new();
    let mut newest = None;
    let started =
        prepare_and_start(repo, config, source, record, scratch, &pgdata, &mut checks).await;
    if let Some((port, user, stop_time)) = started {
        newest = Some(stop_time);
        let checked = check(source, record, port, &user, &mut checks).await;
        if let Some(t) = checked {
            newest = Some(t);
        }
    }
    let drilled = Drilled::new(checks, newest);
    stop(&pgdata).await;
    drilled
}

/// Restores, writes the settings, starts and recovers; on success returns the port, the user
/// to connect as and the backup's stop time.
async fn prepare_and_start(
    repo: &Repository,
    config: &DaemonConfig,
    source: &SourceConfig,
    record: &BackupRecord,
    scratch: &Path,
    pgdata: &Path,
    checks: &mut Vec<DrillCheck>,
) -> Option<(u16, String, chrono::DateTime<chrono::Utc>)> {
    let fail = |checks: &mut Vec<DrillCheck>, name: &str, detail: String| {
        checks.push(DrillCheck::fail(name, detail));
        None
    };
    let Some(info) = BaseBackupInfo::from_metadata(&record.source_metadata) else {
        return fail(
            checks,
            "restore",
            format!("backup {} carries no base backup metadata", record.id),
        );
    };
    let plan = match plan(repo, &info, record).await {
        Ok(p) => p,
        Err(e) => return fail(checks, "wal", chain(&e)),
    };
    let g = daemon::repository_options(config, false);
    let restore_command = match commands::pg::restore_command(&g, &info.wal_source) {
        Ok(c) => c,
        Err(e) => return fail(checks, "restore", e.to_string()),
    };
    let port = match free_port() {
        Ok(p) => p,
        Err(e) => return fail(checks, "restore", e.to_string()),
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
    };
    match recovery::prepare(repo, &plan, pgdata, &options).await {
        Ok(r) => checks.push(DrillCheck::pass(
            "restore",
            format!(
                "base backup {} ({} bytes, ends at {} / {}) restored in {:.1} s, every blob's \
                 checksum verified",
                record.id,
                r.bytes,
                info.stop_lsn,
                info.stop_time.to_rfc3339(),
                r.duration.as_secs_f64()
            ),
        )),
        Err(e) => return fail(checks, "restore", chain(&e)),
    }
    if let Err(e) = scratch_settings(scratch, pgdata) {
        return fail(checks, "recovery", e);
    }
    let user = match source
        .dsn
        .as_deref()
        .and_then(|d| d.parse::<tokio_postgres::Config>().ok())
        .and_then(|c| c.get_user().map(str::to_owned))
    {
        Some(u) => u,
        None => match commands::pg::owner_name(pgdata) {
            Ok(u) => u,
            Err(e) => return fail(checks, "recovery", e.to_string()),
        },
    };
    let start = StartOptions {
        bindir: cluster::find_bindir(None),
        port,
        user: user.clone(),
        timeout: RECOVERY_TIMEOUT,
    };
    match recovery::start(pgdata, &start, TargetAction::Promote).await {
        Ok(outcome) => {
            checks.push(DrillCheck::pass(
                "recovery",
                format!(
                    "consistent and promoted on 127.0.0.1:{port} in {:.1} s: replayed to LSN {} \
                     (last commit {}), now on timeline {}",
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
                chain(&e),
                recovery::log_path(pgdata).display()
            ),
        ),
    }
}

/// The recovery plan for this very backup, to the end of the archived WAL.
async fn plan(
    repo: &Repository,
    info: &BaseBackupInfo,
    record: &BackupRecord,
) -> Result<recovery::RecoveryPlan, resilience_pg::PgError> {
    let wal = WalArchive::new(repo, &info.wal_source)?;
    let newest = recovery::plan(repo, &wal, &RecoveryTarget::Latest, "latest").await?;
    if newest.backup.record.id == record.id {
        return Ok(newest);
    }
    // An older backup: the plan that ends at its stop picks it (and checks its WAL).
    let plan = recovery::plan(repo, &wal, &RecoveryTarget::Lsn(info.stop_lsn), "latest").await?;
    if plan.backup.record.id != record.id {
        let known = check::base_backups(repo, &info.wal_source).await?;
        return Err(resilience_pg::PgError::Invalid(format!(
            "backup {} is not among the {} base backup(s) of WAL archive {:?}",
            record.id,
            known.len(),
            info.wal_source
        )));
    }
    Ok(plan)
}

/// The scratch cluster listens on loopback only, without a Unix socket (the original's socket
/// directory may be in use), and the scratch directory lets its owner reach the data
/// directory.
fn scratch_settings(scratch: &Path, pgdata: &Path) -> Result<(), String> {
    let conf = pgdata.join("postgresql.auto.conf");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&conf)
        .map_err(|e| format!("open {}: {e}", conf.display()))?;
    writeln!(
        f,
        "# resilience drill: a scratch copy\nlisten_addresses = '127.0.0.1'\n\
         unix_socket_directories = ''"
    )
    .map_err(|e| format!("write {}: {e}", conf.display()))?;
    cluster::chown_like(scratch, pgdata).map_err(|e| e.to_string())
}

/// Connects and runs the queries; returns the last commit the copy holds, when it says.
async fn check(
    source: &SourceConfig,
    record: &BackupRecord,
    port: u16,
    user: &str,
    checks: &mut Vec<DrillCheck>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    let original: Option<tokio_postgres::Config> =
        source.dsn.as_deref().and_then(|d| d.parse().ok());
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .dbname(
            original
                .as_ref()
                .and_then(|c| c.get_dbname())
                .unwrap_or("postgres"),
        )
        .connect_timeout(Duration::from_secs(10));
    if let Some(p) = original.as_ref().and_then(|c| c.get_password()) {
        config.password(p);
    }
    let client = match connect(&config).await {
        Ok(c) => c,
        Err(e) => {
            checks.push(DrillCheck::fail(
                "connect",
                format!(
                    "the copy on 127.0.0.1:{port} refuses connections: {}",
                    resilience_pg::describe(&e)
                ),
            ));
            return None;
        }
    };
    let newest = match client
        .query_one(
            "SELECT pg_is_in_recovery(), pg_last_xact_replay_timestamp()",
            &[],
        )
        .await
    {
        Ok(row) if !row.get::<_, bool>(0) => {
            checks.push(DrillCheck::pass(
                "connect",
                format!("accepts connections on 127.0.0.1:{port}, out of recovery (read-write)"),
            ));
            row.get(1)
        }
        Ok(_) => {
            checks.push(DrillCheck::fail(
                "connect",
                "the copy is still in recovery (not promoted)",
            ));
            None
        }
        Err(e) => {
            checks.push(DrillCheck::fail(
                "connect",
                format!("query failed: {}", resilience_pg::describe(&e)),
            ));
            None
        }
    };
    for q in &source.drill.queries {
        let found = value(&client, &q.sql).await;
        checks.push(compare(q, record, found));
    }
    newest
}

/// Stops the scratch cluster, if it runs: `pg_ctl stop -m immediate` (nothing of it is kept).
async fn stop(pgdata: &Path) {
    if !pgdata.join("postmaster.pid").exists() {
        return;
    }
    let bindir = cluster::find_bindir(None);
    let stopped = match cluster::command_as_owner(&bindir, "pg_ctl", pgdata) {
        Ok(mut cmd) => {
            cmd.arg("stop")
                .arg("-D")
                .arg(pgdata)
                .args(["-m", "immediate", "-w"]);
            cluster::run(cmd, "pg_ctl stop").await.map(|_| ())
        }
        Err(e) => Err(e),
    };
    if let Err(e) = stopped {
        tracing::error!(pgdata = %pgdata.display(), error = %e, "cannot stop the drill's scratch cluster");
    }
}
