//! Trust against a real S3 server (Garage, started by `scripts/test`): the invariants of
//! `resilience-core/tests/trust.rs` that depend on the store's behaviour, run through the S3
//! sink. Garage ignores `If-None-Match` (create-only puts are not enforced) and its clock is
//! the one lock liveness follows, so what the in-memory store proves must hold here too:
//!
//! - a backup paused past its lock's lifetime while another backs up and prunes twice either
//!   fails loudly or is listed succeeded and restores identical after more prunes;
//! - racing exclusive lock takers never both hold the lock (`RESILIENCE_LOCK_ROUNDS` rounds,
//!   50 by default);
//! - a legal hold racing `forget` is either in force (the data stays) or refused after the
//!   expiry;
//! - a damaged pack or index file never makes a restore return wrong bytes.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use futures::TryStreamExt;
use resilience_core::catalog::{BackupStatus, Catalog};
use resilience_core::error::Error;
use resilience_core::keys::KeyFileProvider;
use resilience_core::ops::prune::PruneOptions;
use resilience_core::ops::repair::RepairIndexOptions;
use resilience_core::ops::verify::VerifyOptions;
use resilience_core::repo::lock::{LockKind, LockSettings, RepoLock};
use resilience_core::repo::{InitOptions, Repository};
use resilience_core::retention::{self, StandardPolicy};
use resilience_core::sink::{PutMode, Sink};
use resilience_core::testing::{pseudo_random as data, MemorySource, MemoryTarget, PausableSink};
use resilience_core::time::clock::{Clock, SystemClock};
use resilience_objstore::open_sink;

const KEY: [u8; 32] = [5; 32];

/// A fresh, empty prefix of the test bucket.
fn garage(name: &str) -> Arc<dyn Sink> {
    open_sink(&common::garage_url(name)).unwrap()
}

fn locks(ttl: Duration) -> LockSettings {
    LockSettings {
        ttl,
        settle: Duration::from_millis(20),
        wait: Duration::ZERO,
    }
}

fn prune_now() -> PruneOptions {
    PruneOptions {
        grace: Duration::ZERO,
        ..Default::default()
    }
}

async fn init(sink: Arc<dyn Sink>) -> Repository {
    let options = InitOptions {
        pack_size: 1 << 20,
        ..Default::default()
    };
    Repository::init(sink, &KeyFileProvider::from_key(KEY), options)
        .await
        .unwrap()
}

async fn open(sink: Arc<dyn Sink>, ttl: Duration) -> Repository {
    Repository::open(sink, &KeyFileProvider::from_key(KEY))
        .await
        .unwrap()
        .with_lock_settings(locks(ttl))
}

fn source(id: &str, seed: u64) -> MemorySource {
    (0..4).fold(MemorySource::new(id), |s, i| {
        s.file(&format!("f{i}"), data(600 << 10, seed * 100 + i))
    })
}

/// Restores `id`: every file identical, or an error. Never wrong bytes.
async fn restore(repo: &Repository, id: &str, seed: u64) -> resilience_core::Result<()> {
    let target = MemoryTarget::new();
    repo.restore(id, &target, Default::default()).await?;
    for i in 0..4 {
        assert!(
            target.content(&format!("f{i}")).as_deref()
                == Some(&data(600 << 10, seed * 100 + i)[..]),
            "WRONG BYTES: {id} restored Ok with f{i} different"
        );
    }
    Ok(())
}

async fn restores_identical(repo: &Repository, id: &str, seed: u64) {
    restore(repo, id, seed)
        .await
        .unwrap_or_else(|e| panic!("restore of {id}: {e}"));
}

/// Backup A pauses after its first put under `pause_after`, stays paused past its lock's
/// lifetime while B backs up and prunes twice with no grace, then goes on. Returns A's result
/// and B's repository.
async fn pause_a_backup_after(
    name: &str,
    pause_after: &str,
) -> (resilience_core::Result<String>, Repository) {
    let store = garage(name);
    init(store.clone()).await;
    let ttl = Duration::from_secs(2);
    let gate = Arc::new(PausableSink::new(store.clone()));
    let a = open(gate.clone(), ttl).await;
    let b = open(store.clone(), ttl).await;
    gate.pause_after_put_of(pause_after);
    let paused = tokio::spawn(async move {
        a.backup(&source("a", 1), Default::default())
            .await
            .map(|r| r.record.id)
    });
    gate.paused().await;
    tokio::time::sleep(ttl * 2).await;
    let other = b.backup(&source("b", 2), Default::default()).await.unwrap();
    b.prune(prune_now()).await.unwrap();
    b.prune(prune_now()).await.unwrap();
    gate.resume();
    let result = paused.await.unwrap();
    restores_identical(&b, &other.record.id, 2).await;
    (result, b)
}

/// Exit 0 is a promise: if A said it succeeded, it is listed succeeded and restores identical
/// after more prunes; if not, it failed naming the lapse and no record claims it succeeded.
async fn assert_acknowledged_or_loud(result: resilience_core::Result<String>, repo: &Repository) {
    match result {
        Ok(id) => {
            for _ in 0..2 {
                repo.prune(prune_now()).await.unwrap();
            }
            let record = repo.catalog().get(&id).await.unwrap().unwrap();
            assert_eq!(record.status, BackupStatus::Succeeded, "{record:?}");
            restores_identical(repo, &id, 1).await;
        }
        Err(e) => {
            assert!(matches!(e, Error::LockLapsed { .. }), "{e}");
            let records = repo.catalog().list(&Default::default()).await.unwrap();
            let a: Vec<_> = records.iter().filter(|r| r.source.id == "a").collect();
            assert_eq!(a.len(), 1, "{records:?}");
            assert_eq!(a[0].status, BackupStatus::Failed, "{:?}", a[0]);
            assert!(
                a[0].error.as_deref().unwrap_or_default().contains("lapsed"),
                "{:?}",
                a[0]
            );
        }
    }
    let report = repo.verify(VerifyOptions { full: true }).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.damaged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garage_a_backup_paused_while_writing_packs_never_claims_lost_data() {
    let (result, repo) = pause_a_backup_after("trust-paused-packs", "data/").await;
    assert!(
        result.is_err(),
        "the lock lapsed before the manifest: it must fail"
    );
    assert_acknowledged_or_loud(result, &repo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garage_a_backup_paused_after_its_manifest_never_claims_lost_data() {
    let (result, repo) = pause_a_backup_after("trust-paused-manifest", "snapshots/").await;
    assert_acknowledged_or_loud(result, &repo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garage_racing_exclusive_takers_never_both_hold_and_one_gets_through() {
    let rounds: usize = std::env::var("RESILIENCE_LOCK_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = garage("trust-lock-race");
    let mut through = 0;
    for round in 0..rounds {
        let holders = Arc::new(AtomicUsize::new(0));
        let settings = LockSettings {
            ttl: Duration::from_secs(60),
            settle: Duration::from_millis(20),
            wait: Duration::from_secs(30),
        };
        let takers = (0..3).map(|_| {
            let (store, clock, holders) = (store.clone(), clock.clone(), holders.clone());
            tokio::spawn(async move {
                let lock =
                    RepoLock::acquire(store, clock, LockKind::Exclusive, "x", None, settings)
                        .await?;
                let inside = holders.fetch_add(1, Ordering::SeqCst);
                // Hold it across a store round trip, so an overlap has time to show.
                tokio::time::sleep(Duration::from_millis(5)).await;
                holders.fetch_sub(1, Ordering::SeqCst);
                lock.release().await?;
                Ok::<usize, Error>(inside)
            })
        });
        for taker in futures::future::join_all(takers).await {
            let inside = taker
                .unwrap()
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!(inside, 0, "round {round}: two exclusive holders at once");
            through += 1;
        }
        let left: Vec<String> = store
            .list("locks/")
            .map_ok(|m| m.key)
            .try_collect()
            .await
            .unwrap();
        assert!(
            left.is_empty(),
            "round {round}: locks left behind: {left:?}"
        );
    }
    assert_eq!(through, rounds * 3);
    println!("{rounds} rounds of three exclusive takers against Garage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garage_a_legal_hold_racing_forget_is_never_lost() {
    let store = garage("trust-hold-forget");
    init(store.clone()).await;
    let gate = Arc::new(PausableSink::new(store.clone()));
    let admin = open(gate.clone(), Duration::from_secs(60)).await;
    let waiter = Arc::new(PausableSink::new(store.clone()));
    let user = open(waiter.clone(), Duration::from_secs(60)).await;
    let old = admin
        .backup(&source("a", 1), Default::default())
        .await
        .unwrap();
    admin
        .backup(&source("a", 2), Default::default())
        .await
        .unwrap();
    let records = admin.catalog().list(&Default::default()).await.unwrap();
    let plan = retention::plan(
        &StandardPolicy::from_toml("keep_last = 1").unwrap(),
        &records,
        Utc::now(),
    );
    assert_eq!(
        plan.get(&old.record.id).map(|d| d.action),
        Some(retention::Action::Delete),
        "{plan:?}"
    );
    // Forget reads the old record (no hold yet), then is held up just before it deletes the
    // manifest; the hold is asked for in between.
    gate.pause_before_delete_of("snapshots/");
    let forget = tokio::spawn(async move { admin.forget(&plan).await });
    gate.paused().await;
    // The hold then tries the catalog lock that forget holds: refused, it pauses just before it
    // takes its attempt back (and would wait for forget).
    waiter.pause_before_delete_of("locks/");
    let hold = tokio::spawn({
        let user = user.clone();
        let id = old.record.id.clone();
        async move { user.set_legal_hold(&id, true).await }
    });
    waiter
        .until_paused("the legal hold to try the catalog lock")
        .await;
    assert_eq!(
        resilience_core::testing::catalog_lock_purposes(store.as_ref()).await,
        ["forget", "legal hold"],
        "the hold's attempt at the catalog lock beside forget's"
    );
    waiter.resume();
    gate.resume();
    let forgot = forget.await.unwrap();
    let held = hold.await.unwrap();
    let now = user.catalog().get(&old.record.id).await.unwrap().unwrap();
    match held {
        Ok(_) => {
            assert!(now.legal_hold, "{now:?}");
            assert_ne!(now.status, BackupStatus::Expired, "{now:?} {forgot:?}");
            user.prune(prune_now()).await.unwrap();
            user.prune(prune_now()).await.unwrap();
            restores_identical(&user, &old.record.id, 1).await;
        }
        Err(e) => {
            assert_eq!(now.status, BackupStatus::Expired, "{e}");
            assert!(e.to_string().contains("expired"), "{e}");
        }
    }
}

/// Overwrites `key` on the store with `bytes` (Garage has no tamper hook: a plain put).
async fn tamper(store: &dyn Sink, key: &str, bytes: Vec<u8>) {
    store
        .put(key, Bytes::from(bytes), PutMode::Overwrite)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garage_a_damaged_pack_or_index_file_never_restores_wrong_bytes() {
    let store = garage("trust-damage");
    let repo = init(store.clone()).await;
    let mut ids = Vec::new();
    for seed in 1..=2 {
        ids.push((
            repo.backup(&source("a", seed), Default::default())
                .await
                .unwrap()
                .record
                .id,
            seed,
        ));
    }
    let list = |prefix: &'static str| {
        let store = store.clone();
        async move {
            let mut k: Vec<String> = store
                .list(prefix)
                .map_ok(|m| m.key)
                .try_collect()
                .await
                .unwrap();
            k.sort();
            k
        }
    };

    // An index file with a byte flipped: derived state, every snapshot restores identical.
    let index_file = list("index/").await.remove(0);
    let mut bytes = store.get(&index_file).await.unwrap().to_vec();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    tamper(store.as_ref(), &index_file, bytes).await;
    let reopened = open(store.clone(), Duration::from_secs(60)).await;
    for (id, seed) in &ids {
        restores_identical(&reopened, id, *seed).await;
    }
    let report = reopened.verify(VerifyOptions::default()).await.unwrap();
    assert_eq!(report.damaged.len(), 1, "{:?}", report.damaged);
    assert_eq!(report.damaged[0].object, index_file);
    assert!(report.damaged[0].affected_snapshots.is_empty());
    reopened
        .repair_index(RepairIndexOptions::default())
        .await
        .unwrap();
    assert!(reopened
        .verify(VerifyOptions::default())
        .await
        .unwrap()
        .is_ok());

    // A pack with a byte flipped in its blobs: each restore is identical or names the pack.
    let pack = list("data/").await.remove(0);
    let mut bytes = store.get(&pack).await.unwrap().to_vec();
    let at = bytes.len() / 3;
    bytes[at] ^= 0x01;
    tamper(store.as_ref(), &pack, bytes).await;
    let report = reopened.verify(VerifyOptions { full: true }).await.unwrap();
    let named: Vec<_> = report.damaged.iter().map(|d| d.object.clone()).collect();
    assert_eq!(named, vec![pack.clone()], "{:?}", report.damaged);
    let mut failed = 0;
    for (id, seed) in &ids {
        if let Err(e) = restore(&reopened, id, *seed).await {
            assert!(e.to_string().contains(&pack), "{id}: {e}");
            assert!(
                report.damaged[0].affected_snapshots.contains(id),
                "{id} failed but verify did not call it affected: {:?}",
                report.damaged
            );
            failed += 1;
        }
    }
    assert!(
        failed >= 1,
        "a flipped byte in a blob must fail some restore"
    );
}
