//! Backing up a keyspace with `SCAN` + `DUMP` + `PEXPIRETIME`, pipelined, on every primary.
//!
//! Works where managed services forbid `SYNC`, `BGSAVE` and `CONFIG`. Each primary is scanned
//! with a cursor; for each page, `DUMP` and the expiry of every key are sent at once (the client
//! pipelines them). Keys are packed into entries of about [`RedisSource::batch_bytes`] (records
//! as in [`crate::record`]), so a million keys make a few hundred entries, and memory stays at a
//! few batches plus the largest single value (a `DUMP` reply is one piece). Keys that vanish or
//! expire during the scan are skipped; the scan guarantees every key that exists for its whole
//! duration is seen.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use fred::prelude::*;
use fred::types::Value;
use futures::TryStreamExt;
use resilience_core::source::entry::EntryMeta;
use resilience_core::source::{
    AdapterError, Source, SourceDescriptor, SourceEntry, SourceMetadata, SourceSession,
};
use tokio::sync::mpsc;

/// SCAN pages whose DUMPs are in flight at once.
const PAGES_IN_FLIGHT: usize = 4;

use crate::connect::{Connection, RedisEndpoint};
use crate::record::KeyRecord;

/// A keyspace backup.
#[derive(Clone, Debug)]
pub struct RedisSource {
    endpoint: RedisEndpoint,
    pattern: Option<String>,
    id: String,
    /// Keys asked for per `SCAN` call (and pipelined per round).
    pub scan_count: u32,
    /// Target size of one entry.
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
            batch_bytes: 4 << 20,
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
        let major: u32 = conn
            .version
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        let tally = Arc::new(Tally::default());
        let (tx, rx) = mpsc::channel(2);
        let producer = Producer {
            client: conn.client.clone(),
            pattern: self.pattern.clone().unwrap_or_else(|| "*".into()),
            count: self.scan_count.max(1),
            batch_bytes: self.batch_bytes.max(1),
            absolute_expiry: major >= 7,
            db: conn.db,
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
    tally: Arc<Tally>,
    tx: mpsc::Sender<Result<SourceEntry, AdapterError>>,
}

fn redis_err(what: &str) -> impl Fn(fred::error::Error) -> AdapterError + '_ {
    move |e| AdapterError::msg("read", what, e.to_string())
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

    async fn scan_node(
        &self,
        n: usize,
        node: fred::types::config::Server,
    ) -> Result<(), AdapterError> {
        let shown = node.to_string();
        let on_node = self.client.with_cluster_node(node);
        // SCAN runs ahead while earlier pages' DUMPs are in flight.
        let (pattern, count) = (self.pattern.clone(), self.count);
        let pages =
            futures::stream::try_unfold(Some("0".to_owned()), move |cursor: Option<String>| {
                let (on_node, shown, pattern) = (on_node.clone(), shown.clone(), pattern.clone());
                async move {
                    let Some(cursor) = cursor else {
                        return Ok(None);
                    };
                    let page: Value = on_node
                        .scan_page(cursor, pattern, Some(count), None)
                        .await
                        .map_err(redis_err(&shown))?;
                    let (next, keys) = parse_scan(page).ok_or_else(|| {
                        AdapterError::msg("scan", shown.clone(), "unexpected SCAN reply")
                    })?;
                    Ok(Some((keys, (next != "0").then_some(next))))
                }
            });
        let mut dumped = std::pin::pin!(pages
            .map_ok(|keys| self.dump_all(keys))
            .try_buffered(PAGES_IN_FLIGHT));
        let mut batch = BytesMut::new();
        let mut seq = 0u32;
        while let Some(records) = dumped.try_next().await? {
            for record in records {
                record.encode(&mut batch);
                if batch.len() >= self.batch_bytes {
                    self.emit(n, &mut seq, &mut batch).await?;
                }
            }
        }
        if !batch.is_empty() {
            self.emit(n, &mut seq, &mut batch).await?;
        }
        Ok(())
    }

    /// `DUMP` and expiry of every key, in one pipeline; vanished keys are left out.
    async fn dump_all(&self, keys: Vec<Bytes>) -> Result<Vec<KeyRecord>, AdapterError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
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
                Err(e) => return Err(AdapterError::msg("PEXPIRETIME", shown(), e.to_string())),
            };
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
                    out.push(KeyRecord {
                        key,
                        expires_at_ms: (e >= 0).then_some(e),
                        payload,
                    });
                }
                // Gone or expired between SCAN and DUMP.
                _ => {
                    self.tally.vanished.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(out)
    }

    async fn emit(
        &self,
        node: usize,
        seq: &mut u32,
        batch: &mut BytesMut,
    ) -> Result<(), AdapterError> {
        let content = batch.split().freeze();
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

/// `[cursor, [key, …]]`.
fn parse_scan(page: Value) -> Option<(String, Vec<Bytes>)> {
    let Value::Array(mut parts) = page else {
        return None;
    };
    if parts.len() != 2 {
        return None;
    }
    let keys = parts.pop()?;
    let cursor = parts.pop()?.as_string()?;
    let Value::Array(keys) = keys else {
        return None;
    };
    let keys = keys
        .into_iter()
        .filter_map(|k| k.as_bytes().map(Bytes::copy_from_slice))
        .collect();
    Some((cursor, keys))
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
