//! Restoring a versioned snapshot as of a time: the [`AsOfPlan`] says which entry holds each
//! object as it was then, decided from the snapshot's entries before anything is written.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use resilience_core::catalog::BackupRecord;
use resilience_core::repo::Repository;
use resilience_core::source::entry::{EntryKind, EntryMeta};

use crate::versions::parse_version_entry_path;

/// Which entry of a versioned snapshot holds each object as it was at a time: for each key, the
/// newest version whose last-modified time is not after it (ties within a second go to the
/// key's current state, then to the server's listing order, newest first); a key whose newest such version is a
/// delete marker was deleted then, and a key with none did not exist yet. Both are left out.
///
/// Built from the snapshot's entries ([`AsOfPlan::add`] each, then [`AsOfPlan::finish`], or
/// [`plan_as_of`]), before anything is written: the plan is a value a caller can inspect.
/// Memory: one small record per key.
#[derive(Clone, Debug)]
pub struct AsOfPlan {
    /// The time.
    pub as_of: DateTime<Utc>,
    candidates: HashMap<String, Candidate>,
    seen: HashSet<String>,
    chosen: HashSet<Vec<u8>>,
    /// Keys deleted at that time.
    pub deleted: Vec<String>,
    /// Keys not yet written at that time.
    pub not_yet_created: u64,
    /// Objects the plan restores.
    pub objects: u64,
}

#[derive(Clone, Debug)]
struct Candidate {
    /// Newer ranks higher: the later write; within one second (S3 keeps seconds) the key's
    /// current state, then the server's order.
    rank: (DateTime<Utc>, bool, std::cmp::Reverse<u64>),
    path: Vec<u8>,
    delete_marker: bool,
}

impl AsOfPlan {
    /// An empty plan for `as_of`.
    pub fn new(as_of: DateTime<Utc>) -> Self {
        AsOfPlan {
            as_of,
            candidates: HashMap::new(),
            seen: HashSet::new(),
            chosen: HashSet::new(),
            deleted: Vec::new(),
            not_yet_created: 0,
            objects: 0,
        }
    }

    /// Considers one entry of the snapshot.
    pub fn add(&mut self, meta: &EntryMeta) -> Result<(), String> {
        if meta.kind != EntryKind::File {
            return Ok(());
        }
        let key = match parse_version_entry_path(meta.path.as_bytes()) {
            Some((key, _)) => key,
            None => String::from_utf8_lossy(meta.path.as_bytes()).into_owned(),
        };
        let last_modified = meta
            .attrs
            .get("last_modified")
            .ok_or_else(|| format!("entry {} has no last_modified", meta.path))
            .and_then(|t| {
                DateTime::parse_from_rfc3339(t)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| format!("entry {}: last_modified {t:?}: {e}", meta.path))
            })?;
        let seq = meta
            .attrs
            .get("version_seq")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        self.seen.insert(key.clone());
        if last_modified > self.as_of {
            return Ok(());
        }
        let candidate = Candidate {
            rank: (
                last_modified,
                meta.attrs.get("is_latest").map(String::as_str) == Some("true"),
                std::cmp::Reverse(seq),
            ),
            path: meta.path.as_bytes().to_vec(),
            delete_marker: meta.attrs.get("delete_marker").map(String::as_str) == Some("true"),
        };
        match self.candidates.get(&key) {
            Some(c) if c.rank >= candidate.rank => {}
            _ => {
                self.candidates.insert(key, candidate);
            }
        }
        Ok(())
    }

    /// Decides, once every entry was added.
    pub fn finish(mut self) -> Self {
        self.not_yet_created = self
            .seen
            .iter()
            .filter(|k| !self.candidates.contains_key(*k))
            .count() as u64;
        for (key, c) in std::mem::take(&mut self.candidates) {
            if c.delete_marker {
                self.deleted.push(key);
            } else {
                self.chosen.insert(c.path);
            }
        }
        self.deleted.sort();
        self.objects = self.chosen.len() as u64;
        self.seen.clear();
        self
    }

    /// Whether the plan restores the entry at `path`.
    pub fn restores(&self, path: &[u8]) -> bool {
        self.chosen.contains(path)
    }
}

/// The [`AsOfPlan`] of a snapshot at `as_of`. A snapshot taken without versions is refused:
/// it holds only the objects current at the backup.
pub async fn plan_as_of(
    repo: &Repository,
    record: &BackupRecord,
    as_of: DateTime<Utc>,
) -> Result<AsOfPlan, resilience_core::error::Error> {
    if record
        .source_metadata
        .get("versions")
        .and_then(|v| v.as_bool())
        != Some(true)
    {
        return Err(resilience_core::error::Error::Usage(format!(
            "snapshot {} was taken without versions: it holds only the objects current then, so it cannot be restored as of a time (back up with `bucket backup --versions`)",
            record.id
        )));
    }
    let index = repo.load_index().await?;
    let mut tree = repo.tree_reader(record, &index).await?;
    let mut plan = AsOfPlan::new(as_of);
    while let Some(rec) = tree.next().await? {
        plan.add(&rec.meta)
            .map_err(|reason| resilience_core::error::Error::Corrupt {
                object: format!("snapshot {}", record.id),
                reason,
            })?;
    }
    Ok(plan.finish())
}
