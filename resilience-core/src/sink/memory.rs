//! An in-memory [`Sink`], for unit tests and examples.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};

use chrono::{DateTime, Utc};

use super::{
    ByteStream, LockMode, ObjectMeta, PutMode, Retention, Sink, SinkError, UnfinishedUpload,
};
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
    /// Retentions under the object lock, when the sink has one ([`MemorySink::with_object_lock`]).
    retentions: Option<Mutex<BTreeMap<String, Retention>>>,
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
            retentions: None,
        }
    }

    /// The same sink with an object lock, as an S3 bucket created with Object Lock has: an
    /// object whose retention has not passed (by the sink's clock) cannot be deleted or
    /// replaced, and a compliance retention can only move later.
    pub fn with_object_lock(mut self) -> Self {
        self.retentions = Some(Mutex::new(BTreeMap::new()));
        self
    }

    /// The object's retention if it holds the object now (by the sink's clock).
    fn holding(&self, key: &str) -> Option<Retention> {
        let retentions = self
            .retentions
            .as_ref()?
            .lock()
            .expect("memory sink lock poisoned");
        retentions
            .get(key)
            .copied()
            .filter(|r| r.until > self.clock.now())
    }

    fn locked(key: &str, r: Retention) -> SinkError {
        SinkError::Locked {
            key: key.to_owned(),
            mode: r.mode,
            until: r.until,
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
        if let Some(r) = self.holding(key) {
            return Err(Self::locked(key, r));
        }
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
        if let Some(r) = self.holding(key) {
            return Err(Self::locked(key, r));
        }
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

    async fn retention(&self, key: &str) -> Result<Option<Retention>, SinkError> {
        let Some(retentions) = &self.retentions else {
            return Ok(None);
        };
        self.lookup(key)?;
        Ok(retentions
            .lock()
            .expect("memory sink lock poisoned")
            .get(key)
            .copied())
    }

    async fn set_retention(&self, key: &str, retention: Retention) -> Result<(), SinkError> {
        let Some(retentions) = &self.retentions else {
            return Err(SinkError::Refused {
                operation: "set retention",
                key: key.to_owned(),
                reason: "memory:// has no object lock".into(),
            });
        };
        self.lookup(key)?;
        let mut retentions = retentions.lock().expect("memory sink lock poisoned");
        if let Some(old) = retentions.get(key) {
            let shortens = retention.until < old.until || retention.mode != old.mode;
            if old.mode == LockMode::Compliance && shortens && old.until > self.clock.now() {
                return Err(SinkError::Refused {
                    operation: "set retention",
                    key: key.to_owned(),
                    reason: format!(
                        "a compliance retention until {} can only move later",
                        old.until
                    ),
                });
            }
        }
        retentions.insert(key.to_owned(), retention);
        Ok(())
    }
}
