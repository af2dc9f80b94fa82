//! Side archives: objects a store streams into the repository beside its snapshots, one
//! object per item, not chunked or deduplicated (Postgres' WAL segments and the restore points
//! noted beside them).
//!
//! Each archive has a name and lives under `wal/<name>/` (the prefix is historical: Postgres'
//! WAL was the first side archive, and repositories written before keep their objects there).
//! Its objects are sealed like every repository object — compressed, encrypted with the current
//! data key, bound to their name — so replication copies them and re-keying rewrites them with
//! the rest. What an item holds is the adapter's business; the core only seals and opens it.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::crypto::KeySet;
pub use crate::format::object::CompressionThreads;
use crate::format::object::{self, ObjectKind};
use crate::repo::Repository;
use crate::sink::Sink;

/// Where side archives live in a repository.
pub const SIDE_ARCHIVE_ROOT: &str = "wal/";

/// Which of the two object kinds of a side archive an object is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SideObject {
    /// An archived item (a WAL file).
    Item,
    /// A small note kept beside the items (a restore point's position).
    Note,
}

impl SideObject {
    fn kind(self) -> ObjectKind {
        match self {
            SideObject::Item => ObjectKind::SideItem,
            SideObject::Note => ObjectKind::SideNote,
        }
    }
}

/// One side archive of a repository: seals and opens its objects.
#[derive(Clone)]
pub struct SideArchive {
    sink: Arc<dyn Sink>,
    keys: Arc<KeySet>,
    name: String,
    prefix: String,
}

impl SideArchive {
    /// The archive's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The prefix every object of the archive has (`wal/<name>/`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The object name of `item` (a path relative to the archive).
    pub fn key(&self, item: &str) -> String {
        format!("{}{item}", self.prefix)
    }

    /// The store the archive's objects live in.
    pub fn sink(&self) -> &Arc<dyn Sink> {
        &self.sink
    }

    /// Seals `payload` as the object named `key` (CPU-bound: call it off the async threads for
    /// large payloads).
    pub fn seal(&self, kind: SideObject, key: &str, payload: &[u8]) -> Vec<u8> {
        object::seal_object(&self.keys, kind.kind(), key, payload)
    }

    /// Seals the concatenation of `parts` as the object named `key`, without concatenating
    /// them (a WAL item's header and its 16 MiB segment: no copy of the segment is made).
    pub fn seal_parts(&self, kind: SideObject, key: &str, parts: &[&[u8]]) -> Vec<u8> {
        object::seal_object_parts(&self.keys, kind.kind(), key, parts)
    }

    /// Seals as the object named `key` a prefix known only once the content is read, followed
    /// by that content, read once: `write_content` writes exactly `len` bytes of content into
    /// the writer it is given and returns the prefix ([`object::seal_object_written`]).
    pub fn seal_written(
        &self,
        kind: SideObject,
        key: &str,
        len: u64,
        threads: CompressionThreads,
        write_content: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<Vec<u8>>,
    ) -> std::io::Result<Vec<u8>> {
        object::seal_object_written(&self.keys, kind.kind(), key, len, threads, write_content)
    }

    /// [`SideArchive::open`] as a stream: checks and decrypts the object where it lies in
    /// `bytes` and returns a reader of its payload, decompressed as it is read
    /// ([`object::open_object_reader`]).
    pub fn open_reader<'a>(
        &self,
        kind: SideObject,
        key: &str,
        bytes: &'a mut [u8],
    ) -> Result<impl std::io::Read + 'a> {
        object::open_object_reader(&self.keys, kind.kind(), key, bytes)
    }

    /// Checks and opens the object named `key`; a damaged, forged or wrongly keyed object is an
    /// error naming it.
    pub fn open(&self, kind: SideObject, key: &str, bytes: &[u8]) -> Result<Vec<u8>> {
        object::open_object(&self.keys, kind.kind(), key, bytes)
    }
}

impl Repository {
    /// The side archive called `name` (non-empty, without `/`, not starting with `.`).
    pub fn side_archive(&self, name: &str) -> Result<SideArchive> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(Error::Usage(format!(
                "side archive name {name:?} must be non-empty, without '/' and not start with '.'"
            )));
        }
        Ok(SideArchive {
            sink: self.sink().clone(),
            keys: self.keys().clone(),
            name: name.to_owned(),
            prefix: format!("{SIDE_ARCHIVE_ROOT}{name}/"),
        })
    }
}
