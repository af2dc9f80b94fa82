//! Azure Blob Storage by exact blob name: List Blobs, Get Blob Properties, Get Blob and a
//! streamed Put Blob, signed with `object_store`'s own authorizer ([`AzureAuthorizer`]: shared
//! key, SAS or bearer token) with the account and credentials `object_store` takes from the
//! `AZURE_*` variables (Azurite's well-known account with `AZURE_STORAGE_USE_EMULATOR`).
//!
//! `object_store` names blobs by `Path`, which cannot hold a name with a leading, trailing or
//! doubled `/`, a `.` or `..` segment or a control character. Here each name goes out as S3
//! keys do ([`crate::s3_exact::wire_key`]): percent-encoded, a leading `/` and the `/` around
//! a dot segment as `%2F`, so that no URL parser on the way removes them; the service decodes
//! them back. Listings ask for metadata too; a name the service marks `Encoded` is decoded.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::TryStreamExt;
use object_store::azure::{AzureAuthorizer, AzureConfigKey, AzureCredential};
use object_store::client::{CredentialProvider, HttpRequestBody};
use object_store::Attributes;
use quick_xml::events::Event;
use resilience_core::sink::ByteStream;

use crate::config::{StoreConfigError, StoreUrl};
use crate::exact::{
    head_of, headers_from_attributes, idle_bounded_body, paged, send_with_retries, ListedObject,
    ObjectHead, PropertyHeaders, UNRESERVED,
};
use crate::s3_exact::wire_key;
use crate::streaming_put::error_chain;
use crate::versions::text_of;

/// Blobs per listing page.
const PAGE: usize = 1000;

/// One Azure container, by exact blob name.
#[derive(Clone)]
pub(crate) struct ExactAzure {
    http: reqwest::Client,
    /// `{account URL}/{container}` (with the emulator, `{URL}/{account}/{container}`).
    container_url: String,
    account: String,
    location: String,
    credentials: Arc<dyn CredentialProvider<Credential = AzureCredential>>,
    idle: Duration,
}

impl std::fmt::Debug for ExactAzure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExactAzure")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// One page of a List Blobs answer: the blobs, and where the next page starts.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct BlobPage {
    pub(crate) blobs: Vec<ListedObject>,
    pub(crate) next: Option<String>,
}

/// Parses a List Blobs answer (`EnumerationResults`).
pub(crate) fn parse_blob_page(xml: &[u8]) -> Result<BlobPage, String> {
    let mut reader = quick_xml::Reader::from_reader(xml);
    let mut page = BlobPage::default();
    let mut blob: Option<HashMap<&'static str, String>> = None;
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Start(e) => {
                let name = e.local_name();
                match name.as_ref() {
                    b"Blob" => blob = Some(HashMap::new()),
                    b"NextMarker" => {
                        let next = text_of(&mut reader, b"NextMarker")?;
                        page.next = (!next.is_empty()).then_some(next);
                    }
                    b"Name" if blob.is_some() => {
                        let encoded = e
                            .try_get_attribute("Encoded")
                            .map_err(|e| e.to_string())?
                            .is_some_and(|a| a.value.as_ref() == b"true");
                        let text = text_of(&mut reader, b"Name")?;
                        let name = if encoded {
                            percent_encoding::percent_decode_str(&text)
                                .decode_utf8()
                                .map_err(|e| format!("name {text:?}: {e}"))?
                                .into_owned()
                        } else {
                            text
                        };
                        blob.as_mut().expect("checked").insert("Name", name);
                    }
                    field @ (b"Last-Modified" | b"Etag" | b"Content-Length") => {
                        let field: &'static str = match field {
                            b"Last-Modified" => "Last-Modified",
                            b"Etag" => "Etag",
                            _ => "Content-Length",
                        };
                        let text = text_of(&mut reader, field.as_bytes())?;
                        if let Some(b) = blob.as_mut() {
                            b.insert(field, text);
                        }
                    }
                    _ => {}
                }
            }
            Event::End(e) if e.local_name().as_ref() == b"Blob" => {
                let b = blob.take().ok_or("</Blob> without <Blob>")?;
                let name = b.get("Name").ok_or("a blob without a Name")?.clone();
                let size = b
                    .get("Content-Length")
                    .ok_or_else(|| format!("{name}: no Content-Length"))?
                    .parse()
                    .map_err(|e| format!("{name}: Content-Length: {e}"))?;
                let last_modified = b
                    .get("Last-Modified")
                    .and_then(|t| DateTime::parse_from_rfc2822(t).ok())
                    .ok_or_else(|| format!("{name}: no readable Last-Modified"))?
                    .with_timezone(&Utc);
                page.blobs.push(ListedObject {
                    e_tag: b.get("Etag").map(|e| quoted(e)),
                    key: name,
                    size,
                    last_modified,
                });
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(page)
}

/// An ETag as a header gives it: quoted.
fn quoted(e: &str) -> String {
    if e.starts_with('"') {
        e.to_owned()
    } else {
        format!("\"{e}\"")
    }
}

/// How a blob's properties and metadata are named in answers.
const READ_HEADERS: PropertyHeaders = PropertyHeaders {
    properties: [
        "content-type",
        "content-encoding",
        "content-disposition",
        "content-language",
        "cache-control",
    ],
    metadata: "x-ms-meta-",
};

/// How a Put Blob names the blob's properties (its own headers, never the request's
/// `Content-Encoding`, which a server may act on) and metadata.
const WRITE_HEADERS: PropertyHeaders = PropertyHeaders {
    properties: [
        "x-ms-blob-content-type",
        "x-ms-blob-content-encoding",
        "x-ms-blob-content-disposition",
        "x-ms-blob-content-language",
        "x-ms-blob-cache-control",
    ],
    metadata: "x-ms-meta-",
};

/// The headers of a Put Blob that writes `attributes` as the blob's properties and metadata.
fn put_headers(attributes: &Attributes) -> Result<http::HeaderMap, String> {
    let mut headers = headers_from_attributes(attributes, &WRITE_HEADERS)?;
    headers.insert(
        "x-ms-blob-type",
        http::HeaderValue::from_static("BlockBlob"),
    );
    Ok(headers)
}

impl ExactAzure {
    /// The container of an `az://` URL; `None` for any other store.
    pub(crate) fn for_url(url: &str) -> Result<Option<Self>, StoreConfigError> {
        let StoreUrl::Azure {
            container,
            prefix,
            ca_file,
        } = StoreUrl::parse(url)?
        else {
            return Ok(None);
        };
        let invalid = |reason: String| StoreConfigError::Invalid {
            url: url.to_owned(),
            reason,
        };
        let builder =
            object_store::azure::MicrosoftAzureBuilder::from_env().with_container_name(&container);
        let emulator = builder
            .get_config_value(&AzureConfigKey::UseEmulator)
            .is_some_and(|v| v == "true" || v == "1");
        let configured_account = builder.get_config_value(&AzureConfigKey::AccountName);
        let endpoint = builder.get_config_value(&AzureConfigKey::Endpoint);
        let store = builder.build().map_err(|source| StoreConfigError::Client {
            url: url.to_owned(),
            source,
        })?;
        let (account, account_url) = if emulator {
            let account = configured_account.unwrap_or_else(|| "devstoreaccount1".into());
            let base = std::env::var("AZURITE_BLOB_STORAGE_URL")
                .unwrap_or_else(|_| "http://127.0.0.1:10000".into());
            let url = format!("{}/{account}", base.trim_end_matches('/'));
            (account, url)
        } else {
            let account = configured_account.ok_or_else(|| {
                invalid("no Azure storage account (AZURE_STORAGE_ACCOUNT_NAME)".into())
            })?;
            let url =
                endpoint.unwrap_or_else(|| format!("https://{account}.blob.core.windows.net"));
            (account, url)
        };
        let mut http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60));
        if !account_url.starts_with("http://") {
            for root in crate::config::extra_reqwest_roots(url, ca_file.as_deref())? {
                http = http.add_root_certificate(root);
            }
        }
        let http = http
            .build()
            .map_err(|e| invalid(format!("HTTP client: {e}")))?;
        Ok(Some(ExactAzure {
            http,
            container_url: format!(
                "{}/{}",
                account_url.trim_end_matches('/'),
                percent_encoding::utf8_percent_encode(
                    &container,
                    percent_encoding::NON_ALPHANUMERIC
                )
            ),
            account,
            location: format!("az://{container}/{prefix}"),
            credentials: store.credentials().clone(),
            idle: crate::config::REQUEST_TIMEOUT,
        }))
    }

    /// The container and prefix, for messages.
    pub(crate) fn location(&self) -> &str {
        &self.location
    }

    /// A signed request to `url` with `headers` (which are signed), ready to send.
    async fn signed(
        &self,
        method: http::Method,
        url: &str,
        headers: http::HeaderMap,
    ) -> Result<reqwest::RequestBuilder, String> {
        let credential = self
            .credentials
            .get_credential()
            .await
            .map_err(|e| e.to_string())?;
        let mut request = http::Request::builder()
            .method(method.clone())
            .uri(url)
            .body(HttpRequestBody::empty())
            .map_err(|e| e.to_string())?;
        *request.headers_mut() = headers;
        AzureAuthorizer::new(&credential, &self.account).authorize(&mut request);
        // A SAS credential goes in the query: the URL as signed.
        let signed_url = request.uri().to_string();
        Ok(self
            .http
            .request(method, signed_url)
            .headers(request.headers().clone()))
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, String> {
        send_with_retries(request, self.idle).await
    }

    async fn failure(&self, response: reqwest::Response) -> String {
        let status = response.status();
        let text = tokio::time::timeout(self.idle, response.text())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        format!("HTTP {status}: {}", text.trim())
    }

    fn blob_url(&self, name: &str) -> Result<String, String> {
        if name == "." || name == ".." {
            return Err("a name that is only `.` or `..` cannot be addressed by a URL path".into());
        }
        Ok(format!("{}/{}", self.container_url, wire_key(name)))
    }

    async fn list_page(&self, prefix: &str, marker: Option<&str>) -> Result<BlobPage, String> {
        let enc = |v: &str| percent_encoding::utf8_percent_encode(v, UNRESERVED).to_string();
        let mut url = format!(
            "{}?restype=container&comp=list&maxresults={PAGE}&prefix={}",
            self.container_url,
            enc(prefix)
        );
        if let Some(m) = marker {
            url.push_str(&format!("&marker={}", enc(m)));
        }
        let response = self
            .send(
                self.signed(http::Method::GET, &url, http::HeaderMap::new())
                    .await?,
            )
            .await?;
        if !response.status().is_success() {
            return Err(self.failure(response).await);
        }
        let body = tokio::time::timeout(self.idle, response.bytes())
            .await
            .map_err(|_| format!("timed out after {:?} reading the listing", self.idle))?
            .map_err(|e| error_chain(&e))?;
        parse_blob_page(&body).map_err(|e| format!("the listing does not parse: {e}"))
    }

    /// Every blob whose name starts with `prefix`, in name order, page by page.
    pub(crate) fn list(&self, prefix: &str) -> BoxStream<'static, Result<ListedObject, String>> {
        let this = self.clone();
        let prefix = prefix.to_owned();
        paged(move |marker| {
            let (this, prefix) = (this.clone(), prefix.clone());
            async move {
                let page = this.list_page(&prefix, marker.as_deref()).await?;
                Ok((page.blobs, page.next))
            }
        })
    }

    /// The blob `name`, if there is one (Azure keeps no versions here: `version` must be none).
    pub(crate) async fn head(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Option<ObjectHead>, String> {
        if version.is_some() {
            return Err("blob versions are not read".into());
        }
        let url = self.blob_url(name)?;
        let response = self
            .send(
                self.signed(http::Method::HEAD, &url, http::HeaderMap::new())
                    .await?,
            )
            .await?;
        head_of(&response, &READ_HEADERS, None)
    }

    /// The bytes of `name`, streamed; each piece awaited at most the request timeout. `None`
    /// if there is no such blob.
    pub(crate) async fn get(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Option<BoxStream<'static, std::io::Result<Bytes>>>, String> {
        if version.is_some() {
            return Err("blob versions are not read".into());
        }
        let url = self.blob_url(name)?;
        let response = self
            .send(
                self.signed(http::Method::GET, &url, http::HeaderMap::new())
                    .await?,
            )
            .await?;
        if response.status() == http::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(self.failure(response).await);
        }
        Ok(Some(idle_bounded_body(response, self.idle)))
    }

    /// Writes `size` bytes of `body` at `name` with `attributes` in one streamed Put Blob;
    /// returns the blob's ETag. A body that fails or ends early stores nothing.
    pub(crate) async fn put(
        &self,
        name: &str,
        size: u64,
        body: ByteStream,
        attributes: &Attributes,
    ) -> Result<Option<String>, String> {
        let url = self.blob_url(name)?;
        let mut headers = put_headers(attributes)?;
        headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(size));
        let request =
            self.signed(http::Method::PUT, &url, headers)
                .await?
                .body(reqwest::Body::wrap_stream(body.map_err(|e| {
                    Box::new(e) as Box<dyn std::error::Error + Send + Sync>
                })));
        let allowed = self.idle * (1 + (size >> 20) as u32);
        let response = tokio::time::timeout(allowed, request.send())
            .await
            .map_err(|_| format!("timed out after {allowed:?}"))?
            .map_err(|e| error_chain(&e))?;
        if !response.status().is_success() {
            return Err(self.failure(response).await);
        }
        Ok(response
            .headers()
            .get(http::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(quoted))
    }
}

#[cfg(test)]
mod tests {
    use object_store::Attribute;

    use super::*;

    #[test]
    fn a_blob_listing_reads_names_as_stored() {
        let xml = br#"<?xml version="1.0" encoding="utf-8"?>
<EnumerationResults ServiceEndpoint="http://127.0.0.1:10000/devstoreaccount1" ContainerName="c">
<Prefix>p/</Prefix><MaxResults>1000</MaxResults><Blobs>
<Blob><Name>p//a b/</Name><Properties><Last-Modified>Thu, 03 Dec 2026 10:00:00 GMT</Last-Modified><Etag>0x8DC1</Etag><Content-Length>3</Content-Length><Content-Type>text/csv</Content-Type></Properties><Metadata><owner>x</owner></Metadata></Blob>
<Blob><Name Encoded="true">p%2Fc%01</Name><Properties><Last-Modified>Thu, 03 Dec 2026 10:00:01 GMT</Last-Modified><Etag>"0x8DC2"</Etag><Content-Length>0</Content-Length></Properties></Blob>
</Blobs><NextMarker>2!abc</NextMarker></EnumerationResults>"#;
        let page = parse_blob_page(xml).unwrap();
        let names: Vec<&str> = page.blobs.iter().map(|b| b.key.as_str()).collect();
        assert_eq!(names, ["p//a b/", "p/c\u{1}"]);
        assert_eq!(page.blobs[0].e_tag.as_deref(), Some("\"0x8DC1\""));
        assert_eq!(page.blobs[1].e_tag.as_deref(), Some("\"0x8DC2\""));
        assert_eq!(page.blobs[0].size, 3);
        assert_eq!(page.next.as_deref(), Some("2!abc"));
        assert!(
            parse_blob_page(b"<EnumerationResults><Blobs><Blob><Name>x</Name></Blob>").is_err()
        );
    }

    #[test]
    fn put_headers_carry_properties_and_refuse_unsignable_values() {
        let mut a = Attributes::new();
        a.insert(Attribute::ContentType, "text/csv".into());
        a.insert(Attribute::Metadata("owner".into()), "billing".into());
        let h = put_headers(&a).unwrap();
        assert_eq!(h["x-ms-blob-content-type"], "text/csv");
        assert_eq!(h["x-ms-meta-owner"], "billing");
        assert_eq!(h["x-ms-blob-type"], "BlockBlob");
        let mut bad = Attributes::new();
        bad.insert(Attribute::Metadata("owner".into()), "bïlling".into());
        assert!(put_headers(&bad).unwrap_err().contains("x-ms-meta-owner"));
    }
}
