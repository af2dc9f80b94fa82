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
mod forward;
mod memory;
pub mod retaining;
pub mod throttle;

pub use append_only::AppendOnlySink;
pub use memory::MemorySink;
pub use retaining::{ObjectLock, RetainingSink};

use std::fmt;
use std::ops::Range;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

#[doc(hidden)]
pub use forward::__private;

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
    /// The store's entity tag, where it gives one. For S3 and S3-compatible stores it is the
    /// MD5 of the body of a single-part upload (not under SSE-KMS), which lets a copy to another
    /// such store be proven without hashing it again ([`Sink::put_copy`]).
    pub e_tag: Option<String>,
    /// When the store last wrote the object, by the store's own clock, where it says. Lock
    /// liveness is judged by these times ([`crate::repo::lock`]), so clients whose clocks disagree
    /// still agree on which locks have lapsed.
    pub last_modified: Option<chrono::DateTime<chrono::Utc>>,
}

/// What [`Sink::put_copy`] stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Copied {
    /// Bytes written.
    pub size: u64,
    /// Whether the store proved, by a digest it computed of what it received, that the copy
    /// holds exactly the origin's bytes (or exactly the bytes sent). When false the copy is
    /// unproven and the caller reads it back to check it.
    pub proven: bool,
}

/// An upload the store holds but never turned into an object: a multipart upload started and
/// neither completed nor aborted (its parts are billed and no listing shows them), or a local
/// store's staging file left by a killed write. Prune discards them once they are older than its
/// grace period ([`Sink::unfinished_uploads`], [`Sink::discard_upload`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnfinishedUpload {
    /// The key of the object it would have become.
    pub key: String,
    /// The store's handle on it: an S3 upload id, or a staging file's path.
    pub id: String,
    /// When it was started, by the store's clock, where the store says.
    pub started: Option<chrono::DateTime<chrono::Utc>>,
}

/// How a store's object lock holds an object (the two modes of S3 Object Lock).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockMode {
    /// Nobody deletes the object before its date, except a credential granted the right to
    /// bypass governance retention (a break-glass administrator).
    Governance,
    /// Nobody deletes the object before its date, the account's root user included, and the
    /// date can only move later.
    Compliance,
}

impl fmt::Display for LockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LockMode::Governance => "governance",
            LockMode::Compliance => "compliance",
        })
    }
}

/// An object's retention under a store's object lock: it cannot be deleted before `until`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// How the lock holds it.
    pub mode: LockMode,
    /// The object's retain-until date.
    pub until: chrono::DateTime<chrono::Utc>,
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
    /// The object is under a store's object lock: it cannot be deleted before its date.
    #[error("object {key} is under object lock ({mode}) until {until}: it cannot be deleted before then")]
    Locked {
        /// The object concerned.
        key: String,
        /// How the lock holds it.
        mode: LockMode,
        /// Its retain-until date.
        until: chrono::DateTime<chrono::Utc>,
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

    /// The retain-until date, when the error says the object is under an object lock.
    pub fn locked_until(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        match self {
            SinkError::Locked { until, .. } => Some(*until),
            _ => None,
        }
    }
}

/// An object store holding a repository (or a bucket being backed up or replicated).
///
/// Every method is safe to call concurrently. A successful `put` means the object is durable:
/// the engine relies on that before it records anything that references the object.
///
/// # Required and provided methods
///
/// A store implements six methods: [`location`](Sink::location),
/// [`put_stream`](Sink::put_stream), [`get_stream`](Sink::get_stream), [`head`](Sink::head),
/// [`list`](Sink::list) and [`delete`](Sink::delete). The conveniences —
/// [`put`](Sink::put), [`put_copy`](Sink::put_copy), [`get`](Sink::get) and
/// [`get_range`](Sink::get_range) — are provided on top of them; a store overrides them where it
/// can do better (one request for a small object, a ranged request, a copy its store proves).
///
/// A wrapper (append-only, throttled, fault-injecting, …) must pass every method, provided ones
/// included, to its inner sink, or an override of the inner sink (such as a proven
/// [`put_copy`](Sink::put_copy)) is silently lost. Wrappers are therefore written with
/// [`forward_sink!`](crate::forward_sink), which forwards the methods a wrapper does not change
/// and makes a method left out a compile error.
#[async_trait]
pub trait Sink: Send + Sync + fmt::Debug {
    /// A human-readable location for messages, without credentials (e.g. `s3://bucket/prefix`).
    fn location(&self) -> String;

    /// Stores a stream of unknown length under `key` (multipart where the store has it), so that
    /// large objects never sit whole in memory, durably, before returning. Returns the number of
    /// bytes written.
    async fn put_stream(
        &self,
        key: &str,
        data: ByteStream,
        mode: PutMode,
    ) -> Result<u64, SinkError>;

    /// Streams an object's bytes.
    async fn get_stream(&self, key: &str) -> Result<ByteStream, SinkError>;

    /// The object's metadata, or [`SinkError::NotFound`].
    async fn head(&self, key: &str) -> Result<ObjectMeta, SinkError>;

    /// Lists every object whose key starts with `prefix` (a folder such as `data/`, or empty).
    /// The order is unspecified.
    fn list(&self, prefix: &str) -> BoxStream<'_, Result<ObjectMeta, SinkError>>;

    /// Deletes an object. Deleting a missing object succeeds.
    async fn delete(&self, key: &str) -> Result<(), SinkError>;

    /// Stores `data` under `key`, durably, before returning.
    ///
    /// The default is a [`put_stream`](Sink::put_stream) of one part.
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<(), SinkError> {
        let one = futures::stream::once(async move { Ok(data) }).boxed();
        self.put_stream(key, one, mode).await.map(drop)
    }

    /// Stores a copy of an object that another store listed as `origin`, streamed (replacing
    /// whatever is under `key`), and says whether this store proved the copy exact.
    ///
    /// The default proves nothing ([`Copied::proven`] is false): the caller reads the copy back.
    /// Sinks whose store computes a digest of what it receives override it: S3's ETag of a
    /// single-part upload is the MD5 of the body, so a copy whose ETag equals the origin's holds
    /// the origin's bytes, with no second transfer and no hashing here. Wrappers forward it.
    async fn put_copy(
        &self,
        key: &str,
        data: ByteStream,
        origin: &ObjectMeta,
    ) -> Result<Copied, SinkError> {
        let _ = origin;
        let size = self.put_stream(key, data, PutMode::Overwrite).await?;
        Ok(Copied {
            size,
            proven: false,
        })
    }

    /// Reads a whole object. Use for small objects; large ones are read by range or stream.
    ///
    /// The default gathers [`get_stream`](Sink::get_stream).
    async fn get(&self, key: &str) -> Result<Bytes, SinkError> {
        let whole = self
            .get_stream(key)
            .await?
            .try_fold(BytesMut::new(), |mut whole, part| async move {
                whole.extend_from_slice(&part);
                Ok(whole)
            })
            .await?;
        Ok(whole.freeze())
    }

    /// Reads `range` of an object; a range past the end is [`SinkError::BadRange`].
    ///
    /// The default reads [`get_stream`](Sink::get_stream) up to the range's end (and to the
    /// object's end when the range lies past it, to say the object's size).
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, SinkError> {
        let bad_range = |size| SinkError::BadRange {
            key: key.to_owned(),
            start: range.start,
            end: range.end,
            size,
        };
        if range.start > range.end {
            return Err(bad_range(self.head(key).await?.size));
        }
        let mut stream = self.get_stream(key).await?;
        let mut wanted = BytesMut::with_capacity((range.end - range.start) as usize);
        let mut offset = 0u64;
        while offset < range.end {
            let Some(part) = stream.try_next().await? else {
                return Err(bad_range(offset));
            };
            let part_end = offset + part.len() as u64;
            if part_end > range.start {
                let from = range.start.saturating_sub(offset) as usize;
                let to = (range.end.min(part_end) - offset) as usize;
                wanted.extend_from_slice(&part[from..to]);
            }
            offset = part_end;
        }
        Ok(wanted.freeze())
    }

    /// The uploads under `prefix` that were started and never finished (see
    /// [`UnfinishedUpload`]). Stores that leave nothing behind when a writer dies (memory, and
    /// any store without multipart uploads or staging files) have none: the default.
    async fn unfinished_uploads(&self, prefix: &str) -> Result<Vec<UnfinishedUpload>, SinkError> {
        let _ = prefix;
        Ok(Vec::new())
    }

    /// Discards an unfinished upload (aborts it, or removes its staging file). Discarding one
    /// already gone succeeds. The default has nothing to discard.
    async fn discard_upload(&self, upload: &UnfinishedUpload) -> Result<(), SinkError> {
        let _ = upload;
        Ok(())
    }

    /// The object's retention under the store's object lock, `None` when it has none (or
    /// the store has no object lock: the default). A missing object is
    /// [`SinkError::NotFound`] where the store can tell.
    async fn retention(&self, key: &str) -> Result<Option<Retention>, SinkError> {
        let _ = key;
        Ok(None)
    }

    /// Sets (or moves later) the object's retention under the store's object lock. The default,
    /// for stores without one, refuses, naming the object.
    async fn set_retention(&self, key: &str, retention: Retention) -> Result<(), SinkError> {
        let _ = retention;
        Err(SinkError::Refused {
            operation: "set retention",
            key: key.to_owned(),
            reason: format!("{} has no object lock", self.location()),
        })
    }
}

crate::forward_sink! {
    /// A borrowed sink is a sink, so a wrapper can be put around one for one operation.
    (impl<S: Sink + ?Sized> Sink for &S)
    to **self: location, put_stream, get_stream, head, list, delete, put, put_copy, get, get_range,
        unfinished_uploads, discard_upload, retention, set_retention;
}

crate::forward_sink! {
    /// A shared sink is a sink, so wrappers compose over `Arc<dyn Sink>`.
    (impl<S: Sink + ?Sized> Sink for std::sync::Arc<S>)
    to **self: location, put_stream, get_stream, head, list, delete, put, put_copy, get, get_range,
        unfinished_uploads, discard_upload, retention, set_retention;
}
