//! Backing up a bucket (or a prefix of one) and restoring it into a bucket.
//!
//! Each object is an entry: its key (below the prefix) as the path, its bytes as content, and
//! as attributes its ETag, last-modified time, content type and user metadata (`meta.<name>`).
//! The listing is streamed; the attributes come from `HEAD` requests, prefetched with bounded
//! concurrency, so an unchanged object (same size and ETag as in the previous snapshot) is
//! never read again: its blobs are reused. Bodies are read with `GET` only when the engine asks
//! for them, and streamed.
//!
//! A restore writes objects back with their content type and user metadata, in parts above
//! [`PART_SIZE`]. It is resumable: an object already present with the size and ETag it had, or
//! carrying the `resilience-source-etag` metadata a previous restore wrote, is skipped. Without
//! `overwrite` an existing different object is refused, named, and left as it is.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    Attribute, AttributeValue, Attributes, GetOptions, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, WriteMultipart,
};
use resilience_core::catalog::BackupRecord;
use resilience_core::repo::Repository;
use resilience_core::source::entry::{EntryKind, EntryMeta};
use resilience_core::source::{
    AdapterError, ContentWriter, EntryOrder, EntryReader, Source, SourceDescriptor, SourceEntry,
    SourceMetadata, SourceSession, Target,
};
use serde::Serialize;

use crate::config::{open_store, OpenedStore};
use crate::versions::{
    parse_version_entry_path, version_entry_path, ObjectVersion, VersionLister, VersionsError,
};

/// Objects above this size are written in parts of this size.
pub const PART_SIZE: usize = 8 << 20;
/// Objects a restore writes at once (each large one also sends its parts concurrently).
const WRITES_IN_FLIGHT: usize = 8;
/// `HEAD` requests in flight while listing.
const HEADS_IN_FLIGHT: usize = 16;
/// The user-metadata key a restore records the source object's ETag under.
const SOURCE_ETAG: &str = "resilience-source-etag";

fn key_under(prefix: &str, location: &Path) -> String {
    let full = location.as_ref();
    let rel = if prefix.is_empty() {
        full
    } else {
        full.strip_prefix(prefix)
            .map(|r| r.trim_start_matches('/'))
            .unwrap_or(full)
    };
    percent_encoding::percent_decode_str(rel)
        .decode_utf8_lossy()
        .into_owned()
}

fn path_for(prefix: &str, key: &str) -> Path {
    let mut parts: Vec<String> = Vec::new();
    if !prefix.is_empty() {
        parts.extend(prefix.split('/').map(str::to_owned));
    }
    parts.extend(key.split('/').map(str::to_owned));
    Path::from_iter(parts)
}

/// Backs up the objects under a bucket URL (`s3://bucket/prefix`, `gs://`, `az://`, a local
/// directory, `memory://`).
#[derive(Clone, Debug)]
pub struct BucketSource {
    url: String,
    id: Option<String>,
    versions: bool,
}

impl BucketSource {
    /// The objects under `url`.
    pub fn new(url: impl Into<String>) -> Self {
        BucketSource {
            url: url.into(),
            id: None,
            versions: false,
        }
    }

    /// Also backs up every non-current version and delete marker (S3 buckets with versioning
    /// enabled; anything else is an error when the backup starts), so that an object can be
    /// restored as it was at a given time ([`AsOfPlan`]). See [`crate::versions`] for the layout.
    pub fn with_versions(mut self, versions: bool) -> Self {
        self.versions = versions;
        self
    }

    /// Names the source (default `bucket:` and the URL).
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }
}

#[derive(Default)]
struct Counts {
    objects: AtomicU64,
    bytes: AtomicU64,
    versions: AtomicU64,
    version_bytes: AtomicU64,
}

#[async_trait]
impl Source for BucketSource {
    fn descriptor(&self) -> SourceDescriptor {
        SourceDescriptor {
            id: self
                .id
                .clone()
                .unwrap_or_else(|| format!("bucket:{}", self.url)),
            kind: "bucket".into(),
        }
    }

    async fn start(&self) -> Result<Box<dyn SourceSession>, AdapterError> {
        let lister = if self.versions {
            let lister = VersionLister::new(&self.url)
                .map_err(|e| AdapterError::msg("list versions", self.url.clone(), e.to_string()))?;
            lister
                .check_enabled()
                .await
                .map_err(|e| AdapterError::msg("list versions", self.url.clone(), e.to_string()))?;
            Some(lister)
        } else {
            None
        };
        let opened = open_store(&self.url, false)
            .map_err(|e| AdapterError::msg("open", self.url.clone(), e.to_string()))?;
        let OpenedStore {
            store,
            prefix,
            location,
            local_root,
            ..
        } = opened;
        let list_prefix = (!prefix.is_empty()).then(|| Path::from(prefix.as_str()));
        // Object stores list in byte order; a local directory is walked, sorted, so that its
        // listing has an order too (object_store's own comes in the file system's order).
        let order = if local_root.is_some() {
            EntryOrder::Walk
        } else {
            EntryOrder::Bytes
        };
        let listed = match order {
            EntryOrder::Walk => sorted_walk(store.clone(), prefix.clone(), list_prefix),
            EntryOrder::Bytes => store.list(list_prefix.as_ref()),
        };
        let head_store = store.clone();
        let shown = location.clone();
        let current: BoxStream<'static, Result<Listed, AdapterError>> = listed
            .map_err(move |e| AdapterError::msg("list", shown.clone(), e.to_string()))
            .map_ok(move |meta| {
                let store = head_store.clone();
                async move {
                    let head = store
                        .get_opts(
                            &meta.location,
                            GetOptions {
                                head: true,
                                ..Default::default()
                            },
                        )
                        .await;
                    match head {
                        Ok(r) => Ok(Some(Listed::Current {
                            version: r.meta.version,
                            meta,
                            attributes: r.attributes,
                        })),
                        // Deleted since it was listed: it was not there to back up.
                        Err(object_store::Error::NotFound { .. }) => Ok(None),
                        Err(e) => Err(AdapterError::msg(
                            "HEAD",
                            meta.location.to_string(),
                            e.to_string(),
                        )),
                    }
                }
            })
            .try_buffered(HEADS_IN_FLIGHT)
            .try_filter_map(|x| async move { Ok(x) })
            .boxed();
        let listing = match &lister {
            // Version entries sort after every object (see `versions`): listed after them.
            Some(lister) => current
                .chain(version_listing(lister, store.clone()))
                .boxed(),
            None => current,
        };
        Ok(Box::new(BucketSession {
            store,
            prefix,
            location,
            listing,
            counts: Arc::default(),
            versions: self.versions,
            order,
        }))
    }
}

/// The objects under `root` in a store without an ordered listing (a local directory), in walk
/// order ([`EntryOrder::Walk`]): one directory level listed and sorted at a time, so memory
/// holds the levels on the current path, not the whole tree.
fn sorted_walk(
    store: Arc<dyn ObjectStore>,
    prefix: String,
    root: Option<Path>,
) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
    enum Child {
        Object(ObjectMeta),
        Dir(Path),
    }
    let key = move |child: &Child| match child {
        Child::Object(meta) => key_under(&prefix, &meta.location),
        Child::Dir(dir) => key_under(&prefix, dir),
    };
    let first: Vec<Child> = vec![Child::Dir(root.unwrap_or_default())];
    let levels = vec![first.into_iter()];
    futures::stream::try_unfold(levels, move |mut levels| {
        let store = store.clone();
        let key = key.clone();
        async move {
            loop {
                let Some(level) = levels.last_mut() else {
                    return Ok(None);
                };
                match level.next() {
                    None => {
                        levels.pop();
                    }
                    Some(Child::Object(meta)) => return Ok(Some((meta, levels))),
                    Some(Child::Dir(dir)) => {
                        let under = (!dir.as_ref().is_empty()).then_some(&dir);
                        let found = store.list_with_delimiter(under).await?;
                        let mut children: Vec<Child> = found
                            .objects
                            .into_iter()
                            .map(Child::Object)
                            .chain(found.common_prefixes.into_iter().map(Child::Dir))
                            .collect();
                        children.sort_by_cached_key(&key);
                        levels.push(children.into_iter());
                    }
                }
            }
        }
    })
    .boxed()
}

/// What the listing hands the session: an object, or another version of one.
enum Listed {
    /// A current object, with its attributes (and version id, where the store has versions).
    Current {
        meta: ObjectMeta,
        attributes: Attributes,
        version: Option<String>,
    },
    /// A non-current version or a delete marker; `seq` counts the newer versions of its key.
    Version {
        version: ObjectVersion,
        seq: usize,
        attributes: Attributes,
    },
}

/// The versions of one key, in the server's order (newest first).
fn group_by_key(
    versions: BoxStream<'static, Result<ObjectVersion, VersionsError>>,
) -> BoxStream<'static, Result<Vec<ObjectVersion>, VersionsError>> {
    futures::stream::try_unfold(
        (versions, None::<ObjectVersion>),
        |(mut versions, pending)| async move {
            let mut group: Vec<ObjectVersion> = pending.into_iter().collect();
            loop {
                match versions.try_next().await? {
                    Some(v) if group.first().is_none_or(|g| g.key == v.key) => group.push(v),
                    Some(v) => return Ok(Some((group, (versions, Some(v))))),
                    None if group.is_empty() => return Ok(None),
                    None => return Ok(Some((group, (versions, None)))),
                }
            }
        },
    )
    .boxed()
}

/// Every non-current version and delete marker under the prefix, with its attributes (from a
/// `HEAD` of that version, prefetched), each key's versions in entry-path order.
fn version_listing(
    lister: &VersionLister,
    store: Arc<dyn ObjectStore>,
) -> BoxStream<'static, Result<Listed, AdapterError>> {
    let shown = lister.location().to_owned();
    group_by_key(lister.list())
        .map_err(move |e| AdapterError::msg("list versions", shown.clone(), e.to_string()))
        .map_ok(move |mut group| {
            // Newest first: the current state, then by time; the server's order (newest first
            // on S3) within one second. Some servers (moto) list delete markers after versions.
            group.sort_by_key(|v| (!v.is_latest, std::cmp::Reverse(v.last_modified)));
            let mut others: Vec<(ObjectVersion, usize)> = group
                .into_iter()
                .enumerate()
                .filter(|(_, v)| !v.is_latest || v.delete_marker)
                .map(|(seq, v)| (v, seq))
                .collect();
            others.sort_by(|a, b| {
                version_entry_path("", &a.0.version_id)
                    .cmp(&version_entry_path("", &b.0.version_id))
            });
            futures::stream::iter(others.into_iter().map(Ok))
        })
        .try_flatten()
        .map_ok(move |(version, seq)| {
            let store = store.clone();
            let path = path_for("", &version.key);
            async move {
                if version.delete_marker {
                    return Ok(Some(Listed::Version {
                        version,
                        seq,
                        attributes: Attributes::new(),
                    }));
                }
                let head = store
                    .get_opts(
                        &path,
                        GetOptions {
                            head: true,
                            version: Some(version.version_id.clone()),
                            ..Default::default()
                        },
                    )
                    .await;
                match head {
                    Ok(r) => Ok(Some(Listed::Version {
                        version,
                        seq,
                        attributes: r.attributes,
                    })),
                    // Removed for good since it was listed.
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(AdapterError::msg(
                        "HEAD",
                        format!("{} (version {})", version.key, version.version_id),
                        e.to_string(),
                    )),
                }
            }
        })
        .try_buffered(HEADS_IN_FLIGHT)
        .try_filter_map(|x| async move { Ok(x) })
        .boxed()
}

struct BucketSession {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    location: String,
    listing: BoxStream<'static, Result<Listed, AdapterError>>,
    counts: Arc<Counts>,
    versions: bool,
    order: EntryOrder,
}

/// The attributes an object carries into its entry.
fn entry_attrs(meta: &ObjectMeta, attributes: &Attributes) -> BTreeMap<String, String> {
    let mut attrs = BTreeMap::new();
    if let Some(e) = &meta.e_tag {
        attrs.insert("etag".into(), e.clone());
    }
    attrs.insert("last_modified".into(), meta.last_modified.to_rfc3339());
    for (k, v) in attributes.iter() {
        let name = match k {
            Attribute::ContentType => "content_type".to_owned(),
            Attribute::ContentEncoding => "content_encoding".to_owned(),
            Attribute::ContentDisposition => "content_disposition".to_owned(),
            Attribute::ContentLanguage => "content_language".to_owned(),
            Attribute::CacheControl => "cache_control".to_owned(),
            Attribute::Metadata(m) if m == SOURCE_ETAG => continue,
            Attribute::Metadata(m) => format!("meta.{m}"),
            _ => continue,
        };
        attrs.insert(name, v.as_ref().to_owned());
    }
    attrs
}

/// The object attributes an entry's attributes describe.
fn object_attributes(attrs: &BTreeMap<String, String>) -> Attributes {
    let mut out = Attributes::new();
    for (k, v) in attrs {
        let key = match k.as_str() {
            "content_type" => Attribute::ContentType,
            "content_encoding" => Attribute::ContentEncoding,
            "content_disposition" => Attribute::ContentDisposition,
            "content_language" => Attribute::ContentLanguage,
            "cache_control" => Attribute::CacheControl,
            other => match other.strip_prefix("meta.") {
                Some(m) => Attribute::Metadata(m.to_owned().into()),
                None => continue,
            },
        };
        out.insert(key, AttributeValue::from(v.clone()));
    }
    if let Some(etag) = attrs.get("etag") {
        out.insert(
            Attribute::Metadata(SOURCE_ETAG.into()),
            AttributeValue::from(etag.clone()),
        );
    }
    out
}

impl BucketSession {
    /// The body of an object (or of one version of it), read only when the engine asks.
    fn reader(&self, location: Path, version: Option<String>) -> EntryReader {
        let store = self.store.clone();
        let shown = match &version {
            Some(v) => format!("{location} (version {v})"),
            None => location.to_string(),
        };
        let body = futures::stream::once(async move {
            let r = store
                .get_opts(
                    &location,
                    GetOptions {
                        version,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| std::io::Error::other(format!("GET {shown}: {e}")))?;
            Ok::<_, std::io::Error>(r.into_stream().map_err(std::io::Error::other))
        })
        .try_flatten();
        Box::pin(tokio_util::io::StreamReader::new(Box::pin(body)))
    }

    /// The entry of a non-current version or a delete marker.
    fn version_entry(
        &self,
        version: ObjectVersion,
        seq: usize,
        attributes: Attributes,
    ) -> SourceEntry {
        let key = match self.prefix.as_str() {
            "" => version.key.clone(),
            p => version
                .key
                .strip_prefix(p)
                .map(|k| k.trim_start_matches('/').to_owned())
                .unwrap_or_else(|| version.key.clone()),
        };
        self.counts.versions.fetch_add(1, Ordering::Relaxed);
        let meta = ObjectMeta {
            location: path_for("", &version.key),
            last_modified: version.last_modified,
            size: version.size,
            e_tag: version.etag.clone(),
            version: Some(version.version_id.clone()),
        };
        let mut attrs = entry_attrs(&meta, &attributes);
        attrs.insert("key".into(), key.clone());
        attrs.insert("version_id".into(), version.version_id.clone());
        attrs.insert("is_latest".into(), version.is_latest.to_string());
        attrs.insert("version_seq".into(), seq.to_string());
        let path = version_entry_path(&key, &version.version_id);
        let entry = |size, fingerprint: String, attrs| EntryMeta {
            mode: 0o100644,
            mtime_ns: version.last_modified.timestamp_nanos_opt(),
            // A version id never changes content: the same id is never read again.
            fingerprint: Some(fingerprint),
            attrs,
            ..EntryMeta::file(path.clone(), size)
        };
        if version.delete_marker {
            attrs.insert("delete_marker".into(), "true".into());
            attrs.remove("etag");
            return SourceEntry {
                meta: entry(0, format!("delete-marker:{}", version.version_id), attrs),
                content: Some(Box::pin(tokio::io::empty())),
            };
        }
        self.counts
            .version_bytes
            .fetch_add(version.size, Ordering::Relaxed);
        SourceEntry {
            meta: entry(
                version.size,
                format!("version:{}:{}", version.version_id, version.size),
                attrs,
            ),
            content: Some(self.reader(meta.location, Some(version.version_id))),
        }
    }
}

#[async_trait]
impl SourceSession for BucketSession {
    fn entry_order(&self) -> EntryOrder {
        self.order
    }

    async fn next_entry(&mut self) -> Result<Option<SourceEntry>, AdapterError> {
        let Some(listed) = self.listing.try_next().await? else {
            return Ok(None);
        };
        let (meta, attributes, version) = match listed {
            Listed::Current {
                meta,
                attributes,
                version,
            } => (meta, attributes, version),
            Listed::Version {
                version,
                seq,
                attributes,
            } => return Ok(Some(self.version_entry(version, seq, attributes))),
        };
        let key = key_under(&self.prefix, &meta.location);
        self.counts.objects.fetch_add(1, Ordering::Relaxed);
        self.counts.bytes.fetch_add(meta.size, Ordering::Relaxed);
        let mut attrs = entry_attrs(&meta, &attributes);
        if self.versions {
            if let Some(v) = version {
                attrs.insert("version_id".into(), v);
            }
            attrs.insert("is_latest".into(), "true".into());
        }
        let entry = EntryMeta {
            mode: 0o100644,
            mtime_ns: meta.last_modified.timestamp_nanos_opt(),
            // Unchanged when its size and ETag are: then it is not read again.
            fingerprint: meta.e_tag.as_ref().map(|e| format!("{}:{e}", meta.size)),
            attrs,
            ..EntryMeta::file(key.into_bytes(), meta.size)
        };
        let content = self.reader(meta.location.clone(), None);
        Ok(Some(SourceEntry {
            meta: entry,
            content: Some(content),
        }))
    }

    async fn finish(&mut self) -> Result<SourceMetadata, AdapterError> {
        let mut m = SourceMetadata::new();
        m.insert("url".into(), self.location.clone().into());
        m.insert(
            "objects".into(),
            self.counts.objects.load(Ordering::Relaxed).into(),
        );
        m.insert(
            "bytes".into(),
            self.counts.bytes.load(Ordering::Relaxed).into(),
        );
        if self.versions {
            m.insert("versions".into(), true.into());
            m.insert(
                "other_versions".into(),
                self.counts.versions.load(Ordering::Relaxed).into(),
            );
            m.insert(
                "other_version_bytes".into(),
                self.counts.version_bytes.load(Ordering::Relaxed).into(),
            );
        }
        Ok(m)
    }
}

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

/// How a bucket restore treats what is already there.
#[derive(Clone, Debug, Default)]
pub struct BucketRestoreOptions {
    /// Replace existing objects that differ (else they are refused and named).
    pub overwrite: bool,
    /// Only objects whose key starts with this.
    pub prefix: Option<String>,
    /// Restore each object as it was at a time (a snapshot taken with versions), rather than
    /// the current objects.
    pub as_of: Option<Arc<AsOfPlan>>,
}

/// What a bucket restore did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BucketTally {
    /// Objects written.
    pub written: u64,
    /// Their bytes.
    pub written_bytes: u64,
    /// Objects already there, identical (a resumed restore).
    pub skipped: u64,
    /// Objects left out by the prefix.
    pub filtered: u64,
    /// Existing different objects not replaced (without `overwrite`).
    pub refused: Vec<String>,
    /// Versions in the snapshot not restored: not the one of their key at the `as_of` time, or
    /// (without `as_of`) any non-current version or delete marker.
    pub other_versions: u64,
    /// With `as_of`: keys deleted at that time (their newest version then is a delete marker),
    /// so not restored.
    pub deleted: Vec<String>,
    /// With `as_of`: keys not yet written at that time, so not restored.
    pub not_yet_created: u64,
}

/// Restores objects into a bucket URL.
pub struct BucketTarget {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    location: String,
    options: BucketRestoreOptions,
    tally: Arc<Mutex<BucketTally>>,
    /// A local directory: it stores no attributes (object_store's local file system refuses
    /// puts that carry any), so objects are written without them.
    local: bool,
    uploads: Uploads,
}

impl BucketTarget {
    /// A target writing under `url`. A local directory (a path or `file://`) keeps the objects
    /// only: content types and user metadata are not written there.
    pub fn new(url: &str, options: BucketRestoreOptions) -> Result<Self, crate::StoreConfigError> {
        let opened = open_store(url, true)?;
        let tally = BucketTally {
            deleted: options
                .as_of
                .as_ref()
                .map(|p| p.deleted.clone())
                .unwrap_or_default(),
            not_yet_created: options.as_of.as_ref().map_or(0, |p| p.not_yet_created),
            ..Default::default()
        };
        Ok(BucketTarget {
            local: opened.local_root.is_some(),
            store: opened.store,
            prefix: opened.prefix,
            location: opened.location,
            options,
            tally: Arc::new(Mutex::new(tally)),
            uploads: Uploads::new(),
        })
    }

    /// What the restore did (complete once it returned).
    pub fn tally(&self) -> BucketTally {
        self.tally.lock().expect("tally lock").clone()
    }
}

impl BucketTarget {
    /// The key an entry restores to, if it is the one chosen for its key (the current object,
    /// or with `as_of` the version current then) and within the prefix; else tallies why not.
    fn chosen_key(&self, meta: &EntryMeta) -> Option<String> {
        let chosen = match &self.options.as_of {
            Some(plan) => plan.chosen.contains(meta.path.as_bytes()),
            // Without a time, the current objects (as they were at the backup).
            None => parse_version_entry_path(meta.path.as_bytes()).is_none(),
        };
        if !chosen {
            self.tally.lock().expect("tally lock").other_versions += 1;
            return None;
        }
        let key = Self::key_of(meta);
        if let Some(p) = &self.options.prefix {
            if !key.starts_with(p.as_str()) {
                self.tally.lock().expect("tally lock").filtered += 1;
                return None;
            }
        }
        Some(key)
    }

    /// The key an entry restores to (whichever version it is).
    fn key_of(meta: &EntryMeta) -> String {
        match parse_version_entry_path(meta.path.as_bytes()) {
            Some((key, _)) => key,
            None => String::from_utf8_lossy(meta.path.as_bytes()).into_owned(),
        }
    }
}

#[async_trait]
impl Target for BucketTarget {
    /// Decides before anything is read: objects of other versions, outside the prefix, already
    /// there and identical, or different and not to be replaced are declined (and tallied), so
    /// a resumed or filtered restore reads only what it writes.
    async fn wants(&self, meta: &EntryMeta) -> Result<bool, AdapterError> {
        if meta.kind != EntryKind::File {
            return Ok(false);
        }
        let Some(key) = self.chosen_key(meta) else {
            return Ok(false);
        };
        let path = path_for(&self.prefix, &key);
        let existing = self
            .store
            .get_opts(
                &path,
                GetOptions {
                    head: true,
                    ..Default::default()
                },
            )
            .await;
        match existing {
            Err(object_store::Error::NotFound { .. }) => Ok(true),
            Err(e) => Err(AdapterError::msg("HEAD", path.to_string(), e.to_string())),
            Ok(found) => {
                let source_etag = meta.attrs.get("etag");
                let same = found.meta.size == meta.size
                    && source_etag.is_some()
                    && (found.meta.e_tag.as_ref() == source_etag
                        || found
                            .attributes
                            .get(&Attribute::Metadata(SOURCE_ETAG.into()))
                            .map(|v| v.as_ref())
                            == source_etag.map(String::as_str));
                let mut tally = self.tally.lock().expect("tally lock");
                if same {
                    tally.skipped += 1;
                    Ok(false)
                } else if !self.options.overwrite {
                    tally.refused.push(key);
                    Ok(false)
                } else {
                    Ok(true)
                }
            }
        }
    }

    /// Writes a wanted object; its upload finishes in the background, up to
    /// [`WRITES_IN_FLIGHT`] at once, and `finish` waits for all of them.
    async fn create(
        &self,
        meta: &EntryMeta,
    ) -> Result<Option<Box<dyn ContentWriter>>, AdapterError> {
        if meta.kind != EntryKind::File {
            return Ok(None);
        }
        let path = path_for(&self.prefix, &Self::key_of(meta));
        Ok(Some(Box::new(ObjectWriter {
            store: self.store.clone(),
            path,
            attributes: if self.local {
                Attributes::new()
            } else {
                object_attributes(&meta.attrs)
            },
            buffer: Vec::new(),
            upload: None,
            written: 0,
            tally: self.tally.clone(),
            uploads: self.uploads.clone(),
        })))
    }

    async fn apply_metadata(&self, _meta: &EntryMeta) -> Result<(), AdapterError> {
        Ok(())
    }

    /// Waits for every upload, then fails if any object was refused. The refused keys are
    /// sorted (objects are looked at several at a time, so they are found in no fixed order):
    /// the report and the error are the same on every run, and the error names the first
    /// few in key order.
    async fn finish(&self) -> Result<(), AdapterError> {
        self.uploads.wait_all().await?;
        let t = {
            let mut tally = self.tally.lock().expect("tally lock");
            tally.refused.sort_unstable();
            tally.clone()
        };
        let Some(first) = t.refused.first() else {
            return Ok(());
        };
        let more = match t.refused.len() {
            1 => String::new(),
            n => {
                let named: Vec<&str> = t.refused[1..].iter().take(4).map(String::as_str).collect();
                let rest = n - 1 - named.len();
                let tail = if rest > 0 {
                    format!(" and {rest} more")
                } else {
                    String::new()
                };
                format!(" (also refused: {}{tail})", named.join(", "))
            }
        };
        Err(AdapterError::msg(
            "restore",
            format!("{}/{first}", self.location.trim_end_matches('/')),
            format!(
                "exists with different content; {} object(s) not replaced{more} (give --overwrite to replace them), {} written, {} already identical",
                t.refused.len(),
                t.written,
                t.skipped
            ),
        ))
    }
}

/// Object uploads finishing in the background, at most [`WRITES_IN_FLIGHT`] at once: many
/// small objects are written side by side rather than one round trip after another.
#[derive(Clone)]
struct Uploads {
    slots: Arc<tokio::sync::Semaphore>,
    running: Arc<Mutex<tokio::task::JoinSet<Result<(), AdapterError>>>>,
}

impl Uploads {
    fn new() -> Self {
        Uploads {
            slots: Arc::new(tokio::sync::Semaphore::new(WRITES_IN_FLIGHT)),
            running: Arc::default(),
        }
    }

    /// Waits for a free slot, reports the first failure among finished uploads, and starts
    /// `upload`.
    async fn start(
        &self,
        upload: impl std::future::Future<Output = Result<(), AdapterError>> + Send + 'static,
    ) -> Result<(), AdapterError> {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let mut running = self.running.lock().expect("uploads lock");
        while let Some(done) = running.try_join_next() {
            done.map_err(upload_task_failed)??;
        }
        running.spawn(async move {
            let _slot = slot;
            upload.await
        });
        Ok(())
    }

    /// Waits for every upload, returning the first failure.
    async fn wait_all(&self) -> Result<(), AdapterError> {
        let mut running = std::mem::take(&mut *self.running.lock().expect("uploads lock"));
        while let Some(done) = running.join_next().await {
            done.map_err(upload_task_failed)??;
        }
        Ok(())
    }
}

fn upload_task_failed(e: tokio::task::JoinError) -> AdapterError {
    AdapterError::msg("write", "an object", format!("upload task failed: {e}"))
}

struct ObjectWriter {
    store: Arc<dyn ObjectStore>,
    path: Path,
    attributes: Attributes,
    buffer: Vec<u8>,
    upload: Option<WriteMultipart>,
    written: u64,
    tally: Arc<Mutex<BucketTally>>,
    uploads: Uploads,
}

impl ObjectWriter {
    fn err(&self, e: impl std::fmt::Display) -> AdapterError {
        AdapterError::msg("write", self.path.to_string(), e.to_string())
    }

    /// Sends what is buffered (or finishes the multipart upload) and counts the object.
    async fn finish_upload(mut self) -> Result<(), AdapterError> {
        match self.upload.take() {
            Some(upload) => {
                upload.finish().await.map_err(|e| self.err(e))?;
            }
            None => {
                let opts = PutOptions {
                    attributes: self.attributes.clone(),
                    ..Default::default()
                };
                let body = Bytes::from(std::mem::take(&mut self.buffer));
                self.store
                    .put_opts(&self.path, body.into(), opts)
                    .await
                    .map_err(|e| self.err(e))?;
            }
        }
        let mut t = self.tally.lock().expect("tally lock");
        t.written += 1;
        t.written_bytes += self.written;
        Ok(())
    }
}

#[async_trait]
impl ContentWriter for ObjectWriter {
    async fn write(&mut self, data: Bytes) -> Result<(), AdapterError> {
        self.written += data.len() as u64;
        if let Some(upload) = &mut self.upload {
            let waited = upload.wait_for_capacity(2).await;
            upload.put(data);
            return waited.map_err(|e| self.err(e));
        }
        self.buffer.extend_from_slice(&data);
        if self.buffer.len() > PART_SIZE {
            let opts = PutMultipartOptions {
                attributes: self.attributes.clone(),
                ..Default::default()
            };
            let upload = self
                .store
                .put_multipart_opts(&self.path, opts)
                .await
                .map_err(|e| self.err(e))?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            w.put(Bytes::from(std::mem::take(&mut self.buffer)));
            self.upload = Some(w);
        }
        Ok(())
    }

    async fn complete(self: Box<Self>) -> Result<(), AdapterError> {
        let uploads = self.uploads.clone();
        uploads.start(self.finish_upload()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys whose walk order differs from their byte order (`logs-old`, `logs.txt`, `logs/`).
    const ODD_ORDER: [&str; 6] = [
        "logs-old/1",
        "logs.txt",
        "logs/a",
        "logs/b/c",
        "logs0",
        "z z/ünï",
    ];

    fn odd_order_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (i, key) in ODD_ORDER.iter().enumerate() {
            let path = dir.path().join(key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, vec![i as u8; 10 + i]).unwrap();
        }
        dir
    }

    #[tokio::test]
    async fn a_local_directory_is_listed_in_walk_order() {
        let dir = odd_order_dir();
        let store: Arc<dyn ObjectStore> =
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let keys: Vec<String> = sorted_walk(store, String::new(), None)
            .map_ok(|meta| key_under("", &meta.location))
            .try_collect()
            .await
            .unwrap();
        let mut walk: Vec<&str> = ODD_ORDER.to_vec();
        walk.sort_by(|a, b| {
            resilience_core::source::entry::EntryPath::from(*a)
                .walk_cmp(&resilience_core::source::entry::EntryPath::from(*b))
        });
        assert_eq!(keys, walk);
        assert_ne!(walk, ODD_ORDER, "the walk differs from byte order");
    }

    #[tokio::test]
    async fn an_unchanged_local_directory_is_not_read_again() {
        let dir = odd_order_dir();
        let sink: Arc<dyn resilience_core::sink::Sink> =
            Arc::new(resilience_core::sink::MemorySink::new());
        let repo = Repository::init(
            sink,
            &resilience_core::keys::KeyFileProvider::from_key([7; 32]),
            Default::default(),
        )
        .await
        .unwrap();
        let source = BucketSource::new(dir.path().display().to_string());
        let first = repo.backup(&source, Default::default()).await.unwrap();
        assert_eq!(first.reused_entries, 0);
        let again = repo.backup(&source, Default::default()).await.unwrap();
        assert_eq!(again.reused_entries, ODD_ORDER.len() as u64);
    }

    #[tokio::test]
    async fn a_filtered_or_refused_restore_reads_only_what_it_writes() {
        let dir = tempfile::tempdir().unwrap();
        for (key, len) in [("big/a", 3 << 20), ("big/b", 3 << 20), ("small", 100)] {
            let path = dir.path().join(key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(
                path,
                resilience_core::testing::pseudo_random(len, len as u64),
            )
            .unwrap();
        }
        let counting = Arc::new(resilience_core::testing::FaultySink::new(
            resilience_core::sink::MemorySink::new(),
            -1,
        ));
        let repo = Repository::init(
            counting.clone(),
            &resilience_core::keys::KeyFileProvider::from_key([7; 32]),
            Default::default(),
        )
        .await
        .unwrap();
        let source = BucketSource::new(dir.path().display().to_string());
        repo.backup(&source, Default::default()).await.unwrap();
        let out = tempfile::tempdir().unwrap();
        let url = out.path().display().to_string();
        let restore = |options: BucketRestoreOptions| {
            let (repo, counting, url) = (repo.clone(), counting.clone(), url.clone());
            async move {
                let target = BucketTarget::new(&url, options).unwrap();
                let before = counting.range_bytes_read();
                let done = repo.restore("latest", &target, Default::default()).await;
                (
                    done.map(|_| ()),
                    target.tally(),
                    counting.range_bytes_read() - before,
                )
            }
        };

        let (done, first, read) = restore(Default::default()).await;
        done.unwrap();
        assert_eq!(first.written, 3);
        assert!(read > 6 << 20, "{read}");

        // Everything in the way (a local directory keeps no ETag to prove it identical, so
        // each is refused): nothing is read.
        // The refused objects are found several at a time, in no fixed order; the report
        // sorts them and the error names them in that order, the same on every run.
        let (done, again, read) = restore(Default::default()).await;
        let err = done.unwrap_err().to_string();
        assert!(
            err.contains("/big/a failed: exists with different content; 3 object(s) not replaced (also refused: big/b, small)"),
            "{err}"
        );
        assert_eq!(again.written, 0);
        assert_eq!(again.refused, ["big/a", "big/b", "small"]);
        assert!(
            read < 1 << 20,
            "a restore that writes nothing read {read} bytes"
        );

        std::fs::remove_file(out.path().join("small")).unwrap();
        let only_small = BucketRestoreOptions {
            prefix: Some("sm".into()),
            ..Default::default()
        };
        let (done, filtered, read) = restore(only_small).await;
        done.unwrap();
        assert_eq!((filtered.written, filtered.filtered), (1, 2));
        assert!(read < 1 << 20, "a filtered restore read {read} bytes");
        assert_eq!(
            std::fs::read(out.path().join("small")).unwrap(),
            resilience_core::testing::pseudo_random(100, 100)
        );
    }

    #[test]
    fn keys_and_paths() {
        let p = path_for("backups/x", "a b/ünï/c.txt");
        assert_eq!(key_under("backups/x", &p), "a b/ünï/c.txt");
        assert_eq!(key_under("", &path_for("", "k")), "k");
    }

    #[test]
    fn attributes_round_trip_through_entries() {
        let mut a = Attributes::new();
        a.insert(Attribute::ContentType, "text/csv".into());
        a.insert(Attribute::Metadata("owner".into()), "billing".into());
        let meta = ObjectMeta {
            location: Path::from("k"),
            last_modified: chrono::Utc::now(),
            size: 3,
            e_tag: Some("\"abc\"".into()),
            version: None,
        };
        let attrs = entry_attrs(&meta, &a);
        assert_eq!(attrs["content_type"], "text/csv");
        assert_eq!(attrs["meta.owner"], "billing");
        let back = object_attributes(&attrs);
        assert_eq!(
            back.get(&Attribute::ContentType).unwrap().as_ref(),
            "text/csv"
        );
        assert_eq!(
            back.get(&Attribute::Metadata(SOURCE_ETAG.into()))
                .unwrap()
                .as_ref(),
            "\"abc\""
        );
    }
}
