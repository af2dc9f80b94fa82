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

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    Attribute, AttributeValue, Attributes, GetOptions, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, WriteMultipart,
};
use resilience_core::entry::{EntryKind, EntryMeta};
use resilience_core::source::{
    AdapterError, ContentWriter, DiscardWriter, EntryReader, Source, SourceDescriptor, SourceEntry,
    SourceMetadata, SourceSession, Target,
};
use serde::Serialize;

use crate::config::{open_store, OpenedStore};

/// Objects above this size are written in parts of this size.
pub const PART_SIZE: usize = 8 << 20;
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
}

impl BucketSource {
    /// The objects under `url`.
    pub fn new(url: impl Into<String>) -> Self {
        BucketSource {
            url: url.into(),
            id: None,
        }
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
        let opened = open_store(&self.url, false)
            .map_err(|e| AdapterError::msg("open", self.url.clone(), e.to_string()))?;
        let OpenedStore {
            store,
            prefix,
            location,
            ..
        } = opened;
        let list_prefix = (!prefix.is_empty()).then(|| Path::from(prefix.as_str()));
        let head_store = store.clone();
        let shown = location.clone();
        let listing: BoxStream<'static, Result<(ObjectMeta, Attributes), AdapterError>> = store
            .list(list_prefix.as_ref())
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
                        Ok(r) => Ok(Some((meta, r.attributes))),
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
        Ok(Box::new(BucketSession {
            store,
            prefix,
            location,
            listing,
            counts: Arc::default(),
        }))
    }
}

struct BucketSession {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    location: String,
    listing: BoxStream<'static, Result<(ObjectMeta, Attributes), AdapterError>>,
    counts: Arc<Counts>,
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

#[async_trait]
impl SourceSession for BucketSession {
    async fn next_entry(&mut self) -> Result<Option<SourceEntry>, AdapterError> {
        let Some((meta, attributes)) = self.listing.try_next().await? else {
            return Ok(None);
        };
        let key = key_under(&self.prefix, &meta.location);
        self.counts.objects.fetch_add(1, Ordering::Relaxed);
        self.counts.bytes.fetch_add(meta.size, Ordering::Relaxed);
        let entry = EntryMeta {
            mode: 0o100644,
            mtime_ns: meta.last_modified.timestamp_nanos_opt(),
            // Unchanged when its size and ETag are: then it is not read again.
            fingerprint: meta.e_tag.as_ref().map(|e| format!("{}:{e}", meta.size)),
            attrs: entry_attrs(&meta, &attributes),
            ..EntryMeta::file(key.into_bytes(), meta.size)
        };
        let store = self.store.clone();
        let location = meta.location.clone();
        let shown = location.to_string();
        let body = futures::stream::once(async move {
            let r = store
                .get(&location)
                .await
                .map_err(|e| std::io::Error::other(format!("GET {shown}: {e}")))?;
            Ok::<_, std::io::Error>(r.into_stream().map_err(std::io::Error::other))
        })
        .try_flatten();
        let content: EntryReader = Box::pin(tokio_util::io::StreamReader::new(Box::pin(body)));
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
        Ok(m)
    }
}

/// How a bucket restore treats what is already there.
#[derive(Clone, Debug, Default)]
pub struct BucketRestoreOptions {
    /// Replace existing objects that differ (else they are refused and named).
    pub overwrite: bool,
    /// Only objects whose key starts with this.
    pub prefix: Option<String>,
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
}

impl BucketTarget {
    /// A target writing under `url`. A local directory (a path or `file://`) keeps the objects
    /// only: content types and user metadata are not written there.
    pub fn new(url: &str, options: BucketRestoreOptions) -> Result<Self, crate::StoreConfigError> {
        let opened = open_store(url, true)?;
        Ok(BucketTarget {
            local: opened.local_root.is_some(),
            store: opened.store,
            prefix: opened.prefix,
            location: opened.location,
            options,
            tally: Arc::default(),
        })
    }

    /// What the restore did (complete once it returned).
    pub fn tally(&self) -> BucketTally {
        self.tally.lock().expect("tally lock").clone()
    }
}

#[async_trait]
impl Target for BucketTarget {
    async fn create(
        &self,
        meta: &EntryMeta,
    ) -> Result<Option<Box<dyn ContentWriter>>, AdapterError> {
        if meta.kind != EntryKind::File {
            return Ok(None);
        }
        let key = String::from_utf8_lossy(meta.path.as_bytes()).into_owned();
        if let Some(p) = &self.options.prefix {
            if !key.starts_with(p.as_str()) {
                self.tally.lock().expect("tally lock").filtered += 1;
                return Ok(Some(Box::new(DiscardWriter)));
            }
        }
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
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(AdapterError::msg("HEAD", path.to_string(), e.to_string())),
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
                if same {
                    self.tally.lock().expect("tally lock").skipped += 1;
                    return Ok(Some(Box::new(DiscardWriter)));
                }
                if !self.options.overwrite {
                    self.tally
                        .lock()
                        .expect("tally lock")
                        .refused
                        .push(key.clone());
                    return Ok(Some(Box::new(DiscardWriter)));
                }
            }
        }
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
        })))
    }

    async fn apply_metadata(&self, _meta: &EntryMeta) -> Result<(), AdapterError> {
        Ok(())
    }

    async fn finish(&self) -> Result<(), AdapterError> {
        let t = self.tally();
        match t.refused.first() {
            None => Ok(()),
            Some(first) => Err(AdapterError::msg(
                "restore",
                format!("{}/{first}", self.location.trim_end_matches('/')),
                format!(
                    "exists with different content; {} object(s) not replaced (give --overwrite to replace them), {} written, {} already identical",
                    t.refused.len(),
                    t.written,
                    t.skipped
                ),
            )),
        }
    }
}

struct ObjectWriter {
    store: Arc<dyn ObjectStore>,
    path: Path,
    attributes: Attributes,
    buffer: Vec<u8>,
    upload: Option<WriteMultipart>,
    written: u64,
    tally: Arc<Mutex<BucketTally>>,
}

impl ObjectWriter {
    fn err(&self, e: impl std::fmt::Display) -> AdapterError {
        AdapterError::msg("write", self.path.to_string(), e.to_string())
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

    async fn complete(mut self: Box<Self>) -> Result<(), AdapterError> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
