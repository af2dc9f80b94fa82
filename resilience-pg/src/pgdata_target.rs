//! Restoring a data directory so that no Postgres can start on half of it.
//!
//! A base backup is restored file by file; a restore killed half way leaves a directory that
//! looks like a data directory, and a Postgres started on it would run recovery over missing
//! files. So `global/pg_control`, without which Postgres refuses to start, is restored under
//! another name ([`PENDING_CONTROL`]) and moved into place only once every file is written,
//! the file system is synced and the recovery settings are written ([`PgDataTarget::seal`]).
//! A directory holding the pending name and no `pg_control` is an interrupted restore: a
//! restore run again with `resume` completes it, skipping the files already written.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use resilience_core::source::entry::{EntryMeta, EntryPath};
use resilience_core::source::fs::{sync_file_system, DirTarget};
use resilience_core::source::{AdapterError, ContentCheck, ContentWriter, Target};

use crate::error::PgError;

/// Where `global/pg_control` is restored until the restore completes.
pub const PENDING_CONTROL: &str = "global/pg_control.resilience-restoring";

const CONTROL: &[u8] = b"global/pg_control";

/// A [`DirTarget`] over a data directory that holds `global/pg_control` back (see the module).
pub struct PgDataTarget {
    pgdata: PathBuf,
    inner: DirTarget,
}

impl PgDataTarget {
    /// A target restoring into `pgdata`, which must be empty or missing unless `resume` (an
    /// interrupted restore is completed: files whose bytes already match are skipped).
    pub fn new(pgdata: &Path, resume: bool) -> Self {
        PgDataTarget {
            pgdata: pgdata.to_owned(),
            inner: DirTarget::new(pgdata).resume(resume).durable(true),
        }
    }

    /// Whether `pgdata` holds an interrupted restore (the pending control file and no
    /// `global/pg_control`).
    pub fn interrupted(pgdata: &Path) -> bool {
        pgdata.join(PENDING_CONTROL).exists() && !pgdata.join("global/pg_control").exists()
    }

    /// Completes a restore: syncs the file system that holds `pgdata` (every file written,
    /// before Postgres may start on them), then moves the control file into place and syncs
    /// its directory.
    pub fn seal(pgdata: &Path) -> Result<(), PgError> {
        sync_file_system(pgdata).map_err(PgError::io("sync", pgdata.display()))?;
        let pending = pgdata.join(PENDING_CONTROL);
        let control = pgdata.join("global/pg_control");
        std::fs::rename(&pending, &control).map_err(PgError::io("rename", pending.display()))?;
        let global = pgdata.join("global");
        std::fs::File::open(&global)
            .and_then(|d| d.sync_all())
            .map_err(PgError::io("sync", global.display()))?;
        Ok(())
    }

    fn mapped(meta: &EntryMeta) -> std::borrow::Cow<'_, EntryMeta> {
        if meta.path.as_bytes() == CONTROL {
            let mut m = meta.clone();
            m.path = EntryPath(PENDING_CONTROL.as_bytes().to_vec());
            std::borrow::Cow::Owned(m)
        } else {
            std::borrow::Cow::Borrowed(meta)
        }
    }
}

impl std::fmt::Debug for PgDataTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgDataTarget")
            .field("pgdata", &self.pgdata)
            .finish()
    }
}

#[async_trait]
impl Target for PgDataTarget {
    async fn wants(
        &self,
        meta: &EntryMeta,
        content: &ContentCheck<'_>,
    ) -> Result<bool, AdapterError> {
        self.inner.wants(&Self::mapped(meta), content).await
    }

    async fn create(
        &self,
        meta: &EntryMeta,
    ) -> Result<Option<Box<dyn ContentWriter>>, AdapterError> {
        self.inner.create(&Self::mapped(meta)).await
    }

    async fn apply_metadata(&self, meta: &EntryMeta) -> Result<(), AdapterError> {
        self.inner.apply_metadata(&Self::mapped(meta)).await
    }

    async fn finish(&self) -> Result<(), AdapterError> {
        self.inner.finish().await
    }
}
