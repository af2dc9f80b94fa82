//! `rds snapshot` and `rds restore`, and the AWS side of `forget` for RDS backups.

use std::time::Duration;

use resilience_core::repo::Repository;
use resilience_objstore::rds::{
    self, delete_expired_snapshots, pending_deletions, rds_record, take_snapshot, RdsClient,
    RdsResource, RdsSnapshotRecord, RdsSource, SnapshotOptions, WaitPolicy,
};
use serde_json::json;

use crate::access;
use crate::cli::{Global, RdsCommand, RdsRestoreArgs, RdsSnapshotArgs};
use crate::commands::backup::parse_labels;
use crate::output::outln;
use crate::output::print_json;
use crate::CliError;

/// Runs an `rds` command.
pub async fn run(g: &Global, command: &RdsCommand) -> Result<(), CliError> {
    match command {
        RdsCommand::Snapshot(args) => snapshot(g, args).await,
        RdsCommand::Restore(args) => restore(g, args).await,
    }
}

fn wait_policy(poll: u64, timeout: u64) -> WaitPolicy {
    WaitPolicy {
        poll: Duration::from_secs(poll.max(1)),
        deadline: Duration::from_secs(timeout),
    }
}

async fn snapshot(g: &Global, args: &RdsSnapshotArgs) -> Result<(), CliError> {
    let labels = parse_labels(&args.labels)?;
    let resource = match (&args.instance, &args.cluster) {
        (Some(i), None) => RdsResource::Instance(i.clone()),
        (None, Some(c)) => RdsResource::Cluster(c.clone()),
        _ => return Err(CliError::Usage("give --instance ID or --cluster ID".into())),
    };
    let client = RdsClient::from_env(args.region.as_deref())?;
    let repo = access::open(g).await?;
    let mut source = RdsSource::new(
        client,
        resource,
        SnapshotOptions {
            automated: args.automated,
            copy_to_region: args.copy_to_region.clone(),
            kms_key_id: args.copy_kms_key_id.clone(),
            wait: wait_policy(args.poll, args.timeout),
        },
    );
    if let Some(id) = &args.source {
        source = source.with_id(id);
    }
    let report = take_snapshot(&repo, &source, labels, None).await?;
    let r = &report.record;
    let rds = rds_record(r)?;
    if g.json {
        print_json(&json!({
            "id": r.id,
            "source": r.source.id,
            "kind": r.source.kind,
            "status": r.status,
            "started_at": r.started_at.to_rfc3339(),
            "finished_at": r.finished_at.map(|t| t.to_rfc3339()),
            "duration_ms": report.duration.as_millis() as u64,
            "rds": rds,
        }));
    } else {
        outln!("{}", r.id);
        eprintln!("{}", summary(&rds));
    }
    Ok(())
}

/// One line for people: what was recorded, where.
pub(crate) fn summary(rds: &RdsSnapshotRecord) -> String {
    format!(
        "{} snapshot {} of {} ({}, {}) available in {}{}",
        rds.snapshot_type,
        rds.snapshot.id,
        rds.resource,
        rds.engine,
        rds.allocated_storage_gib
            .map(|g| format!("{g} GiB"))
            .unwrap_or_else(|| "size unknown".into()),
        rds.snapshot.region,
        rds.copy
            .as_ref()
            .map(|c| {
                format!(
                    "; copy {} in {}{}",
                    c.id,
                    c.region,
                    c.kms_key_id
                        .as_deref()
                        .map(|k| format!(" encrypted with {k}"))
                        .unwrap_or_default()
                )
            })
            .unwrap_or_default()
    )
}

async fn restore(g: &Global, args: &RdsRestoreArgs) -> Result<(), CliError> {
    let repo = access::open(g).await?;
    let record = repo.resolve_snapshot(&args.snapshot, None).await?;
    let rds = rds_record(&record)?;
    let into = match (&args.instance, &args.cluster, rds.resource.is_cluster()) {
        (Some(i), None, false) => i,
        (None, Some(c), true) => c,
        (_, _, cluster) => {
            return Err(CliError::Usage(format!(
                "snapshot {} is of {}: restore it with --{} NEW",
                record.id,
                rds.resource,
                if cluster { "cluster" } else { "instance" }
            )))
        }
    };
    let client = RdsClient::from_env(Some(args.region.as_deref().unwrap_or(&rds.snapshot.region)))?;
    let wait = (!args.no_wait).then(|| wait_policy(args.poll, args.timeout));
    let server = rds::restore(
        &client,
        &record.id,
        &rds,
        args.region.as_deref(),
        into,
        wait,
    )
    .await?;
    if g.json {
        print_json(&json!({
            "snapshot": record.id,
            "restored": server.resource.id(),
            "cluster": server.resource.is_cluster(),
            "status": server.status,
            "engine": server.engine,
            "endpoint": server.endpoint,
        }));
    } else {
        outln!("{}", server.resource.id());
        eprintln!(
            "{} restored from {} is {}{}",
            server.resource,
            record.id,
            server.status,
            server
                .endpoint
                .as_deref()
                .map(|e| format!(", at {e}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// After `forget`: deletes the AWS snapshots of expired RDS backups (none: no AWS call, no
/// configuration needed). Says what it did on stderr; an error when a snapshot could not be
/// deleted (the next `forget` tries again).
pub(crate) async fn expire_aws(g: &Global, repo: &Repository) -> Result<(), CliError> {
    let pending = pending_deletions(repo).await?;
    if pending.is_empty() {
        return Ok(());
    }
    let client = RdsClient::from_env(Some(&pending[0].1.snapshot.region))?;
    let report = delete_expired_snapshots(repo, &client).await?;
    if !g.json {
        eprintln!(
            "RDS: deleted {} snapshot(s) of expired backups ({} already gone)",
            report.deleted.len(),
            report.already_gone.len()
        );
    }
    for (s, e) in &report.failed {
        eprintln!(
            "warning: RDS snapshot {} in {} of expired backup {} not deleted (the next forget tries again): {e}",
            s.snapshot, s.region, s.backup
        );
    }
    if report.failed.is_empty() {
        Ok(())
    } else {
        Err(CliError::WithStatus {
            status: 1,
            message: format!(
                "{} RDS snapshot(s) of expired backups could not be deleted: {}",
                report.failed.len(),
                report
                    .failed
                    .iter()
                    .map(|(s, e)| format!("{} ({})", s.snapshot, e.lines().next().unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        })
    }
}
