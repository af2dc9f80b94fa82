//! Where failovers are journaled: after every step, a new revision of the failover's record.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::TryStreamExt;

use super::FailoverRecord;
use crate::error::{Error, Result};
use crate::format::object::{self, ObjectKind};
use crate::keys::cell::KeyCell;
use crate::sink::{PutMode, Sink};

/// Where failover records live in a repository: `failovers/<id>/<revision>`.
pub const FAILOVER_PREFIX: &str = "failovers/";

/// Keeps the records of failovers.
#[async_trait]
pub trait FailoverJournal: Send + Sync {
    /// Stores a revision of a record (each revision once).
    async fn save(&self, record: &FailoverRecord) -> Result<()>;
    /// The newest revision of every failover, oldest failover first.
    async fn list(&self) -> Result<Vec<FailoverRecord>>;
    /// The newest failover (not a drill) to `region` that did not finish, to resume.
    async fn unfinished(&self, region: &str) -> Result<Option<FailoverRecord>> {
        Ok(self
            .list()
            .await?
            .into_iter()
            .rev()
            .find(|r| r.region == region && !r.ok && !r.drill))
    }
}

/// A journal in memory, for tests and for a plan whose record is kept elsewhere.
#[derive(Debug, Default)]
pub struct MemoryJournal {
    records: Mutex<BTreeMap<String, FailoverRecord>>,
}

#[async_trait]
impl FailoverJournal for MemoryJournal {
    async fn save(&self, record: &FailoverRecord) -> Result<()> {
        self.records
            .lock()
            .expect("journal lock poisoned")
            .insert(record.id.clone(), record.clone());
        Ok(())
    }

    async fn list(&self) -> Result<Vec<FailoverRecord>> {
        let mut all: Vec<FailoverRecord> = self
            .records
            .lock()
            .expect("journal lock poisoned")
            .values()
            .cloned()
            .collect();
        all.sort_by_key(|r| r.started_at);
        Ok(all)
    }
}

/// The failover journal of a repository (the region failed over to): records sealed with the
/// repository's keys as catalog records are, one object per revision, never overwritten.
#[derive(Clone)]
pub struct RepoFailoverLog {
    sink: Arc<dyn Sink>,
    keys: Arc<KeyCell>,
}

impl RepoFailoverLog {
    pub(crate) fn new(sink: Arc<dyn Sink>, keys: Arc<KeyCell>) -> Self {
        RepoFailoverLog { sink, keys }
    }

    fn key(id: &str, revision: u32) -> String {
        format!("{FAILOVER_PREFIX}{id}/{revision:010}")
    }

    async fn read(&self, key: &str) -> Result<FailoverRecord> {
        let bytes = self.sink.get(key).await?;
        let keys = self.keys.holding(object::sealed_key_id(&bytes)).await?;
        let payload = object::open_object(&keys, ObjectKind::Catalog, key, &bytes)?;
        serde_json::from_slice(&payload)
            .map_err(|e| Error::corrupt(key, format!("failover record does not parse: {e}")))
    }
}

#[async_trait]
impl FailoverJournal for RepoFailoverLog {
    async fn save(&self, record: &FailoverRecord) -> Result<()> {
        if record.id.is_empty() || record.id.contains('/') {
            return Err(Error::corrupt(
                &record.id,
                "a failover id is non-empty and has no '/'",
            ));
        }
        let key = Self::key(&record.id, record.revision);
        let payload = serde_json::to_vec(record).expect("records serialize");
        let sealed = object::seal_object(&self.keys.get(), ObjectKind::Catalog, &key, &payload);
        self.sink.put(&key, sealed.into(), PutMode::Create).await?;
        Ok(())
    }

    async fn list(&self) -> Result<Vec<FailoverRecord>> {
        let mut newest: BTreeMap<String, String> = BTreeMap::new();
        let mut listing = self.sink.list(FAILOVER_PREFIX);
        while let Some(meta) = listing.try_next().await? {
            let Some((id, revision)) = meta.key[FAILOVER_PREFIX.len()..].split_once('/') else {
                continue;
            };
            if revision.len() != 10 || !revision.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let e = newest
                .entry(id.to_owned())
                .or_insert_with(|| meta.key.clone());
            if meta.key > *e {
                *e = meta.key.clone();
            }
        }
        let mut all = Vec::with_capacity(newest.len());
        for key in newest.values() {
            all.push(self.read(key).await?);
        }
        all.sort_by_key(|r| r.started_at);
        Ok(all)
    }
}
