//! Snapshots: a manifest naming the blobs of a *tree*, the serialized, ordered list of entries.
//!
//! The tree is a stream of records, each `length u32 LE | MessagePack(TreeRecord)` with named
//! fields (so later versions can add fields). The stream is cut by the same content-defined
//! chunker as data and stored as [`crate::format::blob::BlobKind::Tree`] blobs, so an unchanged region
//! of a huge tree costs nothing the next time, and reading or writing a tree never holds it
//! whole in memory. Small contents (up to the inline limit) are stored inside their record.
//!
//! The manifest (`snapshots/<id>`) is a sealed JSON object; its checksum is recorded in the
//! catalog.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::blob::BlobId;
use crate::source::entry::EntryMeta;
use crate::source::{SourceDescriptor, SourceMetadata};

/// Format version of manifests and trees written by this build.
pub const SNAPSHOT_FORMAT: u32 = 1;

/// A reference to one blob of content.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    /// The blob.
    pub id: BlobId,
    /// Its plaintext length.
    pub len: u32,
}

/// Where an entry's content is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Content {
    /// No content (directories, symlinks, empty files).
    None,
    /// Small content stored inside the tree.
    Inline(#[serde(with = "crate::source::entry::serde_bytes_compat")] Vec<u8>),
    /// Content in blobs, in order.
    Blobs(Vec<BlobRef>),
}

impl Content {
    /// The blobs this content references.
    pub fn blobs(&self) -> &[BlobRef] {
        match self {
            Content::Blobs(b) => b,
            _ => &[],
        }
    }
}

/// One entry of a tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeRecord {
    /// The entry's metadata.
    pub meta: EntryMeta,
    /// Its content.
    pub content: Content,
}

/// Appends one record to a tree stream.
pub fn encode_record(record: &TreeRecord, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    rmp_serde::encode::write_named(out, record).expect("tree records serialize");
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// Incrementally decodes a tree stream fed in arbitrary pieces.
#[derive(Default)]
pub struct TreeDecoder {
    buf: Vec<u8>,
    pos: usize,
}

impl TreeDecoder {
    /// A decoder with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the next piece of the stream.
    pub fn feed(&mut self, piece: &[u8]) {
        if self.pos > 0 && self.pos * 2 > self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(piece);
    }

    /// The next complete record, if buffered.
    pub fn next_record(&mut self, object: &str) -> Result<Option<TreeRecord>> {
        let rest = &self.buf[self.pos..];
        if rest.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4")) as usize;
        if rest.len() < 4 + len {
            return Ok(None);
        }
        let record = rmp_serde::from_slice(&rest[4..4 + len])
            .map_err(|e| Error::corrupt(object, format!("tree record does not parse: {e}")))?;
        self.pos += 4 + len;
        Ok(Some(record))
    }

    /// Checks that the stream ended on a record boundary.
    pub fn finish(&self, object: &str) -> Result<()> {
        if self.pos != self.buf.len() {
            return Err(Error::corrupt(object, "tree ends inside a record"));
        }
        Ok(())
    }
}

/// A snapshot manifest, `snapshots/<id>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version.
    pub format: u32,
    /// The snapshot's id (the same as its catalog record's).
    pub id: String,
    /// What was backed up.
    pub source: SourceDescriptor,
    /// When the backup started.
    pub started_at: DateTime<Utc>,
    /// When the backup finished.
    pub finished_at: DateTime<Utc>,
    /// Number of entries.
    pub entries: u64,
    /// Sum of entry sizes.
    pub logical_bytes: u64,
    /// The tree's blobs, in order.
    pub tree: Vec<BlobRef>,
    /// Store-specific metadata from the source.
    #[serde(default)]
    pub source_metadata: SourceMetadata,
    /// User labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The snapshot whose unchanged entries this one reused, if any.
    #[serde(default)]
    pub parent: Option<String>,
}

/// The sink key of a snapshot manifest.
pub fn manifest_key(id: &str) -> String {
    format!("snapshots/{id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::entry::{EntryKind, EntryPath};
    use proptest::prelude::*;

    fn arb_record() -> impl Strategy<Value = TreeRecord> {
        (
            proptest::collection::vec(any::<u8>(), 1..40),
            prop_oneof![
                Just(EntryKind::File),
                Just(EntryKind::Dir),
                Just(EntryKind::Symlink),
                Just(EntryKind::Other)
            ],
            any::<u64>(),
            any::<u32>(),
            proptest::option::of(any::<i64>()),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
            proptest::collection::btree_map("[a-z-]{1,8}", ".{0,10}", 0..3),
            prop_oneof![
                Just(Content::None),
                proptest::collection::vec(any::<u8>(), 0..50).prop_map(Content::Inline),
                proptest::collection::vec((any::<[u8; 32]>(), any::<u32>()), 0..4).prop_map(|v| {
                    Content::Blobs(
                        v.into_iter()
                            .map(|(id, len)| BlobRef {
                                id: BlobId(id),
                                len,
                            })
                            .collect(),
                    )
                }),
            ],
        )
            .prop_map(
                |(path, kind, size, mode, mtime_ns, link_target, attrs, content)| TreeRecord {
                    meta: EntryMeta {
                        path: EntryPath(path),
                        kind,
                        size,
                        mode,
                        mtime_ns,
                        uid: Some(mode),
                        gid: None,
                        link_target,
                        fingerprint: mtime_ns.map(|t| t.to_string()),
                        attrs,
                    },
                    content,
                },
            )
    }

    proptest! {
        #[test]
        fn tree_stream_round_trips_in_any_pieces(records in proptest::collection::vec(arb_record(), 0..20), piece in 1usize..100) {
            let mut stream = Vec::new();
            for r in &records { encode_record(r, &mut stream); }
            let mut dec = TreeDecoder::new();
            let mut out = Vec::new();
            for p in stream.chunks(piece) {
                dec.feed(p);
                while let Some(r) = dec.next_record("t").unwrap() { out.push(r); }
            }
            dec.finish("t").unwrap();
            prop_assert_eq!(out, records);
        }
    }

    #[test]
    fn truncated_tree_is_an_error() {
        let mut stream = Vec::new();
        encode_record(
            &TreeRecord {
                meta: EntryMeta::file("a", 1),
                content: Content::Inline(vec![1]),
            },
            &mut stream,
        );
        let mut dec = TreeDecoder::new();
        dec.feed(&stream[..stream.len() - 1]);
        assert!(dec.next_record("t").unwrap().is_none());
        assert!(dec.finish("t").is_err());
    }
}
