//! Keeping what live snapshots need under the store's object lock
//! ([`crate::sink::retaining`]): before the retention of a pack, a manifest, a key object or
//! `config` that a live snapshot needs lapses, maintenance moves it a full period ahead.
//!
//! *Live* means a manifest in the store with no expiry under way (`expiring/<id>`: a forget
//! that the lock refused, see [`crate::ops::lifecycle`]), so that a backup retention expired
//! is no longer extended and goes once its date passes. An object is extended once less than
//! half the period is left, so maintenance (prune, which calls this first) must run at least
//! every half period; an object written less than half a period ago, by the store's listing
//! time, is not asked for its retention at all. Archived WAL is locked for one period from its
//! archiving and not extended.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::Serialize;

use crate::error::Result;
use crate::format::pack;
use crate::repo::Repository;
use crate::sink::Retention;

/// What one extension pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RetentionReport {
    /// Objects that live snapshots need.
    pub needed: usize,
    /// Of those, objects whose retention was read (the older half).
    pub checked: usize,
    /// Objects whose retention was moved a period ahead.
    pub extended: usize,
    /// Retained objects found with no retention at all (a writer killed between its put and
    /// the lock): locked now.
    pub relocked: usize,
    /// Backups whose expiry is under way: no longer extended.
    pub expiring: Vec<String>,
}

/// An object that prune would delete and the store's object lock still holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeferredDelete {
    /// The object.
    pub key: String,
    /// Its retain-until date: a prune after it deletes the object.
    pub until: DateTime<Utc>,
}

impl Repository {
    /// Moves the retention of every object that live snapshots need a full period ahead when
    /// less than half of it is left (see the module's text). Does nothing for a repository
    /// without an object lock. Prune calls it first, under its maintenance lock.
    pub async fn extend_retention(&self) -> Result<RetentionReport> {
        let mut report = RetentionReport::default();
        let Some(lock) = self.config.object_lock else {
            return Ok(report);
        };
        let half = chrono::Duration::seconds((lock.period_secs / 2) as i64);
        let now = Utc::now();
        let horizon = now + half;

        let expiring: HashSet<String> = self
            .sink
            .list("expiring/")
            .map_ok(|m| m.key.trim_start_matches("expiring/").to_owned())
            .try_collect()
            .await?;
        let skip: HashSet<String> = expiring
            .iter()
            .map(|id| crate::format::snapshot::manifest_key(id))
            .collect();
        report.expiring = expiring.into_iter().collect();
        report.expiring.sort();

        // The copies the index files list; a pack only a prune plan lists (condemned: repacked,
        // or garbage) is extended only for a blob no indexed pack holds, so that it can lapse.
        let read_index = self.load_read_index().await?;
        let live_index = self.load_index_report().await?.index;
        let mut packs = HashSet::new();
        self.visit_referenced(&read_index, &skip, |id| {
            let mut copies = live_index.copies(id);
            if copies.is_empty() {
                copies = read_index.copies(id);
            }
            packs.extend(copies.into_iter().map(|c| c.pack));
        })
        .await?;
        let mut needed: HashSet<String> = packs.iter().map(pack::pack_key).collect();

        // Listing times, for the objects needed: a young object needs no request.
        let mut written: HashMap<String, Option<DateTime<Utc>>> = HashMap::new();
        for prefix in ["snapshots/", "keys/", "config"] {
            let metas: Vec<_> = self.sink.list(prefix).try_collect().await?;
            for m in metas {
                if prefix == "config" && m.key != "config" {
                    continue;
                }
                if !skip.contains(&m.key) {
                    needed.insert(m.key.clone());
                    written.insert(m.key, m.last_modified);
                }
            }
        }
        let metas: Vec<_> = self.sink.list("data/").try_collect().await?;
        for m in metas {
            if needed.contains(&m.key) {
                written.insert(m.key, m.last_modified);
            }
        }
        report.needed = needed.len();

        let mut keys: Vec<String> = needed.into_iter().collect();
        keys.sort();
        for key in keys {
            let Some(stamp) = written.get(&key) else {
                // Indexed, but not in the store: verify reports it; nothing to lock.
                continue;
            };
            if stamp.is_some_and(|t| t + half * 2 > horizon) {
                continue;
            }
            report.checked += 1;
            let current: Option<Retention> = match self.sink.retention(&key).await {
                Ok(r) => r,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e.into()),
            };
            match current {
                Some(r) if r.until > horizon => {}
                Some(_) => {
                    self.sink
                        .set_retention(&key, lock.retention_from_now())
                        .await?;
                    report.extended += 1;
                }
                None => {
                    tracing::warn!(object = %key, "a retained object had no retention: locked now");
                    self.sink
                        .set_retention(&key, lock.retention_from_now())
                        .await?;
                    report.relocked += 1;
                }
            }
        }
        if report.extended + report.relocked > 0 {
            tracing::info!(
                extended = report.extended,
                relocked = report.relocked,
                "object lock retention extended"
            );
        }
        Ok(report)
    }
}
