//! Restoring keys with `RESTORE key abs-expiry payload ABSTTL [REPLACE]`, pipelined, throttled,
//! routed to the key's primary in a cluster.
//!
//! A key the server refuses (it exists and `replace` is off, the payload is from a newer
//! server, …) does not stop the restore: it is counted with its reason, and the restore ends
//! with an error naming the first refused keys. A key that exists with the very value and
//! expiry the backup holds is not a refusal: `SCAN` may return a key twice, so a backup may
//! hold it twice, and a restore run again finds its own keys. [`RestoreTally`] says what was
//! and was not restored.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use fred::prelude::*;
use resilience_core::sink::throttle::RateLimiter;
use resilience_core::source::entry::{EntryKind, EntryMeta};
use resilience_core::source::{AdapterError, ContentWriter, Target};
use serde::Serialize;

use crate::connect::{max_rdb_version, Connection};
use crate::glob;
use crate::pipe::{Pipe, Reply};
use crate::record::{KeyRecord, RecordDecoder};

/// How to restore.
#[derive(Clone, Default)]
pub struct RestoreSettings {
    /// Overwrite existing keys (`REPLACE`); without it an existing key is refused.
    pub replace: bool,
    /// Only keys matching this glob pattern.
    pub pattern: Option<String>,
    /// At most this many keys per second.
    pub max_keys_per_second: Option<u64>,
    /// At most this many payload bytes per second.
    pub max_bytes_per_second: Option<u64>,
    /// `RESTORE`s in flight at once.
    pub pipeline: usize,
}

/// A key the target refused.
#[derive(Clone, Debug, Serialize)]
pub struct RefusedKey {
    /// The key (lossy UTF-8).
    pub key: String,
    /// The server's reason, and ours.
    pub reason: String,
}

/// What a restore did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RestoreTally {
    /// Keys restored.
    pub restored: u64,
    /// Keys not restored because their expiry had passed.
    pub expired: u64,
    /// Keys left out by the pattern.
    pub filtered: u64,
    /// Keys already on the target with the value and expiry the backup holds (`replace` off),
    /// left as they were: a key the backup holds twice, or a restore run again.
    pub identical: u64,
    /// Keys the server refused (the first 100 are listed in `refused`).
    pub refused_count: u64,
    /// The first refused keys, with reasons.
    pub refused: Vec<RefusedKey>,
}

const LISTED_REFUSALS: usize = 100;

/// Restores into a server or cluster.
pub struct RedisTarget {
    conn: Arc<Connection>,
    settings: RestoreSettings,
    keys_limiter: Option<Arc<RateLimiter>>,
    bytes_limiter: Option<Arc<RateLimiter>>,
    tally: Arc<Mutex<RestoreTally>>,
}

impl RedisTarget {
    /// A target over a connection.
    pub fn new(conn: Connection, settings: RestoreSettings) -> Self {
        RedisTarget {
            conn: Arc::new(conn),
            keys_limiter: settings
                .max_keys_per_second
                .map(|r| Arc::new(RateLimiter::new(r))),
            bytes_limiter: settings
                .max_bytes_per_second
                .map(|r| Arc::new(RateLimiter::new(r))),
            settings,
            tally: Arc::default(),
        }
    }

    /// What the restore has done so far (complete once `restore` returned).
    pub fn tally(&self) -> RestoreTally {
        self.tally.lock().expect("tally lock").clone()
    }
}

#[async_trait]
impl Target for RedisTarget {
    async fn create(
        &self,
        meta: &EntryMeta,
    ) -> Result<Option<Box<dyn ContentWriter>>, AdapterError> {
        if meta.kind != EntryKind::File {
            return Ok(None);
        }
        Ok(Some(Box::new(Writer {
            conn: self.conn.clone(),
            settings: self.settings.clone(),
            keys_limiter: self.keys_limiter.clone(),
            bytes_limiter: self.bytes_limiter.clone(),
            tally: self.tally.clone(),
            decoder: RecordDecoder::new(meta.path.to_string()),
            pending: Vec::new(),
            entry: meta.path.to_string(),
            pipes: HashMap::new(),
            outstanding: Vec::new(),
        })))
    }

    async fn apply_metadata(&self, _meta: &EntryMeta) -> Result<(), AdapterError> {
        Ok(())
    }

    async fn finish(&self) -> Result<(), AdapterError> {
        let t = self.tally();
        if t.refused_count == 0 {
            return Ok(());
        }
        let first = &t.refused[0];
        Err(AdapterError::msg(
            "RESTORE",
            first.key.clone(),
            format!(
                "{}; {} key(s) refused in all, {} restored, {} already identical, {} expired, {} filtered out",
                first.reason, t.refused_count, t.restored, t.identical, t.expired, t.filtered
            ),
        ))
    }
}

struct Writer {
    conn: Arc<Connection>,
    settings: RestoreSettings,
    keys_limiter: Option<Arc<RateLimiter>>,
    bytes_limiter: Option<Arc<RateLimiter>>,
    tally: Arc<Mutex<RestoreTally>>,
    decoder: RecordDecoder,
    pending: Vec<KeyRecord>,
    entry: String,
    /// A connection of its own to each node written to ([`Pipe`]), by `host:port`.
    pipes: HashMap<String, Pipe>,
    /// The `RESTORE`s sent whose replies are not read yet, by node.
    outstanding: Vec<(String, Vec<KeyRecord>)>,
}

impl Writer {
    async fn flush(&mut self) -> Result<(), AdapterError> {
        let records = std::mem::take(&mut self.pending);
        if records.is_empty() {
            return Ok(());
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut to_send = Vec::with_capacity(records.len());
        {
            let mut t = self.tally.lock().expect("tally lock");
            for r in records {
                if let Some(p) = &self.settings.pattern {
                    if !glob::matches(p.as_bytes(), &r.key) {
                        t.filtered += 1;
                        continue;
                    }
                }
                if r.expires_at_ms.is_some_and(|at| at <= now_ms) {
                    t.expired += 1;
                    continue;
                }
                to_send.push(r);
            }
        }
        if let Some(l) = &self.keys_limiter {
            l.acquire(to_send.len() as u64).await;
        }
        if let Some(l) = &self.bytes_limiter {
            l.acquire(to_send.iter().map(|r| r.payload.len() as u64).sum())
                .await;
        }
        // Sent on each node's pipe; then the replies of the batch before are read, so each
        // server has a batch waiting while the last one's replies are counted.
        let mut sent = Vec::new();
        for (node, records) in self.by_node(to_send) {
            let name = format!("{}:{}", node.host, node.port);
            let pipe = match self.pipes.entry(name.clone()) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let select = (!self.conn.cluster).then_some(self.conn.db);
                    e.insert(Pipe::open(&self.conn.client, &node, select).await?)
                }
            };
            let replace: &[&[u8]] = if self.settings.replace {
                &[&b"ABSTTL"[..], &b"REPLACE"[..]]
            } else {
                &[&b"ABSTTL"[..]]
            };
            for r in &records {
                let expiry = r.expires_at_ms.unwrap_or(0).to_string();
                let mut args: Vec<&[u8]> =
                    vec![&b"RESTORE"[..], &r.key, expiry.as_bytes(), &r.payload];
                args.extend_from_slice(replace);
                pipe.push(&args);
            }
            pipe.send().await?;
            sent.push((name, records));
        }
        self.settle().await?;
        self.outstanding = sent;
        Ok(())
    }

    /// The records of a batch grouped by the primary that owns them (one group on a standalone
    /// server).
    fn by_node(
        &self,
        records: Vec<KeyRecord>,
    ) -> Vec<(fred::types::config::Server, Vec<KeyRecord>)> {
        let first = || self.conn.primaries[0].clone();
        if !self.conn.cluster {
            return vec![(first(), records)];
        }
        let state = self.conn.client.cached_cluster_state();
        let mut groups: Vec<(fred::types::config::Server, Vec<KeyRecord>)> = Vec::new();
        for r in records {
            let node = state
                .as_ref()
                .and_then(|s| s.get_server(redis_protocol::redis_keyslot(&r.key)).cloned())
                .unwrap_or_else(first);
            match groups.iter_mut().find(|(n, _)| *n == node) {
                Some((_, group)) => group.push(r),
                None => groups.push((node, vec![r])),
            }
        }
        groups
    }

    /// Reads the replies of the `RESTORE`s sent last and counts them; keys another node owns
    /// (a cluster resharding) are restored again through the general client.
    async fn settle(&mut self) -> Result<(), AdapterError> {
        let mut redirected = Vec::new();
        let mut refused = Vec::new();
        let mut restored = 0u64;
        for (node, records) in std::mem::take(&mut self.outstanding) {
            let pipe = self
                .pipes
                .get_mut(&node)
                .expect("a pipe for every batch sent");
            for r in records {
                match pipe.reply().await? {
                    Reply::Status(_) => restored += 1,
                    reply if reply.is_redirect() => redirected.push(r),
                    Reply::Error(e) => refused.push((r, e)),
                    other => refused.push((r, format!("unexpected reply {other:?}"))),
                }
            }
        }
        let client = &self.conn.client;
        let replace = self.settings.replace;
        let results = futures::future::join_all(redirected.iter().map(|r| {
            client.restore::<(), _>(
                r.key.clone(),
                r.expires_at_ms.unwrap_or(0),
                fred::types::Value::Bytes(r.payload.clone()),
                replace,
                true,
                None,
                None,
            )
        }))
        .await;
        for (r, result) in redirected.into_iter().zip(results) {
            match result {
                Ok(()) => restored += 1,
                Err(e) => refused.push((r, e.details().to_string())),
            }
        }
        let (refused, identical) = if replace {
            (refused, 0)
        } else {
            leave_identical(&self.conn, refused).await?
        };
        let mut t = self.tally.lock().expect("tally lock");
        t.restored += restored;
        t.identical += identical;
        for (r, reply) in refused {
            t.refused_count += 1;
            if t.refused.len() < LISTED_REFUSALS {
                let reason = self.explain(&r, reply);
                t.refused.push(RefusedKey {
                    key: String::from_utf8_lossy(&r.key).into_owned(),
                    reason,
                });
            }
        }
        Ok(())
    }

    /// The server's refusal, with what we know about why.
    fn explain(&self, r: &KeyRecord, mut reason: String) -> String {
        if refused_as_existing(&reason) {
            reason.push_str(" (the key exists: restore with `replace` set, `--replace` on the command line, to overwrite it)");
        } else if let (Some(payload), Some(max)) =
            (r.rdb_version(), max_rdb_version(&self.conn.version))
        {
            if payload > max {
                reason.push_str(&format!(
                    " (the payload is RDB version {payload}, from a newer Redis; the target runs {} which reads up to RDB {max})",
                    self.conn.version
                ));
            }
        }
        reason
    }
}

/// Whether the server refused a `RESTORE` because the key exists (`BUSYKEY`; fred's words
/// for it when the key was redone through the general client).
fn refused_as_existing(reason: &str) -> bool {
    reason.contains("BUSYKEY") || reason.contains("already exists")
}

/// Of keys refused because they exist, those whose value (`DUMP` payload) and expiry on the
/// target are the backup's: they are not refusals. Returns the rest and how many were
/// identical.
async fn leave_identical(
    conn: &Connection,
    refused: Vec<(KeyRecord, String)>,
) -> Result<(Vec<(KeyRecord, String)>, u64), AdapterError> {
    if !refused
        .iter()
        .any(|(_, reason)| refused_as_existing(reason))
    {
        return Ok((refused, 0));
    }
    let absolute = conn.has_pexpiretime();
    let client = &conn.client;
    let same = futures::future::join_all(refused.iter().map(|(r, reason)| async move {
        if !refused_as_existing(reason) {
            return Ok(false);
        }
        let payload: Option<Bytes> = client.dump(r.key.clone()).await?;
        if payload.as_ref() != Some(&r.payload) {
            return Ok(false);
        }
        Ok::<_, fred::error::Error>(if absolute {
            let at: i64 = client.pexpire_time(r.key.clone()).await?;
            at == r.expires_at_ms.unwrap_or(-1)
        } else {
            // Before Redis 7 only the remaining time is known: identical only when
            // neither expires.
            let ttl: i64 = client.pttl(r.key.clone()).await?;
            ttl == -1 && r.expires_at_ms.is_none()
        })
    }))
    .await;
    let mut rest = Vec::new();
    let mut identical = 0;
    for ((r, reason), same) in refused.into_iter().zip(same) {
        match same {
            Ok(true) => identical += 1,
            Ok(false) => rest.push((r, reason)),
            Err(e) => {
                return Err(AdapterError::msg(
                    "DUMP",
                    String::from_utf8_lossy(&r.key).into_owned(),
                    format!("comparing the existing key with the backup's: {e}"),
                ))
            }
        }
    }
    Ok((rest, identical))
}

#[async_trait]
impl ContentWriter for Writer {
    async fn write(&mut self, data: Bytes) -> Result<(), AdapterError> {
        self.decoder.push(&data);
        while let Some(r) = self
            .decoder
            .next_record()
            .map_err(|e| AdapterError::msg("restore", self.entry.clone(), e.reason))?
        {
            self.pending.push(r);
            if self.pending.len() >= self.settings.pipeline.max(1) {
                self.flush().await?;
            }
        }
        Ok(())
    }

    async fn complete(mut self: Box<Self>) -> Result<(), AdapterError> {
        self.decoder
            .finish()
            .map_err(|e| AdapterError::msg("restore", self.entry.clone(), e.reason))?;
        self.flush().await?;
        self.settle().await
    }
}
