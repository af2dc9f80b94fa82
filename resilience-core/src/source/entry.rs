//! Entries: the items a snapshot is made of (a file, a directory, a Redis key, a bucket object).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// An entry's path inside its snapshot: `/`-separated, relative, arbitrary bytes (file names and
/// Redis keys need not be UTF-8).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EntryPath(#[serde(with = "serde_bytes_compat")] pub Vec<u8>);

impl EntryPath {
    /// The path's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Its `/`-separated components.
    pub fn components(&self) -> impl Iterator<Item = &[u8]> {
        self.0.split(|b| *b == b'/').filter(|c| !c.is_empty())
    }

    /// Orders paths component by component, the order of a depth-first walk with sorted children.
    ///
    /// Sources emit entries in this order where they can, so that a backup can pair each entry
    /// with the same path in the previous snapshot without holding either in memory.
    pub fn walk_cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.components().cmp(other.components())
    }
}

impl From<&str> for EntryPath {
    fn from(s: &str) -> Self {
        EntryPath(s.as_bytes().to_vec())
    }
}

impl From<Vec<u8>> for EntryPath {
    fn from(b: Vec<u8>) -> Self {
        EntryPath(b)
    }
}

impl fmt::Display for EntryPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Debug for EntryPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

/// Serializes byte vectors as compact binary (MessagePack bin) rather than arrays of numbers.
pub(crate) mod serde_bytes_compat {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
                Ok(v.as_bytes().to_vec())
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = a.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// What kind of thing an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// Bytes with a length: a file, a Redis value, a bucket object, a WAL segment.
    File,
    /// A directory.
    Dir,
    /// A symbolic link; its target is in [`EntryMeta::link_target`].
    Symlink,
    /// Anything else (FIFO, socket, device): recorded, not restored.
    Other,
}

/// The size a source gives an entry whose length it cannot know before reading it (a `COPY`
/// stream, a key's dump): the engine streams it and records what it read.
pub const UNKNOWN_SIZE: u64 = u64::MAX;

/// An entry's metadata, everything but its content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryMeta {
    /// Path inside the snapshot.
    pub path: EntryPath,
    /// What the entry is.
    pub kind: EntryKind,
    /// Content length in bytes (0 for non-files).
    pub size: u64,
    /// Unix permission bits and file type bits as in `st_mode` (0 where meaningless).
    #[serde(default)]
    pub mode: u32,
    /// Modification time in nanoseconds since the Unix epoch, where the source has one.
    #[serde(default)]
    pub mtime_ns: Option<i64>,
    /// Owner user id, where the source has one.
    #[serde(default)]
    pub uid: Option<u32>,
    /// Owner group id, where the source has one.
    #[serde(default)]
    pub gid: Option<u32>,
    /// A symlink's target.
    #[serde(default, with = "opt_bytes")]
    pub link_target: Option<Vec<u8>>,
    /// A change token: when a later backup sees the same path with the same token, it reuses
    /// the previous snapshot's blobs without reading the content (size+mtime+inode for files,
    /// ETag for objects). `None` means always read.
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// Store-specific attributes (content type, ETag, user metadata, Redis TTL…).
    #[serde(default)]
    pub attrs: BTreeMap<String, String>,
}

mod opt_bytes {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Wrapped(#[serde(with = "super::serde_bytes_compat")] Vec<u8>);

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        v.as_ref().map(|b| Wrapped(b.clone())).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(Option::<Wrapped>::deserialize(d)?.map(|w| w.0))
    }
}

impl EntryMeta {
    /// Metadata for a plain file-like entry of `size` bytes with no other attributes.
    pub fn file(path: impl Into<EntryPath>, size: u64) -> Self {
        EntryMeta {
            path: path.into(),
            kind: EntryKind::File,
            size,
            mode: 0,
            mtime_ns: None,
            uid: None,
            gid: None,
            link_target: None,
            fingerprint: None,
            attrs: BTreeMap::new(),
        }
    }

    /// Metadata for a directory entry.
    pub fn dir(path: impl Into<EntryPath>) -> Self {
        EntryMeta {
            kind: EntryKind::Dir,
            ..EntryMeta::file(path, 0)
        }
    }
}
