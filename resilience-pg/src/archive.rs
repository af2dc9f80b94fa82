//! The WAL archive: one sealed object per WAL file, beside the repository's packs.
//!
//! `wal/<source>/<file name>` is an item of the repository's side archive `<source>`
//! ([`resilience_core::repo::side`]): a JSON header (size, BLAKE3 of
//! the content, when it was archived, the segment's [`SegmentSummary`]) followed by the file's
//! bytes, compressed and encrypted as every sealed object is. WAL does not go through the
//! chunk-and-pack engine: a segment is written once, never deduplicates against anything, and
//! Postgres starts one process per segment, so one object per segment means one write to push
//! and one read to fetch. Restore points found in a segment are also noted as
//! `wal/<source>/restore-points/<hex of the name>` so a recovery target can be located from a
//! listing.
//!
//! Pushing is idempotent and never lies: success is reported only after the object is durable;
//! a second push of identical bytes succeeds; different bytes under an existing name are refused
//! and the stored object is kept. Two pushes of one name at the same moment agree through
//! claims which may write it ([`claim`]): of different bytes, at most one is acknowledged, also
//! on stores that ignore create-only puts.

pub mod async_push;
mod claim;
pub mod prefetch;
pub mod spool;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use resilience_core::repo::side::{SideArchive, SideObject};
use resilience_core::sink::{PutMode, Sink, SinkError};
use serde::{Deserialize, Serialize};

use crate::error::PgError;
use crate::lsn::{self, SegmentName, WalFileKind};
use crate::walscan::{self, RestorePoint, SegmentSummary};

/// What the archive keeps about one file, before its content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalHeader {
    /// The file's name.
    pub name: String,
    /// Its length.
    pub size: u64,
    /// BLAKE3 of its content, hex.
    pub blake3: String,
    /// When it was archived.
    pub archived_at: DateTime<Utc>,
    /// For segments: what they hold.
    #[serde(default)]
    pub summary: Option<SegmentSummary>,
}

/// How a push ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    /// The file is now stored.
    Stored,
    /// The same bytes were already stored under this name.
    AlreadyArchived,
}

/// One file in the archive, from a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivedFile {
    /// The WAL file's name.
    pub name: String,
    /// What it is.
    pub kind: WalFileKind,
    /// Stored size.
    pub stored_size: u64,
}

/// The WAL archive of one Postgres source in a repository.
#[derive(Clone)]
pub struct WalArchive {
    sink: Arc<dyn Sink>,
    side: SideArchive,
    source: String,
    clock: Arc<dyn resilience_core::time::clock::Clock>,
}

/// The source name used when none is given.
pub const DEFAULT_SOURCE: &str = "postgres";

impl WalArchive {
    /// The archive of `source` (a name without `/`) in a repository.
    pub fn new(repo: &resilience_core::repo::Repository, source: &str) -> Result<Self, PgError> {
        if source.is_empty() || source.contains('/') || source.starts_with('.') {
            return Err(PgError::Invalid(format!(
                "source name {source:?} must be non-empty, without '/' and not start with '.'"
            )));
        }
        Ok(WalArchive {
            sink: repo.sink().clone(),
            side: repo.side_archive(source)?,
            source: source.to_owned(),
            clock: repo.clock().clone(),
        })
    }

    /// The source name.
    pub fn source(&self) -> &str {
        &self.source
    }

    fn key(&self, name: &str) -> String {
        self.side.key(name)
    }

    fn check_name(name: &str) -> Result<WalFileKind, PgError> {
        lsn::classify(name).ok_or_else(|| {
            PgError::Invalid(format!(
                "{name:?} is not a WAL file name (segment, .history, .backup or .partial)"
            ))
        })
    }

    /// Archives a WAL file's bytes under `name`. Segments are summarized (and must belong to
    /// a Postgres cluster); restore points in them are noted.
    pub async fn push(&self, name: &str, content: Bytes) -> Result<PushOutcome, PgError> {
        let digest = blake3::hash(&content).to_hex().to_string();
        self.push_digested(name, content, digest).await
    }

    /// [`WalArchive::push`] of `content` whose BLAKE3 (hex) the caller computed already.
    pub(crate) async fn push_digested(
        &self,
        name: &str,
        content: Bytes,
        digest: String,
    ) -> Result<PushOutcome, PgError> {
        let kind = Self::check_name(name)?;
        let key = self.key(name);
        if let Some(existing) = self.header(name).await? {
            return self.compare(name, &existing, &digest);
        }
        // A segment this build cannot read is archived all the same (Postgres knows its WAL;
        // refusing would stop archiving and fill the primary's disk), without a summary.
        let summary = match kind {
            WalFileKind::Segment => match walscan::summarize(name, &content) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(name, error = %e, "archiving a segment that cannot be summarized");
                    None
                }
            },
            _ => None,
        };
        let header = WalHeader {
            name: name.to_owned(),
            size: content.len() as u64,
            blake3: digest.clone(),
            archived_at: self.clock.now(),
            summary,
        };
        let restore_points = header
            .summary
            .as_ref()
            .map(|s| s.restore_points.clone())
            .unwrap_or_default();
        let side = self.side.clone();
        let object_name = key.clone();
        // The header and the content are sealed as one payload without being copied into one
        // buffer: a 16 MiB segment costs the segment and its sealed object, nothing more.
        let sealed = tokio::task::spawn_blocking(move || {
            let payload = serde_json::to_vec(&header).expect("serializes");
            let mut framing = Vec::with_capacity(4 + payload.len());
            framing.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            framing.extend_from_slice(&payload);
            side.seal_parts(SideObject::Item, &object_name, &[&framing, &content])
        })
        .await
        .map_err(|e| PgError::Invalid(format!("sealing {name}: {e}")))?;
        let claim = match self.claim(name, &digest).await {
            Ok(claim) => claim,
            Err(PgError::WalPushContended { name: n, claim }) => {
                // The rival may have finished meanwhile: then its copy decides.
                if let Some(existing) = self.header(name).await? {
                    return self.compare(name, &existing, &digest);
                }
                return Err(PgError::WalPushContended { name: n, claim });
            }
            Err(e) => return Err(e),
        };
        // Looked for again under the claim: a rival that finished (and released its claim)
        // after the first look wrote the object before this listing.
        let written = match self.header(name).await {
            Ok(Some(existing)) => {
                self.release(claim).await;
                return self.compare(name, &existing, &digest);
            }
            Ok(None) => match self.check_claim(name, &claim) {
                Ok(()) => self.sink.put(&key, sealed.into(), PutMode::Create).await,
                Err(e) => {
                    self.release(claim).await;
                    return Err(e);
                }
            },
            Err(e) => {
                self.release(claim).await;
                return Err(e);
            }
        };
        self.release(claim).await;
        match written {
            Ok(()) => {}
            Err(SinkError::AlreadyExists { .. }) => {
                // Another push won the race: same bytes succeed, different bytes fail.
                let existing = self
                    .header(name)
                    .await?
                    .ok_or_else(|| PgError::Invalid(format!("{key} exists and vanished again")))?;
                return self.compare(name, &existing, &digest);
            }
            Err(e) => return Err(e.into()),
        }
        for point in restore_points {
            self.note_restore_point(&point).await?;
        }
        Ok(PushOutcome::Stored)
    }

    fn compare(
        &self,
        name: &str,
        existing: &WalHeader,
        digest: &str,
    ) -> Result<PushOutcome, PgError> {
        if existing.blake3 == digest {
            Ok(PushOutcome::AlreadyArchived)
        } else {
            Err(PgError::WalConflict {
                name: name.to_owned(),
                object: self.key(name),
            })
        }
    }

    async fn note_restore_point(&self, point: &RestorePoint) -> Result<(), PgError> {
        let key = self.side.key(&format!(
            "restore-points/{}",
            hex::encode(point.name.as_bytes())
        ));
        let payload = serde_json::to_vec(point).expect("serializes");
        let sealed = self.side.seal(SideObject::Note, &key, &payload);
        match self.sink.put(&key, sealed.into(), PutMode::Create).await {
            // A name used twice: recovery stops at the first, which is the one kept.
            Ok(()) | Err(SinkError::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads and checks an archived file, or `None` if it is not archived.
    pub async fn fetch(&self, name: &str) -> Result<Option<(WalHeader, Bytes)>, PgError> {
        Self::check_name(name)?;
        let key = self.key(name);
        let bytes = match self.sink.get(&key).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let side = self.side.clone();
        let (header, content) = tokio::task::spawn_blocking(move || open(&side, &key, &bytes))
            .await
            .map_err(|e| PgError::Invalid(format!("opening {name}: {e}")))??;
        Ok(Some((header, content)))
    }

    /// The header of an archived file, or `None` if it is not archived (one read: the header
    /// is sealed with the content).
    pub async fn header(&self, name: &str) -> Result<Option<WalHeader>, PgError> {
        Ok(self.fetch(name).await?.map(|(h, _)| h))
    }

    /// Every archived WAL file, sorted by name.
    pub async fn list(&self) -> Result<Vec<ArchivedFile>, PgError> {
        let prefix = self.side.prefix().to_owned();
        let mut out: Vec<ArchivedFile> = self
            .sink
            .list(&prefix)
            .map_err(PgError::from)
            .try_filter_map(|meta| {
                let name = meta.key[prefix.len()..].to_owned();
                let file = lsn::classify(&name).map(|kind| ArchivedFile {
                    name,
                    kind,
                    stored_size: meta.size,
                });
                async move { Ok(file) }
            })
            .try_collect()
            .await?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Segments present, by timeline, for the given segment size.
    pub async fn segments(
        &self,
        segment_size: u64,
    ) -> Result<BTreeMap<u32, Vec<SegmentName>>, PgError> {
        let mut out: BTreeMap<u32, Vec<SegmentName>> = BTreeMap::new();
        for file in self.list().await? {
            if file.kind == WalFileKind::Segment {
                if let Some(seg) = SegmentName::parse(&file.name, segment_size) {
                    out.entry(seg.timeline).or_default().push(seg);
                }
            }
        }
        Ok(out)
    }

    /// Every restore point noted at push time, in the order they were found.
    pub async fn restore_points(&self) -> Result<Vec<RestorePoint>, PgError> {
        let prefix = self.side.key("restore-points/");
        let keys: Vec<String> = self
            .sink
            .list(&prefix)
            .map_ok(|m| m.key)
            .try_collect()
            .await?;
        let mut out = Vec::new();
        for key in keys {
            let bytes = self.sink.get(&key).await?;
            let payload = self.side.open(SideObject::Note, &key, &bytes)?;
            let point: RestorePoint = serde_json::from_slice(&payload)
                .map_err(|e| PgError::corrupt(&key, format!("does not parse: {e}")))?;
            out.push(point);
        }
        out.sort_by_key(|p| p.lsn);
        Ok(out)
    }

    /// Deletes an archived file (retention of WAL that no kept backup needs).
    pub async fn delete(&self, name: &str) -> Result<(), PgError> {
        Self::check_name(name)?;
        match self.sink.delete(&self.key(name)).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Checks and opens a sealed WAL object: its header and its content, whose length and BLAKE3
/// are checked against the header.
fn open(side: &SideArchive, key: &str, bytes: &[u8]) -> Result<(WalHeader, Bytes), PgError> {
    let framed = side.open(SideObject::Item, key, bytes)?;
    let bad = |why: &str| PgError::corrupt(key, why);
    let len = u32::from_le_bytes(
        framed
            .get(..4)
            .ok_or_else(|| bad("no header"))?
            .try_into()
            .expect("4"),
    ) as usize;
    let header_bytes = framed.get(4..4 + len).ok_or_else(|| bad("short header"))?;
    let header: WalHeader = serde_json::from_slice(header_bytes)
        .map_err(|e| bad(&format!("header does not parse: {e}")))?;
    let content = Bytes::from(framed).slice(4 + len..);
    if content.len() as u64 != header.size
        || blake3::hash(&content).to_hex().as_str() != header.blake3
    {
        return Err(bad("content does not match its recorded size and BLAKE3"));
    }
    Ok((header, content))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::walscan::tests::SegmentWriter;
    use resilience_core::keys::KeyFileProvider;
    use resilience_core::repo::{InitOptions, Repository};
    use resilience_core::sink::MemorySink;

    async fn archive() -> (Arc<MemorySink>, WalArchive) {
        let sink = Arc::new(MemorySink::new());
        let repo = Repository::init(
            sink.clone(),
            &KeyFileProvider::from_key([3; 32]),
            InitOptions::default(),
        )
        .await
        .unwrap();
        (sink, WalArchive::new(&repo, "main").unwrap())
    }

    fn segment(marker: u8) -> Bytes {
        let mut w = SegmentWriter::new(99, 1, 1 << 16, 8192, 0);
        let mut rp = 5_000_000i64.to_le_bytes().to_vec();
        let mut name = b"rp1".to_vec();
        name.resize(64, 0);
        rp.extend_from_slice(&name);
        w.record(0, 0x70, 0, &rp).unwrap();
        w.record(1, 0x00, 100, &[marker; 8]).unwrap();
        w.seg.into()
    }

    #[tokio::test]
    async fn push_is_idempotent_and_refuses_different_bytes() {
        let (_, wal) = archive().await;
        let name = "000000010000000000000000";
        assert_eq!(
            wal.push(name, segment(1)).await.unwrap(),
            PushOutcome::Stored
        );
        assert_eq!(
            wal.push(name, segment(1)).await.unwrap(),
            PushOutcome::AlreadyArchived
        );
        let err = wal.push(name, segment(2)).await.unwrap_err();
        assert!(matches!(err, PgError::WalConflict { .. }), "{err}");
        let (header, content) = wal.fetch(name).await.unwrap().unwrap();
        assert_eq!(content, segment(1));
        assert_eq!(header.summary.unwrap().system_id, 99);
        let points = wal.restore_points().await.unwrap();
        assert_eq!(points.len(), 1);
        assert_eq!(points[0].name, "rp1");
        assert!(wal
            .fetch("000000010000000000000001")
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn history_files_and_bad_names() {
        let (_, wal) = archive().await;
        wal.push("00000002.history", Bytes::from_static(b"1\t0/3000000\tx\n"))
            .await
            .unwrap();
        assert!(wal.push("../config", Bytes::new()).await.is_err());
        assert!(wal.push("config", Bytes::new()).await.is_err());
        // A segment that cannot be read is still archived, without a summary.
        wal.push("000000010000000000000005", Bytes::from_static(b"nope"))
            .await
            .unwrap();
        let (header, content) = wal
            .fetch("000000010000000000000005")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((header.summary, &content[..]), (None, &b"nope"[..]));
        let listed = wal.list().await.unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[1].kind, WalFileKind::History { timeline: 2 });
    }

    #[tokio::test]
    async fn damage_names_the_object() {
        let (sink, wal) = archive().await;
        let name = "000000010000000000000000";
        wal.push(name, segment(1)).await.unwrap();
        let key = format!("wal/main/{name}");
        let mut bytes = sink.get(&key).await.unwrap().to_vec();
        bytes[40] ^= 1;
        sink.tamper(&key, bytes.into());
        let err = wal.fetch(name).await.unwrap_err().to_string();
        assert!(err.contains("wal/main/000000010000000000000000"), "{err}");
    }
}
