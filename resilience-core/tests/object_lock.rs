//! A repository under an object lock, on a memory sink that locks as S3 Object Lock does: what
//! it writes is locked, `forget` keeps a locked backup restorable until its date, prune extends
//! what live snapshots need and deletes nothing before its date, and a change of keys is refused
//! before it writes anything. (The same on a real S3 implementation, moto's:
//! `resilience-cli/tests/object_lock.rs`.)

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use resilience_core::catalog::{BackupStatus, Catalog};
use resilience_core::keys::KeyFileProvider;
use resilience_core::ops::prune::PruneOptions;
use resilience_core::repo::{InitOptions, Repository};
use resilience_core::retention::{self, KeepRules, StandardPolicy};
use resilience_core::sink::{LockMode, MemorySink, ObjectLock, Sink};
use resilience_core::testing::{pseudo_random as data, MemorySource, MemoryTarget};

const KEY: [u8; 32] = [5; 32];

async fn locked_repository(period_secs: u64) -> (Arc<MemorySink>, Repository) {
    let store = Arc::new(MemorySink::new().with_object_lock());
    let options = InitOptions {
        pack_size: 1 << 20,
        object_lock: Some(ObjectLock {
            mode: LockMode::Compliance,
            period_secs,
        }),
        ..Default::default()
    };
    let repo = Repository::init(store.clone(), &KeyFileProvider::from_key(KEY), options)
        .await
        .unwrap();
    (store, repo)
}

fn source(seed: u64) -> MemorySource {
    MemorySource::new("a").file("f", data(300 << 10, seed))
}

async fn restores(repo: &Repository, id: &str, seed: u64) {
    let target = MemoryTarget::new();
    repo.restore(id, &target, Default::default()).await.unwrap();
    assert_eq!(
        target.content("f").as_deref(),
        Some(&data(300 << 10, seed)[..])
    );
}

fn keep_last_one() -> StandardPolicy {
    StandardPolicy {
        default: KeepRules {
            keep_last: Some(1),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[tokio::test]
async fn everything_a_snapshot_needs_is_locked_and_a_reopened_handle_keeps_locking() {
    let (store, repo) = locked_repository(3600).await;
    let done = repo.backup(&source(1), Default::default()).await.unwrap();
    let keys: Vec<String> = futures::TryStreamExt::try_collect(store.list(""))
        .await
        .map(|v: Vec<_>| v.into_iter().map(|m| m.key).collect())
        .unwrap();
    for key in &keys {
        let retention = store.retention(key).await.unwrap();
        let must = ObjectLock::retains(key);
        assert_eq!(retention.is_some(), must, "{key}");
        if let Some(r) = retention {
            assert_eq!(r.mode, LockMode::Compliance);
            assert!(
                r.until > Utc::now() + chrono::Duration::seconds(3500),
                "{key}"
            );
        }
    }
    assert!(keys.iter().any(|k| k.starts_with("data/")));
    // The lock is the repository's, not the handle's: a handle opened later locks too.
    let reopened = Repository::open(store.clone(), &KeyFileProvider::from_key(KEY))
        .await
        .unwrap();
    assert_eq!(reopened.object_lock(), repo.object_lock());
    assert_eq!(reopened.config().format, 3);
    let second = reopened
        .backup(&source(2), Default::default())
        .await
        .unwrap();
    let manifest = format!("snapshots/{}", second.record.id);
    assert!(store.retention(&manifest).await.unwrap().is_some());
    // A change of keys would delete the locked generation: refused, naming it, before writing.
    let before = store.list("keys/").count().await;
    let e = repo
        .add_key(&KeyFileProvider::from_key([6; 32]))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("keys/keyset-") && e.contains("object lock"),
        "{e}"
    );
    assert_eq!(store.list("keys/").count().await, before);
    restores(&repo, &done.record.id, 1).await;
}

#[tokio::test]
async fn forget_keeps_a_locked_backup_until_its_date_and_prune_frees_it_after() {
    let (store, repo) = locked_repository(2).await;
    let a = repo.backup(&source(1), Default::default()).await.unwrap();
    let b = repo.backup(&source(2), Default::default()).await.unwrap();
    let (a, b) = (a.record.id, b.record.id);
    let plan = |repo: &Repository| {
        let repo = repo.clone();
        async move {
            let records = repo.catalog().list(&Default::default()).await.unwrap();
            retention::plan(&keep_last_one(), &records, Utc::now())
        }
    };
    let report = repo.forget(&plan(&repo).await).await.unwrap();
    assert!(report.expired.is_empty(), "{report:?}");
    assert_eq!(report.kept_locked.len(), 1);
    assert_eq!(report.kept_locked[0].id, a);
    assert_eq!(
        repo.catalog().get(&a).await.unwrap().unwrap().status,
        BackupStatus::Succeeded
    );
    restores(&repo, &a, 1).await;
    let prune = PruneOptions {
        grace: Duration::ZERO,
        ..Default::default()
    };
    // Nothing of A is condemned while its manifest is there.
    let first = repo.prune(prune).await.unwrap();
    assert_eq!(first.condemned_packs, 0, "{first:?}");
    assert!(first.retention.is_some());

    tokio::time::sleep(Duration::from_millis(2200)).await;
    let report = repo.forget(&plan(&repo).await).await.unwrap();
    assert_eq!(report.expired, vec![a.clone()], "{report:?}");
    assert!(report.kept_locked.is_empty());
    let condemned = repo.prune(prune).await.unwrap();
    assert!(condemned.condemned_packs >= 1, "{condemned:?}");
    let freed = repo.prune(prune).await.unwrap();
    assert!(freed.deleted_packs >= 1, "{freed:?}");
    assert!(freed.deferred.is_empty(), "{freed:?}");
    restores(&repo, &b, 2).await;
    assert!(store.list("prune/").count().await == 0);
}
