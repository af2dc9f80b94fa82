//! Re-encrypting existing data with the current data key (`key rotate --rewrite`), for a
//! leaked data key: every pack and sealed object under an older key is rewritten, then the old
//! keys are dropped from the key set.
//!
//! It runs beside backups (a maintenance lock, like prune) and is resumable: every step leaves
//! the repository readable, and a second run skips what is already under the current key.
//!
//! - **Packs**, one index file at a time: the file's packs under an old key are rewritten (each
//!   blob opened with its old key and sealed again with the current one; same ids), a new index
//!   file lists the new packs, then the old index file and the old packs are deleted. A blob
//!   already held by a current-key pack is not rewritten twice (a resumed run).
//! - **Snapshot manifests**, whose checksum the catalog record holds: a journal object
//!   `rewrite/<snapshot id>` first names the re-sealed manifest's checksum (readers accept it
//!   too), then the manifest is replaced, then the record takes the new checksum and the
//!   journal is deleted.
//! - **Catalog records, prune plans, archived WAL**: sealed again in place (one atomic put each;
//!   their names do not depend on their bytes).
//! - **Retirement**: under the exclusive lock (so no process that opened the repository before
//!   the rotation is still writing with an old key), a last pass, then the next key-set
//!   generation without the old data keys. Skipped, with a message, while a prune plan still
//!   condemns packs under an old key (prune deletes them after its grace period).

use std::collections::HashSet;

use futures::TryStreamExt;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::format::blob::{self, BlobId};
use crate::format::crypto::DataKeyId;
use crate::format::index::{self, PackRecord};
use crate::format::object::{self, ObjectKind};
use crate::format::pack::{self, PackBuilder};
use crate::keys::ring::{self as keyring, CopyState};
use crate::repo::lock::{LockKind, RepoLock};
use crate::repo::side::SIDE_ARCHIVE_ROOT;
use crate::repo::{put_idempotent, Repository};
use crate::sink::PutMode;

/// What a rewrite did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RewriteReport {
    /// The data key everything is now sealed with.
    pub data_key: DataKeyId,
    /// Packs rewritten.
    pub packs_rewritten: u64,
    /// Old packs deleted.
    pub packs_deleted: u64,
    /// Index files rewritten.
    pub index_files: u64,
    /// Sealed objects (manifests, catalog records, prune plans, WAL) sealed again.
    pub objects_resealed: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Data keys dropped from the key set.
    pub retired_keys: Vec<DataKeyId>,
    /// Why old keys were kept, if they were.
    pub kept_because: Option<String>,
}

/// The object kind of a sealed object, from its name and the head of its bytes.
fn sealed_kind(name: &str, head: &[u8]) -> Option<ObjectKind> {
    if name.starts_with("catalog/") {
        Some(ObjectKind::Catalog)
    } else if name.starts_with("prune/") {
        Some(ObjectKind::PrunePlan)
    } else if name.starts_with(SIDE_ARCHIVE_ROOT) {
        // An item or a note: the kind byte of the header says which (it is authenticated, so a
        // forged one fails to open).
        Some(if head.get(4) == Some(&(ObjectKind::SideNote as u8)) {
            ObjectKind::SideNote
        } else {
            ObjectKind::SideItem
        })
    } else {
        None
    }
}

/// The data key id in a sealed object's header (`"RSO1" | kind | key id`).
fn sealed_key_id(name: &str, bytes: &[u8]) -> Result<DataKeyId> {
    if bytes.len() < 9 || &bytes[..4] != b"RSO1" {
        return Err(Error::corrupt(name, "not a sealed object"));
    }
    Ok(u32::from_le_bytes(bytes[5..9].try_into().expect("4 bytes")))
}

impl Repository {
    /// Starts a rewrite: rotates to a new data key marked "rewriting", so an interrupted
    /// rewrite resumes with it instead of rotating again. When a rewrite is already pending,
    /// returns the repository as it is.
    pub async fn begin_rewrite(&self) -> Result<Repository> {
        if self.keys().rewriting() {
            return Ok(self.clone());
        }
        let (repo, _) = self.rotate_keys_marked(true).await?;
        Ok(repo)
    }

    /// Rotates (unless a rewrite is pending) and re-encrypts everything under older data keys
    /// with the current one, then drops the old keys. Resumable. See the module docs.
    pub async fn rewrite_data(&self) -> Result<RewriteReport> {
        let repo = self.begin_rewrite().await?;
        let mut report = RewriteReport {
            data_key: repo.keys().current_key_id(),
            ..Default::default()
        };
        let lock = RepoLock::acquire(
            repo.sink.clone(),
            repo.clock.clone(),
            LockKind::Maintenance,
            "key rotate --rewrite",
            None,
            repo.lock_settings,
        )
        .await?;
        let pass = repo
            .rewrite_pass(&mut report)
            .await
            .and_then(|()| lock.check());
        lock.release().await?;
        pass?;
        let lock = RepoLock::acquire(
            repo.sink.clone(),
            repo.clock.clone(),
            LockKind::Exclusive,
            "key rotate --rewrite (retiring old keys)",
            None,
            repo.lock_settings,
        )
        .await?;
        let retired = repo
            .retire_old_keys(&mut report)
            .await
            .and_then(|()| lock.check());
        lock.release().await?;
        retired?;
        Ok(report)
    }

    /// Under the exclusive lock: a last pass, then the key set without the old data keys.
    async fn retire_old_keys(&self, report: &mut RewriteReport) -> Result<()> {
        self.rewrite_pass(report).await?;
        let old: Vec<DataKeyId> = self
            .keys()
            .data_key_ids()
            .into_iter()
            .filter(|k| *k != self.keys().current_key_id())
            .collect();
        if let Some(why) = self.condemned_under(&old).await? {
            tracing::warn!(reason = %why, "old data keys kept");
            report.kept_because = Some(why);
            return Ok(());
        }
        let ring = self.key_ring().await?;
        let mut keys = (*self.keys()).clone();
        for k in &old {
            keys.retire(*k);
        }
        keys.set_rewriting(false);
        let recipients: Vec<_> = ring
            .copies
            .iter()
            .filter(|c| ring.state(c) == CopyState::Active)
            .collect();
        keyring::write_generation(
            self.sink.as_ref(),
            &ring,
            &keys,
            &recipients,
            self.clock.now(),
        )
        .await?;
        report.retired_keys = old;
        Ok(())
    }

    /// Why old keys cannot be retired yet: a prune plan condemns packs sealed with them.
    async fn condemned_under(&self, old: &[DataKeyId]) -> Result<Option<String>> {
        let plans: Vec<String> = self
            .sink
            .list("prune/")
            .map_ok(|m| m.key)
            .try_collect()
            .await?;
        for plan in plans {
            let bytes = self.sink.get(&plan).await?;
            let payload = object::open_object(&self.keys(), ObjectKind::PrunePlan, &plan, &bytes)?;
            if payload.len() < 4 {
                continue;
            }
            let hlen = u32::from_le_bytes(payload[..4].try_into().expect("4")) as usize;
            let Some(rest) = payload.get(4 + hlen..) else {
                continue;
            };
            let packs = index::decode_index(&plan, rest)?;
            let mut live = 0;
            for p in packs.iter().filter(|p| old.contains(&p.key_id)) {
                if self.sink.head(&pack::pack_key(&p.id)).await.is_ok() {
                    live += 1;
                }
            }
            if live > 0 {
                return Ok(Some(format!(
                    "{plan} condemns {live} pack(s) sealed with an old data key: run `resilience \
                     prune` after its grace period, then `resilience key rotate --rewrite` again"
                )));
            }
        }
        Ok(None)
    }

    /// One pass over the repository: everything under an old key is sealed again.
    async fn rewrite_pass(&self, report: &mut RewriteReport) -> Result<()> {
        let current = self.keys().current_key_id();
        // Blobs already held by current-key packs (not rewritten twice on a resumed run).
        let index_names: Vec<String> = self
            .sink
            .list("index/")
            .map_ok(|m| m.key)
            .try_collect()
            .await?;
        let mut files = Vec::new();
        for name in &index_names {
            let bytes = self.sink.get(name).await?;
            report.bytes_read += bytes.len() as u64;
            // Never rewrite (and then drop old keys) from an incomplete index.
            let (header_key, packs) = sealed_key_id(name, &bytes)
                .and_then(|header_key| {
                    let payload =
                        object::open_object(&self.keys(), ObjectKind::Index, "index", &bytes)
                            .map_err(|e| rename(e, name))?;
                    Ok((header_key, index::decode_index(name, &payload)?))
                })
                .map_err(|e| match e {
                    Error::Corrupt { reason, .. } => {
                        crate::repo::index_damaged_error(name, &reason)
                    }
                    other => other,
                })?;
            files.push((name.clone(), header_key, packs));
        }
        let mut have: HashSet<BlobId> = files
            .iter()
            .flat_map(|(_, _, packs)| packs.iter())
            .filter(|p| p.key_id == current)
            .flat_map(|p| p.blobs.iter().map(|b| b.id))
            .collect();
        for (name, header_key, packs) in files {
            if header_key == current && packs.iter().all(|p| p.key_id == current) {
                continue;
            }
            let mut kept = Vec::new();
            let mut old_packs = Vec::new();
            for p in packs {
                if p.key_id == current {
                    kept.push(p);
                    continue;
                }
                if let Some(new) = self.rewrite_pack(&p, &mut have, report).await? {
                    kept.push(new);
                }
                old_packs.push(p.id);
            }
            if !kept.is_empty() {
                self.write_index(&kept).await?;
            }
            report.index_files += 1;
            match self.sink.delete(&name).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
            for id in old_packs {
                match self.sink.delete(&pack::pack_key(&id)).await {
                    Ok(()) => report.packs_deleted += 1,
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        self.rewrite_unindexed(&mut have, report).await?;
        self.reseal_manifests(report).await?;
        for prefix in ["catalog/", "prune/", SIDE_ARCHIVE_ROOT] {
            self.reseal_prefix(prefix, report).await?;
        }
        Ok(())
    }

    /// Packs under an old key that no index lists (an interrupted run deleted their index
    /// file, or a backup that opened before the rotation left them): rewritten and indexed, or
    /// deleted when every blob is held elsewhere. Packs condemned by a prune plan are left to
    /// prune.
    async fn rewrite_unindexed(
        &self,
        have: &mut HashSet<BlobId>,
        report: &mut RewriteReport,
    ) -> Result<()> {
        let idx = self.load_index_strict().await?;
        let condemned = self.condemned_packs().await?;
        let current = self.keys().current_key_id();
        let metas: Vec<_> = self.sink.list("data/").try_collect().await?;
        let mut new_records = Vec::new();
        for meta in metas {
            let Some(id) = pack::pack_id_from_key(&meta.key) else {
                continue;
            };
            if idx.has_pack(&id) || condemned.contains(&id) {
                continue;
            }
            let header = self
                .sink
                .get_range(&meta.key, 0..pack::HEADER_LEN as u64)
                .await?;
            if pack::parse_header(&meta.key, &header)? == current {
                continue;
            }
            let record = self.read_pack_table(&meta.key, meta.size).await?;
            if let Some(new) = self.rewrite_pack(&record, have, report).await? {
                new_records.push(new);
            }
            if !new_records.is_empty() {
                self.write_index(&new_records).await?;
                new_records.clear();
            }
            match self.sink.delete(&meta.key).await {
                Ok(()) => report.packs_deleted += 1,
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    async fn condemned_packs(&self) -> Result<HashSet<crate::format::pack::PackId>> {
        let mut out = HashSet::new();
        let plans: Vec<String> = self
            .sink
            .list("prune/")
            .map_ok(|m| m.key)
            .try_collect()
            .await?;
        for plan in plans {
            let bytes = self.sink.get(&plan).await?;
            let payload = object::open_object(&self.keys(), ObjectKind::PrunePlan, &plan, &bytes)?;
            if payload.len() < 4 {
                continue;
            }
            let hlen = u32::from_le_bytes(payload[..4].try_into().expect("4")) as usize;
            if let Some(rest) = payload.get(4 + hlen..) {
                out.extend(index::decode_index(&plan, rest)?.into_iter().map(|p| p.id));
            }
        }
        Ok(out)
    }

    /// Seals `old`'s blobs again with the current key into a new pack (without those already
    /// in `have`); `None` when every blob was already held.
    async fn rewrite_pack(
        &self,
        old: &PackRecord,
        have: &mut HashSet<BlobId>,
        report: &mut RewriteReport,
    ) -> Result<Option<PackRecord>> {
        let name = pack::pack_key(&old.id);
        let bytes = self.sink.get(&name).await?;
        report.bytes_read += bytes.len() as u64;
        let keys = self.keys();
        let (key_id, blobs) = pack::parse_pack(&keys, &name, &bytes)?;
        let current = keys.current_key_id();
        let mut builder = PackBuilder::new(current, bytes.len());
        let key = keys.current_key();
        let mut stored = Vec::new();
        for b in &blobs {
            if have.contains(&b.id) {
                continue;
            }
            let sealed = bytes
                .get(b.offset as usize..b.end() as usize)
                .ok_or_else(|| Error::corrupt(&name, format!("blob {} is out of range", b.id)))?;
            let plain = blob::decode_blob(&keys, key_id, b.kind, &b.id, b.raw_len, sealed, &name)?;
            stored.clear();
            blob::encode_blob(
                &key,
                b.kind,
                &b.id,
                &plain,
                self.config.compression_level,
                &mut stored,
            );
            builder.add(b.id, b.kind, b.raw_len, &stored);
            have.insert(b.id);
        }
        if builder.is_empty() {
            return Ok(None);
        }
        let (id, data, table) = builder.finish(&keys);
        let size = data.len() as u64;
        put_idempotent(self.sink.as_ref(), &pack::pack_key(&id), data).await?;
        report.packs_rewritten += 1;
        Ok(Some(PackRecord {
            id,
            size,
            key_id: current,
            blobs: table,
        }))
    }

    /// Seals every snapshot manifest under an old key again, keeping its catalog record's
    /// checksum valid at every step: `rewrite/<snapshot id>` first names the re-sealed
    /// manifest's checksum (which [`Repository::load_manifest`] then accepts too), the manifest
    /// is replaced, the record is updated, and the journal object is deleted.
    async fn reseal_manifests(&self, report: &mut RewriteReport) -> Result<()> {
        let current = self.keys().current_key_id();
        let catalog = self.catalog();
        let refs: std::collections::HashMap<String, String> = catalog
            .refs(None)
            .await?
            .into_iter()
            .map(|r| (r.id, r.key))
            .collect();
        let names: Vec<String> = self
            .sink
            .list("snapshots/")
            .map_ok(|m| m.key)
            .try_collect()
            .await?;
        for key in names {
            let id = key.trim_start_matches("snapshots/").to_owned();
            let journal = rewrite_journal_key(&id);
            let bytes = self.sink.get(&key).await?;
            let record_key = refs.get(&id);
            if sealed_key_id(&key, &bytes)? == current {
                if let (Some(rk), Ok(_)) = (record_key, self.sink.head(&journal).await) {
                    // Resumed after the manifest was replaced: settle the record.
                    let mut record = catalog.read_key(rk).await?;
                    if record.manifest_checksum.is_some() {
                        record.manifest_checksum = object::stored_checksum(&bytes);
                        catalog.overwrite(rk, &record).await?;
                    }
                    self.delete_quietly(&journal).await?;
                }
                continue;
            }
            let payload = object::open_object(&self.keys(), ObjectKind::Snapshot, &key, &bytes)?;
            let resealed = object::seal_object(&self.keys(), ObjectKind::Snapshot, &key, &payload);
            let next = object::stored_checksum(&resealed).expect("has a checksum");
            if record_key.is_some() {
                let mut body =
                    serde_json::to_vec(&serde_json::json!({ "manifest_checksum": next }))
                        .expect("serializes");
                object::append_checksum(&mut body);
                self.sink
                    .put(&journal, body.into(), PutMode::Overwrite)
                    .await?;
            }
            self.sink
                .put(&key, resealed.into(), PutMode::Overwrite)
                .await?;
            if let Some(rk) = record_key {
                let mut record = catalog.read_key(rk).await?;
                if record.manifest_checksum.is_some() {
                    record.manifest_checksum = Some(next);
                    catalog.overwrite(rk, &record).await?;
                }
                self.delete_quietly(&journal).await?;
            }
            report.objects_resealed += 1;
        }
        Ok(())
    }

    /// Seals every object under `prefix` that an old key sealed again, in place.
    async fn reseal_prefix(&self, prefix: &str, report: &mut RewriteReport) -> Result<()> {
        let current = self.keys().current_key_id();
        let names: Vec<String> = self
            .sink
            .list(prefix)
            .map_ok(|m| m.key)
            .try_collect()
            .await?;
        for name in names {
            let head = self.sink.get_range(&name, 0..9).await?;
            let Some(kind) = sealed_kind(&name, &head) else {
                continue;
            };
            if sealed_key_id(&name, &head)? == current {
                continue;
            }
            let bytes = self.sink.get(&name).await?;
            report.bytes_read += bytes.len() as u64;
            let payload = object::open_object(&self.keys(), kind, &name, &bytes)?;
            let resealed = object::seal_object(&self.keys(), kind, &name, &payload);
            self.sink
                .put(&name, resealed.into(), PutMode::Overwrite)
                .await?;
            report.objects_resealed += 1;
        }
        Ok(())
    }
}

fn rename(e: Error, name: &str) -> Error {
    match e {
        Error::Corrupt { reason, .. } => Error::Corrupt {
            object: name.to_owned(),
            reason,
        },
        other => other,
    }
}

/// The journal object of a manifest being re-sealed.
pub(crate) fn rewrite_journal_key(snapshot_id: &str) -> String {
    format!("rewrite/{snapshot_id}")
}
