//! Where repository objects live.
//!
//! A [`Sink`] is a flat namespace of immutable objects addressed by `/`-separated keys
//! (`data/ab/ab12…`, `snapshots/…`). It is deliberately small: put (optionally create-only),
//! get (whole, ranged or streamed), head, list by prefix and delete. Cross-cutting behaviour
//! (append-only refusal, fault injection, rate limits) is added by wrappers that implement the
//! same trait around an inner sink, never by flags inside the engine.
//!
//! `resilience-objstore` implements it over `object_store` (local disk, S3, GCS, Azure, memory);
//! [`MemorySink`] is a dependency-free implementation for unit tests.

mod append_only;
#[cfg(any(test, feature = "testing"))]
pub mod conformance;
mod memory;

pub use append_only::AppendOnlySink;
pub use memory::MemorySink;

use std::fmt;
use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

/// A boxed error from a store's client library.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A stream of byte buffers, as read from or written to a sink.
pub type ByteStream = BoxStream<'static, Result<Bytes, SinkError>>;

/// What a listing returns for one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The object's key, relative to the sink's root.
    pub key: String,
    /// The object's size in bytes.
    pub size: u64,
}

/// How a put treats an object that already exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutMode {
    /// Replace whatever is there.
    Overwrite,
    /// Fail with [`SinkError::AlreadyExists`] if the object exists, where the store can tell.
    ///
    /// Some stores (Garage) ignore conditional writes and overwrite silently, so the engine
    /// never relies on this for mutual exclusion: it is a guard, not a lock.
    Create,
}

/// A failed sink operation, naming the object it concerned.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The object does not exist.
    #[error("object {key} not found")]
    NotFound {
        /// The missing object's key.
        key: String,
    },
    /// A create-only put found the object already there.
    #[error("object {key} already exists")]
    AlreadyExists {
        /// The existing object's key.
        key: String,
    },
    /// The sink refused the operation by policy (for example append-only mode).
    #[error("{operation} of object {key} refused: {reason}")]
    Refused {
        /// The operation refused ("delete", "overwrite", …).
        operation: &'static str,
        /// The object concerned.
        key: String,
        /// Why it was refused.
        reason: String,
    },
    /// A requested byte range lies outside the object.
    #[error("range {start}..{end} is outside object {key} of {size} bytes")]
    BadRange {
        /// The object concerned.
        key: String,
        /// Start of the requested range.
        start: u64,
        /// End of the requested range.
        end: u64,
        /// The object's actual size.
        size: u64,
    },
    /// A written object does not hold the bytes that were sent (damaged in transit, or a short
    /// write): the write is not to be trusted, and should be repeated.
    #[error("object {key} in {location} does not hold what was written: {reason}")]
    Mismatch {
        /// The object concerned.
        key: String,
        /// The store, for messages (a URL without credentials).
        location: String,
        /// What differs.
        reason: String,
    },
    /// The store or the connection to it failed.
    #[error("{operation} of object {key} in {location} failed: {source}")]
    Backend {
        /// The operation that failed ("put", "get", "list", …).
        operation: &'static str,
        /// The object or prefix concerned.
        key: String,
        /// The store, for messages (a URL without credentials).
        location: String,
        /// The store client's error.
        #[source]
        source: BoxError,
    },
}

impl SinkError {
    /// True when the error says the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, SinkError::NotFound { .. })
    }
}

/// An object store holding a repository (or a bucket being backed up or replicated).
///
/// Every method is safe to call concurrently. A successful `put` means the object is durable:
/// the engine relies on that before it records anything that references the object.
#[async_trait]
pub trait Sink: Send + Sync + fmt::Debug {
    /// A human-readable location for messages, without credentials (e.g. `s3://bucket/prefix`).
    fn location(&self) -> String;

    /// Stores `data` under `key`, durably, before returning.
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<(), SinkError>;

    /// Stores a stream of unknown length under `key` (multipart where the store has it), so that
    /// large objects never sit whole in memory. Returns the number of bytes written.
    async fn put_stream(
        &self,
        key: &str,
        data: ByteStream,
        mode: PutMode,
    ) -> Result<u64, SinkError>;

    /// Stores a stream like [`Sink::put_stream`], then proves that the stored object holds exactly
    /// the bytes of `data`, or fails with [`SinkError::Mismatch`] naming it.
    ///
    /// The default reads the object back and compares a BLAKE3 hash of what was sent with one of
    /// what is stored (streamed, never whole in memory). Sinks whose store computes a digest of
    /// what it received (S3's ETag is the MD5 of the body) override it to compare that instead
    /// and skip the read; wrappers forward it.
    async fn put_stream_verified(
        &self,
        key: &str,
        data: ByteStream,
        mode: PutMode,
    ) -> Result<u64, SinkError> {
        use futures::{StreamExt, TryStreamExt};
        let hasher = std::sync::Arc::new(std::sync::Mutex::new(blake3::Hasher::new()));
        let sending = hasher.clone();
        let tee = data
            .map_ok(move |part| {
                sending.lock().expect("hasher lock").update(&part);
                part
            })
            .boxed();
        let written = self.put_stream(key, tee, mode).await?;
        let sent = hasher.lock().expect("hasher lock").finalize();
        let mut back = self.get_stream(key).await?;
        let mut stored = blake3::Hasher::new();
        let mut stored_len = 0u64;
        while let Some(part) = back.try_next().await? {
            stored_len += part.len() as u64;
            stored.update(&part);
        }
        check_stored(
            key,
            &self.location(),
            (written, sent.as_bytes()),
            (stored_len, stored.finalize().as_bytes()),
        )?;
        Ok(written)
    }

    /// Reads a whole object. Use for small objects; large ones are read by range or stream.
    async fn get(&self, key: &str) -> Result<Bytes, SinkError>;

    /// Reads `range` of an object; a range past the end is [`SinkError::BadRange`].
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, SinkError>;

    /// Streams an object's bytes.
    async fn get_stream(&self, key: &str) -> Result<ByteStream, SinkError>;

    /// The object's metadata, or [`SinkError::NotFound`].
    async fn head(&self, key: &str) -> Result<ObjectMeta, SinkError>;

    /// Lists every object whose key starts with `prefix` (a folder such as `data/`, or empty).
    /// The order is unspecified.
    fn list(&self, prefix: &str) -> BoxStream<'_, Result<ObjectMeta, SinkError>>;

    /// Deletes an object. Deleting a missing object succeeds.
    async fn delete(&self, key: &str) -> Result<(), SinkError>;
}

/// Compares what was sent (length, digest) with what a store holds, for
/// [`Sink::put_stream_verified`] implementations.
pub fn check_stored(
    key: &str,
    location: &str,
    sent: (u64, &[u8]),
    stored: (u64, &[u8]),
) -> Result<(), SinkError> {
    let mismatch = |reason: String| SinkError::Mismatch {
        key: key.to_owned(),
        location: location.to_owned(),
        reason,
    };
    if sent.0 != stored.0 {
        return Err(mismatch(format!(
            "{} bytes sent, {} stored (a short write)",
            sent.0, stored.0
        )));
    }
    if sent.1 != stored.1 {
        return Err(mismatch(format!(
            "the stored bytes differ from those sent (digest {} sent, {} stored)",
            hex::encode(sent.1),
            hex::encode(stored.1)
        )));
    }
    Ok(())
}

/// A shared sink is a sink, so wrappers compose over `Arc<dyn Sink>`.
#[async_trait]
impl<S: Sink + ?Sized> Sink for std::sync::Arc<S> {
    fn location(&self) -> String {
        (**self).location()
    }
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<(), SinkError> {
        (**self).put(key, data, mode).await
    }
    async fn put_stream(
        &self,
        key: &str,
        data: ByteStream,
        mode: PutMode,
    ) -> Result<u64, SinkError> {
        (**self).put_stream(key, data, mode).await
    }
    async fn put_stream_verified(
        &self,
        key: &str,
        data: ByteStream,
        mode: PutMode,
    ) -> Result<u64, SinkError> {
        (**self).put_stream_verified(key, data, mode).await
    }
    async fn get(&self, key: &str) -> Result<Bytes, SinkError> {
        (**self).get(key).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, SinkError> {
        (**self).get_range(key, range).await
    }
    async fn get_stream(&self, key: &str) -> Result<ByteStream, SinkError> {
        (**self).get_stream(key).await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta, SinkError> {
        (**self).head(key).await
    }
    fn list(&self, prefix: &str) -> BoxStream<'_, Result<ObjectMeta, SinkError>> {
        (**self).list(prefix)
    }
    async fn delete(&self, key: &str) -> Result<(), SinkError> {
        (**self).delete(key).await
    }
}
