//! Throughput of each stage on 8 MiB of random, text and page-like data, beside memcpy and
//! plain BLAKE3 as reference lines.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use resilience_benches::{generate, Kind, Xorshift};
use resilience_core::internals::blob::{self, BlobKind};
use resilience_core::internals::chunker::{Chunker, ChunkerParams};
use resilience_core::internals::crypto::{self, KeySet};

const LEN: usize = 8 << 20;

fn stages(c: &mut Criterion) {
    let keys = KeySet::generate();
    let mut group = c.benchmark_group("stages");
    group
        .sample_size(10)
        .measurement_time(std::time::Duration::from_secs(3))
        .throughput(Throughput::Bytes(LEN as u64));
    for kind in [Kind::Random, Kind::Text, Kind::Pages] {
        let data = generate(kind, LEN, &mut Xorshift::new(7));
        let name = format!("{kind:?}").to_lowercase();
        group.bench_with_input(BenchmarkId::new("memcpy", &name), &data, |b, d| {
            b.iter(|| black_box(d.clone()))
        });
        group.bench_with_input(BenchmarkId::new("blake3", &name), &data, |b, d| {
            b.iter(|| black_box(blake3::hash(d)))
        });
        group.bench_with_input(BenchmarkId::new("keyed-blake3-id", &name), &data, |b, d| {
            b.iter(|| black_box(keys.blob_id(d)))
        });
        group.bench_with_input(BenchmarkId::new("fastcdc", &name), &data, |b, d| {
            b.iter(|| {
                let mut ch = Chunker::new(ChunkerParams::default(), keys.chunker_seed());
                ch.push(d);
                let mut n = 0;
                while let Some(c) = ch.next_chunk(true) {
                    n += c.len();
                }
                black_box(n)
            })
        });
        group.bench_with_input(
            BenchmarkId::new("xchacha20poly1305-seal", &name),
            &data,
            |b, d| {
                let key = keys.current_key();
                b.iter(|| black_box(crypto::seal(&key, b"aad", d)))
            },
        );
        let sealed = crypto::seal(&keys.current_key(), b"aad", &data);
        group.bench_with_input(
            BenchmarkId::new("xchacha20poly1305-open", &name),
            &sealed,
            |b, s| {
                let key = keys.current_key();
                b.iter(|| black_box(crypto::open(&key, b"aad", s)))
            },
        );
        let id = keys.blob_id(&data);
        group.bench_with_input(
            BenchmarkId::new("zstd3+seal (encode_blob)", &name),
            &data,
            |b, d| {
                b.iter(|| {
                    let mut out = Vec::new();
                    blob::encode_blob(&keys.current_key(), BlobKind::Data, &id, d, 3, &mut out);
                    black_box(out)
                })
            },
        );
        let mut stored = Vec::new();
        blob::encode_blob(
            &keys.current_key(),
            BlobKind::Data,
            &id,
            &data,
            3,
            &mut stored,
        );
        group.bench_with_input(
            BenchmarkId::new("decode_blob (open+unzstd+rehash)", &name),
            &stored,
            |b, s| {
                b.iter(|| {
                    black_box(
                        blob::decode_blob(
                            &keys,
                            keys.current_key_id(),
                            BlobKind::Data,
                            &id,
                            LEN as u32,
                            s,
                            "bench",
                        )
                        .unwrap(),
                    )
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
