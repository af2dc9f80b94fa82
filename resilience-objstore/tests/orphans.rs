//! Unfinished uploads left by killed writers — a local store's `NAME#N` staging files and S3
//! multipart uploads (on Garage, started by `scripts/test`) — are found by the sink, left alone
//! while younger than prune's grace period, and then discarded by prune, leaving the repository
//! sound.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use object_store::path::Path;
use object_store::ObjectStore;
use resilience_core::keys::KeyFileProvider;
use resilience_core::ops::prune::PruneOptions;
use resilience_core::ops::verify::VerifyOptions;
use resilience_core::repo::{InitOptions, Repository};
use resilience_core::sink::Sink;
use resilience_core::testing::{pseudo_random, MemorySource};
use resilience_objstore::{open_sink_or_create, open_store};

/// The pack key a killed upload was writing.
const KEY: &str = "data/ab/ab00000000000000000000000000000000000000000000000000000000000000";

fn grace(secs: u64) -> PruneOptions {
    PruneOptions {
        grace: Duration::from_secs(secs),
        ..Default::default()
    }
}

/// A repository at `url` holding one snapshot.
async fn repository(url: &str) -> (Arc<dyn Sink>, Repository) {
    let sink = open_sink_or_create(url).unwrap();
    let repo = Repository::init(
        sink.clone(),
        &KeyFileProvider::from_key([3; 32]),
        InitOptions::default(),
    )
    .await
    .unwrap();
    repo.backup(
        &MemorySource::new("s").file("f", pseudo_random(3 << 20, 1)),
        Default::default(),
    )
    .await
    .unwrap();
    (sink, repo)
}

/// Starts an upload of `KEY` through the store itself, sends one part and abandons it without
/// completing or aborting it: what a writer killed mid-upload leaves.
async fn abandon_an_upload(url: &str) {
    let opened = open_store(url, false).unwrap();
    let path = if opened.prefix.is_empty() {
        Path::from(KEY)
    } else {
        Path::from(format!("{}/{KEY}", opened.prefix))
    };
    let mut upload = opened.store.put_multipart(&path).await.unwrap();
    upload
        .put_part(vec![7u8; 5 << 20].into())
        .await
        .expect("a part is sent");
    // Never completed, never aborted, never dropped (a drop may clean up): killed.
    std::mem::forget(upload);
}

async fn assert_sound(repo: &Repository) {
    let report = repo.verify(VerifyOptions { full: true }).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
}

#[tokio::test]
async fn a_killed_local_upload_is_removed_by_prune_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("repo").to_str().unwrap().to_owned();
    let (sink, repo) = repository(&url).await;
    abandon_an_upload(&url).await;

    let left = sink.unfinished_uploads("").await.unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].key, KEY);
    let staging = dir.path().join("repo").join(&left[0].id);
    assert!(staging.is_file(), "{}", staging.display());
    assert!(
        sink.head(KEY).await.unwrap_err().is_not_found(),
        "a staging file is no object"
    );

    let young = repo.prune(grace(3600)).await.unwrap();
    assert_eq!(young.discarded_uploads, 0, "{young:?}");
    assert!(young.waiting_uploads[0].contains("grace"), "{young:?}");
    assert!(staging.is_file());

    // Two hours later (by the file's own time).
    std::fs::File::options()
        .write(true)
        .open(&staging)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(7200))
        .unwrap();
    let ripe = repo.prune(grace(3600)).await.unwrap();
    assert_eq!(ripe.discarded_uploads, 1, "{ripe:?}");
    assert!(ripe.upload_warnings.is_empty(), "{ripe:?}");
    assert!(!staging.exists());
    assert!(sink.unfinished_uploads("").await.unwrap().is_empty());
    assert_sound(&repo).await;
}

#[tokio::test]
async fn a_killed_s3_multipart_upload_is_aborted_by_prune_after_the_grace_period() {
    let url = common::garage_url("orphans");
    let (sink, repo) = repository(&url).await;
    abandon_an_upload(&url).await;

    let left = sink.unfinished_uploads("").await.unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].key, KEY);
    assert!(left[0].started.is_some(), "{left:?}");
    assert!(
        !listed(sink.as_ref(), "data/")
            .await
            .iter()
            .any(|k| k == KEY),
        "an unfinished upload is no object"
    );

    let young = repo.prune(grace(3600)).await.unwrap();
    assert_eq!(young.discarded_uploads, 0, "{young:?}");
    assert!(young.waiting_uploads[0].contains("grace"), "{young:?}");
    assert_eq!(sink.unfinished_uploads("").await.unwrap().len(), 1);

    let ripe = repo.prune(grace(0)).await.unwrap();
    assert_eq!(ripe.discarded_uploads, 1, "{ripe:?}");
    assert!(ripe.upload_warnings.is_empty(), "{ripe:?}");
    assert!(sink.unfinished_uploads("").await.unwrap().is_empty());
    // Discarding it again (another prune raced this one) succeeds.
    sink.discard_upload(&left[0]).await.unwrap();
    assert_sound(&repo).await;
}

/// The keys listed under `prefix`.
async fn listed(sink: &dyn Sink, prefix: &str) -> Vec<String> {
    use futures::TryStreamExt;
    sink.list(prefix)
        .map_ok(|m| m.key)
        .try_collect()
        .await
        .unwrap()
}
