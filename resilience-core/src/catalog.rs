//! The backup catalog: one record per backup, with what compliance asks for.
//!
//! The default [`RepoCatalog`] lives in the repository itself, so backups and their catalog
//! survive together when the primary database is gone. Objects are immutable, so a record's
//! every change is a new revision `catalog/<backup id>/<revision, 10 digits>-<status>`, a sealed
//! JSON object; the highest revision is current. The status in the name lets a listing answer
//! "which backups are running / succeeded" without reading records, so a backup's start costs
//! one listing, not one read per snapshot. Only the backup's own process writes its revisions
//! while it runs; later changes (holds, tiers, verification) are made by maintenance.

#[cfg(any(test, feature = "testing"))]
pub mod conformance;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::crypto::KeySet;
use crate::format::object::{self, ObjectKind};
use crate::keys::cell::KeyCell;
use crate::keys::ring::Opener;
use crate::sink::{PutMode, Sink};
use crate::source::{SourceDescriptor, SourceMetadata};

/// What a backup is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupKind {
    /// A complete copy of the source.
    Full,
    /// Only what changed since a parent (deduplication makes every backup cost like this).
    Incremental,
    /// Postgres WAL.
    Wal,
}

/// Where a backup stands.
///
/// "Verified" is not a status: a succeeded backup keeps its status and gains entries in its
/// verification history, so one failed verification never hides that it once succeeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupStatus {
    /// Being written.
    Running,
    /// Every byte it references is durably stored and its manifest checksum recorded.
    Succeeded,
    /// It failed or was interrupted; it is not restorable.
    Failed,
    /// Retention expired it; its data may be gone.
    Expired,
}

impl std::fmt::Display for BackupStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackupStatus::Running => "running",
            BackupStatus::Succeeded => "succeeded",
            BackupStatus::Failed => "failed",
            BackupStatus::Expired => "expired",
        })
    }
}

/// The storage tier of a backup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// The primary store.
    #[default]
    Hot,
    /// A cheaper, slower store.
    Cold,
}

/// One verification of a backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    /// When it ran.
    pub at: DateTime<Utc>,
    /// `quick`, `full`, `drill`, …
    pub kind: String,
    /// Whether the backup was sound.
    pub ok: bool,
    /// What was found.
    pub detail: String,
}

/// A backup's catalog record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackupRecord {
    /// The backup's (and snapshot's) id.
    pub id: String,
    /// Revision of this record, from 1.
    pub revision: u32,
    /// What was backed up.
    pub source: SourceDescriptor,
    /// Full, incremental or WAL.
    pub kind: BackupKind,
    /// Where it stands.
    pub status: BackupStatus,
    /// Why it failed, if it did.
    #[serde(default)]
    pub error: Option<String>,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it finished.
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
    /// Sum of the sizes of its entries.
    pub logical_bytes: u64,
    /// Bytes it wrote to the repository (new packs, tree, manifest).
    pub stored_bytes: u64,
    /// Plaintext bytes of content that was not already in the repository.
    pub new_bytes: u64,
    /// Number of entries.
    pub entries: u64,
    /// Checksum (BLAKE3, hex) of its manifest object.
    #[serde(default)]
    pub manifest_checksum: Option<String>,
    /// Storage tier.
    #[serde(default)]
    pub tier: Tier,
    /// User labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Under legal hold: retention never deletes it.
    #[serde(default)]
    pub legal_hold: bool,
    /// Verification history, oldest first.
    #[serde(default)]
    pub verifications: Vec<Verification>,
    /// Store-specific metadata (LSN range, timeline, server version…).
    #[serde(default)]
    pub source_metadata: SourceMetadata,
    /// The snapshot it reused unchanged entries from.
    #[serde(default)]
    pub parent: Option<String>,
    /// Host that made it.
    #[serde(default)]
    pub host: String,
    /// When this revision was written.
    pub updated_at: DateTime<Utc>,
    /// Set on a snapshot that `repair snapshots --salvage` wrote from a damaged one: where it
    /// came from and what it left out. Absent on every other record (and on records written
    /// before this field existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salvage: Option<Salvage>,
}

/// How many paths of files left out a [`Salvage`] names (the count is always complete).
pub const SALVAGE_PATHS_KEPT: usize = 1000;

/// Where a salvaged snapshot came from ([`crate::ops::repair::snapshots`]): it holds every entry of
/// the damaged snapshot `from` that is still restorable, reusing its blobs, and leaves out every
/// file with a lost blob (never a silently truncated file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Salvage {
    /// The damaged snapshot it was salvaged from (left in place, unchanged).
    pub from: String,
    /// When the salvage was written.
    pub at: DateTime<Utc>,
    /// Files left out because some of their content is lost.
    pub files_left_out: u64,
    /// The paths of those files, the first [`SALVAGE_PATHS_KEPT`] of them in tree order.
    #[serde(default)]
    pub paths_left_out: Vec<String>,
    /// Entries left out because the part of the tree that describes them is lost (every entry
    /// after [`Salvage::tree_lost_after`], in tree order).
    #[serde(default)]
    pub entries_unreadable: u64,
    /// The last entry read before a lost part of the tree (`None`: the tree was intact, or
    /// lost from its start).
    #[serde(default)]
    pub tree_lost_after: Option<String>,
}

/// Which records to list.
#[derive(Clone, Debug, Default)]
pub struct CatalogQuery {
    /// Only this source id.
    pub source: Option<String>,
    /// Only these statuses (all when empty).
    pub statuses: Vec<BackupStatus>,
    /// Only backups started at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only backups started before this time.
    pub until: Option<DateTime<Utc>>,
}

impl CatalogQuery {
    /// Whether a record matches.
    pub fn matches(&self, r: &BackupRecord) -> bool {
        self.source.as_ref().is_none_or(|s| *s == r.source.id)
            && (self.statuses.is_empty() || self.statuses.contains(&r.status))
            && self.since.is_none_or(|t| r.started_at >= t)
            && self.until.is_none_or(|t| r.started_at < t)
    }
}

/// The backup records.
#[async_trait]
pub trait Catalog: Send + Sync {
    /// Stores a record as its next revision (the caller sets `revision`).
    async fn put(&self, record: &BackupRecord) -> Result<()>;

    /// The current revision of a record.
    async fn get(&self, id: &str) -> Result<Option<BackupRecord>>;

    /// Current revisions of matching records, oldest first.
    async fn list(&self, query: &CatalogQuery) -> Result<Vec<BackupRecord>>;
}

/// The catalog kept in the repository.
#[derive(Clone)]
pub struct RepoCatalog {
    sink: Arc<dyn Sink>,
    keys: Arc<KeyCell>,
}

impl RepoCatalog {
    /// A catalog over a repository's sink and keys (these keys only: a record sealed after a
    /// change of keys does not open; [`Repository::catalog`](crate::repo::Repository::catalog)
    /// re-reads the keys then).
    pub fn new(sink: Arc<dyn Sink>, keys: Arc<KeySet>) -> Self {
        let keys = KeyCell::new((*keys).clone(), Opener::fixed(), sink.clone());
        RepoCatalog {
            sink,
            keys: Arc::new(keys),
        }
    }

    /// A catalog sharing an open repository's keys.
    pub(crate) fn with_keys(sink: Arc<dyn Sink>, keys: Arc<KeyCell>) -> Self {
        RepoCatalog { sink, keys }
    }

    fn key(id: &str, revision: u32, status: BackupStatus) -> String {
        format!("catalog/{id}/{revision:010}-{status}")
    }

    async fn read(&self, key: &str) -> Result<BackupRecord> {
        let bytes = self.sink.get(key).await?;
        let keys = self.keys.holding(object::sealed_key_id(&bytes)).await?;
        let payload = object::open_object(&keys, ObjectKind::Catalog, key, &bytes)?;
        serde_json::from_slice(&payload)
            .map_err(|e| Error::corrupt(key, format!("catalog record does not parse: {e}")))
    }

    /// Reads the record stored as `key`.
    pub(crate) async fn read_key(&self, key: &str) -> Result<BackupRecord> {
        self.read(key).await
    }

    /// Reads the current revision `r`; when it is damaged, falls back to the newest intact
    /// revision of the same record, with a warning naming the damaged object (a record's
    /// history is a cache of nothing, but its older revisions say most of what it said).
    async fn read_current(&self, r: &CatalogRef) -> Result<BackupRecord> {
        Ok(self.read_current_reporting(r).await?.0)
    }

    /// As [`RepoCatalog::read_current`], also returning, when the record was read from an
    /// older revision, the damage of the current one and the object read instead (for verify,
    /// which reports them).
    ///
    /// A record read from an older revision keeps the current revision's *number*: every
    /// writer writes `revision + 1` next, which must come after the damaged object (with the
    /// older number it would collide with it: refused by a create-only store, or overwriting
    /// it on one that ignores create-only puts).
    pub(crate) async fn read_current_reporting(
        &self,
        r: &CatalogRef,
    ) -> Result<(BackupRecord, Option<(Error, String)>)> {
        let damage = match self.read(&r.key).await {
            Err(e @ Error::Corrupt { .. }) => e,
            other => return other.map(|record| (record, None)),
        };
        let mut older: Vec<CatalogRef> = Vec::new();
        let mut listing = self.sink.list(&format!("catalog/{}/", r.id));
        while let Some(meta) = listing.try_next().await? {
            if let Some(candidate) = parse_ref(&meta.key) {
                if candidate.key != r.key {
                    older.push(candidate);
                }
            }
        }
        older.sort_by(|a, b| b.precedence().cmp(&a.precedence()));
        for candidate in &older {
            if let Ok(mut record) = self.read(&candidate.key).await {
                tracing::warn!(damaged = %r.key, used = %candidate.key, error = %damage, "a damaged catalog revision: using the newest intact one");
                record.revision = record.revision.max(r.revision);
                return Ok((record, Some((damage, candidate.key.clone()))));
            }
        }
        Err(damage)
    }

    /// Every revision of record `id` (intact or not), oldest first.
    pub async fn revisions(&self, id: &str) -> Result<Vec<CatalogRef>> {
        let mut revisions: Vec<CatalogRef> = Vec::new();
        let mut listing = self.sink.list(&format!("catalog/{id}/"));
        while let Some(meta) = listing.try_next().await? {
            if let Some(r) = parse_ref(&meta.key).filter(|r| r.id == id) {
                revisions.push(r);
            }
        }
        revisions.sort_by(|a, b| a.precedence().cmp(&b.precedence()));
        Ok(revisions)
    }

    /// The revisions of record `id` that place a legal hold, and those that cannot be read
    /// (which might). A hold is in force while any of them is present, whatever the current
    /// revision says: releasing one deletes them ([`crate::repo::Repository::set_legal_hold`]),
    /// which a writer that can only add objects cannot do, so a revision it forges cannot lift
    /// a hold.
    pub async fn hold_revisions(&self, id: &str) -> Result<Vec<String>> {
        let mut holding = Vec::new();
        for r in self.revisions(id).await? {
            match self.read(&r.key).await {
                Ok(record) if !record.legal_hold => {}
                Ok(_) => holding.push(r.key),
                Err(Error::Corrupt { .. }) => holding.push(r.key),
                Err(e) if matches!(&e, Error::Sink(s) if s.is_not_found()) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(holding)
    }

    /// Deletes the revision stored as `key` (maintenance: releasing a hold).
    pub(crate) async fn delete_revision(&self, key: &str) -> Result<()> {
        match self.sink.delete(key).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces the record stored as `key` in place, sealed with the current data key. Only
    /// `key rotate --rewrite` does this: it re-seals a manifest and must update its checksum.
    pub(crate) async fn overwrite(&self, key: &str, record: &BackupRecord) -> Result<()> {
        let payload = serde_json::to_vec(record).expect("records serialize");
        let sealed = object::seal_object(&self.keys.get(), ObjectKind::Catalog, key, &payload);
        self.sink
            .put(key, sealed.into(), PutMode::Overwrite)
            .await?;
        Ok(())
    }

    /// The current revision of every record (of one id, if given), from a listing alone.
    pub async fn refs(&self, only: Option<&str>) -> Result<Vec<CatalogRef>> {
        let prefix = match only {
            Some(id) => format!("catalog/{id}/"),
            None => "catalog/".to_owned(),
        };
        let mut newest: HashMap<String, CatalogRef> = HashMap::new();
        let mut listing = self.sink.list(&prefix);
        while let Some(meta) = listing.try_next().await? {
            let Some(candidate) = parse_ref(&meta.key) else {
                continue;
            };
            let id = candidate.id.clone();
            match newest.get(&id) {
                Some(r) if r.precedes_or_equals(&candidate) => {
                    newest.insert(id, candidate);
                }
                Some(_) => {}
                None => {
                    newest.insert(id, candidate);
                }
            }
        }
        let mut refs: Vec<CatalogRef> = newest.into_values().collect();
        refs.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(refs)
    }

    /// Reads the records behind `refs`, a few at a time, in order (a damaged revision falls
    /// back to the newest intact one of its record).
    ///
    /// A record none of whose revisions reads, and whose current one says `running`, is left
    /// out with a warning naming it ([`RepoCatalog::unreadable_attempt`]).
    pub async fn read_refs(&self, refs: &[CatalogRef]) -> Result<Vec<BackupRecord>> {
        let this = self.clone();
        let read: Vec<Option<BackupRecord>> = futures::stream::iter(refs.to_vec())
            .map(move |r| {
                let this = this.clone();
                async move { this.read_listed(&r).await }
            })
            .buffered(16)
            .try_collect()
            .await?;
        Ok(read.into_iter().flatten().collect())
    }

    /// Reads the current revision of a listed record, or `None` for an unreadable attempt.
    async fn read_listed(&self, r: &CatalogRef) -> Result<Option<BackupRecord>> {
        match self.read_current(r).await {
            Ok(record) => Ok(Some(record)),
            Err(e) if Self::unreadable_attempt(r, &e) => {
                tracing::warn!(object = %r.key, error = %e, "a backup attempt that never finished left an unreadable record: it is left out (nothing was acknowledged under it)");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Whether `error`, met reading record `r`, means the record of a backup attempt that never
    /// finished is unreadable: no revision of it reads, and the current one is its `running`
    /// revision (a backup that finished, failed or was expired has a later revision, which
    /// would be current). Such an attempt acknowledged nothing: its start was cut short as its
    /// record was written (a torn put), or the record rotted before anything finished it.
    /// Listings leave it out rather than fail, and verify does not count it as damage (its
    /// packs, if any, are unindexed, and prune reclaims them; the record's object stays, as the
    /// records of failed backups do). A record whose current revision says anything else is
    /// damage ([`crate::ops::verify`]).
    pub fn unreadable_attempt(r: &CatalogRef, error: &Error) -> bool {
        r.status == Some(BackupStatus::Running) && matches!(error, Error::Corrupt { .. })
    }

    /// The newest record (by id, which starts with the start time) that matches `query`,
    /// reading records newest first until one matches.
    pub async fn newest(&self, query: &CatalogQuery) -> Result<Option<BackupRecord>> {
        let mut refs = self.refs(None).await?;
        refs.retain(|r| {
            r.status
                .is_none_or(|s| query.statuses.is_empty() || query.statuses.contains(&s))
        });
        // Ids sort by their start second; within one second, the start time decides.
        let mut best: Option<BackupRecord> = None;
        for r in refs.iter().rev() {
            if let Some(b) = &best {
                if r.id.get(..SECOND_PREFIX) != b.id.get(..SECOND_PREFIX) {
                    break;
                }
            }
            let Some(record) = self.read_listed(r).await? else {
                continue;
            };
            if query.matches(&record)
                && best
                    .as_ref()
                    .is_none_or(|b| (record.started_at, &record.id) > (b.started_at, &b.id))
            {
                best = Some(record);
            }
        }
        Ok(best)
    }
}

/// Length of the start-second prefix of a backup id (`20261125T071057Z`).
const SECOND_PREFIX: usize = 16;

/// A catalog record as a listing shows it: enough to decide whether to read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogRef {
    /// The backup id.
    pub id: String,
    /// Its current revision.
    pub revision: u32,
    /// Its status, when the object name carries it.
    pub status: Option<BackupStatus>,
    /// The object holding that revision.
    pub key: String,
}

impl CatalogRef {
    /// The order that decides which revision is current, whatever order a listing gives:
    /// the higher revision; within one revision, the status that is further along
    /// (`expired` over `succeeded` over `failed` over `running`: a backup's own proven success
    /// outranks a reaper's guess that it died, and an expiry, which deleted the manifest
    /// first, outranks both); then the object name.
    fn precedes_or_equals(&self, other: &CatalogRef) -> bool {
        self.precedence() <= other.precedence()
    }

    fn precedence(&self) -> (u32, u8, &str) {
        (self.revision, status_rank(self.status), &self.key)
    }
}

fn status_rank(status: Option<BackupStatus>) -> u8 {
    match status {
        None => 0,
        Some(BackupStatus::Running) => 1,
        Some(BackupStatus::Failed) => 2,
        Some(BackupStatus::Succeeded) => 3,
        Some(BackupStatus::Expired) => 4,
    }
}

/// The revision a catalog object's key names: `catalog/<id>/<revision>[-<status>]`.
fn parse_ref(key: &str) -> Option<CatalogRef> {
    let (head, name) = key.rsplit_once('/')?;
    let (rev, status) = match name.split_once('-') {
        Some((r, s)) => (r, parse_status(s)),
        None => (name, None),
    };
    let revision = rev.parse::<u32>().ok()?;
    Some(CatalogRef {
        id: head.trim_start_matches("catalog/").to_owned(),
        revision,
        status,
        key: key.to_owned(),
    })
}

fn parse_status(s: &str) -> Option<BackupStatus> {
    match s {
        "running" => Some(BackupStatus::Running),
        "succeeded" => Some(BackupStatus::Succeeded),
        "failed" => Some(BackupStatus::Failed),
        "expired" => Some(BackupStatus::Expired),
        _ => None,
    }
}

#[async_trait]
impl Catalog for RepoCatalog {
    async fn put(&self, record: &BackupRecord) -> Result<()> {
        let key = Self::key(&record.id, record.revision, record.status);
        let payload = serde_json::to_vec(record).expect("records serialize");
        let sealed = object::seal_object(&self.keys.get(), ObjectKind::Catalog, &key, &payload);
        self.sink.put(&key, sealed.into(), PutMode::Create).await?;
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<BackupRecord>> {
        if id.contains('/') || id.is_empty() {
            return Ok(None);
        }
        match self.refs(Some(id)).await?.first() {
            Some(r) => Ok(Some(self.read_current(r).await?)),
            None => Ok(None),
        }
    }

    async fn list(&self, query: &CatalogQuery) -> Result<Vec<BackupRecord>> {
        let mut refs = self.refs(None).await?;
        refs.retain(|r| {
            r.status
                .is_none_or(|s| query.statuses.is_empty() || query.statuses.contains(&s))
        });
        let mut records: Vec<BackupRecord> = self
            .read_refs(&refs)
            .await?
            .into_iter()
            .filter(|r| query.matches(r))
            .collect();
        records.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.id.cmp(&b.id)));
        Ok(records)
    }
}
