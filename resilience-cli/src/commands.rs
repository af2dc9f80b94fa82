//! The commands: each parses its arguments, calls the library, prints text or JSON.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use resilience_core::backup::BackupOptions;
use resilience_core::catalog::{BackupRecord, Catalog, CatalogQuery};
use resilience_core::fs::{DirSource, DirTarget};
use resilience_core::keys::KeyFileProvider;
use resilience_core::progress::Progress;
use resilience_core::prune::PruneOptions;
use resilience_core::repo::{InitOptions, Repository};
use resilience_core::restore::RestoreOptions;
use resilience_core::retention::{self, KeepRules, RetentionDuration, StandardPolicy};
use resilience_core::verify::VerifyOptions;
use serde_json::{json, Value};

use crate::access;
use crate::cli::{BackupSource, Cli, Command, ForgetArgs, Global};
use crate::progress::Bar;
use crate::CliError;

/// Runs the command `cli` names.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    let g = &cli.global;
    match &cli.command {
        Command::Init => init(g).await,
        Command::Backup { source } => backup(g, source).await,
        Command::Snapshots => snapshots(g).await,
        Command::Restore { snapshot, target } => restore(g, snapshot, target).await,
        Command::Verify { full } => verify(g, *full).await,
        Command::Forget(args) => forget(g, args).await,
        Command::Prune { dry_run, grace } => prune(g, *dry_run, grace).await,
        Command::Hold { snapshot, release } => hold(g, snapshot, *release).await,
    }
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("JSON values serialize")
    );
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

async fn init(g: &Global) -> Result<(), CliError> {
    let url = access::repo_url(g)?;
    let passphrase = access::passphrase(g)?;
    let key_file = match &g.key_file {
        Some(path) if path.exists() => Some(KeyFileProvider::from_file(path)?),
        Some(path) => Some(KeyFileProvider::generate(path)?),
        None => None,
    };
    let sink = access::sink(g, url, true)?;
    let repo = match (&key_file, &passphrase) {
        (Some(k), _) => Repository::init(sink, k, InitOptions::default()).await?,
        (None, Some(p)) => Repository::init(sink, p, InitOptions::default()).await?,
        (None, None) => {
            return Err(CliError::Usage(
                "no key: set RESILIENCE_PASSWORD, or give --password-file or --key-file".into(),
            ))
        }
    };
    if let (Some(_), Some(p)) = (&key_file, &passphrase) {
        repo.add_key(p).await?;
    }
    if g.json {
        print_json(
            &json!({ "repository": repo.sink().location(), "id": repo.config().id, "format": repo.config().format }),
        );
    } else {
        println!(
            "created repository {} at {}",
            repo.config().id,
            repo.sink().location()
        );
    }
    Ok(())
}

fn parse_labels(labels: &[String]) -> Result<BTreeMap<String, String>, CliError> {
    labels
        .iter()
        .map(|l| {
            l.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| CliError::Usage(format!("label {l:?} must be KEY=VALUE")))
        })
        .collect()
}

async fn backup(g: &Global, source: &BackupSource) -> Result<(), CliError> {
    let BackupSource::Dir {
        path,
        labels,
        source_id,
    } = source;
    let labels = parse_labels(labels)?;
    let repo = access::open(g).await?;
    let mut dir = DirSource::new(path);
    if let Some(id) = source_id {
        dir = dir.with_id(id);
    }
    let bar = Bar::new(g.json, "backup", None);
    let options = BackupOptions {
        labels,
        progress: bar.clone().map(|b| b as Arc<dyn Progress>),
        ..Default::default()
    };
    let report = repo.backup(&dir, options).await;
    if let Some(b) = &bar {
        b.finish();
    }
    let report = report?;
    let r = &report.record;
    if g.json {
        print_json(&json!({
            "id": r.id,
            "source": r.source.id,
            "status": r.status,
            "entries": r.entries,
            "logical_bytes": r.logical_bytes,
            "new_bytes": r.new_bytes,
            "stored_bytes": r.stored_bytes,
            "reused_entries": report.reused_entries,
            "duration_ms": report.duration.as_millis() as u64,
        }));
    } else {
        println!("{}", r.id);
        eprintln!(
            "{} entries, {} read, {} new, {} stored in {:.1?}",
            r.entries,
            bytes(r.logical_bytes),
            bytes(r.new_bytes),
            bytes(r.stored_bytes),
            report.duration
        );
    }
    Ok(())
}

fn record_json(r: &BackupRecord) -> Value {
    json!({
        "id": r.id,
        "source": r.source.id,
        "source_kind": r.source.kind,
        "kind": r.kind,
        "status": r.status,
        "error": r.error,
        "started_at": r.started_at.to_rfc3339(),
        "finished_at": r.finished_at.map(|t| t.to_rfc3339()),
        "entries": r.entries,
        "logical_bytes": r.logical_bytes,
        "new_bytes": r.new_bytes,
        "stored_bytes": r.stored_bytes,
        "manifest_checksum": r.manifest_checksum,
        "tier": r.tier,
        "legal_hold": r.legal_hold,
        "labels": r.labels,
        "parent": r.parent,
        "host": r.host,
        "source_metadata": r.source_metadata,
    })
}

async fn snapshots(g: &Global) -> Result<(), CliError> {
    let repo = access::open(g).await?;
    let records = repo.catalog().list(&CatalogQuery::default()).await?;
    if g.json {
        print_json(&Value::Array(records.iter().map(record_json).collect()));
        return Ok(());
    }
    println!(
        "{:<26} {:<10} {:<20} {:>10} {:>10}  {:<4} source / labels",
        "id", "status", "started", "size", "stored", "tier"
    );
    for r in &records {
        let labels: Vec<String> = r.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "{:<26} {:<10} {:<20} {:>10} {:>10}  {:<4} {}{}{}",
            r.id,
            r.status.to_string(),
            r.started_at.format("%Y-%m-%d %H:%M:%S"),
            bytes(r.logical_bytes),
            bytes(r.stored_bytes),
            format!("{:?}", r.tier).to_lowercase(),
            r.source.id,
            if labels.is_empty() {
                String::new()
            } else {
                format!(" [{}]", labels.join(", "))
            },
            if r.legal_hold { " HOLD" } else { "" },
        );
    }
    Ok(())
}

async fn restore(g: &Global, snapshot: &str, target: &std::path::Path) -> Result<(), CliError> {
    let repo = access::open(g).await?;
    let record = repo.resolve_snapshot(snapshot, None).await?;
    let bar = Bar::new(g.json, "restore", Some(record.logical_bytes));
    let options = RestoreOptions {
        progress: bar.clone().map(|b| b as Arc<dyn Progress>),
        ..Default::default()
    };
    let report = repo
        .restore(&record.id, &DirTarget::new(target), options)
        .await;
    if let Some(b) = &bar {
        b.finish();
    }
    let report = report?;
    if g.json {
        print_json(&json!({
            "snapshot": report.snapshot,
            "entries": report.entries,
            "bytes": report.bytes,
            "duration_ms": report.duration.as_millis() as u64,
        }));
    } else {
        eprintln!(
            "restored {} ({} entries, {}) into {} in {:.1?}",
            report.snapshot,
            report.entries,
            bytes(report.bytes),
            target.display(),
            report.duration
        );
    }
    Ok(())
}

async fn verify(g: &Global, full: bool) -> Result<(), CliError> {
    let repo = access::open(g).await?;
    let report = repo.verify(VerifyOptions { full }).await?;
    if g.json {
        print_json(&serde_json::to_value(&report).expect("report serializes"));
    } else {
        for d in &report.damaged {
            let affects = if d.affected_snapshots.is_empty() {
                "no snapshot".to_owned()
            } else {
                d.affected_snapshots.join(", ")
            };
            println!("DAMAGED {}: {} (affects: {affects})", d.object, d.problem);
        }
        println!(
            "{} verification: {} snapshots, {} packs, {} read, {} blobs re-hashed: {}",
            report.mode,
            report.snapshots_checked,
            report.packs_checked,
            bytes(report.bytes_read),
            report.blobs_checked,
            if report.is_ok() { "sound" } else { "DAMAGED" }
        );
    }
    if report.is_ok() {
        Ok(())
    } else {
        Err(CliError::Damaged(report.damaged.len()))
    }
}

fn duration(flag: &str, v: &Option<String>) -> Result<Option<RetentionDuration>, CliError> {
    v.as_deref()
        .map(|s| {
            s.parse()
                .map_err(|e| CliError::Usage(format!("{flag}: {e}")))
        })
        .transpose()
}

fn policy_from(args: &ForgetArgs) -> Result<StandardPolicy, CliError> {
    if let Some(path) = &args.policy {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::Usage(format!("cannot read policy {}: {e}", path.display())))?;
        let parsed = if path.extension().is_some_and(|e| e == "json") {
            StandardPolicy::from_json(&text)
        } else {
            StandardPolicy::from_toml(&text)
        };
        return parsed.map_err(CliError::Usage);
    }
    let policy = StandardPolicy {
        default: KeepRules {
            keep_last: args.keep_last,
            keep_hourly: args.keep_hourly,
            keep_daily: args.keep_daily,
            keep_weekly: args.keep_weekly,
            keep_monthly: args.keep_monthly,
            keep_yearly: args.keep_yearly,
            keep_within: duration("--keep-within", &args.keep_within)?,
            hot: duration("--hot", &args.hot)?,
            cold: duration("--cold", &args.cold)?,
        },
        timezone: args.tz.clone(),
        ..Default::default()
    };
    policy.validate().map_err(CliError::Usage)?;
    if policy.default == KeepRules::default() {
        return Err(CliError::Usage(
            "no retention rule given: use --keep-* flags, --hot/--cold, or --policy FILE".into(),
        ));
    }
    Ok(policy)
}

async fn forget(g: &Global, args: &ForgetArgs) -> Result<(), CliError> {
    let policy = policy_from(args)?;
    let repo = access::open(g).await?;
    let records = repo.catalog().list(&CatalogQuery::default()).await?;
    let plan = retention::plan(&policy, &records, repo.clock().now());
    if g.json {
        print_json(&Value::Array(plan.decisions.iter().map(|d| json!({ "id": d.id, "source": d.source, "action": d.action, "reasons": d.reasons })).collect()));
    } else {
        for d in &plan.decisions {
            println!(
                "{:<6} {}  {}  ({})",
                format!("{:?}", d.action).to_lowercase(),
                d.id,
                d.source,
                d.reasons.join("; ")
            );
        }
    }
    if args.dry_run {
        return Ok(());
    }
    let report = repo.forget(&plan).await?;
    if !g.json {
        eprintln!(
            "expired {}, moved to cold {}",
            report.expired.len(),
            report.moved_cold.len()
        );
        if !report.cold_pending.is_empty() {
            eprintln!(
                "{} backup(s) are due for the cold tier: give --cold-repo to move them",
                report.cold_pending.len()
            );
        }
    }
    Ok(())
}

async fn prune(g: &Global, dry_run: bool, grace: &str) -> Result<(), CliError> {
    let grace: RetentionDuration = grace
        .parse()
        .map_err(|e| CliError::Usage(format!("--grace: {e}")))?;
    let repo = access::open(g).await?;
    let options = PruneOptions {
        dry_run,
        grace: Duration::from_secs(grace.as_secs() as u64),
        ..Default::default()
    };
    let report = repo.prune(options).await?;
    if g.json {
        print_json(&serde_json::to_value(&report).expect("report serializes"));
    } else {
        println!(
            "{}condemned {} pack(s) ({}), repacked {}, deleted {} ({} freed), resurrected {}",
            if dry_run { "dry run: " } else { "" },
            report.condemned_packs,
            bytes(report.condemned_bytes),
            report.repacked_packs,
            report.deleted_packs,
            bytes(report.freed_bytes),
            report.resurrected_packs
        );
        for w in &report.waiting_plans {
            println!("waiting: {w}");
        }
    }
    Ok(())
}

async fn hold(g: &Global, snapshot: &str, release: bool) -> Result<(), CliError> {
    let repo = access::open(g).await?;
    let record = repo.set_legal_hold(snapshot, !release).await?;
    if g.json {
        print_json(&record_json(&record));
    } else {
        println!(
            "{} {}",
            record.id,
            if record.legal_hold {
                "is under legal hold"
            } else {
                "is no longer held"
            }
        );
    }
    Ok(())
}
