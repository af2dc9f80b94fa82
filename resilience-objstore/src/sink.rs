//! The [`Sink`] over `object_store`.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, PutOptions, PutPayload, WriteMultipart};
use resilience_core::sink::{ByteStream, ObjectMeta, PutMode, Sink, SinkError};

/// Payloads above this size are uploaded in parts.
const MULTIPART_THRESHOLD: usize = 8 * 1024 * 1024;
/// Part size of multipart uploads (S3 requires at least 5 MiB but for the last part).
const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts in flight per upload.
const PART_CONCURRENCY: usize = 4;

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
    put_attributes: object_store::Attributes,
}

impl ObjectStoreSink {
    /// Every object written carries these attributes (a storage class for a cold tier).
    pub fn with_put_attributes(mut self, attributes: object_store::Attributes) -> Self {
        self.put_attributes = attributes;
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
            put_attributes: Default::default(),
        }
    }

    /// Marks the store as the local filesystem rooted at `root`, so that every put is fsynced
    /// (file and directory) before it returns: durable, as the engine requires.
    pub fn with_local_root(mut self, root: PathBuf) -> Self {
        self.local_root = Some(root);
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

    fn error(&self, operation: &'static str, key: &str, e: object_store::Error) -> SinkError {
        match e {
            object_store::Error::NotFound { .. } => SinkError::NotFound {
                key: key.to_owned(),
            },
            object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. } => SinkError::AlreadyExists {
                key: key.to_owned(),
            },
            other => SinkError::Backend {
                operation,
                key: key.to_owned(),
                location: self.location.clone(),
                source: Box::new(other),
            },
        }
    }

    async fn make_durable(&self, key: &str) -> Result<(), SinkError> {
        let Some(root) = &self.local_root else {
            return Ok(());
        };
        let file = root.join(self.path(key).as_ref());
        let key = key.to_owned();
        let location = self.location.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::File::open(&file)?.sync_all()?;
            if let Some(dir) = file.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        })
        .await
        .map_err(|e| SinkError::Backend {
            operation: "fsync",
            key: key.clone(),
            location: location.clone(),
            source: Box::new(e),
        })?
        .map_err(|e| SinkError::Backend {
            operation: "fsync",
            key,
            location,
            source: Box::new(e),
        })
    }

    async fn exists(&self, key: &str) -> Result<bool, SinkError> {
        match self.store.head(&self.path(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error("head", key, e)),
        }
    }

    async fn put_parts(&self, key: &str, data: ByteStream) -> Result<u64, SinkError> {
        let upload = self
            .store
            .put_multipart_opts(
                &self.path(key),
                object_store::PutMultipartOptions {
                    attributes: self.put_attributes.clone(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| self.error("put", key, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut data = data;
        let mut total = 0u64;
        while let Some(part) = data.next().await {
            let part = match part {
                Ok(p) => p,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(e);
                }
            };
            total += part.len() as u64;
            if let Err(e) = writer.wait_for_capacity(PART_CONCURRENCY).await {
                return Err(self.error("put", key, e));
            }
            writer.put(part);
        }
        writer
            .finish()
            .await
            .map_err(|e| self.error("put", key, e))?;
        Ok(total)
    }
}

#[async_trait]
impl Sink for ObjectStoreSink {
    fn location(&self) -> String {
        self.location.clone()
    }

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<(), SinkError> {
        if data.len() > MULTIPART_THRESHOLD {
            if mode == PutMode::Create && self.exists(key).await? {
                return Err(SinkError::AlreadyExists {
                    key: key.to_owned(),
                });
            }
            let parts: Vec<Result<Bytes, SinkError>> = (0..data.len())
                .step_by(PART_SIZE)
                .map(|i| Ok(data.slice(i..(i + PART_SIZE).min(data.len()))))
                .collect();
            self.put_parts(key, futures::stream::iter(parts).boxed())
                .await?;
        } else {
            let opts = PutOptions {
                mode: match mode {
                    PutMode::Overwrite => object_store::PutMode::Overwrite,
                    PutMode::Create => object_store::PutMode::Create,
                },
                attributes: self.put_attributes.clone(),
                ..Default::default()
            };
            match self
                .store
                .put_opts(&self.path(key), PutPayload::from_bytes(data.clone()), opts)
                .await
            {
                Ok(_) => {}
                // Stores without conditional puts: check, then write (a guard, not a lock).
                Err(object_store::Error::NotImplemented) if mode == PutMode::Create => {
                    if self.exists(key).await? {
                        return Err(SinkError::AlreadyExists {
                            key: key.to_owned(),
                        });
                    }
                    self.store
                        .put(&self.path(key), PutPayload::from_bytes(data))
                        .await
                        .map_err(|e| self.error("put", key, e))?;
                }
                Err(e) => return Err(self.error("put", key, e)),
            }
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
        let n = self.put_parts(key, data).await?;
        self.make_durable(key).await?;
        Ok(n)
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
        self.store
            .list(folder_path.as_ref())
            .map_err(move |e| self.error("list", &wanted.clone(), e))
            .map_ok(move |m| ObjectMeta {
                key: self.key_of(&m.location),
                size: m.size,
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
}
