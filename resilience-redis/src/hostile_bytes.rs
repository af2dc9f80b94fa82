//! Hostile bytes: the decoders of what a Redis backup holds (the key record stream of an entry)
//! and of what a Redis server hands over (an RDB file's header and checksum), fed structured
//! garbage.
//!
//! Record streams are framed as the writer frames them (lengths right) around `DUMP`-shaped
//! payloads (garbage, then an RDB version and the CRC-64 of what precedes), then damaged
//! (hostile lengths, flipped bytes, truncation); RDB files carry `REDIS`, a version, garbage, the
//! end-of-file opcode and the right CRC-64, then are damaged. Nothing may panic (debug builds:
//! an overflow panics), and every error names the entry or the file.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index as At;
use proptest::test_runner::{Config, TestRunner};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use crate::rdb::parse_header;
use crate::rdb_checksum::{crc64, ChecksumReader};
use crate::record::{KeyRecord, RecordDecoder};

fn config() -> Config {
    Config {
        cases: 1000,
        failure_persistence: None,
        ..Config::default()
    }
}

fn hostile_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        3 => any::<u32>(),
        1 => Just(0u32),
        1 => Just(u32::MAX),
        1 => Just((1u32 << 30) + 1),
        2 => 0u32..256,
    ]
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip(At, u8),
    Put(At, u32),
    Truncate(At),
    Insert(At, Vec<u8>),
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    vec(
        prop_oneof![
            4 => (any::<At>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
            2 => (any::<At>(), hostile_u32()).prop_map(|(i, v)| Mutation::Put(i, v)),
            1 => any::<At>().prop_map(Mutation::Truncate),
            1 => (any::<At>(), vec(any::<u8>(), 1..8)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        ],
        0..4,
    )
}

fn mutate(bytes: &mut Vec<u8>, mutations: &[Mutation]) {
    for m in mutations {
        let len = bytes.len();
        if len == 0 {
            continue;
        }
        match m {
            Mutation::Flip(i, x) => bytes[i.index(len)] ^= x,
            Mutation::Put(i, v) => {
                let at = i.index(len);
                for (k, b) in v.to_le_bytes().into_iter().enumerate() {
                    if let Some(slot) = bytes.get_mut(at + k) {
                        *slot = b;
                    }
                }
            }
            Mutation::Truncate(i) => bytes.truncate(i.index(len)),
            Mutation::Insert(i, b) => {
                let at = i.index(len);
                bytes.splice(at..at, b.iter().copied());
            }
        }
    }
}

/// A `DUMP` payload's shape: the serialized value, the RDB version (2 bytes), the CRC-64 of
/// both (8 bytes).
fn dump_payload(value: &[u8], version: u16) -> Vec<u8> {
    let mut p = value.to_vec();
    p.extend_from_slice(&version.to_le_bytes());
    let sum = crc64(&p);
    p.extend_from_slice(&sum.to_le_bytes());
    p
}

fn records() -> impl Strategy<Value = Vec<KeyRecord>> {
    vec(
        (
            vec(any::<u8>(), 0..20),
            prop_oneof![
                Just(None),
                Just(Some(0i64)),
                Just(Some(i64::MAX)),
                any::<Option<i64>>()
            ],
            vec(any::<u8>(), 0..60),
            prop_oneof![Just(11u16), Just(9u16), any::<u16>()],
        )
            .prop_map(|(key, expires, value, version)| KeyRecord {
                key: key.into(),
                expires_at_ms: expires.filter(|e| *e >= 0),
                payload: dump_payload(&value, version).into(),
            }),
        0..6,
    )
}

#[test]
fn hostile_record_stream() {
    let strategy = (
        records(),
        mutations(),
        prop::option::weighted(0.05, vec(any::<u8>(), 0..300)),
        1usize..50,
    );
    let result = TestRunner::new(config()).run(&strategy, |(records, m, random, piece)| {
        let entry = "redis/db0-hostile";
        let mut encoded = BytesMut::new();
        for r in &records {
            r.encode(&mut encoded);
        }
        let mut bytes = encoded.to_vec();
        mutate(&mut bytes, &m);
        if let Some(r) = random {
            bytes = r;
        }
        let mut decoder = RecordDecoder::new(entry);
        for p in bytes.chunks(piece) {
            decoder.push(p);
            loop {
                match decoder.next_record() {
                    Ok(Some(r)) => {
                        let _ = r.rdb_version();
                    }
                    Ok(None) => break,
                    Err(e) => {
                        prop_assert!(e.to_string().contains(entry), "{e}");
                        return Ok(());
                    }
                }
            }
        }
        if let Err(e) = decoder.finish() {
            prop_assert!(e.to_string().contains(entry), "{e}");
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// A reader that hands out its bytes in pieces of the given size.
struct Pieces(Vec<u8>, usize, usize);

impl AsyncRead for Pieces {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let at = self.1;
        let n = self.2.min(self.0.len() - at).min(buf.remaining());
        buf.put_slice(&self.0[at..at + n]);
        self.1 += n;
        Poll::Ready(Ok(()))
    }
}

#[test]
fn hostile_rdb_file() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let strategy = (
        prop_oneof![
            Just(*b"0011"),
            Just(*b"0004"),
            Just(*b"0005"),
            Just(*b"9999"),
            any::<[u8; 4]>()
        ],
        vec(any::<u8>(), 0..400),
        prop::bool::weighted(0.9),
        mutations(),
        prop::option::weighted(0.05, vec(any::<u8>(), 0..100)),
        1usize..64,
    );
    let result = TestRunner::new(config()).run(
        &strategy,
        |(version, content, checksum, m, random, piece)| {
            let file = "/srv/redis/hostile.rdb";
            let mut bytes = b"REDIS".to_vec();
            bytes.extend_from_slice(&version);
            bytes.extend_from_slice(&content);
            bytes.push(0xFF);
            let sum = if checksum { crc64(&bytes) } else { 0 };
            bytes.extend_from_slice(&sum.to_le_bytes());
            mutate(&mut bytes, &m);
            if let Some(r) = random {
                bytes = r;
            }
            let version = match parse_header(file, &bytes) {
                Ok((_, v)) => v,
                Err(e) => {
                    prop_assert!(e.to_string().contains(file), "{e}");
                    return Ok(());
                }
            };
            let mut reader = ChecksumReader::new(Pieces(bytes.clone(), 0, piece), file, version);
            let mut out = Vec::new();
            match rt.block_on(reader.read_to_end(&mut out)) {
                Ok(_) => prop_assert_eq!(out, bytes),
                Err(e) => prop_assert!(e.to_string().contains(file), "{e}"),
            }
            Ok(())
        },
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}
