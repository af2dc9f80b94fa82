//! The bucket as a [`Source`]: [`BucketSource`] opens the store and its listing, and its
//! session turns each listed object (or other version) into an entry whose body is read only
//! when the engine asks for it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{Attributes, GetOptions, ObjectStore};
use resilience_core::source::entry::EntryMeta;
use resilience_core::source::{
    AdapterError, EntryOrder, EntryReader, Source, SourceDescriptor, SourceEntry, SourceMetadata,
    SourceSession,
};

use super::attributes::entry_attrs;
use super::key_under;
use super::listing::{exact_listing, object_listing, version_listing, Listed};
use crate::config::{open_bucket_store, OpenedStore};
use crate::exact::ExactStore;
use crate::versions::{version_entry_path, ObjectVersion, VersionLister};

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
    /// restored as it was at a given time ([`AsOfPlan`](super::AsOfPlan)). See [`crate::versions`]
    /// for the layout.
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

/// What a session has listed, for the snapshot's source metadata.
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
        let opened = open_bucket_store(&self.url, false)
            .map_err(|e| AdapterError::msg("open", self.url.clone(), e.to_string()))?;
        let OpenedStore {
            store,
            prefix,
            location,
            local_root,
            ..
        } = opened;
        // Object stores list in byte order; a local directory is walked, sorted, so that its
        // listing has an order too (object_store's own comes in the file system's order).
        let order = if local_root.is_some() {
            EntryOrder::Walk
        } else {
            EntryOrder::Bytes
        };
        // S3, GCS and Azure buckets are listed and read by exact key: object_store cannot name every
        // key.
        let exact = ExactStore::for_url(&self.url)
            .map_err(|e| AdapterError::msg("open", self.url.clone(), e.to_string()))?;
        let current = match &exact {
            Some(s3) => exact_listing(s3.clone(), &prefix),
            None => object_listing(store.clone(), &prefix, &location, order),
        };
        let listing = match (&lister, &exact) {
            // Version entries sort after every object (see `versions`): listed after them.
            (Some(lister), Some(s3)) => current.chain(version_listing(lister, s3.clone())).boxed(),
            _ => current,
        };
        Ok(Box::new(BucketSession {
            store,
            exact,
            prefix,
            location,
            listing,
            counts: Arc::default(),
            versions: self.versions,
            order,
        }))
    }
}

/// One backup's pass over the bucket: the listing, and what it has counted.
struct BucketSession {
    store: Arc<dyn ObjectStore>,
    /// A cloud bucket's requests by exact key (then `store` is not read).
    exact: Option<ExactStore>,
    prefix: String,
    location: String,
    listing: BoxStream<'static, Result<Listed, AdapterError>>,
    counts: Arc<Counts>,
    versions: bool,
    order: EntryOrder,
}

impl BucketSession {
    /// The body of the object `key` (or of one version of it), read only when the engine asks.
    fn reader(&self, key: String, version: Option<String>) -> EntryReader {
        let store = self.store.clone();
        let exact = self.exact.clone();
        let shown = match &version {
            Some(v) => format!("{key} (version {v})"),
            None => key.clone(),
        };
        let body = futures::stream::once(async move {
            let failed = |e: String| std::io::Error::other(format!("GET {shown}: {e}"));
            if let Some(exact) = exact {
                return match exact.get(&key, version.as_deref()).await {
                    Ok(Some(body)) => Ok(body),
                    Ok(None) => Err(failed("not found (deleted since it was listed)".into())),
                    Err(e) => Err(failed(e)),
                };
            }
            // The key of an object object_store listed: its own path's text.
            let location = Path::parse(&key).map_err(|e| failed(e.to_string()))?;
            let r = store
                .get_opts(
                    &location,
                    GetOptions {
                        version,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| failed(e.to_string()))?;
            Ok::<_, std::io::Error>(r.into_stream().map_err(std::io::Error::other).boxed())
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
    ) -> Result<SourceEntry, AdapterError> {
        let key = match self.prefix.as_str() {
            "" => version.key.clone(),
            p => version
                .key
                .strip_prefix(p)
                .map(|k| k.strip_prefix('/').unwrap_or(k).to_owned())
                .unwrap_or_else(|| version.key.clone()),
        };
        self.counts.versions.fetch_add(1, Ordering::Relaxed);
        let mut attrs = entry_attrs(version.etag.as_ref(), version.last_modified, &attributes);
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
            return Ok(SourceEntry {
                meta: entry(0, format!("delete-marker:{}", version.version_id), attrs),
                content: Some(Box::pin(tokio::io::empty())),
            });
        }
        self.counts
            .version_bytes
            .fetch_add(version.size, Ordering::Relaxed);
        Ok(SourceEntry {
            meta: entry(
                version.size,
                format!("version:{}:{}", version.version_id, version.size),
                attrs,
            ),
            content: Some(self.reader(version.key.clone(), Some(version.version_id.clone()))),
        })
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
        let object = match listed {
            Listed::Current(object) => object,
            Listed::Version {
                version,
                seq,
                attributes,
            } => return self.version_entry(version, seq, attributes).map(Some),
        };
        let key = key_under(&self.prefix, &object.key);
        self.counts.objects.fetch_add(1, Ordering::Relaxed);
        self.counts.bytes.fetch_add(object.size, Ordering::Relaxed);
        let mut attrs = entry_attrs(
            object.e_tag.as_ref(),
            object.last_modified,
            &object.attributes,
        );
        if self.versions {
            if let Some(v) = &object.version {
                attrs.insert("version_id".into(), v.clone());
            }
            attrs.insert("is_latest".into(), "true".into());
        }
        let entry = EntryMeta {
            mode: 0o100644,
            mtime_ns: object.last_modified.timestamp_nanos_opt(),
            // Unchanged when its size and ETag are: then it is not read again.
            fingerprint: object
                .e_tag
                .as_ref()
                .map(|e| format!("{}:{e}", object.size)),
            attrs,
            ..EntryMeta::file(key.into_bytes(), object.size)
        };
        let content = self.reader(object.key, None);
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

#[cfg(test)]
mod tests {
    use resilience_core::repo::Repository;

    use super::super::listing::tests::{odd_order_dir, ODD_ORDER};
    use super::*;

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
}
