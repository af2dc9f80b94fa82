//! Taking a backup: entries from a [`Source`] are chunked, hashed, deduplicated, compressed,
//! sealed and packed; the snapshot and its catalog record become visible only after every pack
//! and index they depend on is durable.
//!
//! Memory stays bounded whatever the data: a bounded window of chunks is in flight, packs are
//! uploaded with bounded concurrency, and the tree is written as it is produced.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::task::JoinSet;

use crate::catalog::{BackupKind, BackupRecord, BackupStatus, Catalog, CatalogQuery};
use crate::error::{Error, Result};
use crate::format::blob::{self, BlobId, BlobKind};
use crate::format::chunker::Chunker;
use crate::format::index::{Index, PackRecord};
use crate::format::object::{self, ObjectKind};
use crate::format::pack::{self, PackBuilder};
use crate::format::snapshot::{self, BlobRef, Content, Manifest, TreeRecord};
use crate::ops::progress::Progress;
use crate::ops::restore::TreeReader;
use crate::repo::lock::{self, LockKind, RepoLock};
use crate::repo::{self, Repository};
use crate::source::entry::{EntryKind, EntryMeta};
use crate::source::{EntryReader, Source};
use crate::time::stop::StopSignal;

/// How to take a backup.
#[derive(Clone)]
pub struct BackupOptions {
    /// Labels recorded with the backup.
    pub labels: BTreeMap<String, String>,
    /// Reuse unchanged entries of the latest succeeded snapshot of the same source.
    pub use_parent: bool,
    /// Chunks hashed, compressed and sealed at once.
    pub chunk_concurrency: usize,
    /// Packs uploaded at once.
    pub upload_concurrency: usize,
    /// Progress reports.
    pub progress: Option<Arc<dyn Progress>>,
    /// When given, the backup stops at this signal and is recorded failed ("interrupted").
    pub stop: Option<StopSignal>,
}

impl Default for BackupOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        BackupOptions {
            labels: BTreeMap::new(),
            use_parent: true,
            chunk_concurrency: cores * 2,
            upload_concurrency: 2,
            progress: None,
            stop: None,
        }
    }
}

/// What a backup did.
#[derive(Clone, Debug)]
pub struct BackupReport {
    /// The snapshot's catalog record, as finally written.
    pub record: BackupRecord,
    /// Entries whose content was reused from the parent without reading.
    pub reused_entries: u64,
    /// Wall time.
    pub duration: Duration,
}

struct Shared {
    repo: Repository,
    dedup: Mutex<Dedup>,
    /// The backup's lock: no index file is written once it has lapsed.
    lock: lock::LockCheck,
}

struct Dedup {
    index: Index,
    claimed: HashSet<BlobId>,
    /// Packs holding blobs this backup deduplicated against (or wrote): each must still exist
    /// when the snapshot commits.
    used_packs: HashSet<pack::PackId>,
}

struct Encoded {
    id: BlobId,
    kind: BlobKind,
    raw_len: u32,
    stored: Vec<u8>,
}

/// Seals full packs and uploads them with bounded concurrency; writes an index file every few
/// packs so that an interrupted backup loses little.
struct Packer {
    shared: Arc<Shared>,
    current: PackBuilder,
    uploads: JoinSet<Result<PackRecord>>,
    max_uploads: usize,
    unindexed: Vec<PackRecord>,
    stored_bytes: u64,
}

const PACKS_PER_INDEX: usize = 16;

impl Packer {
    fn new(shared: Arc<Shared>, max_uploads: usize) -> Self {
        let cap = shared.repo.config.pack_size as usize + 1024;
        Packer {
            current: PackBuilder::new(shared.repo.keys.current_key_id(), cap),
            shared,
            uploads: JoinSet::new(),
            max_uploads: max_uploads.max(1),
            unindexed: Vec::new(),
            stored_bytes: 0,
        }
    }

    async fn add(&mut self, blob: Encoded) -> Result<()> {
        self.current
            .add(blob.id, blob.kind, blob.raw_len, &blob.stored);
        if self.current.len() >= self.shared.repo.config.pack_size as usize {
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
        let cap = self.shared.repo.config.pack_size as usize + 1024;
        let full = std::mem::replace(
            &mut self.current,
            PackBuilder::new(self.shared.repo.keys.current_key_id(), cap),
        );
        let shared = self.shared.clone();
        self.uploads.spawn(async move {
            let keys = shared.repo.keys.clone();
            let key_id = keys.current_key_id();
            let (id, bytes, blobs) = tokio::task::spawn_blocking(move || full.finish(&keys))
                .await
                .map_err(Error::task("pack sealing"))?;
            let size = bytes.len() as u64;
            repo::put_idempotent(shared.repo.sink.as_ref(), &pack::pack_key(&id), bytes).await?;
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
        Ok(())
    }

    /// Seals the last pack, waits for every upload, writes the remaining index.
    async fn finish(&mut self) -> Result<()> {
        self.seal_current().await?;
        while !self.uploads.is_empty() {
            self.reap_one().await?;
        }
        self.flush_index().await
    }
}

/// Hashes a chunk and, unless the repository (or this backup) already has it, seals it.
fn hash_and_seal(shared: &Shared, kind: BlobKind, chunk: Bytes) -> (BlobRef, Option<Encoded>) {
    let repo = &shared.repo;
    let id = repo.keys.blob_id(&chunk);
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
    let mut stored = Vec::with_capacity(chunk.len() / 2 + 64);
    blob::encode_blob(
        &repo.keys.current_key(),
        kind,
        &id,
        &chunk,
        repo.config.compression_level,
        &mut stored,
    );
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

/// Hashes and seals chunks on the blocking pool with a bounded window, across entries, and
/// writes each entry's tree record once all its chunks are done, in entry order.
struct Pipeline {
    shared: Arc<Shared>,
    inflight: FuturesOrdered<tokio::task::JoinHandle<(ChunkOwner, BlobRef, Option<Encoded>)>>,
    window: usize,
    pending: VecDeque<PendingEntry>,
    tree_chunker: Chunker,
    tree_refs: Vec<BlobRef>,
    record_buf: Vec<u8>,
    new_bytes: u64,
    entries: u64,
    logical_bytes: u64,
}

/// Entries allowed to wait behind a chunk in flight before the reader waits too.
const MAX_PENDING_ENTRIES: usize = 4096;

impl Pipeline {
    async fn push_chunk(
        &mut self,
        owner: ChunkOwner,
        chunk: Bytes,
        packer: &mut Packer,
    ) -> Result<()> {
        while self.inflight.len() >= self.window {
            self.pop(packer).await?;
        }
        if owner == ChunkOwner::Content {
            self.pending
                .back_mut()
                .expect("content belongs to an open entry")
                .pushed += 1;
        }
        let shared = self.shared.clone();
        let kind = if owner == ChunkOwner::Tree {
            BlobKind::Tree
        } else {
            BlobKind::Data
        };
        self.inflight
            .push_back(tokio::task::spawn_blocking(move || {
                let (r, enc) = hash_and_seal(&shared, kind, chunk);
                (owner, r, enc)
            }));
        Ok(())
    }

    async fn pop(&mut self, packer: &mut Packer) -> Result<()> {
        let Some(done) = self.inflight.next().await else {
            return Ok(());
        };
        let (owner, r, encoded) = done.map_err(Error::task("chunk"))?;
        if let Some(enc) = encoded {
            if enc.kind == BlobKind::Data {
                self.new_bytes += enc.raw_len as u64;
            }
            packer.add(enc).await?;
        }
        match owner {
            ChunkOwner::Tree => self.tree_refs.push(r),
            ChunkOwner::Content => {
                // Results arrive in push order, so the chunk belongs to the first entry that
                // still waits for chunks.
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
    async fn add_entry(
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
    async fn finish(&mut self, packer: &mut Packer) -> Result<()> {
        loop {
            self.flush_ready(packer).await?;
            if self.inflight.is_empty() {
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
        while !self.inflight.is_empty() {
            self.pop(packer).await?;
        }
        Ok(())
    }
}

/// Walks the parent snapshot's tree alongside the new entries, to reuse unchanged content.
struct ParentCursor {
    reader: Option<TreeReader>,
    current: Option<TreeRecord>,
    /// The source's order, which its previous snapshot's tree is in too.
    order: crate::source::EntryOrder,
}

impl ParentCursor {
    /// The parent's content for an entry whose fingerprint is unchanged: its blobs, or its
    /// inline bytes for small content (which is then not read again either).
    async fn find(&mut self, meta: &EntryMeta) -> Result<Option<Content>> {
        let Some(fingerprint) = &meta.fingerprint else {
            return Ok(None);
        };
        loop {
            if self.current.is_none() {
                let Some(reader) = self.reader.as_mut() else {
                    return Ok(None);
                };
                self.current = reader.next().await?;
                if self.current.is_none() {
                    self.reader = None;
                    return Ok(None);
                }
            }
            let cur = self.current.as_ref().expect("set above");
            match self.order.cmp(&cur.meta.path, &meta.path) {
                std::cmp::Ordering::Less => self.current = None,
                std::cmp::Ordering::Greater => return Ok(None),
                std::cmp::Ordering::Equal => {
                    let same = cur.meta.kind == EntryKind::File
                        && cur.meta.size == meta.size
                        && cur.meta.fingerprint.as_ref() == Some(fingerprint);
                    return Ok(same.then(|| cur.content.clone()));
                }
            }
        }
    }
}

/// What the read-ahead stage hands the backup loop, in source order.
enum Ahead {
    /// Unchanged since the parent: its content (blobs or inline bytes), without reading.
    Reused(EntryMeta, Content),
    /// Content to store: read ahead into memory for small files, else the source's reader.
    Content(EntryMeta, EntryReader),
    /// An entry without content.
    NoContent(EntryMeta),
    /// The source's metadata, after its last entry.
    Finished(crate::source::SourceMetadata),
}

/// Files up to this size are read ahead whole, several at once.
const READ_AHEAD_MAX_FILE: u64 = 1 << 20;
/// Entries in flight in the read-ahead stage.
const READ_AHEAD_ENTRIES: usize = 8;

/// Pulls entries from the source ahead of the backup loop: decides reuse from the parent
/// snapshot (so unchanged files are never read) and reads small files concurrently, so a tree
/// of many small files is not read one blocking call at a time. Memory: at most
/// [`READ_AHEAD_ENTRIES`] files of at most [`READ_AHEAD_MAX_FILE`] bytes.
fn spawn_read_ahead(
    mut session: Box<dyn crate::source::SourceSession>,
    mut cursor: ParentCursor,
    shared: Arc<Shared>,
) -> (
    tokio::sync::mpsc::Receiver<Result<Ahead>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD_ENTRIES);
    cursor.order = session.entry_order();
    let task = tokio::spawn(async move {
        let mut inflight: FuturesOrdered<futures::future::BoxFuture<'static, Result<Ahead>>> =
            FuturesOrdered::new();
        let mut done = false;
        // Every content reader handed on holds a clone of `open_readers`; when the last one is
        // read or dropped, `all_read` ends.
        let (open_readers, mut all_read) = tokio::sync::mpsc::channel::<()>(1);
        loop {
            while !done && inflight.len() < READ_AHEAD_ENTRIES {
                let entry = match session.next_entry().await {
                    Ok(Some(entry)) => entry,
                    Ok(None) => {
                        done = true;
                        break;
                    }
                    Err(e) => {
                        inflight.push_back(Box::pin(futures::future::ready(Err(e.into()))));
                        done = true;
                        break;
                    }
                };
                let meta = entry.meta;
                let item: futures::future::BoxFuture<'static, Result<Ahead>> =
                    match (meta.kind, entry.content) {
                        (EntryKind::File, Some(reader)) => {
                            let mut reader = TrackedReader::wrap(reader, open_readers.clone());
                            let reuse = match cursor.find(&meta).await {
                                Ok(r) => r.filter(|content| match content {
                                    Content::Blobs(refs) => {
                                        let dedup =
                                            shared.dedup.lock().expect("dedup lock poisoned");
                                        refs.iter().all(|r| dedup.index.contains(&r.id))
                                    }
                                    _ => true,
                                }),
                                Err(e) => {
                                    inflight.push_back(Box::pin(futures::future::ready(Err(e))));
                                    done = true;
                                    break;
                                }
                            };
                            match reuse {
                                Some(refs) => {
                                    Box::pin(futures::future::ready(Ok(Ahead::Reused(meta, refs))))
                                }
                                None if meta.size <= READ_AHEAD_MAX_FILE => Box::pin(async move {
                                    let mut buf = Vec::with_capacity(meta.size as usize + 1);
                                    reader.read_to_end(&mut buf).await.map_err(|e| {
                                        crate::source::AdapterError::new(
                                            "read",
                                            meta.path.to_string(),
                                            e,
                                        )
                                    })?;
                                    let reader: EntryReader = Box::pin(std::io::Cursor::new(buf));
                                    Ok(Ahead::Content(meta, reader))
                                }),
                                None => Box::pin(futures::future::ready(Ok(Ahead::Content(
                                    meta, reader,
                                )))),
                            }
                        }
                        _ => Box::pin(futures::future::ready(Ok(Ahead::NoContent(meta)))),
                    };
                inflight.push_back(item);
            }
            match inflight.next().await {
                Some(item) => {
                    let failed = item.is_err();
                    if tx.send(item).await.is_err() || failed {
                        return;
                    }
                }
                None => break,
            }
        }
        // The walk is over and every entry is on its way: its closing entries come once all
        // content was read, so a source's stop (Postgres' `pg_backup_stop`) follows its last read.
        drop(open_readers);
        let _ = all_read.recv().await;
        match session.closing_entries().await {
            Ok(entries) => {
                for entry in entries {
                    let item = match entry.content {
                        Some(reader) if entry.meta.kind == EntryKind::File => {
                            Ahead::Content(entry.meta, reader)
                        }
                        _ => Ahead::NoContent(entry.meta),
                    };
                    if tx.send(Ok(item)).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        }
        let finished = session
            .finish()
            .await
            .map(Ahead::Finished)
            .map_err(Error::from);
        let _ = tx.send(finished).await;
    });
    (rx, task)
}

/// A source's content reader that tells the read-ahead stage, by being dropped, that it is no
/// longer read from.
struct TrackedReader {
    inner: EntryReader,
    _open: tokio::sync::mpsc::Sender<()>,
}

impl TrackedReader {
    fn wrap(inner: EntryReader, open: tokio::sync::mpsc::Sender<()>) -> EntryReader {
        Box::pin(TrackedReader { inner, _open: open })
    }
}

impl tokio::io::AsyncRead for TrackedReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.inner.as_mut().poll_read(cx, buf)
    }
}

impl Repository {
    /// Backs up `source` into a new snapshot.
    pub async fn backup(
        &self,
        source: &dyn Source,
        options: BackupOptions,
    ) -> Result<BackupReport> {
        let started = Instant::now();
        let started_at = self.clock.now();
        let id = repo::new_backup_id(started_at);
        let descriptor = source.descriptor();
        let lock = RepoLock::acquire(
            self.sink.clone(),
            self.clock.clone(),
            LockKind::Shared,
            "backup",
            Some(id.clone()),
            self.lock_settings,
        )
        .await?;
        if let Err(e) = self.reap_interrupted().await {
            tracing::warn!(error = %e, "could not mark interrupted backups failed");
        }
        let catalog = self.catalog();
        let mut record = BackupRecord {
            id: id.clone(),
            revision: 1,
            source: descriptor.clone(),
            kind: BackupKind::Full,
            status: BackupStatus::Running,
            error: None,
            started_at,
            finished_at: None,
            logical_bytes: 0,
            stored_bytes: 0,
            new_bytes: 0,
            entries: 0,
            manifest_checksum: None,
            tier: Default::default(),
            labels: options.labels.clone(),
            legal_hold: false,
            verifications: Vec::new(),
            source_metadata: Default::default(),
            parent: None,
            host: lock::host_name(),
            updated_at: started_at,
            salvage: None,
        };
        catalog.put(&record).await?;
        let outcome = match &options.stop {
            None => self.run_backup(source, &options, &mut record, &lock).await,
            Some(stop) => {
                // Dropping the unfinished run leaves at most unindexed packs, which the next
                // backup adopts or prune collects: the same state as a crash, never a
                // snapshot that claims more than is stored.
                tokio::select! {
                    biased;
                    _ = stop.stopped() => Err(Error::Interrupted {
                        operation: format!("backup {id}"),
                        reason: stop.reason(),
                    }),
                    r = self.run_backup(source, &options, &mut record, &lock) => r,
                }
            }
        };
        // The manifest is visible now; the backup counts only if the lock still held after
        // that (so no prune could have judged the lock gone and collected what it wrote).
        let outcome = match outcome {
            Ok(reused) => match lock.check() {
                Ok(()) => Ok(reused),
                Err(lapsed) => {
                    let manifest = snapshot::manifest_key(&id);
                    if let Err(e) = self.sink.delete(&manifest).await {
                        tracing::warn!(error = %e, %manifest, "could not remove the manifest of a backup whose lock lapsed");
                    }
                    Err(lapsed)
                }
            },
            // Whatever failed after the lock lapsed (a pack that a prune removed meanwhile, …)
            // is a symptom: the lapse is the cause, and what the error names.
            Err(e) => match lock.check() {
                Err(Error::LockLapsed {
                    location,
                    lock,
                    detail,
                }) => Err(Error::LockLapsed {
                    location,
                    lock,
                    detail: format!("{detail}; the backup then failed: {e}"),
                }),
                _ => Err(e),
            },
        };
        record.revision += 1;
        record.finished_at = Some(self.clock.now());
        record.updated_at = self.clock.now();
        let result = match outcome {
            Ok(reused) => {
                record.status = BackupStatus::Succeeded;
                catalog.put(&record).await?;
                Ok(BackupReport {
                    record: record.clone(),
                    reused_entries: reused,
                    duration: started.elapsed(),
                })
            }
            Err(e) => {
                record.status = BackupStatus::Failed;
                record.error = Some(crate::error::error_chain(&e));
                // A reaper that judged this backup gone may have written this revision's
                // `failed` already: the real cause then goes in the next revision.
                let mut recorded = catalog.put(&record).await;
                if let Err(Error::Sink(crate::sink::SinkError::AlreadyExists { .. })) = &recorded {
                    if let Ok(Some(current)) = catalog.get(&id).await {
                        record.revision = current.revision + 1;
                        recorded = catalog.put(&record).await;
                    }
                }
                if let Err(e2) = recorded {
                    tracing::warn!(error = %e2, backup = %id, "could not record the failure");
                }
                Err(e)
            }
        };
        if let Err(e) = lock.release().await {
            tracing::warn!(error = %e, "could not remove the backup lock; it will expire");
        }
        result
    }

    async fn run_backup(
        &self,
        source: &dyn Source,
        options: &BackupOptions,
        record: &mut BackupRecord,
        lock: &RepoLock,
    ) -> Result<u64> {
        // The intact index files only: a damaged one's packs are found by the listing of
        // unindexed packs just below (adopted and indexed again by this backup), so `data/` is
        // listed once.
        let mut index = self.load_intact_index().await?.index;
        // Packs a prune condemned are not adopted: the prune decides their fate.
        let plans = self.prune_plans().await?;
        let condemned: HashSet<crate::format::pack::PackId> = plans
            .iter()
            .flat_map(|(_, _, p)| p.iter().map(|r| r.id))
            .collect();
        let adopted: Vec<PackRecord> = self
            .unindexed_packs(&index)
            .await?
            .into_iter()
            .filter(|p| !condemned.contains(&p.id))
            .collect();
        for p in &adopted {
            index.add_pack(p);
        }
        let parent = if options.use_parent {
            self.latest_for_source(&record.source.id).await?
        } else {
            None
        };
        let mut cursor = ParentCursor {
            reader: None,
            current: None,
            order: Default::default(),
        };
        if let Some(parent) = &parent {
            let manifest = self.load_manifest(parent).await?;
            record.parent = Some(parent.id.clone());
            record.kind = BackupKind::Incremental;
            // The parent's tree is only read: it may also be found in packs a running prune
            // condemned (never deduplicated against, see above).
            let mut in_plans = Index::new();
            plans
                .iter()
                .flat_map(|(_, _, p)| p.iter())
                .for_each(|p| in_plans.add_pack(p));
            let locations = manifest
                .tree
                .iter()
                .map(|r| {
                    let mut copies = index.copies(&r.id);
                    copies.extend(in_plans.copies(&r.id));
                    (*r, copies)
                })
                .collect();
            cursor.reader = Some(TreeReader::from_locations(self.clone(), locations));
        }
        let shared = Arc::new(Shared {
            repo: self.clone(),
            dedup: Mutex::new(Dedup {
                index,
                claimed: HashSet::new(),
                used_packs: HashSet::new(),
            }),
            lock: lock.checker(),
        });
        let mut packer = Packer::new(shared.clone(), options.upload_concurrency);
        packer.unindexed = adopted;
        let mut pipeline = Pipeline {
            shared: shared.clone(),
            inflight: FuturesOrdered::new(),
            window: options.chunk_concurrency.max(1),
            pending: VecDeque::new(),
            tree_chunker: Chunker::new(self.config.chunker, self.keys.chunker_seed()),
            tree_refs: Vec::new(),
            record_buf: Vec::new(),
            new_bytes: 0,
            entries: 0,
            logical_bytes: 0,
        };
        let mut chunker = Chunker::new(self.config.chunker, self.keys.chunker_seed());
        let mut reused = 0u64;

        let session = source.start().await?;
        let (mut ahead, reader_task) = spawn_read_ahead(session, cursor, shared.clone());
        let mut source_metadata = None;
        while let Some(item) = ahead.recv().await {
            match item? {
                Ahead::Reused(meta, content) => {
                    reused += 1;
                    if let Some(p) = &options.progress {
                        p.entry(&meta);
                        p.bytes(meta.size);
                    }
                    pipeline.add_entry(meta, content, &mut packer).await?;
                }
                Ahead::Content(meta, reader) => {
                    if let Some(p) = &options.progress {
                        p.entry(&meta);
                    }
                    self.store_content(
                        reader,
                        meta,
                        &mut chunker,
                        &mut pipeline,
                        &mut packer,
                        options,
                    )
                    .await?;
                }
                Ahead::NoContent(meta) => {
                    if let Some(p) = &options.progress {
                        p.entry(&meta);
                    }
                    pipeline.add_entry(meta, Content::None, &mut packer).await?;
                }
                Ahead::Finished(metadata) => source_metadata = Some(metadata),
            }
        }
        let _ = reader_task.await;
        let source_metadata = source_metadata.ok_or_else(|| Error::SourceUnfinished {
            source_id: record.source.id.clone(),
        })?;
        pipeline.finish(&mut packer).await?;
        packer.finish().await?;
        self.check_used_packs_exist(&shared).await?;
        lock.check()?;

        let finished_at = self.clock.now();
        let manifest = Manifest {
            format: snapshot::SNAPSHOT_FORMAT,
            id: record.id.clone(),
            source: record.source.clone(),
            started_at: record.started_at,
            finished_at,
            entries: pipeline.entries,
            logical_bytes: pipeline.logical_bytes,
            tree: std::mem::take(&mut pipeline.tree_refs),
            source_metadata: source_metadata.clone(),
            labels: record.labels.clone(),
            parent: record.parent.clone(),
        };
        let key = snapshot::manifest_key(&record.id);
        let sealed = object::seal_object(
            &self.keys,
            ObjectKind::Snapshot,
            &key,
            &serde_json::to_vec(&manifest).expect("manifest serializes"),
        );
        let checksum = object::stored_checksum(&sealed).expect("has checksum");
        let manifest_len = sealed.len() as u64;
        self.sink
            .put(&key, sealed.into(), crate::sink::PutMode::Create)
            .await?;

        record.entries = pipeline.entries;
        record.logical_bytes = pipeline.logical_bytes;
        record.new_bytes = pipeline.new_bytes;
        record.stored_bytes = packer.stored_bytes + manifest_len;
        record.manifest_checksum = Some(checksum);
        record.source_metadata = source_metadata;
        Ok(reused)
    }

    async fn store_content(
        &self,
        mut reader: EntryReader,
        meta: EntryMeta,
        chunker: &mut Chunker,
        pipeline: &mut Pipeline,
        packer: &mut Packer,
        options: &BackupOptions,
    ) -> Result<()> {
        let mut read = 0u64;
        let inline_limit = self.config.inline_limit as u64;
        let path = meta.path.to_string();
        let mut meta = Some(meta);
        loop {
            let n = reader
                .read_buf(chunker.buffer_mut())
                .await
                .map_err(|e| crate::source::AdapterError::new("read", path.clone(), e))?;
            read += n as u64;
            if let Some(p) = &options.progress {
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
                let content = if data.is_empty() {
                    Content::None
                } else {
                    Content::Inline(data)
                };
                return pipeline.add_entry(m, content, packer).await;
            }
            if !eof && read <= inline_limit {
                continue;
            }
            if let Some(m) = meta.take() {
                pipeline.begin_entry(m);
            }
            while let Some(chunk) = chunker.next_chunk(eof) {
                pipeline
                    .push_chunk(ChunkOwner::Content, chunk, packer)
                    .await?;
            }
            if eof {
                break;
            }
        }
        pipeline.end_entry(read);
        pipeline.flush_ready(packer).await
    }

    /// Fails, naming it, if a pack this backup deduplicated against is gone (a prune
    /// collected it while an index file still named it): committing would reference lost data.
    async fn check_used_packs_exist(&self, shared: &Shared) -> Result<()> {
        use futures::TryStreamExt;
        let used =
            std::mem::take(&mut shared.dedup.lock().expect("dedup lock poisoned").used_packs);
        if used.is_empty() {
            return Ok(());
        }
        let mut present: HashSet<pack::PackId> = HashSet::with_capacity(used.len());
        let mut listing = self.sink.list("data/");
        while let Some(meta) = listing.try_next().await? {
            if let Some(id) = pack::pack_id_from_key(&meta.key).filter(|id| used.contains(id)) {
                present.insert(id);
            }
        }
        match used.iter().find(|id| !present.contains(*id)) {
            None => Ok(()),
            Some(missing) => Err(Error::corrupt(
                pack::pack_key(missing),
                "this backup deduplicated against it, but it is gone (collected by a prune while an index still named it): nothing was committed; run `resilience repair index` and back up again",
            )),
        }
    }

    /// The latest succeeded snapshot of a source.
    pub async fn latest_for_source(&self, source_id: &str) -> Result<Option<BackupRecord>> {
        Ok(self
            .catalog()
            .list(&CatalogQuery {
                source: Some(source_id.to_owned()),
                statuses: vec![BackupStatus::Succeeded],
                ..Default::default()
            })
            .await?
            .pop())
    }

    /// Marks `running` backups whose process is gone (no live lock names them) as failed. A
    /// backup judged gone that was only paused cannot commit afterwards: its own lock check
    /// finds the lapse, and should it have committed first, its `succeeded` revision outranks
    /// this `failed` one of the same number ([`crate::catalog`]).
    pub async fn reap_interrupted(&self) -> Result<usize> {
        let catalog = self.catalog();
        let running = catalog
            .list(&CatalogQuery {
                statuses: vec![BackupStatus::Running],
                ..Default::default()
            })
            .await?;
        if running.is_empty() {
            return Ok(0);
        }
        let now = self.clock.now();
        let locks = lock::list_locks(self.sink.as_ref()).await?;
        let live: HashSet<String> = locks
            .live_others(None, now)
            .filter_map(|l| l.info.backup_id.clone())
            .collect();
        let mut reaped = 0;
        for mut r in running.into_iter().filter(|r| !live.contains(&r.id)) {
            r.revision += 1;
            r.status = BackupStatus::Failed;
            r.error = Some("interrupted: its process stopped before it finished".into());
            r.updated_at = now;
            catalog.put(&r).await?;
            reaped += 1;
        }
        Ok(reaped)
    }
}
