//! Google Cloud Storage by exact object name, through its JSON API: the listing, an object's
//! metadata, its media (as stored) and a multipart upload (metadata and media in one request,
//! the media streamed).
//!
//! `object_store` names objects by `Path`, which cannot hold a name with a leading, trailing or
//! doubled `/`, a `.` or `..` segment or a control character; GCS holds all of those (it
//! refuses only names with a carriage return or line feed, and the names `.` and `..`). In the
//! JSON API an object's name is one percent-encoded path segment, `/` included, so no URL
//! parser or server on the way can change it.
//!
//! The base URL, credentials and CA certificates are those [`crate::open_store`] takes from the
//! same `gs://` URL: the bearer token of the credentials `object_store` finds, or none for an
//! endpoint on loopback without credentials. An object's ETag here is the hex MD5 of its bytes,
//! quoted (as GCS's XML API gives it for an object not composed of others), else its JSON
//! `etag`.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::client::CredentialProvider;
use object_store::gcp::GcpCredential;
use object_store::{Attribute, AttributeValue, Attributes};
use percent_encoding::{utf8_percent_encode, AsciiSet};
use resilience_core::sink::ByteStream;
use serde::Deserialize;

use crate::config::{StoreConfigError, StoreUrl};
use crate::exact::{
    idle_bounded_body, paged, send_with_retries, ListedObject, ObjectHead, UNRESERVED,
};
use crate::streaming_put::error_chain;

/// What stays unencoded in an object name in a URL: the unreserved characters.
const NAME: &AsciiSet = UNRESERVED;

/// Objects per listing page.
const PAGE: usize = 1000;

/// The multipart boundary of uploads: never in the metadata JSON (which escapes nothing into
/// it), and the media part is framed by its length.
const BOUNDARY: &str = "resilience-exact-upload-7f3a9c2e";

/// One GCS bucket, by exact object name.
#[derive(Clone)]
pub(crate) struct ExactGcs {
    http: reqwest::Client,
    /// The storage API's base URL, without a trailing `/`.
    base: String,
    bucket: String,
    location: String,
    /// `None`: anonymous (an emulator on loopback).
    credentials: Option<Arc<dyn CredentialProvider<Credential = GcpCredential>>>,
    idle: Duration,
}

impl std::fmt::Debug for ExactGcs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExactGcs")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// An object resource of the JSON API (the fields used here).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Resource {
    name: String,
    size: String,
    updated: String,
    md5_hash: Option<String>,
    etag: Option<String>,
    generation: Option<String>,
    content_type: Option<String>,
    content_encoding: Option<String>,
    content_disposition: Option<String>,
    content_language: Option<String>,
    cache_control: Option<String>,
    #[serde(default)]
    metadata: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListResponse {
    #[serde(default)]
    items: Vec<Resource>,
    next_page_token: Option<String>,
}

impl Resource {
    fn e_tag(&self) -> Option<String> {
        let md5 = self
            .md5_hash
            .as_ref()
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .filter(|m| m.len() == 16);
        match md5 {
            Some(m) => Some(format!("\"{}\"", hex::encode(m))),
            None => self.etag.clone(),
        }
    }

    fn listed(&self) -> Result<ListedObject, String> {
        Ok(ListedObject {
            key: self.name.clone(),
            size: self
                .size
                .parse()
                .map_err(|e| format!("{}: size {:?}: {e}", self.name, self.size))?,
            e_tag: self.e_tag(),
            last_modified: DateTime::parse_from_rfc3339(&self.updated)
                .map_err(|e| format!("{}: updated {:?}: {e}", self.name, self.updated))?
                .with_timezone(&Utc),
        })
    }

    fn head(&self) -> Result<ObjectHead, String> {
        let listed = self.listed()?;
        let mut attributes = Attributes::new();
        for (attribute, value) in [
            (Attribute::ContentType, &self.content_type),
            (Attribute::ContentEncoding, &self.content_encoding),
            (Attribute::ContentDisposition, &self.content_disposition),
            (Attribute::ContentLanguage, &self.content_language),
            (Attribute::CacheControl, &self.cache_control),
        ] {
            if let Some(v) = value {
                attributes.insert(attribute, AttributeValue::from(v.clone()));
            }
        }
        for (k, v) in &self.metadata {
            attributes.insert(
                Attribute::Metadata(k.clone().into()),
                AttributeValue::from(v.clone()),
            );
        }
        Ok(ObjectHead {
            size: listed.size,
            e_tag: listed.e_tag,
            last_modified: listed.last_modified,
            version: self.generation.clone(),
            attributes,
        })
    }
}

/// A listing page of the JSON API: its objects, and the token of the next page.
pub(crate) fn parse_list_response(
    body: &[u8],
) -> Result<(Vec<ListedObject>, Option<String>), String> {
    let page: ListResponse =
        serde_json::from_slice(body).map_err(|e| format!("the listing does not parse: {e}"))?;
    let objects = page
        .items
        .iter()
        .map(Resource::listed)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((objects, page.next_page_token))
}

/// The metadata part of an upload of `name` with `attributes`.
fn upload_metadata(name: &str, attributes: &Attributes) -> Result<serde_json::Value, String> {
    let mut resource = serde_json::Map::new();
    resource.insert("name".into(), name.into());
    let mut metadata = serde_json::Map::new();
    for (attribute, value) in attributes {
        let field = match attribute {
            Attribute::ContentType => "contentType",
            Attribute::ContentEncoding => "contentEncoding",
            Attribute::ContentDisposition => "contentDisposition",
            Attribute::ContentLanguage => "contentLanguage",
            Attribute::CacheControl => "cacheControl",
            Attribute::Metadata(m) => {
                metadata.insert(m.to_string(), value.as_ref().into());
                continue;
            }
            other => return Err(format!("the attribute {other:?} cannot be written")),
        };
        resource.insert(field.into(), value.as_ref().into());
    }
    if !metadata.is_empty() {
        resource.insert("metadata".into(), metadata.into());
    }
    Ok(resource.into())
}

impl ExactGcs {
    /// The bucket of a `gs://` URL; `None` for any other store.
    pub(crate) fn for_url(url: &str) -> Result<Option<Self>, StoreConfigError> {
        let StoreUrl::Gcs {
            bucket,
            prefix,
            endpoint,
            ca_file,
        } = StoreUrl::parse(url)?
        else {
            return Ok(None);
        };
        let settings = crate::config::gcs_exact_settings(
            url,
            &bucket,
            endpoint.as_deref(),
            ca_file.as_deref(),
        )?;
        let mut http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60));
        for root in settings.roots {
            http = http.add_root_certificate(root);
        }
        let http = http.build().map_err(|e| StoreConfigError::Invalid {
            url: url.to_owned(),
            reason: format!("HTTP client: {e}"),
        })?;
        Ok(Some(ExactGcs {
            http,
            base: settings.base.trim_end_matches('/').to_owned(),
            location: format!("gs://{bucket}/{prefix}"),
            bucket,
            credentials: settings.credentials,
            idle: crate::config::REQUEST_TIMEOUT,
        }))
    }

    /// The bucket and prefix, for messages.
    pub(crate) fn location(&self) -> &str {
        &self.location
    }

    fn object_url(&self, name: &str) -> String {
        format!(
            "{}/storage/v1/b/{}/o/{}",
            self.base,
            utf8_percent_encode(&self.bucket, NAME),
            utf8_percent_encode(name, NAME)
        )
    }

    /// A request with the bearer token (if any).
    async fn request(
        &self,
        method: http::Method,
        url: &str,
    ) -> Result<reqwest::RequestBuilder, String> {
        let mut request = self.http.request(method, url);
        if let Some(credentials) = &self.credentials {
            let token = credentials
                .get_credential()
                .await
                .map_err(|e| e.to_string())?;
            if !token.bearer.is_empty() {
                request = request.bearer_auth(&token.bearer);
            }
        }
        Ok(request)
    }

    /// Sends `request` and waits (at most the request timeout) for its answer's headers.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, String> {
        send_with_retries(request, self.idle).await
    }

    /// The body of a response, bounded by the request timeout; its status as an error when it
    /// is not a success.
    async fn body(&self, response: reqwest::Response) -> Result<Bytes, String> {
        let status = response.status();
        let body = tokio::time::timeout(self.idle, response.bytes())
            .await
            .map_err(|_| format!("timed out after {:?} reading the answer", self.idle))?
            .map_err(|e| error_chain(&e))?;
        if !status.is_success() {
            return Err(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&body).trim()
            ));
        }
        Ok(body)
    }

    /// One page of the objects whose names start with `prefix`, from `token` on.
    async fn list_page(
        &self,
        prefix: &str,
        token: Option<&str>,
    ) -> Result<(Vec<ListedObject>, Option<String>), String> {
        let mut url = format!(
            "{}/storage/v1/b/{}/o?maxResults={PAGE}&prefix={}",
            self.base,
            utf8_percent_encode(&self.bucket, NAME),
            utf8_percent_encode(prefix, NAME)
        );
        if let Some(token) = token {
            url.push_str("&pageToken=");
            url.extend(utf8_percent_encode(token, NAME));
        }
        let response = self
            .send(self.request(http::Method::GET, &url).await?)
            .await?;
        parse_list_response(&self.body(response).await?)
    }

    /// Every object whose name starts with `prefix`, in name order, page by page.
    pub(crate) fn list(&self, prefix: &str) -> BoxStream<'static, Result<ListedObject, String>> {
        let this = self.clone();
        let prefix = prefix.to_owned();
        paged(move |token| {
            let (this, prefix) = (this.clone(), prefix.clone());
            async move { this.list_page(&prefix, token.as_deref()).await }
        })
    }

    /// The object `name` (of one generation, if given), if there is one.
    pub(crate) async fn head(
        &self,
        name: &str,
        generation: Option<&str>,
    ) -> Result<Option<ObjectHead>, String> {
        let mut url = self.object_url(name);
        if let Some(g) = generation {
            url.push_str(&format!("?generation={}", utf8_percent_encode(g, NAME)));
        }
        let response = self
            .send(self.request(http::Method::GET, &url).await?)
            .await?;
        if response.status() == http::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let body = self.body(response).await?;
        let resource: Resource = serde_json::from_slice(&body)
            .map_err(|e| format!("the object's metadata does not parse: {e}"))?;
        resource.head().map(Some)
    }

    /// The bytes of `name` as stored (never decompressed), streamed; each piece awaited at most
    /// the request timeout. `None` if there is no such object.
    pub(crate) async fn get(
        &self,
        name: &str,
        generation: Option<&str>,
    ) -> Result<Option<BoxStream<'static, std::io::Result<Bytes>>>, String> {
        let mut url = format!("{}?alt=media", self.object_url(name));
        if let Some(g) = generation {
            url.push_str(&format!("&generation={}", utf8_percent_encode(g, NAME)));
        }
        let request = self
            .request(http::Method::GET, &url)
            .await?
            .header(http::header::ACCEPT_ENCODING, "gzip");
        let response = self.send(request).await?;
        if response.status() == http::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(self.body(response).await.err().unwrap_or_default());
        }
        Ok(Some(idle_bounded_body(response, self.idle)))
    }

    /// Writes `size` bytes of `body` at `name` with `attributes`, in one multipart upload whose
    /// media part is streamed; returns the stored object's ETag. A body that fails or ends
    /// early fails the upload, which then stores nothing.
    pub(crate) async fn put(
        &self,
        name: &str,
        size: u64,
        body: ByteStream,
        attributes: &Attributes,
    ) -> Result<Option<String>, String> {
        let metadata = upload_metadata(name, attributes)?;
        let head = Bytes::from(format!(
            "--{BOUNDARY}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{metadata}\r\n\
             --{BOUNDARY}\r\nContent-Type: application/octet-stream\r\n\r\n"
        ));
        let tail = Bytes::from(format!("\r\n--{BOUNDARY}--\r\n"));
        let length = head.len() as u64 + size + tail.len() as u64;
        let framed = futures::stream::once(futures::future::ready(Ok(head)))
            .chain(body.map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>))
            .chain(futures::stream::once(futures::future::ready(Ok(tail))));
        let url = format!(
            "{}/upload/storage/v1/b/{}/o?uploadType=multipart",
            self.base,
            utf8_percent_encode(&self.bucket, NAME)
        );
        let request = self
            .request(http::Method::POST, &url)
            .await?
            .header(
                http::header::CONTENT_TYPE,
                format!("multipart/related; boundary={BOUNDARY}"),
            )
            .header(http::header::CONTENT_LENGTH, length)
            .body(reqwest::Body::wrap_stream(framed));
        // The whole upload is bounded by the request timeout per megabyte sent, at least once.
        let allowed = self.idle * (1 + (size >> 20) as u32);
        let response = tokio::time::timeout(allowed, request.send())
            .await
            .map_err(|_| format!("timed out after {allowed:?}"))?
            .map_err(|e| error_chain(&e))?;
        let body = self.body(response).await?;
        let resource: Resource = serde_json::from_slice(&body)
            .map_err(|e| format!("the stored object's metadata does not parse: {e}"))?;
        if resource.name != name {
            return Err(format!(
                "the store named the object {:?}, not {name:?}",
                resource.name
            ));
        }
        Ok(resource.e_tag())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resource_reads_with_its_attributes_and_hex_md5_etag() {
        let json = br#"{"kind":"storage#object","name":"/a//b/","bucket":"b","size":"3",
            "md5Hash":"rL0Y20zC+Fzt72VPzMSk2A==","etag":"CKih16GjycICEAE=","generation":"7",
            "updated":"2026-12-03T10:00:00.123Z","contentType":"text/csv","cacheControl":"no-cache",
            "metadata":{"owner":"billing"}}"#;
        let r: Resource = serde_json::from_slice(json).unwrap();
        let head = r.head().unwrap();
        assert_eq!(head.size, 3);
        assert_eq!(
            head.e_tag.as_deref(),
            Some("\"acbd18db4cc2f85cedef654fccc4a4d8\"")
        );
        assert_eq!(head.version.as_deref(), Some("7"));
        assert_eq!(
            head.attributes
                .get(&Attribute::ContentType)
                .unwrap()
                .as_ref(),
            "text/csv"
        );
        assert_eq!(
            head.attributes
                .get(&Attribute::Metadata("owner".into()))
                .unwrap()
                .as_ref(),
            "billing"
        );
        assert_eq!(head.attributes.len(), 3);
        let back = upload_metadata(&r.name, &head.attributes).unwrap();
        assert_eq!(
            back,
            serde_json::json!({"name": "/a//b/", "contentType": "text/csv",
                "cacheControl": "no-cache", "metadata": {"owner": "billing"}})
        );
    }

    #[test]
    fn names_are_one_path_segment() {
        assert_eq!(
            utf8_percent_encode("/a//./../b c%", NAME).to_string(),
            "%2Fa%2F%2F.%2F..%2Fb%20c%25"
        );
    }
}
