//! Repairs: derived state is rebuilt from what it was derived from.
//!
//! **`repair index`** ([`Repository::repair_index`]) rebuilds the index files from the packs'
//! own tables. Under the maintenance lock (which excludes prune, forget and other maintenance,
//! not backups) it lists `index/` first and `data/` second, reads every pack's table, writes new
//! index files covering every readable pack, and only then deletes every index file of its first
//! listing (damaged or not: the new files cover everything). Index files that backups write
//! meanwhile are not in that listing and stay; their packs were durable before the files were
//! written, so the `data/` listing holds them too.
//!
//! - A pack whose table does not read back is named in the report. If an intact index file
//!   listed it, that record is kept (so verify still tells which of its blobs read back and
//!   which snapshots it affects); otherwise it stays unindexed.
//! - A pack that a prune plan condemned is not indexed again (the plan decides its fate), unless
//!   an intact index file listed it already: repair then keeps it as it was. A plan that does
//!   not read back decides nothing: every pack is indexed, and the plan is removed after the
//!   new index files are written.
//! - A pack that an intact index file lists but that is missing from `data/` keeps its record,
//!   so verify goes on naming the loss and the snapshots it affects.
//!
//! A crash at any point leaves a repository that opens and restores: the new files are written
//! before any old one is deleted, and readers fall back to the packs' tables while a damaged
//! file remains. Running it again finishes the job (it is idempotent).
//!
//! **Append-only sinks.** Where deletes are refused (an append-only client), the new index files
//! are still written and the old files that could not be removed are named in
//! [`RepairIndexReport::not_removed`]; the call succeeds, since the repository is then complete
//! and restorable, and a damaged file left behind only costs readers a listing of `data/`.
//! Running `repair index` again with maintenance credentials removes them.
//!
//! **`repair snapshots`** ([`Repository::repair_snapshots`], in [`snapshots`]) is for data that
//! nothing rebuilds: it names the snapshots that lost data and what they lost, and with
//! `salvage` writes, for each, a new snapshot holding everything that is still restorable.
//!
//! **`repair catalog`** ([`Repository::repair_catalog`], in [`records`]) gives a record whose
//! current revision does not read back a new revision saying what the damaged one said.

pub mod records;
pub mod snapshots;

pub use records::{LeftRecord, RepairCatalogOptions, RepairCatalogReport, RewrittenRecord};

pub use snapshots::{
    DamagedSnapshot, Loss, LostFile, LostObject, LostTree, RepairSnapshotsOptions,
    RepairSnapshotsReport, SalvageAction,
};

use std::collections::{HashMap, HashSet};

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::format::index::PackRecord;
use crate::format::pack::{self, PackId};
use crate::repo::lock::{LockKind, RepoLock};
use crate::repo::{IndexFile, Repository};
use crate::sink::SinkError;

/// Packs per new index file (as prune writes them).
const PACKS_PER_INDEX_FILE: usize = 256;

/// How to repair the index.
#[derive(Clone, Copy, Debug, Default)]
pub struct RepairIndexOptions {
    /// Compute and report only: nothing is written or deleted.
    pub dry_run: bool,
}

/// A pack whose table could not be read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UnreadablePack {
    /// The pack's key.
    pub pack: String,
    /// Why its table does not read back.
    pub problem: String,
    /// Whether an intact index file's record of it was kept in the new index.
    pub kept_from_index: bool,
}

/// What `repair index` did (or, in a dry run, would do).
#[derive(Clone, Debug, Default, Serialize)]
pub struct RepairIndexReport {
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Packs the new index files list.
    pub packs_indexed: usize,
    /// Blob records in the new index files.
    pub blobs: usize,
    /// Index files that were damaged, truncated or did not decode (sorted).
    pub damaged_index_files: Vec<String>,
    /// Of those, the ones removed (in a dry run: that would be).
    pub damaged_removed: Vec<String>,
    /// Intact old index files removed (their packs are in the new files).
    pub old_removed: usize,
    /// Old index files (and damaged prune plans) that could not be removed (an append-only
    /// sink refuses deletes): run `resilience repair index` again with maintenance credentials.
    pub not_removed: Vec<String>,
    /// Prune plans that do not read back: removed (in a dry run: would be) once the new index
    /// files list their packs, which are indexed again (a later prune condemns them anew).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub damaged_prune_plans: Vec<String>,
    /// The new index files written (empty in a dry run).
    pub index_files_written: Vec<String>,
    /// How many new index files were (or would be) written.
    pub new_index_files: usize,
    /// Packs whose table does not read back, with why.
    pub unreadable_packs: Vec<UnreadablePack>,
    /// Packs that an intact index file lists but that are missing from `data/` (kept, so that
    /// verify names the loss).
    pub missing_packs: Vec<String>,
    /// Packs a prune plan condemned that no index listed: left to prune, not indexed again.
    pub condemned_skipped: usize,
}

impl RepairIndexReport {
    /// True when no index file needed repair and every pack read back.
    pub fn was_sound(&self) -> bool {
        self.damaged_index_files.is_empty()
            && self.unreadable_packs.is_empty()
            && self.missing_packs.is_empty()
    }
}

impl Repository {
    /// Rebuilds the index files from the packs' own tables (see the [module](self) docs).
    /// `Ok` means the new index files are durable (or, in a dry run, were computed).
    pub async fn repair_index(&self, options: RepairIndexOptions) -> Result<RepairIndexReport> {
        let lock = self
            .lock_fresh(LockKind::Maintenance, "repair index", None)
            .await?;
        let result = self.repair_index_locked(options, &lock).await;
        if let Err(e) = lock.release().await {
            tracing::warn!(error = %e, "could not remove the repair lock; it will expire");
        }
        result
    }

    async fn repair_index_locked(
        &self,
        options: RepairIndexOptions,
        lock: &RepoLock,
    ) -> Result<RepairIndexReport> {
        let mut report = RepairIndexReport {
            dry_run: options.dry_run,
            ..Default::default()
        };
        // Index files first, packs second: every pack an index file listed was durable before
        // the file was written, so the data listing holds it.
        let old_files: Vec<String> = self
            .sink
            .list("index/")
            .map_ok(|m| m.key)
            .try_collect()
            .await?;
        let mut from_index: HashMap<PackId, PackRecord> = HashMap::new();
        let mut read_files = Vec::with_capacity(old_files.len());
        let mut reads = futures::stream::iter(old_files)
            .map(|key| async move {
                let read = self.read_index_file(&key).await;
                (key, read)
            })
            .buffer_unordered(8);
        while let Some((key, read)) = reads.next().await {
            match read? {
                IndexFile::Packs(packs) => {
                    for p in packs {
                        from_index.entry(p.id).or_insert(p);
                    }
                    read_files.push(key);
                }
                IndexFile::Missing => {}
                IndexFile::Damaged(e) => {
                    tracing::warn!(index_file = %key, error = %e, "damaged index file: rebuilding it from the packs");
                    report.damaged_index_files.push(key.clone());
                    read_files.push(key);
                }
            }
        }
        drop(reads);
        report.damaged_index_files.sort();
        // A damaged plan's packs are unknown: they are indexed again (safe: the plan is
        // removed below, so no prune deletes them on its word).
        let (plans, damaged_plans) = self.readable_prune_plans().await?;
        report.damaged_prune_plans = damaged_plans;
        let condemned: HashSet<PackId> = plans
            .into_iter()
            .flat_map(|(_, _, packs)| packs.into_iter().map(|p| p.id))
            .collect();

        let metas: Vec<_> = self.sink.list("data/").try_collect().await?;
        let mut candidates = Vec::new();
        let mut listed: HashSet<PackId> = HashSet::new();
        for meta in metas {
            let Some(id) = pack::pack_id_from_key(&meta.key) else {
                continue;
            };
            listed.insert(id);
            if condemned.contains(&id) && !from_index.contains_key(&id) {
                report.condemned_skipped += 1;
                continue;
            }
            candidates.push(meta);
        }
        let tables: Vec<(String, Result<PackRecord>)> = futures::stream::iter(candidates)
            .map(|meta| async move {
                let table = self.read_pack_table(&meta.key, meta.size).await;
                (meta.key, table)
            })
            .buffer_unordered(8)
            .collect()
            .await;
        let mut records: Vec<PackRecord> = Vec::with_capacity(tables.len());
        for (key, table) in tables {
            match table {
                Ok(record) => records.push(record),
                Err(Error::Sink(e)) if e.is_not_found() => {
                    // Deleted since the listing: only maintenance deletes packs, and it is
                    // excluded; treat it as missing if an index knew it.
                    if let Some(id) = pack::pack_id_from_key(&key) {
                        listed.remove(&id);
                    }
                }
                Err(Error::Sink(e)) => return Err(e.into()),
                Err(e) => {
                    let id = pack::pack_id_from_key(&key).expect("listed as a pack");
                    let kept = from_index.get(&id);
                    tracing::warn!(pack = %key, error = %e, "a pack's table does not read back");
                    report.unreadable_packs.push(UnreadablePack {
                        pack: key,
                        problem: match e {
                            Error::Corrupt { reason, .. } => reason,
                            other => other.to_string(),
                        },
                        kept_from_index: kept.is_some(),
                    });
                    records.extend(kept.cloned());
                }
            }
        }
        for (id, record) in &from_index {
            if !listed.contains(id) {
                report.missing_packs.push(pack::pack_key(id));
                records.push(record.clone());
            }
        }
        report.unreadable_packs.sort_by(|a, b| a.pack.cmp(&b.pack));
        report.missing_packs.sort();
        records.sort_by_key(|p| p.id);
        records.dedup_by_key(|p| p.id);
        report.packs_indexed = records.len();
        report.blobs = records.iter().map(|p| p.blobs.len()).sum();
        report.new_index_files = records.len().div_ceil(PACKS_PER_INDEX_FILE);

        let damaged: HashSet<&String> = report.damaged_index_files.iter().collect();
        if options.dry_run {
            report.damaged_removed = report.damaged_index_files.clone();
            report.old_removed = read_files.len() - report.damaged_removed.len();
            return Ok(report);
        }
        // New files first (durable when each put returns), deletes last.
        lock.check()?;
        let mut written = HashSet::new();
        for chunk in records.chunks(PACKS_PER_INDEX_FILE) {
            let (name, _) = self.write_index_named(chunk).await?;
            written.insert(name.clone());
            report.index_files_written.push(name);
        }
        lock.check()?;
        let mut damaged_removed = Vec::new();
        for key in read_files.iter().filter(|k| !written.contains(*k)) {
            match self.sink.delete(key).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(SinkError::Refused { .. }) => {
                    report.not_removed.push(key.clone());
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            if damaged.contains(key) {
                damaged_removed.push(key.clone());
            } else {
                report.old_removed += 1;
            }
        }
        // Only now that the new index files list the damaged plans' packs.
        for key in &report.damaged_prune_plans {
            match self.sink.delete(key).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(SinkError::Refused { .. }) => report.not_removed.push(key.clone()),
                Err(e) => return Err(e.into()),
            }
        }
        damaged_removed.sort();
        report.not_removed.sort();
        report.damaged_removed = damaged_removed;
        if !report.not_removed.is_empty() {
            tracing::warn!(
                files = report.not_removed.len(),
                "the sink refuses deletes (append-only): the new index is complete, but old \
                 index files remain; run `resilience repair index` again with maintenance \
                 credentials to remove them"
            );
        }
        Ok(report)
    }
}
