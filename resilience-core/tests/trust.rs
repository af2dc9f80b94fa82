//! Trust: no acknowledged backup is ever lost, whatever the timing of pauses, lock expiry,
//! reaping and prunes, and whatever the clients' clocks say.
//!
//! A paused process is simulated by a [`PausableSink`]: while it is paused every operation of
//! the paused repository handle waits, its lock's heartbeat included, exactly as a SIGSTOP or a
//! VM pause would hold them.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use resilience_core::catalog::{BackupStatus, Catalog};
use resilience_core::error::Error;
use resilience_core::keys::KeyFileProvider;
use resilience_core::ops::prune::PruneOptions;
use resilience_core::ops::verify::VerifyOptions;
use resilience_core::repo::lock::{list_locks, LockKind, LockSettings, RepoLock};
use resilience_core::repo::{InitOptions, Repository};
use resilience_core::retention::{self, StandardPolicy};
use resilience_core::sink::{MemorySink, Sink};
use resilience_core::testing::{pseudo_random as data, MemorySource, MemoryTarget, PausableSink};
use resilience_core::time::clock::{Clock, ManualClock};

const KEY: [u8; 32] = [3; 32];

fn quick_locks(ttl: Duration) -> LockSettings {
    LockSettings {
        ttl,
        settle: Duration::from_millis(1),
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
    let opts = InitOptions {
        pack_size: 1 << 20,
        ..Default::default()
    };
    Repository::init(sink, &KeyFileProvider::from_key(KEY), opts)
        .await
        .unwrap()
}

async fn open(sink: Arc<dyn Sink>, ttl: Duration) -> Repository {
    Repository::open(sink, &KeyFileProvider::from_key(KEY))
        .await
        .unwrap()
        .with_lock_settings(quick_locks(ttl))
}

/// A memory repository holding `n` backups of source "a" (seeds 1 to `n`), its admin handle
/// and the backups' ids.
async fn repository_with_backups(n: u64) -> (Arc<MemorySink>, Repository, Vec<String>) {
    let store = Arc::new(MemorySink::new());
    let admin = init(store.clone()).await;
    let mut ids = Vec::new();
    for seed in 1..=n {
        let done = admin
            .backup(&big_source("a", seed), Default::default())
            .await
            .unwrap();
        ids.push(done.record.id);
    }
    (store, admin, ids)
}

fn big_source(id: &str, seed: u64) -> MemorySource {
    (0..6).fold(MemorySource::new(id), |s, i| {
        s.file(&format!("f{i}"), data(700 << 10, seed * 100 + i))
    })
}

async fn restores_identical(repo: &Repository, id: &str, seed: u64) {
    let target = MemoryTarget::new();
    repo.restore(id, &target, Default::default())
        .await
        .unwrap_or_else(|e| panic!("restore of {id}: {e}"));
    for i in 0..6 {
        assert_eq!(
            target.content(&format!("f{i}")).as_deref(),
            Some(&data(700 << 10, seed * 100 + i)[..]),
            "{id}: f{i}"
        );
    }
}

/// Runs backup A through a sink that pauses after the first put under `pause_after`, keeps it
/// paused past its lock's lifetime while B backs up (reaping A) and prunes twice with no grace,
/// then lets A go on. Returns A's result and the repository as B sees it.
async fn pause_a_backup_after(pause_after: &str) -> (resilience_core::Result<String>, Repository) {
    let store: Arc<dyn Sink> = Arc::new(MemorySink::new());
    init(store.clone()).await;
    let ttl = Duration::from_millis(800);
    let gate = Arc::new(PausableSink::new(store.clone()));
    let a = open(gate.clone(), ttl).await;
    let b = open(store.clone(), ttl).await;
    gate.pause_after_put_of(pause_after);
    let paused_backup = tokio::spawn(async move {
        a.backup(&big_source("a", 1), Default::default())
            .await
            .map(|r| r.record.id)
    });
    gate.paused().await;
    tokio::time::sleep(ttl * 2).await;
    let other = b
        .backup(&big_source("b", 2), Default::default())
        .await
        .unwrap();
    b.prune(prune_now()).await.unwrap();
    b.prune(prune_now()).await.unwrap();
    gate.resume();
    let a_result = paused_backup.await.unwrap();
    restores_identical(&b, &other.record.id, 2).await;
    (a_result, b)
}

/// The invariant after the pause: if A said it succeeded, it is listed succeeded and restores
/// identical after any number of prunes; if not, it failed loudly, naming the lapse, and no
/// record claims it succeeded.
async fn assert_acknowledged_or_loud(result: resilience_core::Result<String>, repo: &Repository) {
    match result {
        Ok(id) => {
            for _ in 0..3 {
                repo.prune(prune_now()).await.unwrap();
            }
            let record = repo.catalog().get(&id).await.unwrap().unwrap();
            assert_eq!(record.status, BackupStatus::Succeeded, "{record:?}");
            restores_identical(repo, &id, 1).await;
        }
        Err(e) => {
            assert!(matches!(e, Error::LockLapsed { .. }), "{e}");
            assert!(e.to_string().contains("lapsed"), "{e}");
            let records = repo.catalog().list(&Default::default()).await.unwrap();
            let a: Vec<_> = records.iter().filter(|r| r.source.id == "a").collect();
            assert_eq!(a.len(), 1, "{records:?}");
            assert_eq!(a[0].status, BackupStatus::Failed, "{:?}", a[0]);
            // The real cause is recorded, not only the reaper's guess.
            let error = a[0].error.as_deref().unwrap_or_default();
            assert!(error.contains("lapsed"), "{:?}", a[0]);
        }
    }
    let report = repo.verify(VerifyOptions { full: true }).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_paused_while_writing_packs_never_claims_lost_data() {
    let (result, repo) = pause_a_backup_after("data/").await;
    assert!(
        result.is_err(),
        "the lock lapsed before the manifest: it must fail"
    );
    assert_acknowledged_or_loud(result, &repo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_paused_after_its_manifest_never_claims_lost_data() {
    let (result, repo) = pause_a_backup_after("snapshots/").await;
    assert_acknowledged_or_loud(result, &repo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_heartbeat_marks_the_lock_lapsed() {
    let store: Arc<dyn Sink> = Arc::new(MemorySink::new());
    let slow = Arc::new(PausableSink::new(store.clone()));
    let clock: Arc<dyn Clock> = Arc::new(resilience_core::time::clock::SystemClock);
    let ttl = Duration::from_millis(400);
    let lock = RepoLock::acquire(
        slow.clone(),
        clock,
        LockKind::Shared,
        "backup",
        None,
        quick_locks(ttl),
    )
    .await
    .unwrap();
    lock.check().unwrap();
    // Every refresh now takes longer than the lock lives (a put retried for minutes).
    slow.delay_puts_of("locks/", ttl * 4);
    tokio::time::sleep(ttl * 2).await;
    let err = lock.check().unwrap_err();
    assert!(matches!(err, Error::LockLapsed { .. }), "{err}");
    // Once lapsed, always lapsed: a refresh that lands later does not bring it back.
    slow.delay_puts_of("locks/", Duration::ZERO);
    tokio::time::sleep(ttl).await;
    assert!(lock.check().is_err());
}

#[tokio::test]
async fn lock_liveness_follows_the_store_clock_not_the_clients() {
    // The store's clock, and two clients whose clocks are ten minutes apart either way.
    let store_clock = Arc::new(ManualClock::new(Utc::now()));
    let store: Arc<dyn Sink> = Arc::new(MemorySink::with_clock(store_clock.clone()));
    let behind: Arc<dyn Clock> =
        Arc::new(ManualClock::new(Utc::now() - chrono::Duration::minutes(10)));
    let ahead: Arc<dyn Clock> =
        Arc::new(ManualClock::new(Utc::now() + chrono::Duration::minutes(10)));
    let settings = quick_locks(Duration::from_secs(60));
    let held = RepoLock::acquire(
        store.clone(),
        behind.clone(),
        LockKind::Maintenance,
        "prune",
        None,
        settings,
    )
    .await
    .unwrap();
    // The client ahead sees the lock of the client behind as long expired by its own clock:
    // it must still find it live, and be refused.
    let refused = RepoLock::acquire(
        store.clone(),
        ahead.clone(),
        LockKind::Maintenance,
        "prune",
        None,
        settings,
    )
    .await
    .unwrap_err();
    assert!(matches!(refused, Error::Locked { .. }), "{refused}");
    // Once the store's time has moved past the lock's life without a heartbeat, it is dead
    // for a client whose clock is behind, too.
    std::mem::forget(held);
    store_clock.advance(chrono::Duration::seconds(61));
    let taken = RepoLock::acquire(
        store.clone(),
        behind.clone(),
        LockKind::Maintenance,
        "prune",
        None,
        settings,
    )
    .await
    .unwrap();
    let listing = list_locks(store.as_ref()).await.unwrap();
    let live: Vec<_> = listing
        .live_others(None, ahead.now())
        .map(|l| l.key.clone())
        .collect();
    assert_eq!(live, vec![taken.key().to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_exclusive_takers_never_both_hold_and_one_gets_through() {
    let rounds = std::env::var("RESILIENCE_LOCK_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let clock: Arc<dyn Clock> = Arc::new(resilience_core::time::clock::SystemClock);
    let mut won = 0;
    for round in 0..rounds {
        let store: Arc<dyn Sink> = Arc::new(MemorySink::new());
        let holders = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let settings = LockSettings {
            ttl: Duration::from_secs(60),
            settle: Duration::from_millis(2),
            wait: Duration::from_secs(5),
        };
        let takers = (0..3).map(|_| {
            let (store, clock, holders) = (store.clone(), clock.clone(), holders.clone());
            tokio::spawn(async move {
                let lock =
                    RepoLock::acquire(store, clock, LockKind::Exclusive, "x", None, settings)
                        .await?;
                let inside = holders.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::task::yield_now().await;
                holders.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                lock.release().await?;
                Ok::<usize, Error>(inside)
            })
        });
        for taker in futures::future::join_all(takers).await {
            // Each either held it alone or was refused; with a wait, all three get through.
            let inside = taker
                .unwrap()
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!(inside, 0, "round {round}: two exclusive holders at once");
            won += 1;
        }
    }
    assert_eq!(won, rounds * 3);
}

#[tokio::test]
async fn a_status_is_decided_by_rank_not_by_listing_order() {
    let store: Arc<dyn Sink> = Arc::new(MemorySink::new());
    let repo = init(store.clone()).await;
    let done = repo
        .backup(&big_source("a", 1), Default::default())
        .await
        .unwrap();
    let catalog = repo.catalog();
    // A reaper's `failed` of the backup's own success revision: `…-failed` lists first.
    let mut reaped = done.record.clone();
    reaped.status = BackupStatus::Failed;
    catalog.put(&reaped).await.unwrap();
    let current = catalog.get(&done.record.id).await.unwrap().unwrap();
    assert_eq!(current.status, BackupStatus::Succeeded);
    restores_identical(&repo, &done.record.id, 1).await;
}

#[tokio::test]
async fn prune_follows_manifests_not_catalog_labels() {
    let store: Arc<dyn Sink> = Arc::new(MemorySink::new());
    let repo = init(store.clone()).await;
    let done = repo
        .backup(&big_source("a", 1), Default::default())
        .await
        .unwrap();
    // A later revision that calls it failed, as a wrong reaper or a forger might write.
    let mut wrong = done.record.clone();
    wrong.revision += 1;
    wrong.status = BackupStatus::Failed;
    repo.catalog().put(&wrong).await.unwrap();
    for _ in 0..3 {
        repo.prune(prune_now()).await.unwrap();
    }
    // Its data is all there: set right, it restores identical.
    let mut right = wrong.clone();
    right.revision += 1;
    right.status = BackupStatus::Succeeded;
    repo.catalog().put(&right).await.unwrap();
    restores_identical(&repo, &done.record.id, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legal_hold_racing_forget_is_never_lost() {
    let store: Arc<dyn Sink> = Arc::new(MemorySink::new());
    init(store.clone()).await;
    let gate = Arc::new(PausableSink::new(store.clone()));
    let admin = open(gate.clone(), Duration::from_secs(60)).await;
    let waiter = Arc::new(PausableSink::new(store.clone()));
    let user = open(waiter.clone(), Duration::from_secs(60)).await;
    let old = admin
        .backup(&big_source("a", 1), Default::default())
        .await
        .unwrap();
    admin
        .backup(&big_source("a", 2), Default::default())
        .await
        .unwrap();
    let records = admin.catalog().list(&Default::default()).await.unwrap();
    let plan = retention::plan(
        &StandardPolicy::from_toml("keep_last = 1").unwrap(),
        &records,
        Utc::now(),
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
        // An acknowledged hold is in force: the backup was not expired, its data stays.
        Ok(_) => {
            assert!(now.legal_hold, "{now:?}");
            assert_ne!(now.status, BackupStatus::Expired, "{now:?} {forgot:?}");
            user.prune(prune_now()).await.unwrap();
            user.prune(prune_now()).await.unwrap();
            restores_identical(&user, &old.record.id, 1).await;
        }
        // Or the hold was refused, saying why, after the expiry.
        Err(e) => {
            assert_eq!(now.status, BackupStatus::Expired, "{e}");
            assert!(e.to_string().contains("expired"), "{e}");
        }
    }
}

#[tokio::test]
async fn forged_failed_and_expired_revisions_never_make_maintenance_delete_data() {
    let (store, admin, ids) = repository_with_backups(3).await;
    // A stolen backup host: append-only, with the repository key. It cannot delete or
    // overwrite, but it can add revisions that call every backup failed or expired.
    let writer_sink: Arc<dyn Sink> =
        Arc::new(resilience_core::sink::AppendOnlySink::new(store.clone()));
    let writer = open(writer_sink, Duration::from_secs(60)).await;
    for (i, id) in ids.iter().enumerate() {
        let mut forged = writer.catalog().get(id).await.unwrap().unwrap();
        forged.revision = 999_999_999 - i as u32;
        forged.status = if i % 2 == 0 {
            BackupStatus::Expired
        } else {
            BackupStatus::Failed
        };
        writer.catalog().put(&forged).await.unwrap();
    }
    // Two rounds of maintenance, as an operator would run them.
    let policy = StandardPolicy::from_toml("keep_last = 1").unwrap();
    for _ in 0..2 {
        let records = admin.catalog().list(&Default::default()).await.unwrap();
        let report = admin
            .forget(&retention::plan(&policy, &records, Utc::now()))
            .await
            .unwrap();
        for id in &ids {
            assert!(
                report.manifests_left.contains(id) || report.expired.is_empty(),
                "{id}: {report:?}"
            );
        }
        admin.prune(prune_now()).await.unwrap();
        admin.prune(prune_now()).await.unwrap();
    }
    // Every snapshot taken before the forgery is still there: set right, each restores.
    for (seed, id) in (1..=3).zip(&ids) {
        let mut right = admin.catalog().get(id).await.unwrap().unwrap();
        right.revision += 1;
        right.status = BackupStatus::Succeeded;
        admin.catalog().put(&right).await.unwrap();
        restores_identical(&admin, id, seed).await;
    }
}

#[tokio::test]
async fn a_damaged_catalog_revision_falls_back_to_the_newest_intact_one() {
    let store = Arc::new(MemorySink::new());
    let repo = init(store.clone()).await;
    let done = repo
        .backup(&big_source("a", 1), Default::default())
        .await
        .unwrap();
    let held = repo.set_legal_hold(&done.record.id, true).await.unwrap();
    let current = format!("catalog/{}/{:010}-succeeded", done.record.id, held.revision);
    let mut bytes = store.get(&current).await.unwrap().to_vec();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    store.tamper(&current, bytes.into());
    // The record still reads (from the revision before), the snapshot still lists and
    // restores, and verify still checks it.
    // It says what the revision before said (no hold), numbered as the damaged revision so
    // that the next revision comes after it.
    let record = repo.catalog().get(&done.record.id).await.unwrap().unwrap();
    assert!(!record.legal_hold, "{record:?}");
    assert_eq!(record.revision, held.revision);
    assert_eq!(record.status, BackupStatus::Succeeded);
    let all = repo.catalog().list(&Default::default()).await.unwrap();
    assert_eq!(all.len(), 1);
    restores_identical(&repo, "latest", 1).await;
    let report = repo.verify(VerifyOptions::default()).await.unwrap();
    assert_eq!(report.snapshots_checked, 1);
    assert_eq!(report.damaged.len(), 1, "{:?}", report.damaged);
    assert_eq!(report.damaged[0].object, current);
    assert!(report.damaged[0].affected_snapshots.is_empty());
    // The next revision supersedes the damaged one (it used to collide with it).
    let again = repo.set_legal_hold(&done.record.id, true).await.unwrap();
    assert_eq!(again.revision, held.revision + 1);
    assert!(
        repo.catalog()
            .get(&done.record.id)
            .await
            .unwrap()
            .unwrap()
            .legal_hold
    );
    assert!(repo.verify(VerifyOptions::default()).await.unwrap().is_ok());
}

/// A stolen backup host (append-only, holding the repository key) writes a new key-set
/// generation sealed to every copy's public key, holding keys of its own, plus a copy for its
/// own key file, a garbage generation after it and a forged one numbered below the one in
/// force. The repository still opens with the real
/// keys and restores; the forged copy does not open; the next change of keys removes them.
#[tokio::test]
async fn a_forged_key_set_generation_never_comes_into_force() {
    use resilience_core::internals::crypto::KeySet;
    use resilience_core::keys::ring::{self as keyring, keyset_name, CopyState};
    use resilience_core::sink::{AppendOnlySink, PutMode};

    let store = Arc::new(MemorySink::new());
    let dyn_store: Arc<dyn Sink> = store.clone();
    let admin = init(dyn_store.clone()).await;
    let id = admin
        .backup(&big_source("a", 1), Default::default())
        .await
        .unwrap()
        .record
        .id;

    let writer_sink: Arc<dyn Sink> = Arc::new(AppendOnlySink::new(store.clone()));
    let writer = open(writer_sink.clone(), Duration::from_secs(60)).await;
    let ring = writer.key_ring().await.unwrap();
    let in_force = ring.in_force().unwrap().unwrap().generation;
    let thief = KeyFileProvider::from_key([9; 32]);
    let (thief_copy, _) = keyring::new_copy(&thief, Utc::now()).await.unwrap();
    let mut copy_bytes = serde_json::to_vec(&thief_copy).unwrap();
    resilience_core::internals::object::append_checksum(&mut copy_bytes);
    writer_sink
        .put(
            &thief_copy.object_name(),
            copy_bytes.into(),
            PutMode::Create,
        )
        .await
        .unwrap();
    let mut recipients: Vec<_> = ring.copies.iter().collect();
    recipients.push(&thief_copy);
    let forged =
        keyring::seal_generation(&KeySet::generate(), in_force + 1, &recipients, Utc::now())
            .unwrap();
    writer_sink
        .put(
            &keyset_name(in_force + 1),
            keyring::encode_keyset_object(&forged).into(),
            PutMode::Create,
        )
        .await
        .unwrap();
    writer_sink
        .put(
            &keyset_name(in_force + 2),
            b"garbage".to_vec().into(),
            PutMode::Create,
        )
        .await
        .unwrap();
    // And one numbered below the generation in force (a free name once older ones are gone).
    let below = keyring::seal_generation(&KeySet::generate(), 0, &recipients, Utc::now()).unwrap();
    writer_sink
        .put(
            &keyset_name(0),
            keyring::encode_keyset_object(&below).into(),
            PutMode::Create,
        )
        .await
        .unwrap();

    // Readers keep the generation in force; the forged one is named, not used.
    let reader = open(dyn_store.clone(), Duration::from_secs(60)).await;
    restores_identical(&reader, &id, 1).await;
    let ring = reader.key_ring().await.unwrap();
    assert_eq!(ring.in_force().unwrap().unwrap().generation, in_force);
    assert_eq!(
        ring.not_in_force(),
        [
            keyset_name(in_force + 1),
            keyset_name(in_force + 2),
            keyset_name(0)
        ]
    );
    assert!(
        Repository::open(dyn_store.clone(), &thief).await.is_err(),
        "the thief's copy must not open the repository"
    );
    // A backup made after the forgery is sealed with the real keys and restores.
    let after = reader
        .backup(&big_source("a", 2), Default::default())
        .await
        .unwrap()
        .record
        .id;

    // The next change of keys by maintenance removes what the writer made.
    let second = KeyFileProvider::from_key([5; 32]);
    admin.add_key(&second).await.unwrap();
    let ring = admin.key_ring().await.unwrap();
    assert!(ring.not_in_force().is_empty(), "{:?}", ring.not_in_force());
    assert_eq!(
        ring.in_force().unwrap().unwrap().generation,
        in_force + 3,
        "numbered after every generation present"
    );
    assert_eq!(
        ring.copies
            .iter()
            .filter(|c| ring.state(c) == CopyState::Active)
            .count(),
        2,
        "the real copy and the new one, not the thief's"
    );
    for key in [KeyFileProvider::from_key(KEY), second] {
        let repo = Repository::open(dyn_store.clone(), &key).await.unwrap();
        restores_identical(&repo, &id, 1).await;
        restores_identical(&repo, &after, 2).await;
    }
    assert!(Repository::open(dyn_store.clone(), &thief).await.is_err());
}

/// A stolen backup host indexes a pack that sorts before the real ones and claims blobs they
/// hold, with garbage in it. Two rounds of prune keep the real copies (and drop the forged
/// pack); every snapshot restores identical.
#[tokio::test]
async fn a_forged_pack_claiming_existing_blobs_never_makes_prune_drop_the_real_copies() {
    use resilience_core::internals::pack::{pack_key, PackBuilder};
    use resilience_core::sink::{AppendOnlySink, PutMode};

    let (store, admin, ids) = repository_with_backups(2).await;
    let dyn_store: Arc<dyn Sink> = store.clone();
    let writer_sink: Arc<dyn Sink> = Arc::new(AppendOnlySink::new(store.clone()));
    let writer = open(writer_sink.clone(), Duration::from_secs(60)).await;
    let mut real = Vec::new();
    let listed: Vec<_> = {
        use futures::TryStreamExt;
        store.list("data/").try_collect().await.unwrap()
    };
    for meta in &listed {
        real.push(writer.read_pack_table(&meta.key, meta.size).await.unwrap());
    }
    let first_real = real.iter().map(|p| p.id).min().unwrap();
    let claimed: Vec<_> = real.iter().flat_map(|p| p.blobs.clone()).collect();
    // Grind a pack id that sorts before every real pack (one byte of prefix: ~256 tries).
    let (forged_id, bytes, blobs) = (0u64..)
        .map(|salt| {
            let mut b = PackBuilder::new(writer.keys().current_key_id(), 1 << 16);
            for (i, blob) in claimed.iter().enumerate() {
                let garbage = data(64, salt * 1_000_000 + i as u64);
                b.add(blob.id, blob.kind, blob.raw_len, &garbage);
            }
            b.finish(&writer.keys())
        })
        .find(|(id, _, _)| *id < first_real)
        .unwrap();
    writer_sink
        .put(&pack_key(&forged_id), bytes.clone(), PutMode::Create)
        .await
        .unwrap();
    writer
        .write_index(&[resilience_core::internals::index::PackRecord {
            id: forged_id,
            size: bytes.len() as u64,
            key_id: writer.keys().current_key_id(),
            blobs,
        }])
        .await
        .unwrap();

    for _ in 0..2 {
        admin.prune(prune_now()).await.unwrap();
        admin.prune(prune_now()).await.unwrap();
    }
    for meta in &listed {
        assert!(
            store.get(&meta.key).await.is_ok(),
            "{} (a real pack) was deleted",
            meta.key
        );
    }
    assert!(
        store.get(&pack_key(&forged_id)).await.is_err(),
        "the forged pack holds no authentic live blob: prune collects it"
    );
    let reader = open(dyn_store, Duration::from_secs(60)).await;
    for (seed, id) in (1..=2).zip(&ids) {
        restores_identical(&reader, id, seed).await;
    }
}

/// A stolen backup host adds a revision that lifts a legal hold, and one that moves another
/// backup a month back (so a retention rule would expire it). Two rounds of maintenance keep
/// both; only a release by maintenance lets the held one go.
#[tokio::test]
async fn forged_hold_releases_and_relabels_never_make_forget_expire_a_backup() {
    use resilience_core::sink::AppendOnlySink;

    let (store, admin, ids) = repository_with_backups(3).await;
    admin.set_legal_hold(&ids[0], true).await.unwrap();

    let writer_sink: Arc<dyn Sink> = Arc::new(AppendOnlySink::new(store.clone()));
    let writer = open(writer_sink, Duration::from_secs(60)).await;
    let mut released = writer.catalog().get(&ids[0]).await.unwrap().unwrap();
    released.revision += 1;
    released.legal_hold = false;
    writer.catalog().put(&released).await.unwrap();
    let mut moved = writer.catalog().get(&ids[2]).await.unwrap().unwrap();
    moved.revision += 1;
    moved.started_at -= chrono::Duration::days(30);
    moved.finished_at = moved.finished_at.map(|t| t - chrono::Duration::days(30));
    writer.catalog().put(&moved).await.unwrap();
    // Nor can the writer release the hold through the library: it cannot delete.
    let refused = writer.set_legal_hold(&ids[0], false).await.unwrap_err();
    assert!(refused.to_string().contains("stays in force"), "{refused}");

    let policy = StandardPolicy::from_toml("keep_last = 1").unwrap();
    for round in 0..2 {
        let records = admin.catalog().list(&Default::default()).await.unwrap();
        let plan = retention::plan(&policy, &records, Utc::now());
        let report = admin.forget(&plan).await.unwrap();
        assert!(report.expired.is_empty(), "round {round}: {report:?}");
        assert_eq!(report.kept_held, [ids[0].clone()], "round {round}");
        assert_eq!(report.kept_disagreeing, [ids[2].clone()], "round {round}");
        admin.prune(prune_now()).await.unwrap();
        admin.prune(prune_now()).await.unwrap();
    }
    for (seed, id) in (1..=3).zip(&ids) {
        restores_identical(&admin, id, seed).await;
    }

    // Maintenance releases the hold: the revisions placing it go, and forget expires it.
    admin.set_legal_hold(&ids[0], false).await.unwrap();
    assert!(admin
        .catalog()
        .hold_revisions(&ids[0])
        .await
        .unwrap()
        .is_empty());
    let records = admin.catalog().list(&Default::default()).await.unwrap();
    let report = admin
        .forget(&retention::plan(&policy, &records, Utc::now()))
        .await
        .unwrap();
    assert_eq!(report.expired, [ids[0].clone()], "{report:?}");
}

/// A verification record written while forget runs (forget held up just before it deletes the
/// manifest) is neither lost nor brings `succeeded` back over `expired`: the catalog lock makes
/// it wait, and it then records itself on the expired record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verification_racing_forget_is_kept_and_never_revives_the_backup() {
    let store: Arc<dyn Sink> = Arc::new(MemorySink::new());
    init(store.clone()).await;
    let gate = Arc::new(PausableSink::new(store.clone()));
    let admin = open(gate.clone(), Duration::from_secs(60)).await;
    let waiter = Arc::new(PausableSink::new(store.clone()));
    let verifier = open(waiter.clone(), Duration::from_secs(60)).await;
    let onlooker = open(store.clone(), Duration::from_secs(60)).await;
    let old = admin
        .backup(&big_source("a", 1), Default::default())
        .await
        .unwrap();
    admin
        .backup(&big_source("a", 2), Default::default())
        .await
        .unwrap();
    // The verification ran before forget (it read the record as succeeded) and is recorded now.
    let report = verifier.verify(VerifyOptions::default()).await.unwrap();
    assert!(report.checked_ids.contains(&old.record.id));
    let records = admin.catalog().list(&Default::default()).await.unwrap();
    let plan = retention::plan(
        &StandardPolicy::from_toml("keep_last = 1").unwrap(),
        &records,
        Utc::now(),
    );
    gate.pause_before_delete_of("snapshots/");
    let forget = tokio::spawn(async move { admin.forget(&plan).await });
    gate.paused().await;
    // Recording tries the catalog lock that forget holds: refused, it pauses just before it
    // takes its attempt back (and would wait for forget), having recorded nothing.
    waiter.pause_before_delete_of("locks/");
    let record = tokio::spawn({
        let verifier = verifier.clone();
        async move { verifier.record_verification(&report).await }
    });
    waiter
        .until_paused("the verification to try the catalog lock")
        .await;
    assert_eq!(
        resilience_core::testing::catalog_lock_purposes(store.as_ref()).await,
        ["forget", "verification"],
        "the verification's attempt at the catalog lock beside forget's"
    );
    let meanwhile = onlooker
        .catalog()
        .get(&old.record.id)
        .await
        .unwrap()
        .unwrap();
    assert!(
        meanwhile.verifications.is_empty() && meanwhile.status == BackupStatus::Succeeded,
        "it must wait for the catalog lock: {meanwhile:?}"
    );
    assert!(!record.is_finished(), "it must wait for the catalog lock");
    waiter.resume();
    gate.resume();
    let forgot = forget.await.unwrap().unwrap();
    assert_eq!(forgot.expired, std::slice::from_ref(&old.record.id));
    record.await.unwrap().unwrap();
    let now = verifier
        .catalog()
        .get(&old.record.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(now.status, BackupStatus::Expired, "{now:?}");
    assert!(
        !now.verifications.is_empty(),
        "the verification was lost: {now:?}"
    );
}
