//! S3 requests that name an exact key: `ListObjectsV2`, `HEAD`, `GET` and a streamed `PUT`.
//!
//! `object_store` names an object by a `Path`, which cannot hold every key a bucket can: a key
//! with a leading, trailing or doubled `/`, a `.` or `..` segment or an ASCII control character
//! is refused, or listed under another name. A bucket backup and restore must keep every key
//! exactly, so on S3 they list, read and write through these requests instead, on the same
//! HTTP client and credentials as [`StreamingPut`].
//!
//! Each key is sent so that no client or server on the way changes it: every byte but the
//! unreserved ones and `/` is percent-encoded, and a `/` that a URL parser or the server would
//! remove (a leading one, and those around a `.` or `..` segment) is sent as `%2F`, which S3
//! decodes back. Requests are signed for the decoded key ([`crate::sigv4`]). Listings ask for
//! URL-encoded keys (`encoding-type=url`), so a key with a control character lists intact.

use std::collections::HashMap;

use bytes::Bytes;
use chrono::Utc;
use futures::stream::BoxStream;
use object_store::Attributes;
use percent_encoding::{utf8_percent_encode, AsciiSet};
use quick_xml::events::Event;

use crate::exact::{
    head_of, headers_from_attributes, idle_bounded_body, paged, send_with_retries, ListedObject,
    ObjectHead, PropertyHeaders, UNRESERVED,
};
use crate::sigv4;
use crate::streaming_put::StreamingPut;
use crate::versions::{parse_time, text_of};

/// What the wire leaves unencoded in a key segment: the unreserved characters.
const SEGMENT: &AsciiSet = UNRESERVED;

/// How S3 names an object's properties and user metadata in headers.
const S3_HEADERS: PropertyHeaders = PropertyHeaders {
    properties: [
        "content-type",
        "content-encoding",
        "content-disposition",
        "content-language",
        "cache-control",
    ],
    metadata: "x-amz-meta-",
};

/// Keys per listing page.
const PAGE: usize = 1000;

/// One page of a `ListObjectsV2` listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ListPage {
    /// The objects, in key order.
    pub objects: Vec<ListedObject>,
    /// The continuation token of the next page, when the listing is truncated.
    pub next: Option<String>,
}

/// The path a request sends for `key` in `bucket` (see the module's text). A key that is only
/// `.` or `..` has no such path: [`StreamingPut::prepare_exact`] refuses it.
pub(crate) fn wire_path(bucket: &str, key: &str) -> String {
    format!(
        "/{}/{}",
        utf8_percent_encode(bucket, SEGMENT),
        wire_key(key)
    )
}

/// `key` as a URL path's tail: each segment percent-encoded, segments joined by `/`, except a
/// leading `/` and those around a `.` or `..` segment, which go as `%2F` (a URL parser or the
/// server would remove them).
pub(crate) fn wire_key(key: &str) -> String {
    let segments: Vec<&str> = key.split('/').collect();
    let dot = |s: &str| s == "." || s == "..";
    let mut path = String::new();
    for (i, segment) in segments.iter().enumerate() {
        if i > 0 {
            let leading = i == 1 && segments[0].is_empty();
            let encoded = leading || dot(segments[i - 1]) || dot(segment);
            path.push_str(if encoded { "%2F" } else { "/" });
        }
        path.extend(utf8_percent_encode(segment, SEGMENT));
    }
    path
}

/// A `ListObjectsV2` page (`encoding-type=url`: keys are percent-decoded here).
pub(crate) fn parse_list_page(xml: &[u8]) -> Result<ListPage, String> {
    let mut reader = quick_xml::Reader::from_reader(xml);
    let mut page = ListPage::default();
    let mut truncated = false;
    let mut token = None;
    let mut current: Option<HashMap<&'static str, String>> = None;
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Start(e) => {
                let name = e.local_name();
                match name.as_ref() {
                    b"Contents" => current = Some(HashMap::new()),
                    b"IsTruncated" => truncated = text_of(&mut reader, b"IsTruncated")? == "true",
                    b"NextContinuationToken" => {
                        token = Some(text_of(&mut reader, b"NextContinuationToken")?)
                    }
                    field @ (b"Key" | b"Size" | b"ETag" | b"LastModified") => {
                        let field: &'static str = match field {
                            b"Key" => "Key",
                            b"Size" => "Size",
                            b"ETag" => "ETag",
                            _ => "LastModified",
                        };
                        let text = text_of(&mut reader, field.as_bytes())?;
                        if let Some(c) = current.as_mut() {
                            c.insert(field, text);
                        }
                    }
                    _ => {}
                }
            }
            Event::End(e) if e.local_name().as_ref() == b"Contents" => {
                let c = current.take().ok_or("</Contents> without <Contents>")?;
                let encoded = c.get("Key").ok_or("an object without a Key")?;
                let key = percent_encoding::percent_decode_str(encoded)
                    .decode_utf8()
                    .map_err(|e| format!("key {encoded:?}: {e}"))?
                    .into_owned();
                let size = c
                    .get("Size")
                    .ok_or_else(|| format!("{key}: no Size"))?
                    .parse()
                    .map_err(|e| format!("{key}: Size: {e}"))?;
                let last_modified = parse_time(
                    c.get("LastModified")
                        .ok_or_else(|| format!("{key}: no LastModified"))?,
                )
                .map_err(|e| format!("{key}: LastModified: {e}"))?;
                page.objects.push(ListedObject {
                    key,
                    size,
                    e_tag: c.get("ETag").cloned(),
                    last_modified,
                });
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if truncated {
        page.next = Some(token.ok_or("a truncated listing without NextContinuationToken")?);
    }
    Ok(page)
}

/// The headers that write `attributes` with an object.
pub(crate) fn attribute_headers(attributes: &Attributes) -> Result<http::HeaderMap, String> {
    headers_from_attributes(attributes, &S3_HEADERS)
}

impl StreamingPut {
    /// A signed request for `key` (or the bucket) with `query` and `headers`, ready to send.
    pub(crate) async fn prepare_exact(
        &self,
        method: http::Method,
        key: Option<&str>,
        query: &[(&str, &str)],
        mut headers: http::HeaderMap,
    ) -> Result<reqwest::RequestBuilder, String> {
        let client = self.client()?;
        if key.is_some_and(|k| k == "." || k == "..") {
            // Every spelling of a lone dot segment is one to a URL parser, which removes it.
            return Err("a key that is only `.` or `..` cannot be addressed by a URL path".into());
        }
        let credential = client
            .credentials
            .get_credential()
            .await
            .map_err(|e| e.to_string())?;
        let query = sigv4::canonical_query(query);
        let (wire, signed_path) = match key {
            Some(key) => (
                wire_path(&client.bucket, key),
                sigv4::canonical_path(&client.bucket, key),
            ),
            None => {
                let path = format!("/{}", utf8_percent_encode(&client.bucket, SEGMENT));
                (path.clone(), path)
            }
        };
        sigv4::sign(
            &credential,
            &client.region,
            &sigv4::Request {
                method: method.as_str(),
                host: &client.host,
                path: &signed_path,
                query: &query,
                payload: sigv4::UNSIGNED_PAYLOAD,
            },
            &mut headers,
            Utc::now(),
        );
        let mut url = format!("{}{wire}", client.endpoint);
        if !query.is_empty() {
            url.push('?');
            url.push_str(&query);
        }
        Ok(client.http.request(method, &url).headers(headers))
    }

    /// Sends a signed request without a body and returns the response once its headers
    /// arrived (each attempt bounded by the request timeout; a busy or broken server is tried
    /// again, [`crate::exact::send_with_retries`]).
    pub(crate) async fn send_exact(
        &self,
        method: http::Method,
        key: Option<&str>,
        query: &[(&str, &str)],
    ) -> Result<reqwest::Response, String> {
        let request = self
            .prepare_exact(method, key, query, http::HeaderMap::new())
            .await?;
        send_with_retries(request, self.client()?.idle).await
    }

    /// Reads a failed response's body (bounded by the request timeout) into its error text.
    pub(crate) async fn failure(&self, response: reqwest::Response) -> String {
        let status = response.status();
        let idle = self.client().map(|c| c.idle).unwrap_or_default();
        let text = tokio::time::timeout(idle, response.text())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        format!("HTTP {status}: {}", text.trim())
    }

    /// Sends a signed request without a body — to the object `key` if given, else to the bucket
    /// — and returns the body of a successful answer (bounded by the request timeout), or the
    /// failure as text.
    pub(crate) async fn send_empty(
        &self,
        method: http::Method,
        key: Option<&str>,
        query: &[(&str, &str)],
    ) -> Result<Bytes, String> {
        let response = self.send_exact(method, key, query).await?;
        if !response.status().is_success() {
            return Err(self.failure(response).await);
        }
        let idle = self.client()?.idle;
        tokio::time::timeout(idle, response.bytes())
            .await
            .map_err(|_| format!("timed out after {idle:?} reading the answer"))?
            .map_err(|e| crate::streaming_put::error_chain(&e))
    }

    /// One page of the objects whose keys start with `prefix`, from `token` on.
    pub(crate) async fn list_page(
        &self,
        prefix: &str,
        token: Option<&str>,
    ) -> Result<ListPage, String> {
        let max = PAGE.to_string();
        let mut query = vec![
            ("list-type", "2"),
            ("encoding-type", "url"),
            ("max-keys", max.as_str()),
            ("prefix", prefix),
        ];
        if let Some(token) = token {
            query.push(("continuation-token", token));
        }
        let body = self.send_empty(http::Method::GET, None, &query).await?;
        parse_list_page(&body).map_err(|e| format!("the listing does not parse: {e}"))
    }

    /// Every object whose key starts with `prefix`, in key order, page by page.
    pub(crate) fn list_exact(
        &self,
        prefix: &str,
    ) -> BoxStream<'static, Result<ListedObject, String>> {
        let this = self.clone();
        let prefix = prefix.to_owned();
        paged(move |token| {
            let (this, prefix) = (this.clone(), prefix.clone());
            async move {
                let page = this.list_page(&prefix, token.as_deref()).await?;
                Ok((page.objects, page.next))
            }
        })
    }

    /// The object `key` (or one version of it): `None` if there is none.
    pub(crate) async fn head_exact(
        &self,
        key: &str,
        version: Option<&str>,
    ) -> Result<Option<ObjectHead>, String> {
        let query: Vec<(&str, &str)> = version.map(|v| ("versionId", v)).into_iter().collect();
        let response = self
            .send_exact(http::Method::HEAD, Some(key), &query)
            .await?;
        head_of(&response, &S3_HEADERS, Some("x-amz-version-id"))
    }

    /// The body of `key` (or of one version of it), streamed; each piece is awaited at most
    /// the request timeout. `None` if there is no such object.
    pub(crate) async fn get_exact(
        &self,
        key: &str,
        version: Option<&str>,
    ) -> Result<Option<BoxStream<'static, std::io::Result<Bytes>>>, String> {
        let query: Vec<(&str, &str)> = version.map(|v| ("versionId", v)).into_iter().collect();
        let response = self
            .send_exact(http::Method::GET, Some(key), &query)
            .await?;
        if response.status() == http::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(self.failure(response).await);
        }
        Ok(Some(idle_bounded_body(response, self.client()?.idle)))
    }
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;
    use object_store::Attribute;

    use super::*;
    use crate::exact::attributes_from_headers;
    use proptest::prelude::*;

    #[test]
    fn keys_go_out_so_that_nothing_on_the_way_changes_them() {
        for (key, wire) in [
            ("a/b c", "/bk/a/b%20c"),
            ("/a", "/bk/%2Fa"),
            ("a/", "/bk/a/"),
            ("a//b", "/bk/a//b"),
            ("//a", "/bk/%2F/a"),
            ("a/./b", "/bk/a%2F.%2Fb"),
            ("../a", "/bk/..%2Fa"),
            ("a/..", "/bk/a%2F.."),
            ("./..", "/bk/.%2F.."),
            ("a\u{1}%2e", "/bk/a%01%252e"),
        ] {
            assert_eq!(wire_path("bk", key), wire, "{key:?}");
            // A URL parser (as the HTTP client uses) leaves the path as it is.
            let url = url::Url::parse(&format!("http://h{wire}")).unwrap();
            assert_eq!(url.path(), wire, "{key:?}");
            // And decoding it gives the key back.
            let decoded = percent_encoding::percent_decode_str(&wire["/bk/".len()..])
                .decode_utf8()
                .unwrap();
            assert_eq!(decoded, key);
        }
    }

    fn render(page: &ListPage) -> String {
        let mut xml = String::from(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>b</Name><EncodingType>url</EncodingType>",
        );
        xml.push_str(&format!(
            "<IsTruncated>{}</IsTruncated>",
            page.next.is_some()
        ));
        for o in &page.objects {
            let key = utf8_percent_encode(&o.key, SEGMENT).to_string();
            xml.push_str(&format!(
                "<Contents><Key>{key}</Key><LastModified>{}</LastModified>{}<Size>{}</Size><StorageClass>STANDARD</StorageClass></Contents>",
                o.last_modified.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                o.e_tag
                    .as_ref()
                    .map(|e| format!("<ETag>{}</ETag>", quick_xml::escape::escape(e)))
                    .unwrap_or_default(),
                o.size
            ));
        }
        if let Some(next) = &page.next {
            xml.push_str(&format!(
                "<NextContinuationToken>{}</NextContinuationToken>",
                quick_xml::escape::escape(next)
            ));
        }
        xml.push_str("</ListBucketResult>");
        xml
    }

    fn object() -> impl Strategy<Value = ListedObject> {
        (
            "(\\PC|[\u{1}-\u{1f}/. ]){1,40}",
            any::<u64>(),
            proptest::option::of("\"[0-9a-f]{32}(-[0-9]{1,3})?\""),
            0i64..4_000_000_000_000,
        )
            .prop_map(|(key, size, e_tag, ms)| ListedObject {
                key,
                size,
                e_tag,
                last_modified: DateTime::from_timestamp_millis(ms).unwrap(),
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn listing_pages_parse_back(
            objects in proptest::collection::vec(object(), 0..6),
            next in proptest::option::of("[ -~]{1,40}"),
        ) {
            let page = ListPage { objects, next };
            prop_assert_eq!(parse_list_page(render(&page).as_bytes()).unwrap(), page);
        }
    }

    #[test]
    fn list_objects_v2_keys_are_read_as_stored() {
        let page = br#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name>
<EncodingType>url</EncodingType><KeyCount>3</KeyCount><IsTruncated>true</IsTruncated>
<Contents><Key>%2Flead</Key><LastModified>2026-12-03T10:00:00.000Z</LastModified><Size>1</Size></Contents>
<Contents><Key>a%2F%2Fb%20%C3%BC%25%01</Key><LastModified>2026-12-03T10:00:00Z</LastModified><ETag>&quot;x&quot;</ETag><Size>2</Size></Contents>
<Contents><Key>trail%2F</Key><LastModified>2026-12-03T10:00:00Z</LastModified><Size>3</Size></Contents>
<NextContinuationToken>t+/=</NextContinuationToken></ListBucketResult>"#;
        let parsed = parse_list_page(page).unwrap();
        let keys: Vec<&str> = parsed.objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, ["/lead", "a//b \u{fc}%\u{1}", "trail/"]);
        assert_eq!(parsed.objects[1].e_tag.as_deref(), Some("\"x\""));
        assert_eq!(parsed.next.as_deref(), Some("t+/="));
        for bad in [
            &b"<ListBucketResult><Contents><Key>%FF</Key><Size>1</Size><LastModified>2026-12-03T10:00:00Z</LastModified></Contents>"[..],
            b"<ListBucketResult><Contents><Key>k</Key><LastModified>2026-12-03T10:00:00Z</LastModified></Contents>",
            b"<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>",
        ] {
            assert!(parse_list_page(bad).is_err());
        }
    }

    #[test]
    fn attributes_go_out_and_come_back() {
        let mut a = Attributes::new();
        a.insert(Attribute::ContentType, "text/csv".into());
        a.insert(Attribute::CacheControl, "no-cache".into());
        a.insert(Attribute::Metadata("owner".into()), "billing".into());
        let headers = attribute_headers(&a).unwrap();
        assert_eq!(headers["x-amz-meta-owner"], "billing");
        let back = attributes_from_headers(&headers, &S3_HEADERS);
        assert_eq!(back.len(), a.len());
        for (k, v) in &a {
            assert_eq!(back.get(k), Some(v), "{k:?}");
        }
    }
}
