//! Where backups come from and restores go to.
//!
//! A [`Source`] produces one snapshot as a stream of entries, each with an async reader for its
//! content; a [`Target`] is its inverse and applies entries on restore. Adapters implement them
//! for one store each (a directory here; Postgres, Redis and buckets in their own crates).

mod content_check;
mod drop_guard;
pub mod entry;
pub mod fs;

use std::collections::BTreeMap;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncRead;

use crate::sink::BoxError;
use crate::source::entry::{EntryMeta, EntryPath};

pub use self::content_check::ContentCheck;
pub use self::drop_guard::DropGuardReader;
pub use crate::format::chunker::Cutting;

/// An entry's content, read once, front to back.
pub type EntryReader = Pin<Box<dyn AsyncRead + Send>>;

/// The cause inside the `NotFound` error of a content reader whose entry disappeared after
/// the walk saw it and before its content was first read (a file deleted meanwhile, a dropped
/// table's file): the engine then leaves the entry out, as if the walk had not seen it, instead
/// of failing the backup. A reader returns it only before its first byte.
///
/// ```
/// use resilience_core::source::Vanished;
/// let e = std::io::Error::new(std::io::ErrorKind::NotFound, Vanished);
/// assert!(Vanished::is(&e));
/// assert!(!Vanished::is(&std::io::Error::from(std::io::ErrorKind::NotFound)));
/// ```
#[derive(Clone, Copy, Debug, thiserror::Error)]
#[error("vanished before it was read")]
pub struct Vanished;

impl Vanished {
    /// Whether `e` says that an entry vanished before it was read.
    pub fn is(e: &std::io::Error) -> bool {
        e.kind() == std::io::ErrorKind::NotFound
            && e.get_ref().is_some_and(|inner| inner.is::<Vanished>())
    }
}

/// A source's identity: the catalog groups backups by it, retention applies per source, and a
/// backup reuses the previous snapshot of the same source id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct SourceDescriptor {
    /// A stable name chosen by the user or derived from the location (`dir:/srv/docs`).
    pub id: String,
    /// The kind of store: `dir`, `postgres`, `redis`, `bucket`, …
    pub kind: String,
}

/// Store-specific facts about one snapshot, recorded in the catalog (Postgres LSNs and timeline,
/// Redis server version, bucket versioning…). Values are JSON so that each adapter keeps its own
/// typed view.
pub type SourceMetadata = BTreeMap<String, serde_json::Value>;

/// One entry produced by a source.
pub struct SourceEntry {
    /// Its metadata.
    pub meta: EntryMeta,
    /// Its content, for [`crate::source::entry::EntryKind::File`] entries.
    pub content: Option<EntryReader>,
}

/// A failure in a source or target, naming the object (file, key, table) it concerned.
///
/// Its text is `<operation> of <object> failed`, followed by `: <message>` when it was made
/// from words ([`AdapterError::msg`]); an error made from a cause ([`AdapterError::new`])
/// leaves the cause's text to the error chain ([`crate::error::error_chain`]), so each text
/// appears once.
#[derive(Debug, thiserror::Error)]
#[error("{operation} of {object} failed{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
pub struct AdapterError {
    /// What was being done ("read", "open", "list", "write", …).
    pub operation: &'static str,
    /// The path, key or URL concerned.
    pub object: String,
    /// What went wrong, in words (empty when `source` says it).
    pub message: String,
    /// The underlying error, if any.
    #[source]
    pub source: Option<BoxError>,
}

impl AdapterError {
    /// An error with a cause.
    pub fn new(
        operation: &'static str,
        object: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        AdapterError {
            operation,
            object: object.into(),
            message: String::new(),
            source: Some(source.into()),
        }
    }

    /// An error described in words only.
    pub fn msg(
        operation: &'static str,
        object: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        AdapterError {
            operation,
            object: object.into(),
            message: message.into(),
            source: None,
        }
    }
}

/// Produces snapshots.
#[async_trait]
pub trait Source: Send + Sync {
    /// Which source this is.
    fn descriptor(&self) -> SourceDescriptor;

    /// Begins one snapshot (for Postgres: `pg_backup_start`), returning its entry stream.
    async fn start(&self) -> Result<Box<dyn SourceSession>, AdapterError>;
}

/// The order a session emits its entries in.
///
/// A backup pairs each entry with the same path in the parent snapshot of the same source by
/// walking both in this order, so unchanged content is reused without being read and without
/// either listing held in memory. An entry out of order is only read again, never wrong.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EntryOrder {
    /// Component by component ([`EntryPath::walk_cmp`]): a depth-first walk with sorted
    /// children, as a directory tree is read.
    #[default]
    Walk,
    /// Plain byte order of the whole path, as S3, GCS and Azure list keys (`a-b` before `a/c`,
    /// where a walk has `a/c` first).
    Bytes,
}

impl EntryOrder {
    /// Compares two paths in this order.
    pub fn cmp(self, a: &EntryPath, b: &EntryPath) -> std::cmp::Ordering {
        match self {
            EntryOrder::Walk => a.walk_cmp(b),
            EntryOrder::Bytes => a.as_bytes().cmp(b.as_bytes()),
        }
    }
}

/// One snapshot being taken.
///
/// Entries should come in the session's [`EntryOrder`] where the source can (it lets the
/// engine reuse unchanged content without reading it); any order is correct.
#[async_trait]
pub trait SourceSession: Send {
    /// The order of this session's entries (by default a walk: [`EntryOrder::Walk`]).
    fn entry_order(&self) -> EntryOrder {
        EntryOrder::Walk
    }

    /// How to cut this entry's content into chunks (by default where the content says:
    /// [`Cutting::ContentDefined`]). Asked once per file entry, whether its content is then
    /// read or reused from the parent snapshot.
    fn cutting(&self, _meta: &EntryMeta) -> Cutting {
        Cutting::ContentDefined
    }

    /// The next entry, or `None` when the walk is complete (then [`Self::closing_entries`]
    /// follows). The engine asks for entries ahead of reading the contents of earlier ones
    /// (several are in flight at once): a session must not wait for a reader it handed out to
    /// be read before it gives the next entry.
    async fn next_entry(&mut self) -> Result<Option<SourceEntry>, AdapterError>;

    /// Entries that can only be made once every entry before them has been read in full:
    /// Postgres' `backup_label` and `tablespace_map`, which `pg_backup_stop` returns and which
    /// must come after the last data file was read, or the backup is not consistent at its stop
    /// point.
    ///
    /// The engine calls it once, after `next_entry` returned `None` and after every content
    /// reader it was handed has been read to its end or dropped. By default there are none.
    async fn closing_entries(&mut self) -> Result<Vec<SourceEntry>, AdapterError> {
        Ok(Vec::new())
    }

    /// Store-specific metadata, called once after `next_entry` returned `None`.
    async fn finish(&mut self) -> Result<SourceMetadata, AdapterError>;
}

/// Applies a snapshot's entries on restore.
#[async_trait]
pub trait Target: Send + Sync {
    /// Whether the target will write this entry, asked before any of its content is read: a
    /// few entries ahead of [`Target::create`], several at once. An entry the target declines
    /// (filtered out, already there and identical, refused) is not read from the repository and
    /// not passed to `create`; `apply_metadata` still sees it. By default every entry is wanted.
    ///
    /// `content` tells whether bytes the target already holds are the entry's content
    /// ([`ContentCheck::matches`]), so a resumed restore can skip what it wrote before without
    /// marking what it writes.
    async fn wants(
        &self,
        _meta: &EntryMeta,
        _content: &ContentCheck<'_>,
    ) -> Result<bool, AdapterError> {
        Ok(true)
    }

    /// Creates an entry. For file-like entries returns a writer that receives the content in
    /// order; for directories, symlinks and others creates them and returns `None`.
    /// Several entries may be open at once.
    async fn create(
        &self,
        meta: &EntryMeta,
    ) -> Result<Option<Box<dyn ContentWriter>>, AdapterError>;

    /// Called for every entry in a second pass, after all content is written, to apply what
    /// writing would disturb (directory times, read-only modes). Every entry completed before
    /// is written by the time it returns `Ok` (see [`ContentWriter::complete`]).
    async fn apply_metadata(&self, meta: &EntryMeta) -> Result<(), AdapterError>;

    /// Called once at the end of a successful restore; every entry completed is written by
    /// the time it returns `Ok`.
    async fn finish(&self) -> Result<(), AdapterError>;
}

/// Receives one entry's content during a restore.
#[async_trait]
pub trait ContentWriter: Send {
    /// Appends the next piece of content.
    async fn write(&mut self, data: Bytes) -> Result<(), AdapterError>;

    /// Called after the last piece; makes the entry complete. A target that makes a restore
    /// durable may wait for [`Target::finish`] to put it on disk (`DirTarget::durable` syncs
    /// the whole file system there). A target may write the entry behind, on other threads:
    /// then a failure is returned by its next call, and [`Target::apply_metadata`] and
    /// [`Target::finish`] wait for every entry handed over.
    async fn complete(self: Box<Self>) -> Result<(), AdapterError>;
}

/// A writer that swallows an entry's content: for targets that find out only in
/// [`Target::create`] that they skip an entry. Declining it in [`Target::wants`] is better:
/// then its content is not read at all.
pub struct DiscardWriter;

#[async_trait]
impl ContentWriter for DiscardWriter {
    async fn write(&mut self, _data: Bytes) -> Result<(), AdapterError> {
        Ok(())
    }

    async fn complete(self: Box<Self>) -> Result<(), AdapterError> {
        Ok(())
    }
}
