//! `repair snapshots`: which snapshots lost data, what exactly they lost, and, with `salvage`,
//! a new snapshot for each holding everything that is still restorable.
//!
//! **Finding the loss** ([`Repository::repair_snapshots`]). The index is loaded as readers load
//! it (intact index files, the packs that prune plans condemned, and the packs no index file
//! lists, from their own tables) and `data/` is listed once. Then every succeeded snapshot's
//! manifest and tree are walked, and every blob they reference is looked up: it must be in the
//! index, its pack must be in the listing with the size the index records, and the pack's table
//! must read back and list the blob (each pack is looked at once). With
//! [`RepairSnapshotsOptions::read_data`] every pack a snapshot uses is also read whole and each
//! blob decrypted and re-hashed, as `verify --full` does. Tree blobs are always read (to walk the
//! tree), so a damaged tree blob is found in either mode.
//!
//! A snapshot is damaged when a file's blob is lost ([`LostFile`]: the path, and whether some or
//! all of its content is gone), when part of its tree is lost ([`LostTree`]: the tree is one
//! stream of records in source order, so every entry after the last one read is unreadable), or
//! when its manifest does not read back (nothing of it can be restored).
//!
//! **Salvage** (`salvage`, not `dry_run`). For each damaged snapshot whose manifest reads back, a
//! new snapshot is written holding every entry that is still fully restorable: files with any
//! lost blob are *left out* and named, never kept truncated — a backup must not hand back a
//! silently wrong file. The new snapshot reuses the existing blobs (nothing is uploaded again
//! but the tree blobs that changed), and is committed as a backup is (FORMAT.md, "Visibility
//! and durability"): under a shared lock naming it, its catalog record `running`, packs and an
//! index file first, a check that every pack it uses is still listed, the manifest, then — only
//! while the lock still holds — the `succeeded` revision. Its record keeps the original's source,
//! start and finish times (the data is as old as the original's, so freshness and RPO are not
//! flattered), labels and source metadata, names the original as `parent`, and carries
//! [`Salvage`]: the original's id and what was left out. The original is never changed or
//! deleted.
//!
//! The whole salvage runs under the maintenance lock, so no prune deletes a pack it is about to
//! reference and no two salvages run at once. It is idempotent: a damaged snapshot that already
//! has a succeeded salvage is reported as [`SalvageAction::AlreadySalvaged`] and not salvaged
//! again.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use bytes::Bytes;
use futures::TryStreamExt;
use serde::Serialize;

use crate::catalog::{BackupRecord, BackupStatus, Catalog, CatalogQuery, Salvage};
use crate::error::{Error, Result};
use crate::format::blob::{self, BlobId, BlobKind};
use crate::format::chunker::Chunker;
use crate::format::index::{BlobLocation, Index, PackRecord};
use crate::format::object::{self, ObjectKind};
use crate::format::pack::{self, PackBuilder, PackId};
use crate::format::snapshot::{self, BlobRef, Content, Manifest, TreeRecord};
use crate::ops::lifecycle::release_quietly;
use crate::ops::restore::TreeReader;
use crate::repo::lock::{self, LockKind, RepoLock};
use crate::repo::{self, Repository};

/// What `repair snapshots` does.
#[derive(Clone, Copy, Debug, Default)]
pub struct RepairSnapshotsOptions {
    /// Compute and report only: nothing is written (not even locks).
    pub dry_run: bool,
    /// Write a salvage snapshot for each damaged snapshot (unless `dry_run`, which then
    /// reports what would be written).
    pub salvage: bool,
    /// Also read every pack the snapshots use and authenticate each blob (as `verify --full`).
    pub read_data: bool,
}

/// How much of a file's content is lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// Some of its blobs are lost.
    Partial,
    /// Every blob of it is lost.
    Whole,
}

/// A file of a damaged snapshot whose content is (partly) lost.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LostFile {
    /// The entry's path.
    pub path: String,
    /// Partly or wholly lost.
    pub loss: Loss,
    /// The file's size.
    pub size: u64,
    /// Blobs of its content.
    pub blobs: usize,
    /// Of those, the lost ones.
    pub blobs_lost: usize,
    /// Plaintext bytes in the lost blobs.
    pub bytes_lost: u64,
}

/// An object whose damage costs a snapshot data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LostObject {
    /// The object (`data/…` for a pack, `blob <id>` for a blob in no index and no pack,
    /// `snapshots/<id>` for a manifest, `data/… (blob <id>)` for a tree blob that does not
    /// decode).
    pub object: String,
    /// What is wrong with it.
    pub problem: String,
}

/// A lost part of a snapshot's tree: the entries after [`LostTree::after`] cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LostTree {
    /// The object that broke the tree, and why.
    pub lost: LostObject,
    /// The last entry read before the loss (`None` when the tree is lost from its start).
    /// The tree is in source order (for a directory, depth first in path order), so the lost
    /// entries are those after this path.
    pub after: Option<String>,
    /// How many entries cannot be read (the manifest's count less those read).
    pub entries_unreadable: u64,
}

/// What `repair snapshots` did, or would do, about one damaged snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum SalvageAction {
    /// Salvage was not asked for.
    NotRequested,
    /// A dry run: a salvage snapshot would be written.
    WouldWrite,
    /// A salvage snapshot was written, durable and visible.
    Written {
        /// Its id.
        snapshot: String,
    },
    /// A succeeded salvage of this snapshot exists already: nothing was written.
    AlreadySalvaged {
        /// Its id.
        snapshot: String,
    },
    /// Nothing of it can be salvaged.
    Impossible {
        /// Why (its manifest does not read back, or not one entry is restorable).
        reason: String,
    },
}

/// A snapshot that lost data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DamagedSnapshot {
    /// Its id.
    pub snapshot: String,
    /// Its source's id.
    pub source: String,
    /// Its manifest, when that does not read back (then nothing else is known of it).
    pub manifest: Option<LostObject>,
    /// The damaged or lost objects that cost it data (sorted by object).
    pub lost_objects: Vec<LostObject>,
    /// Files whose content is (partly) lost, in tree order.
    pub files: Vec<LostFile>,
    /// A lost part of its tree.
    pub tree: Option<LostTree>,
    /// Entries still fully restorable (what a salvage keeps).
    pub entries_kept: u64,
    /// Sum of the sizes of those entries.
    pub bytes_kept: u64,
    /// What was done about it.
    pub salvage: SalvageAction,
}

/// What `repair snapshots` found and did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RepairSnapshotsReport {
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Whether salvage was asked for.
    pub salvage: bool,
    /// Whether blobs were read and authenticated.
    pub read_data: bool,
    /// Succeeded snapshots walked.
    pub snapshots_checked: usize,
    /// Packs looked at (listed, table read, and with `read_data` read whole).
    pub packs_checked: usize,
    /// Index files that do not read back (their packs were found from their tables; run
    /// `resilience repair index`).
    pub damaged_index_files: Vec<String>,
    /// The damaged snapshots, oldest first.
    pub damaged: Vec<DamagedSnapshot>,
    /// The salvage snapshots written by this run.
    pub salvaged: Vec<String>,
}

impl RepairSnapshotsReport {
    /// True when no snapshot lost data.
    pub fn is_sound(&self) -> bool {
        self.damaged.is_empty()
    }
}

/// Where a blob is, or why it is not.
enum Found {
    Available(BlobLocation),
    Lost(LostObject),
}

/// A pack as far as the snapshots are concerned.
enum PackState {
    /// Its table reads back; these blobs (sorted) are in it (with `read_data`: and
    /// authenticate). `problem` says what is wrong with the others.
    Readable {
        blobs: Vec<BlobId>,
        problem: Option<String>,
    },
    /// Every blob of it is lost.
    Lost(String),
}

/// Looks blobs up, checking each pack once.
struct Lookup<'r> {
    repo: &'r Repository,
    index: Index,
    /// Index sizes of the packs.
    sizes: HashMap<PackId, u64>,
    /// `data/` as listed.
    listed: HashMap<PackId, u64>,
    /// Packs no index file lists (read from their tables): a salvage that uses one indexes it.
    unlisted: HashMap<PackId, PackRecord>,
    states: HashMap<PackId, PackState>,
    read_data: bool,
}

impl<'r> Lookup<'r> {
    async fn load(repo: &'r Repository, read_data: bool) -> Result<(Lookup<'r>, Vec<String>)> {
        let loaded = repo.load_intact_index().await?;
        let mut index = loaded.index;
        // Condemned packs are readable until a later prune deletes them, and a manifest that
        // uses one of their blobs makes that prune index them again.
        for (_, _, packs) in repo.readable_prune_plans().await?.0 {
            for p in &packs {
                if !index.has_pack(&p.id) {
                    index.add_pack(p);
                }
            }
        }
        let listed: HashMap<PackId, u64> = repo
            .sink
            .list("data/")
            .try_filter_map(|m| {
                futures::future::ready(Ok(pack::pack_id_from_key(&m.key).map(|id| (id, m.size))))
            })
            .try_collect()
            .await?;
        let mut unlisted = HashMap::new();
        for (id, size) in &listed {
            if index.has_pack(id) {
                continue;
            }
            let key = pack::pack_key(id);
            match repo.read_pack_table(&key, *size).await {
                Ok(p) => {
                    index.add_pack(&p);
                    unlisted.insert(*id, p);
                }
                Err(Error::Sink(e)) if !e.is_not_found() => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(pack = %key, error = %e, "a pack no index lists does not read back")
                }
            }
        }
        index.compact();
        let sizes = index.packs().iter().map(|p| (p.id, p.size)).collect();
        let lookup = Lookup {
            repo,
            index,
            sizes,
            listed,
            unlisted,
            states: HashMap::new(),
            read_data,
        };
        Ok((lookup, loaded.damaged))
    }

    async fn find(&mut self, id: &BlobId) -> Result<Found> {
        let Some(loc) = self.index.lookup(id) else {
            return Ok(Found::Lost(LostObject {
                object: format!("blob {id}"),
                problem: "in no index file and in no pack's table: its pack is lost".into(),
            }));
        };
        if !self.states.contains_key(&loc.pack) {
            let state = self.pack_state(&loc.pack).await?;
            self.states.insert(loc.pack, state);
        }
        let object = pack::pack_key(&loc.pack);
        Ok(match &self.states[&loc.pack] {
            PackState::Lost(problem) => Found::Lost(LostObject {
                object,
                problem: problem.clone(),
            }),
            PackState::Readable { blobs, problem } => match blobs.binary_search(id) {
                Ok(_) => Found::Available(loc),
                Err(_) => Found::Lost(LostObject {
                    object,
                    problem: problem
                        .clone()
                        .unwrap_or_else(|| format!("its table does not list blob {id}")),
                }),
            },
        })
    }

    async fn pack_state(&self, id: &PackId) -> Result<PackState> {
        let key = pack::pack_key(id);
        let Some(&size) = self.listed.get(id) else {
            return Ok(PackState::Lost("missing".into()));
        };
        let indexed = self.sizes.get(id).copied().unwrap_or(size);
        if size != indexed {
            return Ok(PackState::Lost(format!(
                "size {size} but the index records {indexed}"
            )));
        }
        let table = match self.repo.read_pack_table(&key, size).await {
            Ok(t) => t,
            Err(Error::Sink(e)) if e.is_not_found() => {
                return Ok(PackState::Lost("missing".into()))
            }
            Err(Error::Sink(e)) => return Err(e.into()),
            Err(e) => {
                return Ok(PackState::Lost(format!(
                    "its table does not read back: {}",
                    problem_of(e)
                )))
            }
        };
        if !self.read_data {
            let mut blobs: Vec<BlobId> = table.blobs.iter().map(|b| b.id).collect();
            blobs.sort();
            return Ok(PackState::Readable {
                blobs,
                problem: None,
            });
        }
        let bytes = match self.repo.sink.get(&key).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Ok(PackState::Lost("missing".into())),
            Err(e) => return Err(e.into()),
        };
        let checksum = object::check_checksum(&key, &bytes).err().map(problem_of);
        let keys = self.repo.keys().clone();
        let (key2, all) = (key.clone(), table.blobs.len());
        let mut good = tokio::task::spawn_blocking(move || {
            table
                .blobs
                .iter()
                .filter(|b| {
                    let (start, end) = (b.offset as usize, b.offset as usize + b.length as usize);
                    end <= bytes.len()
                        && blob::decode_blob(
                            &keys,
                            table.key_id,
                            b.kind,
                            &b.id,
                            b.raw_len,
                            &bytes[start..end],
                            &key2,
                        )
                        .is_ok()
                })
                .map(|b| b.id)
                .collect::<Vec<BlobId>>()
        })
        .await
        .map_err(Error::task("blob checking"))?;
        good.sort();
        if let (Some(problem), true) = (&checksum, good.len() == all) {
            // As verify judges it: damage outside the blobs makes the whole pack damaged.
            return Ok(PackState::Lost(format!(
                "{problem}; its blobs still read back, but the pack must be repaired"
            )));
        }
        let bad = all - good.len();
        Ok(PackState::Readable {
            blobs: good,
            problem: (bad > 0)
                .then(|| format!("{bad} blob(s) fail authentication or do not hash to their id")),
        })
    }

    /// The readable start of a manifest's tree: the tree blobs up to the first lost one, and
    /// that one's loss.
    async fn tree_prefix(
        &mut self,
        manifest: &Manifest,
    ) -> Result<(VecDeque<(BlobRef, Vec<BlobLocation>)>, Option<LostObject>)> {
        let mut prefix = VecDeque::new();
        for r in &manifest.tree {
            match self.find(&r.id).await? {
                Found::Available(loc) => prefix.push_back((*r, vec![loc])),
                Found::Lost(lost) => return Ok((prefix, Some(lost))),
            }
        }
        Ok((prefix, None))
    }
}

/// Reads the readable records of a snapshot's tree, telling where it breaks.
struct TreeWalk {
    reader: TreeReader,
    cut: Option<LostObject>,
    read: u64,
    last: Option<String>,
    broken: Option<LostObject>,
}

impl TreeWalk {
    async fn start(
        repo: &Repository,
        lookup: &mut Lookup<'_>,
        manifest: &Manifest,
    ) -> Result<Self> {
        let (prefix, cut) = lookup.tree_prefix(manifest).await?;
        Ok(TreeWalk {
            reader: TreeReader::from_locations(repo.clone(), prefix),
            cut,
            read: 0,
            last: None,
            broken: None,
        })
    }

    /// The next readable record, or `None` at the end of what can be read.
    async fn next(&mut self) -> Result<Option<TreeRecord>> {
        if self.broken.is_some() {
            return Ok(None);
        }
        match self.reader.next().await {
            Ok(Some(rec)) => {
                self.read += 1;
                self.last = Some(rec.meta.path.to_string());
                Ok(Some(rec))
            }
            Ok(None) => {
                self.broken = self.cut.take();
                Ok(None)
            }
            Err(Error::Sink(e)) if !e.is_not_found() => Err(e.into()),
            Err(e) => {
                // Cut before a lost tree blob, the stream ends inside a record: the cut is the
                // loss. Any other error is a tree blob that does not decode, before the cut.
                let ends_inside = matches!(&e, Error::Corrupt { reason, .. } if reason == "tree ends inside a record");
                self.broken = match (self.cut.take(), ends_inside) {
                    (Some(cut), true) => Some(cut),
                    (_, _) => Some(LostObject {
                        object: match &e {
                            Error::Corrupt { object, .. } => object.clone(),
                            _ => "tree".into(),
                        },
                        problem: problem_of(e),
                    }),
                };
                Ok(None)
            }
        }
    }

    /// The lost part of the tree, once [`TreeWalk::next`] returned `None`.
    fn loss(&self, manifest: &Manifest) -> Option<LostTree> {
        self.broken.clone().map(|lost| LostTree {
            lost,
            after: self.last.clone(),
            entries_unreadable: manifest.entries.saturating_sub(self.read),
        })
    }
}

/// Which blobs of a record are lost.
async fn lost_blobs(
    lookup: &mut Lookup<'_>,
    content: &Content,
) -> Result<Vec<(BlobRef, LostObject)>> {
    let mut lost = Vec::new();
    for b in content.blobs() {
        if let Found::Lost(object) = lookup.find(&b.id).await? {
            lost.push((*b, object));
        }
    }
    Ok(lost)
}

impl Repository {
    /// Finds the snapshots whose data is lost and, with `salvage`, writes for each a new
    /// snapshot holding everything still restorable (see the [module](self) docs). `Ok` with
    /// salvage (not a dry run) means every salvage snapshot in [`RepairSnapshotsReport::salvaged`]
    /// is durable and visible.
    pub async fn repair_snapshots(
        &self,
        options: RepairSnapshotsOptions,
    ) -> Result<RepairSnapshotsReport> {
        if !options.salvage || options.dry_run {
            return self.repair_snapshots_locked(options, None).await;
        }
        let lock = self
            .lock_fresh(LockKind::Maintenance, "repair snapshots", None)
            .await?;
        let result = self.repair_snapshots_locked(options, Some(&lock)).await;
        release_quietly(lock, "repair").await;
        result
    }

    async fn repair_snapshots_locked(
        &self,
        options: RepairSnapshotsOptions,
        lock: Option<&RepoLock>,
    ) -> Result<RepairSnapshotsReport> {
        let mut report = RepairSnapshotsReport {
            dry_run: options.dry_run,
            salvage: options.salvage,
            read_data: options.read_data,
            ..Default::default()
        };
        let (mut lookup, damaged_index_files) = Lookup::load(self, options.read_data).await?;
        report.damaged_index_files = damaged_index_files;
        let records = self
            .catalog()
            .list(&CatalogQuery {
                statuses: vec![BackupStatus::Succeeded],
                ..Default::default()
            })
            .await?;
        let salvaged: HashMap<String, String> = records
            .iter()
            .filter_map(|r| r.salvage.as_ref().map(|s| (s.from.clone(), r.id.clone())))
            .collect();
        for record in records.iter().filter(|r| r.tier == self.tier) {
            report.snapshots_checked += 1;
            let Some(mut damaged) = self.examine(&mut lookup, record).await? else {
                continue;
            };
            damaged.salvage = if !options.salvage {
                SalvageAction::NotRequested
            } else if let Some(reason) = unsalvageable(&damaged) {
                SalvageAction::Impossible { reason }
            } else if let Some(existing) = salvaged.get(&record.id) {
                SalvageAction::AlreadySalvaged {
                    snapshot: existing.clone(),
                }
            } else if let Some(lock) = lock.filter(|_| !options.dry_run) {
                lock.check()?;
                let id = self.salvage(&mut lookup, record, &damaged).await?;
                report.salvaged.push(id.clone());
                SalvageAction::Written { snapshot: id }
            } else {
                SalvageAction::WouldWrite
            };
            report.damaged.push(damaged);
        }
        report.packs_checked = lookup.states.len();
        Ok(report)
    }

    /// Walks one snapshot: `None` when everything it references is there.
    async fn examine(
        &self,
        lookup: &mut Lookup<'_>,
        record: &BackupRecord,
    ) -> Result<Option<DamagedSnapshot>> {
        let mut damaged = DamagedSnapshot {
            snapshot: record.id.clone(),
            source: record.source.id.clone(),
            manifest: None,
            lost_objects: Vec::new(),
            files: Vec::new(),
            tree: None,
            entries_kept: 0,
            bytes_kept: 0,
            salvage: SalvageAction::NotRequested,
        };
        let manifest = match self.load_manifest(record).await {
            Ok(m) => m,
            Err(Error::Sink(e)) if !e.is_not_found() => return Err(e.into()),
            Err(e) => {
                damaged.manifest = Some(LostObject {
                    object: snapshot::manifest_key(&record.id),
                    problem: problem_of(e),
                });
                return Ok(Some(damaged));
            }
        };
        let mut lost_objects: BTreeMap<String, String> = BTreeMap::new();
        let mut walk = TreeWalk::start(self, lookup, &manifest).await?;
        while let Some(rec) = walk.next().await? {
            let lost = lost_blobs(lookup, &rec.content).await?;
            if lost.is_empty() {
                damaged.entries_kept += 1;
                damaged.bytes_kept += rec.meta.size;
                continue;
            }
            let blobs = rec.content.blobs().len();
            damaged.files.push(LostFile {
                path: rec.meta.path.to_string(),
                loss: if lost.len() == blobs {
                    Loss::Whole
                } else {
                    Loss::Partial
                },
                size: rec.meta.size,
                blobs,
                blobs_lost: lost.len(),
                bytes_lost: lost.iter().map(|(b, _)| b.len as u64).sum(),
            });
            for (_, o) in lost {
                lost_objects.entry(o.object).or_insert(o.problem);
            }
        }
        damaged.tree = walk.loss(&manifest);
        if let Some(t) = &damaged.tree {
            lost_objects
                .entry(t.lost.object.clone())
                .or_insert(t.lost.problem.clone());
        }
        if damaged.files.is_empty() && damaged.tree.is_none() {
            return Ok(None);
        }
        damaged.lost_objects = lost_objects
            .into_iter()
            .map(|(object, problem)| LostObject { object, problem })
            .collect();
        Ok(Some(damaged))
    }

    /// Writes the salvage snapshot of `original` through the backup's commit path; returns its
    /// id once it is durable and visible.
    async fn salvage(
        &self,
        lookup: &mut Lookup<'_>,
        original: &BackupRecord,
        damaged: &DamagedSnapshot,
    ) -> Result<String> {
        let id = repo::new_backup_id(original.started_at);
        let lock = self
            .lock_fresh(LockKind::Shared, "salvage", Some(id.clone()))
            .await?;
        let now = self.clock.now();
        let mut record = BackupRecord {
            id: id.clone(),
            revision: 1,
            source: original.source.clone(),
            kind: original.kind,
            status: BackupStatus::Running,
            error: None,
            started_at: original.started_at,
            finished_at: None,
            logical_bytes: 0,
            stored_bytes: 0,
            new_bytes: 0,
            entries: 0,
            manifest_checksum: None,
            tier: self.tier,
            labels: original.labels.clone(),
            legal_hold: false,
            verifications: Vec::new(),
            source_metadata: original.source_metadata.clone(),
            parent: Some(original.id.clone()),
            host: lock::host_name(),
            updated_at: now,
            salvage: Some(Salvage {
                from: original.id.clone(),
                at: now,
                files_left_out: damaged.files.len() as u64,
                paths_left_out: damaged
                    .files
                    .iter()
                    .take(crate::catalog::SALVAGE_PATHS_KEPT)
                    .map(|f| f.path.clone())
                    .collect(),
                entries_unreadable: damaged.tree.as_ref().map_or(0, |t| t.entries_unreadable),
                tree_lost_after: damaged.tree.as_ref().and_then(|t| t.after.clone()),
            }),
        };
        let catalog = self.catalog();
        let result = match catalog.put(&record).await {
            Ok(()) => {
                self.write_salvage(lookup, original, &mut record, &lock)
                    .await
            }
            Err(e) => Err(e),
        };
        // The commit rule: the manifest counts only if the lock still held after it was written.
        let result = match result {
            Ok(()) => match lock.check() {
                Ok(()) => Ok(()),
                Err(lapsed) => {
                    let manifest = snapshot::manifest_key(&id);
                    if let Err(e) = self.sink.delete(&manifest).await {
                        tracing::warn!(error = %e, %manifest, "could not remove the manifest of a salvage whose lock lapsed");
                    }
                    Err(lapsed)
                }
            },
            Err(e) => Err(e),
        };
        record.revision += 1;
        record.updated_at = self.clock.now();
        let result = match result {
            Ok(()) => {
                record.status = BackupStatus::Succeeded;
                record.finished_at = original.finished_at;
                catalog.put(&record).await.map(|()| id)
            }
            Err(e) => {
                record.status = BackupStatus::Failed;
                record.finished_at = Some(self.clock.now());
                record.error = Some(e.to_string());
                if let Err(e2) = catalog.put(&record).await {
                    tracing::warn!(error = %e2, snapshot = %id, "could not record the failed salvage");
                }
                Err(e)
            }
        };
        release_quietly(lock, "salvage").await;
        result
    }

    /// The salvage's tree, packs, index file and manifest; fills in `record`.
    async fn write_salvage(
        &self,
        lookup: &mut Lookup<'_>,
        original: &BackupRecord,
        record: &mut BackupRecord,
        lock: &RepoLock,
    ) -> Result<()> {
        let manifest = self.load_manifest(original).await?;
        let mut tree = TreeWriter::new(self);
        let (mut entries, mut logical_bytes) = (0u64, 0u64);
        let mut walk = TreeWalk::start(self, lookup, &manifest).await?;
        while let Some(rec) = walk.next().await? {
            if !lost_blobs(lookup, &rec.content).await?.is_empty() {
                continue;
            }
            for b in rec.content.blobs() {
                if let Found::Available(loc) = lookup.find(&b.id).await? {
                    tree.used.insert(loc.pack);
                }
            }
            entries += 1;
            logical_bytes += rec.meta.size;
            tree.push(lookup, &rec).await?;
        }
        let refs = tree.finish(lookup).await?;
        // The new packs and the unlisted packs it uses are indexed before the manifest exists.
        let mut packs = std::mem::take(&mut tree.written);
        let new_packs: HashSet<PackId> = packs.iter().map(|p| p.id).collect();
        packs.extend(
            tree.used
                .iter()
                .filter_map(|id| lookup.unlisted.get(id))
                .cloned(),
        );
        let mut stored_bytes = tree.stored_bytes;
        if !packs.is_empty() {
            lock.check()?;
            let (name, size) = self.write_index_named(&packs).await?;
            if let Err(lapsed) = lock.check() {
                if let Err(e) = self.sink.delete(&name).await {
                    tracing::warn!(error = %e, index = %name, "could not remove the index file of a salvage whose lock lapsed");
                }
                return Err(lapsed);
            }
            stored_bytes += size;
        }
        // Every pack it uses must still be there (the commit rule's step 3).
        let mut present: HashSet<PackId> = HashSet::new();
        let mut listing = self.sink.list("data/");
        while let Some(meta) = listing.try_next().await? {
            if let Some(id) = pack::pack_id_from_key(&meta.key) {
                present.insert(id);
            }
        }
        drop(listing);
        if let Some(missing) = tree
            .used
            .iter()
            .chain(new_packs.iter())
            .find(|id| !present.contains(*id))
        {
            return Err(Error::corrupt(
                pack::pack_key(missing),
                "the salvage uses it, but it is gone: nothing was committed",
            ));
        }
        lock.check()?;
        let manifest = Manifest {
            format: snapshot::SNAPSHOT_FORMAT,
            id: record.id.clone(),
            source: record.source.clone(),
            started_at: manifest.started_at,
            finished_at: manifest.finished_at,
            entries,
            logical_bytes,
            tree: refs,
            source_metadata: manifest.source_metadata,
            labels: manifest.labels,
            parent: Some(original.id.clone()),
        };
        let key = snapshot::manifest_key(&record.id);
        let sealed = object::seal_object(
            &self.keys(),
            ObjectKind::Snapshot,
            &key,
            &serde_json::to_vec(&manifest).expect("manifest serializes"),
        );
        let checksum = object::stored_checksum(&sealed).expect("has checksum");
        stored_bytes += sealed.len() as u64;
        self.sink
            .put(&key, sealed.into(), crate::sink::PutMode::Create)
            .await?;
        record.entries = entries;
        record.logical_bytes = logical_bytes;
        record.stored_bytes = stored_bytes;
        record.manifest_checksum = Some(checksum);
        Ok(())
    }
}

/// Writes a salvage's tree: records are chunked as a backup chunks them, so most tree blobs
/// are the original's (deduplicated); the others go into new packs.
struct TreeWriter<'r> {
    repo: &'r Repository,
    chunker: Chunker,
    buf: Vec<u8>,
    refs: Vec<BlobRef>,
    pack: PackBuilder,
    claimed: HashSet<BlobId>,
    written: Vec<PackRecord>,
    /// Packs holding blobs the salvage references.
    used: HashSet<PackId>,
    stored_bytes: u64,
}

impl<'r> TreeWriter<'r> {
    fn new(repo: &'r Repository) -> Self {
        TreeWriter {
            repo,
            chunker: Chunker::new(repo.config.chunker, repo.keys().chunker_seed()),
            buf: Vec::new(),
            refs: Vec::new(),
            pack: Self::new_pack(repo),
            claimed: HashSet::new(),
            written: Vec::new(),
            used: HashSet::new(),
            stored_bytes: 0,
        }
    }

    fn new_pack(repo: &Repository) -> PackBuilder {
        PackBuilder::new(
            repo.keys().current_key_id(),
            repo.config.pack_size as usize + 1024,
        )
    }

    async fn push(&mut self, lookup: &mut Lookup<'_>, record: &TreeRecord) -> Result<()> {
        snapshot::encode_record(record, &mut self.buf);
        self.chunker.push(&self.buf);
        self.buf.clear();
        while let Some(chunk) = self.chunker.next_chunk(false) {
            self.chunk(lookup, chunk).await?;
        }
        Ok(())
    }

    async fn chunk(&mut self, lookup: &mut Lookup<'_>, chunk: Bytes) -> Result<()> {
        let id = self.repo.keys().blob_id(&chunk);
        match lookup.find(&id).await? {
            Found::Available(loc) => {
                self.used.insert(loc.pack);
            }
            Found::Lost(_) if self.claimed.insert(id) => {
                let mut stored = Vec::with_capacity(chunk.len() / 2 + 64);
                blob::encode_blob(
                    &self.repo.keys().current_key(),
                    BlobKind::Tree,
                    &id,
                    &chunk,
                    self.repo.config.compression_level,
                    &mut stored,
                );
                self.pack
                    .add(id, BlobKind::Tree, chunk.len() as u32, &stored);
                if self.pack.len() >= self.repo.config.pack_size as usize {
                    self.seal().await?;
                }
            }
            Found::Lost(_) => {}
        }
        self.refs.push(BlobRef {
            id,
            len: chunk.len() as u32,
        });
        Ok(())
    }

    async fn seal(&mut self) -> Result<()> {
        if self.pack.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.pack, Self::new_pack(self.repo));
        let key_id = self.repo.keys().current_key_id();
        let (id, bytes, blobs) = full.finish(&self.repo.keys());
        let size = bytes.len() as u64;
        repo::put_idempotent(self.repo.sink.as_ref(), &pack::pack_key(&id), bytes).await?;
        self.stored_bytes += size;
        self.written.push(PackRecord {
            id,
            size,
            key_id,
            blobs,
        });
        Ok(())
    }

    /// Writes the last chunk and pack; returns the tree's blobs.
    async fn finish(&mut self, lookup: &mut Lookup<'_>) -> Result<Vec<BlobRef>> {
        while let Some(chunk) = self.chunker.next_chunk(true) {
            self.chunk(lookup, chunk).await?;
        }
        self.seal().await?;
        Ok(std::mem::take(&mut self.refs))
    }
}

/// Why a damaged snapshot cannot be salvaged, if it cannot.
fn unsalvageable(d: &DamagedSnapshot) -> Option<String> {
    if let Some(m) = &d.manifest {
        return Some(format!(
            "its manifest {} does not read back ({}): restore it from a replica",
            m.object, m.problem
        ));
    }
    (d.entries_kept == 0).then(|| "not one of its entries is restorable".to_owned())
}

fn problem_of(e: Error) -> String {
    match e {
        Error::Corrupt { reason, .. } => reason,
        Error::Sink(s) if s.is_not_found() => "missing".into(),
        other => other.to_string(),
    }
}
