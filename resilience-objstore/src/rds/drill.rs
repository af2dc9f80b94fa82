//! The drill of RDS backups ([`RdsDrill`]): restore the snapshot into a fresh instance (or
//! cluster), wait until it is available, check what RDS can say about it (status, engine,
//! storage, the snapshot it came from still there), and delete it without a final snapshot.
//! What is inside the database is not checked here: connect to the endpoint with the
//! Postgres or MySQL checks of your own for that.

use std::path::Path;

use async_trait::async_trait;
use resilience_core::catalog::BackupRecord;
use resilience_core::drill::{error_chain, Drill, DrillCheck, Drilled, ScratchCopy};
use resilience_core::repo::Repository;

use super::client::RdsClient;
use super::model::{RdsResource, RdsSnapshotRecord, KIND};
use super::restore::{copy_in, new_resource, rds_record, restore, wait_available};
use super::wait::WaitPolicy;

/// The drill of an RDS source's backups.
#[derive(Clone, Debug)]
pub struct RdsDrill {
    source: String,
    client: RdsClient,
    region: Option<String>,
    wait: WaitPolicy,
}

impl RdsDrill {
    /// The drill of source `source` (its id in the catalog), through `client`.
    pub fn new(source: impl Into<String>, client: RdsClient) -> Self {
        RdsDrill {
            source: source.into(),
            client,
            region: None,
            wait: WaitPolicy::default(),
        }
    }

    /// Restores the copy in `region` instead of the snapshot in its own region.
    pub fn in_region(mut self, region: Option<String>) -> Self {
        self.region = region;
        self
    }

    /// Waits for the scratch instance with `wait`.
    pub fn with_wait(mut self, wait: WaitPolicy) -> Self {
        self.wait = wait;
        self
    }

    /// The scratch instance's identifier: `drill-<backup id's digits>`, unique per backup.
    fn scratch_id(record: &BackupRecord) -> String {
        let digits: String = record
            .id
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        let mut id = format!("resilience-drill-{}", digits.to_ascii_lowercase());
        id.truncate(63);
        id
    }

    async fn check(
        &self,
        rds: &RdsSnapshotRecord,
        record: &BackupRecord,
        into: &str,
        running: &mut Option<Box<dyn ScratchCopy>>,
    ) -> Vec<DrillCheck> {
        let region = match copy_in(rds, self.region.as_deref()) {
            Ok(c) => c.region.clone(),
            Err(e) => return vec![DrillCheck::fail("restore", e)],
        };
        let there = match self.client.in_region(&region) {
            Ok(c) => c,
            Err(e) => return vec![DrillCheck::fail("restore", error_chain(&e))],
        };
        let resource = new_resource(rds, into);
        if let Err(e) = restore(
            &self.client,
            &record.id,
            rds,
            self.region.as_deref(),
            into,
            None,
        )
        .await
        {
            return vec![DrillCheck::fail("restore", error_chain(&e))];
        }
        *running = Some(Box::new(ScratchServer {
            client: there.clone(),
            resource: resource.clone(),
        }));
        let server = match wait_available(&there, &resource, self.wait).await {
            Ok(s) => s,
            Err(e) => return vec![DrillCheck::fail("restore", error_chain(&e))],
        };
        let mut checks = vec![DrillCheck::pass(
            "restore",
            format!("{resource} in {region} is available"),
        )];
        let engine = format!("engine {} (the snapshot's: {})", server.engine, rds.engine);
        checks.push(if server.engine == rds.engine {
            DrillCheck::pass("engine", engine)
        } else {
            DrillCheck::fail("engine", engine)
        });
        if let (Some(had), Some(has)) = (rds.allocated_storage_gib, server.allocated_storage_gib) {
            let storage = format!("{has} GiB allocated (the snapshot's: {had} GiB)");
            // Aurora reports its storage as it grows: only an instance must match.
            checks.push(if has >= had || rds.resource.is_cluster() {
                DrillCheck::pass("storage", storage)
            } else {
                DrillCheck::fail("storage", storage)
            });
        }
        let copy = copy_in(rds, self.region.as_deref()).expect("checked above");
        checks.push(
            match there
                .describe_snapshot(&copy.id, rds.resource.is_cluster())
                .await
            {
                Ok(s) if s.status == "available" => DrillCheck::pass(
                    "snapshot",
                    format!(
                        "restored from snapshot {} ({}), available",
                        s.identifier, s.arn
                    ),
                ),
                Ok(s) => DrillCheck::fail(
                    "snapshot",
                    format!("snapshot {} is {}", s.identifier, s.status),
                ),
                Err(e) => DrillCheck::fail("snapshot", error_chain(&e)),
            },
        );
        checks
    }
}

#[async_trait]
impl Drill for RdsDrill {
    fn source(&self) -> &str {
        &self.source
    }

    fn kind(&self) -> &str {
        KIND
    }

    async fn restore_and_check(
        &self,
        _repo: &Repository,
        record: &BackupRecord,
        _scratch: &Path,
    ) -> Drilled {
        let rds = match rds_record(record) {
            Ok(r) => r,
            Err(e) => return Drilled::new(vec![DrillCheck::fail("restore", e.to_string())], None),
        };
        let into = Self::scratch_id(record);
        let mut running = None;
        let checks = self.check(&rds, record, &into, &mut running).await;
        let drilled = Drilled::new(checks, rds.snapshot_created_at);
        match running {
            Some(r) => drilled.with_running(r),
            None => drilled,
        }
    }
}

/// The scratch instance or cluster, deleted (without a final snapshot) after the drill.
struct ScratchServer {
    client: RdsClient,
    resource: RdsResource,
}

#[async_trait]
impl ScratchCopy for ScratchServer {
    async fn tear_down(self: Box<Self>) {
        match self.client.delete_server(&self.resource).await {
            Ok(()) => tracing::info!(resource = %self.resource, "drill copy deleted"),
            Err(e) => tracing::warn!(
                resource = %self.resource,
                error = %error_chain(&e),
                "could not delete the drill's copy: delete it by hand, it costs money"
            ),
        }
    }
}
