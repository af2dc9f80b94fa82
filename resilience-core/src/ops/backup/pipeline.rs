//! The chunk pipeline: an entry's content is cut into chunks, each chunk is hashed and, unless
//! the repository (or this backup) already has it, compressed and sealed on the CPU threads
//! (`ops::cpu`) with a bounded window; each entry's tree record is written, in entry order,
//! once all its chunks are done, and the tree itself is chunked the same way.
//!
//! Chunks go to the CPU threads in batches ([`BATCH_BYTES`], [`BATCH_CHUNKS`]): a large chunk
//! fills one alone, the chunks of small files travel together, so a tree of small files pays
//! one trip between tokio and the CPU threads per run of files, not one per file.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use tokio::io::AsyncReadExt;

use super::packer::{Encoded, Packer};
use super::Shared;
use crate::error::{Error, Result};
use crate::format::blob::{self, BlobKind};
use crate::format::chunker::Chunker;
use crate::format::snapshot::{self, BlobRef, Content, TreeRecord};
use crate::ops::cpu;
use crate::ops::progress::Progress;
use crate::source::entry::EntryMeta;
use crate::source::{Cutting, EntryReader};

thread_local! {
    /// Each CPU thread seals into a buffer of its own, sized once for the worst case, and the
    /// blob keeps a copy of exactly its size. A buffer of the worst case for every chunk, shrunk
    /// to what compression left, cut the allocator's heaps into holes pinned by the sealed
    /// blobs waiting for their packs.
    static SEALING: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Hashes a chunk and, unless the repository (or this backup) already has it, seals it.
fn hash_and_seal(shared: &Shared, kind: BlobKind, chunk: Bytes) -> (BlobRef, Option<Encoded>) {
    let repo = &shared.repo;
    let id = shared.keys.blob_id(&chunk);
    let r = BlobRef {
        id,
        len: chunk.len() as u32,
    };
    {
        let mut dedup = shared.dedup.lock().expect("dedup lock poisoned");
        if let Some(found) = dedup.index.lookup(&id) {
            dedup.used_packs.insert(found.pack);
            return (r, None);
        }
        if !dedup.claimed.insert(id) {
            return (r, None);
        }
    }
    let stored = SEALING.with_borrow_mut(|sealing| {
        sealing.clear();
        blob::encode_blob(
            &shared.keys.current_key(),
            kind,
            &id,
            &chunk,
            repo.config.compression_level,
            sealing,
        );
        sealing.to_vec()
    });
    (
        r,
        Some(Encoded {
            id,
            kind,
            raw_len: chunk.len() as u32,
            stored,
        }),
    )
}

/// A content no longer than the inline limit, as the tree holds it: none when empty.
fn inline(data: Vec<u8>) -> Content {
    if data.is_empty() {
        Content::None
    } else {
        Content::Inline(data)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ChunkOwner {
    Content,
    Tree,
}

/// An entry whose content is still being hashed and sealed.
struct PendingEntry {
    meta: EntryMeta,
    content: Content,
    /// Chunks pushed for it; `None` while its content is still being read.
    expected: Option<usize>,
    pushed: usize,
    received: usize,
}

impl PendingEntry {
    fn is_complete(&self) -> bool {
        self.expected == Some(self.received)
    }
}

/// Hashes and seals chunks on the CPU threads with a bounded window, across entries, and
/// writes each entry's tree record once all its chunks are done, in entry order.
pub(super) struct Pipeline {
    shared: Arc<Shared>,
    /// Batches sent to the CPU threads, in the order their chunks were pushed.
    inflight: FuturesOrdered<SealedBatch>,
    /// Batches sent at once, at most.
    window: usize,
    /// The batch being gathered (its chunks come after every sent one's), and its raw bytes.
    open: Vec<(ChunkOwner, Bytes)>,
    open_bytes: usize,
    /// Raw bytes of the chunks in flight, gathered or sent, and the most there may be (one
    /// chunk at least).
    inflight_bytes: usize,
    byte_window: usize,
    pending: VecDeque<PendingEntry>,
    tree_chunker: Chunker,
    /// The tree's chunks, in order: the snapshot's manifest lists them.
    pub(super) tree_refs: Vec<BlobRef>,
    record_buf: Vec<u8>,
    /// Data bytes this backup stored that the repository did not have.
    pub(super) new_bytes: u64,
    /// Entries written to the tree.
    pub(super) entries: u64,
    /// The entries' content bytes.
    pub(super) logical_bytes: u64,
}

/// A chunk hashed and, unless already stored, sealed.
type Sealed = (ChunkOwner, BlobRef, Option<Encoded>);

/// A batch of chunks being hashed and sealed on the CPU threads (`ops::cpu`).
type SealedBatch = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<Sealed>>> + Send>>;

/// A batch goes to the CPU threads once its chunks reach this many raw bytes (a chunk of a
/// large file, at least the chunker's smallest, fills one alone)...
const BATCH_BYTES: usize = 256 * 1024;
/// ...or this many chunks. On a million files of 1–8 KiB, one trip per chunk spent 15% of the
/// backup's CPU time waking threads, and the backup took 25.5–26.3 s against 23.3 s in batches.
const BATCH_CHUNKS: usize = 64;

/// Entries allowed to wait behind a chunk in flight before the reader waits too.
const MAX_PENDING_ENTRIES: usize = 4096;

impl Pipeline {
    /// A pipeline with at most `window` chunks and `byte_window` raw bytes in flight (a
    /// larger chunk goes alone).
    pub(super) fn new(shared: Arc<Shared>, window: usize, byte_window: usize) -> Self {
        let repo = &shared.repo;
        let tree_chunker = Chunker::new(repo.config.chunker, shared.keys.chunker_seed());
        Pipeline {
            shared,
            inflight: FuturesOrdered::new(),
            window: window.max(1),
            open: Vec::new(),
            open_bytes: 0,
            inflight_bytes: 0,
            byte_window,
            pending: VecDeque::new(),
            tree_chunker,
            tree_refs: Vec::new(),
            record_buf: Vec::new(),
            new_bytes: 0,
            entries: 0,
            logical_bytes: 0,
        }
    }

    async fn push_chunk(
        &mut self,
        owner: ChunkOwner,
        chunk: Bytes,
        packer: &mut Packer,
    ) -> Result<()> {
        while self.is_busy() && self.inflight_bytes + chunk.len() > self.byte_window {
            self.pop(packer).await?;
        }
        self.inflight_bytes += chunk.len();
        if owner == ChunkOwner::Content {
            self.pending
                .back_mut()
                .expect("content belongs to an open entry")
                .pushed += 1;
        }
        self.open_bytes += chunk.len();
        self.open.push((owner, chunk));
        if self.open_bytes >= BATCH_BYTES || self.open.len() >= BATCH_CHUNKS {
            self.send_open(packer).await?;
        }
        Ok(())
    }

    /// Whether any chunk is in flight, gathered or sent.
    fn is_busy(&self) -> bool {
        !self.inflight.is_empty() || !self.open.is_empty()
    }

    /// Sends the chunks gathered so far to the CPU threads, if the window has room now: the
    /// backup loop calls it before it waits for the source.
    pub(super) async fn send_gathered(&mut self, packer: &mut Packer) -> Result<()> {
        if self.inflight.len() < self.window {
            self.send_open(packer).await?;
        }
        Ok(())
    }

    /// Sends the batch being gathered to the CPU threads, once the window has room.
    async fn send_open(&mut self, packer: &mut Packer) -> Result<()> {
        while self.inflight.len() >= self.window {
            self.pop_sent(packer).await?;
        }
        if self.open.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.open);
        self.open_bytes = 0;
        let shared = self.shared.clone();
        self.inflight.push_back(Box::pin(cpu::finished(
            "backup",
            cpu::spawn(move || {
                batch
                    .into_iter()
                    .map(|(owner, chunk)| {
                        let kind = match owner {
                            ChunkOwner::Tree => BlobKind::Tree,
                            ChunkOwner::Content => BlobKind::Data,
                        };
                        let (r, enc) = hash_and_seal(&shared, kind, chunk);
                        (owner, r, enc)
                    })
                    .collect()
            }),
        )));
        Ok(())
    }

    /// Takes the oldest batch's results, sending the one being gathered first if nothing else
    /// is in flight.
    async fn pop(&mut self, packer: &mut Packer) -> Result<()> {
        if self.inflight.is_empty() {
            self.send_open(packer).await?;
        }
        self.pop_sent(packer).await
    }

    /// Takes the oldest sent batch's results: its new blobs go to the packer, its chunks to
    /// their entries (or the tree), in the order they were pushed.
    async fn pop_sent(&mut self, packer: &mut Packer) -> Result<()> {
        let Some(done) = self.inflight.next().await else {
            return Ok(());
        };
        for (owner, r, encoded) in done? {
            self.inflight_bytes -= r.len as usize;
            if let Some(enc) = encoded {
                if enc.kind == BlobKind::Data {
                    self.new_bytes += enc.raw_len as u64;
                }
                packer.add(enc).await?;
            }
            match owner {
                ChunkOwner::Tree => self.tree_refs.push(r),
                ChunkOwner::Content => {
                    // Results arrive in push order, so the chunk belongs to the first entry
                    // that still waits for chunks.
                    let entry = self
                        .pending
                        .iter_mut()
                        .find(|e| e.expected.is_none_or(|n| e.received < n))
                        .expect("a content chunk has an owner");
                    entry.received += 1;
                    if let Content::Blobs(refs) = &mut entry.content {
                        refs.push(r);
                    }
                }
            }
        }
        Ok(())
    }

    /// Starts an entry whose content will be pushed chunk by chunk.
    fn begin_entry(&mut self, meta: EntryMeta) {
        self.pending.push_back(PendingEntry {
            meta,
            content: Content::Blobs(Vec::new()),
            expected: None,
            pushed: 0,
            received: 0,
        });
    }

    /// Ends the open entry: all its chunks are pushed; `size` is what was actually read.
    fn end_entry(&mut self, size: u64) {
        let entry = self.pending.back_mut().expect("an open entry");
        if size != entry.meta.size && entry.meta.size != crate::source::entry::UNKNOWN_SIZE {
            tracing::warn!(entry = %entry.meta.path, expected = entry.meta.size, read = size, "entry changed size while it was read; recording what was read");
        }
        entry.meta.size = size;
        entry.expected = Some(entry.pushed);
    }

    /// Adds an entry whose content is already known.
    pub(super) async fn add_entry(
        &mut self,
        meta: EntryMeta,
        content: Content,
        packer: &mut Packer,
    ) -> Result<()> {
        self.pending.push_back(PendingEntry {
            meta,
            content,
            expected: Some(0),
            pushed: 0,
            received: 0,
        });
        self.flush_ready(packer).await?;
        while self.pending.len() > MAX_PENDING_ENTRIES {
            self.pop(packer).await?;
            self.flush_ready(packer).await?;
        }
        Ok(())
    }

    /// Reads an entry's content through `chunker`, cut as `cutting` says, and pushes its
    /// chunks; content no larger than the repository's inline limit goes inside the tree
    /// instead.
    pub(super) async fn store_content(
        &mut self,
        mut reader: EntryReader,
        meta: EntryMeta,
        cutting: Cutting,
        chunker: &mut Chunker,
        packer: &mut Packer,
        progress: Option<&Arc<dyn Progress>>,
    ) -> Result<()> {
        let mut read = 0u64;
        let inline_limit = self.shared.repo.config.inline_limit as u64;
        let path = meta.path.to_string();
        let mut meta = Some(meta);
        chunker.set_cutting(cutting);
        loop {
            // The chunker's two buffers both hold chunks in flight: the oldest finish first.
            while self.is_busy() && chunker.is_full() {
                self.pop(packer).await?;
            }
            let n = match reader.read_buf(chunker.buffer_mut()).await {
                Ok(n) => n,
                // Gone before its first byte was read: left out, as if never seen.
                Err(e) if read == 0 && crate::source::Vanished::is(&e) => {
                    tracing::debug!(entry = %path, "left out: it vanished before it was read");
                    return Ok(());
                }
                Err(e) => {
                    return Err(crate::source::AdapterError::new("read", path.clone(), e).into())
                }
            };
            read += n as u64;
            if let Some(p) = progress {
                p.bytes(n as u64);
            }
            let eof = n == 0;
            if let Some(m) = meta.take_if(|_| eof && read <= inline_limit) {
                // Small content goes inside the tree.
                let data = chunker
                    .next_chunk(true)
                    .map(|b| b.to_vec())
                    .unwrap_or_default();
                let mut m = m;
                m.size = read;
                return self.add_entry(m, inline(data), packer).await;
            }
            if !eof && read <= inline_limit {
                continue;
            }
            if let Some(m) = meta.take() {
                self.begin_entry(m);
            }
            while let Some(chunk) = chunker.next_chunk(eof) {
                self.push_chunk(ChunkOwner::Content, chunk, packer).await?;
            }
            if eof {
                break;
            }
        }
        self.end_entry(read);
        self.flush_ready(packer).await
    }

    /// Stores a content read whole (a small file read ahead) without copying it: no longer
    /// than the repository's inline limit it goes inside the tree; cut as one chunk (as
    /// `chunker` would cut it), it is that chunk; longer, it is cut as a content read from
    /// the source is.
    pub(super) async fn store_read(
        &mut self,
        mut meta: EntryMeta,
        data: Vec<u8>,
        cutting: Cutting,
        chunker: &mut Chunker,
        packer: &mut Packer,
        progress: Option<&Arc<dyn Progress>>,
    ) -> Result<()> {
        let len = data.len();
        if let Some(p) = progress {
            p.bytes(len as u64);
        }
        if len as u64 <= self.shared.repo.config.inline_limit as u64 {
            meta.size = len as u64;
            return self.add_entry(meta, inline(data), packer).await;
        }
        chunker.set_cutting(cutting);
        if !chunker.cuts_whole(len) {
            let reader: EntryReader = Box::pin(std::io::Cursor::new(data));
            // Its bytes were counted above.
            return self
                .store_content(reader, meta, cutting, chunker, packer, None)
                .await;
        }
        self.begin_entry(meta);
        self.push_chunk(ChunkOwner::Content, Bytes::from(data), packer)
            .await?;
        self.end_entry(len as u64);
        self.flush_ready(packer).await
    }

    /// Writes the tree records of the complete entries at the front of the queue.
    async fn flush_ready(&mut self, packer: &mut Packer) -> Result<()> {
        while self.pending.front().is_some_and(PendingEntry::is_complete) {
            let entry = self.pending.pop_front().expect("checked");
            self.entries += 1;
            self.logical_bytes += entry.meta.size;
            snapshot::encode_record(
                &TreeRecord {
                    meta: entry.meta,
                    content: entry.content,
                },
                &mut self.record_buf,
            );
            self.tree_chunker.push(&self.record_buf);
            self.record_buf.clear();
            while let Some(chunk) = self.tree_chunker.next_chunk(false) {
                self.push_chunk(ChunkOwner::Tree, chunk, packer).await?;
            }
        }
        Ok(())
    }

    /// Waits for every chunk, writes every record and the tree's last chunk.
    pub(super) async fn finish(&mut self, packer: &mut Packer) -> Result<()> {
        loop {
            self.flush_ready(packer).await?;
            if !self.is_busy() {
                break;
            }
            self.pop(packer).await?;
        }
        if !self.pending.is_empty() {
            return Err(Error::Internal {
                operation: "backup",
                detail: "an entry was left incomplete",
            });
        }
        while let Some(chunk) = self.tree_chunker.next_chunk(true) {
            self.push_chunk(ChunkOwner::Tree, chunk, packer).await?;
        }
        while self.is_busy() {
            self.pop(packer).await?;
        }
        Ok(())
    }
}
