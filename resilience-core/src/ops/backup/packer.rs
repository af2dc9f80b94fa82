//! Pack assembly and upload: sealed blobs are gathered into packs, full packs are sealed and
//! uploaded with bounded concurrency, and the uploaded packs are indexed every few packs.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::task::JoinSet;

use super::Shared;
use crate::error::{Error, Result};
use crate::format::blob::{BlobId, BlobKind};
use crate::format::index::PackRecord;
use crate::format::pack::{self, PackBuilder};
use crate::repo;

/// A blob hashed, compressed and sealed, ready to go into a pack.
pub(super) struct Encoded {
    pub(super) id: BlobId,
    pub(super) kind: BlobKind,
    pub(super) raw_len: u32,
    pub(super) stored: Vec<u8>,
}

/// Seals full packs and uploads them with bounded concurrency; writes an index file every few
/// packs so that an interrupted backup loses little.
pub(super) struct Packer {
    shared: Arc<Shared>,
    current: PackBuilder,
    uploads: JoinSet<Result<PackRecord>>,
    max_uploads: usize,
    /// Buffers of uploaded packs, for the next packs to be built in.
    spare: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Uploaded packs not yet named by an index file (at the start: the packs adopted).
    pub(super) unindexed: Vec<PackRecord>,
    /// Bytes written to the store: packs and index files.
    pub(super) stored_bytes: u64,
}

const PACKS_PER_INDEX: usize = 16;

/// Room for a full pack, its blob table and tail: a pack of small blobs has a larger table
/// (45 bytes a blob), which grows the buffer once.
fn pack_capacity(shared: &Shared) -> usize {
    let pack_size = shared.repo.config.pack_size as usize;
    pack_size + pack_size / 64 + 1024
}

/// Keeps an uploaded pack's buffer for a later pack, unless the store still holds it (an
/// in-memory store keeps the bytes it is given) or `keep` buffers are kept already.
fn give_back(spare: &Mutex<Vec<Vec<u8>>>, bytes: Bytes, keep: usize) {
    if let Ok(buf) = bytes.try_into_mut() {
        let mut spare = spare.lock().expect("pack buffers poisoned");
        if spare.len() < keep {
            spare.push(buf.into());
        }
    }
}

impl Packer {
    pub(super) fn new(shared: Arc<Shared>, max_uploads: usize) -> Self {
        Packer {
            current: PackBuilder::new(shared.keys.current_key_id(), pack_capacity(&shared)),
            shared,
            uploads: JoinSet::new(),
            max_uploads: max_uploads.max(1),
            spare: Arc::default(),
            unindexed: Vec::new(),
            stored_bytes: 0,
        }
    }

    pub(super) async fn add(&mut self, blob: Encoded) -> Result<()> {
        let pack_size = self.shared.repo.config.pack_size as usize;
        // Sealed before a blob would take it past its size: the pack's buffer, allocated at
        // that size, never grows (growing doubled it, so every pack held twice its size).
        if !self.current.is_empty() && self.current.len() + blob.stored.len() > pack_size {
            self.seal_current().await?;
        }
        self.current
            .add(blob.id, blob.kind, blob.raw_len, &blob.stored);
        if self.current.len() >= pack_size {
            self.seal_current().await?;
        }
        Ok(())
    }

    async fn seal_current(&mut self) -> Result<()> {
        if self.current.is_empty() {
            return Ok(());
        }
        while self.uploads.len() >= self.max_uploads {
            self.reap_one().await?;
        }
        let key_id = self.shared.keys.current_key_id();
        let next = match self.spare.lock().expect("pack buffers poisoned").pop() {
            Some(buf) => PackBuilder::in_buffer(key_id, buf),
            None => PackBuilder::new(key_id, pack_capacity(&self.shared)),
        };
        let full = std::mem::replace(&mut self.current, next);
        let shared = self.shared.clone();
        let spare = self.spare.clone();
        let keep = self.max_uploads;
        self.uploads.spawn(async move {
            let keys = shared.keys.clone();
            let key_id = keys.current_key_id();
            let (id, bytes, blobs) = tokio::task::spawn_blocking(move || full.finish(&keys))
                .await
                .map_err(Error::task("pack sealing"))?;
            let size = bytes.len() as u64;
            let sent = bytes.clone();
            repo::put_idempotent(shared.repo.sink.as_ref(), &pack::pack_key(&id), sent).await?;
            give_back(&spare, bytes, keep);
            Ok(PackRecord {
                id,
                size,
                key_id,
                blobs,
            })
        });
        Ok(())
    }

    async fn reap_one(&mut self) -> Result<()> {
        if let Some(done) = self.uploads.join_next().await {
            let record = done.map_err(Error::task("pack upload"))??;
            self.stored_bytes += record.size;
            self.unindexed.push(record);
            if self.unindexed.len() >= PACKS_PER_INDEX {
                self.flush_index().await?;
            }
        }
        Ok(())
    }

    /// Indexes the uploaded packs, only while the lock holds: a lapsed backup's packs may have
    /// been collected, and an index naming them would send later backups to missing data.
    async fn flush_index(&mut self) -> Result<()> {
        let packs = std::mem::take(&mut self.unindexed);
        if packs.is_empty() {
            return Ok(());
        }
        self.shared.lock.check()?;
        let (name, size) = self.shared.repo.write_index_named(&packs).await?;
        if let Err(lapsed) = self.shared.lock.check() {
            if let Err(e) = self.shared.repo.sink.delete(&name).await {
                tracing::warn!(error = %e, index = %name, "could not remove the index file of a backup whose lock lapsed");
            }
            return Err(lapsed);
        }
        self.stored_bytes += size;
        let mut dedup = self.shared.dedup.lock().expect("dedup lock poisoned");
        for p in &packs {
            dedup.index.add_pack(p);
        }
        // The index finds these blobs now (under the same lock, so no chunk sees neither).
        for b in packs.iter().flat_map(|p| &p.blobs) {
            dedup.claimed.remove(&b.id);
        }
        Ok(())
    }

    /// Waits for every upload still in flight, keeping what succeeded as unindexed packs (a
    /// prune collects them): called when the backup fails, so that nothing it started still
    /// writes once it has returned. Dropping the uploads instead would abandon their blocking
    /// writes mid-way.
    pub(super) async fn settle(&mut self) {
        while let Some(done) = self.uploads.join_next().await {
            match done {
                Ok(Ok(record)) => self.unindexed.push(record),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "an upload of a failed backup failed too")
                }
                Err(e) => tracing::debug!(error = %e, "an upload task of a failed backup ended"),
            }
        }
    }

    /// Seals the last pack, waits for every upload, writes the remaining index.
    pub(super) async fn finish(&mut self) -> Result<()> {
        self.seal_current().await?;
        while !self.uploads.is_empty() {
            self.reap_one().await?;
        }
        self.flush_index().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_only_when_nobody_else_holds_it() {
        let spare = Mutex::new(Vec::new());
        let mut v = Vec::with_capacity(4096);
        v.extend_from_slice(b"pack bytes");
        let bytes = Bytes::from(v);
        let held = bytes.clone();
        give_back(&spare, bytes, 2);
        assert!(
            spare.lock().unwrap().is_empty(),
            "a store still holds the pack"
        );
        give_back(&spare, held, 2);
        let back = spare
            .lock()
            .unwrap()
            .pop()
            .expect("the buffer is free again");
        assert!(back.capacity() >= 4096, "the allocation itself comes back");
        for _ in 0..3 {
            give_back(&spare, Bytes::from(vec![1u8; 100]), 2);
        }
        assert_eq!(spare.lock().unwrap().len(), 2, "no more kept than asked");
    }
}
