//! Replication to another store: the replica is a complete repository (same key, restore and
//! verify work), catches up incrementally, resumes after an interruption without ever showing a
//! snapshot before its data, reports its lag, and refuses to spread damage.

use std::sync::Arc;

use resilience_core::keys::KeyFileProvider;
use resilience_core::ops::replicate::{replicate, ReplicateOptions};
use resilience_core::ops::verify::VerifyOptions;
use resilience_core::repo::{InitOptions, Repository};
use resilience_core::sink::{MemorySink, Sink};
use resilience_core::testing::{pseudo_random as data, FaultySink, MemorySource, MemoryTarget};

fn key() -> KeyFileProvider {
    KeyFileProvider::from_key([7; 32])
}

async fn source_repo() -> (Arc<MemorySink>, Repository) {
    let sink = Arc::new(MemorySink::new());
    let opts = InitOptions {
        pack_size: 1 << 20,
        ..Default::default()
    };
    let repo = Repository::init(sink.clone(), &key(), opts).await.unwrap();
    (sink, repo)
}

async fn keys(sink: &dyn Sink, prefix: &str) -> usize {
    use futures::TryStreamExt;
    sink.list(prefix)
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .len()
}

#[tokio::test]
async fn the_replica_is_a_complete_repository_and_catches_up() {
    let (src_sink, repo) = source_repo().await;
    let first = repo
        .backup(
            &MemorySource::new("s").file("a", data(5 << 20, 1)),
            Default::default(),
        )
        .await
        .unwrap();
    let replica = Arc::new(MemorySink::new());
    let report = replicate(
        src_sink.as_ref(),
        replica.as_ref(),
        &ReplicateOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(report.lag_before.snapshots, 1);
    assert!(report.copied_objects > 5);
    assert_eq!(report.lag_after, Default::default(), "caught up");

    let copy = Repository::open(replica.clone(), &key()).await.unwrap();
    assert!(copy
        .verify(VerifyOptions { full: true })
        .await
        .unwrap()
        .is_ok());
    let target = MemoryTarget::new();
    copy.restore(&first.record.id, &target, Default::default())
        .await
        .unwrap();
    assert_eq!(target.content("a").unwrap(), data(5 << 20, 1));

    // Another backup: only what is new is copied.
    repo.backup(
        &MemorySource::new("s")
            .file("a", data(5 << 20, 1))
            .file("b", data(1 << 20, 2)),
        Default::default(),
    )
    .await
    .unwrap();
    let dry = replicate(
        src_sink.as_ref(),
        replica.as_ref(),
        &ReplicateOptions {
            dry_run: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!((dry.copied_objects, dry.lag_after.snapshots), (0, 1));
    let again = replicate(
        src_sink.as_ref(),
        replica.as_ref(),
        &ReplicateOptions::default(),
    )
    .await
    .unwrap();
    assert!(
        again.copied_bytes < (3 << 20),
        "copied {} bytes",
        again.copied_bytes
    );
    assert_eq!(again.lag_after, Default::default());
    use resilience_core::catalog::Catalog;
    assert_eq!(
        copy.catalog()
            .list(&Default::default())
            .await
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn an_interrupted_replication_resumes_and_never_shows_a_snapshot_early() {
    let (src_sink, repo) = source_repo().await;
    let b = repo
        .backup(
            &MemorySource::new("s").file("a", data(6 << 20, 3)),
            Default::default(),
        )
        .await
        .unwrap();
    let replica = Arc::new(FaultySink::new(MemorySink::new(), 3));
    assert!(replicate(
        src_sink.as_ref(),
        replica.as_ref(),
        &ReplicateOptions::default()
    )
    .await
    .is_err());
    assert_eq!(
        keys(replica.inner(), "catalog/").await,
        0,
        "no record before its packs"
    );
    assert_eq!(keys(replica.inner(), "snapshots/").await, 0);

    replica.set_budget(-1);
    let resumed = replicate(
        src_sink.as_ref(),
        replica.as_ref(),
        &ReplicateOptions::default(),
    )
    .await
    .unwrap();
    assert!(
        resumed.present_objects >= 3,
        "the first run's copies are kept"
    );
    assert_eq!(resumed.lag_after, Default::default());
    let copy = Repository::open(Arc::new(replica), &key()).await.unwrap();
    let target = MemoryTarget::new();
    copy.restore(&b.record.id, &target, Default::default())
        .await
        .unwrap();
    assert_eq!(target.content("a").unwrap(), data(6 << 20, 3));
}

#[tokio::test]
async fn damage_is_not_replicated() {
    let (src_sink, repo) = source_repo().await;
    repo.backup(
        &MemorySource::new("s").file("a", data(2 << 20, 4)),
        Default::default(),
    )
    .await
    .unwrap();
    use futures::TryStreamExt;
    let pack = src_sink
        .list("data/")
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .remove(0)
        .key;
    let mut bytes = src_sink.get(&pack).await.unwrap().to_vec();
    bytes[100] ^= 1;
    src_sink.tamper(&pack, bytes.into());
    let replica = MemorySink::new();
    let err = replicate(src_sink.as_ref(), &replica, &ReplicateOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&pack), "{err}");
    assert_eq!(keys(&replica, "catalog/").await, 0);
}

/// A change of keys at the source reaches the replica: after a rotation and a new copy, the
/// replica's key set is the source's (a backup sealed with the new data key restores there,
/// and the new copy opens it), and a generation not in force at the source is never copied.
#[tokio::test]
async fn a_change_of_keys_reaches_the_replica_and_a_forged_generation_does_not() {
    use resilience_core::keys::ring::{encode_keyset_object, keyset_name, seal_generation};
    use resilience_core::sink::PutMode;

    let (src_sink, repo) = source_repo().await;
    repo.backup(
        &MemorySource::new("s").file("a", data(1 << 20, 1)),
        Default::default(),
    )
    .await
    .unwrap();
    let replica = Arc::new(MemorySink::new());
    let options = ReplicateOptions::default();
    replicate(src_sink.as_ref(), replica.as_ref(), &options)
        .await
        .unwrap();

    let (repo, _) = repo.rotate_keys().await.unwrap();
    let second = KeyFileProvider::from_key([8; 32]);
    repo.add_key(&second).await.unwrap();
    let after = repo
        .backup(
            &MemorySource::new("s").file("b", data(1 << 20, 2)),
            Default::default(),
        )
        .await
        .unwrap();
    // A forgery at the source, sealed to every copy: not in force there, never copied.
    let ring = repo.key_ring().await.unwrap();
    let forged = seal_generation(
        &resilience_core::internals::crypto::KeySet::generate(),
        ring.latest_generation() + 1,
        &ring.copies.iter().collect::<Vec<_>>(),
        chrono::Utc::now(),
    )
    .unwrap();
    let forged_name = keyset_name(forged.generation);
    src_sink
        .put(
            &forged_name,
            encode_keyset_object(&forged).into(),
            PutMode::Create,
        )
        .await
        .unwrap();

    let report = replicate(src_sink.as_ref(), replica.as_ref(), &options)
        .await
        .unwrap();
    assert_eq!(report.lag_after, Default::default(), "caught up");
    assert_eq!(keys(replica.as_ref(), "keys/keyset-").await, 1);
    assert!(replica.get(&forged_name).await.is_err(), "forgery copied");
    for k in [key(), second] {
        let copy = Repository::open(replica.clone(), &k).await.unwrap();
        let target = MemoryTarget::new();
        copy.restore(&after.record.id, &target, Default::default())
            .await
            .unwrap();
        assert_eq!(target.content("b").unwrap(), data(1 << 20, 2));
    }
}
