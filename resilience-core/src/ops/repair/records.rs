//! `repair catalog`: a record whose current revision does not read back gets a new revision
//! that says what the damaged one said.
//!
//! Readers already read such a record from its newest intact revision, and verify reports the
//! damaged one ([`crate::catalog`]). But the damaged revision may have said more than the older
//! one: a `succeeded` revision cut short as the backup wrote it (the backup then failed, though
//! its data and manifest were complete), or one that rotted later, leaves a record that reads
//! as `running` and a snapshot that nothing lists. The object's name still tells its status, so
//! the new revision is:
//!
//! - **`succeeded`**: the newest intact revision, if it says `succeeded` too; otherwise it is
//!   rebuilt from the snapshot's manifest, which a backup writes only once all its data is
//!   durable, and only if the manifest reads back authentic and agrees with the record on the
//!   snapshot id, the source and the start time. The totals the manifest does not hold
//!   (`stored_bytes`, `new_bytes`) stay as the intact revision has them. A manifest that does
//!   not read back or disagrees leaves the record as it is, named in the report.
//! - **`expired`**: the newest intact revision with that status, unless that one says
//!   `succeeded` and the manifest is still there (the expiry of a succeeded backup deletes the
//!   manifest before it writes the revision: the name is not trusted).
//! - **`failed`**: the newest intact revision with that status, if that one says `running` or
//!   `failed` (nothing fails a backup that succeeded).
//! - **`running`**: the newest intact revision, if it says `running` too.
//!
//! A name that no writer would have written after the intact revision (a forgery, since names
//! are not sealed) is left and named, so that a forged name never changes what a record says.
//!
//! A record none of whose revisions reads is left as it is and named (an attempt that never
//! finished is not counted: nothing was acknowledged under it). The repair holds the catalog
//! lock, as every read-modify-write of a record by anyone but its backup does, and writes each
//! revision create-only; running it again does nothing more.

use serde::Serialize;

use crate::catalog::{BackupRecord, BackupStatus, Catalog, CatalogRef, RepoCatalog};
use crate::error::{Error, Result};
use crate::format::object;
use crate::format::snapshot;
use crate::ops::lifecycle::release_quietly;
use crate::repo::Repository;

/// What `repair catalog` does.
#[derive(Clone, Copy, Debug, Default)]
pub struct RepairCatalogOptions {
    /// Report only: write nothing (no lock either).
    pub dry_run: bool,
}

/// A record given a new revision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RewrittenRecord {
    /// The backup id.
    pub id: String,
    /// The damaged revision it supersedes.
    pub damaged: String,
    /// The new revision's status.
    pub status: BackupStatus,
    /// What the new revision was made from.
    pub from: String,
}

/// A record left as it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LeftRecord {
    /// Its damaged current revision.
    pub object: String,
    /// Why it was left.
    pub reason: String,
}

/// What `repair catalog` found and did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RepairCatalogReport {
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Records looked at.
    pub records_checked: usize,
    /// Records given a new revision (in a dry run: that would be).
    pub rewritten: Vec<RewrittenRecord>,
    /// Records with a damaged current revision that were left as they are.
    pub left: Vec<LeftRecord>,
}

impl Repository {
    /// Gives every record whose current revision does not read back a new revision that says
    /// what the damaged one said (see the [module](self) docs).
    pub async fn repair_catalog(
        &self,
        options: RepairCatalogOptions,
    ) -> Result<RepairCatalogReport> {
        if options.dry_run {
            return self.repair_catalog_locked(options, None).await;
        }
        let lock = self.lock_catalog("repair catalog").await?;
        let result = self.repair_catalog_locked(options, Some(&lock)).await;
        release_quietly(lock, "catalog").await;
        result
    }

    async fn repair_catalog_locked(
        &self,
        options: RepairCatalogOptions,
        lock: Option<&crate::repo::lock::RepoLock>,
    ) -> Result<RepairCatalogReport> {
        let catalog = self.catalog();
        let mut report = RepairCatalogReport {
            dry_run: options.dry_run,
            ..Default::default()
        };
        for r in catalog.refs(None).await? {
            report.records_checked += 1;
            let (record, used) = match catalog.read_current_reporting(&r).await {
                Ok((_, None)) => continue,
                Ok((record, Some((_, used)))) => (record, used),
                Err(e) if RepoCatalog::unreadable_attempt(&r, &e) => continue,
                Err(e @ (Error::Corrupt { .. } | Error::UnsupportedFormat { .. })) => {
                    report.left.push(LeftRecord {
                        object: r.key.clone(),
                        reason: format!("no revision of the record reads back ({e})"),
                    });
                    continue;
                }
                Err(Error::Sink(e)) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            };
            match self.superseding(&r, record, &used).await? {
                Ok((next, from)) => {
                    if let Some(lock) = lock {
                        lock.check()?;
                        catalog.put(&next).await?;
                    }
                    report.rewritten.push(RewrittenRecord {
                        id: r.id.clone(),
                        damaged: r.key.clone(),
                        status: next.status,
                        from,
                    });
                }
                Err(reason) => report.left.push(LeftRecord {
                    object: r.key.clone(),
                    reason,
                }),
            }
        }
        Ok(report)
    }

    /// The revision that supersedes `r`, damaged, given `intact`, read from the newest intact
    /// revision `used` (its revision number already `r`'s): with where it came from, or why
    /// there is none.
    async fn superseding(
        &self,
        r: &CatalogRef,
        intact: BackupRecord,
        used: &str,
    ) -> Result<std::result::Result<(BackupRecord, String), String>> {
        let mut next = intact;
        next.revision = r.revision + 1;
        next.updated_at = self.clock.now();
        let Some(status) = r.status else {
            return Ok(Err(format!(
                "its name carries no status, so what it said is unknown (the record reads from {used})"
            )));
        };
        let manifest_key = snapshot::manifest_key(&r.id);
        match (status, next.status) {
            (BackupStatus::Succeeded, BackupStatus::Succeeded) => {
                return Ok(Ok((next, used.to_owned())))
            }
            (BackupStatus::Succeeded, _) => {}
            // An expiry of a succeeded backup deletes the manifest before it writes its
            // `expired` revision (that of a failed one leaves the manifest).
            (BackupStatus::Expired, reads) => {
                if reads == BackupStatus::Succeeded && self.sink.head(&manifest_key).await.is_ok() {
                    return Ok(Err(format!(
                        "its name says expired, but its manifest {manifest_key} is still there, \
                         which no expiry leaves (a forged name?); the record reads from {used} ({})",
                        next.status
                    )));
                }
                next.status = BackupStatus::Expired;
                return Ok(Ok((next, used.to_owned())));
            }
            // A backup fails, or a reaper fails it, only while it says running.
            (BackupStatus::Failed, BackupStatus::Running | BackupStatus::Failed) => {
                next.status = BackupStatus::Failed;
                return Ok(Ok((next, used.to_owned())));
            }
            (BackupStatus::Running, BackupStatus::Running) => {
                return Ok(Ok((next, used.to_owned())))
            }
            (said, reads) => {
                return Ok(Err(format!(
                    "its name says {said}, which never follows {reads} (a forged name?); the \
                     record reads from {used}"
                )))
            }
        }
        // It said succeeded, the intact revision does not: rebuild from the manifest.
        let key = manifest_key;
        let bytes = match self.sink.get(&key).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => {
                return Ok(Err(format!(
                    "it said succeeded, but its manifest {key} is gone (the record reads from {used}, {})",
                    next.status
                )))
            }
            Err(e) => return Err(e.into()),
        };
        let manifest = match self.open_manifest(&key, &bytes) {
            Ok(m) => m,
            Err(e @ (Error::Corrupt { .. } | Error::UnsupportedFormat { .. })) => {
                return Ok(Err(format!(
                    "it said succeeded, but its manifest does not read back: {e}"
                )))
            }
            Err(e) => return Err(e),
        };
        if manifest.id != r.id
            || manifest.source != next.source
            || manifest.started_at != next.started_at
        {
            return Ok(Err(format!(
                "it said succeeded, but its manifest {key} disagrees with {used} on the snapshot, \
                 the source or the start time"
            )));
        }
        next.status = BackupStatus::Succeeded;
        next.error = None;
        next.finished_at = Some(manifest.finished_at);
        next.entries = manifest.entries;
        next.logical_bytes = manifest.logical_bytes;
        next.labels = manifest.labels;
        next.parent = manifest.parent;
        next.source_metadata = manifest.source_metadata;
        next.manifest_checksum = object::stored_checksum(&bytes);
        Ok(Ok((next, format!("{used} and {key}"))))
    }
}
