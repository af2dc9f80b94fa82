//! Buckets addressed by exact key: S3 ([`crate::s3_exact`]), GCS ([`crate::gcs_exact`]) and
//! Azure ([`crate::azure_exact`]).
//!
//! `object_store` names objects by `Path`, which cannot hold every key a bucket can: a leading,
//! trailing or doubled `/`, a `.` or `..` segment, a control character. Bucket backups and
//! restores on S3, GCS and Azure list, read and write through [`ExactStore`] instead, so every key
//! comes back exactly. [`ExactBucket`] is the same, public, for tools and tests that must write
//! or check such keys themselves.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::{Attribute, AttributeValue, Attributes};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use resilience_core::sink::ByteStream;

use crate::azure_exact::ExactAzure;
use crate::gcs_exact::ExactGcs;
use crate::s3_exact::attribute_headers;
use crate::streaming_put::StreamingPut;

/// What a URL leaves unencoded in a key segment or a query value: the unreserved characters.
pub(crate) const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The headers a store names an object's properties with, in its requests and answers.
pub(crate) struct PropertyHeaders {
    /// Content type, encoding, disposition, language and cache control, in that order.
    pub(crate) properties: [&'static str; 5],
    /// What precedes a user metadata name (`x-amz-meta-`, `x-ms-meta-`).
    pub(crate) metadata: &'static str,
}

const PROPERTIES: [Attribute; 5] = [
    Attribute::ContentType,
    Attribute::ContentEncoding,
    Attribute::ContentDisposition,
    Attribute::ContentLanguage,
    Attribute::CacheControl,
];

/// The object attributes that response `headers` carry, named as `names` says.
pub(crate) fn attributes_from_headers(
    headers: &http::HeaderMap,
    names: &PropertyHeaders,
) -> Attributes {
    let mut out = Attributes::new();
    for (name, value) in headers {
        let Ok(text) = value.to_str() else { continue };
        let attribute = match names.properties.iter().position(|p| *p == name.as_str()) {
            Some(i) => PROPERTIES[i].clone(),
            None => match name.as_str().strip_prefix(names.metadata) {
                Some(m) => Attribute::Metadata(m.to_owned().into()),
                None => continue,
            },
        };
        out.insert(attribute, AttributeValue::from(text.to_owned()));
    }
    out
}

/// The request headers that write `attributes`, named as `names` says. Values must be
/// printable ASCII, which a signed header can carry unchanged.
pub(crate) fn headers_from_attributes(
    attributes: &Attributes,
    names: &PropertyHeaders,
) -> Result<http::HeaderMap, String> {
    let mut headers = http::HeaderMap::new();
    for (attribute, value) in attributes {
        let name = match PROPERTIES.iter().position(|p| p == attribute) {
            Some(i) => names.properties[i].to_owned(),
            None => match attribute {
                Attribute::Metadata(m) => format!("{}{m}", names.metadata),
                other => return Err(format!("the attribute {other:?} cannot be written")),
            },
        };
        let text: &str = value.as_ref();
        if !text
            .bytes()
            .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
        {
            return Err(format!(
                "attribute {name}: {text:?} is not printable ASCII, which a signed header needs"
            ));
        }
        let header = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| format!("attribute {name:?}: {e}"))?;
        headers.insert(
            header,
            http::HeaderValue::from_str(text).map_err(|e| format!("attribute {name}: {e}"))?,
        );
    }
    Ok(headers)
}

/// What the answer to a `HEAD` of an object says: `None` for 404, the status for another
/// failure, else its size, ETag, time, version (from the header `version`, if any) and
/// attributes (named as `names` says).
pub(crate) fn head_of(
    response: &reqwest::Response,
    names: &PropertyHeaders,
    version: Option<&str>,
) -> Result<Option<ObjectHead>, String> {
    if response.status() == http::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    let headers = response.headers();
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    Ok(Some(ObjectHead {
        size: text("content-length")
            .and_then(|s| s.parse().ok())
            .ok_or("no Content-Length")?,
        e_tag: text("etag").map(str::to_owned),
        last_modified: text("last-modified")
            .and_then(|s| DateTime::parse_from_rfc2822(s).ok())
            .map(|t| t.with_timezone(&Utc))
            .ok_or("no readable Last-Modified")?,
        version: version.and_then(text).map(str::to_owned),
        attributes: attributes_from_headers(headers, names),
    }))
}

/// The body of `response` as a stream whose every piece is awaited at most `idle`.
pub(crate) fn idle_bounded_body(
    response: reqwest::Response,
    idle: Duration,
) -> BoxStream<'static, std::io::Result<Bytes>> {
    futures::stream::unfold(response.bytes_stream(), move |mut body| async move {
        match tokio::time::timeout(idle, body.next()).await {
            Ok(None) => None,
            Ok(Some(piece)) => Some((piece.map_err(std::io::Error::other), body)),
            Err(_) => Some((
                Err(std::io::Error::other(format!(
                    "timed out: no data for {idle:?}"
                ))),
                body,
            )),
        }
    })
    .boxed()
}

/// A listing read page by page: `page(token)` gives a page's items and the next page's token
/// (none after the last page).
pub(crate) fn paged<T, F, Fut>(page: F) -> BoxStream<'static, Result<T, String>>
where
    T: Send + 'static,
    F: Fn(Option<String>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(Vec<T>, Option<String>), String>> + Send + 'static,
{
    let page = std::sync::Arc::new(page);
    futures::stream::try_unfold(Some(None), move |state: Option<Option<String>>| {
        let page = page.clone();
        async move {
            let Some(token) = state else {
                return Ok::<_, String>(None);
            };
            let (items, next) = page(token).await?;
            Ok(Some((
                futures::stream::iter(items.into_iter().map(Ok)),
                next.map(Some),
            )))
        }
    })
    .try_flatten()
    .boxed()
}

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
