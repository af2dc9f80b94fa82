//! Hostile bytes: every decoder of what the store holds, fed structured garbage.
//!
//! Each generator builds what a reader expects around its garbage (magic, lengths, BLAKE3
//! checksums, and where the object is sealed a valid seal made with the test repository's keys),
//! so that the garbage reaches the decoder inside instead of being turned away at the door; then
//! mutates (flipped bytes, hostile counts and lengths, truncation, insertion) at the level of
//! the payload, of its JSON values, or of the framing; and some cases are plain random bytes.
//! Every decoder must answer without a panic (these run in debug builds, where an overflow
//! panics) and every error must name the object it was given.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, LazyLock};

use chrono::{DateTime, Utc};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index as At;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};

use crate::catalog::{BackupKind, BackupRecord, BackupStatus, RepoCatalog, Tier};
use crate::error::Error;
use crate::format::blob::{decode_blob, encode_blob, BlobId, BlobKind};
use crate::format::crypto::{self, KeySet};
use crate::format::index::{decode_index, encode_index, PackRecord};
use crate::format::object::{append_checksum, seal_object, ObjectKind};
use crate::format::pack::{self, PackedBlob};
use crate::format::snapshot::{encode_record, BlobRef, Content, Manifest, TreeDecoder, TreeRecord};
use crate::keys::ring::{self, KeyRing, KeySetObject};
use crate::keys::{KdfParams, KeyFileProvider, KeyProvider, PassphraseProvider};
use crate::repo::{IndexFile, InitOptions, RepoConfig, Repository};
use crate::sink::{MemorySink, PutMode, Sink};
use crate::source::entry::{EntryKind, EntryMeta};
use crate::source::SourceDescriptor;

/// Cases per decoder.
const CASES: u32 = 1000;

fn run<S>(strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: Debug,
{
    LazyLock::force(&REPO);
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{e}");
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The test repository: an in-memory store and its keys.
static REPO: LazyLock<Repository> = LazyLock::new(|| {
    rt().block_on(async {
        Repository::init(
            Arc::new(MemorySink::new()),
            &KeyFileProvider::from_key([1; 32]),
            InitOptions::default(),
        )
        .await
        .expect("init")
    })
});

/// The test repository's keys, read once.
static KEYS: LazyLock<Arc<KeySet>> = LazyLock::new(|| REPO.keys());

fn keys() -> &'static KeySet {
    &KEYS
}

/// `Ok`, or an error that names `name`.
fn named<T>(result: &crate::Result<T>, names: &[&str]) -> Result<(), TestCaseError> {
    if let Err(e) = result {
        let text = e.to_string();
        prop_assert!(
            names.iter().any(|n| text.contains(n)),
            "error does not name {names:?}: {text}"
        );
    }
    Ok(())
}

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_750_000_000, 0).expect("time")
}

// Values read as counts and lengths: the edges more often than chance would pick them.
fn hostile_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        3 => any::<u32>(),
        1 => Just(0u32),
        1 => Just(u32::MAX),
        1 => Just(u32::MAX - 8),
        1 => Just(1u32 << 31),
        2 => 0u32..256,
    ]
}

/// One change to bytes.
#[derive(Clone, Debug)]
enum Mutation {
    Flip(At, u8),
    /// A hostile little-endian u32 written over four bytes (a count or a length).
    Put(At, u32),
    Truncate(At),
    Insert(At, Vec<u8>),
    Remove(At, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<At>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
        2 => (any::<At>(), hostile_u32()).prop_map(|(i, v)| Mutation::Put(i, v)),
        1 => any::<At>().prop_map(Mutation::Truncate),
        1 => (any::<At>(), vec(any::<u8>(), 1..8)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<At>(), 1usize..16).prop_map(|(i, n)| Mutation::Remove(i, n)),
    ]
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    vec(mutation(), 0..4)
}

fn mutate(bytes: &mut Vec<u8>, mutations: &[Mutation]) {
    for m in mutations {
        if bytes.is_empty() {
            if let Mutation::Insert(_, b) = m {
                bytes.extend_from_slice(b);
            }
            continue;
        }
        let len = bytes.len();
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
            Mutation::Remove(i, n) => {
                let at = i.index(len);
                bytes.drain(at..(at + n).min(len));
            }
        }
    }
}

/// A JSON value a field should not hold.
fn hostile_json() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(u64::MAX)),
        Just(json!(4_294_967_296u64)),
        Just(json!(u32::MAX)),
        Just(json!(-1)),
        Just(json!(i64::MIN)),
        Just(json!(1e300)),
        Just(json!(0)),
        Just(json!(null)),
        Just(json!(true)),
        Just(json!("")),
        "\\PC{0,12}".prop_map(Value::String),
        "[0-9a-f]{0,80}".prop_map(Value::String),
        Just(json!([])),
        Just(json!({})),
        Just(json!([1, 2, 3])),
        // Nesting past serde_json's recursion limit.
        Just(deep(200)),
        (0u32..64).prop_map(|n| json!(n)),
    ]
}

fn deep(depth: usize) -> Value {
    (0..depth).fold(json!(0), |v, _| Value::Array(vec![v]))
}

/// One change to a JSON document.
#[derive(Clone, Debug)]
enum JsonOp {
    Replace(At, Value),
    Remove(At),
    Add(String, Value),
}

fn json_ops() -> impl Strategy<Value = Vec<JsonOp>> {
    vec(
        prop_oneof![
            4 => (any::<At>(), hostile_json()).prop_map(|(i, v)| JsonOp::Replace(i, v)),
            1 => any::<At>().prop_map(JsonOp::Remove),
            1 => ("[a-z_]{1,12}", hostile_json()).prop_map(|(k, v)| JsonOp::Add(k, v)),
        ],
        0..4,
    )
}

/// JSON pointers of every node below the root.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                pointers(child, p, out);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate().take(8) {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                pointers(child, p, out);
            }
        }
        _ => {}
    }
}

fn apply_json(v: &mut Value, ops: &[JsonOp]) {
    for op in ops {
        let mut all = Vec::new();
        pointers(v, String::new(), &mut all);
        match op {
            JsonOp::Replace(i, new) if !all.is_empty() => {
                if let Some(slot) = v.pointer_mut(&all[i.index(all.len())]) {
                    *slot = new.clone();
                }
            }
            JsonOp::Remove(i) if !all.is_empty() => {
                let p = &all[i.index(all.len())];
                let (parent, last) = p.rsplit_once('/').expect("a pointer has a slash");
                match v.pointer_mut(parent) {
                    Some(Value::Object(m)) => {
                        m.remove(&last.replace("~1", "/").replace("~0", "~"));
                    }
                    Some(Value::Array(a)) => {
                        if let Ok(i) = last.parse::<usize>() {
                            if i < a.len() {
                                a.remove(i);
                            }
                        }
                    }
                    _ => {}
                }
            }
            JsonOp::Add(k, new) => {
                if let Value::Object(m) = v {
                    m.insert(k.clone(), new.clone());
                }
            }
            _ => {}
        }
    }
}

/// A JSON document made hostile: value-level changes, then byte-level ones.
#[derive(Clone, Debug)]
struct JsonDamage {
    ops: Vec<JsonOp>,
    bytes: Vec<Mutation>,
    /// Random bytes instead of the document.
    random: Option<Vec<u8>>,
}

fn json_damage() -> impl Strategy<Value = JsonDamage> {
    (
        json_ops(),
        mutations(),
        prop::option::weighted(0.05, vec(any::<u8>(), 0..300)),
    )
        .prop_map(|(ops, bytes, random)| JsonDamage { ops, bytes, random })
}

/// As [`json_damage`], but often none: for an object whose decoding is not the point (it
/// carries the garbage to the decoder that is).
fn light_json_damage(none_weight: u32) -> impl Strategy<Value = JsonDamage> {
    prop_oneof![
        none_weight => Just(JsonDamage {
            ops: vec![],
            bytes: vec![],
            random: None,
        }),
        1 => json_damage(),
    ]
}

impl JsonDamage {
    fn apply<T: serde::Serialize>(&self, value: &T) -> Vec<u8> {
        if let Some(r) = &self.random {
            return r.clone();
        }
        let mut v = serde_json::to_value(value).expect("serializes");
        apply_json(&mut v, &self.ops);
        let mut bytes = serde_json::to_vec_pretty(&v).expect("serializes");
        mutate(&mut bytes, &self.bytes);
        bytes
    }
}

/// How a sealed object's payload is wrapped: mostly correctly, so the payload reaches its
/// decoder; sometimes with garbage where the zstd frame should be, or damage to the object.
#[derive(Clone, Debug)]
enum Wrap {
    /// Compressed and sealed as the writer does.
    Sealed,
    /// The zstd frame of the payload damaged, then sealed.
    DamagedZstd(Vec<Mutation>),
    /// Random bytes sealed where the zstd frame should be.
    NotZstd(Vec<u8>),
    /// Sealed as the writer does, then the object damaged (its checksum recomputed or not).
    Outer(Vec<Mutation>, bool),
    /// Random bytes for the whole object.
    Random(Vec<u8>),
}

fn wrap() -> impl Strategy<Value = Wrap> {
    prop_oneof![
        12 => Just(Wrap::Sealed),
        2 => vec(mutation(), 1..4).prop_map(Wrap::DamagedZstd),
        1 => vec(any::<u8>(), 0..200).prop_map(Wrap::NotZstd),
        2 => (vec(mutation(), 1..3), any::<bool>()).prop_map(|(m, c)| Wrap::Outer(m, c)),
        1 => vec(any::<u8>(), 0..200).prop_map(Wrap::Random),
    ]
}

/// Seals `inner` (the bytes that should be a zstd frame) as an object of `kind` named `name`,
/// with the framing of `format::object`: `"RSO1" | kind | key id | seal | BLAKE3`.
fn seal_raw(kind: ObjectKind, name: &str, inner: &[u8]) -> Vec<u8> {
    let ks = keys();
    let mut out = b"RSO1".to_vec();
    out.push(kind as u8);
    out.extend_from_slice(&ks.current_key_id().to_le_bytes());
    let aad = [&out[..9], name.as_bytes()].concat();
    crypto::seal_into(&ks.current_key(), &aad, inner, &mut out);
    append_checksum(&mut out);
    out
}

impl Wrap {
    fn apply(&self, kind: ObjectKind, name: &str, payload: &[u8]) -> Vec<u8> {
        match self {
            Wrap::Sealed => seal_object(keys(), kind, name, payload),
            Wrap::DamagedZstd(m) => {
                let mut frame = zstd::bulk::compress(payload, 3).expect("compresses");
                mutate(&mut frame, m);
                seal_raw(kind, name, &frame)
            }
            Wrap::NotZstd(r) => seal_raw(kind, name, r),
            Wrap::Outer(m, checksum) => {
                let mut obj = seal_object(keys(), kind, name, payload);
                if *checksum {
                    obj.truncate(obj.len() - 32);
                    mutate(&mut obj, m);
                    append_checksum(&mut obj);
                } else {
                    mutate(&mut obj, m);
                }
                obj
            }
            Wrap::Random(r) => r.clone(),
        }
    }
}

async fn put(key: &str, bytes: Vec<u8>) {
    REPO.sink
        .put(key, bytes.into(), PutMode::Overwrite)
        .await
        .expect("memory put");
}

// ---------------------------------------------------------------------------------------------
// Packs: header, tail, sealed table, and the blobs the table points at.

#[derive(Clone, Debug)]
enum TableRecords {
    /// The records of the blobs actually written.
    Real,
    /// Records with hostile kinds, offsets, lengths and raw lengths.
    Forged(Vec<([u8; 32], u8, u32, u32, u32)>),
}

#[derive(Clone, Debug)]
struct PackCase {
    blobs: Vec<Vec<u8>>,
    records: TableRecords,
    /// Damage to the table's plaintext (partial records…) before it is sealed.
    table: Vec<Mutation>,
    /// Damage to the sealed table (fails authentication).
    sealed_table: Vec<Mutation>,
    magic: Option<[u8; 4]>,
    version: Option<u8>,
    key_id: Option<u32>,
    table_len: Option<u32>,
    /// Damage to the whole pack, before its checksum is computed.
    body: Vec<Mutation>,
    checksum: bool,
    random: Option<Vec<u8>>,
}

fn pack_case() -> impl Strategy<Value = PackCase> {
    let forged = vec(
        (
            any::<[u8; 32]>(),
            prop_oneof![4 => 0u8..2, 1 => any::<u8>()],
            hostile_u32(),
            hostile_u32(),
            hostile_u32(),
        ),
        0..5,
    );
    (
        vec(vec(any::<u8>(), 0..300), 0..4),
        prop_oneof![1 => Just(TableRecords::Real), 2 => forged.prop_map(TableRecords::Forged)],
        prop_oneof![3 => Just(vec![]), 1 => mutations()],
        prop_oneof![8 => Just(vec![]), 1 => vec(mutation(), 1..3)],
        prop::option::weighted(0.05, any::<[u8; 4]>()),
        prop::option::weighted(0.05, any::<u8>()),
        prop::option::weighted(0.1, hostile_u32()),
        prop::option::weighted(0.25, hostile_u32()),
        prop_oneof![6 => Just(vec![]), 1 => mutations()],
        prop::bool::weighted(0.95),
        prop::option::weighted(0.03, vec(any::<u8>(), 0..200)),
    )
        .prop_map(
            |(
                blobs,
                records,
                table,
                sealed_table,
                magic,
                version,
                key_id,
                table_len,
                body,
                checksum,
                random,
            )| PackCase {
                blobs,
                records,
                table,
                sealed_table,
                magic,
                version,
                key_id,
                table_len,
                body,
                checksum,
                random,
            },
        )
}

/// A pack laid out as `docs/FORMAT.md` says, from a case's choices.
fn build_pack(case: &PackCase) -> Vec<u8> {
    if let Some(r) = &case.random {
        return r.clone();
    }
    let ks = keys();
    let mut out = case.magic.unwrap_or(*b"RSP1").to_vec();
    out.push(case.version.unwrap_or(1));
    out.extend_from_slice(&case.key_id.unwrap_or(ks.current_key_id()).to_le_bytes());
    let mut real = Vec::new();
    for b in &case.blobs {
        let id = ks.blob_id(b);
        let offset = out.len() as u32;
        encode_blob(&ks.current_key(), BlobKind::Data, &id, b, 3, &mut out);
        real.push((id.0, 0u8, offset, out.len() as u32 - offset, b.len() as u32));
    }
    let records = match &case.records {
        TableRecords::Real => real,
        TableRecords::Forged(f) => f.clone(),
    };
    let mut table = Vec::new();
    for (id, kind, offset, length, raw_len) in records {
        table.extend_from_slice(&id);
        table.push(kind);
        table.extend_from_slice(&offset.to_le_bytes());
        table.extend_from_slice(&length.to_le_bytes());
        table.extend_from_slice(&raw_len.to_le_bytes());
    }
    mutate(&mut table, &case.table);
    let mut sealed = crypto::seal(&ks.current_key(), b"RSP1 table", &table);
    mutate(&mut sealed, &case.sealed_table);
    out.extend_from_slice(&sealed);
    let len = case.table_len.unwrap_or(sealed.len() as u32);
    out.extend_from_slice(&len.to_le_bytes());
    mutate(&mut out, &case.body);
    if case.checksum {
        append_checksum(&mut out);
    }
    out
}

/// What readers rely on of every record a decoder returns: it starts after a pack's header
/// and ends where a 32-bit offset can address (so `offset + length` never overflows).
fn in_a_pack(blobs: &[PackedBlob]) -> Result<(), TestCaseError> {
    for b in blobs {
        prop_assert!(
            b.offset as usize >= pack::HEADER_LEN && b.end() <= u64::from(u32::MAX),
            "{b:?}"
        );
    }
    Ok(())
}

/// Reads every blob a parsed table lists, as readers do.
fn read_blobs(
    bytes: &[u8],
    key_id: u32,
    blobs: &[PackedBlob],
    name: &str,
) -> Result<(), TestCaseError> {
    for b in blobs {
        if let Some(sealed) = bytes.get(b.offset as usize..b.end() as usize) {
            let r = decode_blob(keys(), key_id, b.kind, &b.id, b.raw_len, sealed, name);
            named(&r, &[name])?;
        }
    }
    Ok(())
}

#[test]
fn hostile_pack_table() {
    run(pack_case(), |case| {
        let name = "data/ab/hostile-pack";
        let bytes = build_pack(&case);
        // In memory, whole.
        let whole = pack::parse_pack(keys(), name, &bytes);
        named(&whole, &[name])?;
        if let Ok((key_id, blobs)) = &whole {
            in_a_pack(blobs)?;
            // A whole pack's blobs also end before its table.
            let table_len = u32::from_le_bytes(
                bytes[bytes.len() - pack::TAIL_LEN..][..4]
                    .try_into()
                    .expect("4"),
            );
            let table_start = (bytes.len() - pack::TAIL_LEN) as u64 - u64::from(table_len);
            prop_assert!(blobs.iter().all(|b| b.end() <= table_start));
            read_blobs(&bytes, *key_id, blobs, name)?;
        }
        // With ranged reads: header, tail, table.
        let size = bytes.len() as u64;
        if bytes.len() >= pack::HEADER_LEN + pack::TAIL_LEN {
            let header = pack::parse_header(name, &bytes[..pack::HEADER_LEN]);
            named(&header, &[name])?;
            let tail = &bytes[bytes.len() - pack::TAIL_LEN..];
            let len = pack::table_len_from_tail(name, tail, size);
            named(&len, &[name])?;
            if let (Ok(key_id), Ok(len)) = (header, len) {
                let end = bytes.len() - pack::TAIL_LEN;
                let table = &bytes[end - len as usize..end];
                let blobs = pack::parse_table(keys(), key_id, name, table);
                named(&blobs, &[name])?;
                if let Ok(blobs) = blobs {
                    in_a_pack(&blobs)?;
                    read_blobs(&bytes, key_id, &blobs, name)?;
                }
            }
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// Blobs: a valid seal around a garbage body.

#[derive(Clone, Debug)]
struct BlobCase {
    plain: Vec<u8>,
    flag: u8,
    /// The body after its flag: the plaintext's zstd frame damaged, or random bytes.
    body: Result<Vec<Mutation>, Vec<u8>>,
    raw_len: Option<u32>,
    /// The id the blob is sealed under is that of the plaintext (else random).
    true_id: bool,
    random_id: [u8; 32],
    kind: u8,
}

fn blob_case() -> impl Strategy<Value = BlobCase> {
    (
        prop_oneof![
            vec(any::<u8>(), 0..400),
            (0usize..5000).prop_map(|n| vec![0u8; n])
        ],
        prop_oneof![4 => 0u8..2, 1 => any::<u8>()],
        prop_oneof![
            3 => mutations().prop_map(Ok),
            1 => vec(any::<u8>(), 0..300).prop_map(Err),
        ],
        prop::option::weighted(0.3, hostile_u32()),
        prop::bool::weighted(0.8),
        any::<[u8; 32]>(),
        0u8..2,
    )
        .prop_map(
            |(plain, flag, body, raw_len, true_id, random_id, kind)| BlobCase {
                plain,
                flag,
                body,
                raw_len,
                true_id,
                random_id,
                kind,
            },
        )
}

#[test]
fn hostile_blob() {
    run(blob_case(), |case| {
        let name = "data/cd/hostile-blob";
        let ks = keys();
        let kind = BlobKind::from_u8(case.kind).expect("0 or 1");
        let mut body = vec![case.flag];
        match &case.body {
            Ok(m) => {
                let mut frame = if case.flag == 0 {
                    case.plain.clone()
                } else {
                    zstd::bulk::compress(&case.plain, 3).expect("compresses")
                };
                mutate(&mut frame, m);
                body.extend_from_slice(&frame);
            }
            Err(random) => body.extend_from_slice(random),
        }
        let id = if case.true_id {
            ks.blob_id(&case.plain)
        } else {
            BlobId(case.random_id)
        };
        // The associated data of a blob: its kind and id.
        let aad = [&[kind as u8][..], &id.0].concat();
        let sealed = crypto::seal(&ks.current_key(), &aad, &body);
        let raw_len = case.raw_len.unwrap_or(case.plain.len() as u32);
        let r = decode_blob(ks, ks.current_key_id(), kind, &id, raw_len, &sealed, name);
        // No blob is longer than the largest chunk: a longer length is refused before anything
        // is allocated for it.
        prop_assert!(raw_len <= crate::format::blob::MAX_BLOB_LEN || r.is_err());
        named(&r, &[name])
    });
}

// ---------------------------------------------------------------------------------------------
// Index files.

fn pack_records() -> impl Strategy<Value = Vec<PackRecord>> {
    vec(
        (
            any::<[u8; 32]>(),
            any::<u64>(),
            any::<u32>(),
            vec(
                (
                    any::<[u8; 32]>(),
                    0u8..2,
                    prop_oneof![3 => 9u32..1 << 20, 1 => hostile_u32()],
                    prop_oneof![3 => 0u32..1 << 20, 1 => hostile_u32()],
                    any::<u32>(),
                ),
                0..4,
            ),
        )
            .prop_map(|(id, size, key_id, blobs)| PackRecord {
                id: BlobId(id),
                size,
                key_id,
                blobs: blobs
                    .into_iter()
                    .map(|(b, kind, offset, length, raw_len)| PackedBlob {
                        id: BlobId(b),
                        kind: BlobKind::from_u8(kind).expect("0 or 1"),
                        offset,
                        length,
                        raw_len,
                    })
                    .collect(),
            }),
        0..4,
    )
}

/// An index payload: a real one damaged, or a header with hostile counts, or random bytes.
fn index_payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => (pack_records(), mutations()).prop_map(|(packs, m)| {
            let mut p = encode_index(&packs);
            mutate(&mut p, &m);
            p
        }),
        2 => (hostile_u32(), hostile_u32(), vec(any::<u8>(), 0..200)).prop_map(|(count, n, rest)| {
            // One pack record's head, then a hostile blob count and what follows.
            let mut p = vec![1u8];
            p.extend_from_slice(&count.to_le_bytes());
            p.extend_from_slice(&[7; 32]);
            p.extend_from_slice(&u64::MAX.to_le_bytes());
            p.extend_from_slice(&1u32.to_le_bytes());
            p.extend_from_slice(&n.to_le_bytes());
            p.extend_from_slice(&rest);
            p
        }),
        1 => vec(any::<u8>(), 0..300),
    ]
}

#[test]
fn hostile_index_file() {
    let rt = rt();
    run((index_payload(), wrap()), |(payload, wrap)| {
        let name = "index/hostile-index";
        let decoded = decode_index(name, &payload);
        named(&decoded, &[name])?;
        for p in decoded.iter().flatten() {
            in_a_pack(&p.blobs)?;
        }
        // Index files are sealed under the name `index` (their key is their checksum).
        let bytes = wrap.apply(ObjectKind::Index, "index", &payload);
        rt.block_on(async {
            put(name, bytes).await;
            match REPO.read_index_file(name).await {
                Ok(IndexFile::Packs(_)) => Ok(()),
                Ok(IndexFile::Damaged(e)) => named::<()>(&Err(e), &[name]),
                Ok(IndexFile::Missing) => Err(TestCaseError::fail("present, yet missing")),
                Err(e) => named::<()>(&Err(e), &[name]),
            }
        })
    });
}

// ---------------------------------------------------------------------------------------------
// Prune plans: a header's JSON, then an index payload, sealed.

#[test]
fn hostile_prune_plan() {
    let rt = rt();
    let strategy = (
        json_damage(),
        prop::option::weighted(0.2, hostile_u32()),
        index_payload(),
        mutations(),
        wrap(),
    );
    run(strategy, |(header, header_len, index, m, wrap)| {
        let name = "prune/hostile-plan";
        let header = header.apply(&json!({ "created_at": now() }));
        let mut payload = header_len
            .unwrap_or(header.len() as u32)
            .to_le_bytes()
            .to_vec();
        payload.extend_from_slice(&header);
        payload.extend_from_slice(&index);
        mutate(&mut payload, &m);
        let bytes = wrap.apply(ObjectKind::PrunePlan, name, &payload);
        rt.block_on(async {
            put(name, bytes).await;
            named(&REPO.prune_plans().await, &[name])
        })
    });
}

// ---------------------------------------------------------------------------------------------
// Trees: length-prefixed MessagePack records, in a sealed tree blob.

fn tree_records() -> impl Strategy<Value = Vec<TreeRecord>> {
    vec(
        (
            "[a-z/]{1,20}",
            any::<u64>(),
            prop_oneof![
                Just(Content::None),
                vec(any::<u8>(), 0..40).prop_map(Content::Inline),
                vec((any::<[u8; 32]>(), any::<u32>()), 0..3).prop_map(|v| {
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
            any::<bool>(),
        )
            .prop_map(|(path, size, content, dir)| TreeRecord {
                meta: EntryMeta {
                    kind: if dir { EntryKind::Dir } else { EntryKind::File },
                    link_target: dir.then(|| b"t".to_vec()),
                    attrs: BTreeMap::from([("k".to_owned(), "v".to_owned())]),
                    ..EntryMeta::file(path.as_str(), size)
                },
                content,
            }),
        0..6,
    )
}

#[test]
fn hostile_tree() {
    let strategy = (
        tree_records(),
        mutations(),
        // A record whose MessagePack is random, inside a correct length prefix.
        prop::option::weighted(0.2, vec(any::<u8>(), 0..80)),
        prop::option::weighted(0.03, vec(any::<u8>(), 0..300)),
        1usize..64,
    );
    run(strategy, |(records, m, garbage_record, random, piece)| {
        let name = "snapshots/hostile-tree";
        let ks = keys();
        let mut stream = Vec::new();
        for r in &records {
            encode_record(r, &mut stream);
        }
        if let Some(g) = garbage_record {
            stream.extend_from_slice(&(g.len() as u32).to_le_bytes());
            stream.extend_from_slice(&g);
        }
        mutate(&mut stream, &m);
        if let Some(r) = random {
            stream = r;
        }
        // Sealed as a tree blob whose id is that of the damaged stream: it opens.
        let id = ks.blob_id(&stream);
        let mut sealed = Vec::new();
        encode_blob(
            &ks.current_key(),
            BlobKind::Tree,
            &id,
            &stream,
            3,
            &mut sealed,
        );
        let plain = decode_blob(
            ks,
            ks.current_key_id(),
            BlobKind::Tree,
            &id,
            stream.len() as u32,
            &sealed,
            name,
        )
        .expect("an authentic blob opens");
        let mut decoder = TreeDecoder::new();
        for p in plain.chunks(piece) {
            decoder.feed(p);
            loop {
                let r = decoder.next_record(name);
                named(&r, &[name])?;
                match r {
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
        }
        named(&decoder.finish(name), &[name])
    });
}

// ---------------------------------------------------------------------------------------------
// Snapshot manifests and catalog revisions: sealed JSON.

fn manifest() -> Manifest {
    Manifest {
        format: 1,
        id: "20250615T150000Z-0123".into(),
        source: SourceDescriptor {
            id: "dir:/srv".into(),
            kind: "dir".into(),
        },
        started_at: now(),
        finished_at: now(),
        entries: 3,
        logical_bytes: 1234,
        tree: vec![
            BlobRef {
                id: BlobId([3; 32]),
                len: 100,
            },
            BlobRef {
                id: BlobId([4; 32]),
                len: 7,
            },
        ],
        source_metadata: BTreeMap::from([("lsn".to_owned(), json!({"start": "0/3000028"}))]),
        labels: BTreeMap::from([("env".to_owned(), "prod".to_owned())]),
        parent: Some("20250614T150000Z-0123".into()),
    }
}

#[test]
fn hostile_manifest() {
    let base = manifest();
    run((json_damage(), wrap()), |(damage, wrap)| {
        let name = "snapshots/hostile-manifest";
        let payload = damage.apply(&base);
        let bytes = wrap.apply(ObjectKind::Snapshot, name, &payload);
        named(&REPO.open_manifest(name, &bytes), &[name])
    });
}

fn backup_record() -> BackupRecord {
    BackupRecord {
        id: "20250615T150000Z-0123".into(),
        revision: 2,
        source: SourceDescriptor {
            id: "dir:/srv".into(),
            kind: "dir".into(),
        },
        kind: BackupKind::Full,
        status: BackupStatus::Succeeded,
        error: None,
        started_at: now(),
        finished_at: Some(now()),
        logical_bytes: 1,
        stored_bytes: 2,
        new_bytes: 3,
        entries: 4,
        manifest_checksum: Some(hex::encode([9u8; 32])),
        tier: Tier::Hot,
        labels: BTreeMap::new(),
        legal_hold: true,
        verifications: vec![crate::catalog::Verification {
            at: now(),
            kind: "quick".into(),
            ok: true,
            detail: "ok".into(),
        }],
        source_metadata: BTreeMap::from([("version".to_owned(), json!(16))]),
        parent: None,
        host: "h".into(),
        updated_at: now(),
        salvage: None,
    }
}

#[test]
fn hostile_catalog_revision() {
    let rt = rt();
    let base = backup_record();
    let catalog = RepoCatalog::new(REPO.sink.clone(), REPO.keys());
    run((json_damage(), wrap()), |(damage, wrap)| {
        let name = "catalog/20250615T150000Z-0123/0000000002-succeeded";
        let payload = damage.apply(&base);
        let bytes = wrap.apply(ObjectKind::Catalog, name, &payload);
        rt.block_on(async {
            put(name, bytes).await;
            named(&catalog.read_key(name).await, &[name])
        })
    });
}

// ---------------------------------------------------------------------------------------------
// The repository's `config`: JSON and a checksum.

#[test]
fn hostile_config() {
    let rt = rt();
    let base = REPO.config.clone();
    let strategy = (json_damage(), prop::bool::weighted(0.95));
    run(strategy, |(damage, checksum)| {
        let mut bytes = damage.apply(&base);
        if checksum {
            append_checksum(&mut bytes);
        }
        let sink = MemorySink::new();
        rt.block_on(async {
            sink.put("config", bytes.into(), PutMode::Create)
                .await
                .expect("memory put");
            let r: crate::Result<RepoConfig> = Repository::read_config(&sink).await;
            named(&r, &["config"])
        })
    });
}

// ---------------------------------------------------------------------------------------------
// Key copies (`keys/<id>`) and what a passphrase copy makes Argon2id do.

/// Argon2id costs: cheap ones and ones past the bounds (never costly ones within them, which
/// would only make the test slow).
fn kdf_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0u32..16).prop_map(|n| json!(n)),
        Just(json!(KdfParams::MAX_MEMORY_KIB + 1)),
        Just(json!(KdfParams::MAX_ITERATIONS + 1)),
        Just(json!(KdfParams::MAX_PARALLELISM + 1)),
        Just(json!(u32::MAX)),
        Just(json!(u64::MAX)),
        Just(json!(-1)),
        Just(json!("8")),
    ]
}

#[derive(Clone, Debug)]
struct CopyCase {
    passphrase: bool,
    secret: Vec<u8>,
    kdf: Vec<(&'static str, Value)>,
    salt: Option<String>,
    damage: JsonDamage,
    checksum: bool,
}

fn copy_case() -> impl Strategy<Value = CopyCase> {
    (
        any::<bool>(),
        prop_oneof![vec(any::<u8>(), 32..=32), vec(any::<u8>(), 0..80)],
        vec(
            (
                prop::sample::select(vec!["memory_kib", "iterations", "parallelism", "kdf"]),
                kdf_value(),
            ),
            0..3,
        ),
        // Salts: too short, too long, not hex, odd.
        prop::option::weighted(
            0.3,
            prop_oneof![
                "([0-9a-f]{2}){0,7}",
                "([0-9a-f]{2}){65,70}",
                "[0-9a-f]{0,160}",
                "\\PC{0,20}"
            ],
        ),
        light_json_damage(1),
        prop::bool::weighted(0.95),
    )
        .prop_map(
            |(passphrase, secret, kdf, salt, damage, checksum)| CopyCase {
                passphrase,
                secret,
                kdf,
                salt,
                damage,
                checksum,
            },
        )
}

/// Whether a copy's Argon2id cost is within the bounds but too slow for a test (a byte flip
/// can make one).
fn costly(params: &Value) -> bool {
    let get = |k: &str| params.get(k).and_then(Value::as_u64).unwrap_or(0);
    get("memory_kib") > 4096 || get("memory_kib").saturating_mul(get("iterations")) > 16 * 1024
}

#[test]
fn hostile_key_copy() {
    let rt = rt();
    let cheap = KdfParams {
        memory_kib: 8,
        iterations: 1,
        parallelism: 1,
    };
    let passphrase = PassphraseProvider::new("pw").with_params(cheap);
    let key_file = KeyFileProvider::from_key([7; 32]);
    run(copy_case(), |case| {
        let provider: &dyn KeyProvider = if case.passphrase {
            &passphrase
        } else {
            &key_file
        };
        rt.block_on(async {
            // A copy as a provider writes it, around a garbage secret.
            let mut copy = provider.wrap(&case.secret, now()).await.expect("wraps");
            copy.format = 2;
            copy.recipient = Some(hex::encode(crypto::Identity::generate().recipient()));
            for (k, v) in &case.kdf {
                copy.params[*k] = v.clone();
            }
            if let Some(salt) = &case.salt {
                copy.params["salt"] = json!(salt);
            }
            let name = copy.object_name();
            let mut bytes = case.damage.apply(&copy);
            if case.checksum {
                append_checksum(&mut bytes);
            }
            let decoded = ring::decode_copy(&name, &bytes);
            named(&decoded, &[name.as_str()])?;
            let Ok(decoded) = decoded else {
                return Ok(());
            };
            if costly(&decoded.params) {
                return Ok(());
            }
            named(&provider.unwrap(&decoded).await, &[name.as_str()])?;
            let ring = KeyRing {
                copies: vec![decoded],
                ..KeyRing::default()
            };
            match ring.unlock(provider, "mem").await {
                Err(Error::WrongKey { .. }) => Ok(()),
                other => named(&other, &[name.as_str()]),
            }
        })
    });
}

// ---------------------------------------------------------------------------------------------
// Key-set generations (`keys/keyset-<generation>`): JSON and a checksum, holding the key set
// sealed to each copy. The key set sealed is garbage, sealed properly, so it reaches its parser.

#[derive(Clone, Debug)]
struct GenerationCase {
    generation: u64,
    /// Damage to the key set's JSON before it is sealed.
    key_set: JsonDamage,
    /// Damage to the sealed key set (fails authentication).
    sealed: Vec<Mutation>,
    object: JsonDamage,
    checksum: bool,
}

fn generation_case() -> impl Strategy<Value = GenerationCase> {
    (
        prop_oneof![1u64..1000, Just(0u64), Just(u64::MAX)],
        json_damage(),
        prop_oneof![6 => Just(vec![]), 1 => vec(mutation(), 1..3)],
        light_json_damage(3),
        prop::bool::weighted(0.95),
    )
        .prop_map(
            |(generation, key_set, sealed, object, checksum)| GenerationCase {
                generation,
                key_set,
                sealed,
                object,
                checksum,
            },
        )
}

#[test]
fn hostile_keyset_generation() {
    let rt = rt();
    let provider = KeyFileProvider::from_key([7; 32]);
    let (copy, _identity) = rt
        .block_on(ring::new_copy(&provider, now()))
        .expect("a copy");
    let recipient: [u8; 32] = hex::decode(copy.recipient.as_deref().expect("format 2"))
        .expect("hex")
        .try_into()
        .expect("32 bytes");
    let copy_name = copy.object_name();
    run(generation_case(), |case| {
        let name = ring::keyset_name(case.generation);
        let key_set = KeySet::generate();
        let plain = case.key_set.apply(&key_set);
        // The associated data of a key set sealed to a copy: the generation's name and the copy.
        let aad = format!("resilience/{name}/{}", copy.id);
        let mut sealed = crypto::seal_to_recipient(&recipient, aad.as_bytes(), &plain);
        mutate(&mut sealed, &case.sealed);
        let object = KeySetObject {
            generation: case.generation,
            created_at: now(),
            current: key_set.current_key_id(),
            data_keys: key_set.data_key_ids(),
            sealed: BTreeMap::from([(copy.id.clone(), hex::encode(sealed))]),
        };
        let mut bytes = case.object.apply(&object);
        if case.checksum {
            append_checksum(&mut bytes);
        }
        let decoded = ring::decode_keyset_object(&name, &bytes);
        named(&decoded, &[name.as_str()])?;
        let Ok(decoded) = decoded else {
            return Ok(());
        };
        let ring = KeyRing {
            copies: vec![copy.clone()],
            generations: vec![decoded],
            generation_names: vec![name.clone()],
            damaged: vec![],
        };
        let opened = rt.block_on(ring.unlock(&provider, "mem"));
        named(&opened, &[name.as_str(), copy_name.as_str()])
    });
}

/// `init` refuses what `config` would be refused for when read back, before writing anything:
/// here an inline limit past the smallest chunk, which made a backup store a 3000-byte file as
/// its first 263 bytes (chunker 64/256/1024 bytes, inline limit 4096).
#[tokio::test]
async fn init_refuses_settings_that_config_would_refuse() {
    let sink = Arc::new(MemorySink::new());
    let options = |inline_limit, pack_size, compression_level| InitOptions {
        chunker: crate::format::chunker::ChunkerParams {
            min_size: 64,
            avg_size: 256,
            max_size: 1024,
        },
        inline_limit,
        pack_size,
        compression_level,
        object_lock: None,
    };
    for bad in [
        options(65, 1 << 20, 3),
        options(64, crate::repo::MAX_PACK_SIZE + 1, 3),
        options(64, 1 << 20, 1000),
    ] {
        let err = Repository::init(sink.clone(), &KeyFileProvider::from_key([1; 32]), bad)
            .await
            .expect_err("refused");
        assert!(
            err.to_string().contains("cannot create a repository"),
            "{err}"
        );
        assert!(!Repository::exists(sink.as_ref()).await.unwrap());
    }
    let listed: Vec<_> = futures::TryStreamExt::try_collect(sink.list(""))
        .await
        .unwrap();
    assert!(listed.is_empty(), "nothing written: {listed:?}");
    Repository::init(
        sink,
        &KeyFileProvider::from_key([1; 32]),
        options(64, 1 << 20, 3),
    )
    .await
    .expect("an inline limit of the smallest chunk is fine");
}
