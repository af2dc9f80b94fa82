//! Replication of a repository to another store (another region): copy every object the
//! replica lacks, prove each copy, and say how far behind the replica is.
//!
//! Objects are immutable, so replication is a difference of listings. Copies go in the order
//! that keeps the replica consistent at every moment, the same order a backup writes in: packs,
//! then indexes, then keys and configuration, then snapshot manifests, then catalog records. A
//! snapshot therefore never appears on the replica before every object it needs, and a copy
//! interrupted at any point is resumed by running again. Each object's checksum is checked
//! before it is copied (damage is not replicated; it is an error naming the object) and again
//! on the replica after writing. Nothing is ever deleted on the replica; prune runs there on its
//! own. Locks are not copied.
//!
//! The replica is a complete repository: the same key opens it, and restore and verify work
//! against it. [`replicate`] is the library call a service runs after each backup.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDateTime, Utc};
use futures::{StreamExt, TryStreamExt};

use crate::error::{Error, Result};
use crate::object;
use crate::sink::{PutMode, Sink};

/// The order in which prefixes are copied.
const PHASES: &[&str] = &[
    "data/",
    "wal/",
    "index/",
    "keys/",
    "config",
    "snapshots/",
    "prune/",
    "catalog/",
];

/// How to replicate.
#[derive(Clone, Debug)]
pub struct ReplicateOptions {
    /// Objects copied at once.
    pub concurrency: usize,
    /// Only measure the lag; copy nothing.
    pub dry_run: bool,
}

impl Default for ReplicateOptions {
    fn default() -> Self {
        ReplicateOptions {
            concurrency: 8,
            dry_run: false,
        }
    }
}

/// How far a replica is behind its source.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Lag {
    /// Succeeded snapshots of the source whose catalog record the replica lacks.
    pub snapshots: u64,
    /// Bytes of objects the replica lacks.
    pub bytes: u64,
    /// Objects the replica lacks.
    pub objects: u64,
    /// Age of the oldest snapshot not yet replicated (0 when caught up).
    pub seconds: u64,
}

/// What a replication run did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReplicationReport {
    /// Objects copied (and proven on the replica).
    pub copied_objects: u64,
    /// Their bytes.
    pub copied_bytes: u64,
    /// Objects the replica already had.
    pub present_objects: u64,
    /// The lag before the run.
    pub lag_before: Lag,
    /// The lag after the run (zero unless the source grew meanwhile or this was a dry run).
    pub lag_after: Lag,
    /// Wall time.
    #[serde(skip)]
    pub duration: Duration,
}

/// Every object key and size under the repository (locks left out).
async fn listing(sink: &dyn Sink) -> Result<HashMap<String, u64>> {
    let mut out = HashMap::new();
    let mut stream = sink.list("");
    while let Some(meta) = stream.try_next().await? {
        if !meta.key.starts_with("locks/") {
            out.insert(meta.key, meta.size);
        }
    }
    Ok(out)
}

fn phase_of(key: &str) -> usize {
    PHASES
        .iter()
        .position(|p| key.starts_with(p))
        .unwrap_or(PHASES.len())
}

/// The time a backup id starts with (`20261125T071057Z-…`).
fn id_time(id: &str) -> Option<DateTime<Utc>> {
    let stamp = id.get(..16)?;
    NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ")
        .ok()
        .map(|t| t.and_utc())
}

/// The lag of `replica` behind `source`, from their listings.
fn lag(source: &HashMap<String, u64>, replica: &HashMap<String, u64>, now: DateTime<Utc>) -> Lag {
    let mut lag = Lag::default();
    for (key, size) in source {
        if replica.get(key) != Some(size) {
            lag.objects += 1;
            lag.bytes += size;
        }
    }
    // The newest revision of each record decides: a succeeded snapshot is replicated once its
    // record (revision `…-succeeded`) is on the replica.
    let mut newest: HashMap<&str, &str> = HashMap::new();
    for key in source.keys().filter(|k| k.starts_with("catalog/")) {
        if let Some((id, rev)) = key["catalog/".len()..].split_once('/') {
            let e = newest.entry(id).or_insert(rev);
            if rev > *e {
                *e = rev;
            }
        }
    }
    let mut oldest: Option<DateTime<Utc>> = None;
    for (id, rev) in newest {
        if !rev.ends_with("-succeeded") || replica.contains_key(&format!("catalog/{id}/{rev}")) {
            continue;
        }
        lag.snapshots += 1;
        if let Some(t) = id_time(id) {
            oldest = Some(oldest.map_or(t, |o| o.min(t)));
        }
    }
    lag.seconds = oldest.map_or(0, |t| (now - t).num_seconds().max(0) as u64);
    lag
}

/// Copies one object, checking it before and after.
async fn copy(source: &dyn Sink, replica: &dyn Sink, key: &str) -> Result<u64> {
    let bytes = source.get(key).await?;
    object::check_checksum(key, &bytes)?;
    let size = bytes.len() as u64;
    replica.put(key, bytes.clone(), PutMode::Overwrite).await?;
    let back = replica.get(key).await?;
    if back != bytes {
        return Err(Error::Corrupt {
            object: format!("{} on the replica {}", key, replica.location()),
            reason: "the copy read back differs from the source".into(),
        });
    }
    Ok(size)
}

/// Copies to `replica` every object of the repository in `source` that it lacks.
pub async fn replicate(
    source: &dyn Sink,
    replica: &dyn Sink,
    options: &ReplicateOptions,
) -> Result<ReplicationReport> {
    let started = Instant::now();
    let src = listing(source).await?;
    if !src.contains_key("config") {
        return Err(Error::RepositoryNotFound {
            location: source.location(),
        });
    }
    let have = listing(replica).await?;
    let lag_before = lag(&src, &have, Utc::now());
    let mut missing: Vec<&String> = src
        .iter()
        .filter(|(k, size)| have.get(*k) != Some(size))
        .map(|(k, _)| k)
        .collect();
    missing.sort_by_key(|k| (phase_of(k), (*k).clone()));
    let mut copied_objects = 0;
    let mut copied_bytes = 0;
    if !options.dry_run {
        for phase in 0..=PHASES.len() {
            // Owned keys: a closure over borrowed ones makes the future not `Send` for every
            // lifetime, which a spawned job (the daemon's) needs.
            let keys: Vec<String> = missing
                .iter()
                .filter(|k| phase_of(k) == phase)
                .map(|k| (*k).clone())
                .collect();
            let sizes: Vec<u64> = futures::stream::iter(keys)
                .map(|k| async move { copy(source, replica, &k).await })
                .buffer_unordered(options.concurrency.max(1))
                .try_collect()
                .await?;
            copied_objects += sizes.len() as u64;
            copied_bytes += sizes.iter().sum::<u64>();
        }
    }
    let lag_after = if options.dry_run {
        lag_before.clone()
    } else {
        let src_now = listing(source).await?;
        lag(&src_now, &listing(replica).await?, Utc::now())
    };
    Ok(ReplicationReport {
        copied_objects,
        copied_bytes,
        present_objects: (src.len() - missing.len()) as u64,
        lag_before,
        lag_after,
        duration: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_ids_carry_their_time() {
        let t = id_time("20261125T071057Z-9399418c").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-25T07:10:57+00:00");
        assert!(id_time("nonsense").is_none());
    }

    #[test]
    fn lag_counts_missing_objects_and_unreplicated_snapshots() {
        let src: HashMap<String, u64> = [
            ("config", 10),
            ("data/ab/x", 100),
            ("catalog/20261125T000000Z-a/0000000001-running", 5),
            ("catalog/20261125T000000Z-a/0000000002-succeeded", 5),
            ("catalog/20261125T010000Z-b/0000000001-running", 5),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let replica: HashMap<String, u64> = [("config", 10), ("data/ab/x", 99)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let now = id_time("20261125T003000Z").unwrap();
        let l = lag(&src, &replica, now);
        assert_eq!(l.snapshots, 1, "b is still running");
        assert_eq!(l.objects, 4, "a truncated copy counts as missing");
        assert_eq!(l.seconds, 1800);
        assert_eq!(lag(&src, &src, now), Lag::default());
    }
}
