//! After a restore: does the server hold what the snapshot holds? Every key (or every n-th) is
//! checked for existence, expiry and value; the server's key count is compared with the
//! snapshot's.
//!
//! Values are compared by `DUMP` payload first. A payload can differ while the value is the same
//! (a set or hash stored as a hash table serializes in its table's order, which another server
//! builds differently); then the snapshot's payload is restored under a temporary key in the
//! same hash slot and a script compares both values in a canonical form (sorted members, fields
//! and entries) and deletes the temporary key.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use fred::prelude::*;
use resilience_core::source::entry::{EntryKind, EntryMeta};
use resilience_core::source::{AdapterError, ContentWriter, Target};
use serde::Serialize;

use crate::connect::Connection;
use crate::glob;
use crate::record::{KeyRecord, RecordDecoder};

/// What a comparison found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Comparison {
    /// Keys in the snapshot (not expired, matching the pattern).
    pub snapshot_keys: u64,
    /// Keys on the server (all primaries, the selected database).
    pub server_keys: u64,
    /// Keys checked one by one.
    pub checked: u64,
    /// Checked keys missing on the server (first 100).
    pub missing: Vec<String>,
    /// Checked keys whose value differs (first 100).
    pub differing: Vec<String>,
    /// Checked keys whose expiry differs (first 100).
    pub expiry_differs: Vec<String>,
}

impl Comparison {
    /// Whether the server holds the snapshot exactly (as far as checked).
    pub fn is_ok(&self) -> bool {
        self.missing.is_empty() && self.differing.is_empty() && self.expiry_differs.is_empty()
    }
}

/// Compares a snapshot (restored through it as a target) with a server.
pub struct CompareTarget {
    conn: Arc<Connection>,
    sample_every: u64,
    pattern: Option<String>,
    result: Arc<Mutex<Comparison>>,
}

impl CompareTarget {
    /// Checks every `sample_every`-th key (1: all) of the keys matching `pattern`.
    pub fn new(conn: Connection, sample_every: u64, pattern: Option<String>) -> Self {
        CompareTarget {
            conn: Arc::new(conn),
            sample_every: sample_every.max(1),
            pattern,
            result: Arc::default(),
        }
    }

    /// The comparison (complete once the restore through this target returned).
    pub fn result(&self) -> Comparison {
        self.result.lock().expect("lock").clone()
    }
}

#[async_trait]
impl Target for CompareTarget {
    async fn create(
        &self,
        meta: &EntryMeta,
    ) -> Result<Option<Box<dyn ContentWriter>>, AdapterError> {
        if meta.kind != EntryKind::File {
            return Ok(None);
        }
        Ok(Some(Box::new(Checker {
            conn: self.conn.clone(),
            sample_every: self.sample_every,
            pattern: self.pattern.clone(),
            result: self.result.clone(),
            decoder: RecordDecoder::new(meta.path.to_string()),
            entry: meta.path.to_string(),
        })))
    }

    async fn apply_metadata(&self, _meta: &EntryMeta) -> Result<(), AdapterError> {
        Ok(())
    }

    async fn finish(&self) -> Result<(), AdapterError> {
        let mut total = 0u64;
        for node in &self.conn.primaries {
            let n: u64 = self
                .conn
                .client
                .with_cluster_node(node.clone())
                .dbsize()
                .await
                .map_err(|e| AdapterError::msg("DBSIZE", node.to_string(), e.to_string()))?;
            total += n;
        }
        self.result.lock().expect("lock").server_keys = total;
        Ok(())
    }
}

struct Checker {
    conn: Arc<Connection>,
    sample_every: u64,
    pattern: Option<String>,
    result: Arc<Mutex<Comparison>>,
    decoder: RecordDecoder,
    entry: String,
}

const LISTED: usize = 100;

/// Restores ARGV[1] as KEYS[2], compares KEYS[1] and KEYS[2] canonically, deletes KEYS[2].
const SAME_VALUE: &str = r#"
redis.call('RESTORE', KEYS[2], 0, ARGV[1], 'REPLACE')
local function canon(k)
  local t = redis.call('TYPE', k)['ok']
  local out
  if t == 'string' then out = {redis.call('GET', k)}
  elseif t == 'list' then out = redis.call('LRANGE', k, 0, -1)
  elseif t == 'set' then out = redis.call('SMEMBERS', k); table.sort(out)
  elseif t == 'zset' then out = redis.call('ZRANGE', k, 0, -1, 'WITHSCORES')
  elseif t == 'hash' then
    local h = redis.call('HGETALL', k); out = {}
    for i = 1, #h, 2 do out[#out + 1] = h[i] .. '\0' .. h[i + 1] end
    table.sort(out)
  elseif t == 'stream' then
    out = {}
    for _, e in ipairs(redis.call('XRANGE', k, '-', '+')) do
      out[#out + 1] = e[1]
      for _, f in ipairs(e[2]) do out[#out + 1] = f end
    end
  else out = {} end
  return t .. '\0' .. #out .. '\0' .. table.concat(out, '\0')
end
local same = canon(KEYS[1]) == canon(KEYS[2])
redis.call('DEL', KEYS[2])
if same then return 1 else return 0 end
"#;

/// A temporary key name in the same cluster hash slot as `key`.
fn scratch_key(key: &[u8]) -> String {
    static TAGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags = vec![String::new(); 16384];
        let mut missing = 16384;
        let mut i = 0u64;
        while missing > 0 {
            let tag = format!("t{i}");
            let slot = fred::util::redis_keyslot(tag.as_bytes()) as usize;
            if tags[slot].is_empty() {
                tags[slot] = tag;
                missing -= 1;
            }
            i += 1;
        }
        tags
    });
    let slot = fred::util::redis_keyslot(key) as usize;
    format!("resilience:compare:{{{}}}", tags[slot % tags.len()])
}

impl Checker {
    /// Whether the server's value of `rec.key` equals the snapshot's, compared canonically.
    async fn same_value(&self, rec: &KeyRecord) -> Result<bool, AdapterError> {
        let name = String::from_utf8_lossy(&rec.key).into_owned();
        let keys: Vec<fred::types::Key> =
            vec![rec.key.clone().into(), scratch_key(&rec.key).into()];
        let same: i64 = self
            .conn
            .client
            .eval(
                SAME_VALUE,
                keys,
                vec![fred::types::Value::Bytes(rec.payload.clone())],
            )
            .await
            .map_err(|e| AdapterError::msg("compare", name, e.to_string()))?;
        Ok(same == 1)
    }

    async fn check(&self, records: Vec<KeyRecord>) -> Result<(), AdapterError> {
        let now = chrono::Utc::now().timestamp_millis();
        let mut sampled = Vec::new();
        {
            let mut r = self.result.lock().expect("lock");
            for rec in records {
                if rec.expires_at_ms.is_some_and(|t| t <= now)
                    || self
                        .pattern
                        .as_ref()
                        .is_some_and(|p| !glob::matches(p.as_bytes(), &rec.key))
                {
                    continue;
                }
                r.snapshot_keys += 1;
                if r.snapshot_keys.is_multiple_of(self.sample_every) {
                    sampled.push(rec);
                }
            }
        }
        let client = &self.conn.client;
        let replies = futures::future::join_all(sampled.iter().map(|rec| async move {
            let dump = client.dump::<Option<Bytes>, _>(rec.key.clone());
            let expiry = client.pexpire_time::<i64, _>(rec.key.clone());
            futures::join!(dump, expiry)
        }))
        .await;
        enum Finding {
            Missing,
            Differs,
            ExpiryDiffers,
        }
        let mut findings = Vec::new();
        for (rec, (dump, expiry)) in sampled.iter().zip(replies) {
            let name = String::from_utf8_lossy(&rec.key).into_owned();
            let dump = dump.map_err(|e| AdapterError::msg("DUMP", name.clone(), e.to_string()))?;
            let expiry = expiry
                .map_err(|e| AdapterError::msg("PEXPIRETIME", name.clone(), e.to_string()))?;
            let finding = match dump {
                None => Some(Finding::Missing),
                Some(p) if p != rec.payload && !self.same_value(rec).await? => {
                    Some(Finding::Differs)
                }
                Some(_) if expiry != rec.expires_at_ms.unwrap_or(-1) => {
                    Some(Finding::ExpiryDiffers)
                }
                Some(_) => None,
            };
            findings.push((name, finding));
        }
        let mut r = self.result.lock().expect("lock");
        for (name, finding) in findings {
            r.checked += 1;
            let list = match finding {
                None => continue,
                Some(Finding::Missing) => &mut r.missing,
                Some(Finding::Differs) => &mut r.differing,
                Some(Finding::ExpiryDiffers) => &mut r.expiry_differs,
            };
            if list.len() < LISTED {
                list.push(name);
            }
        }
        Ok(())
    }
}

#[async_trait]
impl ContentWriter for Checker {
    async fn write(&mut self, data: Bytes) -> Result<(), AdapterError> {
        self.decoder.push(&data);
        let mut batch = Vec::new();
        while let Some(rec) = self
            .decoder
            .next_record()
            .map_err(|e| AdapterError::msg("compare", self.entry.clone(), e.reason))?
        {
            batch.push(rec);
        }
        self.check(batch).await
    }

    async fn complete(self: Box<Self>) -> Result<(), AdapterError> {
        self.decoder
            .finish()
            .map_err(|e| AdapterError::msg("compare", self.entry.clone(), e.reason))
    }
}
