//! The drill of a bucket backup ([`BucketDrill`]): restore every object into a scratch
//! directory (a local bucket), every blob's checksum verified by the restore, then compare the
//! object count and bytes with the backup's record.
//!
//! ```no_run
//! use resilience_core::drill::{self, DrillOptions};
//! use resilience_objstore::drill::BucketDrill;
//! # async fn demo(repo: resilience_core::repo::Repository) -> Result<(), resilience_core::drill::DrillError> {
//! let report = drill::run(&repo, &BucketDrill::new("assets"), None, &DrillOptions::default()).await?;
//! assert!(report.ok, "{:?}", report.failures());
//! # Ok(()) }
//! ```

use std::path::Path;

use async_trait::async_trait;
use resilience_core::catalog::BackupRecord;
use resilience_core::drill::{error_chain, restore_check, Drill, DrillCheck, Drilled};
use resilience_core::ops::restore::RestoreOptions;
use resilience_core::repo::Repository;

use crate::bucket::{BucketRestoreOptions, BucketTarget};

/// The drill of a bucket source's backups: restore into `<scratch>/bucket`, then compare the
/// objects and bytes written with what the backup recorded.
#[derive(Clone, Debug)]
pub struct BucketDrill {
    source: String,
}

impl BucketDrill {
    /// The drill of the bucket source `source` (its id in the catalog).
    pub fn new(source: impl Into<String>) -> Self {
        BucketDrill {
            source: source.into(),
        }
    }
}

#[async_trait]
impl Drill for BucketDrill {
    fn source(&self) -> &str {
        &self.source
    }

    fn kind(&self) -> &str {
        "bucket"
    }

    async fn restore_and_check(
        &self,
        repo: &Repository,
        record: &BackupRecord,
        scratch: &Path,
    ) -> Drilled {
        let location = scratch.join("bucket").display().to_string();
        let target = match BucketTarget::new(&location, BucketRestoreOptions::default()) {
            Ok(t) => t,
            Err(e) => {
                return Drilled::new(
                    vec![DrillCheck::fail(
                        "restore",
                        format!(
                            "cannot open the scratch bucket {location}: {}",
                            error_chain(&e)
                        ),
                    )],
                    None,
                )
            }
        };
        let result = repo
            .restore(&record.id, &target, RestoreOptions::default())
            .await;
        let mut checks = vec![restore_check(&result)];
        if result.is_ok() {
            let t = target.tally();
            let objects = record
                .source_metadata
                .get("objects")
                .and_then(|v| v.as_u64())
                .unwrap_or(record.entries);
            let detail = format!(
                "{} objects and {} bytes written, {} refused; the backup recorded {objects} \
                 objects and {} bytes",
                t.written,
                t.written_bytes,
                t.refused.len(),
                record.logical_bytes
            );
            checks.push(
                if t.written == objects
                    && t.written_bytes == record.logical_bytes
                    && t.refused.is_empty()
                {
                    DrillCheck::pass("objects", detail)
                } else {
                    DrillCheck::fail("objects", detail)
                },
            );
        }
        Drilled::new(checks, None)
    }
}
