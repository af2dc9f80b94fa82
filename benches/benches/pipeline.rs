//! The whole pipeline: backup and restore of 64 MiB of mixed data into an in-memory repository.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use resilience_benches::{generate, Kind, Xorshift};
use resilience_core::keys::KeyFileProvider;
use resilience_core::repo::{InitOptions, Repository};
use resilience_core::sink::MemorySink;
use resilience_core::testing::{MemorySource, MemoryTarget};

fn source() -> MemorySource {
    let mut rng = Xorshift::new(3);
    let mut src = MemorySource::new("bench");
    for (i, kind) in [Kind::Random, Kind::Text, Kind::Pages]
        .iter()
        .cycle()
        .take(24)
        .enumerate()
    {
        src = src.file(&format!("f{i}"), generate(*kind, (64 << 20) / 24, &mut rng));
    }
    src
}

fn pipeline(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let src = source();
    let total: u64 = src.entries.iter().map(|(_, b)| b.len() as u64).sum();
    let mut group = c.benchmark_group("pipeline");
    group
        .sample_size(10)
        .measurement_time(std::time::Duration::from_secs(10))
        .throughput(Throughput::Bytes(total));
    group.bench_function("backup (fresh repository)", |b| {
        b.iter(|| {
            rt.block_on(async {
                let repo = Repository::init(
                    Arc::new(MemorySink::new()),
                    &KeyFileProvider::from_key([1; 32]),
                    InitOptions::default(),
                )
                .await
                .unwrap();
                repo.backup(&src, Default::default()).await.unwrap()
            })
        })
    });
    let repo = rt.block_on(async {
        let repo = Repository::init(
            Arc::new(MemorySink::new()),
            &KeyFileProvider::from_key([1; 32]),
            InitOptions::default(),
        )
        .await
        .unwrap();
        repo.backup(&src, Default::default()).await.unwrap();
        repo
    });
    group.bench_function("restore", |b| {
        b.iter(|| {
            rt.block_on(async {
                repo.restore("latest", &MemoryTarget::new(), Default::default())
                    .await
                    .unwrap()
            })
        })
    });
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
