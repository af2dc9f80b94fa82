//! Test doubles for users' and adapters' tests: an in-memory [`Source`] and [`Target`], and a
//! [`FaultySink`] that fails on command, and a [`PausableSink`] that stops like a paused
//! process. Enabled with the `testing` feature.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

use crate::sink::{ByteStream, Copied, ObjectMeta, PutMode, Sink, SinkError};
use crate::source::entry::EntryMeta;
use crate::source::{
    AdapterError, ContentWriter, Cutting, EntryOrder, Source, SourceDescriptor, SourceEntry,
    SourceMetadata, SourceSession, Target,
};

/// `len` reproducible pseudo-random (incompressible) bytes for `seed` (xorshift64).
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `data` as a gzip member (RFC 1952) of stored deflate blocks: valid gzip that any reader
/// decompresses back to `data`, with no compressor needed (for tests of objects stored with
/// `Content-Encoding: gzip`).
pub fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut blocks = data.chunks(65535).peekable();
    if blocks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(block) = blocks.next() {
        out.push(u8::from(blocks.peek().is_none()));
        let len = block.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    out.extend_from_slice(&(!crc).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// A source of entries held in memory.
#[derive(Clone, Debug)]
pub struct MemorySource {
    /// Its descriptor.
    pub descriptor: SourceDescriptor,
    /// Entries with their content, in the order they are produced.
    pub entries: Vec<(EntryMeta, Bytes)>,
    /// The order the entries are declared to be in.
    pub order: EntryOrder,
    /// How every entry's content is to be cut into chunks.
    pub cutting: Cutting,
}

impl MemorySource {
    /// A source named `id` of kind `memory`.
    pub fn new(id: &str) -> Self {
        MemorySource {
            descriptor: SourceDescriptor {
                id: id.into(),
                kind: "memory".into(),
            },
            entries: Vec::new(),
            order: EntryOrder::Walk,
            cutting: Cutting::ContentDefined,
        }
    }

    /// Asks for every entry's content to be cut this way (by default where the content says).
    pub fn with_cutting(mut self, cutting: Cutting) -> Self {
        self.cutting = cutting;
        self
    }

    /// Declares the order the entries are in (by default a walk).
    pub fn with_order(mut self, order: EntryOrder) -> Self {
        self.order = order;
        self
    }

    /// Adds a file entry whose fingerprint is a hash of its content (so unchanged files are
    /// reused by the next backup).
    pub fn file(mut self, path: &str, content: impl Into<Bytes>) -> Self {
        let content = content.into();
        let mut meta = EntryMeta::file(path, content.len() as u64);
        meta.fingerprint = Some(blake3::hash(&content).to_hex().to_string());
        self.entries.push((meta, content));
        self
    }

    /// Adds any entry.
    pub fn entry(mut self, meta: EntryMeta, content: impl Into<Bytes>) -> Self {
        self.entries.push((meta, content.into()));
        self
    }
}

struct MemorySession {
    entries: std::vec::IntoIter<(EntryMeta, Bytes)>,
    order: EntryOrder,
    cutting: Cutting,
}

#[async_trait]
impl Source for MemorySource {
    fn descriptor(&self) -> SourceDescriptor {
        self.descriptor.clone()
    }

    async fn start(&self) -> Result<Box<dyn SourceSession>, AdapterError> {
        Ok(Box::new(MemorySession {
            entries: self.entries.clone().into_iter(),
            order: self.order,
            cutting: self.cutting,
        }))
    }
}

#[async_trait]
impl SourceSession for MemorySession {
    fn entry_order(&self) -> EntryOrder {
        self.order
    }

    fn cutting(&self, _meta: &EntryMeta) -> Cutting {
        self.cutting
    }

    async fn next_entry(&mut self) -> Result<Option<SourceEntry>, AdapterError> {
        Ok(self.entries.next().map(|(meta, content)| {
            let reader: crate::source::EntryReader = Box::pin(std::io::Cursor::new(content));
            SourceEntry {
                content: (meta.kind == crate::source::entry::EntryKind::File).then_some(reader),
                meta,
            }
        }))
    }

    async fn finish(&mut self) -> Result<SourceMetadata, AdapterError> {
        Ok(SourceMetadata::new())
    }
}

/// Restored entries by path, with their content.
pub type RestoredEntries = Arc<Mutex<BTreeMap<Vec<u8>, (EntryMeta, Vec<u8>)>>>;

/// A target that keeps restored entries in memory.
#[derive(Clone, Debug, Default)]
pub struct MemoryTarget {
    /// Restored entries by path, with their content.
    pub entries: RestoredEntries,
    /// Entries whose metadata was applied, in order.
    pub applied: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl MemoryTarget {
    /// An empty target.
    pub fn new() -> Self {
        Self::default()
    }

    /// The content restored for `path`.
    pub fn content(&self, path: &str) -> Option<Vec<u8>> {
        self.entries
            .lock()
            .expect("lock")
            .get(path.as_bytes())
            .map(|(_, c)| c.clone())
    }
}

struct MemoryWriter {
    path: Vec<u8>,
    buf: Vec<u8>,
    entries: RestoredEntries,
}

#[async_trait]
impl Target for MemoryTarget {
    async fn create(
        &self,
        meta: &EntryMeta,
    ) -> Result<Option<Box<dyn ContentWriter>>, AdapterError> {
        self.entries
            .lock()
            .expect("lock")
            .insert(meta.path.0.clone(), (meta.clone(), Vec::new()));
        Ok(Some(Box::new(MemoryWriter {
            path: meta.path.0.clone(),
            buf: Vec::new(),
            entries: self.entries.clone(),
        })))
    }

    async fn apply_metadata(&self, meta: &EntryMeta) -> Result<(), AdapterError> {
        self.applied.lock().expect("lock").push(meta.path.0.clone());
        Ok(())
    }

    async fn finish(&self) -> Result<(), AdapterError> {
        Ok(())
    }
}

#[async_trait]
impl ContentWriter for MemoryWriter {
    async fn write(&mut self, data: Bytes) -> Result<(), AdapterError> {
        self.buf.extend_from_slice(&data);
        Ok(())
    }

    async fn complete(self: Box<Self>) -> Result<(), AdapterError> {
        let mut entries = self.entries.lock().expect("lock");
        if let Some(e) = entries.get_mut(&self.path) {
            e.1 = self.buf;
        }
        Ok(())
    }
}

/// Wraps a sink and makes its writes fail once a budget of successful puts is spent, to test
/// what an interrupted operation leaves behind.
#[derive(Debug)]
pub struct FaultySink<S> {
    inner: S,
    puts_left: AtomicI64,
    range_bytes: AtomicU64,
}

impl<S: Sink> FaultySink<S> {
    /// Writes succeed until `puts` puts have succeeded (negative: never fail).
    pub fn new(inner: S, puts: i64) -> Self {
        FaultySink {
            inner,
            puts_left: AtomicI64::new(puts),
            range_bytes: AtomicU64::new(0),
        }
    }

    /// Bytes read so far by ranged reads (what a restore reads of packs).
    pub fn range_bytes_read(&self) -> u64 {
        self.range_bytes.load(Ordering::SeqCst)
    }

    /// Sets the remaining budget.
    pub fn set_budget(&self, puts: i64) {
        self.puts_left.store(puts, Ordering::SeqCst);
    }

    /// The wrapped sink.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn spend(&self, key: &str) -> Result<(), SinkError> {
        let before = self.puts_left.load(Ordering::SeqCst);
        if before < 0 {
            return Ok(());
        }
        if before == 0 || self.puts_left.fetch_sub(1, Ordering::SeqCst) <= 0 {
            return Err(SinkError::Backend {
                operation: "put",
                key: key.into(),
                location: self.inner.location(),
                source: "injected fault".into(),
            });
        }
        Ok(())
    }
}

crate::forward_sink! {
    (impl<S: Sink> Sink for FaultySink<S>)
    to self.inner: location, get, get_stream, head, list, delete, unfinished_uploads,
        discard_upload, retention, set_retention;

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<(), SinkError> {
        self.spend(key)?;
        self.inner.put(key, data, mode).await
    }
    async fn put_stream(
        &self,
        key: &str,
        data: ByteStream,
        mode: PutMode,
    ) -> Result<u64, SinkError> {
        self.spend(key)?;
        self.inner.put_stream(key, data, mode).await
    }
    async fn put_copy(
        &self,
        key: &str,
        data: ByteStream,
        origin: &ObjectMeta,
    ) -> Result<Copied, SinkError> {
        self.spend(key)?;
        self.inner.put_copy(key, data, origin).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, SinkError> {
        let data = self.inner.get_range(key, range).await?;
        self.range_bytes
            .fetch_add(data.len() as u64, Ordering::SeqCst);
        Ok(data)
    }
}

/// A succeeded full-backup record of `source` (kind `dir`) started at `at` and finished five
/// minutes later, with sizes of 1: for retention and health tests that need catalogs, not data.
pub fn record_at(
    id: &str,
    source: &str,
    at: chrono::DateTime<chrono::Utc>,
) -> crate::catalog::BackupRecord {
    use crate::catalog::{BackupKind, BackupRecord, BackupStatus};
    BackupRecord {
        id: id.into(),
        revision: 2,
        source: SourceDescriptor {
            id: source.into(),
            kind: "dir".into(),
        },
        kind: BackupKind::Full,
        status: BackupStatus::Succeeded,
        error: None,
        started_at: at,
        finished_at: Some(at + chrono::Duration::minutes(5)),
        logical_bytes: 1,
        stored_bytes: 1,
        new_bytes: 1,
        entries: 1,
        manifest_checksum: None,
        tier: Default::default(),
        labels: BTreeMap::new(),
        legal_hold: false,
        verifications: vec![],
        source_metadata: Default::default(),
        parent: None,
        host: "test".into(),
        updated_at: at,
        salvage: None,
    }
}

/// Wraps a sink so that a test can pause it as a stopped process, a paused VM or a stalled
/// disk would be: while paused, every operation on it waits (the heartbeat of a lock taken
/// through it too). It can pause itself once a put under a prefix has completed, and it can
/// delay puts under a prefix (a store that retries for minutes).
pub struct PausableSink {
    inner: Arc<dyn Sink>,
    paused: tokio::sync::watch::Sender<bool>,
    pause_after_put: Mutex<Option<String>>,
    pause_before_delete: Mutex<Option<String>>,
    put_delay: Mutex<Option<(String, std::time::Duration)>>,
}

impl std::fmt::Debug for PausableSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PausableSink")
            .field("paused", &*self.paused.borrow())
            .finish()
    }
}

impl PausableSink {
    /// A running (not paused) wrapper of `inner`.
    pub fn new(inner: Arc<dyn Sink>) -> Self {
        PausableSink {
            inner,
            paused: tokio::sync::watch::channel(false).0,
            pause_after_put: Mutex::new(None),
            pause_before_delete: Mutex::new(None),
            put_delay: Mutex::new(None),
        }
    }

    /// Pauses every operation from now on.
    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    /// Lets every waiting and later operation go on.
    pub fn resume(&self) {
        self.paused.send_replace(false);
    }

    /// Pauses once a put of a key starting with `prefix` has completed.
    pub fn pause_after_put_of(&self, prefix: &str) {
        *self.pause_after_put.lock().expect("pausable lock") = Some(prefix.to_owned());
    }

    /// Pauses just before the first delete of a key starting with `prefix`.
    pub fn pause_before_delete_of(&self, prefix: &str) {
        *self.pause_before_delete.lock().expect("pausable lock") = Some(prefix.to_owned());
    }

    /// Makes every put of a key starting with `prefix` take `delay` before it reaches the store.
    pub fn delay_puts_of(&self, prefix: &str, delay: std::time::Duration) {
        *self.put_delay.lock().expect("pausable lock") = Some((prefix.to_owned(), delay));
    }

    /// Completes once the sink is paused.
    pub async fn paused(&self) {
        let mut rx = self.paused.subscribe();
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Waits (60 s at most) until the sink has paused itself at the operation it was set to
    /// pause at: the task working through it got there. Panics naming `what` otherwise.
    pub async fn until_paused(&self, what: &str) {
        tokio::time::timeout(std::time::Duration::from_secs(60), self.paused())
            .await
            .unwrap_or_else(|_| panic!("waited 60 s for {what}"));
    }

    async fn gate(&self) {
        let mut rx = self.paused.subscribe();
        while *rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    async fn before_put(&self, key: &str) {
        self.gate().await;
        let delay = self
            .put_delay
            .lock()
            .expect("pausable lock")
            .clone()
            .filter(|(prefix, _)| key.starts_with(prefix.as_str()));
        if let Some((_, delay)) = delay {
            tokio::time::sleep(delay).await;
        }
    }

    fn after_put(&self, key: &str) {
        self.pause_if(&self.pause_after_put, key);
    }

    /// Pauses, once, when `key` starts with the prefix `trigger` holds.
    fn pause_if(&self, trigger: &Mutex<Option<String>>, key: &str) {
        let mut trigger = trigger.lock().expect("pausable lock");
        if trigger
            .as_deref()
            .is_some_and(|prefix| key.starts_with(prefix))
        {
            *trigger = None;
            self.pause();
        }
    }
}

crate::forward_sink! {
    (impl Sink for PausableSink)
    to self.inner: location, unfinished_uploads, discard_upload, retention, set_retention;

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<(), SinkError> {
        self.before_put(key).await;
        let done = self.inner.put(key, data, mode).await;
        self.after_put(key);
        done
    }
    async fn put_stream(
        &self,
        key: &str,
        data: ByteStream,
        mode: PutMode,
    ) -> Result<u64, SinkError> {
        self.before_put(key).await;
        let done = self.inner.put_stream(key, data, mode).await;
        self.after_put(key);
        done
    }
    async fn put_copy(
        &self,
        key: &str,
        data: ByteStream,
        origin: &ObjectMeta,
    ) -> Result<Copied, SinkError> {
        self.before_put(key).await;
        let done = self.inner.put_copy(key, data, origin).await;
        self.after_put(key);
        done
    }
    async fn get(&self, key: &str) -> Result<Bytes, SinkError> {
        self.gate().await;
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, SinkError> {
        self.gate().await;
        self.inner.get_range(key, range).await
    }
    async fn get_stream(&self, key: &str) -> Result<ByteStream, SinkError> {
        self.gate().await;
        self.inner.get_stream(key).await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta, SinkError> {
        self.gate().await;
        self.inner.head(key).await
    }
    fn list(&self, prefix: &str) -> BoxStream<'_, Result<ObjectMeta, SinkError>> {
        use futures::StreamExt;
        let prefix = prefix.to_owned();
        futures::stream::once(async move {
            self.gate().await;
            self.inner.list(&prefix)
        })
        .flatten()
        .boxed()
    }
    async fn delete(&self, key: &str) -> Result<(), SinkError> {
        self.pause_if(&self.pause_before_delete, key);
        self.gate().await;
        self.inner.delete(key).await
    }
}

/// The purposes of the catalog locks in `store`, sorted.
pub async fn catalog_lock_purposes(store: &dyn Sink) -> Vec<String> {
    let listing = crate::repo::lock::list_locks(store)
        .await
        .expect("the locks list");
    let mut purposes: Vec<String> = listing
        .locks
        .iter()
        .filter(|l| l.info.kind == crate::repo::lock::LockKind::Catalog)
        .map(|l| l.info.purpose.clone())
        .collect();
    purposes.sort();
    purposes
}
