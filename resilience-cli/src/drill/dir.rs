//! Drill of a directory backup: restore into a new directory, every blob's checksum verified
//! by the restore itself, then the file count and bytes compared with the backup's record.

use std::path::Path;

use resilience_core::catalog::BackupRecord;
use resilience_core::drill::DrillCheck;
use resilience_core::ops::restore::RestoreOptions;
use resilience_core::repo::Repository;
use resilience_core::source::fs::DirTarget;

use super::{restore_check, Drilled};

/// Restores `record` into `scratch/restored` and checks it.
pub(crate) async fn drill(repo: &Repository, record: &BackupRecord, scratch: &Path) -> Drilled {
    let target = scratch.join("restored");
    let result = repo
        .restore(
            &record.id,
            &DirTarget::new(&target),
            RestoreOptions::default(),
        )
        .await;
    let mut checks = vec![restore_check(&result)];
    if let Ok(r) = &result {
        checks.push(size_check(r.entries, r.bytes, record));
    }
    Drilled::new(checks, None)
}

/// The restored entries and bytes against the record's `entries` and `logical_bytes`.
pub(crate) fn size_check(entries: u64, bytes: u64, record: &BackupRecord) -> DrillCheck {
    let detail = format!(
        "{entries} entries and {bytes} bytes restored; the backup recorded {} and {}",
        record.entries, record.logical_bytes
    );
    if entries == record.entries && bytes == record.logical_bytes {
        DrillCheck::pass("size", detail)
    } else {
        DrillCheck::fail("size", detail)
    }
}
