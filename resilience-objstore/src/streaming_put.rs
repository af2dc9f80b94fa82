//! Streaming single `PUT`s to S3, for copies whose length is known in advance.
//!
//! `object_store` sends a `PUT` body only from memory, so a copy would be gathered whole before
//! it is sent (or cut into a multipart upload, whose ETag is not the MD5 of the body). A copy
//! from another store has a known length, so it can go out as it arrives, in one `PUT` with a
//! `Content-Length`: the read from the source and the write to the replica overlap, memory per
//! copy stays at a few buffers, and the replica's ETag is the MD5 of the whole body, comparable
//! with the source's. The request is signed as every request by exact key is
//! ([`crate::s3_exact`], `UNSIGNED-PAYLOAD`), with the credentials of the store
//! [`crate::open_store`] builds from the same URL and `AWS_*` variables; the HTTP client trusts
//! the same extra CA certificates.
//!
//! A body stream that fails (the source's read, or a checksum verdict at its end) aborts the
//! request before its last byte, and S3 stores nothing for a request whose body is cut short.
//!
//! A `PUT` that makes no progress — no piece of its body taken, or no answer once the body is
//! sent — for the store client's request timeout ([`crate::config::REQUEST_TIMEOUT`], or
//! `AWS_TIMEOUT`) fails, naming the object: a stalled server never holds a copy forever. It is
//! not retried here; replication retries a failed copy, a bounded number of times.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use object_store::aws::AwsCredential;
use object_store::client::CredentialProvider;
use resilience_core::sink::{ByteStream, SinkError};

use crate::config::{
    extra_reqwest_roots, s3_region_and_endpoint, s3_settings, StoreConfigError, StoreUrl,
    REQUEST_TIMEOUT,
};

/// The largest object S3 takes in a single `PUT`.
pub(crate) const SINGLE_PUT_LIMIT: u64 = 5 << 30;

/// Sends streamed single `PUT`s to one S3 bucket. Its client is built on first use, so that
/// opening a store for anything else (a `wal-push`, a listing) costs nothing more.
#[derive(Clone)]
pub(crate) struct StreamingPut {
    url: String,
    location: String,
    client: Arc<OnceLock<Result<Client, String>>>,
}

/// What a request needs: an HTTP client, credentials and where the bucket is.
pub(crate) struct Client {
    pub(crate) http: reqwest::Client,
    pub(crate) credentials: Arc<dyn CredentialProvider<Credential = AwsCredential>>,
    pub(crate) region: String,
    /// The endpoint, without a trailing `/`.
    pub(crate) endpoint: String,
    /// The `Host` header the HTTP client sends to it.
    pub(crate) host: String,
    pub(crate) bucket: String,
    storage_class: Option<String>,
    /// How long a request may go without progress: the store client's request timeout.
    pub(crate) idle: Duration,
}

impl std::fmt::Debug for StreamingPut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamingPut")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// The client for an `s3://` URL, configured as [`crate::open_store`] would.
    fn new(url: &str) -> Result<Self, StoreConfigError> {
        let parsed = StoreUrl::parse(url)?;
        let StoreUrl::S3 {
            bucket,
            ca_file,
            storage_class,
            ..
        } = &parsed
        else {
            return Err(StoreConfigError::Invalid {
                url: url.to_owned(),
                reason: "not an s3:// URL".into(),
            });
        };
        let (builder, _) = s3_settings(url, &parsed)?;
        let (region, endpoint) = s3_region_and_endpoint(&builder);
        let idle = builder
            .get_config_value(&object_store::aws::AmazonS3ConfigKey::Client(
                object_store::ClientConfigKey::Timeout,
            ))
            .and_then(|t| humantime::parse_duration(&t).ok())
            .unwrap_or(REQUEST_TIMEOUT);
        let store = builder.build().map_err(|source| StoreConfigError::Client {
            url: url.to_owned(),
            source,
        })?;
        let mut http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60));
        if !endpoint.starts_with("http://") {
            for root in extra_reqwest_roots(url, ca_file.as_deref())? {
                http = http.add_root_certificate(root);
            }
        }
        let http = http.build().map_err(|e| StoreConfigError::Invalid {
            url: url.to_owned(),
            reason: format!("HTTP client: {e}"),
        })?;
        let endpoint = endpoint.trim_end_matches('/').to_owned();
        let parsed_endpoint =
            url::Url::parse(&endpoint).map_err(|e| StoreConfigError::Invalid {
                url: url.to_owned(),
                reason: format!("endpoint {endpoint}: {e}"),
            })?;
        let host = match (parsed_endpoint.host_str(), parsed_endpoint.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            (None, _) => {
                return Err(StoreConfigError::Invalid {
                    url: url.to_owned(),
                    reason: format!("endpoint {endpoint} has no host"),
                })
            }
        };
        Ok(Client {
            http,
            credentials: store.credentials().clone(),
            region,
            endpoint,
            host,
            bucket: bucket.clone(),
            storage_class: storage_class.clone(),
            idle,
        })
    }
}

impl StreamingPut {
    /// The streaming `PUT`s for an `s3://` URL; `None` for any other store.
    pub(crate) fn for_url(url: &str) -> Result<Option<Self>, StoreConfigError> {
        let StoreUrl::S3 { bucket, prefix, .. } = StoreUrl::parse(url)? else {
            return Ok(None);
        };
        Ok(Some(StreamingPut {
            url: url.to_owned(),
            location: format!("s3://{bucket}/{prefix}"),
            client: Arc::default(),
        }))
    }

    pub(crate) fn client(&self) -> Result<&Client, String> {
        self.client
            .get_or_init(|| Client::new(&self.url).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Puts `body`, exactly `size` bytes, at `path` in one request; returns the ETag the store
    /// gave it. `key` names the object in errors.
    pub(crate) async fn put(
        &self,
        key: &str,
        path: &object_store::path::Path,
        size: u64,
        body: ByteStream,
    ) -> Result<Option<String>, SinkError> {
        let mut headers = http::HeaderMap::new();
        if let Ok(Some(class)) = self.client().map(|c| c.storage_class.as_ref()) {
            let class = http::HeaderValue::from_str(class).map_err(|e| SinkError::Backend {
                operation: "put",
                key: key.to_owned(),
                location: self.location.clone(),
                source: format!("storage class {class:?}: {e}").into(),
            })?;
            headers.insert("x-amz-storage-class", class);
        }
        // object_store sends a path's text as the key (escaping it once more on the wire).
        self.put_exact(key, path.as_ref(), size, body, headers)
            .await
    }

    /// Puts `body`, exactly `size` bytes, at the S3 key `s3_key` in one request, with
    /// `headers`; returns the ETag the store gave it. `shown` names the object in errors.
    pub(crate) async fn put_exact(
        &self,
        shown: &str,
        s3_key: &str,
        size: u64,
        body: ByteStream,
        headers: http::HeaderMap,
    ) -> Result<Option<String>, SinkError> {
        let failed = |reason: String| SinkError::Backend {
            operation: "put",
            key: shown.to_owned(),
            location: self.location.clone(),
            source: reason.into(),
        };
        let client = self.client().map_err(failed)?;
        let request = self
            .prepare_exact(http::Method::PUT, Some(s3_key), &[], headers)
            .await
            .map_err(failed)?;
        // The body's own error (a failed read, a damaged object) is the one to report, not the
        // client's "error sending request".
        let stream_error: Arc<Mutex<Option<String>>> = Arc::default();
        let seen = stream_error.clone();
        let progress = Progress::default();
        let taken = progress.clone();
        let body = body.inspect_ok(move |_| taken.made()).map_err(move |e| {
            seen.lock()
                .expect("stream error lock")
                .get_or_insert_with(|| e.to_string());
            Box::new(e) as Box<dyn std::error::Error + Send + Sync>
        });
        let send = request
            .header(http::header::CONTENT_LENGTH, size)
            .body(reqwest::Body::wrap_stream(body))
            .send();
        let stalled = || {
            failed(format!(
                "timed out: no progress for {:?} (the store stopped taking the body or answering)",
                client.idle
            ))
        };
        let sent = progress
            .unless_idle(client.idle, send)
            .await
            .ok_or_else(stalled)?;
        let response = sent.map_err(|e| {
            let cause = stream_error.lock().expect("stream error lock").take();
            failed(cause.unwrap_or_else(|| error_chain(&e)))
        })?;
        let status = response.status();
        let etag = response
            .headers()
            .get(http::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if !status.is_success() {
            let text = tokio::time::timeout(client.idle, response.text())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            return Err(failed(format!("HTTP {status}: {}", text.trim())));
        }
        Ok(etag)
    }
}

impl StreamingPut {
    /// The bucket and prefix, for messages.
    pub(crate) fn location(&self) -> &str {
        &self.location
    }
}

/// When a request last made progress.
#[derive(Clone)]
struct Progress {
    since: Instant,
    /// Milliseconds from `since` to the last progress.
    last: Arc<AtomicU64>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            since: Instant::now(),
            last: Arc::default(),
        }
    }
}

impl Progress {
    fn made(&self) {
        self.last
            .store(self.since.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn deadline(&self, idle: Duration) -> Instant {
        self.since + Duration::from_millis(self.last.load(Ordering::Relaxed)) + idle
    }

    /// `work`'s output, or `None` once it has gone `idle` without progress.
    async fn unless_idle<F: Future>(&self, idle: Duration, work: F) -> Option<F::Output> {
        let mut work = std::pin::pin!(work);
        loop {
            let deadline = self.deadline(idle);
            match tokio::time::timeout_at(deadline.into(), &mut work).await {
                Ok(out) => return Some(out),
                Err(_) if self.deadline(idle) <= Instant::now() => return None,
                Err(_) => {}
            }
        }
    }
}

/// An error and its sources, as one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_encoded_as_object_store_encodes_them() {
        use crate::s3_exact::wire_key;
        let path = object_store::path::Path::from("repo/data/ab/ab12");
        assert_eq!(wire_key(path.as_ref()), "repo/data/ab/ab12");
        // A path already carries object_store's own escapes; the request escapes it once more,
        // exactly as object_store's requests do, so both name the same S3 key.
        let odd = object_store::path::Path::from("my repo/naïve+1");
        assert_eq!(odd.as_ref(), "my repo/na%C3%AFve+1");
        assert_eq!(wire_key(odd.as_ref()), "my%20repo/na%25C3%25AFve%2B1");
    }

    #[test]
    fn only_s3_urls_get_streaming_puts() {
        assert!(StreamingPut::for_url("memory://").unwrap().is_none());
        let put = StreamingPut::for_url(
            "s3://b/p?endpoint=http://127.0.0.1:3900&region=dc-b&storage_class=STANDARD_IA",
        )
        .unwrap()
        .unwrap();
        let client = put.client().unwrap();
        assert_eq!(
            (client.endpoint.as_str(), client.bucket.as_str()),
            ("http://127.0.0.1:3900", "b")
        );
        assert_eq!(client.region, "dc-b");
        assert_eq!(client.storage_class.as_deref(), Some("STANDARD_IA"));
    }
}
