//! `pg backup`, `pg restore`, `pg check` (and `pg standby`, `pg promote` in
//! [`super::pg_standby`]).

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use resilience_core::ops::progress::Progress;
use resilience_core::ops::restore::RestoreOptions;
use resilience_pg::archive::WalArchive;
use resilience_pg::base::{BaseBackupInfo, PgBaseSource};
use resilience_pg::catalog::{self, PgCatalog};
use resilience_pg::recovery::{self, RecoveryOptions, RecoveryTarget, StartOptions, TargetAction};
use resilience_pg::table::{PgTableSource, PgTableTarget, TableRestoreOptions};
use resilience_pg::{check, cluster};
use serde_json::json;

use crate::cli::{Global, PgCommand, PgRestoreArgs};
use crate::commands::backup::{back_up, parse_labels, print_report};
use crate::output::outln;
use crate::output::{bytes, print_json, replay_point, restore_json};
use crate::progress::Bar;
use crate::CliError;
use crate::{access, wal_fetch};

/// Runs a `pg` command.
pub async fn run(g: &Global, command: &PgCommand) -> Result<(), CliError> {
    match command {
        PgCommand::Backup {
            pgdata,
            dsn,
            source,
            labels,
            spread_checkpoint,
            fail_on_corrupt_page,
        } => {
            let labels = parse_labels(labels)?;
            let repo = access::open(g).await?;
            let pg = PgBaseSource::new(pgdata, dsn)
                .with_id(source)
                .fast_checkpoint(!spread_checkpoint)
                .fail_on_corrupt_page(*fail_on_corrupt_page);
            let report = back_up(g, &repo, &pg, labels).await?;
            let mut extra = serde_json::Map::new();
            if let Some(info) = BaseBackupInfo::from_metadata(&report.record.source_metadata) {
                extra.insert("start_lsn".into(), info.start_lsn.to_string().into());
                extra.insert("stop_lsn".into(), info.stop_lsn.to_string().into());
                extra.insert("timeline".into(), info.timeline.into());
                extra.insert("start_wal".into(), info.start_wal.into());
                extra.insert("pg_version".into(), info.pg_version.into());
                let checks = &info.page_checks;
                if checks.corrupt_count > 0 {
                    eprintln!(
                        "warning: {} corrupt page(s) (wrong checksum) backed up as they are: {}",
                        checks.corrupt_count,
                        checks.describe_corrupt()
                    );
                }
                extra.insert(
                    "page_checks".into(),
                    serde_json::to_value(checks).expect("serializes"),
                );
            }
            print_report(g, &report, extra);
            Ok(())
        }
        PgCommand::Restore(args) => restore(g, args).await,
        PgCommand::Standby(args) => super::pg_standby::standby(g, args).await,
        PgCommand::Promote {
            pgdata,
            user,
            pg_bin,
            timeout,
        } => {
            super::pg_standby::promote(g, pgdata, user.as_deref(), pg_bin.as_deref(), *timeout)
                .await
        }
        PgCommand::ExpireWal { source, dry_run } => {
            let repo = access::open(g).await?;
            let wal = WalArchive::new(&repo, source)?;
            let expiry = check::expire_wal(&repo, &wal, *dry_run).await?;
            if g.json {
                print_json(&json!({
                    "kept_from": expiry.kept_from,
                    "deleted": expiry.deleted,
                    "dry_run": dry_run,
                }));
            } else {
                eprintln!(
                    "{} {} WAL file(s); kept from {}",
                    if *dry_run { "would delete" } else { "deleted" },
                    expiry.deleted.len(),
                    expiry
                        .kept_from
                        .as_deref()
                        .unwrap_or("- (no base backup: nothing deleted)")
                );
            }
            Ok(())
        }
        PgCommand::CatalogSync { dsn, schema } => {
            let repo = access::open(g).await?;
            let target = PgCatalog::connect(dsn, schema).await?;
            let copied = catalog::sync(&repo.catalog(), &target).await?;
            if g.json {
                print_json(&json!({ "copied": copied, "schema": schema }));
            } else {
                eprintln!("{copied} record(s) copied into schema {schema}");
            }
            Ok(())
        }
        PgCommand::TableBackup {
            dsn,
            tables,
            source,
            labels,
        } => {
            let labels = parse_labels(labels)?;
            let repo = access::open(g).await?;
            let tables = PgTableSource::new(dsn, tables.clone()).with_id(source);
            let report = back_up(g, &repo, &tables, labels).await?;
            print_report(g, &report, serde_json::Map::new());
            Ok(())
        }
        PgCommand::TableRestore {
            snapshot,
            dsn,
            source,
            tables,
            into_schema,
            row_filter,
        } => {
            let repo = access::open(g).await?;
            let record = repo.resolve_snapshot(snapshot, Some(source)).await?;
            if record.source.kind != "postgres-tables" {
                return Err(CliError::Usage(format!(
                    "snapshot {} is a {} backup, not a table backup",
                    record.id, record.source.kind
                )));
            }
            let target = PgTableTarget::new(
                dsn,
                TableRestoreOptions {
                    tables: tables.clone(),
                    into_schema: into_schema.clone(),
                    row_filter: row_filter.clone(),
                },
            );
            let report = repo
                .restore(&record.id, &target, RestoreOptions::default())
                .await?;
            if g.json {
                print_json(&restore_json(&report));
            } else {
                eprintln!(
                    "restored tables of {} ({}) in {:.1?}",
                    report.snapshot,
                    bytes(report.bytes),
                    report.duration
                );
            }
            Ok(())
        }
        PgCommand::Check { source } => check(g, source).await,
    }
}

/// Parses a time given on the command line (`--target-time`, `--as-of`): RFC 3339, or
/// `YYYY-MM-DD HH:MM:SS[.f]` with an optional numeric zone (UTC without one).
pub(crate) fn parse_time_flag(flag: &str, s: &str) -> Result<DateTime<Utc>, CliError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%#z"] {
        if let Ok(t) = DateTime::parse_from_str(s, format) {
            return Ok(t.with_timezone(&Utc));
        }
    }
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
        .map(|t| t.and_utc())
        .map_err(|_| {
            CliError::Usage(format!(
                "{flag} {s:?}: expected RFC 3339 or YYYY-MM-DD HH:MM:SS[.ffffff][+HH]"
            ))
        })
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, CliError> {
    parse_time_flag("--target-time", s)
}

fn target(args: &PgRestoreArgs) -> Result<RecoveryTarget, CliError> {
    Ok(if let Some(t) = &args.target_time {
        RecoveryTarget::Time(parse_time(t)?)
    } else if let Some(l) = &args.target_lsn {
        RecoveryTarget::Lsn(l.parse().map_err(CliError::Usage)?)
    } else if let Some(x) = args.target_xid {
        RecoveryTarget::Xid(x)
    } else if let Some(n) = &args.target_name {
        RecoveryTarget::Name(n.clone())
    } else if args.target.is_some() {
        RecoveryTarget::Immediate
    } else {
        RecoveryTarget::Latest
    })
}

async fn restore(g: &Global, args: &PgRestoreArgs) -> Result<(), CliError> {
    let target = target(args)?;
    let action = match args.target_action.as_str() {
        "pause" => TargetAction::Pause,
        _ => TargetAction::Promote,
    };
    if args.start && args.port.is_none() {
        return Err(CliError::Usage(
            "--start needs --port: the restored cluster must not take the original's port".into(),
        ));
    }
    let restore_command = wal_fetch::restore_command(g, &args.source)?;
    let repo = access::open_throttled(g, args.max_rate).await?;
    let wal = WalArchive::new(&repo, &args.source)?;
    let timeline = args
        .target_timeline
        .clone()
        .unwrap_or_else(|| recovery::default_timeline(&target).to_owned());
    let plan = recovery::plan(&repo, &wal, &target, &timeline).await?;
    let bar = Bar::new(g.json, "restore", Some(plan.backup.record.logical_bytes));
    let options = RecoveryOptions {
        target: target.clone(),
        action,
        restore_command,
        target_timeline: timeline,
        port: args.port,
        archive: !args.no_archive,
        restore: RestoreOptions {
            progress: bar.clone().map(|b| b as Arc<dyn Progress>),
            memory: g.memory,
            ..Default::default()
        },
        tablespaces: tablespace_map(&args.tablespaces)?,
        resume: args.resume,
        archive_command: None,
    };
    let restored = recovery::prepare(&repo, &plan, &args.pgdata, &options).await;
    if let Some(b) = &bar {
        b.finish();
    }
    let restored = restored?;
    let mut doc = json!({
        "backup": plan.backup.record.id,
        "backup_stop_lsn": plan.backup.info.stop_lsn.to_string(),
        "backup_stop_time": plan.backup.info.stop_time.to_rfc3339(),
        "timeline": plan.backup.info.timeline,
        "last_archived_segment": plan.last_segment,
        "pgdata": args.pgdata.display().to_string(),
        "bytes": restored.bytes,
        "restore_ms": restored.duration.as_millis() as u64,
    });
    if !g.json {
        eprintln!(
            "restored base backup {} ({}, ends at {} / {}) into {} in {:.1?}",
            plan.backup.record.id,
            bytes(restored.bytes),
            plan.backup.info.stop_lsn,
            plan.backup.info.stop_time.to_rfc3339(),
            args.pgdata.display(),
            restored.duration
        );
    }
    if args.start {
        let user = match &args.user {
            Some(u) => u.clone(),
            None => owner_name(&args.pgdata)?,
        };
        let start = StartOptions {
            bindir: cluster::find_bindir(args.pg_bin.as_deref()),
            port: args.port.expect("checked above"),
            user,
            timeout: Duration::from_secs(args.timeout),
        };
        let outcome = recovery::start(&args.pgdata, &start, action).await?;
        let reached = json!({
            "lsn": outcome.lsn.map(|l| l.to_string()),
            "commit_time": outcome.commit_time.map(|t| t.to_rfc3339()),
            "timeline": outcome.timeline,
            "promoted": outcome.promoted,
            "stop_message": outcome.stop_message,
            "recovery_seconds": outcome.recovery_seconds,
        });
        if !g.json {
            eprintln!(
                "recovery reached {}{}",
                replay_point(
                    outcome.lsn,
                    outcome.commit_time,
                    outcome.timeline,
                    "none replayed"
                ),
                if outcome.promoted { "" } else { ", paused" }
            );
        }
        doc["reached"] = reached;
    }
    if g.json {
        print_json(&doc);
    }
    Ok(())
}

/// `--tablespace OID=DIR` flags as a map.
pub(crate) fn tablespace_map(
    flags: &[String],
) -> Result<std::collections::HashMap<String, std::path::PathBuf>, CliError> {
    flags
        .iter()
        .map(|m| {
            m.split_once('=')
                .map(|(oid, dir)| (oid.to_owned(), std::path::PathBuf::from(dir)))
                .ok_or_else(|| CliError::Usage(format!("--tablespace {m:?}: expected OID=DIR")))
        })
        .collect()
}

/// The user name owning a directory (the cluster's superuser by initdb's default).
pub(crate) fn owner_name(dir: &std::path::Path) -> Result<String, CliError> {
    let uid = std::fs::metadata(dir)
        .map_err(|e| CliError::Usage(format!("{}: {e}", dir.display())))?
        .uid();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_owned())
        })
        .ok_or_else(|| CliError::Usage(format!("no user name for uid {uid}: give --user")))
}

async fn check(g: &Global, source: &str) -> Result<(), CliError> {
    let repo = access::open(g).await?;
    let wal = WalArchive::new(&repo, source)?;
    let report = check::check(&repo, &wal).await?;
    if g.json {
        print_json(&serde_json::to_value(&report).expect("serializes"));
    } else {
        for t in &report.timelines {
            outln!(
                "timeline {}: {} segments (newest {}), {} base backup(s), recoverable from {} to {}{}",
                t.timeline,
                t.segments,
                t.last_segment.as_deref().unwrap_or("-"),
                t.backups,
                t.earliest.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".into()),
                t.latest.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".into()),
                if t.gaps.is_empty() {
                    String::new()
                } else {
                    format!(", gaps at {}", t.gaps.join(", "))
                }
            );
        }
        for p in &report.problems {
            eprintln!("problem: {p}");
        }
    }
    if report.is_ok() {
        Ok(())
    } else {
        Err(CliError::WalGaps(report.problems.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_times() {
        let t = parse_time("2026-11-25 06:59:23.804847+00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-25T06:59:23.804847+00:00");
        assert_eq!(
            parse_time("2026-11-25T07:59:23+01:00").unwrap().timestamp(),
            parse_time("2026-11-25 06:59:23").unwrap().timestamp()
        );
        assert!(parse_time("yesterday").is_err());
    }
}
