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
//! claims which may write it (`claim`): of different bytes, at most one is acknowledged, also
//! on stores that ignore create-only puts.

pub mod async_push;
mod claim;
pub mod prefetch;
pub mod spool;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use resilience_core::repo::side::{CompressionThreads, SideArchive, SideObject};
use resilience_core::sink::{PutMode, Sink, SinkError};
use serde::{Deserialize, Serialize};

use self::spool::hash_file;
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
    /// CRC32C (Castagnoli) of its content: what `wal-fetch` checks the decompressed content
    /// against ([`WalArchive::fetch_to_file`]). The object itself is authenticated before it
    /// is decompressed, so what is left to catch there is a fault (of the codec, of memory),
    /// not a forgery, and a CRC32C is a quarter of BLAKE3's cost on recovery's path. `None` in
    /// objects pushed before it was recorded: those are checked by BLAKE3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32c: Option<u32>,
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
    compression: CompressionThreads,
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
            compression: CompressionThreads::default(),
        })
    }

    /// The archive, its pushes compressing each file by `threads`: [`CompressionThreads::One`]
    /// for a caller that pushes several files at once ([`async_push`]).
    pub fn with_compression_threads(mut self, threads: CompressionThreads) -> Self {
        self.compression = threads;
        self
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
        let kind = Self::check_name(name)?;
        let digest = blake3::hash(&content).to_hex().to_string();
        if let Some(existing) = self.header(name).await? {
            return self.compare(name, &existing, &digest);
        }
        let summary = match kind {
            WalFileKind::Segment => summary_or_warn(name, walscan::summarize(name, &content)),
            _ => None,
        };
        let crc = crc32c::crc32c(&content);
        let header = self.header_for(name, content.len() as u64, &digest, crc, summary);
        let restore_points = restore_points_of(&header);
        let side = self.side.clone();
        let key = self.key(name);
        // The header and the content are sealed as one payload without being copied into one
        // buffer: a 16 MiB segment costs the segment and its sealed object, nothing more.
        let sealed = tokio::task::spawn_blocking(move || {
            side.seal_parts(SideObject::Item, &key, &[&framing(&header), &content])
        })
        .await
        .map_err(|e| PgError::Invalid(format!("sealing {name}: {e}")))?;
        self.store(name, &digest, sealed, restore_points).await
    }

    /// Archives the WAL file at `path` under `name`, as [`WalArchive::push`] does, without
    /// holding it in memory: it is read once, in pieces, each hashed, summarized and compressed
    /// as it passes, and its header (BLAKE3, summary) sealed before its content
    /// ([`SideArchive::seal_written`]), so a 16 MiB segment costs its compressed size and what
    /// is archived is exactly what was hashed. A file whose length changes while it is read is
    /// refused ([`PgError::WalChanged`]). A file archived already is only hashed, to compare.
    pub async fn push_file(&self, name: &str, path: &Path) -> Result<Pushed, PgError> {
        let kind = Self::check_name(name)?;
        if let Some(existing) = self.header(name).await? {
            let p = path.to_owned();
            let (digest, size) = tokio::task::spawn_blocking(move || hash_file(&p))
                .await
                .map_err(|e| PgError::Invalid(format!("reading {name}: {e}")))?
                .map_err(PgError::io("read", path.display()))?;
            let outcome = self.compare(name, &existing, &digest)?;
            return Ok(Pushed {
                outcome,
                size,
                blake3: digest,
            });
        }
        let read = FileToSeal {
            name: name.to_owned(),
            kind,
            path: path.to_owned(),
            archived_at: self.clock.now(),
        };
        let (side, key, threads) = (self.side.clone(), self.key(name), self.compression);
        let (sealed, header) =
            tokio::task::spawn_blocking(move || read.open_and_seal(&side, &key, threads))
                .await
                .map_err(|e| PgError::Invalid(format!("sealing {name}: {e}")))??;
        let restore_points = restore_points_of(&header);
        let outcome = self
            .store(name, &header.blake3, sealed, restore_points)
            .await?;
        Ok(Pushed {
            outcome,
            size: header.size,
            blake3: header.blake3,
        })
    }

    /// The header recorded for a file archived now.
    fn header_for(
        &self,
        name: &str,
        size: u64,
        digest: &str,
        crc: u32,
        summary: Option<SegmentSummary>,
    ) -> WalHeader {
        WalHeader {
            name: name.to_owned(),
            size,
            blake3: digest.to_owned(),
            crc32c: Some(crc),
            archived_at: self.clock.now(),
            summary,
        }
    }

    /// Writes the sealed object of `name` (whose content has BLAKE3 `digest`) under a claim,
    /// unless a rival got there first, and notes its restore points.
    async fn store(
        &self,
        name: &str,
        digest: &str,
        sealed: Vec<u8>,
        restore_points: Vec<RestorePoint>,
    ) -> Result<PushOutcome, PgError> {
        let key = self.key(name);
        let claim = match self.claim(name, digest).await {
            Ok(claim) => claim,
            Err(PgError::WalPushContended { name: n, claim }) => {
                // The rival may have finished meanwhile: then its copy decides.
                if let Some(existing) = self.header(name).await? {
                    return self.compare(name, &existing, digest);
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
                return self.compare(name, &existing, digest);
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
                return self.compare(name, &existing, digest);
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
        self.with_payload(
            name,
            || (),
            |key, payload| {
                let header = read_header(key, payload)?;
                // Reserved as the header says (it is authenticated), within reason.
                let mut content = Vec::with_capacity(header.size.min(64 << 20) as usize);
                payload
                    .read_to_end(&mut content)
                    .map_err(|e| PgError::corrupt(key, format!("zstd: {e}")))?;
                // Both digests: a drill reads WAL this way, and checks it as deeply as it can.
                let len = content.len() as u64;
                if header.crc32c.is_some() {
                    check_content(key, &header, len, Digest::Crc32c(crc32c::crc32c(&content)))?;
                }
                check_content(key, &header, len, Digest::Blake3(blake3::hash(&content)))?;
                Ok((header, Bytes::from(content)))
            },
        )
        .await
    }

    /// The header of an archived file, or `None` if it is not archived (one read: the header
    /// is sealed with the content, which is authenticated but not decompressed).
    pub async fn header(&self, name: &str) -> Result<Option<WalHeader>, PgError> {
        self.with_payload(name, || (), |key, payload| read_header(key, payload))
            .await
    }

    /// Writes the archived file `name` to a file, streamed and never whole in memory: `place`
    /// says where from its header. The content is written to the target's temporary file,
    /// checked against the header's size and BLAKE3 as it streams, synced if the target is
    /// durable, and only then renamed into place: whole and right, or not at all (a damaged
    /// object is an error naming it, and leaves no file). The header, or `None` if `name` is
    /// not archived.
    pub async fn fetch_to_file(
        &self,
        name: &str,
        place: impl FnOnce(&WalHeader) -> Result<FetchTarget, PgError> + Send + 'static,
    ) -> Result<Option<WalHeader>, PgError> {
        self.fetch_to_file_when(name, || (), place).await
    }

    /// As [`WalArchive::fetch_to_file`], calling `ready` once the object is read and before
    /// it is opened (decrypted, decompressed, written: the CPU a fetch spends), on the thread
    /// that then does that; what `ready` returns is held until the file is written. A
    /// prefetcher takes its turn there ([`prefetch`]).
    pub async fn fetch_to_file_when<G: 'static>(
        &self,
        name: &str,
        ready: impl FnOnce() -> G + Send + 'static,
        place: impl FnOnce(&WalHeader) -> Result<FetchTarget, PgError> + Send + 'static,
    ) -> Result<Option<WalHeader>, PgError> {
        self.with_payload(name, ready, |key, payload| {
            let header = read_header(key, payload)?;
            let target = place(&header)?;
            write_checked(key, &header, payload, &target)?;
            Ok(header)
        })
        .await
    }

    /// Reads the object of `name` and hands `read` (on a blocking thread) its key and its
    /// payload, checked and decrypted, decompressed as it is read; `None` if `name` is not
    /// archived. `ready` is called on that thread before the object is opened, and what it
    /// returns held until `read` returns.
    async fn with_payload<T: Send + 'static, G: 'static>(
        &self,
        name: &str,
        ready: impl FnOnce() -> G + Send + 'static,
        read: impl FnOnce(&str, &mut dyn std::io::Read) -> Result<T, PgError> + Send + 'static,
    ) -> Result<Option<T>, PgError> {
        Self::check_name(name)?;
        let key = self.key(name);
        let bytes = match self.sink.get(&key).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let side = self.side.clone();
        tokio::task::spawn_blocking(move || {
            let _held = ready();
            let mut bytes = Vec::from(bytes);
            let mut payload = side.open_reader(SideObject::Item, &key, &mut bytes)?;
            read(&key, &mut payload).map(Some)
        })
        .await
        .map_err(|e| PgError::Invalid(format!("opening {name}: {e}")))?
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

/// What a push of a file reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pushed {
    /// How it ended.
    pub outcome: PushOutcome,
    /// The file's length.
    pub size: u64,
    /// BLAKE3 of its content, hex.
    pub blake3: String,
}

/// A WAL file opened to be archived: what its header will say besides its digest and summary.
struct FileToSeal {
    name: String,
    kind: WalFileKind,
    path: PathBuf,
    archived_at: DateTime<Utc>,
}

impl FileToSeal {
    /// Opens the file and seals it ([`FileToSeal::read_and_seal`]) at the length it has now.
    fn open_and_seal(
        self,
        side: &SideArchive,
        key: &str,
        threads: CompressionThreads,
    ) -> Result<(Vec<u8>, WalHeader), PgError> {
        let file =
            std::fs::File::open(&self.path).map_err(PgError::io("open", self.path.display()))?;
        let size = file
            .metadata()
            .map_err(PgError::io("stat", self.path.display()))?
            .len();
        self.read_and_seal(side, key, file, size, threads)
    }

    /// Reads `file` once, in pieces of [`READ_PIECE`], and seals it as the object `key`,
    /// compressed by `threads`: each piece is hashed (BLAKE3), summarized (a segment) and
    /// compressed as it passes; the header, known at the end, is sealed before the content.
    /// The sealed object and its header; [`PgError::WalChanged`] if the file did not hold
    /// exactly `size` bytes, its length when opened (it grew or shrank while it was read), and
    /// nothing is sealed.
    fn read_and_seal(
        self,
        side: &SideArchive,
        key: &str,
        file: std::fs::File,
        size: u64,
        threads: CompressionThreads,
    ) -> Result<(Vec<u8>, WalHeader), PgError> {
        let path = self.path.display().to_string();
        let mut failed: Option<PgError> = None;
        let mut header: Option<WalHeader> = None;
        let sealed = side.seal_written(SideObject::Item, key, size, threads, |content| {
            let teed = Teed {
                inner: Hashing::new(file),
                copy: content,
                left: size,
                failed: None,
            };
            // Hashed beneath the buffer: the digest takes the file in pieces of READ_PIECE,
            // whatever the scanner reads at a time (BLAKE3 is slower on 8 KiB pieces).
            let mut read = std::io::BufReader::with_capacity(READ_PIECE, teed);
            let summary = match self.kind {
                WalFileKind::Segment => summary_or_warn(
                    &self.name,
                    walscan::summarize_read(&self.name, size, &mut read),
                ),
                _ => None,
            };
            // The summary may stop early (where the valid records end); the digest and the
            // content cover every byte.
            let drained = std::io::copy(&mut read, &mut std::io::sink());
            let mut teed = read.into_inner();
            let why = if let Some(e) = teed.failed.take() {
                Some(PgError::io("compress", &path)(e))
            } else if let Some(e) = teed.inner.failed.take().or(drained.err()) {
                Some(PgError::io("read", &path)(e))
            } else if teed.inner.len != size {
                Some(PgError::WalChanged {
                    name: self.name.clone(),
                    path: path.clone(),
                })
            } else {
                None
            };
            if let Some(why) = why {
                let said = why.to_string();
                failed = Some(why);
                return Err(std::io::Error::other(said));
            }
            let made = WalHeader {
                name: self.name.clone(),
                size,
                blake3: teed.inner.digest(),
                crc32c: Some(teed.inner.crc32c),
                archived_at: self.archived_at,
                summary,
            };
            let prefix = framing(&made);
            header = Some(made);
            Ok(prefix)
        });
        match (sealed, failed, header) {
            (_, Some(why), _) => Err(why),
            (Ok(sealed), None, Some(header)) => Ok((sealed, header)),
            (Err(e), None, _) => Err(PgError::io("seal", &path)(e)),
            (Ok(_), None, None) => unreachable!("sealed only once the header is made"),
        }
    }
}

/// A reader that also writes the first `left` bytes it reads into `copy` (the content's
/// compressor), keeping the first error of those writes (a reader such as the segment scanner
/// takes an error for an end).
struct Teed<'a, R> {
    inner: R,
    copy: &'a mut dyn std::io::Write,
    left: u64,
    failed: Option<std::io::Error>,
}

impl<R: std::io::Read> std::io::Read for Teed<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let copied = n.min(usize::try_from(self.left).unwrap_or(usize::MAX));
        if copied > 0 && self.failed.is_none() {
            if let Err(e) = self.copy.write_all(&buf[..copied]) {
                self.failed = Some(std::io::Error::new(e.kind(), e.to_string()));
            }
        }
        self.left -= copied as u64;
        match self.failed.as_ref() {
            Some(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            None => Ok(n),
        }
    }
}

/// How much of a file a push reads at a time.
const READ_PIECE: usize = 256 << 10;

/// A reader that hashes (BLAKE3 and CRC32C) and counts what passes through it, and keeps the
/// first error it passed on (for readers, such as the segment scanner, that take an error for
/// an end).
struct Hashing<R> {
    inner: R,
    blake3: blake3::Hasher,
    crc32c: u32,
    len: u64,
    failed: Option<std::io::Error>,
}

impl<R> Hashing<R> {
    fn new(inner: R) -> Self {
        Hashing {
            inner,
            blake3: blake3::Hasher::new(),
            crc32c: 0,
            len: 0,
            failed: None,
        }
    }

    /// BLAKE3 (hex) of what was read.
    fn digest(&self) -> String {
        self.blake3.finalize().to_hex().to_string()
    }
}

impl<R: std::io::Read> std::io::Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.blake3.update(&buf[..n]);
                self.crc32c = crc32c::crc32c_append(self.crc32c, &buf[..n]);
                self.len += n as u64;
                Ok(n)
            }
            Err(e) => {
                if e.kind() != std::io::ErrorKind::Interrupted && self.failed.is_none() {
                    self.failed = Some(std::io::Error::new(e.kind(), e.to_string()));
                }
                Err(e)
            }
        }
    }
}

/// A segment's summary, or `None` (with a warning) for a segment this build cannot read: it
/// is archived all the same (Postgres knows its WAL; refusing would stop archiving and fill
/// the primary's disk).
fn summary_or_warn(
    name: &str,
    summary: Result<SegmentSummary, walscan::NotASegment>,
) -> Option<SegmentSummary> {
    summary
        .map_err(
            |e| tracing::warn!(name, error = %e, "archiving a segment that cannot be summarized"),
        )
        .ok()
}

/// The restore points a header's summary lists.
fn restore_points_of(header: &WalHeader) -> Vec<RestorePoint> {
    header
        .summary
        .as_ref()
        .map(|s| s.restore_points.clone())
        .unwrap_or_default()
}

/// The framing that precedes a file's content in its sealed object: the header's length and
/// the header, as JSON.
fn framing(header: &WalHeader) -> Vec<u8> {
    let payload = serde_json::to_vec(header).expect("serializes");
    let mut framing = Vec::with_capacity(4 + payload.len());
    framing.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    framing.extend_from_slice(&payload);
    framing
}

/// Where [`WalArchive::fetch_to_file`] writes a file.
#[derive(Clone, Debug)]
pub struct FetchTarget {
    /// The file's final path.
    pub dest: std::path::PathBuf,
    /// Where it is written first (same directory), renamed to `dest` once checked.
    pub tmp: std::path::PathBuf,
    /// Whether the file and its directory are synced before the call returns.
    pub durable: bool,
    /// Whether `.<CRC32C>` of the content (8 lowercase hex digits) is appended to `dest`'s
    /// file name: a spool names a prefetched segment by the checksum it is checked with when
    /// served ([`prefetch`]).
    pub crc32c_in_name: bool,
}

impl FetchTarget {
    /// The final path of content whose CRC32C is `crc`.
    fn dest_for(&self, crc: u32) -> std::path::PathBuf {
        if !self.crc32c_in_name {
            return self.dest.clone();
        }
        let mut name = self.dest.file_name().unwrap_or_default().to_owned();
        name.push(format!(".{crc:08x}"));
        self.dest.with_file_name(name)
    }
}

/// The longest header a WAL object may carry (a segment's summary with its restore points).
const MAX_HEADER: usize = 1 << 20;

/// Reads the framed header at the start of a WAL object's payload.
fn read_header(key: &str, payload: &mut dyn std::io::Read) -> Result<WalHeader, PgError> {
    let bad = |why: String| PgError::corrupt(key, why);
    let mut len = [0u8; 4];
    payload
        .read_exact(&mut len)
        .map_err(|e| bad(format!("no header: {e}")))?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_HEADER {
        return Err(bad(format!("a header of {len} bytes")));
    }
    let mut header = vec![0u8; len];
    payload
        .read_exact(&mut header)
        .map_err(|e| bad(format!("short header: {e}")))?;
    serde_json::from_slice(&header).map_err(|e| bad(format!("header does not parse: {e}")))
}

/// Streams the rest of `payload` (a file's content) to `target.tmp`, checks it against
/// `header`, and renames it to `target.dest`; on any failure the temporary file is removed.
fn write_checked(
    key: &str,
    header: &WalHeader,
    mut payload: impl std::io::Read,
    target: &FetchTarget,
) -> Result<(), PgError> {
    use std::io::Write;
    let written = (|| {
        let tmp = &target.tmp;
        let mut file = open_empty(tmp).map_err(PgError::io("create", tmp.display()))?;
        // The content is checked by the CRC32C its header records, or (an object pushed before
        // it was recorded) by its BLAKE3.
        let mut hasher = header.crc32c.is_none().then(blake3::Hasher::new);
        let take_crc = header.crc32c.is_some() || target.crc32c_in_name;
        let mut crc = 0u32;
        let mut len = 0u64;
        let mut buf = vec![0u8; 1 << 17];
        loop {
            let n = match payload.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(PgError::corrupt(key, format!("zstd: {e}"))),
            };
            if let Some(hasher) = hasher.as_mut() {
                hasher.update(&buf[..n]);
            }
            if take_crc {
                crc = crc32c::crc32c_append(crc, &buf[..n]);
            }
            len += n as u64;
            file.write_all(&buf[..n])
                .map_err(PgError::io("write", tmp.display()))?;
        }
        let digest = match hasher {
            Some(hasher) => Digest::Blake3(hasher.finalize()),
            None => Digest::Crc32c(crc),
        };
        check_content(key, header, len, digest)?;
        if target.durable {
            file.sync_all()
                .map_err(PgError::io("sync", tmp.display()))?;
        }
        let dest = target.dest_for(crc);
        std::fs::rename(tmp, &dest).map_err(PgError::io("rename into place", dest.display()))?;
        Ok(dest)
    })();
    let dest = match written {
        Ok(dest) => dest,
        Err(e) => {
            let _ = std::fs::remove_file(&target.tmp);
            return Err(e);
        }
    };
    if target.durable {
        if let Some(dir) = dest.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(PgError::io("sync", dir.display()))?;
        }
    }
    Ok(())
}

/// Opens `path` to be written from its start, created if missing and emptied if not. Not by
/// `O_TRUNC`: a file emptied so is written back by ext4 as soon as it is closed (it takes it
/// for a file being replaced), 16 MiB a segment, and the prefetcher's temporary files are
/// there, empty, before they are written.
fn open_empty(path: &Path) -> std::io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    if file.metadata()?.len() > 0 {
        file.set_len(0)?;
    }
    Ok(file)
}

/// A digest of a file's content, to check against its header.
enum Digest {
    /// Its BLAKE3.
    Blake3(blake3::Hash),
    /// Its CRC32C (a header that records none matches no CRC32C).
    Crc32c(u32),
}

/// Checks a file's content, `len` bytes of `digest`, against its header.
fn check_content(key: &str, header: &WalHeader, len: u64, digest: Digest) -> Result<(), PgError> {
    let matches = match digest {
        Digest::Blake3(hash) => hash.to_hex().as_str() == header.blake3,
        Digest::Crc32c(crc) => Some(crc) == header.crc32c,
    };
    if len != header.size || !matches {
        return Err(PgError::corrupt(
            key,
            "content does not match its recorded size and BLAKE3",
        ));
    }
    Ok(())
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
        assert_eq!(header.crc32c, Some(crc32c::crc32c(&segment(1))));
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

    /// A WAL file `name` holding `bytes`, in a directory of its own.
    fn on_disk(name: &str, bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        (dir, path)
    }

    #[tokio::test]
    async fn a_file_pushed_from_disk_is_archived_as_its_bytes_are() {
        let (_, wal) = archive().await;
        let name = "000000010000000000000000";
        let (dir, path) = on_disk(name, &segment(1));
        let pushed = wal.push_file(name, &path).await.unwrap();
        assert_eq!(pushed.outcome, PushOutcome::Stored);
        assert_eq!(pushed.size, segment(1).len() as u64);
        assert_eq!(pushed.blake3, blake3::hash(&segment(1)).to_hex().as_str());
        let (header, content) = wal.fetch(name).await.unwrap().unwrap();
        assert_eq!(content, segment(1));
        assert_eq!(header.crc32c, Some(crc32c::crc32c(&segment(1))));
        assert_eq!(header.summary.unwrap().system_id, 99);
        assert_eq!(wal.restore_points().await.unwrap()[0].name, "rp1");
        // The same bytes from memory agree; other bytes from disk are refused.
        assert_eq!(
            wal.push(name, segment(1)).await.unwrap(),
            PushOutcome::AlreadyArchived
        );
        // From disk again: only hashed, and found archived with its own size and digest.
        let again = wal.push_file(name, &path).await.unwrap();
        assert_eq!(
            again,
            Pushed {
                outcome: PushOutcome::AlreadyArchived,
                ..pushed
            }
        );
        std::fs::write(&path, segment(2)).unwrap();
        let err = wal.push_file(name, &path).await.unwrap_err();
        assert!(matches!(err, PgError::WalConflict { .. }), "{err}");
        let missing = wal
            .push_file(name, &dir.path().join("gone"))
            .await
            .unwrap_err();
        assert!(missing.to_string().contains("gone"), "{missing}");
    }

    #[tokio::test]
    async fn a_file_whose_length_changes_while_it_is_read_is_not_archived() {
        let (_, wal) = archive().await;
        let name = "000000010000000000000000";
        let (_dir, path) = on_disk(name, &segment(1));
        let len = segment(1).len() as u64;
        let seal = |size: u64| {
            let read = FileToSeal {
                name: name.to_owned(),
                kind: WalFileKind::Segment,
                path: path.clone(),
                archived_at: wal.clock.now(),
            };
            let file = std::fs::File::open(&path).unwrap();
            let key = wal.key(name);
            read.read_and_seal(&wal.side, &key, file, size, CompressionThreads::One)
        };
        // Longer than it was when opened (it grew), shorter (truncated), far shorter.
        for size in [len - 1, len + 1, 1000] {
            let err = seal(size).unwrap_err();
            assert!(matches!(err, PgError::WalChanged { .. }), "{size}: {err}");
            assert!(err.to_string().contains(name), "{err}");
        }
        // Its own length: sealed, with the header of exactly the bytes read, which open to
        // the header followed by the file.
        let (sealed, header) = seal(len).unwrap();
        assert_eq!(header.size, len);
        assert_eq!(
            header.blake3,
            blake3::hash(&segment(1)).to_hex().to_string()
        );
        assert_eq!(header.summary.as_ref().unwrap().system_id, 99);
        let payload = wal
            .side
            .open(SideObject::Item, &wal.key(name), &sealed)
            .unwrap();
        assert_eq!(payload, [framing(&header), segment(1).to_vec()].concat());
        assert!(
            wal.fetch(name).await.unwrap().is_none(),
            "nothing was written"
        );
    }

    fn target(dir: &Path) -> FetchTarget {
        FetchTarget {
            dest: dir.join("RECOVERYXLOG"),
            tmp: dir.join("RECOVERYXLOG.partial"),
            durable: true,
            crc32c_in_name: false,
        }
    }

    #[tokio::test]
    async fn a_file_fetched_to_disk_is_whole_and_checked() {
        let (sink, wal) = archive().await;
        let dir = tempfile::tempdir().unwrap();
        let name = "000000010000000000000000";
        assert!(wal
            .fetch_to_file(name, |_| panic!("nothing to place"))
            .await
            .unwrap()
            .is_none());
        wal.push(name, segment(1)).await.unwrap();
        // A longer temporary a killed fetch left is emptied first, not written over.
        std::fs::write(dir.path().join("RECOVERYXLOG.partial"), vec![7u8; 100_000]).unwrap();
        let to = target(dir.path());
        let header = wal
            .fetch_to_file(name, move |_| Ok(to))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(header.summary.unwrap().system_id, 99);
        assert_eq!(
            std::fs::read(dir.path().join("RECOVERYXLOG")).unwrap(),
            segment(1)
        );
        assert!(!dir.path().join("RECOVERYXLOG.partial").exists());
        assert_eq!(
            wal.header(name).await.unwrap().unwrap().blake3,
            blake3::hash(&segment(1)).to_hex().as_str()
        );
        // A place that refuses the header writes nothing.
        std::fs::remove_file(dir.path().join("RECOVERYXLOG")).unwrap();
        let refused = wal
            .fetch_to_file(name, |h| Err(PgError::Invalid(format!("{} bytes", h.size))))
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("65536 bytes"), "{refused}");
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
        // A damaged object is named, and leaves no file behind.
        let key = format!("wal/main/{name}");
        let mut bytes = sink.get(&key).await.unwrap().to_vec();
        bytes[100] ^= 1;
        sink.tamper(&key, bytes.into());
        let to = target(dir.path());
        let err = wal.fetch_to_file(name, move |_| Ok(to)).await.unwrap_err();
        assert!(err.to_string().contains(&key), "{err}");
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }

    #[tokio::test]
    async fn a_forged_header_is_caught_as_the_content_streams() {
        // Sealed with the repository's keys (an insider, or a bug) but with a header that does
        // not describe the content: the stream is checked, the file never appears.
        let (sink, wal) = archive().await;
        let dir = tempfile::tempdir().unwrap();
        let name = "000000010000000000000000";
        let key = format!("wal/main/{name}");
        let right = blake3::hash(&segment(1)).to_hex().to_string();
        let crc = crc32c::crc32c(&segment(1));
        let seal = |header: &WalHeader| {
            wal.side
                .seal_parts(SideObject::Item, &key, &[&framing(header), &segment(1)])
        };
        let without_crc = WalHeader {
            crc32c: None,
            ..wal.header_for(name, 65536, &"0".repeat(64), crc, None)
        };
        // A wrong CRC32C, a wrong size, a wrong digest where no CRC32C is recorded (an object
        // pushed before CRC32Cs were).
        for header in [
            wal.header_for(name, 65536, &right, crc ^ 1, None),
            wal.header_for(name, 10, &right, crc, None),
            without_crc,
        ] {
            sink.put(&key, seal(&header).into(), PutMode::Overwrite)
                .await
                .unwrap();
            let to = target(dir.path());
            let err = wal.fetch_to_file(name, move |_| Ok(to)).await.unwrap_err();
            assert!(err.to_string().contains("does not match"), "{err}");
            assert!(err.to_string().contains(&key), "{err}");
            assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
            assert!(wal.fetch(name).await.is_err());
        }
        // A wrong BLAKE3 beside the right CRC32C: wal-fetch checks the CRC32C alone (a
        // key-holder could as well have sealed other bytes with their own digests); a fetch
        // into memory, as drills read WAL, checks both.
        let header = wal.header_for(name, 65536, &"0".repeat(64), crc, None);
        sink.put(&key, seal(&header).into(), PutMode::Overwrite)
            .await
            .unwrap();
        let to = target(dir.path());
        wal.fetch_to_file(name, move |_| Ok(to))
            .await
            .unwrap()
            .unwrap();
        let err = wal.fetch(name).await.unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
    }

    #[tokio::test]
    async fn objects_without_a_crc32c_are_fetched_and_checked_by_blake3() {
        // As pushed before headers recorded a CRC32C: no such field in the JSON.
        let (sink, wal) = archive().await;
        let dir = tempfile::tempdir().unwrap();
        let name = "000000010000000000000000";
        let key = format!("wal/main/{name}");
        let header = WalHeader {
            crc32c: None,
            ..wal.header_for(
                name,
                65536,
                blake3::hash(&segment(1)).to_hex().as_str(),
                0,
                None,
            )
        };
        let framed = framing(&header);
        assert!(!String::from_utf8_lossy(&framed).contains("crc32c"));
        let sealed = wal
            .side
            .seal_parts(SideObject::Item, &key, &[&framed, &segment(1)]);
        sink.put(&key, sealed.into(), PutMode::Create)
            .await
            .unwrap();
        let to = target(dir.path());
        let got = wal
            .fetch_to_file(name, move |_| Ok(to))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.crc32c, None);
        assert_eq!(
            std::fs::read(dir.path().join("RECOVERYXLOG")).unwrap(),
            segment(1)
        );
        assert_eq!(wal.fetch(name).await.unwrap().unwrap().1, segment(1));
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
