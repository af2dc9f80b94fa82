//! Drill of a bucket backup: restore every object into a scratch directory (a local bucket),
//! every blob's checksum verified by the restore, then the object count and bytes compared
//! with the backup's record.

use std::path::Path;

use resilience_core::catalog::BackupRecord;
use resilience_core::drill::DrillCheck;
use resilience_core::ops::restore::RestoreOptions;
use resilience_core::repo::Repository;
use resilience_objstore::bucket::{BucketRestoreOptions, BucketTarget};

use super::{chain, restore_check, Drilled};

/// Restores `record` into `scratch/bucket` and checks it.
pub(crate) async fn drill(repo: &Repository, record: &BackupRecord, scratch: &Path) -> Drilled {
    let location = scratch.join("bucket").display().to_string();
    let target = match BucketTarget::new(&location, BucketRestoreOptions::default()) {
        Ok(t) => t,
        Err(e) => {
            return Drilled::new(
                vec![DrillCheck::fail(
                    "restore",
                    format!("cannot open the scratch bucket {location}: {}", chain(&e)),
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
            "{} objects and {} bytes written, {} refused; the backup recorded {objects} objects \
             and {} bytes",
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
