//! Framing shared by every repository object.
//!
//! Every object ends with the BLAKE3 hash (unkeyed) of all its preceding bytes, so that damage
//! and truncation are found by anyone, without the key ([`check_checksum`]). Metadata objects
//! (indexes, snapshot manifests, catalog records) are *sealed*:
//!
//! ```text
//! "RSO1" | kind u8 | data key id u32 LE | nonce 24 | XChaCha20-Poly1305(zstd(payload)) | tag 16 | BLAKE3 32
//! ```
//!
//! with associated data = the 9-byte header followed by the object's logical name, so an object
//! cannot be moved to another name or kind.

use crate::error::{Error, Result};
use crate::format::crypto::{self, KeySet};

/// Length of the trailing checksum.
pub const CHECKSUM_LEN: usize = 32;
const MAGIC: &[u8; 4] = b"RSO1";
const HEADER_LEN: usize = 9;

/// What a sealed object holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ObjectKind {
    /// An index file.
    Index = 1,
    /// A snapshot manifest.
    Snapshot = 2,
    /// A catalog record.
    Catalog = 3,
    /// A prune plan: packs condemned, deleted by a later prune.
    PrunePlan = 4,
    /// An item of a side archive (`crate::repo::side`): a Postgres WAL file.
    SideItem = 5,
    /// A note kept beside a side archive's items (a restore point's position).
    SideNote = 6,
}

/// Appends the checksum of `body` to it.
pub fn append_checksum(body: &mut Vec<u8>) -> [u8; 32] {
    let sum = *blake3::hash(body).as_bytes();
    body.extend_from_slice(&sum);
    sum
}

/// Checks an object's trailing checksum and returns the bytes before it.
pub fn check_checksum<'a>(object: &str, bytes: &'a [u8]) -> Result<&'a [u8]> {
    if bytes.len() < CHECKSUM_LEN {
        return Err(Error::corrupt(
            object,
            format!("truncated: {} bytes", bytes.len()),
        ));
    }
    let (body, sum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
    if blake3::hash(body).as_bytes() != sum {
        return Err(Error::corrupt(
            object,
            "checksum mismatch (damaged or truncated)",
        ));
    }
    Ok(body)
}

/// Checks an object's trailing checksum as its bytes stream past, without holding the object:
/// feed every part in order, then [`StreamingChecksum::finish`].
///
/// ```
/// use resilience_core::internals::object::{append_checksum, StreamingChecksum};
/// let mut object = b"pack bytes".to_vec();
/// append_checksum(&mut object);
/// let mut check = StreamingChecksum::default();
/// for part in object.chunks(3) {
///     check.feed(part);
/// }
/// assert!(check.finish("data/ab/x").is_ok());
/// ```
#[derive(Default)]
pub struct StreamingChecksum {
    hasher: blake3::Hasher,
    /// The last bytes seen (at most [`CHECKSUM_LEN`]): the checksum, once the stream ends.
    tail: Vec<u8>,
    len: u64,
}

impl StreamingChecksum {
    /// Takes the next part of the object.
    pub fn feed(&mut self, part: &[u8]) {
        self.len += part.len() as u64;
        let total = self.tail.len() + part.len();
        if total <= CHECKSUM_LEN {
            self.tail.extend_from_slice(part);
            return;
        }
        // Everything but the last CHECKSUM_LEN bytes of tail ++ part is body.
        let body = total - CHECKSUM_LEN;
        let from_tail = body.min(self.tail.len());
        self.hasher.update(&self.tail[..from_tail]);
        let from_part = body - from_tail;
        self.hasher.update(&part[..from_part]);
        let mut tail = self.tail.split_off(from_tail);
        tail.extend_from_slice(&part[from_part..]);
        self.tail = tail;
    }

    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was fed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the bytes fed end with the checksum of those before it; the error names `object`.
    pub fn finish(&self, object: &str) -> Result<()> {
        if self.tail.len() < CHECKSUM_LEN {
            return Err(Error::corrupt(
                object,
                format!("truncated: {} bytes", self.len),
            ));
        }
        if self.hasher.finalize().as_bytes() != self.tail.as_slice() {
            return Err(Error::corrupt(
                object,
                "checksum mismatch (damaged or truncated)",
            ));
        }
        Ok(())
    }
}

/// The checksum stored at an object's end, hex (without checking it).
pub fn stored_checksum(bytes: &[u8]) -> Option<String> {
    (bytes.len() >= CHECKSUM_LEN).then(|| hex::encode(&bytes[bytes.len() - CHECKSUM_LEN..]))
}

/// Seals `payload` as an object of `kind` named `name`.
pub fn seal_object(keys: &KeySet, kind: ObjectKind, name: &str, payload: &[u8]) -> Vec<u8> {
    seal_object_parts(keys, kind, name, &[payload])
}

/// Seals the concatenation of `parts` as an object of `kind` named `name`, the same object
/// [`seal_object`] makes of it, without concatenating them: the parts are compressed straight
/// into the object's buffer and encrypted there, so sealing a payload of n bytes holds the
/// parts and the sealed object, nothing else of size n.
pub fn seal_object_parts(keys: &KeySet, kind: ObjectKind, name: &str, parts: &[&[u8]]) -> Vec<u8> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    seal_written(keys, kind, name, total as u64, |out| {
        compress_parts(parts, total, out);
    })
}

/// A sealed object of `kind` named `name` whose payload is a prefix known only once its content
/// has been read (a WAL file's header: its BLAKE3 and summary) followed by that content, read
/// once, never held whole. `write_content` is given a writer into which it writes the content,
/// exactly `len` bytes, and returns the prefix. The content is compressed as one frame (level 1
/// narrowed for WAL, by several threads when it is long and `threads` allows: the caller may be
/// waiting for it, a WAL push) and the prefix as a second frame (level 3) placed before it:
/// every reader of sealed objects reads concatenated frames as one payload, the prefix first.
/// Memory is the sealed object and zstd's window: a 16 MiB file costs its compressed size.
///
/// An error of `write_content`'s, or content of another length than `len`, is an error, and
/// nothing is sealed.
pub fn seal_object_written(
    keys: &KeySet,
    kind: ObjectKind,
    name: &str,
    len: u64,
    threads: CompressionThreads,
    write_content: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<Vec<u8>>,
) -> std::io::Result<Vec<u8>> {
    // Room reserved (never touched beyond what is written) for the prefix's frame too.
    const PREFIX_ROOM: u64 = 64 << 10;
    let mut failed = None;
    let sealed = seal_written(keys, kind, name, len + PREFIX_ROOM, |out| {
        let start = out.len();
        let written = (|| {
            let mut counted = Counted {
                inner: stream_encoder(out, len, threads)?,
                len: 0,
            };
            let prefix = write_content(&mut counted)?;
            if counted.len != len {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("{} bytes where {len} were expected", counted.len),
                ));
            }
            counted.inner.finish()?;
            Ok(prefix)
        })();
        match written {
            Ok(prefix) => {
                let mut frame = Vec::new();
                compress_parts(&[&prefix], prefix.len(), &mut frame);
                out.splice(start..start, frame);
            }
            Err(e) => failed = Some(e),
        }
    });
    match failed {
        Some(e) => Err(e),
        None => Ok(sealed),
    }
}

/// A writer that counts what passes through it.
struct Counted<W> {
    inner: W,
    len: u64,
}

impl<W: std::io::Write> std::io::Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A sealed object of `kind` named `name` whose payload, `total` bytes before compression, is
/// what `compress` appends (one zstd frame): header, compressed straight into the object's
/// buffer and encrypted there, checksum.
fn seal_written(
    keys: &KeySet,
    kind: ObjectKind,
    name: &str,
    total: u64,
    compress: impl FnOnce(&mut Vec<u8>),
) -> Vec<u8> {
    // Reserved, not touched: the pages zstd does not fill are never made resident.
    let bound = usize::try_from(total)
        .ok()
        .map(zstd::zstd_safe::compress_bound)
        .unwrap_or(0);
    let mut out = Vec::with_capacity(bound + HEADER_LEN + crypto::SEAL_OVERHEAD + CHECKSUM_LEN);
    out.extend_from_slice(MAGIC);
    out.push(kind as u8);
    out.extend_from_slice(&keys.current_key_id().to_le_bytes());
    let aad = [&out[..HEADER_LEN], name.as_bytes()].concat();
    crypto::seal_appended(&keys.current_key(), &aad, &mut out, compress);
    append_checksum(&mut out);
    out
}

/// The zstd level of objects sealed from a reader: WAL segments, pushed while Postgres waits
/// for each. Level 1 compresses twice as fast as 3; on WAL its output is within a few percent
/// of level 3's (smaller on pgbench-like segments: 2.98 against 3.38 MB of 16 MiB).
const STREAM_LEVEL: i32 = 1;
/// Level 1's window and hash table, narrowed for WAL: a 128 KiB window (not 512) and a
/// 4096-entry table (not 8192), which stay in the core's caches. On pgbench-like segments
/// 16–42% faster than level 1's own (17.8 against 21.3 ms a segment), their output within 2%
/// of its size (2.96 against 2.98 MB; 1.63 against 1.60 on pgbench's load, 1.42 against 1.40
/// on its updates). Any zstd decoder reads it: a smaller window asks less of the decoder.
const STREAM_WINDOW_LOG: u32 = 17;
/// See [`STREAM_WINDOW_LOG`].
const STREAM_HASH_LOG: u32 = 12;
/// Objects read from a source at least this long are compressed by several threads.
const MT_MIN_LEN: u64 = 2 << 20;
/// What each compression thread takes at a time: zstd's smallest job, so the threads' input
/// and output buffers stay 2–3 MiB in all (zstd's default for level 3 is 8 MiB a job); on WAL
/// segments no slower than 1 MiB jobs, and 3 MiB less of a `wal-push`'s peak.
const MT_JOB_SIZE: u32 = 512 << 10;

/// How many threads compress an object's content ([`seal_object_written`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CompressionThreads {
    /// One per core, up to 4, for an object of at least 2 MiB: a WAL segment pushed by one
    /// process while the others wait (Postgres archives one file at a time), so the cores it
    /// leaves idle are what makes the push keep up.
    #[default]
    PerCore,
    /// One: the caller seals several objects at once (the asynchronous pusher), which keeps
    /// the cores busy without the copies into and out of zstd's jobs that several threads
    /// cost (32 segments pushed 4 at a time on 2 cores: 970–992 ms against 991–1096).
    One,
}

/// A zstd encoder of one frame of exactly `total` bytes (its content size recorded) appending
/// to `out`: level 1 narrowed for WAL ([`STREAM_WINDOW_LOG`]), by `threads`.
fn stream_encoder(
    out: &mut Vec<u8>,
    total: u64,
    threads: CompressionThreads,
) -> std::io::Result<zstd::stream::write::Encoder<'static, &mut Vec<u8>>> {
    let mut encoder = zstd::stream::write::Encoder::new(out, STREAM_LEVEL)?;
    encoder.set_parameter(zstd::stream::raw::CParameter::WindowLog(STREAM_WINDOW_LOG))?;
    encoder.set_parameter(zstd::stream::raw::CParameter::HashLog(STREAM_HASH_LOG))?;
    let workers = compression_workers(total, threads);
    if workers > 1 {
        encoder.multithread(workers)?;
        encoder.set_parameter(zstd::stream::raw::CParameter::JobSize(MT_JOB_SIZE))?;
    }
    encoder.set_pledged_src_size(Some(total))?;
    encoder.include_contentsize(true)?;
    Ok(encoder)
}

/// Threads to compress `len` bytes with.
fn compression_workers(len: u64, threads: CompressionThreads) -> u32 {
    if len < MT_MIN_LEN || threads == CompressionThreads::One {
        return 1;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4)) as u32
}

/// Appends one zstd frame (level 3, its content size recorded) of the concatenated `parts`.
fn compress_parts(parts: &[&[u8]], total: usize, out: &mut Vec<u8>) {
    use std::io::Write;
    let mut encoder = zstd::stream::write::Encoder::new(out, 3).expect("zstd level 3");
    encoder
        .set_pledged_src_size(Some(total as u64))
        .expect("a size pledged before any byte");
    encoder
        .include_contentsize(true)
        .expect("a frame parameter");
    for part in parts {
        encoder
            .write_all(part)
            .expect("zstd compresses into memory");
    }
    encoder.finish().expect("zstd compresses into memory");
}

/// The data key a sealed object says it is sealed with (unchecked: [`open_object`] checks).
pub fn sealed_key_id(bytes: &[u8]) -> Option<crate::format::crypto::DataKeyId> {
    (bytes.len() >= HEADER_LEN && &bytes[..4] == MAGIC)
        .then(|| u32::from_le_bytes(bytes[5..9].try_into().expect("4 bytes")))
}

/// Checks and opens a sealed object; every failure names `name`.
pub fn open_object(keys: &KeySet, kind: ObjectKind, name: &str, bytes: &[u8]) -> Result<Vec<u8>> {
    let (body, key, aad) = check_sealed(keys, kind, name, bytes)?;
    let compressed =
        crypto::open(&key, &aad, &body[HEADER_LEN..]).ok_or_else(|| auth_failed(name))?;
    zstd::stream::decode_all(compressed.as_slice())
        .map_err(|e| Error::corrupt(name, format!("zstd: {e}")))
}

/// [`open_object`] as a stream: checks and decrypts the object where it lies in `bytes` and
/// returns a reader of its payload, decompressed as it is read, so a large payload is never
/// whole in memory. Damage the checks find is an error naming `name`; a payload that does not
/// decompress is an error of the reader's (the caller names the object).
pub fn open_object_reader<'a>(
    keys: &KeySet,
    kind: ObjectKind,
    name: &str,
    bytes: &'a mut [u8],
) -> Result<impl std::io::Read + 'a> {
    let (_, key, aad) = check_sealed(keys, kind, name, bytes)?;
    let body_len = bytes.len() - CHECKSUM_LEN;
    let compressed = crypto::open_in_place(&key, &aad, &mut bytes[HEADER_LEN..body_len])
        .ok_or_else(|| auth_failed(name))?;
    zstd::stream::read::Decoder::with_buffer(compressed)
        .map_err(|e| Error::corrupt(name, format!("zstd: {e}")))
}

/// Checks a sealed object's checksum, magic and kind: its body (without the checksum), the
/// data key it names and its associated data.
fn check_sealed<'a>(
    keys: &KeySet,
    kind: ObjectKind,
    name: &str,
    bytes: &'a [u8],
) -> Result<(&'a [u8], crypto::SecretKey, Vec<u8>)> {
    let body = check_checksum(name, bytes)?;
    if body.len() < HEADER_LEN || &body[..4] != MAGIC {
        return Err(Error::corrupt(name, "not a resilience object (bad magic)"));
    }
    if body[4] != kind as u8 {
        return Err(Error::corrupt(
            name,
            format!("expected object kind {kind:?}, found {}", body[4]),
        ));
    }
    let key_id = u32::from_le_bytes(body[5..9].try_into().expect("4 bytes"));
    let key = keys.data_key(key_id).ok_or_else(|| {
        Error::corrupt(
            name,
            format!("sealed with data key {key_id}, which this repository does not have"),
        )
    })?;
    let aad = [&body[..HEADER_LEN], name.as_bytes()].concat();
    Ok((body, key, aad))
}

fn auth_failed(name: &str) -> Error {
    Error::corrupt(
        name,
        "authentication failed (tampered, or not sealed for this name)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn streaming_check_agrees_with_the_whole_check(
            body in proptest::collection::vec(any::<u8>(), 0..300),
            cuts in proptest::collection::vec(0usize..400, 0..8),
            damage in proptest::option::of(any::<prop::sample::Index>()),
            truncate in 0usize..3,
        ) {
            let mut obj = body.clone();
            append_checksum(&mut obj);
            if let Some(i) = damage {
                let i = i.index(obj.len());
                obj[i] ^= 0x01;
            }
            obj.truncate(obj.len() - truncate);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(obj.len())).collect();
            cuts.sort();
            let mut check = StreamingChecksum::default();
            let mut at = 0;
            for c in cuts.into_iter().chain([obj.len()]) {
                check.feed(&obj[at..c]);
                at = c;
            }
            prop_assert_eq!(check.len(), obj.len() as u64);
            prop_assert_eq!(check.finish("x").is_ok(), check_checksum("x", &obj).is_ok());
        }

        #[test]
        fn sealed_object_round_trip(payload in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let ks = KeySet::generate();
            let obj = seal_object(&ks, ObjectKind::Snapshot, "snapshots/x", &payload);
            prop_assert_eq!(open_object(&ks, ObjectKind::Snapshot, "snapshots/x", &obj).unwrap(), payload);
        }

        #[test]
        fn an_object_sealed_from_parts_opens_to_their_concatenation(
            payload in proptest::collection::vec(any::<u8>(), 0..5000),
            cuts in proptest::collection::vec(0usize..5000, 0..4),
        ) {
            let ks = KeySet::generate();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(payload.len())).collect();
            cuts.sort();
            let mut parts = Vec::new();
            let mut at = 0;
            for c in cuts.into_iter().chain([payload.len()]) {
                parts.push(&payload[at..c]);
                at = c;
            }
            let obj = seal_object_parts(&ks, ObjectKind::SideItem, "wal/x/1", &parts);
            prop_assert_eq!(open_object(&ks, ObjectKind::SideItem, "wal/x/1", &obj).unwrap(), payload);
        }

        #[test]
        fn an_object_sealed_from_a_reader_opens_to_prefix_and_content(
            prefix in proptest::collection::vec(any::<u8>(), 0..100),
            content in proptest::collection::vec(any::<u8>(), 0..20_000),
        ) {
            let ks = KeySet::generate();
            let obj = seal_item(&ks, &prefix, &content[..], content.len() as u64, CompressionThreads::PerCore).unwrap();
            prop_assert_eq!(open_object(&ks, ObjectKind::SideItem, "wal/x/1", &obj).unwrap(), [prefix, content].concat());
        }

        #[test]
        fn an_object_read_as_a_stream_opens_to_its_payload(
            payload in proptest::collection::vec(any::<u8>(), 0..20_000),
            damage in proptest::option::of(any::<prop::sample::Index>()),
        ) {
            use std::io::Read;
            let ks = KeySet::generate();
            let mut obj = seal_object(&ks, ObjectKind::SideItem, "wal/x/1", &payload);
            if let Some(i) = damage {
                let i = i.index(obj.len());
                obj[i] ^= 0x10;
            }
            let whole = open_object(&ks, ObjectKind::SideItem, "wal/x/1", &obj);
            let streamed = open_object_reader(&ks, ObjectKind::SideItem, "wal/x/1", &mut obj)
                .and_then(|mut r| {
                    let mut out = Vec::new();
                    r.read_to_end(&mut out).map_err(|e| Error::corrupt("wal/x/1", e.to_string()))?;
                    Ok(out)
                });
            match (whole, streamed) {
                (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                (Err(a), Err(b)) => prop_assert_eq!(a.to_string(), b.to_string()),
                (a, b) => prop_assert!(false, "whole {:?} streamed {:?}", a.is_ok(), b.is_ok()),
            }
        }

        #[test]
        fn any_damage_is_caught_without_key(payload in proptest::collection::vec(any::<u8>(), 0..500), pos in any::<prop::sample::Index>()) {
            let ks = KeySet::generate();
            let mut obj = seal_object(&ks, ObjectKind::Index, "index", &payload);
            let i = pos.index(obj.len());
            obj[i] ^= 0x40;
            prop_assert!(check_checksum("index", &obj).is_err());
            obj[i] ^= 0x40;
            prop_assert!(check_checksum("index", &obj[..obj.len() - 1]).is_err());
        }
    }

    /// A side item named `wal/x/1` sealed from `source` ([`seal_object_read`]).
    /// `prefix` and `len` bytes of `source`, sealed in one read of it: the prefix is given once
    /// the content is written, as a WAL push gives its header.
    fn seal_item(
        ks: &KeySet,
        prefix: &[u8],
        source: impl std::io::Read,
        len: u64,
        threads: CompressionThreads,
    ) -> std::io::Result<Vec<u8>> {
        seal_object_written(ks, ObjectKind::SideItem, "wal/x/1", len, threads, |w| {
            std::io::copy(&mut source.take(len), w)?;
            Ok(prefix.to_vec())
        })
    }

    #[test]
    fn a_reader_that_ends_early_or_fails_seals_nothing() {
        let ks = KeySet::generate();
        let short = seal_item(&ks, b"h", &b"abc"[..], 4, CompressionThreads::PerCore);
        assert_eq!(short.unwrap_err().kind(), std::io::ErrorKind::UnexpectedEof);
        // More content than announced is refused too (zstd's pledged size).
        let long = seal_object_written(
            &ks,
            ObjectKind::SideItem,
            "wal/x/1",
            3,
            CompressionThreads::One,
            |w| w.write_all(b"abcd").map(|()| b"h".to_vec()),
        );
        assert!(long.is_err());
        struct Failing;
        impl std::io::Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk gone"))
            }
        }
        let failed = seal_item(&ks, b"h", Failing, 4, CompressionThreads::One);
        assert!(failed.unwrap_err().to_string().contains("disk gone"));
        // A longer source is read only as far as `len`.
        let obj = seal_item(&ks, b"h", &b"abcdef"[..], 3, CompressionThreads::PerCore);
        let opened = open_object(&ks, ObjectKind::SideItem, "wal/x/1", &obj.unwrap()).unwrap();
        assert_eq!(opened, b"habc");
    }

    #[test]
    fn a_long_object_opens_to_its_payload_compressed_by_one_thread_or_several() {
        let ks = KeySet::generate();
        // Longer than MT_MIN_LEN, in many of zstd's jobs; half compressible, half not.
        let content: Vec<u8> = (0..5u32 << 20)
            .map(|i| match i % 4096 < 2048 {
                true => (i / 4096) as u8,
                false => (i.wrapping_mul(2_654_435_761) >> 13) as u8,
            })
            .collect();
        for threads in [CompressionThreads::One, CompressionThreads::PerCore] {
            let obj = seal_item(&ks, b"head", &content[..], content.len() as u64, threads).unwrap();
            let opened = open_object(&ks, ObjectKind::SideItem, "wal/x/1", &obj).unwrap();
            assert_eq!(opened.len(), content.len() + 4, "{threads:?}");
            assert!(
                opened[..4] == *b"head" && opened[4..] == content[..],
                "{threads:?}"
            );
            assert!(obj.len() < content.len() * 3 / 4, "{threads:?}: compressed");
        }
    }

    #[test]
    fn renamed_or_rekinded_object_is_refused() {
        let ks = KeySet::generate();
        let obj = seal_object(&ks, ObjectKind::Catalog, "catalog/a/1", b"{}");
        let err = open_object(&ks, ObjectKind::Catalog, "catalog/b/1", &obj).unwrap_err();
        assert!(err.to_string().contains("catalog/b/1"));
        assert!(open_object(&ks, ObjectKind::Snapshot, "catalog/a/1", &obj).is_err());
        assert!(open_object(
            &KeySet::generate(),
            ObjectKind::Catalog,
            "catalog/a/1",
            &obj
        )
        .is_err());
    }
}
