//! Taking an RDS snapshot as a backup: [`RdsSource`] is a [`Source`] whose start creates a
//! manual snapshot (or picks the newest automated one), waits until it is available and, when
//! asked, copies it to another region re-encrypted with that region's KMS key and waits for
//! the copy. Its snapshot holds no entries: what the catalog keeps is the record
//! ([`RdsSnapshotRecord`] in `source_metadata`), so retention, holds and safety rules treat it
//! like any backup. [`take_snapshot`] runs it through [`Repository::backup`] and, when it fails
//! after AWS made a snapshot, writes what was made into the `failed` record, so no snapshot is
//! left that the catalog does not know of.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use resilience_core::catalog::{BackupStatus, Catalog, CatalogQuery};
use resilience_core::ops::backup::{BackupOptions, BackupReport};
use resilience_core::repo::Repository;
use resilience_core::source::{
    AdapterError, Source, SourceDescriptor, SourceEntry, SourceMetadata, SourceSession,
};
use resilience_core::time::stop::StopSignal;

use super::client::RdsClient;
use super::error::RdsError;
use super::model::{DbSnapshot, RdsResource, RdsSnapshotRecord, SnapshotCopy, KIND};
use super::wait::{self, WaitPolicy};

/// What a snapshot run does besides taking the snapshot.
#[derive(Clone, Debug, Default)]
pub struct SnapshotOptions {
    /// Pick the newest available automated snapshot instead of taking a manual one.
    pub automated: bool,
    /// Copy the snapshot to this region.
    pub copy_to_region: Option<String>,
    /// The KMS key (of the copy's region) that encrypts the copy.
    pub kms_key_id: Option<String>,
    /// How to wait for the snapshot and the copy.
    pub wait: WaitPolicy,
}

/// An RDS instance or cluster as a backup source (kind `rds`, id `rds:<identifier>` unless
/// given).
#[derive(Debug)]
pub struct RdsSource {
    client: RdsClient,
    resource: RdsResource,
    id: String,
    options: SnapshotOptions,
    /// What the current run has made so far, for the failed record.
    made: Arc<Mutex<Option<RdsSnapshotRecord>>>,
}

impl RdsSource {
    /// The source of `resource`'s snapshots, reached through `client` (its region is the
    /// resource's).
    pub fn new(client: RdsClient, resource: RdsResource, options: SnapshotOptions) -> Self {
        RdsSource {
            id: resource.source_id(),
            client,
            resource,
            options,
            made: Arc::new(Mutex::new(None)),
        }
    }

    /// The same, recorded under source id `id`.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// Its source id in the catalog.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// What the last run made in AWS (the snapshot, the copy), if anything.
    pub fn made(&self) -> Option<RdsSnapshotRecord> {
        self.made.lock().expect("not poisoned").clone()
    }

    fn note(&self, record: &RdsSnapshotRecord) {
        *self.made.lock().expect("not poisoned") = Some(record.clone());
    }

    /// The identifier of a new manual snapshot: `resilience-<resource>-<UTC time, ms>`, cut
    /// to fit the 63 characters a cluster snapshot's identifier may have.
    fn new_snapshot_id(&self) -> String {
        let at = chrono::Utc::now().format("%Y%m%d%H%M%S%3f");
        let mut resource: String = self.resource.id().chars().take(33).collect();
        while resource.ends_with('-') {
            resource.pop();
        }
        format!("resilience-{resource}-{at}")
    }

    /// Creates (or picks) the snapshot, waits for it, copies it; the record of all that.
    async fn run(&self) -> Result<RdsSnapshotRecord, AdapterError> {
        *self.made.lock().expect("not poisoned") = None;
        let region = self.client.region().to_owned();
        let cluster = self.resource.is_cluster();
        let (snapshot, owned) = if self.options.automated {
            let mut list = self
                .client
                .list_snapshots(&self.resource, "automated")
                .await
                .map_err(|e| AdapterError::new("snapshot", self.resource.to_string(), e))?;
            list.retain(|s| s.status == "available");
            list.sort_by_key(|s| s.created_at);
            let newest = list.pop().ok_or_else(|| {
                AdapterError::new(
                    "snapshot",
                    self.resource.to_string(),
                    RdsError::NoAutomatedSnapshot {
                        resource: self.resource.to_string(),
                        region: region.clone(),
                    },
                )
            })?;
            (newest, false)
        } else {
            let id = self.new_snapshot_id();
            let made = self
                .client
                .create_snapshot(&self.resource, &id)
                .await
                .map_err(|e| AdapterError::new("snapshot", self.resource.to_string(), e))?;
            (made, true)
        };
        let mut record = record_of(&snapshot, &region, owned);
        self.note(&record);
        let what = format!("snapshot {} of {}", snapshot.identifier, self.resource);
        let snapshot = wait::until(self.options.wait, &what, &region, "available", || async {
            let s = self
                .client
                .describe_snapshot(&snapshot.identifier, cluster)
                .await?;
            let status = s.status.clone();
            Ok((s, status))
        })
        .await
        .map_err(|e| AdapterError::new("availability", what.clone(), e))?;
        record = record_of(&snapshot, &region, owned);
        self.note(&record);
        if let Some(to) = &self.options.copy_to_region {
            let there = self
                .client
                .in_region(to)
                .map_err(|e| AdapterError::new("copy", what.clone(), e))?;
            let target = copy_id(&snapshot.identifier);
            let copy = there
                .copy_snapshot(&snapshot, &target, self.options.kms_key_id.as_deref())
                .await
                .map_err(|e| AdapterError::new("copy", what.clone(), e))?;
            record.copy = Some(copy_of(&copy, to));
            self.note(&record);
            let copy_what = format!("copy {target} of {what}");
            let copy = wait::until(self.options.wait, &copy_what, to, "available", || async {
                let s = there.describe_snapshot(&target, cluster).await?;
                let status = s.status.clone();
                Ok((s, status))
            })
            .await
            .map_err(|e| AdapterError::new("availability", copy_what.clone(), e))?;
            record.copy = Some(copy_of(&copy, to));
            self.note(&record);
        }
        Ok(record)
    }
}

/// The identifier of the copy of `source` (automated snapshots' `rds:` prefix dropped, as an
/// identifier may not hold `:`).
fn copy_id(source: &str) -> String {
    let bare = source
        .strip_prefix("rds:")
        .unwrap_or(source)
        .replace(':', "-");
    if bare.starts_with("resilience-") {
        bare
    } else {
        let mut id = format!("resilience-{bare}");
        id.truncate(63);
        id.trim_end_matches('-').to_owned()
    }
}

fn record_of(s: &DbSnapshot, region: &str, owned: bool) -> RdsSnapshotRecord {
    RdsSnapshotRecord {
        resource: s.resource.clone(),
        snapshot: SnapshotCopy {
            region: region.to_owned(),
            id: s.identifier.clone(),
            arn: s.arn.clone(),
            status: s.status.clone(),
            kms_key_id: s.kms_key_id.clone(),
            owned,
        },
        copy: None,
        snapshot_type: s.snapshot_type.clone(),
        engine: s.engine.clone(),
        engine_version: s.engine_version.clone(),
        allocated_storage_gib: s.allocated_storage_gib,
        snapshot_created_at: s.created_at,
        aws_deleted_at: None,
    }
}

fn copy_of(s: &DbSnapshot, region: &str) -> SnapshotCopy {
    SnapshotCopy {
        region: region.to_owned(),
        id: s.identifier.clone(),
        arn: s.arn.clone(),
        status: s.status.clone(),
        kms_key_id: s.kms_key_id.clone(),
        owned: true,
    }
}

#[async_trait]
impl Source for RdsSource {
    fn descriptor(&self) -> SourceDescriptor {
        SourceDescriptor {
            id: self.id.clone(),
            kind: KIND.into(),
        }
    }

    async fn start(&self) -> Result<Box<dyn SourceSession>, AdapterError> {
        let record = self.run().await?;
        Ok(Box::new(Made(Some(record.to_metadata()))))
    }
}

/// The session of a snapshot already made: no entries, its record as metadata.
struct Made(Option<SourceMetadata>);

#[async_trait]
impl SourceSession for Made {
    async fn next_entry(&mut self) -> Result<Option<SourceEntry>, AdapterError> {
        Ok(None)
    }

    async fn finish(&mut self) -> Result<SourceMetadata, AdapterError> {
        Ok(self.0.take().unwrap_or_default())
    }
}

/// Takes a snapshot of `source` as a backup in `repo` (labels recorded with it; `stop` ends
/// it, recorded failed). When it fails after AWS made a snapshot or a copy, the `failed`
/// record is amended with what was made (ids, ARNs, regions), so that retention deletes it
/// like any other; the error names it in any case.
pub async fn take_snapshot(
    repo: &Repository,
    source: &RdsSource,
    labels: std::collections::BTreeMap<String, String>,
    stop: Option<StopSignal>,
) -> Result<BackupReport, RdsError> {
    let options = BackupOptions {
        labels,
        stop,
        use_parent: false,
        ..Default::default()
    };
    let began = repo.clock().now();
    match repo.backup(source, options).await {
        Ok(report) => Ok(report),
        Err(e) => {
            if let Some(made) = source.made() {
                if let Err(e2) = record_failed(repo, source.id(), began, &made).await {
                    tracing::warn!(error = %e2, snapshot = %made.snapshot.id, "could not record the snapshot made in the failed backup's record");
                }
            }
            Err(e.into())
        }
    }
}

/// Writes `made` into the `failed` record of `source` that this run wrote (the newest one
/// started at or after `began` with no RDS record yet).
async fn record_failed(
    repo: &Repository,
    source: &str,
    began: chrono::DateTime<chrono::Utc>,
    made: &RdsSnapshotRecord,
) -> Result<(), RdsError> {
    let catalog = repo.catalog();
    let failed = catalog
        .list(&CatalogQuery {
            source: Some(source.to_owned()),
            statuses: vec![BackupStatus::Failed],
            ..Default::default()
        })
        .await?;
    let Some(mut record) = failed
        .into_iter()
        .filter(|r| {
            r.started_at >= began && !r.source_metadata.contains_key(super::model::METADATA_KEY)
        })
        .max_by_key(|r| r.started_at)
    else {
        return Ok(());
    };
    record.revision += 1;
    record.source_metadata = made.to_metadata();
    record.updated_at = repo.clock().now();
    catalog.put(&record).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_of_automated_snapshots_get_a_valid_identifier() {
        assert_eq!(
            copy_id("rds:db1-2026-12-03-16-25"),
            "resilience-db1-2026-12-03-16-25"
        );
        assert_eq!(
            copy_id("resilience-db1-20261203162500123"),
            "resilience-db1-20261203162500123"
        );
        assert!(copy_id(&format!("rds:{}", "a".repeat(80))).len() <= 63);
    }
}
