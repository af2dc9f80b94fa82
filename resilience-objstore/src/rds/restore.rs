//! Restoring an RDS backup: a new instance (or cluster) from the snapshot its record names,
//! in the snapshot's region or in the copy's.

use resilience_core::catalog::BackupRecord;

use super::client::RdsClient;
use super::error::RdsError;
use super::model::{DbServer, DbSnapshot, RdsResource, RdsSnapshotRecord, SnapshotCopy, KIND};
use super::wait::{self, WaitPolicy};

/// The RDS record of `record`, refusing a backup of another kind.
pub fn rds_record(record: &BackupRecord) -> Result<RdsSnapshotRecord, RdsError> {
    let not = |message: String| RdsError::Record {
        backup: record.id.clone(),
        message,
    };
    if record.source.kind != KIND {
        return Err(not(format!(
            "a {} backup, not an RDS snapshot",
            record.source.kind
        )));
    }
    RdsSnapshotRecord::from_metadata(&record.source_metadata)
        .map_err(|e| not(format!("unreadable RDS record: {e}")))?
        .ok_or_else(|| not("its record names no RDS snapshot".into()))
}

/// The copy of `rds` in `region` (default: the snapshot's own region).
pub fn copy_in<'a>(
    rds: &'a RdsSnapshotRecord,
    region: Option<&str>,
) -> Result<&'a SnapshotCopy, String> {
    match region {
        None => Ok(&rds.snapshot),
        Some(r) if r == rds.snapshot.region => Ok(&rds.snapshot),
        Some(r) => rds.copy.as_ref().filter(|c| c.region == r).ok_or_else(|| {
            format!(
                "no copy in {r}: the snapshot is in {}{}",
                rds.snapshot.region,
                rds.copy
                    .as_ref()
                    .map(|c| format!(", its copy in {}", c.region))
                    .unwrap_or_default()
            )
        }),
    }
}

/// Restores `rds`'s snapshot in `region` (default: the snapshot's) into the new instance or
/// cluster `into`, and, with `wait`, waits until it is available.
pub async fn restore(
    client: &RdsClient,
    backup: &str,
    rds: &RdsSnapshotRecord,
    region: Option<&str>,
    into: &str,
    wait: Option<WaitPolicy>,
) -> Result<DbServer, RdsError> {
    let copy = copy_in(rds, region).map_err(|message| RdsError::Record {
        backup: backup.to_owned(),
        message,
    })?;
    let there = client.in_region(&copy.region)?;
    let snapshot = DbSnapshot {
        identifier: copy.id.clone(),
        arn: copy.arn.clone(),
        resource: rds.resource.clone(),
        status: copy.status.clone(),
        snapshot_type: rds.snapshot_type.clone(),
        engine: rds.engine.clone(),
        engine_version: rds.engine_version.clone(),
        allocated_storage_gib: rds.allocated_storage_gib,
        created_at: rds.snapshot_created_at,
        encrypted: copy.kms_key_id.is_some(),
        kms_key_id: copy.kms_key_id.clone(),
    };
    let server = there.restore(&snapshot, into).await?;
    let Some(policy) = wait else {
        return Ok(server);
    };
    let resource = new_resource(rds, into);
    wait_available(&there, &resource, policy).await
}

/// The new instance or cluster `into`, of the kind `rds` was taken of.
pub fn new_resource(rds: &RdsSnapshotRecord, into: &str) -> RdsResource {
    match rds.resource {
        RdsResource::Instance(_) => RdsResource::Instance(into.to_owned()),
        RdsResource::Cluster(_) => RdsResource::Cluster(into.to_owned()),
    }
}

/// Waits until `resource` is available.
pub async fn wait_available(
    client: &RdsClient,
    resource: &RdsResource,
    policy: WaitPolicy,
) -> Result<DbServer, RdsError> {
    wait::until(
        policy,
        &resource.to_string(),
        client.region(),
        "available",
        || async {
            let s = client.describe_server(resource).await?;
            let status = s.status.clone();
            Ok((s, status))
        },
    )
    .await
}
