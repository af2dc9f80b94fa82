//! Unfinished uploads ([`UnfinishedUpload`]) in the stores that leave them: S3 multipart uploads
//! started and never completed nor aborted (listed with `ListMultipartUploads`, discarded with
//! `AbortMultipartUpload`), and a local store's staging files — `object_store` writes every
//! object to `NAME#N` first and renames it, so a writer killed mid-write leaves that file, which
//! no listing shows.

use std::path::{Component, Path as FsPath, PathBuf};

use chrono::{DateTime, Utc};
use object_store::path::Path;
use quick_xml::events::Event;
use resilience_core::sink::{SinkError, UnfinishedUpload};

use super::ObjectStoreSink;
use crate::streaming_put::StreamingPut;
use crate::versions::{parse_time, text_of};

/// At most this many pages of `ListMultipartUploads` (1000 uploads each) are read.
const MAX_PAGES: usize = 1000;

/// The object a staging file `NAME#N` was to become: `NAME`, if the file name ends so.
fn staged_object(file_name: &str) -> Option<&str> {
    let (name, suffix) = file_name.rsplit_once('#')?;
    (!name.is_empty() && !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit()))
        .then_some(name)
}

impl ObjectStoreSink {
    fn unfinished_error(&self, operation: &'static str, key: &str, reason: String) -> SinkError {
        SinkError::Backend {
            operation,
            key: key.to_owned(),
            location: self.location.clone(),
            source: reason.into(),
        }
    }

    /// The staging files under `root` whose object's key starts with `prefix`.
    pub(super) async fn local_unfinished(
        &self,
        root: PathBuf,
        prefix: &str,
    ) -> Result<Vec<UnfinishedUpload>, SinkError> {
        let start = if self.prefix.is_empty() {
            root.clone()
        } else {
            root.join(&self.prefix)
        };
        let walked = tokio::task::spawn_blocking(move || staging_files(&root, &start))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
        let files =
            walked.map_err(|e| self.unfinished_error("list unfinished uploads", prefix, e))?;
        Ok(files
            .into_iter()
            .filter_map(|file| {
                let key = self.key_of(&Path::parse(&file.object).ok()?);
                key.starts_with(prefix).then_some(UnfinishedUpload {
                    key,
                    id: file.relative,
                    started: file.modified,
                })
            })
            .collect())
    }

    /// Removes a staging file that [`ObjectStoreSink::local_unfinished`] listed.
    pub(super) async fn local_discard(
        &self,
        root: PathBuf,
        upload: &UnfinishedUpload,
    ) -> Result<(), SinkError> {
        let relative = FsPath::new(&upload.id);
        let is_staging = relative
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| staged_object(n).is_some());
        if !is_staging
            || relative
                .components()
                .any(|c| !matches!(c, Component::Normal(_)))
        {
            return Err(self.unfinished_error(
                "discard upload",
                &upload.key,
                format!("{} is not a staging file of this store", upload.id),
            ));
        }
        match tokio::fs::remove_file(root.join(relative)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.unfinished_error(
                "discard upload",
                &upload.key,
                format!("removing {}: {e}", upload.id),
            )),
        }
    }

    /// The S3 key prefix of `prefix`.
    fn s3_prefix(&self, prefix: &str) -> String {
        if self.prefix.is_empty() {
            prefix.to_owned()
        } else {
            format!("{}/{prefix}", self.prefix)
        }
    }

    /// The multipart uploads in progress under `prefix`, every page.
    pub(super) async fn s3_unfinished(
        &self,
        s3: &StreamingPut,
        prefix: &str,
    ) -> Result<Vec<UnfinishedUpload>, SinkError> {
        let failed = |reason: String| {
            self.unfinished_error(
                "list unfinished uploads",
                prefix,
                format!("ListMultipartUploads in {}: {reason}", s3.location()),
            )
        };
        let s3_prefix = self.s3_prefix(prefix);
        let mut out = Vec::new();
        let mut marker: Option<(String, String)> = None;
        for _ in 0..MAX_PAGES {
            let mut query = vec![("prefix", s3_prefix.as_str()), ("uploads", "")];
            if let Some((key, id)) = &marker {
                query.extend([
                    ("key-marker", key.as_str()),
                    ("upload-id-marker", id.as_str()),
                ]);
            }
            let body = s3
                .send_empty(http::Method::GET, None, &query)
                .await
                .map_err(failed)?;
            let page = parse_upload_page(&body).map_err(failed)?;
            for (s3_key, id, started) in page.uploads {
                let key = Path::parse(&s3_key)
                    .map(|p| self.key_of(&p))
                    .unwrap_or(s3_key);
                if key.starts_with(prefix) {
                    out.push(UnfinishedUpload { key, id, started });
                }
            }
            match page.next {
                Some(next) if page.truncated => marker = Some(next),
                _ => return Ok(out),
            }
        }
        Err(failed(format!("more than {MAX_PAGES} pages")))
    }

    /// Aborts a multipart upload (an upload already gone counts as discarded).
    pub(super) async fn s3_discard(
        &self,
        s3: &StreamingPut,
        upload: &UnfinishedUpload,
    ) -> Result<(), SinkError> {
        let key = self.path(&upload.key);
        match s3
            .send_empty(
                http::Method::DELETE,
                Some(key.as_ref()),
                &[("uploadId", upload.id.as_str())],
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.contains("NoSuchUpload") => Ok(()),
            Err(e) => Err(self.unfinished_error(
                "discard upload",
                &upload.key,
                format!("AbortMultipartUpload of upload {}: {e}", upload.id),
            )),
        }
    }
}

/// A staging file found on disk.
struct StagingFile {
    /// Its path relative to the store's root.
    relative: String,
    /// The object path it was to become (relative to the root, `/`-separated).
    object: String,
    /// Its modification time.
    modified: Option<DateTime<Utc>>,
}

/// Every staging file under `start`. Symbolic links are not followed.
fn staging_files(root: &FsPath, start: &FsPath) -> Result<Vec<StagingFile>, String> {
    let mut out = Vec::new();
    let mut dirs = vec![start.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("reading {}: {e}", dir.display())),
        };
        for entry in entries {
            let entry = entry.map_err(|e| format!("reading {}: {e}", dir.display()))?;
            let kind = entry
                .file_type()
                .map_err(|e| format!("{}: {e}", entry.path().display()))?;
            let path = entry.path();
            if kind.is_dir() {
                dirs.push(path);
                continue;
            }
            if !kind.is_file() {
                continue;
            }
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Some(object) = staged_object(&name) else {
                continue;
            };
            let Ok(relative) = path.strip_prefix(root) else {
                continue;
            };
            let Some(relative) = relative.to_str() else {
                continue;
            };
            let object_path = match relative.rsplit_once('/') {
                Some((dir, _)) => format!("{dir}/{object}"),
                None => object.to_owned(),
            };
            let modified = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .map(DateTime::<Utc>::from);
            out.push(StagingFile {
                relative: relative.to_owned(),
                object: object_path,
                modified,
            });
        }
    }
    Ok(out)
}

/// One upload of a `ListMultipartUploads` page, as it is read.
#[derive(Default)]
struct ListedUpload {
    key: Option<String>,
    id: Option<String>,
    started: Option<DateTime<Utc>>,
}

/// One page of `ListMultipartUploads`.
struct UploadPage {
    /// Key, upload id and start of each upload.
    uploads: Vec<(String, String, Option<DateTime<Utc>>)>,
    truncated: bool,
    /// The next page's key and upload id markers.
    next: Option<(String, String)>,
}

fn parse_upload_page(xml: &[u8]) -> Result<UploadPage, String> {
    let mut reader = quick_xml::Reader::from_reader(xml);
    let mut page = UploadPage {
        uploads: Vec::new(),
        truncated: false,
        next: None,
    };
    let (mut next_key, mut next_id) = (None, None);
    let mut current: Option<ListedUpload> = None;
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Start(e) => match e.local_name().as_ref() {
                b"Upload" => current = Some(ListedUpload::default()),
                b"Key" if current.is_some() => {
                    current.as_mut().expect("in an upload").key =
                        Some(text_of(&mut reader, b"Key")?)
                }
                b"UploadId" if current.is_some() => {
                    current.as_mut().expect("in an upload").id =
                        Some(text_of(&mut reader, b"UploadId")?)
                }
                b"Initiated" if current.is_some() => {
                    let text = text_of(&mut reader, b"Initiated")?;
                    current.as_mut().expect("in an upload").started = parse_time(&text).ok()
                }
                b"IsTruncated" => page.truncated = text_of(&mut reader, b"IsTruncated")? == "true",
                b"NextKeyMarker" => next_key = Some(text_of(&mut reader, b"NextKeyMarker")?),
                b"NextUploadIdMarker" => {
                    next_id = Some(text_of(&mut reader, b"NextUploadIdMarker")?)
                }
                _ => {}
            },
            Event::End(e) if e.local_name().as_ref() == b"Upload" => {
                let Some(ListedUpload {
                    key: Some(key),
                    id: Some(id),
                    started,
                }) = current.take()
                else {
                    return Err("an Upload without a Key or an UploadId".into());
                };
                page.uploads.push((key, id, started));
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if let (Some(key), Some(id)) = (next_key, next_id) {
        page.next = Some((key, id));
    }
    if page.truncated && page.next.is_none() {
        return Err("a truncated page without next markers".into());
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_ending_in_a_hash_and_digits_are_staging_files() {
        assert_eq!(staged_object("ab12#3"), Some("ab12"));
        assert_eq!(staged_object("ab12#0042"), Some("ab12"));
        for name in ["ab12", "ab12#", "#3", "ab#12x", "a#b"] {
            assert_eq!(staged_object(name), None, "{name}");
        }
    }

    #[test]
    fn a_listing_page_parses_with_its_markers() {
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>b</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>
  <NextKeyMarker>repo/data/ab/ab2</NextKeyMarker><NextUploadIdMarker>u2</NextUploadIdMarker>
  <MaxUploads>1000</MaxUploads><IsTruncated>true</IsTruncated>
  <Upload><Key>repo/data/ab/ab1</Key><UploadId>u1</UploadId>
    <Initiated>2026-12-01T10:00:00.000Z</Initiated><StorageClass>STANDARD</StorageClass></Upload>
  <Upload><Key>repo/data/ab/a&amp;b</Key><UploadId>u2</UploadId>
    <Initiated>2026-12-01T11:00:00Z</Initiated></Upload>
</ListMultipartUploadsResult>"#;
        let page = parse_upload_page(xml).unwrap();
        assert!(page.truncated);
        assert_eq!(
            page.next,
            Some(("repo/data/ab/ab2".to_owned(), "u2".to_owned()))
        );
        assert_eq!(page.uploads.len(), 2);
        assert_eq!(page.uploads[1].0, "repo/data/ab/a&b");
        assert_eq!(
            page.uploads[0].2,
            Some("2026-12-01T10:00:00Z".parse().unwrap())
        );
        assert!(parse_upload_page(b"<Upload><UploadId>x</UploadId></Upload>").is_err());
    }
}
