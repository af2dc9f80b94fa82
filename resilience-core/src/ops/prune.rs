//! Garbage collection that is safe beside running backups, in two phases.
//!
//! **Phase 1** (each run): find every blob that a snapshot manifest references (whatever the
//! catalog says of its backup: a status alone never condemns data); packs with no
//! live blob are *condemned*; packs whose live share is below the repack threshold have their
//! live blobs copied (still sealed, after checking the pack's checksum) into new packs and are
//! condemned too; packs that no index lists (left by interrupted backups) are condemned, in a
//! plan of their own. New
//! index files that leave the condemned packs out are written, then a plan
//! `prune/<id>` (a sealed object listing the condemned packs and their tables), then the old
//! index files are deleted. Nothing is deleted from the data yet.
//!
//! **Phase 2** (a later run): a plan is *ripe* once it is older than the grace period and no
//! lock taken before it is still live — so every backup that might have deduplicated against a
//! condemned pack has finished and its snapshot is in the catalog. Each condemned pack is then
//! deleted, unless an index lists it again (a backup indexed it) or a succeeded snapshot uses
//! one of its blobs (it is then *resurrected*: indexed again). The plan goes last.
//!
//! A plan of unindexed packs only needs no grace period: no snapshot and no index ever named
//! them, and backups do not adopt condemned packs, so once no lock taken before the plan is
//! live (the backup that wrote them has ended, and no backup that might have adopted them
//! runs) nothing can need them. The run that condemns them finishes them in a second pass: the
//! space a failed backup used comes back with the next prune.
//!
//! Between the phases, readers still find condemned packs through the plans
//! ([`Repository::load_read_index`]). Prune takes a maintenance lock, which excludes another
//! prune but not backups. It can be killed at any point: every step is ordered so that an
//! interruption leaves extra objects, never missing ones, and the next run finishes the job.
//!
//! Prune never decides from an incomplete index: a damaged index file makes it fail, naming the
//! file and saying to run `resilience repair index` ([`Repository::repair_index`]) first,
//! before anything is deleted.
//!
//! Each run also discards the unfinished uploads (multipart uploads, staging files) that killed
//! writers left, once older than the grace period (the private `uploads` module).

pub mod retention;
mod uploads;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::catalog::BackupStatus;
use crate::error::{Error, Result};
use crate::format::blob::BlobId;
use crate::format::index::{self, Index, PackRecord};
use crate::format::object::{self, ObjectKind};
use crate::format::pack::{self, PackBuilder, PackId};
use crate::format::snapshot::Content;
use crate::repo::lock::{self, LockKind, RepoLock};
use crate::repo::{self, Repository};
use retention::{DeferredDelete, RetentionReport};

/// How to prune.
#[derive(Clone, Copy, Debug)]
pub struct PruneOptions {
    /// How old a plan must be before its packs are deleted (clock skew, eventual consistency,
    /// backups that outlive their lock's view).
    pub grace: Duration,
    /// Packs whose live bytes are below this share are repacked.
    pub repack_below: f64,
    /// Compute and report only.
    pub dry_run: bool,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            grace: Duration::from_secs(24 * 3600),
            repack_below: 0.5,
            dry_run: false,
        }
    }
}

/// What a prune did (or, in a dry run, would do).
#[derive(Clone, Debug, Default, Serialize)]
pub struct PruneReport {
    /// Packs examined.
    pub packs: usize,
    /// Blobs referenced by succeeded snapshots.
    pub referenced_blobs: usize,
    /// Packs condemned in this run (deleted by a later run).
    pub condemned_packs: usize,
    /// Their bytes.
    pub condemned_bytes: u64,
    /// Packs repacked in this run.
    pub repacked_packs: usize,
    /// Live bytes copied by repacking.
    pub repacked_bytes: u64,
    /// Packs deleted in this run (condemned by an earlier one).
    pub deleted_packs: usize,
    /// Bytes freed in this run.
    pub freed_bytes: u64,
    /// Condemned packs found in use again and indexed.
    pub resurrected_packs: usize,
    /// Plans not yet ripe, with why.
    pub waiting_plans: Vec<String>,
    /// Unfinished uploads (left by killed writers) discarded in this run (or, in a dry run,
    /// that would be).
    pub discarded_uploads: usize,
    /// Unfinished uploads not yet discarded, with why.
    pub waiting_uploads: Vec<String>,
    /// Unfinished uploads that could not be listed or discarded (the next prune tries again).
    pub upload_warnings: Vec<String>,
    /// Manifests that do not read back, of backups that never committed (cut short as they
    /// were written): their references are not counted, and they are deleted (unless a dry
    /// run): no snapshot was ever acknowledged under them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub abandoned_manifests: Vec<String>,
    /// Objects this run would have deleted that the store's object lock still holds: left in
    /// place (their plan too) for a prune after their date.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deferred: Vec<DeferredDelete>,
    /// What this run did to the retention of what live snapshots need, in a repository under
    /// an object lock ([`Repository::extend_retention`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionReport>,
}

#[derive(Serialize, Deserialize)]
struct PlanHeader {
    created_at: DateTime<Utc>,
    /// Every pack of the plan was unindexed (left by a failed or killed backup): no snapshot
    /// and no index ever named it, so no reader can need it, and the plan is ripe as soon as
    /// no lock taken before it is live, without waiting for the grace period.
    #[serde(default)]
    unindexed_only: bool,
}

/// A prune plan as read from the store.
struct StoredPlan {
    key: String,
    header: PlanHeader,
    packs: Vec<PackRecord>,
}

/// A prune plan as stored: header JSON length u32, header JSON, then an index payload.
fn encode_plan(header: &PlanHeader, packs: &[PackRecord]) -> Vec<u8> {
    let header = serde_json::to_vec(header).expect("serializes");
    let mut out = (header.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(&index::encode_index(packs));
    out
}

fn decode_plan(name: &str, payload: &[u8]) -> Result<(PlanHeader, Vec<PackRecord>)> {
    let bad = || Error::corrupt(name, "prune plan does not parse");
    let len = u32::from_le_bytes(payload.get(..4).ok_or_else(bad)?.try_into().expect("4")) as usize;
    let header: PlanHeader =
        serde_json::from_slice(payload.get(4..4 + len).ok_or_else(bad)?).map_err(|_| bad())?;
    Ok((header, index::decode_index(name, &payload[4 + len..])?))
}

/// What a pass of [`Repository::prune`] does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Unfinished uploads, phase 2 of every ripe plan, then phase 1.
    Full,
    /// Phase 2 of the plans of unindexed packs only: those the full pass has just written.
    UnindexedPlans,
}

/// A bitset over the sorted index positions: which blobs are referenced.
struct Referenced {
    bits: Vec<u64>,
    outside: HashSet<BlobId>,
    /// Manifests that do not read back, of backups that never committed
    /// ([`Repository::never_committed`]): their blobs are not marked.
    abandoned: Vec<String>,
}

impl Referenced {
    fn new(n: usize) -> Self {
        Referenced {
            bits: vec![0; n.div_ceil(64)],
            outside: HashSet::new(),
            abandoned: Vec::new(),
        }
    }
    fn mark(&mut self, index: &Index, id: &BlobId) {
        match index.position(id) {
            Some(i) => self.bits[i / 64] |= 1 << (i % 64),
            None => {
                self.outside.insert(*id);
            }
        }
    }
    fn is_marked(&self, index: &Index, id: &BlobId) -> bool {
        match index.position(id) {
            Some(i) => self.bits[i / 64] & (1 << (i % 64)) != 0,
            None => self.outside.contains(id),
        }
    }
    fn count(&self) -> usize {
        self.bits
            .iter()
            .map(|w| w.count_ones() as usize)
            .sum::<usize>()
            + self.outside.len()
    }
}

/// What became of an object prune deleted.
enum Deleted {
    /// Deleted by this run.
    Now,
    /// Gone already (an earlier run deleted it).
    Earlier,
    /// The store's object lock holds it.
    Deferred(DeferredDelete),
}

/// A prune plan as readers see it: its key, when it was made, the packs it condemns.
pub type PrunePlanPacks = (String, DateTime<Utc>, Vec<PackRecord>);

impl Repository {
    /// The stored prune plans: key, creation time, condemned packs. A damaged plan is an error
    /// naming it ([`Repository::readable_prune_plans`] skips it instead).
    pub async fn prune_plans(&self) -> Result<Vec<PrunePlanPacks>> {
        Ok(self
            .stored_plans()
            .await?
            .into_iter()
            .map(|p| (p.key, p.header.created_at, p.packs))
            .collect())
    }

    /// Every prune plan, for prune itself, which must never decide from a plan it cannot
    /// read: a damaged one is an error that names it and says to run `resilience repair index`
    /// (which removes it; its packs are indexed again).
    async fn stored_plans(&self) -> Result<Vec<StoredPlan>> {
        let (plans, damaged) = self.stored_plans_report().await?;
        if let Some((key, e)) = damaged.into_iter().next() {
            let problem = match e {
                Error::Corrupt { reason, .. } => reason,
                other => other.to_string(),
            };
            return Err(Error::corrupt(
                &key,
                format!(
                    "{problem}; prune needs every prune plan: run `resilience repair index` \
                     first (it removes the damaged plan and indexes its packs again)"
                ),
            ));
        }
        Ok(plans)
    }

    /// The prune plans that read back, and the damaged ones with why.
    async fn stored_plans_report(&self) -> Result<(Vec<StoredPlan>, Vec<(String, Error)>)> {
        let keys: Vec<String> = self
            .sink
            .list("prune/")
            .map_ok(|m| m.key)
            .try_collect()
            .await?;
        let mut out = Vec::new();
        let mut damaged = Vec::new();
        for key in keys {
            let bytes = match self.sink.get(&key).await {
                Ok(b) => b,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e.into()),
            };
            let read = object::open_object(&self.keys(), ObjectKind::PrunePlan, &key, &bytes)
                .and_then(|payload| decode_plan(&key, &payload));
            match read {
                Ok((header, packs)) => out.push(StoredPlan { key, header, packs }),
                Err(e @ (Error::Corrupt { .. } | Error::UnsupportedFormat { .. })) => {
                    damaged.push((key, e))
                }
                Err(e) => return Err(e),
            }
        }
        Ok((out, damaged))
    }

    /// The prune plans that read back, and the keys of those that do not (warned about, naming
    /// them): for readers, which find a damaged plan's packs from their own tables, as they
    /// do a damaged index file's.
    pub async fn readable_prune_plans(&self) -> Result<(Vec<PrunePlanPacks>, Vec<String>)> {
        let (plans, damaged) = self.stored_plans_report().await?;
        for (key, e) in &damaged {
            tracing::warn!(plan = %key, error = %e, "skipping a damaged prune plan: its packs are found from their own tables; run `resilience repair index` to remove it");
        }
        Ok((
            plans
                .into_iter()
                .map(|p| (p.key, p.header.created_at, p.packs))
                .collect(),
            damaged.into_iter().map(|(k, _)| k).collect(),
        ))
    }

    /// The index for reading: live index files, then the packs that prune plans condemned but
    /// have not deleted yet (so a snapshot written by a backup that raced a prune stays
    /// restorable until the prune resurrects its packs).
    pub async fn load_read_index(&self) -> Result<Index> {
        let loaded = self.load_index_report().await?;
        let mut index = loaded.index;
        let (plans, damaged_plans) = self.readable_prune_plans().await?;
        for (_, _, packs) in plans {
            for p in &packs {
                index.add_pack(p);
            }
        }
        // A damaged plan's packs are in no index file: from their own tables (done already
        // when an index file is damaged).
        if !damaged_plans.is_empty() && loaded.damaged.is_empty() {
            for p in self.unindexed_packs(&index).await? {
                index.add_pack(&p);
            }
        }
        index.compact();
        Ok(index)
    }

    /// Marks every blob that a snapshot manifest in this store references, whatever the
    /// catalog says of its backup: data follows manifests, never catalog labels alone. A
    /// manifest that cannot be read stops the prune (its blobs are unknown), naming it —
    /// unless its backup never committed ([`Repository::never_committed`]): then nothing was
    /// ever acknowledged under it, and it is skipped (and named in the report).
    async fn referenced_blobs(&self, index: &Index) -> Result<Referenced> {
        let mut referenced = Referenced::new(index.blob_count());
        let abandoned = self
            .visit_referenced(index, &HashSet::new(), |id| referenced.mark(index, id))
            .await?;
        referenced.abandoned = abandoned;
        Ok(referenced)
    }

    /// Calls `visit` with every blob that a snapshot manifest in this store references (tree
    /// blobs and content blobs), leaving out the manifests named in `skip`; returns the
    /// manifests skipped as abandoned (see [`Repository::referenced_blobs`]).
    async fn visit_referenced(
        &self,
        index: &Index,
        skip: &HashSet<String>,
        mut visit: impl FnMut(&BlobId),
    ) -> Result<Vec<String>> {
        let mut abandoned = Vec::new();
        let keys: Vec<String> = self
            .sink
            .list("snapshots/")
            .map_ok(|m| m.key)
            .try_collect()
            .await?;
        for key in keys.into_iter().filter(|k| !skip.contains(k)) {
            let bytes = match self.sink.get(&key).await {
                Ok(b) => b,
                // Expired (or moved to the other tier) since the listing.
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e.into()),
            };
            let manifest = match self.open_manifest(&key, &bytes) {
                Ok(m) => m,
                Err(e @ Error::Corrupt { .. }) if self.never_committed(&key).await? => {
                    tracing::warn!(manifest = %key, error = %e, "skipping the unreadable manifest of a backup that never committed");
                    abandoned.push(key);
                    continue;
                }
                Err(e) => {
                    return Err(Error::PruneManifestUnreadable {
                        manifest: key.clone(),
                        source: Box::new(e),
                    })
                }
            };
            for r in &manifest.tree {
                visit(&r.id);
            }
            let mut tree =
                crate::ops::restore::TreeReader::new(self.clone(), index, &manifest.tree);
            while let Some(rec) = tree.next().await? {
                if let Content::Blobs(blobs) = &rec.content {
                    for b in blobs {
                        visit(&b.id);
                    }
                }
            }
        }
        Ok(abandoned)
    }

    /// Whether the backup of manifest `key` never committed, so that its manifest, should it
    /// not read back, was never acknowledged: its catalog record exists, and none of its
    /// revisions (by their object names, which a damaged object keeps) says `succeeded` or
    /// `expired` (or carries no status), and no live lock names the backup. A backup commits by
    /// writing its `succeeded` revision after its manifest, so a manifest cut short as it was
    /// written (a torn put, which fails the backup) is one of these; a committed backup's
    /// rotted manifest is not, and stops the prune.
    async fn never_committed(&self, key: &str) -> Result<bool> {
        let Some(id) = key.strip_prefix("snapshots/") else {
            return Ok(false);
        };
        let revisions = self.catalog().revisions(id).await?;
        let uncommitted = |r: &crate::catalog::CatalogRef| {
            matches!(
                r.status,
                Some(BackupStatus::Running) | Some(BackupStatus::Failed)
            )
        };
        if revisions.is_empty() || !revisions.iter().all(uncommitted) {
            return Ok(false);
        }
        let locks = lock::list_locks(self.sink.as_ref()).await?;
        let live = locks
            .live_others(None, self.clock.now())
            .any(|l| l.info.backup_id.as_deref() == Some(id));
        Ok(!live)
    }

    /// Deletes `key`, unless the store's object lock still holds it. In a repository without
    /// an object lock, a plain delete.
    async fn delete_unless_locked(&self, key: &str) -> Result<Deleted> {
        if self.config.object_lock.is_some() {
            // Asked first, so that a pack an earlier run deleted is not counted again.
            match self.sink.retention(key).await {
                Err(e) if e.is_not_found() => return Ok(Deleted::Earlier),
                Err(e) => return Err(e.into()),
                Ok(_) => {}
            }
        }
        match self.sink.delete(key).await {
            Ok(()) => Ok(Deleted::Now),
            Err(e) => match e.locked_until() {
                Some(until) => Ok(Deleted::Deferred(DeferredDelete {
                    key: key.to_owned(),
                    until,
                })),
                None => Err(e.into()),
            },
        }
    }

    /// Runs phase 2 for ripe plans, then phase 1.
    pub async fn prune(&self, options: PruneOptions) -> Result<PruneReport> {
        let lock = self
            .lock_fresh(LockKind::Maintenance, "prune", None)
            .await?;
        let result = self.prune_locked(options, &lock).await;
        if let Err(e) = lock.release().await {
            tracing::warn!(error = %e, "could not remove the prune lock; it will expire");
        }
        result
    }

    async fn prune_locked(&self, options: PruneOptions, lock: &RepoLock) -> Result<PruneReport> {
        let retention = match (self.config.object_lock, options.dry_run) {
            (Some(_), false) => Some(self.extend_retention().await?),
            _ => None,
        };
        let (mut report, wrote_unindexed_plan) = self.prune_pass(options, lock, Pass::Full).await?;
        report.retention = retention;
        if wrote_unindexed_plan {
            // The packs of failed backups, condemned just now: phase 2 of their plan (which
            // needs no grace period), unless a backup that began before it still runs.
            let (second, _) = self.prune_pass(options, lock, Pass::UnindexedPlans).await?;
            report.deleted_packs += second.deleted_packs;
            report.freed_bytes += second.freed_bytes;
            report.resurrected_packs += second.resurrected_packs;
            report.waiting_plans.extend(second.waiting_plans);
            report.deferred.extend(second.deferred);
        }
        Ok(report)
    }

    /// One pass (see [`Pass`]). Says whether it wrote a plan of unindexed packs only (never in
    /// a dry run).
    async fn prune_pass(
        &self,
        options: PruneOptions,
        lock: &RepoLock,
        pass: Pass,
    ) -> Result<(PruneReport, bool)> {
        let mut report = PruneReport::default();
        let now = self.clock.now();
        let grace = chrono::Duration::from_std(options.grace)
            .map_err(|_| Error::Usage("grace period too long".into()))?;
        let locks = lock::list_locks(self.sink.as_ref()).await?;
        if pass == Pass::Full {
            self.discard_unfinished_uploads(&options, &locks, lock, grace, &mut report)
                .await;
        }
        let plans = self.stored_plans().await?;
        // The store's time of each plan: its age and the locks taken before it are judged by
        // the store's clock, like lock liveness, never by comparing two clients' clocks.
        let plan_stored_at: HashMap<String, DateTime<Utc>> = self
            .sink
            .list("prune/")
            .try_filter_map(|m| futures::future::ready(Ok(m.last_modified.map(|t| (m.key, t)))))
            .try_collect()
            .await?;
        let plan_packs: HashSet<PackId> = plans
            .iter()
            .flat_map(|p| p.packs.iter().map(|r| r.id))
            .collect();

        // Phase 2: finish ripe plans (in a block, so its indexes are freed before phase 1).
        if !plans.is_empty() {
            let read_index = self.load_read_index().await?;
            let referenced = self.referenced_blobs(&read_index).await?;
            // Never decide deletions from an incomplete index: a damaged index file stops
            // prune here, before anything is deleted.
            let live_index = self.load_index_strict().await?;
            for plan in &plans {
                if pass == Pass::UnindexedPlans && !plan.header.unindexed_only {
                    continue;
                }
                let (key, created_at, packs) = (&plan.key, &plan.header.created_at, &plan.packs);
                let stored_at = plan_stored_at.get(key).copied();
                let young = match (stored_at, locks.store_now) {
                    (Some(at), Some(store_now)) => at > store_now - grace,
                    _ => *created_at > now - grace,
                };
                if young && !plan.header.unindexed_only {
                    report
                        .waiting_plans
                        .push(format!("{key}: younger than the grace period"));
                    continue;
                }
                if let Some(l) = locks
                    .live_others(Some(lock.key()), now)
                    .find(|l| locks.taken_no_later_than(l, stored_at, *created_at))
                {
                    report.waiting_plans.push(format!(
                        "{key}: {} ({} by {}) was taken before it",
                        l.key, l.info.purpose, l.info.owner
                    ));
                    continue;
                }
                let mut resurrect = Vec::new();
                for p in packs {
                    if live_index.has_pack(&p.id) {
                        continue;
                    }
                    // Resurrect only what a snapshot needs and no live pack holds: a repacked
                    // pack's live blobs are in its replacement already.
                    if p.blobs.iter().any(|b| {
                        referenced.is_marked(&read_index, &b.id) && !live_index.contains(&b.id)
                    }) {
                        resurrect.push(p.clone());
                        continue;
                    }
                    if !options.dry_run {
                        match self.delete_unless_locked(&pack::pack_key(&p.id)).await? {
                            Deleted::Now => {}
                            Deleted::Earlier => continue,
                            Deleted::Deferred(d) => {
                                report.deferred.push(d);
                                continue;
                            }
                        }
                    }
                    report.deleted_packs += 1;
                    report.freed_bytes += p.size;
                }
                report.resurrected_packs += resurrect.len();
                if !options.dry_run {
                    self.write_index(&resurrect).await?;
                    // A plan with packs the lock still holds stays, for a later run.
                    if !report.deferred.iter().any(|d| {
                        pack::pack_id_from_key(&d.key)
                            .is_some_and(|id| packs.iter().any(|p| p.id == id))
                    }) {
                        self.sink.delete(key).await?;
                    }
                }
            }
        }

        if pass == Pass::UnindexedPlans {
            return Ok((report, false));
        }

        // Phase 1: condemn and repack.
        // Index files first, references second: a backup that finishes in between is then
        // referenced, and one indexed later is not judged at all.
        // A damaged index file is refused by name (prune never decides from an incomplete
        // index); one that vanished since the listing is left out.
        let listed_files: Vec<String> = self
            .sink
            .list("index/")
            .map_ok(|m| m.key)
            .try_collect()
            .await?;
        let mut index_files = Vec::with_capacity(listed_files.len());
        let mut pack_records: HashMap<PackId, PackRecord> = HashMap::new();
        for key in listed_files {
            let Some(packs) = self.read_index_file_strict(&key).await? else {
                continue;
            };
            for p in packs {
                pack_records.entry(p.id).or_insert(p);
            }
            index_files.push(key);
        }
        let read_index = self.load_read_index().await?;
        let referenced = self.referenced_blobs(&read_index).await?;
        report.packs = pack_records.len();
        report.referenced_blobs = referenced.count();
        report.abandoned_manifests = referenced.abandoned.clone();
        if !options.dry_run {
            for key in &referenced.abandoned {
                lock.check()?;
                if let Deleted::Deferred(d) = self.delete_unless_locked(key).await? {
                    report.deferred.push(d);
                }
            }
        }
        let mut keep: Vec<PackRecord> = Vec::new();
        let mut condemned: Vec<PackRecord> = Vec::new();
        // Packs that no index file lists (failed or killed backups), condemned apart.
        let mut unindexed: Vec<PackRecord> = Vec::new();
        let mut to_repack: Vec<PackRecord> = Vec::new();
        let mut seen_blobs: HashSet<BlobId> = HashSet::new();
        let mut records: Vec<PackRecord> = pack_records.into_values().collect();
        records.sort_by_key(|p| p.id);
        let owners = self
            .owners_of_duplicates(&records, &read_index, &referenced)
            .await?;
        for p in records {
            // A blob counts as live in the first pack that holds it, or, when several packs
            // hold it, in the first whose copy reads back authentic; other copies are garbage.
            let live: u64 = p
                .blobs
                .iter()
                .filter(|b| {
                    referenced.is_marked(&read_index, &b.id)
                        && match owners.get(&b.id) {
                            Some(Some(owner)) => *owner == p.id,
                            Some(None) => true,
                            None => !seen_blobs.contains(&b.id),
                        }
                })
                .map(|b| b.length as u64)
                .sum();
            let total: u64 = p.blobs.iter().map(|b| b.length as u64).sum::<u64>().max(1);
            if live == 0 {
                condemned.push(p);
            } else if (live as f64) / (total as f64) < options.repack_below {
                p.blobs
                    .iter()
                    .filter(|b| referenced.is_marked(&read_index, &b.id))
                    .for_each(|b| {
                        seen_blobs.insert(b.id);
                    });
                to_repack.push(p);
            } else {
                p.blobs.iter().for_each(|b| {
                    seen_blobs.insert(b.id);
                });
                keep.push(p);
            }
        }
        // Unindexed packs (interrupted backups) are condemned too; a backup that indexes them
        // in the meantime saves them.
        let listed: Vec<_> = self.sink.list("data/").try_collect().await?;
        // Packs in index files written since we read ours belong to running backups.
        let read_files: HashSet<&String> = index_files.iter().collect();
        let mut newly_indexed: HashSet<PackId> = HashSet::new();
        let current_files: Vec<String> = self
            .sink
            .list("index/")
            .map_ok(|m| m.key)
            .try_collect()
            .await?;
        for key in current_files.iter().filter(|k| !read_files.contains(k)) {
            let Some(packs) = self.read_index_file_strict(key).await? else {
                continue;
            };
            newly_indexed.extend(packs.into_iter().map(|p| p.id));
        }
        let known: HashSet<PackId> = keep
            .iter()
            .chain(&condemned)
            .chain(&to_repack)
            .map(|p| p.id)
            .collect();
        for meta in listed {
            let Some(id) = pack::pack_id_from_key(&meta.key) else {
                continue;
            };
            if known.contains(&id) || plan_packs.contains(&id) || newly_indexed.contains(&id) {
                continue;
            }
            match self.read_pack_table(&meta.key, meta.size).await {
                Ok(rec) => unindexed.push(rec),
                Err(_) => unindexed.push(PackRecord {
                    id,
                    size: meta.size,
                    key_id: 0,
                    blobs: vec![],
                }),
            }
        }

        let mut new_packs = Vec::new();
        for p in &to_repack {
            match self
                .repack(
                    p,
                    &read_index,
                    &referenced,
                    &mut seen_blobs,
                    options.dry_run,
                )
                .await
            {
                Ok(Some((record, copied))) => {
                    report.repacked_packs += 1;
                    report.repacked_bytes += copied;
                    new_packs.extend(record);
                    condemned.push(p.clone());
                }
                Ok(None) => keep.push(p.clone()),
                Err(e) => {
                    tracing::warn!(pack = %pack::pack_key(&p.id), error = %e, "not repacking a pack that does not read back; keeping it");
                    keep.push(p.clone());
                }
            }
        }
        report.condemned_packs = condemned.len() + unindexed.len();
        report.condemned_bytes = condemned.iter().chain(&unindexed).map(|p| p.size).sum();
        if options.dry_run || (condemned.is_empty() && unindexed.is_empty() && new_packs.is_empty())
        {
            return Ok((report, false));
        }
        lock.check()?;
        // New index files first, then the plan, then the old index files go. When no indexed
        // pack is condemned or repacked, the index files stay as they are: condemning only the
        // packs of failed backups writes nothing but the plan (on a full disk, say).
        let rewrite_index = !condemned.is_empty() || !new_packs.is_empty();
        keep.extend(new_packs);
        let mut new_index_names = HashSet::new();
        if rewrite_index {
            for chunk in keep.chunks(256) {
                new_index_names.insert(self.write_index_named(chunk).await?.0);
            }
        }
        let mut written_plans = Vec::new();
        for (packs, unindexed_only) in [(&condemned, false), (&unindexed, true)] {
            if packs.is_empty() {
                continue;
            }
            let mut id = [0u8; 8];
            rand::rngs::OsRng.fill_bytes(&mut id);
            let key = format!(
                "prune/{}-{}",
                self.clock.now().format("%Y%m%dT%H%M%SZ"),
                hex::encode(id)
            );
            let header = PlanHeader {
                created_at: self.clock.now(),
                unindexed_only,
            };
            let sealed = object::seal_object(
                &self.keys(),
                ObjectKind::PrunePlan,
                &key,
                &encode_plan(&header, packs),
            );
            let sealed = bytes::Bytes::from(sealed);
            self.sink
                .put(&key, sealed.clone(), crate::sink::PutMode::Create)
                .await?;
            written_plans.push((key, sealed));
        }
        if !rewrite_index {
            return Ok((report, !unindexed.is_empty()));
        }
        for key in index_files.iter().filter(|k| !new_index_names.contains(*k)) {
            match self.sink.delete(key).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        // The same plan written again: its store time is now after the old index files went,
        // so every backup that could have read them (and deduplicated against its packs) holds
        // a lock taken before it, which phase 2 waits for.
        for (key, sealed) in written_plans {
            self.sink
                .put(&key, sealed, crate::sink::PutMode::Overwrite)
                .await?;
        }
        Ok((report, !unindexed.is_empty()))
    }

    /// Copies a pack's live blobs, still sealed, into new packs. `None` when nothing is live
    /// that is not already kept elsewhere.
    /// For each referenced blob that more than one pack holds, the pack whose copy counts: the
    /// first (in pack order) whose copy reads back authentic, or `None` when none does (then
    /// every copy is kept). A writer holding the data keys can index a pack that sorts first
    /// and claims blobs that older packs hold, with garbage in them; without this check, prune
    /// would keep that pack and delete the good copies.
    async fn owners_of_duplicates(
        &self,
        records: &[PackRecord],
        index: &Index,
        referenced: &Referenced,
    ) -> Result<HashMap<BlobId, Option<PackId>>> {
        let mut holders: HashMap<BlobId, Vec<(&PackRecord, usize)>> = HashMap::new();
        for p in records {
            for (i, b) in p.blobs.iter().enumerate() {
                if referenced.is_marked(index, &b.id) {
                    holders.entry(b.id).or_default().push((p, i));
                }
            }
        }
        let mut owners = HashMap::new();
        for (id, copies) in holders.into_iter().filter(|(_, c)| c.len() > 1) {
            let mut owner = None;
            for (p, i) in copies {
                let b = &p.blobs[i];
                let location = index::BlobLocation {
                    pack: p.id,
                    key_id: p.key_id,
                    kind: b.kind,
                    offset: b.offset,
                    length: b.length,
                    raw_len: b.raw_len,
                };
                match crate::ops::restore::read_blob(self, id, location).await {
                    Ok(_) => {
                        owner = Some(p.id);
                        break;
                    }
                    Err(e) if e.is_damage() => tracing::warn!(
                        pack = %pack::pack_key(&p.id), blob = %id, error = %e,
                        "a copy of a blob held by several packs does not read back; another copy counts"
                    ),
                    Err(e) => return Err(e),
                }
            }
            if owner.is_none() {
                tracing::warn!(blob = %id, "no copy of a blob held by several packs reads back; keeping every copy");
            }
            owners.insert(id, owner);
        }
        Ok(owners)
    }

    async fn repack(
        &self,
        p: &PackRecord,
        index: &Index,
        referenced: &Referenced,
        seen: &mut HashSet<BlobId>,
        dry_run: bool,
    ) -> Result<Option<(Vec<PackRecord>, u64)>> {
        let key = pack::pack_key(&p.id);
        let bytes = self.sink.get(&key).await?;
        object::check_checksum(&key, &bytes)?;
        let mut builder = PackBuilder::new(p.key_id, bytes.len());
        let mut copied = 0u64;
        for b in p
            .blobs
            .iter()
            .filter(|b| referenced.is_marked(index, &b.id))
        {
            let (start, end) = (b.offset as usize, b.offset as usize + b.length as usize);
            let stored = bytes
                .get(start..end)
                .ok_or_else(|| Error::corrupt(&key, "blob beyond the pack's end"))?;
            builder.add(b.id, b.kind, b.raw_len, stored);
            copied += b.length as u64;
            seen.insert(b.id);
        }
        if builder.is_empty() {
            return Ok(None);
        }
        if dry_run {
            return Ok(Some((Vec::new(), copied)));
        }
        let (id, data, blobs) = builder.finish(&self.keys());
        let size = data.len() as u64;
        repo::put_idempotent(self.sink.as_ref(), &pack::pack_key(&id), data).await?;
        Ok(Some((
            vec![PackRecord {
                id,
                size,
                key_id: p.key_id,
                blobs,
            }],
            copied,
        )))
    }
}
