//! An in-memory [`Sink`], for unit tests and examples.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};

use chrono::{DateTime, Utc};

use super::{ByteStream, ObjectMeta, PutMode, Sink, SinkError, UnfinishedUpload};
use crate::time::clock::{Clock, SystemClock};

/// A [`Sink`] that keeps objects in a map. Cheap to create; shares nothing between instances.
///
/// ```
/// use resilience_core::sink::{MemorySink, Sink, PutMode};
/// # tokio_test_block(async {
/// let sink = MemorySink::new();
/// sink.put("config", "{}".into(), PutMode::Create).await.unwrap();
/// assert_eq!(sink.get("config").await.unwrap(), "{}");
/// # });
/// # fn tokio_test_block<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
///
/// Each object's modification time comes from the sink's clock (the system's by default;
/// [`MemorySink::with_clock`] lets a test move the store's time).
#[derive(Debug)]
pub struct MemorySink {
    objects: Mutex<BTreeMap<String, (Bytes, DateTime<Utc>)>>,
    /// Uploads a test planted as left behind by a killed writer.
    unfinished: Mutex<Vec<UnfinishedUpload>>,
    clock: Arc<dyn Clock>,
}

impl Default for MemorySink {
    fn default() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }
}

impl MemorySink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty sink whose objects are stamped by `clock` (the store's clock).
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        MemorySink {
            objects: Mutex::new(BTreeMap::new()),
            unfinished: Mutex::new(Vec::new()),
            clock,
        }
    }

    fn lookup(&self, key: &str) -> Result<(Bytes, DateTime<Utc>), SinkError> {
        self.objects
            .lock()
            .expect("memory sink lock poisoned")
            .get(key)
            .cloned()
            .ok_or_else(|| SinkError::NotFound {
                key: key.to_owned(),
            })
    }

    /// Replaces an object's bytes without any check: for tests that damage a repository.
    pub fn tamper(&self, key: &str, data: Bytes) {
        let now = self.clock.now();
        self.objects
            .lock()
            .expect("memory sink lock poisoned")
            .insert(key.to_owned(), (data, now));
    }

    /// Records an upload of `key` as started now (by the sink's clock) and never finished, as
    /// a writer killed mid-upload leaves one in a store with multipart uploads; returns it.
    pub fn plant_unfinished_upload(&self, key: &str) -> UnfinishedUpload {
        let mut unfinished = self.unfinished.lock().expect("memory sink lock poisoned");
        let upload = UnfinishedUpload {
            key: key.to_owned(),
            id: format!("upload-{}", unfinished.len() + 1),
            started: Some(self.clock.now()),
        };
        unfinished.push(upload.clone());
        upload
    }
}

#[async_trait]
impl Sink for MemorySink {
    fn location(&self) -> String {
        "memory://".to_owned()
    }

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<(), SinkError> {
        let mut objects = self.objects.lock().expect("memory sink lock poisoned");
        if mode == PutMode::Create && objects.contains_key(key) {
            return Err(SinkError::AlreadyExists {
                key: key.to_owned(),
            });
        }
        objects.insert(key.to_owned(), (data, self.clock.now()));
        Ok(())
    }

    async fn put_stream(
        &self,
        key: &str,
        data: ByteStream,
        mode: PutMode,
    ) -> Result<u64, SinkError> {
        let buffer = data
            .try_fold(BytesMut::new(), |mut acc, part| async move {
                acc.extend_from_slice(&part);
                Ok(acc)
            })
            .await?;
        let len = buffer.len() as u64;
        self.put(key, buffer.freeze(), mode).await?;
        Ok(len)
    }

    async fn get(&self, key: &str) -> Result<Bytes, SinkError> {
        Ok(self.lookup(key)?.0)
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, SinkError> {
        let data = self.lookup(key)?.0;
        let size = data.len() as u64;
        if range.start > range.end || range.end > size {
            return Err(SinkError::BadRange {
                key: key.to_owned(),
                start: range.start,
                end: range.end,
                size,
            });
        }
        Ok(data.slice(range.start as usize..range.end as usize))
    }

    async fn get_stream(&self, key: &str) -> Result<ByteStream, SinkError> {
        let data = self.lookup(key)?.0;
        let parts: Vec<Result<Bytes, SinkError>> = data
            .chunks(1 << 20)
            .map(|c| Ok(data.slice_ref(c)))
            .collect();
        Ok(stream::iter(parts).boxed())
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, SinkError> {
        let (data, modified) = self.lookup(key)?;
        Ok(ObjectMeta {
            key: key.to_owned(),
            size: data.len() as u64,
            e_tag: None,
            last_modified: Some(modified),
        })
    }

    fn list(&self, prefix: &str) -> BoxStream<'_, Result<ObjectMeta, SinkError>> {
        let metas: Vec<Result<ObjectMeta, SinkError>> = self
            .objects
            .lock()
            .expect("memory sink lock poisoned")
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (v, modified))| {
                Ok(ObjectMeta {
                    key: k.clone(),
                    size: v.len() as u64,
                    e_tag: None,
                    last_modified: Some(*modified),
                })
            })
            .collect();
        stream::iter(metas).boxed()
    }

    async fn delete(&self, key: &str) -> Result<(), SinkError> {
        self.objects
            .lock()
            .expect("memory sink lock poisoned")
            .remove(key);
        Ok(())
    }

    async fn unfinished_uploads(&self, prefix: &str) -> Result<Vec<UnfinishedUpload>, SinkError> {
        Ok(self
            .unfinished
            .lock()
            .expect("memory sink lock poisoned")
            .iter()
            .filter(|u| u.key.starts_with(prefix))
            .cloned()
            .collect())
    }

    async fn discard_upload(&self, upload: &UnfinishedUpload) -> Result<(), SinkError> {
        self.unfinished
            .lock()
            .expect("memory sink lock poisoned")
            .retain(|u| u.id != upload.id);
        Ok(())
    }
}
