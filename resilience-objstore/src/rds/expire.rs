//! Deleting the AWS snapshots of expired RDS backups: after `forget` has expired their catalog
//! records (with the same policies, holds and safety rules as every backup), the snapshots
//! resilience made (manual ones and copies, in every region) are deleted, and the record gets
//! a revision saying when. Idempotent: a run stopped between the catalog's change and AWS'
//! is finished by the next one, and a snapshot already gone counts as deleted. Automated
//! snapshots are AWS' to expire (RDS refuses to delete them) and are left alone.

use chrono::{DateTime, Utc};
use resilience_core::catalog::{BackupRecord, BackupStatus, Catalog, CatalogQuery};
use resilience_core::repo::Repository;
use serde::Serialize;

use super::client::RdsClient;
use super::error::RdsError;
use super::model::{RdsSnapshotRecord, KIND};

/// One snapshot an expiry concerned.
#[derive(Clone, Debug, Serialize)]
pub struct ExpiredSnapshot {
    /// The backup whose record names it.
    pub backup: String,
    /// Its region.
    pub region: String,
    /// Its identifier.
    pub snapshot: String,
}

/// What [`delete_expired_snapshots`] did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AwsExpiry {
    /// Snapshots deleted now.
    pub deleted: Vec<ExpiredSnapshot>,
    /// Snapshots that were already gone.
    pub already_gone: Vec<ExpiredSnapshot>,
    /// Snapshots that could not be deleted (the next run tries again), with the error.
    pub failed: Vec<(ExpiredSnapshot, String)>,
}

/// The expired RDS backups whose AWS snapshots resilience still has to delete.
pub async fn pending_deletions(
    repo: &Repository,
) -> Result<Vec<(BackupRecord, RdsSnapshotRecord)>, RdsError> {
    let expired = repo
        .catalog()
        .list(&CatalogQuery {
            statuses: vec![BackupStatus::Expired],
            ..Default::default()
        })
        .await?;
    let mut pending = Vec::new();
    for r in expired.into_iter().filter(|r| r.source.kind == KIND) {
        let rds = RdsSnapshotRecord::from_metadata(&r.source_metadata).map_err(|message| {
            RdsError::Record {
                backup: r.id.clone(),
                message: format!("unreadable RDS record: {message}"),
            }
        })?;
        if let Some(rds) = rds.filter(|x| x.owned_copies().next().is_some()) {
            pending.push((r, rds));
        }
    }
    Ok(pending)
}

/// Deletes the AWS snapshots of every expired RDS backup that still has some, through
/// `client` (its credentials; each snapshot in its own region), and records each backup whose
/// snapshots are all gone.
pub async fn delete_expired_snapshots(
    repo: &Repository,
    client: &RdsClient,
) -> Result<AwsExpiry, RdsError> {
    let mut report = AwsExpiry::default();
    for (mut record, mut rds) in pending_deletions(repo).await? {
        let cluster = rds.resource.is_cluster();
        let mut all_gone = true;
        for copy in rds.owned_copies() {
            let which = ExpiredSnapshot {
                backup: record.id.clone(),
                region: copy.region.clone(),
                snapshot: copy.id.clone(),
            };
            let result = match client.in_region(&copy.region) {
                Ok(there) => there.delete_snapshot(&copy.id, cluster).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {
                    tracing::info!(backup = %record.id, snapshot = %copy.id, region = %copy.region, "deleted the AWS snapshot of an expired backup");
                    report.deleted.push(which);
                }
                Err(e) if e.is_not_found() => report.already_gone.push(which),
                Err(e) => {
                    all_gone = false;
                    report
                        .failed
                        .push((which, resilience_core::error::error_chain(&e)));
                }
            }
        }
        if all_gone {
            rds.aws_deleted_at = Some(repo.clock().now());
            mark_deleted(repo, &mut record, &rds, repo.clock().now()).await?;
        }
    }
    Ok(report)
}

/// Writes the revision that says the backup's AWS snapshots are gone.
async fn mark_deleted(
    repo: &Repository,
    record: &mut BackupRecord,
    rds: &RdsSnapshotRecord,
    now: DateTime<Utc>,
) -> Result<(), RdsError> {
    record.revision += 1;
    record.source_metadata.extend(rds.to_metadata());
    record.updated_at = now;
    repo.catalog().put(record).await?;
    Ok(())
}
