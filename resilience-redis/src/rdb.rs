//! An RDB file written by `BGSAVE` (or `redis-cli --rdb`), where the service runs beside Redis,
//! stored as one entry `dump.rdb`; restore it with a directory restore and load it by starting
//! a server on it.
//!
//! The file's CRC64 (RDB version 5 and later) is checked as it is read
//! ([`crate::rdb_checksum`]): a damaged or truncated file fails the backup, naming the file.

use std::path::PathBuf;

use async_trait::async_trait;
use resilience_core::source::entry::EntryMeta;
use resilience_core::source::{
    AdapterError, Source, SourceDescriptor, SourceEntry, SourceMetadata, SourceSession,
};
use tokio::io::AsyncReadExt;

use crate::rdb_checksum::ChecksumReader;

/// One RDB file.
#[derive(Clone, Debug)]
pub struct RdbFileSource {
    path: PathBuf,
    id: String,
}

impl RdbFileSource {
    /// The RDB file at `path` (checked to start with `REDIS` and a version, and to end with the
    /// checksum of its content).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        RdbFileSource {
            id: format!("redis-rdb:{}", path.display()),
            path,
        }
    }

    /// Names the source.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }
}

#[async_trait]
impl Source for RdbFileSource {
    fn descriptor(&self) -> SourceDescriptor {
        SourceDescriptor {
            id: self.id.clone(),
            kind: "redis-rdb".into(),
        }
    }

    async fn start(&self) -> Result<Box<dyn SourceSession>, AdapterError> {
        let shown = self.path.display().to_string();
        let mut file = tokio::fs::File::open(&self.path)
            .await
            .map_err(|e| AdapterError::new("open", shown.clone(), e))?;
        let mut magic = [0u8; 9];
        file.read_exact(&mut magic)
            .await
            .map_err(|e| AdapterError::new("read", shown.clone(), e))?;
        let (version, version_num) = parse_header(&shown, &magic)?;
        let file = tokio::fs::File::open(&self.path)
            .await
            .map_err(|e| AdapterError::new("open", shown.clone(), e))?;
        let md = file
            .metadata()
            .await
            .map_err(|e| AdapterError::new("stat", shown.clone(), e))?;
        let entry = SourceEntry {
            meta: EntryMeta {
                mode: 0o100600,
                ..EntryMeta::file("dump.rdb", md.len())
            },
            content: Some(Box::pin(ChecksumReader::new(
                file,
                shown.clone(),
                version_num,
            ))),
        };
        let mut meta = SourceMetadata::new();
        meta.insert("rdb_version".into(), version.into());
        meta.insert("file".into(), shown.into());
        Ok(Box::new(RdbSession {
            entry: Some(entry),
            meta,
        }))
    }
}

/// Checks the first bytes of RDB file `file` (`REDIS` and four version digits) and returns its
/// version, as written and as a number; the error names the file.
pub fn parse_header(file: &str, header: &[u8]) -> Result<(String, u32), AdapterError> {
    let digits = match header.get(..9) {
        Some(h) if h.starts_with(b"REDIS") && h[5..].iter().all(u8::is_ascii_digit) => &h[5..],
        _ => {
            return Err(AdapterError::msg(
                "read",
                file,
                "not an RDB file (no REDIS header)",
            ))
        }
    };
    let version = String::from_utf8_lossy(digits).into_owned();
    // Four ASCII digits always fit.
    let number = version.parse().unwrap_or(u32::MAX);
    Ok((version, number))
}

struct RdbSession {
    entry: Option<SourceEntry>,
    meta: SourceMetadata,
}

#[async_trait]
impl SourceSession for RdbSession {
    async fn next_entry(&mut self) -> Result<Option<SourceEntry>, AdapterError> {
        Ok(self.entry.take())
    }

    async fn finish(&mut self) -> Result<SourceMetadata, AdapterError> {
        Ok(std::mem::take(&mut self.meta))
    }
}
