//! Writing restored objects: each [`ObjectWriter`] sends one object (in one `PUT`, or in parts
//! above [`PART_SIZE`]), each [`ExactWriter`] one whose key only an exact-key request can name,
//! and [`Uploads`] lets a bounded number of them finish in the
//! background at once.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{Attributes, ObjectStore, PutMultipartOptions, PutOptions, WriteMultipart};
use resilience_core::sink::SinkError;
use resilience_core::source::{AdapterError, ContentWriter};

use super::target::BucketTally;
use super::PART_SIZE;
use crate::exact::ExactStore;
use crate::streaming_put::SINGLE_PUT_LIMIT;

/// Objects a restore writes at once (each large one also sends its parts concurrently).
const WRITES_IN_FLIGHT: usize = 8;

/// Object uploads finishing in the background, at most [`WRITES_IN_FLIGHT`] at once: many
/// small objects are written side by side rather than one round trip after another.
#[derive(Clone)]
pub(super) struct Uploads {
    slots: Arc<tokio::sync::Semaphore>,
    running: Arc<Mutex<tokio::task::JoinSet<Result<(), AdapterError>>>>,
}

impl Uploads {
    /// None running yet.
    pub(super) fn new() -> Self {
        Uploads {
            slots: Arc::new(tokio::sync::Semaphore::new(WRITES_IN_FLIGHT)),
            running: Arc::default(),
        }
    }

    /// Waits for a free slot, reports the first failure among finished uploads, and starts
    /// `upload`.
    pub(super) async fn start(
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
    pub(super) async fn wait_all(&self) -> Result<(), AdapterError> {
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

/// Writes one object: from memory in one `PUT` up to [`PART_SIZE`], else as a multipart
/// upload in parts of that size; counted in the tally once its upload finished.
pub(super) struct ObjectWriter {
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
    /// A writer of the object at `path` in `store`, with `attributes`, finishing among
    /// `uploads` and counted in `tally`.
    pub(super) fn new(
        store: Arc<dyn ObjectStore>,
        path: Path,
        attributes: Attributes,
        tally: Arc<Mutex<BucketTally>>,
        uploads: Uploads,
    ) -> Self {
        ObjectWriter {
            store,
            path,
            attributes,
            buffer: Vec::new(),
            upload: None,
            written: 0,
            tally,
            uploads,
        }
    }

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

/// Writes one object by exact key (a cloud key object_store cannot name): its body goes
/// out as it is written, in one streamed request of the entry's size (at most [`SINGLE_PUT_LIMIT`]),
/// started among the uploads when the object is created and counted in the tally once it
/// finished. A body cut short (a restore that fails mid-object) fails the request, and the
/// store keeps nothing of it.
pub(super) struct ExactWriter {
    key: String,
    body: futures::channel::mpsc::Sender<Result<Bytes, SinkError>>,
    /// The upload's error, once it failed: what a later write reports.
    failure: Arc<Mutex<Option<String>>>,
}

impl ExactWriter {
    /// Starts the `PUT` of `size` bytes at `key` with `attributes`.
    pub(super) async fn start(
        exact: ExactStore,
        key: String,
        size: u64,
        attributes: &Attributes,
        tally: Arc<Mutex<BucketTally>>,
        uploads: &Uploads,
    ) -> Result<Self, AdapterError> {
        let failed = |e: String| AdapterError::msg("write", key.clone(), e);
        if size > SINGLE_PUT_LIMIT {
            return Err(failed(format!(
                "an object above {SINGLE_PUT_LIMIT} bytes whose key object_store cannot name \
                 cannot be written yet (it takes a multipart upload by exact key)"
            )));
        }
        let attributes = attributes.clone();
        let (body, sent) = futures::channel::mpsc::channel(2);
        let failure: Arc<Mutex<Option<String>>> = Arc::default();
        let (shown, noted) = (key.clone(), failure.clone());
        uploads
            .start(async move {
                let put = exact.put(&shown, size, sent.boxed(), &attributes);
                if let Err(text) = put.await {
                    *noted.lock().expect("failure lock") = Some(text.clone());
                    return Err(AdapterError::msg("write", shown, text));
                }
                let mut t = tally.lock().expect("tally lock");
                t.written += 1;
                t.written_bytes += size;
                Ok(())
            })
            .await?;
        Ok(ExactWriter { key, body, failure })
    }
}

#[async_trait]
impl ContentWriter for ExactWriter {
    async fn write(&mut self, data: Bytes) -> Result<(), AdapterError> {
        use futures::SinkExt;
        if self.body.send(Ok(data)).await.is_ok() {
            return Ok(());
        }
        let cause = self
            .failure
            .lock()
            .expect("failure lock")
            .clone()
            .unwrap_or_else(|| "the upload ended before its body was sent".into());
        Err(AdapterError::msg("write", self.key.clone(), cause))
    }

    async fn complete(self: Box<Self>) -> Result<(), AdapterError> {
        // The body ends here; the upload finishes among the others.
        drop(self.body);
        Ok(())
    }
}
