//! The [`Sink`] over `object_store`: keys under a prefix, errors named, puts made durable on
//! a local file system, copies proven by ETags. How a body is uploaded is `upload`; the ETag
//! arithmetic `etag`.

mod durable;
mod etag;
mod lock;
mod space;
mod unfinished;
mod upload;

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};
use resilience_core::sink::{
    ByteStream, Copied, ObjectMeta, PutMode, Retention, Sink, SinkError, UnfinishedUpload,
};

pub use self::durable::{Fsync, LocalSync};
use self::etag::{is_md5, normalize_etag, PartDigests};
use self::upload::{PART_SIZE, SINGLE_PUT_MAX};
use crate::streaming_put::{StreamingPut, SINGLE_PUT_LIMIT};

/// How many times a listing broken off by the store or the connection is resumed.
const LIST_RESUMES: u32 = 3;

/// A [`Sink`] over an [`ObjectStore`], with an optional key prefix.
///
/// ```
/// use std::sync::Arc;
/// use resilience_objstore::ObjectStoreSink;
/// let sink = ObjectStoreSink::new(Arc::new(object_store::memory::InMemory::new()), "", "memory://");
/// ```
#[derive(Debug, Clone)]
pub struct ObjectStoreSink {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    location: String,
    local_root: Option<PathBuf>,
    /// How a local store's writes are synced ([`Fsync`] unless a test records them).
    local_sync: Arc<dyn LocalSync>,
    put_attributes: object_store::Attributes,
    /// Streamed single `PUT`s for copies, where the store is S3.
    streaming_put: Option<StreamingPut>,
    /// Whether the bucket can hold retentions, checked before the first one is set
    /// ([`lock`]).
    lock_checked: Arc<tokio::sync::OnceCell<Result<(), String>>>,
}

impl ObjectStoreSink {
    /// Every object written carries these attributes (a storage class for a cold tier).
    pub fn with_put_attributes(mut self, attributes: object_store::Attributes) -> Self {
        self.put_attributes = attributes;
        self
    }

    /// Copies of known length go out streamed, in one `PUT` each ([`Sink::put_copy`]).
    pub(crate) fn with_streaming_put(mut self, put: StreamingPut) -> Self {
        self.streaming_put = Some(put);
        self
    }

    /// A sink over `store`, keeping objects under `prefix` (empty for the root). `location` is
    /// how messages name it (no credentials).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str, location: &str) -> Self {
        ObjectStoreSink {
            store,
            prefix: prefix.trim_matches('/').to_owned(),
            location: location.to_owned(),
            local_root: None,
            local_sync: Arc::new(Fsync),
            put_attributes: Default::default(),
            streaming_put: None,
            lock_checked: Default::default(),
        }
    }

    /// Marks the store as the local filesystem rooted at `root`, so that every put is fsynced
    /// before it returns — the file, then every directory from its parent up to `root` (a
    /// directory the put created, and the rename that published the file, are durable too):
    /// durable, as the engine requires.
    pub fn with_local_root(mut self, root: PathBuf) -> Self {
        self.local_root = Some(root);
        self
    }

    /// Syncs a local store's writes with `sync` instead of `fsync(2)` (a test that records the
    /// calls). Has no effect unless [`ObjectStoreSink::with_local_root`] is set.
    pub fn with_local_sync(mut self, sync: Arc<dyn LocalSync>) -> Self {
        self.local_sync = sync;
        self
    }

    fn path(&self, key: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(key)
        } else {
            Path::from(format!("{}/{}", self.prefix, key))
        }
    }

    /// The key of a listed path: without the prefix, with object_store's percent-encoding of
    /// odd characters undone (so keys come back exactly as they were put).
    fn key_of(&self, path: &Path) -> String {
        let prefix_parts = if self.prefix.is_empty() {
            0
        } else {
            Path::from(self.prefix.as_str()).parts().count()
        };
        path.parts()
            .skip(prefix_parts)
            .map(|p| {
                percent_encoding::percent_decode_str(p.as_ref())
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// The sink's error for `operation` on `key` failing with `e`. A write that finds nothing
    /// (`404`) did not miss the object it creates: the bucket or container is not there, which is
    /// a failure of the store, named with its location, not a missing object.
    fn error(&self, operation: &'static str, key: &str, e: object_store::Error) -> SinkError {
        match e {
            object_store::Error::NotFound { .. } if operation != "put" => SinkError::NotFound {
                key: key.to_owned(),
            },
            object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. } => SinkError::AlreadyExists {
                key: key.to_owned(),
            },
            other => {
                let source: Box<dyn std::error::Error + Send + Sync> = match &self.local_root {
                    Some(root) if space::is_out_of_space(&other) => {
                        format!("{other} ({})", space::describe(root)).into()
                    }
                    _ => Box::new(other),
                };
                SinkError::Backend {
                    operation,
                    key: key.to_owned(),
                    location: self.location.clone(),
                    source,
                }
            }
        }
    }

    async fn make_durable(&self, key: &str) -> Result<(), SinkError> {
        let Some(root) = self.local_root.clone() else {
            return Ok(());
        };
        let file = root.join(self.path(key).as_ref());
        let sync = self.local_sync.clone();
        let synced =
            tokio::task::spawn_blocking(move || durable::sync_path(sync.as_ref(), &root, &file))
                .await;
        let failed = |source: Box<dyn std::error::Error + Send + Sync>| SinkError::Backend {
            operation: "fsync",
            key: key.to_owned(),
            location: self.location.clone(),
            source,
        };
        match synced {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(failed(Box::new(e))),
            Err(e) => Err(failed(Box::new(e))),
        }
    }

    /// The listing of `folder`, resumed after the last object it gave when the store or the
    /// connection breaks it off (a page's answer cut mid-body, which `object_store` does not
    /// retry), at most [`LIST_RESUMES`] times, after 0.2, 0.4, 0.8 s. Only S3, GCS and Azure
    /// listings are resumed: they come in key order, so nothing is skipped or given twice.
    fn resumed_listing(
        &self,
        folder: Option<Path>,
    ) -> BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        struct Listing {
            store: Arc<dyn ObjectStore>,
            folder: Option<Path>,
            stream: BoxStream<'static, object_store::Result<object_store::ObjectMeta>>,
            last: Option<Path>,
            resumes: u32,
            done: bool,
        }
        let start = Listing {
            stream: self.store.list(folder.as_ref()),
            store: self.store.clone(),
            folder,
            last: None,
            resumes: 0,
            done: false,
        };
        futures::stream::unfold(start, |mut l| async move {
            if l.done {
                return None;
            }
            loop {
                match l.stream.next().await {
                    Some(Ok(meta)) => {
                        l.last = Some(meta.location.clone());
                        return Some((Ok(meta), l));
                    }
                    Some(Err(object_store::Error::Generic { store, source }))
                        if matches!(store, "S3" | "GCS" | "MicrosoftAzure")
                            && l.resumes < LIST_RESUMES =>
                    {
                        l.resumes += 1;
                        tracing::warn!(folder = ?l.folder, after = ?l.last, error = %source, "listing broken off; resuming it");
                        tokio::time::sleep(std::time::Duration::from_millis(100 << l.resumes))
                            .await;
                        l.stream = match &l.last {
                            Some(last) => l.store.list_with_offset(l.folder.as_ref(), last),
                            None => l.store.list(l.folder.as_ref()),
                        };
                    }
                    Some(Err(e)) => {
                        l.done = true;
                        return Some((Err(e), l));
                    }
                    None => return None,
                }
            }
        })
        .boxed()
    }

    async fn exists(&self, key: &str) -> Result<bool, SinkError> {
        match self.store.head(&self.path(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error("head", key, e)),
        }
    }
}

#[async_trait]
impl Sink for ObjectStoreSink {
    fn location(&self) -> String {
        self.location.clone()
    }

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<(), SinkError> {
        if data.len() <= SINGLE_PUT_MAX {
            self.put_one(key, PutPayload::from_bytes(data), mode)
                .await?;
        } else {
            if mode == PutMode::Create && self.exists(key).await? {
                return Err(SinkError::AlreadyExists {
                    key: key.to_owned(),
                });
            }
            let parts: Vec<Result<Bytes, SinkError>> = (0..data.len())
                .step_by(PART_SIZE)
                .map(|i| Ok(data.slice(i..(i + PART_SIZE).min(data.len()))))
                .collect();
            self.upload(key, futures::stream::iter(parts).boxed(), mode, false)
                .await?;
        }
        self.make_durable(key).await
    }

    async fn put_stream(
        &self,
        key: &str,
        data: ByteStream,
        mode: PutMode,
    ) -> Result<u64, SinkError> {
        if mode == PutMode::Create && self.exists(key).await? {
            return Err(SinkError::AlreadyExists {
                key: key.to_owned(),
            });
        }
        let up = self.upload(key, data, mode, false).await?;
        self.make_durable(key).await?;
        Ok(up.size)
    }

    /// Proves the copy by ETags, with no read and no second transfer where it can. When the
    /// origin's ETag is the MD5 of its body (an S3 single-part upload), nothing is hashed here:
    /// the copy goes in one `PUT` (streamed, on S3) and is proven when this store's ETag, the MD5
    /// of what it received, is the same. Otherwise what is sent is hashed as S3 computes ETags
    /// (the MD5, or the MD5 of the parts' MD5s) and compared with the ETag this store returns.
    /// Stores whose ETags are something else (local files, memory, Azure, SSE-KMS) leave the
    /// copy unproven.
    async fn put_copy(
        &self,
        key: &str,
        data: ByteStream,
        origin: &ObjectMeta,
    ) -> Result<Copied, SinkError> {
        let origin_md5 = origin
            .e_tag
            .as_deref()
            .map(normalize_etag)
            .filter(|etag| is_md5(etag));
        if let (Some(md5), Some(put)) = (&origin_md5, &self.streaming_put) {
            if origin.size <= SINGLE_PUT_LIMIT {
                let stored = put.put(key, &self.path(key), origin.size, data).await?;
                return Ok(Copied {
                    size: origin.size,
                    proven: stored.as_deref().map(normalize_etag).as_ref() == Some(md5),
                });
            }
        }
        let origin_md5 = origin_md5.filter(|_| origin.size <= SINGLE_PUT_MAX as u64);
        let up = self
            .upload(key, data, PutMode::Overwrite, origin_md5.is_none())
            .await?;
        self.make_durable(key).await?;
        let stored = up.stored_etag.as_deref().map(normalize_etag);
        let expected = origin_md5.or_else(|| up.sent.as_ref().map(PartDigests::etag));
        Ok(Copied {
            size: up.size,
            proven: stored.is_some() && stored == expected,
        })
    }

    async fn get(&self, key: &str) -> Result<Bytes, SinkError> {
        let result = self
            .store
            .get(&self.path(key))
            .await
            .map_err(|e| self.error("get", key, e))?;
        result.bytes().await.map_err(|e| self.error("get", key, e))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, SinkError> {
        if range.start > range.end {
            return Err(SinkError::BadRange {
                key: key.to_owned(),
                start: range.start,
                end: range.end,
                size: 0,
            });
        }
        if range.start == range.end {
            let size = self.head(key).await?.size;
            if range.end > size {
                return Err(SinkError::BadRange {
                    key: key.to_owned(),
                    start: range.start,
                    end: range.end,
                    size,
                });
            }
            return Ok(Bytes::new());
        }
        let data = self
            .store
            .get_range(&self.path(key), range.clone())
            .await
            .map_err(|e| match e {
                object_store::Error::NotFound { .. } => SinkError::NotFound {
                    key: key.to_owned(),
                },
                other => self.error("get", key, other),
            })?;
        if data.len() as u64 != range.end - range.start {
            return Err(SinkError::BadRange {
                key: key.to_owned(),
                start: range.start,
                end: range.end,
                size: range.start + data.len() as u64,
            });
        }
        Ok(data)
    }

    async fn get_stream(&self, key: &str) -> Result<ByteStream, SinkError> {
        let result = self
            .store
            .get(&self.path(key))
            .await
            .map_err(|e| self.error("get", key, e))?;
        let this = self.clone();
        let key = key.to_owned();
        Ok(result
            .into_stream()
            .map_err(move |e| this.error("get", &key, e))
            .boxed())
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, SinkError> {
        let meta = self
            .store
            .head(&self.path(key))
            .await
            .map_err(|e| self.error("head", key, e))?;
        Ok(ObjectMeta {
            key: key.to_owned(),
            size: meta.size,
            e_tag: meta.e_tag,
            last_modified: Some(meta.last_modified),
        })
    }

    fn list(&self, prefix: &str) -> BoxStream<'_, Result<ObjectMeta, SinkError>> {
        // object_store lists whole path segments: list the enclosing folder, keep the matches.
        let folder = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let folder_path = if folder.is_empty() {
            if self.prefix.is_empty() {
                None
            } else {
                Some(Path::from(self.prefix.as_str()))
            }
        } else {
            Some(self.path(folder))
        };
        let wanted = prefix.to_owned();
        self.resumed_listing(folder_path)
            .map_err(move |e| self.error("list", &wanted.clone(), e))
            .map_ok(move |m| ObjectMeta {
                key: self.key_of(&m.location),
                size: m.size,
                e_tag: m.e_tag,
                last_modified: Some(m.last_modified),
            })
            .try_filter({
                let prefix = prefix.to_owned();
                move |m| futures::future::ready(m.key.starts_with(&prefix))
            })
            .boxed()
    }

    async fn delete(&self, key: &str) -> Result<(), SinkError> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error("delete", key, e)),
        }
    }

    /// A local store's staging files (`NAME#N`), or an S3 bucket's multipart uploads in
    /// progress; other stores leave nothing behind.
    async fn unfinished_uploads(&self, prefix: &str) -> Result<Vec<UnfinishedUpload>, SinkError> {
        if let Some(root) = &self.local_root {
            return self.local_unfinished(root.clone(), prefix).await;
        }
        match &self.streaming_put {
            Some(s3) => self.s3_unfinished(s3, prefix).await,
            None => Ok(Vec::new()),
        }
    }

    async fn discard_upload(&self, upload: &UnfinishedUpload) -> Result<(), SinkError> {
        if let Some(root) = &self.local_root {
            return self.local_discard(root.clone(), upload).await;
        }
        match &self.streaming_put {
            Some(s3) => self.s3_discard(s3, upload).await,
            None => Ok(()),
        }
    }
    /// S3 Object Lock's retention, from the object's `HEAD`; other stores have none.
    async fn retention(&self, key: &str) -> Result<Option<Retention>, SinkError> {
        match &self.streaming_put {
            Some(s3) => self.s3_retention(s3, key).await,
            None => Ok(None),
        }
    }

    /// S3 Object Lock's `PutObjectRetention`; other stores refuse.
    async fn set_retention(&self, key: &str, retention: Retention) -> Result<(), SinkError> {
        match &self.streaming_put {
            Some(s3) => self.s3_set_retention(s3, key, retention).await,
            None => Err(SinkError::Refused {
                operation: "set retention",
                key: key.to_owned(),
                reason: format!("{} has no object lock (only S3 buckets do)", self.location),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(len: usize, piece: usize) -> ByteStream {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let parts: Vec<Result<Bytes, SinkError>> = data
            .chunks(piece.max(1))
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures::stream::iter(parts).boxed()
    }

    /// Memory's ETags are not MD5s: copies are stored whole and intact, whatever the pieces
    /// they came in, but left unproven (the caller reads them back), even when the origin's
    /// ETag is an MD5.
    #[tokio::test]
    async fn copies_to_a_store_without_md5_etags_are_intact_and_unproven() {
        let sink = ObjectStoreSink::new(
            Arc::new(object_store::memory::InMemory::new()),
            "p",
            "memory://",
        );
        for (len, piece) in [
            (0, 1),
            (1000, 7),
            (SINGLE_PUT_MAX, 1 << 20),
            (SINGLE_PUT_MAX + 1, 3 << 20 | 5),
            (5 * PART_SIZE, 1 << 20),
        ] {
            for e_tag in [
                None,
                Some("\"d41d8cd98f00b204e9800998ecf8427e\"".to_owned()),
            ] {
                let origin = ObjectMeta {
                    key: "k".into(),
                    size: len as u64,
                    e_tag,
                    last_modified: None,
                };
                let copied = sink
                    .put_copy("k", pieces(len, piece), &origin)
                    .await
                    .unwrap_or_else(|e| panic!("{len}: {e}"));
                assert_eq!(copied.size, len as u64);
                assert!(!copied.proven, "{len}: memory ETags prove nothing");
                let back = sink.get("k").await.unwrap();
                let sent: Vec<Bytes> = pieces(len, piece).try_collect().await.unwrap();
                assert_eq!(back, sent.concat(), "{len}");
            }
        }
    }
}
