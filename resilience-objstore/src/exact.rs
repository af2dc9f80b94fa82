//! Buckets addressed by exact key: S3 ([`crate::s3_exact`]), GCS ([`crate::gcs_exact`]) and
//! Azure ([`crate::azure_exact`]).
//!
//! `object_store` names objects by `Path`, which cannot hold every key a bucket can: a leading,
//! trailing or doubled `/`, a `.` or `..` segment, a control character. Bucket backups and
//! restores on S3, GCS and Azure list, read and write through [`ExactStore`] instead, so every key
//! comes back exactly. [`ExactBucket`] is the same, public, for tools and tests that must write
//! or check such keys themselves.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::Attributes;
use resilience_core::sink::ByteStream;

use crate::azure_exact::ExactAzure;
use crate::gcs_exact::ExactGcs;
use crate::s3_exact::attribute_headers;
use crate::streaming_put::StreamingPut;

/// An object as a listing gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedObject {
    /// Its key, exactly.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its ETag, quoted as the store gives it.
    pub e_tag: Option<String>,
    /// When it was written.
    pub last_modified: DateTime<Utc>,
}

/// What a `HEAD` tells of an object.
#[derive(Clone, Debug)]
pub struct ObjectHead {
    /// Its size in bytes.
    pub size: u64,
    /// Its ETag.
    pub e_tag: Option<String>,
    /// When it was written.
    pub last_modified: DateTime<Utc>,
    /// Its version id, where the bucket keeps versions.
    pub version: Option<String>,
    /// Its content type, encoding, disposition, language, cache control and user metadata.
    pub attributes: Attributes,
}

/// A bucket by exact key, on the stores that have such requests here.
#[derive(Clone, Debug)]
pub(crate) enum ExactStore {
    /// An S3 bucket.
    S3(StreamingPut),
    /// A GCS bucket.
    Gcs(ExactGcs),
    /// An Azure container.
    Azure(ExactAzure),
}

impl ExactStore {
    /// The bucket of an `s3://`, `gs://` or `az://` URL; `None` for any other store.
    pub(crate) fn for_url(url: &str) -> Result<Option<Self>, crate::StoreConfigError> {
        if let Some(s3) = StreamingPut::for_url(url)? {
            return Ok(Some(ExactStore::S3(s3)));
        }
        if let Some(gcs) = ExactGcs::for_url(url)? {
            return Ok(Some(ExactStore::Gcs(gcs)));
        }
        Ok(ExactAzure::for_url(url)?.map(ExactStore::Azure))
    }

    /// The bucket and prefix of the URL, for messages.
    pub(crate) fn location(&self) -> &str {
        match self {
            ExactStore::S3(s3) => s3.location(),
            ExactStore::Gcs(gcs) => gcs.location(),
            ExactStore::Azure(azure) => azure.location(),
        }
    }

    /// Every object whose key starts with `prefix`, in key order.
    pub(crate) fn list(&self, prefix: &str) -> BoxStream<'static, Result<ListedObject, String>> {
        match self {
            ExactStore::S3(s3) => s3.list_exact(prefix),
            ExactStore::Gcs(gcs) => gcs.list(prefix),
            ExactStore::Azure(azure) => azure.list(prefix),
        }
    }

    /// The object `key` (or one version of it), if there is one.
    pub(crate) async fn head(
        &self,
        key: &str,
        version: Option<&str>,
    ) -> Result<Option<ObjectHead>, String> {
        match self {
            ExactStore::S3(s3) => s3.head_exact(key, version).await,
            ExactStore::Gcs(gcs) => gcs.head(key, version).await,
            ExactStore::Azure(azure) => azure.head(key, version).await,
        }
    }

    /// The bytes of `key` (or of one version of it) as stored, streamed; `None` if there is no
    /// such object.
    pub(crate) async fn get(
        &self,
        key: &str,
        version: Option<&str>,
    ) -> Result<Option<BoxStream<'static, std::io::Result<Bytes>>>, String> {
        match self {
            ExactStore::S3(s3) => s3.get_exact(key, version).await,
            ExactStore::Gcs(gcs) => gcs.get(key, version).await,
            ExactStore::Azure(azure) => azure.get(key, version).await,
        }
    }

    /// Writes `size` bytes of `body` at `key` with `attributes` in one streamed request;
    /// returns the stored object's ETag. A body that fails or ends early stores nothing.
    pub(crate) async fn put(
        &self,
        key: &str,
        size: u64,
        body: ByteStream,
        attributes: &Attributes,
    ) -> Result<Option<String>, String> {
        match self {
            ExactStore::S3(s3) => {
                let headers = attribute_headers(attributes)?;
                s3.put_exact(key, key, size, body, headers)
                    .await
                    .map_err(|e| e.to_string())
            }
            ExactStore::Gcs(gcs) => gcs.put(key, size, body, attributes).await,
            ExactStore::Azure(azure) => azure.put(key, size, body, attributes).await,
        }
    }
}

/// A failed request by exact key, naming the object (or the listing's prefix).
#[derive(Debug, thiserror::Error)]
#[error("{operation} {key} in {location} failed: {reason}")]
pub struct ExactBucketError {
    /// `list`, `HEAD`, `GET` or `PUT`.
    pub operation: &'static str,
    /// The key (or the listing's prefix).
    pub key: String,
    /// The bucket and prefix of the URL.
    pub location: String,
    /// The client's or the server's message.
    pub reason: String,
}

/// An S3, GCS or Azure bucket addressed by exact key: every key the bucket can hold — a leading,
/// trailing or doubled `/`, `.` and `..` segments, control characters — listed, read and
/// written as it is, with the credentials and client settings [`crate::open_store`] takes from
/// the same URL. Bucket backups and restores use it; it is public for tools and tests that must
/// write or check such keys themselves. Keys are whole keys: the URL's prefix is not applied.
#[derive(Clone, Debug)]
pub struct ExactBucket(ExactStore);

impl ExactBucket {
    /// The bucket of an `s3://`, `gs://` or `az://` URL.
    pub fn new(url: &str) -> Result<Self, crate::StoreConfigError> {
        ExactStore::for_url(url)?
            .map(ExactBucket)
            .ok_or_else(|| crate::StoreConfigError::Invalid {
                url: url.to_owned(),
                reason: "not an s3://, gs:// or az:// URL".into(),
            })
    }

    fn failed(&self, operation: &'static str, key: &str, reason: String) -> ExactBucketError {
        ExactBucketError {
            operation,
            key: key.to_owned(),
            location: self.0.location().to_owned(),
            reason,
        }
    }

    /// Every object whose key starts with `prefix`, in key order.
    pub fn list(&self, prefix: &str) -> BoxStream<'static, Result<ListedObject, ExactBucketError>> {
        let this = self.clone();
        let shown = prefix.to_owned();
        self.0
            .list(prefix)
            .map_err(move |e| this.failed("list", &shown, e))
            .boxed()
    }

    /// The object `key` (or one version of it), if there is one.
    pub async fn head(
        &self,
        key: &str,
        version: Option<&str>,
    ) -> Result<Option<ObjectHead>, ExactBucketError> {
        self.0
            .head(key, version)
            .await
            .map_err(|e| self.failed("HEAD", key, e))
    }

    /// The whole body of `key` (or of one version of it) as stored, if there is such an object.
    pub async fn get(
        &self,
        key: &str,
        version: Option<&str>,
    ) -> Result<Option<Bytes>, ExactBucketError> {
        let Some(body) = self
            .0
            .get(key, version)
            .await
            .map_err(|e| self.failed("GET", key, e))?
        else {
            return Ok(None);
        };
        let pieces: Vec<Bytes> = body
            .try_collect()
            .await
            .map_err(|e| self.failed("GET", key, e.to_string()))?;
        Ok(Some(pieces.concat().into()))
    }

    /// Writes `bytes` at `key` with `attributes` in one request; returns the ETag the store gave.
    pub async fn put(
        &self,
        key: &str,
        bytes: Bytes,
        attributes: &Attributes,
    ) -> Result<Option<String>, ExactBucketError> {
        let size = bytes.len() as u64;
        let body = futures::stream::once(async move { Ok(bytes) }).boxed();
        self.0
            .put(key, size, body, attributes)
            .await
            .map_err(|e| self.failed("PUT", key, e))
    }
}
