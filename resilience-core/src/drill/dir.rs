//! The drill of a directory backup ([`DirDrill`]).

use std::path::Path;

use async_trait::async_trait;

use crate::catalog::BackupRecord;
use crate::ops::restore::RestoreOptions;
use crate::repo::Repository;
use crate::source::fs::DirTarget;

use super::{restore_check, size_check, Drill, Drilled};

/// Drills a directory backup: restores it into `<scratch>/restored` (every blob's checksum
/// verified by the restore), then compares the file count and bytes with the backup's record.
#[derive(Clone, Debug)]
pub struct DirDrill {
    source: String,
}

impl DirDrill {
    /// The drill of the directory source `source` (its id in the catalog).
    pub fn new(source: impl Into<String>) -> Self {
        DirDrill {
            source: source.into(),
        }
    }
}

#[async_trait]
impl Drill for DirDrill {
    fn source(&self) -> &str {
        &self.source
    }

    fn kind(&self) -> &str {
        "dir"
    }

    async fn restore_and_check(
        &self,
        repo: &Repository,
        record: &BackupRecord,
        scratch: &Path,
    ) -> Drilled {
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
}
