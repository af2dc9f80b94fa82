//! The cost of keys: sealing and opening (XChaCha20-Poly1305) beside memcpy and BLAKE3 on one
//! core, re-sealing a stored blob under a new data key (what `key rotate --rewrite` does per
//! blob), and unlocking a repository's key set with a key file (the per-process cost of
//! `wal-push`): X25519 open of the sealed key set.

use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use resilience_benches::{generate, Kind, Xorshift};
use resilience_core::internals::blob::{self, BlobKind};
use resilience_core::internals::crypto::{self, KeySet};
use resilience_core::keys::KeyFileProvider;
use resilience_core::repo::{InitOptions, Repository};
use resilience_core::sink::MemorySink;

const LEN: usize = 4 << 20;

fn encryption(c: &mut Criterion) {
    let mut keys = KeySet::generate();
    let data = generate(Kind::Random, LEN, &mut Xorshift::new(3));
    let mut group = c.benchmark_group("keys");
    group
        .sample_size(10)
        .measurement_time(std::time::Duration::from_secs(2))
        .throughput(Throughput::Bytes(LEN as u64));
    group.bench_function("memcpy", |b| b.iter(|| black_box(data.clone())));
    group.bench_function("blake3", |b| b.iter(|| black_box(blake3::hash(&data))));
    let key = keys.current_key();
    group.bench_function("seal", |b| {
        b.iter(|| black_box(crypto::seal(&key, b"aad", &data)))
    });
    let sealed = crypto::seal(&key, b"aad", &data);
    group.bench_function("open", |b| {
        b.iter(|| black_box(crypto::open(&key, b"aad", &sealed)))
    });
    // Rewrite: open under data key 1, seal under data key 2 (random data: stored raw).
    let id = keys.blob_id(&data);
    let mut stored = Vec::new();
    blob::encode_blob(&key, BlobKind::Data, &id, &data, 3, &mut stored);
    let old = keys.current_key_id();
    keys.rotate();
    let new_key = keys.current_key();
    group.bench_function("rewrite-reseal", |b| {
        b.iter(|| {
            let plain = blob::decode_blob(
                &keys,
                old,
                BlobKind::Data,
                &id,
                LEN as u32,
                &stored,
                "bench",
            )
            .unwrap();
            let mut out = Vec::with_capacity(stored.len());
            blob::encode_blob(&new_key, BlobKind::Data, &id, &plain, 3, &mut out);
            black_box(out)
        })
    });
    group.finish();
}

fn unlock(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let sink = Arc::new(MemorySink::new());
    let provider = KeyFileProvider::from_key([1; 32]);
    rt.block_on(Repository::init(
        sink.clone(),
        &provider,
        InitOptions::default(),
    ))
    .unwrap();
    let mut group = c.benchmark_group("keys");
    group.sample_size(20);
    group.bench_function("open-repository-key-file", |b| {
        b.iter(|| {
            rt.block_on(Repository::open(sink.clone(), &provider))
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, encryption, unlock);
criterion_main!(benches);
