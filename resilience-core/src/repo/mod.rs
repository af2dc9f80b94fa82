//! The repository: configuration, keys, and the operations that read and write it.
//!
//! ```text
//! config                      plaintext JSON + checksum: format version, id, chunker, pack size
//! keys/<id>                   key copies, one per provider (crate::keys::ring)
//! keys/keyset-<generation>    the key set, sealed to every copy
//! data/<xx>/<pack id>         packs of sealed blobs
//! index/<checksum>            sealed index files
//! snapshots/<snapshot id>     sealed snapshot manifests
//! catalog/<id>/<revision>     sealed catalog records
//! locks/<id>                  lock objects
//! ```
//!
//! `config` is written last by `init`, so a repository exists exactly when it does.

pub mod lock;
pub mod side;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::catalog::{BackupRecord, BackupStatus, CatalogQuery, RepoCatalog};
use crate::error::{Error, Result};
pub use crate::format::chunker::ChunkerParams;
use crate::format::crypto::KeySet;
use crate::format::index::{self, Index, PackRecord};
use crate::format::object::{self, ObjectKind};
use crate::format::pack;
use crate::format::snapshot::{self, Manifest};
use crate::keys::cell::KeyCell;
use crate::keys::ring as keyring;
use crate::keys::{KeyProvider, WrappedKey};
use crate::repo::lock::LockSettings;
use crate::sink::{ObjectLock, PutMode, RetainingSink, Sink};
use crate::time::clock::{Clock, SystemClock};

/// Format version written by this build; it reads every version up to this one.
/// Version 2 changed only `keys/` (identities and key-set generations, see [`crate::keys::ring`]).
/// Version 3 is written only by repositories under an object lock ([`RepoConfig::object_lock`]),
/// so that a build that does not know the lock (and would delete what it holds) refuses them.
pub const FORMAT_VERSION: u32 = 3;

/// The format version of a repository without an object lock.
const FORMAT_UNLOCKED: u32 = 2;

/// A repository's public configuration (`config`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoConfig {
    /// Format version.
    pub format: u32,
    /// Random id.
    pub id: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Chunk size bounds.
    pub chunker: ChunkerParams,
    /// Target pack size in bytes.
    pub pack_size: u32,
    /// zstd level for blobs.
    pub compression_level: i32,
    /// Contents up to this many bytes are stored inside the tree.
    pub inline_limit: u32,
    /// The store's object lock that every retained object is written under
    /// ([`crate::sink::retaining`]); `None` for a repository without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_lock: Option<ObjectLock>,
}

/// Settings for a new repository.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// Chunk size bounds.
    pub chunker: ChunkerParams,
    /// Target pack size.
    pub pack_size: u32,
    /// zstd level.
    pub compression_level: i32,
    /// Inline limit.
    pub inline_limit: u32,
    /// Write every retained object under the store's object lock for this long (the store
    /// must have one: an S3 bucket created with Object Lock).
    pub object_lock: Option<ObjectLock>,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            chunker: ChunkerParams::default(),
            pack_size: 8 * 1024 * 1024,
            compression_level: 1,
            inline_limit: 4096,
            object_lock: None,
        }
    }
}

/// An open repository: a sink, its configuration and its keys.
#[derive(Clone)]
pub struct Repository {
    pub(crate) sink: Arc<dyn Sink>,
    pub(crate) config: RepoConfig,
    /// The key set, shared by every clone of the handle (re-read after a change of keys).
    pub(crate) keys: Arc<KeyCell>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) lock_settings: LockSettings,
    /// Which tier this store is: prune and verify consider only the snapshots stored here.
    pub(crate) tier: crate::catalog::Tier,
    /// The cold tier, when attached ([`Repository::attach_cold`]).
    pub(crate) cold: Option<Arc<Repository>>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("location", &self.sink.location())
            .field("id", &self.config.id)
            .finish_non_exhaustive()
    }
}

fn encode_plain<T: Serialize>(value: &T) -> bytes::Bytes {
    let mut body = serde_json::to_vec_pretty(value).expect("serializes");
    object::append_checksum(&mut body);
    body.into()
}

/// The largest pack a repository may be configured for: a backup holds one pack per upload in
/// memory, and packs address their blobs with 32-bit offsets.
pub const MAX_PACK_SIZE: u32 = 1 << 30;

/// What makes a repository's settings unusable, if anything. `config` is read from the store,
/// so its sizes are bounded before a backup allocates by them; and contents inlined into the
/// tree must fit in one chunk (the chunker may cut anything longer than its minimum).
fn settings_problem(
    chunker: &ChunkerParams,
    pack_size: u32,
    compression_level: i32,
    inline_limit: u32,
) -> Option<String> {
    if let Err(e) = chunker.validate() {
        return Some(e.to_string());
    }
    if pack_size > MAX_PACK_SIZE {
        return Some(format!("pack size {pack_size} exceeds {MAX_PACK_SIZE}"));
    }
    if !zstd::compression_level_range().contains(&compression_level) {
        return Some(format!(
            "compression level {compression_level} is not a zstd level"
        ));
    }
    if inline_limit > chunker.min_size {
        return Some(format!(
            "inline limit {inline_limit} exceeds the smallest chunk ({}): longer contents would be cut",
            chunker.min_size
        ));
    }
    None
}

fn decode_plain<T: for<'de> Deserialize<'de>>(name: &str, bytes: &[u8]) -> Result<T> {
    let body = object::check_checksum(name, bytes)?;
    serde_json::from_slice(body).map_err(|e| Error::corrupt(name, format!("does not parse: {e}")))
}

impl Repository {
    /// Creates a repository in an empty sink, its key set sealed to a copy wrapped by `provider`.
    pub async fn init(
        sink: Arc<dyn Sink>,
        provider: &dyn KeyProvider,
        options: InitOptions,
    ) -> Result<Repository> {
        options.chunker.validate()?;
        if let Some(problem) = settings_problem(
            &options.chunker,
            options.pack_size,
            options.compression_level,
            options.inline_limit,
        ) {
            return Err(Error::Usage(format!(
                "cannot create a repository: {problem}"
            )));
        }
        if Self::exists(sink.as_ref()).await? {
            return Err(Error::AlreadyInitialized {
                location: sink.location(),
            });
        }
        if let Some(lock) = &options.object_lock {
            if lock.period_secs == 0 {
                return Err(Error::Usage(
                    "cannot create a repository: an object lock needs a retention period".into(),
                ));
            }
        }
        let sink = Self::locked_sink(sink, options.object_lock);
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let now = clock.now();
        let keys = KeySet::generate();
        let (copy, identity) = keyring::new_copy(provider, now).await?;
        sink.put(
            &copy.object_name(),
            keyring::encode_copy(&copy),
            PutMode::Create,
        )
        .await?;
        let ring = keyring::KeyRing::default();
        keyring::write_generation(sink.as_ref(), &ring, &keys, &[&copy], now).await?;
        let mut id = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut id);
        let config = RepoConfig {
            format: match options.object_lock {
                Some(_) => FORMAT_VERSION,
                None => FORMAT_UNLOCKED,
            },
            id: hex::encode(id),
            created_at: now,
            chunker: options.chunker,
            pack_size: options.pack_size,
            compression_level: options.compression_level,
            inline_limit: options.inline_limit,
            object_lock: options.object_lock,
        };
        sink.put("config", encode_plain(&config), PutMode::Create)
            .await?;
        let opener = keyring::Opener::new(copy.id.clone(), identity);
        Ok(Repository {
            keys: Arc::new(KeyCell::new(keys, opener, sink.clone())),
            sink,
            config,
            clock,
            lock_settings: LockSettings::default(),
            tier: Default::default(),
            cold: None,
        })
    }

    /// Opens an existing repository with `provider`'s credentials.
    pub async fn open(sink: Arc<dyn Sink>, provider: &dyn KeyProvider) -> Result<Repository> {
        let config = Self::read_config(sink.as_ref()).await?;
        let sink = Self::locked_sink(sink, config.object_lock);
        let ring = keyring::KeyRing::load(sink.as_ref()).await?;
        let (keys, opener) = ring.unlock_opener(provider, &sink.location()).await?;
        for damaged in &ring.damaged {
            tracing::warn!(error = %damaged, opened_with = %opener.copy(), "a key object is damaged");
        }
        Ok(Repository {
            keys: Arc::new(KeyCell::new(keys, opener, sink.clone())),
            sink,
            config,
            clock: Arc::new(SystemClock),
            lock_settings: LockSettings::default(),
            tier: Default::default(),
            cold: None,
        })
    }

    /// `sink` as a repository under `lock` writes and deletes through it.
    fn locked_sink(sink: Arc<dyn Sink>, lock: Option<ObjectLock>) -> Arc<dyn Sink> {
        match lock {
            Some(lock) => Arc::new(RetainingSink::new(sink, lock)),
            None => sink,
        }
    }

    /// The object lock the repository writes under, if any.
    pub fn object_lock(&self) -> Option<ObjectLock> {
        self.config.object_lock
    }

    /// Whether a repository exists in `sink` (its `config` is written last by `init`).
    pub async fn exists(sink: &dyn Sink) -> Result<bool> {
        match sink.head("config").await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads and checks `config`.
    pub async fn read_config(sink: &dyn Sink) -> Result<RepoConfig> {
        let bytes = match sink.get("config").await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => {
                return Err(Error::RepositoryNotFound {
                    location: sink.location(),
                })
            }
            Err(e) => return Err(e.into()),
        };
        let config: RepoConfig = decode_plain("config", &bytes)?;
        if config.format > FORMAT_VERSION {
            return Err(Error::UnsupportedFormat {
                object: "config".into(),
                found: config.format,
                supported: FORMAT_VERSION,
            });
        }
        if let Some(problem) = settings_problem(
            &config.chunker,
            config.pack_size,
            config.compression_level,
            config.inline_limit,
        ) {
            return Err(Error::corrupt("config", problem));
        }
        Ok(config)
    }

    /// Every key copy that parses (damaged ones are left out; see [`keyring::KeyRing`]).
    pub async fn wrapped_keys(sink: &dyn Sink) -> Result<Vec<WrappedKey>> {
        Ok(keyring::KeyRing::load(sink).await?.copies)
    }

    /// The same repository with its reads and writes limited to `bytes_per_second` (for one
    /// job: a scheduled backup that must not saturate the link, a restore that must not
    /// saturate disks), without unlocking the keys again.
    pub fn throttled(&self, bytes_per_second: u64) -> Repository {
        let limiter = Arc::new(crate::sink::throttle::RateLimiter::new(
            bytes_per_second.max(1),
        ));
        let mut repo = self.clone();
        repo.sink = Arc::new(crate::sink::throttle::ThrottledSink::new(
            self.sink.clone(),
            limiter,
        ));
        repo
    }

    /// Uses `clock` for every time this repository records.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Uses these lock timings.
    pub fn with_lock_settings(mut self, settings: LockSettings) -> Self {
        self.lock_settings = settings;
        self
    }

    /// The sink.
    pub fn sink(&self) -> &Arc<dyn Sink> {
        &self.sink
    }

    /// The configuration.
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// The key set: an internal for benches and format tests (adapters seal their own objects
    /// through a [`side::SideArchive`]).
    #[doc(hidden)]
    pub fn keys(&self) -> Arc<KeySet> {
        self.keys.get()
    }

    /// Takes a lock on this repository, then re-reads the keys in force
    /// ([`Repository::refresh_keys`]): a writer holding its lock writes with them, and the
    /// retirement of old data keys runs under the exclusive lock, so no writer that holds a
    /// lock seals with a key being retired. The lock is released if the keys cannot be read.
    pub(crate) async fn lock_fresh(
        &self,
        kind: lock::LockKind,
        operation: &str,
        backup: Option<String>,
    ) -> Result<lock::RepoLock> {
        let held = lock::RepoLock::acquire(
            self.sink.clone(),
            self.clock.clone(),
            kind,
            operation,
            backup,
            self.lock_settings,
        )
        .await?;
        if let Err(e) = self.refresh_keys().await {
            crate::ops::lifecycle::release_quietly(held, operation).await;
            return Err(e);
        }
        Ok(held)
    }

    /// Deletes `key`; an object already gone is no error (a step repeated after an
    /// interruption).
    pub(crate) async fn delete_quietly(&self, key: &str) -> Result<()> {
        match self.sink.delete(key).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Re-reads the key set in force when another process changed keys since this handle
    /// opened the repository (or last re-read them): a long-running service then reads what
    /// was sealed with a newer data key, and writes with it. Every operation that reads or
    /// writes sealed objects calls it first (writers once they hold their lock), and the
    /// catalog calls it on meeting a data key it lacks. `true` when the keys changed.
    ///
    /// A handle opened with a format-1 copy, or whose copy was removed since, cannot re-open
    /// a new key set without its provider: a change of keys is then an error that says to
    /// open the repository again.
    pub async fn refresh_keys(&self) -> Result<bool> {
        self.keys.refresh().await
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The in-repository catalog.
    pub fn catalog(&self) -> RepoCatalog {
        RepoCatalog::with_keys(self.sink.clone(), self.keys.clone())
    }

    /// The journal of failovers to this repository's region ([`crate::failover`]).
    pub fn failovers(&self) -> crate::failover::RepoFailoverLog {
        crate::failover::RepoFailoverLog::new(self.sink.clone(), self.keys.clone())
    }

    /// Loads every index file into memory. A damaged index file does not fail it: see
    /// [`Repository::load_index_report`], of which this is the thin wrapper.
    pub async fn load_index(&self) -> Result<Index> {
        Ok(self.load_index_report().await?.index)
    }

    /// Loads every index file into memory and reports the damaged ones.
    ///
    /// Derived state is a cache: an index file that is damaged, truncated or does not decode is
    /// skipped with a warning naming it, and then every pack under `data/` that no intact index
    /// file lists is read from its own table and added (unreadable packs are skipped with a
    /// warning). That costs a listing of `data/` and a few ranged reads per unlisted pack, and
    /// only happens when some index file is damaged. An index file that vanished between the
    /// listing and the read is skipped. `resilience repair index`
    /// ([`Repository::repair_index`]) rebuilds the index files.
    pub async fn load_index_report(&self) -> Result<IndexLoad> {
        let mut loaded = self.load_intact_index().await?;
        if !loaded.damaged.is_empty() {
            for p in self.unindexed_packs(&loaded.index).await? {
                loaded.index.add_pack(&p);
            }
            loaded.index.compact();
        }
        Ok(loaded)
    }

    /// The intact index files only: damaged ones are named in [`IndexLoad::damaged`] and their
    /// packs are not looked for (for callers that list `data/` themselves, such as a backup
    /// adopting unindexed packs).
    pub(crate) async fn load_intact_index(&self) -> Result<IndexLoad> {
        let keys: Vec<String> = self
            .sink
            .list("index/")
            .map_ok(|m| m.key)
            .try_collect()
            .await?;
        let mut files = futures::stream::iter(keys)
            .map(|key| async move {
                let read = self.read_index_file(&key).await;
                (key, read)
            })
            .buffer_unordered(8);
        let mut loaded = IndexLoad {
            index: Index::new(),
            damaged: Vec::new(),
        };
        while let Some((key, read)) = files.next().await {
            match read? {
                IndexFile::Packs(packs) => {
                    for p in &packs {
                        loaded.index.add_pack_bulk(p);
                    }
                }
                IndexFile::Missing => {}
                IndexFile::Damaged(e) => {
                    tracing::warn!(
                        index_file = %key,
                        error = %e,
                        "skipping a damaged index file: its packs are found from their own \
                         tables; run `resilience repair index` to rebuild it"
                    );
                    loaded.damaged.push(key);
                }
            }
        }
        loaded.damaged.sort();
        loaded.index.compact();
        Ok(loaded)
    }

    /// The index files only, for maintenance that must never decide from an incomplete index
    /// (prune, key rewrite): a damaged index file is an error that names it and says to run
    /// `resilience repair index` first.
    pub(crate) async fn load_index_strict(&self) -> Result<Index> {
        let loaded = self.load_intact_index().await?;
        if let Some(name) = loaded.damaged.first() {
            return Err(index_damaged_error(name, "it does not read back"));
        }
        Ok(loaded.index)
    }

    /// Reads one index file: its packs, `Missing` when it vanished since it was listed, or
    /// `Damaged` when its bytes do not check, open or decode. Other storage errors are errors.
    pub(crate) async fn read_index_file(&self, key: &str) -> Result<IndexFile> {
        let bytes = match self.sink.get(key).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Ok(IndexFile::Missing),
            Err(e) => return Err(e.into()),
        };
        let decoded = object::open_object(&self.keys(), ObjectKind::Index, "index", &bytes)
            .map_err(|e| rename_corrupt(e, key))
            .and_then(|payload| index::decode_index(key, &payload));
        Ok(match decoded {
            Ok(packs) => IndexFile::Packs(packs),
            Err(Error::Sink(e)) => return Err(e.into()),
            Err(e) => IndexFile::Damaged(e),
        })
    }

    /// Reads one index file for maintenance: `None` when it vanished since it was listed, an
    /// error naming it (and `resilience repair index`) when it is damaged.
    pub(crate) async fn read_index_file_strict(
        &self,
        key: &str,
    ) -> Result<Option<Vec<PackRecord>>> {
        match self.read_index_file(key).await? {
            IndexFile::Packs(p) => Ok(Some(p)),
            IndexFile::Missing => Ok(None),
            IndexFile::Damaged(e) => Err(index_damaged_error(key, &problem_text(e))),
        }
    }

    /// Packs in the sink that no index lists (left by an interrupted backup), read from their
    /// own tables. Damaged ones are skipped with a warning.
    pub async fn unindexed_packs(&self, index: &Index) -> Result<Vec<PackRecord>> {
        let metas: Vec<_> = self
            .sink
            .list("data/")
            .try_filter(|m| {
                futures::future::ready(
                    pack::pack_id_from_key(&m.key).is_some_and(|id| !index.has_pack(&id)),
                )
            })
            .try_collect()
            .await?;
        let mut out = Vec::new();
        for meta in metas {
            match self.read_pack_table(&meta.key, meta.size).await {
                Ok(rec) => out.push(rec),
                Err(e) => {
                    tracing::warn!(pack = %meta.key, error = %e, "skipping an unreadable unindexed pack")
                }
            }
        }
        Ok(out)
    }

    /// Reads a pack's table with two ranged reads.
    pub async fn read_pack_table(&self, key: &str, size: u64) -> Result<PackRecord> {
        let id =
            pack::pack_id_from_key(key).ok_or_else(|| Error::corrupt(key, "not a pack name"))?;
        if size < (pack::HEADER_LEN + pack::TAIL_LEN) as u64 {
            return Err(Error::corrupt(key, "too small to be a pack"));
        }
        let header = self.sink.get_range(key, 0..pack::HEADER_LEN as u64).await?;
        let key_id = pack::parse_header(key, &header)?;
        let tail = self
            .sink
            .get_range(key, size - pack::TAIL_LEN as u64..size)
            .await?;
        if tail[4..] != id.0 {
            return Err(Error::corrupt(
                key,
                "stored checksum does not match the pack's name",
            ));
        }
        let len = pack::table_len_from_tail(key, &tail, size)? as u64;
        let end = size - pack::TAIL_LEN as u64;
        let table = self.sink.get_range(key, end - len..end).await?;
        let blobs = pack::parse_table(&self.keys(), key_id, key, &table)?;
        Ok(PackRecord {
            id,
            size,
            key_id,
            blobs,
        })
    }

    /// Writes an index file for `packs`; returns its size.
    pub async fn write_index(&self, packs: &[PackRecord]) -> Result<u64> {
        if packs.is_empty() {
            return Ok(0);
        }
        Ok(self.write_index_named(packs).await?.1)
    }

    /// Writes an index file for `packs`; returns its name and size.
    pub async fn write_index_named(&self, packs: &[PackRecord]) -> Result<(String, u64)> {
        let sealed = object::seal_object(
            &self.keys(),
            ObjectKind::Index,
            "index",
            &index::encode_index(packs),
        );
        let name = format!(
            "index/{}",
            object::stored_checksum(&sealed).expect("has checksum")
        );
        let len = sealed.len() as u64;
        put_idempotent(self.sink.as_ref(), &name, sealed.into()).await?;
        Ok((name, len))
    }

    /// The succeeded snapshot that `spec` names: `latest`, a full id or a unique id prefix.
    /// `source` narrows `latest` to one source.
    pub async fn resolve_snapshot(&self, spec: &str, source: Option<&str>) -> Result<BackupRecord> {
        let catalog = self.catalog();
        let query = CatalogQuery {
            source: source.map(str::to_owned),
            statuses: vec![BackupStatus::Succeeded],
            ..Default::default()
        };
        if spec == "latest" {
            return catalog
                .newest(&query)
                .await?
                .ok_or_else(|| Error::SnapshotNotFound { id: spec.into() });
        }
        let refs: Vec<_> = catalog
            .refs(None)
            .await?
            .into_iter()
            .filter(|r| {
                r.id.starts_with(spec) && r.status.is_none_or(|s| s == BackupStatus::Succeeded)
            })
            .collect();
        let records = catalog.read_refs(&refs).await?;
        let mut matching: Vec<BackupRecord> =
            records.into_iter().filter(|r| query.matches(r)).collect();
        if let Some(exact) = matching.iter().position(|r| r.id == spec) {
            return Ok(matching.swap_remove(exact));
        }
        match matching.len() {
            0 => Err(Error::SnapshotNotFound { id: spec.into() }),
            1 => Ok(matching.pop().expect("one")),
            n => Err(Error::AmbiguousSnapshot {
                id: spec.into(),
                matches: n,
            }),
        }
    }

    /// Reads a snapshot's manifest, checking it against the checksum its record holds.
    pub async fn load_manifest(&self, record: &BackupRecord) -> Result<Manifest> {
        let key = snapshot::manifest_key(&record.id);
        let bytes = self.sink.get(&key).await?;
        if let Some(expected) = &record.manifest_checksum {
            let stored = object::stored_checksum(&bytes);
            if stored.as_deref() != Some(expected.as_str())
                && stored != self.rewrite_journal_checksum(&record.id).await?
            {
                return Err(Error::corrupt(
                    &key,
                    "manifest does not match the checksum in the catalog",
                ));
            }
        }
        let manifest = self.open_manifest(&key, &bytes)?;
        if manifest.id != record.id {
            return Err(Error::corrupt(
                &key,
                format!("manifest names snapshot {}", manifest.id),
            ));
        }
        Ok(manifest)
    }
}

impl Repository {
    /// Opens the manifest stored as `key` (its checksum, seal and format), whatever the
    /// catalog says of it: prune follows manifests, not catalog records.
    pub(crate) fn open_manifest(&self, key: &str, bytes: &[u8]) -> Result<Manifest> {
        let payload = object::open_object(&self.keys(), ObjectKind::Snapshot, key, bytes)?;
        let manifest: Manifest = serde_json::from_slice(&payload)
            .map_err(|e| Error::corrupt(key, format!("manifest does not parse: {e}")))?;
        if manifest.format > snapshot::SNAPSHOT_FORMAT {
            return Err(Error::UnsupportedFormat {
                object: key.to_owned(),
                found: manifest.format,
                supported: snapshot::SNAPSHOT_FORMAT,
            });
        }
        Ok(manifest)
    }

    /// The checksum a `key rotate --rewrite` in progress recorded for a re-sealed manifest
    /// (`rewrite/<snapshot id>`), if any.
    async fn rewrite_journal_checksum(&self, id: &str) -> Result<Option<String>> {
        let key = crate::keys::rewrite::rewrite_journal_key(id);
        let bytes = match self.sink.get(&key).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let body = object::check_checksum(&key, &bytes)?;
        let v: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| Error::corrupt(&key, format!("does not parse: {e}")))?;
        Ok(v.get("manifest_checksum")
            .and_then(|c| c.as_str())
            .map(str::to_owned))
    }
}

/// An index loaded by [`Repository::load_index_report`].
#[derive(Default)]
pub struct IndexLoad {
    /// The blobs of every intact index file and, when some file is damaged, of every pack that
    /// no intact file lists.
    pub index: Index,
    /// The index files that are damaged, truncated or do not decode (sorted keys): each is
    /// fixed by `resilience repair index`.
    pub damaged: Vec<String>,
}

/// One index file as read.
pub(crate) enum IndexFile {
    /// Its packs.
    Packs(Vec<PackRecord>),
    /// It vanished between the listing and the read.
    Missing,
    /// It does not check, open or decode.
    Damaged(Error),
}

/// The error of maintenance that refuses to run on an incomplete index.
pub(crate) fn index_damaged_error(key: &str, problem: &str) -> Error {
    Error::corrupt(
        key,
        format!(
            "{problem}; this operation needs every index file: run `resilience repair index` \
             first"
        ),
    )
}

fn problem_text(e: Error) -> String {
    match e {
        Error::Corrupt { reason, .. } => reason,
        other => other.to_string(),
    }
}

fn rename_corrupt(e: Error, key: &str) -> Error {
    match e {
        Error::Corrupt { reason, .. } => Error::Corrupt {
            object: key.to_owned(),
            reason,
        },
        other => other,
    }
}

/// Puts a content-addressed object: if a store that enforces create-only says it exists, the
/// bytes are the same by construction.
pub(crate) async fn put_idempotent(sink: &dyn Sink, key: &str, data: bytes::Bytes) -> Result<()> {
    match sink.put(key, data, PutMode::Create).await {
        Ok(()) => Ok(()),
        Err(crate::sink::SinkError::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A new backup id: its start time (sortable) and random bits.
pub fn new_backup_id(at: DateTime<Utc>) -> String {
    let mut r = [0u8; 4];
    rand::rngs::OsRng.fill_bytes(&mut r);
    format!("{}-{}", at.format("%Y%m%dT%H%M%SZ"), hex::encode(r))
}
