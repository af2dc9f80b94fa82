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

/// Attempts of a request without a body, the first included: a transport failure, a timeout or
/// an answer 429 or 5xx is tried again, after 0.2 s, then 0.8 s, then 3.2 s.
pub(crate) const ATTEMPTS: u32 = 4;

/// Sends `request`, waiting at most `idle` for each answer's headers. A request without a body
/// is tried [`ATTEMPTS`] times in all while it fails as a busy or broken server does (so at
/// most `4 × idle + 4.2 s`); one with a body (a streamed upload, which cannot be sent twice)
/// once. The last answer is returned, whatever its status; the last failure names its cause.
pub(crate) async fn send_with_retries(
    mut request: reqwest::RequestBuilder,
    idle: Duration,
) -> Result<reqwest::Response, String> {
    let mut attempt = 1;
    loop {
        let retry = match attempt < ATTEMPTS {
            true => request.try_clone(),
            false => None,
        };
        let outcome = match tokio::time::timeout(idle, request.send()).await {
            Err(_) => Err(format!("timed out after {idle:?} waiting for an answer")),
            Ok(Err(e)) => Err(crate::streaming_put::error_chain(&e)),
            Ok(Ok(response)) => Ok(response),
        };
        let busy = match &outcome {
            Ok(r) => {
                r.status() == http::StatusCode::TOO_MANY_REQUESTS || r.status().is_server_error()
            }
            Err(_) => true,
        };
        match retry {
            Some(next) if busy => {
                tokio::time::sleep(Duration::from_millis(200) * 4u32.pow(attempt - 1)).await;
                request = next;
                attempt += 1;
            }
            _ => {
                return outcome.map_err(|e| match attempt {
                    1 => e,
                    n => format!("{e} (after {n} attempts)"),
                })
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A loopback HTTP server answering each request with the next status of `statuses` (the
    /// last one again once they run out); returns its URL and the count of requests it took.
    async fn server(statuses: &'static [u16]) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/o", listener.local_addr().unwrap());
        let seen = Arc::new(AtomicUsize::new(0));
        let count = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let n = count.fetch_add(1, Ordering::SeqCst);
                    let status = statuses[n.min(statuses.len() - 1)];
                    let answer = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    let _ = socket.write_all(answer.as_bytes()).await;
                });
            }
        });
        (url, seen)
    }

    #[tokio::test]
    async fn a_busy_server_is_tried_again_and_a_missing_object_is_not() {
        let http = reqwest::Client::new();
        let idle = Duration::from_secs(5);
        let (url, seen) = server(&[503, 500, 200]).await;
        let answer = send_with_retries(http.get(&url), idle).await.unwrap();
        assert_eq!(answer.status(), 200);
        assert_eq!(seen.load(Ordering::SeqCst), 3);

        let (url, seen) = server(&[404]).await;
        let answer = send_with_retries(http.head(&url), idle).await.unwrap();
        assert_eq!(answer.status(), 404);
        assert_eq!(
            seen.load(Ordering::SeqCst),
            1,
            "a 404 is an answer, not a fault"
        );

        // A streamed body cannot be sent twice: one attempt, its answer returned.
        let (url, seen) = server(&[503, 200]).await;
        let body = reqwest::Body::wrap_stream(futures::stream::once(async {
            Ok::<_, std::io::Error>(Bytes::from_static(b"x"))
        }));
        let answer = send_with_retries(http.put(&url).body(body), idle)
            .await
            .unwrap();
        assert_eq!(answer.status(), 503);
        assert_eq!(seen.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_dead_server_fails_after_every_attempt_naming_the_count() {
        // Nothing listens on the port once the listener is gone.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let started = std::time::Instant::now();
        let err = send_with_retries(
            reqwest::Client::new().get(format!("http://127.0.0.1:{port}/o")),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(err.contains(&format!("after {ATTEMPTS} attempts")), "{err}");
        assert!(
            started.elapsed() >= Duration::from_millis(4200),
            "backed off"
        );
    }
}
