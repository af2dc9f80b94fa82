//! Verification: is every succeeded snapshot restorable?
//!
//! - **Quick** (the default): every object a snapshot depends on exists with the size the index
//!   records, and every pack, index, manifest and catalog record is read and its checksum
//!   checked (no decryption of content). A pack whose checksum fails is then opened blob by blob
//!   to find exactly which blobs are damaged, so that only the snapshots that use them are
//!   reported.
//! - **Full**: additionally every blob of every pack is decrypted, decompressed and re-hashed.
//!
//! The report names every damaged object, every snapshot it affects and, for derived state, the
//! repair that rebuilds it ([`DamagedObject::repair`]); nothing unaffected is reported. A
//! damaged or lost index file affects no snapshot: its packs are found from their own tables
//! (and checked), as readers find them.
//!
//! Besides what snapshots depend on, verify reads `keys/` (a damaged or missing key copy, a
//! damaged or missing key-set generation) and the current revision of every catalog record (a
//! damaged one is reported though the record reads from its newest intact revision).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::catalog::{BackupStatus, Catalog, CatalogRef, RepoCatalog};
use crate::error::{Error, Result};
use crate::format::blob::{self, BlobId};
use crate::format::index::{Index, PackInfo};
use crate::format::object;
use crate::format::pack::{self, PackedBlob};
use crate::format::snapshot::Content;
use crate::keys::ring::KEYSET_PREFIX;
use crate::repo::Repository;
use crate::sink::SinkError;

/// How thorough to be.
#[derive(Clone, Copy, Debug, Default)]
pub struct VerifyOptions {
    /// Decrypt and re-hash every blob.
    pub full: bool,
}

/// One damaged object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DamagedObject {
    /// The object's key.
    pub object: String,
    /// What is wrong.
    pub problem: String,
    /// Ids of the snapshots that cannot be fully restored because of it.
    pub affected_snapshots: Vec<String>,
    /// What to run: [`REPAIR_INDEX`] for an index file (derived from the packs, so rebuilt
    /// whole); [`REPAIR_SNAPSHOTS`] for damage that loses data snapshots need (a pack, a blob,
    /// a part of a tree), which cannot bring the lost bytes back but writes, for each affected
    /// snapshot, a new one holding everything still restorable; [`REPAIR_CATALOG`] for a
    /// damaged current catalog revision of a record that reads from an older one; `None` when
    /// no command helps (a manifest, or a record no revision of which reads: restore it from a
    /// replica).
    pub repair: Option<String>,
}

/// The command that rebuilds a damaged index file.
pub const REPAIR_INDEX: &str = "resilience repair index";

/// The command that supersedes a damaged current catalog revision with one saying what it said.
pub const REPAIR_CATALOG: &str = "resilience repair catalog";

/// The command that keeps what is restorable of snapshots that lost data: a new snapshot per
/// damaged one, leaving out (and naming) the files whose content is lost.
pub const REPAIR_SNAPSHOTS: &str = "resilience repair snapshots --salvage --read-data";

/// The object [`DamagedObject`] names when snapshots use packs that no index file lists while
/// no index file is damaged: an index file was lost (deleted), which readers cannot notice
/// without listing `data/`.
pub const LOST_INDEX: &str = "index/";

/// The object [`DamagedObject`] names when `keys/` holds no key-set generation (it was
/// deleted): nothing opens the repository.
pub const LOST_KEY_SET: &str = "keys/keyset-*";

/// The repair of a damaged or missing key copy `keys/<id>`: another copy still opens the
/// repository, and `key add` writes a new copy for the lost one's provider (the next key-set
/// generation is sealed to it and no longer to the lost one).
pub fn repair_key_copy(id: &str) -> String {
    format!(
        "resilience key add (a new copy for the provider of keys/{id}, opened with another \
         copy's credentials)"
    )
}

const LOST_INDEX_PROBLEM: &str = "packs that snapshots use are listed by no index file (an index \
                                  file is lost); the next backup adopts them";

/// What verification found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    /// `quick` or `full`.
    pub mode: String,
    /// Succeeded snapshots checked.
    pub snapshots_checked: usize,
    /// Their ids.
    #[serde(skip)]
    pub checked_ids: Vec<String>,
    /// Packs checked.
    pub packs_checked: usize,
    /// Blobs decrypted and re-hashed (full mode, and damaged packs).
    pub blobs_checked: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Packs that no index lists (left by an interrupted backup; harmless, prune removes them).
    pub unindexed_packs: usize,
    /// Every damaged object.
    pub damaged: Vec<DamagedObject>,
    /// Backups whose expiry was interrupted after their manifest was deleted (not damage: a
    /// second `forget` finishes it).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub expiring: Vec<String>,
}

impl VerifyReport {
    /// True when nothing is damaged.
    pub fn is_ok(&self) -> bool {
        self.damaged.is_empty()
    }

    /// The damaged objects that make snapshot `id` unrestorable, as `object: problem`.
    pub fn damage_of(&self, id: &str) -> Vec<String> {
        self.damaged
            .iter()
            .filter(|d| d.affected_snapshots.iter().any(|s| s == id))
            .map(|d| format!("{}: {}", d.object, d.problem))
            .collect()
    }
}

impl Repository {
    /// Whether `error`, met loading backup `id`'s manifest, is an expiry interrupted after it
    /// deleted the manifest: the manifest is gone and the expiry's journal is there.
    async fn expiry_interrupted(&self, id: &str, error: &Error) -> Result<bool> {
        let gone = matches!(error, Error::Sink(e) if e.is_not_found());
        if !gone {
            return Ok(false);
        }
        match self
            .sink
            .head(&crate::ops::lifecycle::expiry_journal_key(id))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Adds the verification's result to the history of every snapshot it checked (a new
    /// catalog revision each), so that health reports show when each backup was last proven
    /// restorable. Returns how many records were updated.
    pub async fn record_verification(&self, report: &VerifyReport) -> Result<usize> {
        if report.checked_ids.is_empty() {
            return Ok(0);
        }
        let lock = self.lock_catalog("verification").await?;
        let result = self.record_verification_locked(report, &lock).await;
        crate::ops::lifecycle::release_quietly(lock, "catalog").await;
        result
    }

    async fn record_verification_locked(
        &self,
        report: &VerifyReport,
        lock: &crate::repo::lock::RepoLock,
    ) -> Result<usize> {
        let catalog = self.catalog();
        let at = self.clock.now();
        let mut updated = 0;
        for id in &report.checked_ids {
            let Some(mut record) = catalog.get(id).await? else {
                continue;
            };
            let damage = report.damage_of(id);
            record.verifications.push(crate::catalog::Verification {
                at,
                kind: report.mode.clone(),
                ok: damage.is_empty(),
                detail: if damage.is_empty() {
                    "sound".into()
                } else {
                    damage.join("; ")
                },
            });
            record.revision += 1;
            record.updated_at = at;
            lock.check()?;
            catalog.put(&record).await?;
            updated += 1;
        }
        Ok(updated)
    }
}

/// Damage found so far: objects with their problems, and which blobs they make unreadable.
#[derive(Default)]
struct Damage {
    objects: BTreeMap<String, String>,
    /// The repair of an object, where it is not `repair index`.
    repairs: BTreeMap<String, String>,
    blob_objects: HashMap<BlobId, String>,
    affected: BTreeMap<String, BTreeSet<String>>,
}

impl Damage {
    fn object(&mut self, key: &str, problem: String) {
        self.objects.entry(key.to_owned()).or_insert(problem);
    }
    fn affects(&mut self, key: &str, snapshot: &str) {
        self.affected
            .entry(key.to_owned())
            .or_default()
            .insert(snapshot.to_owned());
    }
}

impl Repository {
    /// Verifies every succeeded snapshot.
    pub async fn verify(&self, options: VerifyOptions) -> Result<VerifyReport> {
        // A long-running handle reads what was sealed after a change of keys made elsewhere.
        self.refresh_keys().await?;
        let mut report = VerifyReport {
            mode: if options.full { "full" } else { "quick" }.into(),
            ..Default::default()
        };
        let mut damage = Damage::default();

        // Indexes: a damaged index file is itself damage (which `repair index` fixes), but not
        // a loss: its packs are then found from their own tables, below, as readers find them.
        let index_keys: Vec<_> = self.sink.list("index/").try_collect().await?;
        let mut damaged_index_files: Vec<String> = Vec::new();
        let mut index = Index::new();
        let mut pack_blobs: HashMap<BlobId, Vec<PackedBlob>> = HashMap::new();
        for meta in &index_keys {
            let loaded = async {
                let bytes = self.sink.get(&meta.key).await?;
                report.bytes_read += bytes.len() as u64;
                let payload =
                    object::open_object(&self.keys(), object::ObjectKind::Index, "index", &bytes)?;
                crate::format::index::decode_index(&meta.key, &payload)
            }
            .await;
            match loaded {
                Ok(packs) => {
                    for p in packs {
                        index.add_pack(&p);
                        pack_blobs.entry(p.id).or_insert(p.blobs);
                    }
                }
                Err(Error::Sink(e)) if e.is_not_found() => {}
                Err(e) => {
                    let problem = problem_or_fail(e)?;
                    damaged_index_files.push(meta.key.clone());
                    damage.object(&meta.key, problem);
                }
            }
        }
        // Packs that a prune condemned are still readable until a later prune deletes them:
        // they count only if a snapshot still uses them.
        let mut optional: std::collections::HashSet<String> = std::collections::HashSet::new();
        let (plans, damaged_plans) = self.readable_prune_plans().await?;
        // A damaged prune plan is damage as a damaged index file is: its packs are found from
        // their own tables, and `repair index` removes it (indexing its packs again).
        for key in damaged_plans {
            damage.object(
                &key,
                "the prune plan does not read back (damaged or truncated); readers find its \
                 packs from their own tables, and prune refuses to run until it is removed"
                    .into(),
            );
            damaged_index_files.push(key);
        }
        for (_, _, packs) in plans {
            for p in packs {
                if !index.has_pack(&p.id) {
                    optional.insert(pack::pack_key(&p.id));
                    index.add_pack(&p);
                    pack_blobs.entry(p.id).or_insert(p.blobs);
                }
            }
        }

        // Packs.
        let sizes: HashMap<String, u64> = self
            .sink
            .list("data/")
            .map_ok(|m| (m.key, m.size))
            .try_collect()
            .await?;
        // Packs that no index file lists (an interrupted backup's, or a damaged or lost index
        // file's), from their own tables: readers find them so when an index file is damaged,
        // and a snapshot that needs one while no index file is damaged (a lost index file)
        // is named below. With a damaged index file, a pack whose table does not read back is
        // damage of its own.
        let mut unlisted: Vec<(&String, u64)> = sizes
            .iter()
            .filter(|(k, _)| pack::pack_id_from_key(k).is_some_and(|id| !index.has_pack(&id)))
            .map(|(k, s)| (k, *s))
            .collect();
        unlisted.sort();
        report.unindexed_packs = unlisted.len();
        let mut unlisted_packs: std::collections::HashSet<pack::PackId> = Default::default();
        for (key, size) in unlisted {
            match self.read_pack_table(key, size).await {
                Ok(p) => {
                    index.add_pack(&p);
                    unlisted_packs.insert(p.id);
                    pack_blobs.entry(p.id).or_insert(p.blobs);
                }
                Err(Error::Sink(e)) if e.is_not_found() => {}
                Err(e) if damaged_index_files.is_empty() => {
                    tracing::warn!(pack = %key, error = %e, "an unindexed pack does not read back");
                }
                Err(e) => damage.object(key, problem_or_fail(e)?),
            }
        }
        index.compact();
        // Snapshots restore from unlisted packs only while an index file is damaged.
        let lost_index = damaged_index_files.is_empty() && !unlisted_packs.is_empty();
        let packs: Vec<PackInfo> = index.packs().to_vec();
        report.packs_checked = packs.len();
        let pack_blobs = Arc::new(pack_blobs);
        let results: Vec<PackCheck> = futures::stream::iter(packs)
            .map(|p| {
                let size = sizes.get(&pack::pack_key(&p.id)).copied();
                let blobs = pack_blobs.get(&p.id).cloned().unwrap_or_default();
                self.check_pack(p, size, blobs, options.full)
            })
            .buffer_unordered(4)
            .try_collect()
            .await?;
        for r in results {
            report.bytes_read += r.bytes_read;
            report.blobs_checked += r.blobs_checked;
            if let Some(problem) = r.problem {
                damage.object(&r.key, problem);
                for b in r.bad_blobs {
                    damage.blob_objects.insert(b, r.key.clone());
                }
            }
        }

        // Snapshots: the current revision of every record. A damaged current revision is
        // damage of its own, whatever it says, though the record reads from its newest intact
        // revision, as every reader reads it; if that one does not say succeeded (or none
        // reads) while the damaged one may have, the snapshot is lost to restores, which find
        // snapshots by their records. The snapshots checked are those of records whose current
        // revision may say succeeded and reads as succeeded. A record none of whose revisions
        // reads, and whose current one says running, is an attempt that never finished: not
        // damage ([`RepoCatalog::unreadable_attempt`]).
        let catalog = self.catalog();
        let refs: Vec<CatalogRef> = catalog.refs(None).await?;
        let reads: Vec<_> = futures::stream::iter(refs)
            .map(|r| {
                let catalog = catalog.clone();
                async move {
                    let read = catalog.read_current_reporting(&r).await;
                    (r, read)
                }
            })
            .buffered(16)
            .collect()
            .await;
        let mut records = Vec::new();
        for (r, read) in reads {
            let said_succeeded = r.status == Some(BackupStatus::Succeeded);
            let may_say_succeeded = r.status.is_none_or(|s| s == BackupStatus::Succeeded);
            match read {
                Ok((record, fell_back)) => {
                    if let Some((e, used)) = fell_back {
                        damage.object(
                            &r.key,
                            format!(
                                "{}; the record reads from {used} ({}); its next revision \
                                 supersedes the damaged one (`resilience repair catalog` writes \
                                 it)",
                                problem_of(e),
                                record.status
                            ),
                        );
                        damage
                            .repairs
                            .insert(r.key.clone(), REPAIR_CATALOG.to_owned());
                        if said_succeeded && record.status != BackupStatus::Succeeded {
                            damage.affects(&r.key, &r.id);
                        }
                    }
                    if may_say_succeeded && record.status == BackupStatus::Succeeded {
                        records.push(record);
                    }
                }
                // Forgotten since the listing.
                Err(Error::Sink(e)) if e.is_not_found() => {}
                Err(e) if RepoCatalog::unreadable_attempt(&r, &e) => {}
                Err(e @ (Error::Corrupt { .. } | Error::UnsupportedFormat { .. })) => {
                    damage.object(&r.key, problem_of(e));
                    if said_succeeded {
                        damage.affects(&r.key, &r.id);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        records.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.id.cmp(&b.id)));
        let records: Vec<_> = records
            .into_iter()
            .filter(|r| r.tier == self.tier)
            .collect();
        report.snapshots_checked = records.len();
        report.checked_ids = records.iter().map(|r| r.id.clone()).collect();
        for record in &records {
            let manifest_key = crate::format::snapshot::manifest_key(&record.id);
            let manifest = match self.load_manifest(record).await {
                Ok(m) => m,
                Err(e) if self.expiry_interrupted(&record.id, &e).await? => {
                    tracing::warn!(backup = %record.id, "an interrupted expiry: its manifest is deleted; run forget again to finish it");
                    report.expiring.push(record.id.clone());
                    report.checked_ids.retain(|c| c != &record.id);
                    report.snapshots_checked -= 1;
                    continue;
                }
                Err(e) => {
                    damage.object(&manifest_key, problem_or_fail(e)?);
                    damage.affects(&manifest_key, &record.id);
                    continue;
                }
            };
            let check_blob = |id: &BlobId, damage: &mut Damage| {
                if let Some(obj) = damage.blob_objects.get(id).cloned() {
                    damage.affects(&obj, &record.id);
                } else if let Some(at) = index.lookup(id) {
                    if lost_index && unlisted_packs.contains(&at.pack) {
                        // Not a loss: restores find such packs from their tables.
                        damage.object(LOST_INDEX, LOST_INDEX_PROBLEM.into());
                    }
                } else {
                    let key = format!("blob {id}");
                    damage.object(&key, "in no index: its pack or index file is lost".into());
                    damage.affects(&key, &record.id);
                }
            };
            let mut tree_ok = true;
            for r in &manifest.tree {
                check_blob(&r.id, &mut damage);
                tree_ok &= index.contains(&r.id) && !damage.blob_objects.contains_key(&r.id);
            }
            if !tree_ok {
                continue;
            }
            let mut reader =
                crate::ops::restore::TreeReader::new(self.clone(), &index, &manifest.tree);
            loop {
                match reader.next().await {
                    Ok(Some(rec)) => {
                        if let Content::Blobs(blobs) = &rec.content {
                            for b in blobs {
                                check_blob(&b.id, &mut damage);
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let key = format!("{TREE_OF_SNAPSHOT}{}", record.id);
                        damage.object(&key, problem_or_fail(e)?);
                        damage.affects(&key, &record.id);
                        break;
                    }
                }
            }
        }

        self.check_keys(&mut damage, &report.checked_ids).await?;

        report.damaged = damage
            .objects
            .iter()
            .filter(|(k, _)| !optional.contains(*k) || damage.affected.contains_key(*k))
            .map(|(k, problem)| {
                let affected_snapshots: Vec<String> = damage
                    .affected
                    .get(k)
                    .map(|s| s.iter().cloned().collect())
                    .unwrap_or_default();
                let repair = if damaged_index_files.contains(k) || k == LOST_INDEX {
                    Some(REPAIR_INDEX.to_owned())
                } else if loses_data(k) && !affected_snapshots.is_empty() {
                    Some(REPAIR_SNAPSHOTS.to_owned())
                } else {
                    damage.repairs.get(k).cloned()
                };
                DamagedObject {
                    object: k.clone(),
                    problem: problem.clone(),
                    repair,
                    affected_snapshots,
                }
            })
            .collect();
        Ok(report)
    }

    /// Checks `keys/`: every copy and key-set generation reads back, the generation in force
    /// exists, and every copy it is sealed to exists. A damaged or missing copy costs only that
    /// copy's credentials (another copy still opens the repository); a damaged or missing
    /// generation in force costs every snapshot (`checked`) to every process that does not
    /// already hold the keys, since nothing else opens the repository.
    async fn check_keys(&self, damage: &mut Damage, checked: &[String]) -> Result<()> {
        let ring = crate::keys::ring::KeyRing::load(self.sink.as_ref()).await?;
        let newest_damaged = ring.in_force().err().and_then(|e| object_of(&e));
        let newest = ring.in_force().ok().flatten();
        let mut damaged_names = Vec::new();
        for e in &ring.damaged {
            let Some(key) = object_of(e) else { continue };
            damaged_names.push(key.clone());
            let copy_id = key
                .strip_prefix("keys/")
                .filter(|_| !key.starts_with(KEYSET_PREFIX));
            if let (Some(id), Some(g)) = (copy_id, newest) {
                if !g.sealed.contains_key(id) {
                    // A stale copy (after `key add` replaced it): it opens nothing.
                    continue;
                }
            }
            damage.object(&key, problem_of(clone_error(e)));
            if key.starts_with(KEYSET_PREFIX) {
                if newest_damaged.as_deref() == Some(key.as_str()) {
                    for id in checked {
                        damage.affects(&key, id);
                    }
                }
            } else if let Some(id) = key.strip_prefix("keys/") {
                damage.repairs.insert(key.clone(), repair_key_copy(id));
            }
        }
        let format_2 = ring.copies.iter().any(|c| c.format >= 2);
        if ring.generation_names.is_empty() && format_2 {
            damage.object(
                LOST_KEY_SET,
                "missing: no key-set generation holds the keys, so nothing opens the repository"
                    .into(),
            );
            for id in checked {
                damage.affects(LOST_KEY_SET, id);
            }
        }
        if let Some(generation) = newest {
            for id in generation.sealed.keys() {
                let key = format!("keys/{id}");
                if !ring.copies.iter().any(|c| &c.id == id) && !damaged_names.contains(&key) {
                    damage.object(
                        &key,
                        format!(
                            "missing: {} is sealed to it",
                            crate::keys::ring::keyset_name(generation.generation)
                        ),
                    );
                    damage.repairs.insert(key.clone(), repair_key_copy(id));
                }
            }
        }
        Ok(())
    }

    async fn check_pack(
        &self,
        info: PackInfo,
        listed_size: Option<u64>,
        blobs: Vec<PackedBlob>,
        full: bool,
    ) -> Result<PackCheck> {
        let key = pack::pack_key(&info.id);
        let mut check = PackCheck {
            key: key.clone(),
            ..Default::default()
        };
        let Some(size) = listed_size else {
            check.problem = Some("missing".into());
            check.bad_blobs = blobs.iter().map(|b| b.id).collect();
            return Ok(check);
        };
        let bytes = match self.sink.get(&key).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => {
                check.problem = Some("missing".into());
                check.bad_blobs = blobs.iter().map(|b| b.id).collect();
                return Ok(check);
            }
            Err(e) => return Err(e.into()),
        };
        check.bytes_read = bytes.len() as u64;
        let mut problem = None;
        if size != info.size || bytes.len() as u64 != info.size {
            problem = Some(format!(
                "size {} but the index records {}",
                bytes.len(),
                info.size
            ));
        } else if let Err(e) = object::check_checksum(&key, &bytes) {
            problem = Some(problem_of(e));
        } else if object::stored_checksum(&bytes).as_deref() != Some(info.id.to_hex().as_str()) {
            problem = Some("checksum does not match the pack's name".into());
        }
        if problem.is_none() && !full {
            return Ok(check);
        }
        // Blob by blob: which blobs are unreadable (all of them, in full mode, are re-hashed).
        let keys = self.keys().clone();
        let key2 = key.clone();
        let blobs_ids: Vec<BlobId> = blobs.iter().map(|b| b.id).collect();
        let (mut bad, checked) = tokio::task::spawn_blocking(move || {
            let mut bad = Vec::new();
            for b in &blobs {
                let (start, end) = (b.offset as usize, b.offset as usize + b.length as usize);
                let ok = end <= bytes.len()
                    && blob::decode_blob(
                        &keys,
                        info.key_id,
                        b.kind,
                        &b.id,
                        b.raw_len,
                        &bytes[start..end],
                        &key2,
                    )
                    .is_ok();
                if !ok {
                    bad.push(b.id);
                }
            }
            (bad, blobs.len() as u64)
        })
        .await
        .map_err(Error::task("verification"))?;
        check.blobs_checked = checked;
        if !bad.is_empty() && problem.is_none() {
            problem = Some(format!(
                "{} blob(s) fail authentication or do not hash to their id",
                bad.len()
            ));
        }
        if let Some(p) = &mut problem {
            if bad.is_empty() {
                // The damage is outside the blobs (header, table, checksum): every snapshot
                // that depends on the pack depends on a damaged object.
                p.push_str("; its blobs still read back, but the pack must be repaired");
                bad = blobs_ids;
            } else {
                p.push_str(&format!("; {} of its blobs unreadable", bad.len()));
            }
        }
        check.problem = problem;
        check.bad_blobs = bad;
        Ok(check)
    }
}

#[derive(Default)]
struct PackCheck {
    key: String,
    problem: Option<String>,
    bad_blobs: Vec<BlobId>,
    bytes_read: u64,
    blobs_checked: u64,
}

/// Whether damage to `object` (as [`DamagedObject::object`] names it) loses data that
/// snapshots reference: a pack, a blob in no index, a part of a snapshot's tree.
fn loses_data(object: &str) -> bool {
    object.starts_with("data/")
        || object.starts_with("blob ")
        || object.starts_with(TREE_OF_SNAPSHOT)
}

/// How verify names the tree of a snapshot that does not read back.
const TREE_OF_SNAPSHOT: &str = "tree of snapshot ";

/// The object an error of [`crate::keys::ring::KeyRing::load`] names.
fn object_of(e: &Error) -> Option<String> {
    match e {
        Error::Corrupt { object, .. } | Error::UnsupportedFormat { object, .. } => {
            Some(object.clone())
        }
        _ => None,
    }
}

fn clone_error(e: &Error) -> Error {
    match e {
        Error::Corrupt { object, reason } => Error::corrupt(object.clone(), reason.clone()),
        other => Error::Repeated(other.to_string()),
    }
}

/// The damage an error shows, or the error itself when it shows none: a store or connection
/// failure (what is left of it after the store client's retries) says nothing about the object,
/// so verification fails, naming the object and the cause, rather than report it damaged.
fn problem_or_fail(e: Error) -> Result<String> {
    match e {
        e @ Error::Sink(SinkError::Backend { .. }) => Err(e),
        other => Ok(problem_of(other)),
    }
}

fn problem_of(e: Error) -> String {
    match e {
        Error::Corrupt { reason, .. } => reason,
        Error::Sink(s) if s.is_not_found() => "missing".into(),
        other => other.to_string(),
    }
}
