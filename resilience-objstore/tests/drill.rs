//! The bucket drill through the library: a local bucket (a directory) backed up into an
//! in-memory repository and drilled into a scratch directory, objects and bytes compared with
//! the record; and an object lost from the repository, failing the drill by name.

use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use resilience_core::catalog::Catalog;
use resilience_core::drill::{self, DrillOptions, DrillReport};
use resilience_core::keys::KeyFileProvider;
use resilience_core::repo::{InitOptions, Repository};
use resilience_core::sink::{MemorySink, PutMode, Sink};
use resilience_objstore::bucket::BucketSource;
use resilience_objstore::drill::BucketDrill;

fn assert_empty(dir: &std::path::Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "the drill left {left:?} behind");
}

#[tokio::test]
async fn a_bucket_drill_restores_every_object_and_compares_counts_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = dir.path().join("bucket");
    std::fs::create_dir_all(bucket.join("sub")).unwrap();
    for i in 0..6 {
        std::fs::write(
            bucket.join(format!("sub/o{i}")),
            format!("object {i} ").repeat(500),
        )
        .unwrap();
    }
    let sink = Arc::new(MemorySink::new());
    let repo = Repository::init(
        sink.clone(),
        &KeyFileProvider::from_key([3; 32]),
        InitOptions::default(),
    )
    .await
    .unwrap();
    let url = format!("file://{}", bucket.display());
    let id = repo
        .backup(
            &BucketSource::new(&url).with_id("assets"),
            Default::default(),
        )
        .await
        .unwrap()
        .record
        .id;
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let options = DrillOptions {
        scratch_dir: Some(scratch.clone()),
    };

    let report = drill::run(&repo, &BucketDrill::new("assets"), None, &options)
        .await
        .unwrap();
    assert!(report.ok, "{report:#?}");
    assert_eq!(report.snapshot, id);
    let objects = &report
        .checks
        .iter()
        .find(|c| c.name == "objects")
        .unwrap()
        .detail;
    assert!(
        objects.starts_with("6 objects and 27000 bytes written, 0 refused"),
        "{objects}"
    );
    assert_empty(&scratch);

    // Every pack lost: the restore fails, naming what is missing; the drill is recorded.
    let packs: Vec<_> = sink.list("data/").try_collect().await.unwrap();
    assert!(!packs.is_empty());
    for p in &packs {
        sink.put(&p.key, Bytes::from_static(b"gone"), PutMode::Overwrite)
            .await
            .unwrap();
    }
    let report = drill::run(&repo, &BucketDrill::new("assets"), None, &options)
        .await
        .unwrap();
    assert!(!report.ok);
    let failures = report.failures();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].starts_with("restore: "), "{failures:?}");
    assert!(
        packs
            .iter()
            .any(|p| failures[0].contains(p.key.rsplit('/').next().unwrap())),
        "{failures:?}"
    );
    assert_empty(&scratch);
    let record = repo.catalog().get(&id).await.unwrap().unwrap();
    let drills: Vec<bool> = record
        .verifications
        .iter()
        .filter_map(DrillReport::from_verification)
        .map(|r| r.ok)
        .collect();
    assert_eq!(drills, vec![true, false]);
}
