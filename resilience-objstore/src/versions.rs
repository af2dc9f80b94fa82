//! S3 object versions: `ListObjectVersions` (which `object_store` does not offer), and where
//! versions live in a snapshot.
//!
//! The request goes through the bucket's requests by exact key (`s3_exact`): signed
//! with the credentials of the store [`crate::open_store`] builds from the same URL and `AWS_*`
//! variables, trusting the same extra CA certificates, tried again on a busy server. Pages are
//! streamed (`key-marker` / `version-id-marker`), never gathered.
//!
//! In a snapshot, current objects are entries at their key, exactly as without versions (with
//! the attributes `version_id` and `is_latest`). Every other version and every delete marker is
//! an entry at [`version_entry_path`]: a first component `\xffversions`, which no S3 key can
//! produce (a key is UTF-8, where the byte 0xFF never occurs), so it never collides with an
//! object and sorts after every object; then the key; then the version id (with `%` and `/`
//! percent-encoded). Their attributes name the `key`, `version_id`, `last_modified`,
//! `is_latest`, `delete_marker` and `version_seq` (0 for the newest version of the key, 1 for
//! the one before…), which orders versions written within the same second.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::StreamExt;
use percent_encoding::{utf8_percent_encode, AsciiSet};
use quick_xml::events::Event;

use crate::config::{StoreConfigError, StoreUrl};
use crate::streaming_put::StreamingPut;

/// The first component of every version entry's path: not UTF-8, so never an object's key.
pub const VERSIONS_DIR: &[u8] = b"\xffversions";

/// A failure listing versions, naming the bucket.
#[derive(Debug, thiserror::Error)]
pub enum VersionsError {
    /// The store cannot keep versions (not S3, or versioning is not enabled on the bucket).
    #[error("{location} does not keep object versions: {reason}")]
    Unsupported {
        /// The bucket (URL, without credentials).
        location: String,
        /// Why.
        reason: String,
    },
    /// The URL or the client configuration is unusable.
    #[error(transparent)]
    Config(#[from] StoreConfigError),
    /// A request failed.
    #[error("{operation} on {location} failed: {reason}")]
    Request {
        /// `ListObjectVersions` or `GetBucketVersioning`.
        operation: &'static str,
        /// The bucket.
        location: String,
        /// The client's or the server's message.
        reason: String,
    },
    /// The server's answer is not a listing this code understands.
    #[error("cannot read the version listing of {location}: {reason}")]
    Parse {
        /// The bucket.
        location: String,
        /// What is wrong.
        reason: String,
    },
}

/// One version of an object, or a delete marker, as `ListObjectVersions` gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectVersion {
    /// The object's full key in the bucket.
    pub key: String,
    /// Its version id (`null` for an object written before versioning was enabled).
    pub version_id: String,
    /// Whether this is the key's current state (an object, or a delete marker: deleted).
    pub is_latest: bool,
    /// When it was written.
    pub last_modified: DateTime<Utc>,
    /// Its ETag (none for a delete marker).
    pub etag: Option<String>,
    /// Its size (0 for a delete marker).
    pub size: u64,
    /// A delete marker: the key was deleted at `last_modified`.
    pub delete_marker: bool,
}

/// One page of a listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VersionPage {
    /// Versions and delete markers, in the server's order (by key, newest first).
    pub versions: Vec<ObjectVersion>,
    /// Where the next page starts, when the listing is truncated.
    pub next: Option<(String, String)>,
}

pub(crate) fn text_of(reader: &mut quick_xml::Reader<&[u8]>, end: &[u8]) -> Result<String, String> {
    let mut out = String::new();
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Text(t) => out.push_str(&t.decode().map_err(|e| e.to_string())?),
            Event::CData(t) => out.push_str(&t.decode().map_err(|e| e.to_string())?),
            Event::GeneralRef(r) => {
                if let Some(c) = r.resolve_char_ref().map_err(|e| e.to_string())? {
                    out.push(c);
                } else {
                    let name = r.decode().map_err(|e| e.to_string())?;
                    let resolved = quick_xml::escape::resolve_predefined_entity(&name)
                        .ok_or_else(|| format!("unknown entity &{name};"))?;
                    out.push_str(resolved);
                }
            }
            Event::End(e) if e.local_name().as_ref() == end => return Ok(out),
            Event::Eof => return Err("unexpected end of document".into()),
            _ => {}
        }
    }
}

pub(crate) fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("LastModified {s:?}: {e}"))
}

/// Parses a `ListVersionsResult` document listing `location`; the error names it.
pub fn parse_version_page(location: &str, xml: &[u8]) -> Result<VersionPage, VersionsError> {
    parse_page(xml).map_err(|reason| VersionsError::Parse {
        location: location.to_owned(),
        reason,
    })
}

fn parse_page(xml: &[u8]) -> Result<VersionPage, String> {
    let mut reader = quick_xml::Reader::from_reader(xml);
    let mut page = VersionPage::default();
    let mut truncated = false;
    let (mut next_key, mut next_version) = (None, None);
    let mut url_encoded = false;
    let mut current: Option<(bool, Vec<(String, String)>)> = None;
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Start(e) => {
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                match (name.as_str(), &mut current) {
                    ("Version", None) => current = Some((false, Vec::new())),
                    ("DeleteMarker", None) => current = Some((true, Vec::new())),
                    ("Owner", Some(_)) => {
                        reader.read_to_end(e.name()).map_err(|e| e.to_string())?;
                    }
                    (_, Some((_, fields))) => {
                        let value = text_of(&mut reader, name.as_bytes())?;
                        fields.push((name, value));
                    }
                    ("IsTruncated", None) => {
                        truncated = text_of(&mut reader, b"IsTruncated")? == "true"
                    }
                    ("NextKeyMarker", None) => {
                        next_key = Some(text_of(&mut reader, b"NextKeyMarker")?)
                    }
                    ("EncodingType", None) => {
                        url_encoded = text_of(&mut reader, b"EncodingType")? == "url"
                    }
                    ("NextVersionIdMarker", None) => {
                        next_version = Some(text_of(&mut reader, b"NextVersionIdMarker")?)
                    }
                    _ => {}
                }
            }
            Event::End(e) => {
                let name = e.local_name();
                let name = name.as_ref();
                if name == b"Version" || name == b"DeleteMarker" {
                    let (delete_marker, fields) =
                        current.take().ok_or("an end tag without its start")?;
                    let get = |n: &str| fields.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
                    let key = get("Key").ok_or("a version without a Key")?;
                    page.versions.push(ObjectVersion {
                        version_id: get("VersionId").unwrap_or_else(|| "null".into()),
                        is_latest: get("IsLatest").as_deref() == Some("true"),
                        last_modified: parse_time(
                            &get("LastModified").ok_or("a version without LastModified")?,
                        )?,
                        etag: get("ETag"),
                        size: match get("Size") {
                            Some(s) => s.parse().map_err(|_| format!("Size {s:?}"))?,
                            None => 0,
                        },
                        delete_marker,
                        key,
                    });
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if url_encoded {
        // `encoding-type=url`: keys (and the marker) are percent-encoded, so that any key,
        // control characters included, survives XML.
        let decode = |k: &str| {
            percent_encoding::percent_decode_str(k)
                .decode_utf8()
                .map(|k| k.into_owned())
                .map_err(|e| format!("key {k:?}: {e}"))
        };
        for v in &mut page.versions {
            v.key = decode(&v.key)?;
        }
        next_key = next_key.as_deref().map(decode).transpose()?;
    }
    if truncated {
        let key = next_key.ok_or("truncated, but no NextKeyMarker")?;
        page.next = Some((key, next_version.unwrap_or_default()));
    }
    Ok(page)
}

/// What a version id is encoded with in an entry path.
const VERSION_ID: &AsciiSet = &percent_encoding::CONTROLS.add(b'/').add(b'%');

/// The path of the entry that holds a non-current version (or a delete marker) of `key`.
pub fn version_entry_path(key: &str, version_id: &str) -> Vec<u8> {
    let mut p = VERSIONS_DIR.to_vec();
    p.push(b'/');
    p.extend_from_slice(key.as_bytes());
    p.push(b'/');
    p.extend(
        utf8_percent_encode(version_id, VERSION_ID)
            .to_string()
            .into_bytes(),
    );
    p
}

/// The key and version id a version entry's path names, or `None` for an object's entry.
pub fn parse_version_entry_path(path: &[u8]) -> Option<(String, String)> {
    let rest = path.strip_prefix(VERSIONS_DIR)?.strip_prefix(b"/")?;
    let rest = std::str::from_utf8(rest).ok()?;
    let (key, version) = rest.rsplit_once('/')?;
    let version = percent_encoding::percent_decode_str(version)
        .decode_utf8()
        .ok()?
        .into_owned();
    Some((key.to_owned(), version))
}

/// Lists the versions of the objects under an `s3://` URL.
#[derive(Clone, Debug)]
pub struct VersionLister {
    /// The bucket's requests, signed and sent as every request by exact key.
    s3: StreamingPut,
    prefix: String,
}

impl VersionLister {
    /// A lister for the bucket and prefix of `url`, configured as [`crate::open_store`] would.
    /// Anything but `s3://` is [`VersionsError::Unsupported`].
    pub fn new(url: &str) -> Result<Self, VersionsError> {
        let StoreUrl::S3 { prefix, .. } = StoreUrl::parse(url)? else {
            return Err(VersionsError::Unsupported {
                location: url.to_owned(),
                reason: "only S3 buckets keep versions (`s3://BUCKET/PREFIX`)".into(),
            });
        };
        let s3 = StreamingPut::for_url(url)?.expect("an s3:// URL has S3 requests");
        s3.client().map_err(|reason| VersionsError::Request {
            operation: "open the S3 client",
            location: s3.location().to_owned(),
            reason,
        })?;
        Ok(VersionLister { s3, prefix })
    }

    /// The bucket and prefix, for messages.
    pub fn location(&self) -> &str {
        self.s3.location()
    }

    async fn get(
        &self,
        operation: &'static str,
        query: &[(&str, &str)],
    ) -> Result<Bytes, VersionsError> {
        self.s3
            .send_empty(http::Method::GET, None, query)
            .await
            .map_err(|reason| {
                if reason.starts_with("HTTP 501") || reason.contains("NotImplemented") {
                    VersionsError::Unsupported {
                        location: self.location().to_owned(),
                        reason: format!("the server does not implement {operation}"),
                    }
                } else {
                    VersionsError::Request {
                        operation,
                        location: self.location().to_owned(),
                        reason,
                    }
                }
            })
    }

    /// Fails unless versioning is enabled (or suspended, with versions kept) on the bucket.
    pub async fn check_enabled(&self) -> Result<(), VersionsError> {
        let body = self
            .get("GetBucketVersioning", &[("versioning", "")])
            .await?;
        let text = String::from_utf8_lossy(&body);
        if text.contains("<Status>Enabled</Status>") || text.contains("<Status>Suspended</Status>")
        {
            return Ok(());
        }
        Err(VersionsError::Unsupported {
            location: self.location().to_owned(),
            reason: "versioning is not enabled on the bucket (the store has only current objects)"
                .into(),
        })
    }

    /// One page of the listing, from `marker` (key and version id) on.
    pub async fn page(
        &self,
        marker: Option<&(String, String)>,
    ) -> Result<VersionPage, VersionsError> {
        let prefix = match self.prefix.as_str() {
            "" => String::new(),
            p => format!("{p}/"),
        };
        let mut query = vec![("versions", ""), ("encoding-type", "url")];
        if !prefix.is_empty() {
            query.push(("prefix", prefix.as_str()));
        }
        if let Some((key, version)) = marker {
            query.push(("key-marker", key.as_str()));
            if !version.is_empty() {
                query.push(("version-id-marker", version.as_str()));
            }
        }
        let body = self.get("ListObjectVersions", &query).await?;
        parse_version_page(self.location(), &body)
    }

    /// Every version and delete marker under the prefix, page by page, in key order.
    pub fn list(&self) -> BoxStream<'static, Result<ObjectVersion, VersionsError>> {
        let this = self.clone();
        futures::stream::try_unfold(
            Some(None),
            move |state: Option<Option<(String, String)>>| {
                let this = this.clone();
                async move {
                    let Some(marker) = state else {
                        return Ok::<_, VersionsError>(None);
                    };
                    let mut page = this.page(marker.as_ref()).await?;
                    // Key order (stable: newest first within a key stays so). S3 interleaves
                    // versions and delete markers so; some servers (moto) list a page's delete
                    // markers after all its versions.
                    page.versions.sort_by(|a, b| a.key.cmp(&b.key));
                    let next = page.next.clone().map(Some);
                    Ok(Some((
                        futures::stream::iter(page.versions.into_iter().map(Ok)),
                        next,
                    )))
                }
            },
        )
        .try_flatten()
        .boxed()
    }
}

use futures::TryStreamExt;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The document of `page`; with `url_encoded`, keys percent-encoded as
    /// `encoding-type=url` asks.
    fn render(page: &VersionPage, url_encoded: bool) -> String {
        let esc = |s: &str| quick_xml::escape::escape(s).into_owned();
        let key = |k: &str| {
            if url_encoded {
                utf8_percent_encode(k, crate::exact::UNRESERVED).to_string()
            } else {
                esc(k)
            }
        };
        let mut x = String::from(
            r#"<?xml version="1.0" encoding="UTF-8"?><ListVersionsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix></Prefix>"#,
        );
        x.push_str(&format!(
            "<IsTruncated>{}</IsTruncated>",
            page.next.is_some()
        ));
        if let Some((k, v)) = &page.next {
            x.push_str(&format!(
                "<NextKeyMarker>{}</NextKeyMarker><NextVersionIdMarker>{}</NextVersionIdMarker>",
                key(k),
                esc(v)
            ));
        }
        for v in &page.versions {
            let tag = if v.delete_marker {
                "DeleteMarker"
            } else {
                "Version"
            };
            x.push_str(&format!(
                "<{tag}><Key>{}</Key><VersionId>{}</VersionId><IsLatest>{}</IsLatest><LastModified>{}</LastModified>",
                key(&v.key),
                esc(&v.version_id),
                v.is_latest,
                v.last_modified.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            ));
            if !v.delete_marker {
                x.push_str(&format!(
                    "<ETag>{}</ETag><Size>{}</Size><StorageClass>STANDARD</StorageClass>",
                    esc(v.etag.as_deref().unwrap_or("")),
                    v.size
                ));
            }
            x.push_str(&format!(
                "<Owner><ID>o</ID><DisplayName>x</DisplayName></Owner></{tag}>"
            ));
        }
        if url_encoded {
            x.push_str("<EncodingType>url</EncodingType>");
        }
        x.push_str("</ListVersionsResult>");
        x
    }

    fn version() -> impl Strategy<Value = ObjectVersion> {
        (
            "[a-zA-Z0-9 &<>'\"/._~+=é\u{1}\u{1f}%-]{1,30}",
            "[a-zA-Z0-9._+/=-]{1,40}",
            any::<bool>(),
            0i64..4_000_000_000_000,
            any::<bool>(),
            any::<u32>(),
        )
            .prop_map(|(key, version_id, is_latest, ms, delete_marker, size)| {
                ObjectVersion {
                    key,
                    version_id,
                    is_latest,
                    last_modified: DateTime::from_timestamp_millis(ms).unwrap(),
                    etag: (!delete_marker).then(|| format!("\"{size:032x}\"")),
                    size: if delete_marker { 0 } else { size as u64 },
                    delete_marker,
                }
            })
    }

    proptest! {
        #[test]
        fn listing_pages_parse_back(
            versions in proptest::collection::vec(version(), 0..12),
            next in proptest::option::of(("[a-z/ &<]{1,20}", "[a-zA-Z0-9.]{0,20}")),
            url_encoded in any::<bool>(),
        ) {
            let mut page = VersionPage { versions, next };
            if !url_encoded {
                // Without encoding, a control character cannot be in XML 1.0.
                page.versions.iter_mut().for_each(|v| v.key.retain(|c| !c.is_control()));
                page.versions.retain(|v| !v.key.is_empty());
            }
            let xml = render(&page, url_encoded);
            prop_assert_eq!(parse_version_page("s3://b/", xml.as_bytes()).unwrap(), page);
        }

        #[test]
        fn version_entry_paths_round_trip(key in "\\PC{1,40}", version in "\\PC{1,40}") {
            let path = version_entry_path(&key, &version);
            prop_assert!(std::str::from_utf8(&path).is_err(), "never an object's key");
            prop_assert_eq!(parse_version_entry_path(&path), Some((key.clone(), version.clone())));
            prop_assert_eq!(parse_version_entry_path(key.as_bytes()), None);
        }
    }

    #[test]
    fn an_aws_example_parses() {
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?>
<ListVersionsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Name>bucket</Name><Prefix>my</Prefix><KeyMarker/><VersionIdMarker/><MaxKeys>5</MaxKeys>
  <IsTruncated>false</IsTruncated>
  <Version><Key>my-image.jpg</Key><VersionId>3/L4kqtJl40Nr8X8gdRQBpUMLUo</VersionId>
    <IsLatest>true</IsLatest><LastModified>2009-10-12T17:50:30.000Z</LastModified>
    <ETag>&quot;fba9dede5f27731c9771645a39863328&quot;</ETag><Size>434234</Size>
    <StorageClass>STANDARD</StorageClass><Owner><ID>75aa</ID><DisplayName>mtd@amazon.com</DisplayName></Owner>
  </Version>
  <DeleteMarker><Key>my-second-image.jpg</Key><VersionId>03jpff543dhffds434rfdsFDN943fdsFkdmqnh892</VersionId>
    <IsLatest>true</IsLatest><LastModified>2009-11-12T17:50:30.000Z</LastModified>
    <Owner><ID>75aa</ID><DisplayName>mtd@amazon.com</DisplayName></Owner>
  </DeleteMarker>
</ListVersionsResult>"#;
        let page = parse_version_page("s3://b/", xml).unwrap();
        assert_eq!(page.versions.len(), 2);
        assert_eq!(page.versions[0].version_id, "3/L4kqtJl40Nr8X8gdRQBpUMLUo");
        assert_eq!(
            page.versions[0].etag.as_deref(),
            Some("\"fba9dede5f27731c9771645a39863328\"")
        );
        assert!(page.versions[1].delete_marker && page.versions[1].is_latest);
        assert_eq!(page.next, None);
    }
}
