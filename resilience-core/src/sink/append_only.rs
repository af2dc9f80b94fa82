//! A wrapper that refuses deletes and overwrites: what a backup host should hold.

use bytes::Bytes;

use super::{ByteStream, Copied, ObjectMeta, PutMode, Sink, SinkError, UnfinishedUpload};

/// Refuses every delete and every overwrite of an existing object, except of the backup's own
/// lock objects (`locks/…`), which a backup must refresh and remove. With credentials that
/// cannot delete, ransomware on the backup host cannot erase backups either; forget and prune
/// run elsewhere.
///
/// ```
/// use resilience_core::sink::{AppendOnlySink, MemorySink, PutMode, Sink};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let sink = AppendOnlySink::new(MemorySink::new());
/// sink.put("data/ab/x", "1".into(), PutMode::Create).await.unwrap();
/// assert!(sink.delete("data/ab/x").await.is_err());
/// assert!(sink.put("data/ab/x", "2".into(), PutMode::Overwrite).await.is_err());
/// # });
/// ```
#[derive(Debug)]
pub struct AppendOnlySink<S> {
    inner: S,
}

impl<S: Sink> AppendOnlySink<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        AppendOnlySink { inner }
    }

    fn exempt(key: &str) -> bool {
        key.starts_with("locks/")
    }

    fn refuse(operation: &'static str, key: &str) -> SinkError {
        SinkError::Refused {
            operation,
            key: key.to_owned(),
            reason: "the repository is open in append-only mode; run forget and prune with maintenance credentials".into(),
        }
    }

    async fn guard_put(&self, key: &str, mode: PutMode) -> Result<PutMode, SinkError> {
        if Self::exempt(key) {
            return Ok(mode);
        }
        match self.inner.head(key).await {
            Ok(_) if mode == PutMode::Overwrite => Err(Self::refuse("overwrite", key)),
            Ok(_) => Err(SinkError::AlreadyExists {
                key: key.to_owned(),
            }),
            Err(e) if e.is_not_found() => Ok(PutMode::Create),
            Err(e) => Err(e),
        }
    }
}

crate::forward_sink! {
    (impl<S: Sink> Sink for AppendOnlySink<S>)
    to self.inner: location, get_stream, head, list, get, get_range, unfinished_uploads,
        retention, set_retention;

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<(), SinkError> {
        let mode = self.guard_put(key, mode).await?;
        self.inner.put(key, data, mode).await
    }

    async fn put_stream(
        &self,
        key: &str,
        data: ByteStream,
        mode: PutMode,
    ) -> Result<u64, SinkError> {
        let mode = self.guard_put(key, mode).await?;
        self.inner.put_stream(key, data, mode).await
    }

    async fn put_copy(
        &self,
        key: &str,
        data: ByteStream,
        origin: &ObjectMeta,
    ) -> Result<Copied, SinkError> {
        self.guard_put(key, PutMode::Overwrite).await?;
        self.inner.put_copy(key, data, origin).await
    }

    async fn delete(&self, key: &str) -> Result<(), SinkError> {
        if Self::exempt(key) {
            return self.inner.delete(key).await;
        }
        Err(Self::refuse("delete", key))
    }

    /// Discarding an upload deletes what it stored so far: refused like a delete.
    async fn discard_upload(&self, upload: &UnfinishedUpload) -> Result<(), SinkError> {
        Err(Self::refuse("discard of an unfinished upload", &upload.key))
    }
}
