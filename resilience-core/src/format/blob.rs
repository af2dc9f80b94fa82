//! Blobs: content-addressed pieces of data, compressed then sealed.
//!
//! A blob's id is the keyed BLAKE3 of its plaintext ([`crate::format::crypto::KeySet::blob_id`]). Stored,
//! a blob is `nonce || seal(flag || body) || tag` where `flag` says whether `body` is zstd or raw,
//! and the associated data is `kind || id`, so a blob cannot be swapped for another.

use std::sync::Mutex;

use bytes::Bytes;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::format::crypto::{self, SecretKey};

/// A blob's id: keyed BLAKE3 of its plaintext.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobId(pub [u8; 32]);

impl BlobId {
    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobId({})", &self.to_hex()[..16])
    }
}

impl FromStr for BlobId {
    type Err = hex::FromHexError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(s, &mut b)?;
        Ok(BlobId(b))
    }
}

impl Serialize for BlobId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_hex())
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for BlobId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            let v = crate::source::entry::serde_bytes_compat::deserialize(d)?;
            let arr: [u8; 32] = v
                .try_into()
                .map_err(|_| serde::de::Error::custom("blob id must be 32 bytes"))?;
            Ok(BlobId(arr))
        }
    }
}

/// What a blob holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum BlobKind {
    /// Entry content.
    Data = 0,
    /// A piece of a snapshot's tree (the serialized entry list).
    Tree = 1,
}

impl BlobKind {
    /// Parses the stored byte.
    pub fn from_u8(b: u8) -> Option<Self> {
        match b {
            0 => Some(BlobKind::Data),
            1 => Some(BlobKind::Tree),
            _ => None,
        }
    }
}

/// The longest plaintext a blob holds: every blob is a chunk, and the chunker's largest
/// maximum is FastCDC's (16 MiB). A longer length read from a pack table or an index is refused
/// before anything is allocated for it.
pub const MAX_BLOB_LEN: u32 = fastcdc::v2020::MAXIMUM_MAX;

const FLAG_RAW: u8 = 0;
const FLAG_ZSTD: u8 = 1;

/// Compression contexts shared by the threads that seal blobs, each with its level: as many as
/// compressions ran at once (a level-3 context holds about 1 MiB), not one for every thread that
/// ever compressed (the blocking pool runs dozens).
static COMPRESSORS: Mutex<Vec<(i32, zstd::bulk::Compressor<'static>)>> = Mutex::new(Vec::new());

/// Contexts kept for reuse, at most.
const KEPT_COMPRESSORS: usize = 8;

/// Runs `f` with a compression context of `level` from the shared pool.
fn with_compressor<R>(level: i32, f: impl FnOnce(&mut zstd::bulk::Compressor<'static>) -> R) -> R {
    let pooled = {
        let mut pool = COMPRESSORS.lock().unwrap_or_else(|p| p.into_inner());
        pool.iter()
            .rposition(|(l, _)| *l == level)
            .map(|i| pool.swap_remove(i).1)
    };
    let mut compressor =
        pooled.unwrap_or_else(|| zstd::bulk::Compressor::new(level).expect("zstd level is valid"));
    let result = f(&mut compressor);
    let mut pool = COMPRESSORS.lock().unwrap_or_else(|p| p.into_inner());
    if pool.len() < KEPT_COMPRESSORS {
        pool.push((level, compressor));
    }
    result
}

/// Decompression contexts shared by the threads that open blobs: a restore opens one blob
/// after another on the blocking pool, and a new context for each cost its allocation and
/// set-up every time.
static DECOMPRESSORS: Mutex<Vec<zstd::bulk::Decompressor<'static>>> = Mutex::new(Vec::new());

/// Runs `f` with a decompression context from the shared pool.
fn with_decompressor<R>(f: impl FnOnce(&mut zstd::bulk::Decompressor<'static>) -> R) -> R {
    let pooled = DECOMPRESSORS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop();
    let mut decompressor = match pooled {
        Some(d) => d,
        None => zstd::bulk::Decompressor::new().expect("a zstd decompression context"),
    };
    let result = f(&mut decompressor);
    let mut pool = DECOMPRESSORS.lock().unwrap_or_else(|p| p.into_inner());
    if pool.len() < KEPT_COMPRESSORS {
        pool.push(decompressor);
    }
    result
}

fn blob_aad(kind: BlobKind, id: &BlobId) -> [u8; 33] {
    let mut aad = [0u8; 33];
    aad[0] = kind as u8;
    aad[1..].copy_from_slice(&id.0);
    aad
}

/// Compresses (when it pays) and seals a blob's plaintext, appending to `out`: compressed
/// straight into `out` and encrypted there, with no buffer of its own.
pub fn encode_blob(
    key: &SecretKey,
    kind: BlobKind,
    id: &BlobId,
    plaintext: &[u8],
    level: i32,
    out: &mut Vec<u8>,
) {
    // Room for the worst case, reserved once (pages compression does not reach stay untouched).
    let bound = zstd::zstd_safe::compress_bound(plaintext.len()).max(plaintext.len());
    out.reserve(crypto::SEAL_OVERHEAD + 1 + bound);
    crypto::seal_appended(key, &blob_aad(kind, id), out, |out| {
        let start = out.len();
        out.push(FLAG_ZSTD);
        let compressed = looks_compressible(plaintext, level)
            && with_compressor(level, |c| {
                let mut tail = std::io::Cursor::new(&mut *out);
                tail.set_position(start as u64 + 1);
                match c.compress_to_buffer(plaintext, &mut tail) {
                    Ok(n) => n < plaintext.len(),
                    Err(_) => false,
                }
            });
        if !compressed {
            out.truncate(start);
            out.push(FLAG_RAW);
            out.extend_from_slice(plaintext);
        }
    });
}

/// Whether compressing is worth trying: large blobs are probed with a 64 KiB sample first, so
/// incompressible data (media, encrypted or already compressed files) costs no full zstd pass.
fn looks_compressible(plaintext: &[u8], level: i32) -> bool {
    const SAMPLE: usize = 64 * 1024;
    if plaintext.len() < 4 * SAMPLE {
        return true;
    }
    let mid = plaintext.len() / 2;
    let sample = &plaintext[mid - SAMPLE / 2..mid + SAMPLE / 2];
    match with_compressor(level.min(1), |c| c.compress(sample)) {
        Ok(c) => c.len() * 100 < sample.len() * 97,
        Err(_) => true,
    }
}

/// Opens, decompresses and re-hashes a stored blob; every failure names `object`.
pub fn decode_blob(
    keys: &crate::format::crypto::KeySet,
    key_id: crate::format::crypto::DataKeyId,
    kind: BlobKind,
    id: &BlobId,
    raw_len: u32,
    sealed: &[u8],
    object: &str,
) -> Result<Bytes> {
    if raw_len > MAX_BLOB_LEN {
        return Err(Error::corrupt(
            format!("{object} (blob {id})"),
            format!("plaintext length {raw_len} exceeds the largest chunk ({MAX_BLOB_LEN} bytes)"),
        ));
    }
    let key = keys.data_key(key_id).ok_or_else(|| {
        Error::corrupt(
            object,
            format!("sealed with data key {key_id}, which this repository does not have"),
        )
    })?;
    let body = crypto::open(&key, &blob_aad(kind, id), sealed).ok_or_else(|| {
        Error::corrupt(
            format!("{object} (blob {id})"),
            "authentication failed: the blob is damaged or truncated",
        )
    })?;
    let plaintext = match body.first() {
        // Raw: the plaintext is the body after its flag, without a copy.
        Some(&FLAG_RAW) => Bytes::from(body).slice(1..),
        Some(&FLAG_ZSTD) => Bytes::from(
            with_decompressor(|d| d.decompress(&body[1..], raw_len as usize)).map_err(|e| {
                Error::corrupt(format!("{object} (blob {id})"), format!("zstd: {e}"))
            })?,
        ),
        _ => {
            return Err(Error::corrupt(
                format!("{object} (blob {id})"),
                "unknown compression flag",
            ))
        }
    };
    if plaintext.len() != raw_len as usize || keys.blob_id(&plaintext) != *id {
        return Err(Error::corrupt(
            format!("{object} (blob {id})"),
            "content does not hash to its id",
        ));
    }
    Ok(plaintext)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::crypto::KeySet;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn blob_round_trip(data in proptest::collection::vec(any::<u8>(), 0..20000), zeros in 0usize..20000, level in 1i32..6) {
            let ks = KeySet::generate();
            let mut plain = data;
            plain.extend(std::iter::repeat_n(0u8, zeros));
            let id = ks.blob_id(&plain);
            let mut out = Vec::new();
            encode_blob(&ks.current_key(), BlobKind::Data, &id, &plain, level, &mut out);
            let back = decode_blob(&ks, ks.current_key_id(), BlobKind::Data, &id, plain.len() as u32, &out, "obj").unwrap();
            prop_assert_eq!(back.as_ref(), plain.as_slice());
        }

        /// A blob is appended after what `out` holds (a pack's earlier blobs), which stays.
        #[test]
        fn blob_is_appended_after_earlier_bytes(prefix in proptest::collection::vec(any::<u8>(), 0..300), text in "[a-c]{0,3000}", level in 1i32..4) {
            let ks = KeySet::generate();
            let id = ks.blob_id(text.as_bytes());
            let mut out = prefix.clone();
            encode_blob(&ks.current_key(), BlobKind::Tree, &id, text.as_bytes(), level, &mut out);
            prop_assert_eq!(&out[..prefix.len()], prefix.as_slice());
            let back = decode_blob(&ks, ks.current_key_id(), BlobKind::Tree, &id, text.len() as u32, &out[prefix.len()..], "obj").unwrap();
            prop_assert_eq!(back.as_ref(), text.as_bytes());
        }
    }

    #[test]
    fn swapped_or_damaged_blob_is_named() {
        let ks = KeySet::generate();
        let a = b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".to_vec();
        let id = ks.blob_id(&a);
        let mut out = Vec::new();
        encode_blob(&ks.current_key(), BlobKind::Data, &id, &a, 3, &mut out);
        let other = ks.blob_id(b"b");
        let err = decode_blob(&ks, 1, BlobKind::Data, &other, 40, &out, "data/x").unwrap_err();
        assert!(err.to_string().contains("data/x"), "{err}");
        let err = decode_blob(&ks, 1, BlobKind::Tree, &id, 40, &out, "data/x").unwrap_err();
        assert!(err.to_string().contains("authentication"), "{err}");
        out[30] ^= 1;
        assert!(decode_blob(&ks, 1, BlobKind::Data, &id, 40, &out, "data/x").is_err());
        assert!(decode_blob(&ks, 9, BlobKind::Data, &id, 40, &out, "data/x").is_err());
    }

    #[test]
    fn incompressible_data_is_stored_raw() {
        let ks = KeySet::generate();
        let mut data = vec![0u8; 4096];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut data);
        let id = ks.blob_id(&data);
        let mut out = Vec::new();
        encode_blob(&ks.current_key(), BlobKind::Data, &id, &data, 3, &mut out);
        assert_eq!(out.len(), data.len() + 1 + crypto::SEAL_OVERHEAD);
    }
}
