//! `pg standby` and `pg promote`: a warm standby fed from a repository, and its promotion.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use resilience_core::ops::progress::Progress;
use resilience_core::ops::restore::RestoreOptions;
use resilience_pg::archive::WalArchive;
use resilience_pg::recovery::{self, RecoveryOptions, RecoveryTarget, StartOptions};
use resilience_pg::{cluster, standby};
use serde_json::json;

use crate::cli::{Global, PgStandbyArgs};
use crate::commands::pg::{owner_name, tablespace_map};
use crate::output::{bytes, print_json, replay_point};
use crate::progress::Bar;
use crate::CliError;
use crate::{access, wal_fetch};

/// Restores the newest base backup as a standby replaying the repository's WAL, starts it, and
/// returns once it replays.
pub async fn standby(g: &Global, args: &PgStandbyArgs) -> Result<(), CliError> {
    let restore_command = wal_fetch::restore_command(g, &args.source)?;
    let archive_command = wal_fetch::archive_command(g, &args.source)?;
    let repo = access::open_throttled(g, args.max_rate).await?;
    let wal = WalArchive::new(&repo, &args.source)?;
    let target = RecoveryTarget::Standby;
    let timeline = recovery::default_timeline(&target).to_owned();
    let plan = recovery::plan(&repo, &wal, &target, &timeline).await?;
    let bar = Bar::new(g.json, "restore", Some(plan.backup.record.logical_bytes));
    let options = RecoveryOptions {
        target,
        action: Default::default(),
        restore_command,
        target_timeline: timeline,
        port: Some(args.port),
        archive: !args.no_archive,
        restore: RestoreOptions {
            progress: bar.clone().map(|b| b as Arc<dyn Progress>),
            memory: g.memory,
            ..Default::default()
        },
        tablespaces: tablespace_map(&args.tablespaces)?,
        resume: args.resume,
        archive_command: Some(archive_command),
    };
    let restored = recovery::prepare(&repo, &plan, &args.pgdata, &options).await;
    if let Some(b) = &bar {
        b.finish();
    }
    let restored = restored?;
    let user = match &args.user {
        Some(u) => u.clone(),
        None => owner_name(&args.pgdata)?,
    };
    let start = StartOptions {
        bindir: cluster::find_bindir(args.pg_bin.as_deref()),
        port: args.port,
        user,
        timeout: Duration::from_secs(args.timeout),
    };
    let replaying = standby::start(&args.pgdata, &start).await?;
    if g.json {
        print_json(&json!({
            "backup": plan.backup.record.id,
            "backup_stop_lsn": plan.backup.info.stop_lsn.to_string(),
            "pgdata": args.pgdata.display().to_string(),
            "port": args.port,
            "bytes": restored.bytes,
            "restore_ms": restored.duration.as_millis() as u64,
            "replaying": {
                "lsn": replaying.lsn.map(|l| l.to_string()),
                "commit_time": replaying.commit_time.map(|t| t.to_rfc3339()),
                "seconds": replaying.recovery_seconds,
            },
        }));
    } else {
        eprintln!(
            "standby of base backup {} ({}) in {} on port {}: replaying, at {}",
            plan.backup.record.id,
            bytes(restored.bytes),
            args.pgdata.display(),
            args.port,
            replay_point(
                replaying.lsn,
                replaying.commit_time,
                None,
                "none replayed yet"
            ),
        );
    }
    Ok(())
}

/// The port a running cluster listens on, from its `postmaster.pid` (fourth line).
fn running_port(pgdata: &Path) -> Result<u16, CliError> {
    let pid_file = pgdata.join("postmaster.pid");
    let text = std::fs::read_to_string(&pid_file).map_err(|e| {
        CliError::Usage(format!(
            "{}: {e} (is the standby running? start it with pg_ctl)",
            pid_file.display()
        ))
    })?;
    text.lines()
        .nth(3)
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| CliError::Usage(format!("{} names no port", pid_file.display())))
}

/// Promotes the standby in `pgdata`.
pub async fn promote(
    g: &Global,
    pgdata: &Path,
    user: Option<&str>,
    pg_bin: Option<&Path>,
    timeout: u64,
) -> Result<(), CliError> {
    let user = match user {
        Some(u) => u.to_owned(),
        None => owner_name(pgdata)?,
    };
    let start = StartOptions {
        bindir: cluster::find_bindir(pg_bin),
        port: running_port(pgdata)?,
        user,
        timeout: Duration::from_secs(timeout),
    };
    let promoted = standby::promote(pgdata, &start).await?;
    if g.json {
        print_json(&json!({
            "pgdata": pgdata.display().to_string(),
            "promoted": true,
            "already_promoted": promoted.already_promoted,
            "lsn": promoted.lsn.map(|l| l.to_string()),
            "commit_time": promoted.commit_time.map(|t| t.to_rfc3339()),
            "timeline": promoted.timeline,
            "seconds": promoted.seconds,
        }));
    } else {
        eprintln!(
            "{} {}: last replayed {}",
            if promoted.already_promoted {
                "already promoted:"
            } else {
                "promoted"
            },
            pgdata.display(),
            replay_point(
                promoted.lsn,
                promoted.commit_time,
                promoted.timeline,
                "none"
            )
        );
    }
    Ok(())
}
