//! Packs: many blobs in one object, so a terabyte is thousands of objects, not millions.
//!
//! ```text
//! "RSP1" | version u8 = 1 | data key id u32 LE           header, 9 bytes
//! blob | blob | …                                         each nonce || sealed(flag || body) || tag
//! sealed blob table | table length u32 LE                 nonce || seal(records) || tag
//! BLAKE3 of everything before                             32 bytes = the pack id
//! ```
//!
//! A table record is `blob id 32 | kind u8 | offset u32 | length u32 | raw length u32` (45 bytes),
//! little-endian. The table is sealed with associated data `"RSP1 table"`. The pack's object name
//! is `data/<first two hex digits of its id>/<id>`.

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::format::blob::{BlobId, BlobKind};
use crate::format::crypto::{self, DataKeyId, KeySet};
use crate::format::object::{self, CHECKSUM_LEN};

const MAGIC: &[u8; 4] = b"RSP1";
const VERSION: u8 = 1;
/// Length of a pack's header.
pub const HEADER_LEN: usize = 9;
const RECORD_LEN: usize = 45;
const TABLE_AAD: &[u8] = b"RSP1 table";
/// Bytes at a pack's end that locate its table: length u32 and checksum.
pub const TAIL_LEN: usize = 4 + CHECKSUM_LEN;

/// A pack's id: the BLAKE3 of its bytes before the checksum.
pub type PackId = BlobId;

/// The sink key of a pack.
pub fn pack_key(id: &PackId) -> String {
    let h = id.to_hex();
    format!("data/{}/{}", &h[..2], h)
}

/// Parses a pack id from its sink key.
pub fn pack_id_from_key(key: &str) -> Option<PackId> {
    key.strip_prefix("data/")?.rsplit('/').next()?.parse().ok()
}

/// Where one blob sits in a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackedBlob {
    /// The blob's id.
    pub id: BlobId,
    /// What it holds.
    pub kind: BlobKind,
    /// Byte offset in the pack.
    pub offset: u32,
    /// Stored length (sealed).
    pub length: u32,
    /// Plaintext length.
    pub raw_len: u32,
}

impl PackedBlob {
    /// Where the blob ends in its pack (`offset + length`), as a `u64` so it never overflows.
    pub fn end(&self) -> u64 {
        u64::from(self.offset) + u64::from(self.length)
    }

    /// Refuses a record that no pack can hold: one that starts inside the pack's header or
    /// ends past the 4 GiB that `u32` offsets address (a writer with the key forged it).
    pub fn check_range(&self, object: &str) -> Result<()> {
        if (self.offset as usize) < HEADER_LEN || self.end() > u64::from(u32::MAX) {
            return Err(Error::corrupt(
                object,
                format!(
                    "blob {} at offset {} length {} is outside any pack",
                    self.id, self.offset, self.length
                ),
            ));
        }
        Ok(())
    }
}

/// Builds one pack in memory.
pub struct PackBuilder {
    buf: Vec<u8>,
    blobs: Vec<PackedBlob>,
    key_id: DataKeyId,
}

impl PackBuilder {
    /// An empty pack sealed with data key `key_id`, with room for `capacity` bytes.
    pub fn new(key_id: DataKeyId, capacity: usize) -> Self {
        Self::in_buffer(key_id, Vec::with_capacity(capacity))
    }

    /// An empty pack built in `buf` (emptied first): a writer of many packs hands the buffer
    /// of an uploaded pack on to the next instead of allocating one per pack.
    pub fn in_buffer(key_id: DataKeyId, mut buf: Vec<u8>) -> Self {
        buf.clear();
        buf.extend_from_slice(MAGIC);
        buf.push(VERSION);
        buf.extend_from_slice(&key_id.to_le_bytes());
        PackBuilder {
            buf,
            blobs: Vec::new(),
            key_id,
        }
    }

    /// Appends a stored blob.
    pub fn add(&mut self, id: BlobId, kind: BlobKind, raw_len: u32, stored: &[u8]) {
        self.blobs.push(PackedBlob {
            id,
            kind,
            offset: self.buf.len() as u32,
            length: stored.len() as u32,
            raw_len,
        });
        self.buf.extend_from_slice(stored);
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True when no blob was added.
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Seals the table and checksum: returns the pack's id, bytes and blob table.
    pub fn finish(mut self, keys: &KeySet) -> (PackId, Bytes, Vec<PackedBlob>) {
        let mut table = Vec::with_capacity(self.blobs.len() * RECORD_LEN);
        for b in &self.blobs {
            table.extend_from_slice(&b.id.0);
            table.push(b.kind as u8);
            table.extend_from_slice(&b.offset.to_le_bytes());
            table.extend_from_slice(&b.length.to_le_bytes());
            table.extend_from_slice(&b.raw_len.to_le_bytes());
        }
        let key = keys
            .data_key(self.key_id)
            .expect("pack key id comes from the key set");
        // Exactly the room the table and the tail take: no doubling of a full pack's buffer.
        self.buf
            .reserve_exact(table.len() + crypto::SEAL_OVERHEAD + TAIL_LEN);
        let before = self.buf.len();
        crypto::seal_into(&key, TABLE_AAD, &table, &mut self.buf);
        let table_len = (self.buf.len() - before) as u32;
        self.buf.extend_from_slice(&table_len.to_le_bytes());
        let sum = object::append_checksum(&mut self.buf);
        (BlobId(sum), Bytes::from(self.buf), self.blobs)
    }
}

/// Reads a pack's data key id from its header.
pub fn parse_header(name: &str, header: &[u8]) -> Result<DataKeyId> {
    if header.len() < HEADER_LEN || &header[..4] != MAGIC {
        return Err(Error::corrupt(name, "not a pack (bad magic)"));
    }
    if header[4] != VERSION {
        return Err(Error::UnsupportedFormat {
            object: name.to_owned(),
            found: header[4] as u32,
            supported: VERSION as u32,
        });
    }
    Ok(u32::from_le_bytes(
        header[5..9].try_into().expect("4 bytes"),
    ))
}

/// From a pack's last [`TAIL_LEN`] bytes, the length of its sealed table.
pub fn table_len_from_tail(name: &str, tail: &[u8], pack_size: u64) -> Result<u32> {
    if tail.len() != TAIL_LEN {
        return Err(Error::corrupt(name, "truncated pack tail"));
    }
    let len = u32::from_le_bytes(tail[..4].try_into().expect("4 bytes"));
    if (len as u64) + (TAIL_LEN + HEADER_LEN) as u64 > pack_size {
        return Err(Error::corrupt(
            name,
            format!("table length {len} exceeds pack size {pack_size}"),
        ));
    }
    Ok(len)
}

/// Opens a pack's sealed table.
pub fn parse_table(
    keys: &KeySet,
    key_id: DataKeyId,
    name: &str,
    sealed: &[u8],
) -> Result<Vec<PackedBlob>> {
    let key = keys
        .data_key(key_id)
        .ok_or_else(|| Error::corrupt(name, format!("sealed with unknown data key {key_id}")))?;
    let table = crypto::open(&key, TABLE_AAD, sealed)
        .ok_or_else(|| Error::corrupt(name, "blob table fails authentication"))?;
    if !table.len().is_multiple_of(RECORD_LEN) {
        return Err(Error::corrupt(name, "blob table has a partial record"));
    }
    table
        .chunks_exact(RECORD_LEN)
        .map(|r| {
            let blob = PackedBlob {
                id: BlobId(r[..32].try_into().expect("32 bytes")),
                kind: BlobKind::from_u8(r[32])
                    .ok_or_else(|| Error::corrupt(name, "unknown blob kind"))?,
                offset: u32::from_le_bytes(r[33..37].try_into().expect("4")),
                length: u32::from_le_bytes(r[37..41].try_into().expect("4")),
                raw_len: u32::from_le_bytes(r[41..45].try_into().expect("4")),
            };
            blob.check_range(name)?;
            Ok(blob)
        })
        .collect()
}

/// Parses a whole pack held in memory: checks its checksum, header and table.
pub fn parse_pack(keys: &KeySet, name: &str, bytes: &[u8]) -> Result<(DataKeyId, Vec<PackedBlob>)> {
    object::check_checksum(name, bytes)?;
    if bytes.len() < HEADER_LEN + TAIL_LEN {
        return Err(Error::corrupt(
            name,
            format!("truncated: {} bytes", bytes.len()),
        ));
    }
    let key_id = parse_header(name, bytes)?;
    let size = bytes.len() as u64;
    let tail = &bytes[bytes.len() - TAIL_LEN..];
    let len = table_len_from_tail(name, tail, size)? as usize;
    let end = bytes.len() - TAIL_LEN;
    let table_start = end - len;
    let blobs = parse_table(keys, key_id, name, &bytes[table_start..end])?;
    if let Some(b) = blobs.iter().find(|b| b.end() > table_start as u64) {
        return Err(Error::corrupt(
            name,
            format!(
                "blob {} at offset {} length {} runs past the blobs (into the table at {table_start})",
                b.id, b.offset, b.length
            ),
        ));
    }
    Ok((key_id, blobs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::blob::encode_blob;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn pack_round_trip(blobs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..2000), 0..20)) {
            let ks = KeySet::generate();
            let mut pb = PackBuilder::new(ks.current_key_id(), 1024);
            for b in &blobs {
                let id = ks.blob_id(b);
                let mut stored = Vec::new();
                encode_blob(&ks.current_key(), BlobKind::Data, &id, b, 3, &mut stored);
                pb.add(id, BlobKind::Data, b.len() as u32, &stored);
            }
            let (id, bytes, table) = pb.finish(&ks);
            prop_assert_eq!(pack_id_from_key(&pack_key(&id)), Some(id));
            let (key_id, parsed) = parse_pack(&ks, "p", &bytes).unwrap();
            prop_assert_eq!(key_id, ks.current_key_id());
            prop_assert_eq!(&parsed, &table);
            for (b, rec) in blobs.iter().zip(&parsed) {
                let stored = &bytes[rec.offset as usize..rec.end() as usize];
                let plain = crate::format::blob::decode_blob(&ks, key_id, rec.kind, &rec.id, rec.raw_len, stored, "p").unwrap();
                prop_assert_eq!(plain.as_ref(), b.as_slice());
            }
        }
    }

    #[test]
    fn truncated_pack_is_refused() {
        let ks = KeySet::generate();
        let mut pb = PackBuilder::new(1, 0);
        pb.add(
            ks.blob_id(b"x"),
            BlobKind::Data,
            1,
            b"0123456789012345678901234567890123456789x",
        );
        let (_, bytes, _) = pb.finish(&ks);
        assert!(parse_pack(&ks, "data/p", &bytes[..bytes.len() - 5]).is_err());
        assert!(parse_pack(&ks, "data/p", &bytes[5..]).is_err());
    }
}
