//! Backing up a keyspace with `SCAN` + `DUMP` + `PEXPIRETIME`, pipelined, on every primary.
//!
//! Works where managed services forbid `SYNC`, `BGSAVE` and `CONFIG`. Each primary is scanned
//! with a cursor on a connection of the backup's own (`pipe`): each round sends the
//! next `SCAN` with the `DUMP` and expiry of every key of the page before, so the server always
//! has a page to work on while the last one's replies are read. Keys are packed into entries of
//! about [`RedisSource::batch_bytes`] (records as in [`crate::record`]), so a million keys make
//! about a hundred entries, and memory stays at a few batches plus the largest single value (a
//! `DUMP` reply is one piece). Keys that vanish or expire during the scan are skipped; the scan
//! guarantees every key that exists for its whole duration is seen.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use fred::prelude::*;
use fred::types::Value;
use resilience_core::source::entry::EntryMeta;
use resilience_core::source::{
    AdapterError, Source, SourceDescriptor, SourceEntry, SourceMetadata, SourceSession,
};
use tokio::sync::mpsc;

use crate::connect::{Connection, RedisEndpoint};
use crate::pipe::{Pipe, Reply};
use crate::record::KeyRecord;

/// A keyspace backup.
#[derive(Clone, Debug)]
pub struct RedisSource {
    endpoint: RedisEndpoint,
    pattern: Option<String>,
    id: String,
    /// Keys asked for per `SCAN` call (and pipelined per round).
    pub scan_count: u32,
    /// Target size of one entry (1 MiB by default). The backup holds a few entries ahead of
    /// the one it chunks, each in memory, so this bounds the source's share of the memory.
    pub batch_bytes: usize,
}

impl RedisSource {
    /// Backs up the keyspace behind `endpoint`.
    pub fn new(endpoint: RedisEndpoint) -> Self {
        RedisSource {
            id: format!(
                "redis:{}",
                redact(&crate::connect::split_tls_params(&endpoint.url).0)
            ),
            endpoint,
            pattern: None,
            scan_count: 1000,
            batch_bytes: 1 << 20,
        }
    }

    /// Only keys matching a glob pattern (`SCAN MATCH`).
    pub fn with_pattern(mut self, pattern: impl Into<String>) -> Self {
        self.pattern = Some(pattern.into());
        self
    }

    /// Names the source (default `redis:` and the URL without its password).
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }
}

/// A URL without its user and password (nor a `sentinelPassword` parameter).
pub fn redact(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = match (base.find("://"), base.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}{}", &base[..s + 3], &base[at + 1..]),
        _ => base.to_owned(),
    };
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("sentinelPassword") => format!("{k}=***"),
                _ => p.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    out
}

#[derive(Default)]
struct Tally {
    keys: AtomicU64,
    bytes: AtomicU64,
    vanished: AtomicU64,
}

#[async_trait]
impl Source for RedisSource {
    fn descriptor(&self) -> SourceDescriptor {
        SourceDescriptor {
            id: self.id.clone(),
            kind: "redis".into(),
        }
    }

    async fn start(&self) -> Result<Box<dyn SourceSession>, AdapterError> {
        let conn =
            self.endpoint.connect().await.map_err(|e| {
                AdapterError::msg("connect", redact(&self.endpoint.url), e.to_string())
            })?;
        let absolute_expiry = conn.has_pexpiretime();
        let tally = Arc::new(Tally::default());
        let (tx, rx) = mpsc::channel(2);
        let producer = Producer {
            client: conn.client.clone(),
            pattern: self.pattern.clone().unwrap_or_else(|| "*".into()),
            count: self.scan_count.max(1),
            batch_bytes: self.batch_bytes.max(1),
            absolute_expiry,
            db: conn.db,
            cluster: conn.cluster,
            tally: tally.clone(),
            tx,
        };
        let primaries = conn.primaries.clone();
        let task = tokio::spawn(async move { producer.run(primaries).await });
        Ok(Box::new(RedisSession {
            conn,
            rx,
            task: Some(task),
            tally,
            pattern: self.pattern.clone(),
        }))
    }
}

struct Producer {
    client: Client,
    pattern: String,
    count: u32,
    batch_bytes: usize,
    absolute_expiry: bool,
    db: u8,
    cluster: bool,
    tally: Arc<Tally>,
    tx: mpsc::Sender<Result<SourceEntry, AdapterError>>,
}

impl Producer {
    async fn run(self, primaries: Vec<fred::types::config::Server>) {
        for (n, node) in primaries.into_iter().enumerate() {
            if let Err(e) = self.scan_node(n, node).await {
                let _ = self.tx.send(Err(e)).await;
                return;
            }
        }
    }

    /// Scans one primary on a connection of its own ([`Pipe`]): each round sends the next
    /// `SCAN` and the `DUMP`s and expiries of the page before, then reads the replies of the
    /// round before it, so the server always has a page of commands waiting.
    async fn scan_node(
        &self,
        n: usize,
        node: fred::types::config::Server,
    ) -> Result<(), AdapterError> {
        let select = (!self.cluster).then_some(self.db);
        let mut pipe = Pipe::open(&self.client, &node, select).await?;
        let count = self.count.to_string();
        let scan = |pipe: &mut Pipe, cursor: &[u8]| {
            pipe.push(&[
                &b"SCAN"[..],
                cursor,
                b"MATCH",
                self.pattern.as_bytes(),
                b"COUNT",
                count.as_bytes(),
            ])
        };
        scan(&mut pipe, b"0");
        pipe.send().await?;
        let (mut cursor, mut keys) = self.scan_reply(&mut pipe).await?;
        let mut outstanding: Option<Vec<Bytes>> = None;
        let mut batch = BytesMut::with_capacity(self.batch_capacity());
        let mut seq = 0u32;
        loop {
            let scanning = cursor != b"0"[..];
            if scanning {
                scan(&mut pipe, &cursor);
            }
            for key in &keys {
                pipe.push(&[b"DUMP", &key[..]]);
                pipe.push(&[self.expiry_command().as_bytes(), &key[..]]);
            }
            pipe.send().await?;
            if let Some(previous) = outstanding.take() {
                let records = self.dump_replies(&mut pipe, previous).await?;
                self.add(n, &mut seq, &mut batch, records).await?;
            }
            outstanding = Some(std::mem::take(&mut keys));
            if !scanning {
                break;
            }
            (cursor, keys) = self.scan_reply(&mut pipe).await?;
        }
        if let Some(last) = outstanding.take() {
            let records = self.dump_replies(&mut pipe, last).await?;
            self.add(n, &mut seq, &mut batch, records).await?;
        }
        if !batch.is_empty() {
            self.emit(n, &mut seq, &mut batch).await?;
        }
        Ok(())
    }

    /// Encodes `records` into the batch, handing each batch on once it holds
    /// [`RedisSource::batch_bytes`].
    async fn add(
        &self,
        n: usize,
        seq: &mut u32,
        batch: &mut BytesMut,
        records: Vec<KeyRecord>,
    ) -> Result<(), AdapterError> {
        for record in records {
            record.encode(batch);
            if batch.len() >= self.batch_bytes {
                self.emit(n, seq, batch).await?;
            }
        }
        Ok(())
    }

    /// The reply of a `SCAN`: the next cursor and the page of keys.
    async fn scan_reply(&self, pipe: &mut Pipe) -> Result<(Bytes, Vec<Bytes>), AdapterError> {
        let reply = pipe.reply().await?;
        let unexpected = |what: String| AdapterError::msg("SCAN", pipe.node().to_owned(), what);
        match reply {
            Reply::Array(mut parts) if parts.len() == 2 => {
                let (Reply::Array(keys), Reply::Bulk(Some(cursor))) = (
                    parts.pop().expect("two parts"),
                    parts.pop().expect("two parts"),
                ) else {
                    return Err(unexpected("unexpected SCAN reply".into()));
                };
                let keys = keys
                    .into_iter()
                    .filter_map(|k| match k {
                        Reply::Bulk(Some(k)) => Some(k),
                        _ => None,
                    })
                    .collect();
                Ok((cursor, keys))
            }
            Reply::Error(e) => Err(unexpected(e)),
            other => Err(unexpected(format!("unexpected SCAN reply {other:?}"))),
        }
    }

    /// The records of `keys` from their `DUMP` and expiry replies; keys another node answers
    /// for (a cluster resharding) are dumped again through the general client.
    async fn dump_replies(
        &self,
        pipe: &mut Pipe,
        keys: Vec<Bytes>,
    ) -> Result<Vec<KeyRecord>, AdapterError> {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut out = Vec::with_capacity(keys.len());
        let mut redirected = Vec::new();
        for key in keys {
            let dump = pipe.reply().await?;
            let expiry = pipe.reply().await?;
            if dump.is_redirect() || expiry.is_redirect() {
                redirected.push(key);
                continue;
            }
            let shown = || String::from_utf8_lossy(&key).into_owned();
            let dump = match dump {
                Reply::Bulk(b) => b,
                Reply::Error(e) => return Err(AdapterError::msg("DUMP", shown(), e)),
                other => {
                    return Err(AdapterError::msg(
                        "DUMP",
                        shown(),
                        format!("unexpected reply {other:?}"),
                    ))
                }
            };
            let expiry = match expiry {
                Reply::Int(i) => i,
                Reply::Error(e) => {
                    return Err(AdapterError::msg(self.expiry_command(), shown(), e))
                }
                other => {
                    return Err(AdapterError::msg(
                        self.expiry_command(),
                        shown(),
                        format!("unexpected reply {other:?}"),
                    ))
                }
            };
            out.extend(self.record(key, dump, expiry, now_ms));
        }
        if !redirected.is_empty() {
            out.extend(self.dump_all(redirected).await?);
        }
        Ok(out)
    }

    fn expiry_command(&self) -> &'static str {
        if self.absolute_expiry {
            "PEXPIRETIME"
        } else {
            "PTTL"
        }
    }

    /// The record of `key` from its `DUMP` payload (`None`: the key is gone) and its expiry
    /// reply; `None` for a key that vanished or expired between `SCAN` and `DUMP`.
    fn record(
        &self,
        key: Bytes,
        dump: Option<Bytes>,
        expiry: i64,
        now_ms: i64,
    ) -> Option<KeyRecord> {
        let expiry = if !self.absolute_expiry && expiry >= 0 {
            now_ms + expiry
        } else {
            expiry
        };
        match (dump, expiry) {
            (Some(payload), e) if e == -1 || e >= 0 => {
                self.tally.keys.fetch_add(1, Ordering::Relaxed);
                self.tally
                    .bytes
                    .fetch_add((key.len() + payload.len()) as u64, Ordering::Relaxed);
                Some(KeyRecord {
                    key,
                    expires_at_ms: (e >= 0).then_some(e),
                    payload,
                })
            }
            _ => {
                self.tally.vanished.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// `DUMP` and expiry of every key through the general client, which follows a cluster's
    /// redirections; vanished keys are left out.
    async fn dump_all(&self, keys: Vec<Bytes>) -> Result<Vec<KeyRecord>, AdapterError> {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let pipeline = self.client.pipeline();
        let queue_err =
            |e: fred::error::Error| AdapterError::msg("DUMP", "pipeline", e.to_string());
        for key in &keys {
            pipeline
                .dump::<(), _>(key.clone())
                .await
                .map_err(queue_err)?;
            if self.absolute_expiry {
                pipeline
                    .pexpire_time::<(), _>(key.clone())
                    .await
                    .map_err(queue_err)?;
            } else {
                pipeline
                    .pttl::<(), _>(key.clone())
                    .await
                    .map_err(queue_err)?;
            }
        }
        let replies = pipeline.try_all::<Value>().await;
        let mut out = Vec::with_capacity(keys.len());
        for (key, pair) in keys.into_iter().zip(replies.chunks(2)) {
            let shown = || String::from_utf8_lossy(&key).into_owned();
            let dump = match &pair[0] {
                Ok(Value::Bytes(b)) => Some(b.clone()),
                Ok(Value::String(s)) => Some(s.inner().clone()),
                Ok(Value::Null) => None,
                Ok(other) => {
                    return Err(AdapterError::msg(
                        "DUMP",
                        shown(),
                        format!("unexpected reply {other:?}"),
                    ))
                }
                Err(e) => return Err(AdapterError::msg("DUMP", shown(), e.to_string())),
            };
            let expiry = match &pair[1] {
                Ok(v) => v.as_i64().unwrap_or(-2),
                Err(e) => {
                    return Err(AdapterError::msg(
                        self.expiry_command(),
                        shown(),
                        e.to_string(),
                    ))
                }
            };
            out.extend(self.record(key, dump, expiry, now_ms));
        }
        Ok(out)
    }

    /// What a batch's buffer is made with: a batch ends once a record takes it past
    /// `batch_bytes`, so the last record of most batches fits in the margin.
    fn batch_capacity(&self) -> usize {
        self.batch_bytes.saturating_add(64 << 10)
    }

    async fn emit(
        &self,
        node: usize,
        seq: &mut u32,
        batch: &mut BytesMut,
    ) -> Result<(), AdapterError> {
        // The next batch gets a buffer of its own, of a batch's size: one grown by doubling
        // would hold up to twice what it carries while its entry waits in the backup.
        let next = BytesMut::with_capacity(self.batch_capacity());
        let content = std::mem::replace(batch, next).freeze();
        let path = format!("db{}/{node:03}/{:08}", self.db, *seq);
        *seq += 1;
        let entry = SourceEntry {
            meta: EntryMeta {
                mode: 0o100600,
                ..EntryMeta::file(path.into_bytes(), content.len() as u64)
            },
            content: Some(Box::pin(std::io::Cursor::new(content))),
        };
        self.tx
            .send(Ok(entry))
            .await
            .map_err(|_| AdapterError::msg("read", "redis", "the backup stopped reading"))
    }
}

struct RedisSession {
    conn: Connection,
    rx: mpsc::Receiver<Result<SourceEntry, AdapterError>>,
    task: Option<tokio::task::JoinHandle<()>>,
    tally: Arc<Tally>,
    pattern: Option<String>,
}

#[async_trait]
impl SourceSession for RedisSession {
    async fn next_entry(&mut self) -> Result<Option<SourceEntry>, AdapterError> {
        match self.rx.recv().await {
            Some(entry) => entry.map(Some),
            None => Ok(None),
        }
    }

    async fn finish(&mut self) -> Result<SourceMetadata, AdapterError> {
        if let Some(task) = self.task.take() {
            task.await
                .map_err(|e| AdapterError::msg("read", "redis", e.to_string()))?;
        }
        let mut m = SourceMetadata::new();
        m.insert("redis_version".into(), self.conn.version.clone().into());
        m.insert("cluster".into(), self.conn.cluster.into());
        m.insert(
            "primaries".into(),
            (self.conn.primaries.len() as u64).into(),
        );
        m.insert("db".into(), u64::from(self.conn.db).into());
        m.insert(
            "keys".into(),
            self.tally.keys.load(Ordering::Relaxed).into(),
        );
        m.insert(
            "bytes".into(),
            self.tally.bytes.load(Ordering::Relaxed).into(),
        );
        m.insert(
            "vanished_during_scan".into(),
            self.tally.vanished.load(Ordering::Relaxed).into(),
        );
        if let Some(p) = &self.pattern {
            m.insert("match".into(), p.clone().into());
        }
        Ok(m)
    }
}
