//! The index: which pack holds each blob.
//!
//! On the sink, index files (`index/<checksum>`) are sealed objects whose payload is
//!
//! ```text
//! version u8 = 1 | pack count u32 | per pack: id 32 | size u64 | data key id u32 | blob count u32 | blob records
//! ```
//!
//! with blob records as in a pack's table (45 bytes). In memory, [`Index`] keeps one fixed-size
//! record per blob in a sorted vector (no per-entry allocation): 52 bytes per blob, about 52 MiB
//! per TiB of unique data at the default 1 MiB average chunk.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::format::blob::{BlobId, BlobKind};
use crate::format::crypto::DataKeyId;
use crate::format::pack::{PackId, PackedBlob};

const VERSION: u8 = 1;
/// Bytes of one pack's record before its blobs: id, size, data key id, blob count.
const PACK_RECORD_LEN: usize = 32 + 8 + 4 + 4;
/// Bytes of one blob record.
const BLOB_RECORD_LEN: usize = 45;

/// One pack as an index file lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackRecord {
    /// The pack's id.
    pub id: PackId,
    /// Its size in bytes.
    pub size: u64,
    /// The data key its blobs are sealed with.
    pub key_id: DataKeyId,
    /// Its blobs.
    pub blobs: Vec<PackedBlob>,
}

/// Serializes an index file's payload.
pub fn encode_index(packs: &[PackRecord]) -> Vec<u8> {
    let blobs: usize = packs.iter().map(|p| p.blobs.len()).sum();
    let mut out = Vec::with_capacity(5 + packs.len() * 48 + blobs * 45);
    out.push(VERSION);
    out.extend_from_slice(&(packs.len() as u32).to_le_bytes());
    for p in packs {
        out.extend_from_slice(&p.id.0);
        out.extend_from_slice(&p.size.to_le_bytes());
        out.extend_from_slice(&p.key_id.to_le_bytes());
        out.extend_from_slice(&(p.blobs.len() as u32).to_le_bytes());
        for b in &p.blobs {
            out.extend_from_slice(&b.id.0);
            out.push(b.kind as u8);
            out.extend_from_slice(&b.offset.to_le_bytes());
            out.extend_from_slice(&b.length.to_le_bytes());
            out.extend_from_slice(&b.raw_len.to_le_bytes());
        }
    }
    out
}

struct Reader<'a> {
    name: &'a str,
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(Error::corrupt(self.name, "index payload is truncated"));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn id(&mut self) -> Result<BlobId> {
        Ok(BlobId(self.take(32)?.try_into().expect("32")))
    }
}

/// Parses an index file's payload; `name` is used in errors.
pub fn decode_index(name: &str, payload: &[u8]) -> Result<Vec<PackRecord>> {
    let mut r = Reader { name, buf: payload };
    let version = r.take(1)?[0];
    if version != VERSION {
        return Err(Error::UnsupportedFormat {
            object: name.to_owned(),
            found: version as u32,
            supported: VERSION as u32,
        });
    }
    let count = r.u32()?;
    // Counts are read before what they count: allocate no more than the bytes present can hold.
    let mut packs = Vec::with_capacity((count as usize).min(r.buf.len() / PACK_RECORD_LEN));
    for _ in 0..count {
        let id = r.id()?;
        let size = r.u64()?;
        let key_id = r.u32()?;
        let n = r.u32()?;
        let mut blobs = Vec::with_capacity((n as usize).min(r.buf.len() / BLOB_RECORD_LEN));
        for _ in 0..n {
            let bid = r.id()?;
            let kind = BlobKind::from_u8(r.take(1)?[0])
                .ok_or_else(|| Error::corrupt(name, "unknown blob kind"))?;
            let blob = PackedBlob {
                id: bid,
                kind,
                offset: r.u32()?,
                length: r.u32()?,
                raw_len: r.u32()?,
            };
            blob.check_range(name)?;
            blobs.push(blob);
        }
        packs.push(PackRecord {
            id,
            size,
            key_id,
            blobs,
        });
    }
    if !r.buf.is_empty() {
        return Err(Error::corrupt(name, "trailing bytes after index payload"));
    }
    Ok(packs)
}

/// Where a blob is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobLocation {
    /// The pack.
    pub pack: PackId,
    /// The pack's data key.
    pub key_id: DataKeyId,
    /// What the blob holds.
    pub kind: BlobKind,
    /// Offset in the pack.
    pub offset: u32,
    /// Stored length.
    pub length: u32,
    /// Plaintext length.
    pub raw_len: u32,
}

#[derive(Clone, Copy)]
struct Record {
    id: BlobId,
    kind: BlobKind,
    pack: u32,
    offset: u32,
    length: u32,
    raw_len: u32,
}

impl Record {
    fn at(b: &PackedBlob, pack: u32) -> Self {
        Record {
            id: b.id,
            kind: b.kind,
            pack,
            offset: b.offset,
            length: b.length,
            raw_len: b.raw_len,
        }
    }
}

/// A pack as the in-memory index knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackInfo {
    /// Its id.
    pub id: PackId,
    /// Its size.
    pub size: u64,
    /// Its data key.
    pub key_id: DataKeyId,
}

/// The in-memory index: a sorted vector of fixed-size records, plus a small map for blobs added
/// since it was sorted.
#[derive(Default)]
pub struct Index {
    packs: Vec<PackInfo>,
    pack_pos: HashMap<PackId, u32>,
    sorted: Vec<Record>,
    recent: HashMap<BlobId, Record>,
    /// Further copies of blobs that several packs hold (rare: concurrent backups of the same
    /// data, interrupted ones, or a writer's forgeries), tried when the first does not read.
    alternates: HashMap<BlobId, Vec<Record>>,
}

impl Index {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a pack and its blobs. A pack already known is ignored; a blob already known keeps
    /// its first location.
    pub fn add_pack(&mut self, record: &PackRecord) {
        let Some(pos) = self.register_pack(record) else {
            return;
        };
        for b in &record.blobs {
            if self.lookup_record(&b.id).is_none() {
                self.recent.insert(b.id, Record::at(b, pos));
            } else {
                self.alternates
                    .entry(b.id)
                    .or_default()
                    .push(Record::at(b, pos));
            }
        }
        if self.recent.len() > 4096 && self.recent.len() * 8 > self.sorted.len() {
            self.compact();
        }
    }

    /// Adds a pack without checking for known blobs: for loading many index files at once,
    /// straight into the sorted vector (no transient hash map). Call [`Index::compact`] after.
    pub fn add_pack_bulk(&mut self, record: &PackRecord) {
        let Some(pos) = self.register_pack(record) else {
            return;
        };
        self.sorted
            .extend(record.blobs.iter().map(|b| Record::at(b, pos)));
    }

    /// Records a pack; its position, or `None` when it is already known.
    fn register_pack(&mut self, record: &PackRecord) -> Option<u32> {
        if self.pack_pos.contains_key(&record.id) {
            return None;
        }
        let pos = self.packs.len() as u32;
        self.packs.push(PackInfo {
            id: record.id,
            size: record.size,
            key_id: record.key_id,
        });
        self.pack_pos.insert(record.id, pos);
        Some(pos)
    }

    fn location(&self, r: &Record) -> BlobLocation {
        let p = self.packs[r.pack as usize];
        BlobLocation {
            pack: p.id,
            key_id: p.key_id,
            kind: r.kind,
            offset: r.offset,
            length: r.length,
            raw_len: r.raw_len,
        }
    }

    /// Moves recent records into the sorted vector; of duplicate blobs, the first added stays
    /// first and the others are kept as alternates ([`Index::copies`]).
    pub fn compact(&mut self) {
        self.sorted.extend(self.recent.drain().map(|(_, r)| r));
        self.sorted
            .sort_by(|a, b| a.id.cmp(&b.id).then(a.pack.cmp(&b.pack)));
        let mut previous: Option<BlobId> = None;
        let alternates = &mut self.alternates;
        self.sorted.retain(|r| {
            let first = previous != Some(r.id);
            previous = Some(r.id);
            if !first {
                alternates.entry(r.id).or_default().push(*r);
            }
            first
        });
        self.sorted.shrink_to_fit();
        self.recent.shrink_to_fit();
    }

    fn lookup_record(&self, id: &BlobId) -> Option<&Record> {
        if let Ok(i) = self.sorted.binary_search_by(|r| r.id.cmp(id)) {
            return Some(&self.sorted[i]);
        }
        self.recent.get(id)
    }

    /// True when the blob is stored.
    pub fn contains(&self, id: &BlobId) -> bool {
        self.lookup_record(id).is_some()
    }

    /// Where the blob is stored.
    pub fn lookup(&self, id: &BlobId) -> Option<BlobLocation> {
        self.lookup_record(id).map(|r| self.location(r))
    }

    /// Every known copy of the blob, the one [`Index::lookup`] gives first. Readers try the
    /// others when one does not read back authentic.
    pub fn copies(&self, id: &BlobId) -> Vec<BlobLocation> {
        let first = self.lookup_record(id).map(|r| self.location(r));
        let others = self
            .alternates
            .get(id)
            .into_iter()
            .flatten()
            .map(|r| self.location(r));
        first.into_iter().chain(others).collect()
    }

    /// The position of a blob in the sorted records, for per-blob bitsets (call
    /// [`Index::compact`] first; blobs added since are not positioned).
    pub fn position(&self, id: &BlobId) -> Option<usize> {
        self.sorted.binary_search_by(|r| r.id.cmp(id)).ok()
    }

    /// Every known pack.
    pub fn packs(&self) -> &[PackInfo] {
        &self.packs
    }

    /// True when the pack is known.
    pub fn has_pack(&self, id: &PackId) -> bool {
        self.pack_pos.contains_key(id)
    }

    /// Number of blobs.
    pub fn blob_count(&self) -> usize {
        self.sorted.len() + self.recent.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_pack() -> impl Strategy<Value = PackRecord> {
        (
            any::<[u8; 32]>(),
            any::<u64>(),
            any::<u32>(),
            proptest::collection::vec(
                (
                    any::<[u8; 32]>(),
                    any::<bool>(),
                    9u32..1 << 31,
                    0u32..1 << 31,
                    any::<u32>(),
                ),
                0..20,
            ),
        )
            .prop_map(|(id, size, key_id, blobs)| PackRecord {
                id: BlobId(id),
                size,
                key_id,
                blobs: blobs
                    .into_iter()
                    .map(|(b, tree, offset, length, raw_len)| PackedBlob {
                        id: BlobId(b),
                        kind: if tree { BlobKind::Tree } else { BlobKind::Data },
                        offset,
                        length,
                        raw_len,
                    })
                    .collect(),
            })
    }

    proptest! {
        #[test]
        fn index_file_round_trip(packs in proptest::collection::vec(arb_pack(), 0..8)) {
            let bytes = encode_index(&packs);
            prop_assert_eq!(decode_index("i", &bytes).unwrap(), packs.clone());
            if !bytes.is_empty() {
                prop_assert!(decode_index("i", &bytes[..bytes.len() - 1]).is_err() || bytes.len() == 1);
            }
        }

        #[test]
        fn lookups_find_every_blob(packs in proptest::collection::vec(arb_pack(), 0..8)) {
            let mut idx = Index::new();
            for p in &packs { idx.add_pack(p); }
            let check = |idx: &Index| {
                for p in &packs {
                    for b in &p.blobs {
                        let loc = idx.lookup(&b.id).expect("present");
                        assert!(idx.has_pack(&loc.pack));
                    }
                }
            };
            check(&idx);
            idx.compact();
            check(&idx);
            prop_assert!(!idx.contains(&BlobId([0xEE; 32])) || packs.iter().any(|p| p.blobs.iter().any(|b| b.id == BlobId([0xEE; 32]))));
        }
    }
}
