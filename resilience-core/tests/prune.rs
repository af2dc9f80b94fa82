//! Prune: frees garbage in two phases, never removes what a finished snapshot needs — also when
//! a backup races it — and survives being interrupted.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use resilience_core::catalog::{BackupStatus, Catalog, CatalogQuery};
use resilience_core::keys::KeyFileProvider;
use resilience_core::ops::prune::PruneOptions;
use resilience_core::ops::verify::VerifyOptions;
use resilience_core::repo::lock::LockSettings;
use resilience_core::repo::{InitOptions, Repository};
use resilience_core::retention::{self, StandardPolicy};
use resilience_core::sink::{MemorySink, Sink};
use resilience_core::source::entry::EntryMeta;
use resilience_core::source::{
    AdapterError, Source, SourceDescriptor, SourceEntry, SourceMetadata, SourceSession,
};
use resilience_core::testing::{pseudo_random as data, FaultySink, MemorySource, MemoryTarget};
use resilience_core::BackupReport;

fn now_prune() -> PruneOptions {
    PruneOptions {
        grace: Duration::ZERO,
        ..Default::default()
    }
}

async fn repo_on(sink: Arc<dyn Sink>) -> Repository {
    let opts = InitOptions {
        pack_size: 1 << 20,
        ..Default::default()
    };
    Repository::init(sink, &KeyFileProvider::from_key([1; 32]), opts)
        .await
        .unwrap()
        .with_lock_settings(LockSettings {
            settle: Duration::from_millis(1),
            ..Default::default()
        })
}

async fn data_bytes(sink: &dyn Sink) -> u64 {
    sink.list("data/")
        .map_ok(|m| m.size)
        .try_fold(0, |a, b| async move { Ok(a + b) })
        .await
        .unwrap()
}

async fn forget_all_but_last(repo: &Repository) {
    let records = repo.catalog().list(&CatalogQuery::default()).await.unwrap();
    let policy = StandardPolicy::from_toml("keep_last = 1").unwrap();
    let plan = retention::plan(&policy, &records, chrono::Utc::now());
    repo.forget(&plan).await.unwrap();
}

#[tokio::test]
async fn forgotten_data_is_freed_in_two_phases_and_kept_data_stays_restorable() {
    let mem = Arc::new(MemorySink::new());
    let repo = repo_on(mem.clone()).await;
    repo.backup(
        &MemorySource::new("s").file("a", data(6 << 20, 1)),
        Default::default(),
    )
    .await
    .unwrap();
    let keep = data(3 << 20, 2);
    repo.backup(
        &MemorySource::new("s").file("b", keep.clone()),
        Default::default(),
    )
    .await
    .unwrap();
    let before = data_bytes(mem.as_ref()).await;
    forget_all_but_last(&repo).await;
    let expired = repo
        .catalog()
        .list(&CatalogQuery {
            statuses: vec![BackupStatus::Expired],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(expired.len(), 1);

    let dry = repo
        .prune(PruneOptions {
            dry_run: true,
            ..now_prune()
        })
        .await
        .unwrap();
    assert!(dry.condemned_packs > 0);
    assert_eq!(
        data_bytes(mem.as_ref()).await,
        before,
        "a dry run deletes nothing"
    );

    let first = repo.prune(now_prune()).await.unwrap();
    assert!(first.condemned_packs > 0);
    assert_eq!(first.deleted_packs, 0, "phase 1 deletes nothing");
    assert!(repo
        .verify(VerifyOptions { full: true })
        .await
        .unwrap()
        .is_ok());
    let second = repo.prune(now_prune()).await.unwrap();
    assert_eq!(second.deleted_packs, first.condemned_packs);
    assert!(second.freed_bytes >= 6 << 20);
    assert!(data_bytes(mem.as_ref()).await < before - (5 << 20));
    assert!(repo
        .verify(VerifyOptions { full: true })
        .await
        .unwrap()
        .is_ok());
    let target = MemoryTarget::new();
    repo.restore("latest", &target, Default::default())
        .await
        .unwrap();
    assert!(target.content("b").unwrap() == keep);
    assert!(repo.prune_plans().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_plan_younger_than_the_grace_period_waits() {
    let mem = Arc::new(MemorySink::new());
    let repo = repo_on(mem.clone()).await;
    repo.backup(
        &MemorySource::new("s").file("a", data(2 << 20, 1)),
        Default::default(),
    )
    .await
    .unwrap();
    repo.backup(
        &MemorySource::new("s").file("b", data(2 << 20, 2)),
        Default::default(),
    )
    .await
    .unwrap();
    forget_all_but_last(&repo).await;
    let opts = PruneOptions {
        grace: Duration::from_secs(3600),
        ..Default::default()
    };
    repo.prune(opts).await.unwrap();
    let again = repo.prune(opts).await.unwrap();
    assert_eq!(again.deleted_packs, 0);
    assert_eq!(again.waiting_plans.len(), 1);
    assert!(again.waiting_plans[0].contains("grace"));
}

/// A source whose single entry blocks until released: holds a backup open mid-way. `reached`
/// is notified when the backup asks for the entry (its lock taken, the index it deduplicates
/// against loaded).
struct GatedSource {
    content: Vec<u8>,
    gate: Arc<tokio::sync::Semaphore>,
    reached: Arc<tokio::sync::Notify>,
}

struct GatedSession {
    content: Option<Vec<u8>>,
    gate: Arc<tokio::sync::Semaphore>,
    reached: Arc<tokio::sync::Notify>,
}

impl GatedSource {
    fn new(content: Vec<u8>, gate: &Arc<tokio::sync::Semaphore>) -> Self {
        GatedSource {
            content,
            gate: gate.clone(),
            reached: Arc::default(),
        }
    }
}

/// Waits (bounded) until the backup `task` runs from `src` has reached the gated entry; fails
/// naming what it waited for if the backup ends first or never gets there.
async fn until_reached(
    src: &GatedSource,
    task: &mut tokio::task::JoinHandle<resilience_core::Result<BackupReport>>,
) {
    tokio::select! {
        _ = src.reached.notified() => {}
        ended = task => panic!("the gated backup ended before reaching its entry: {ended:?}"),
        _ = tokio::time::sleep(Duration::from_secs(60)) => {
            panic!("the gated backup did not reach its entry within 60 s")
        }
    }
}

#[async_trait]
impl Source for GatedSource {
    fn descriptor(&self) -> SourceDescriptor {
        SourceDescriptor {
            id: "gated".into(),
            kind: "memory".into(),
        }
    }
    async fn start(&self) -> Result<Box<dyn SourceSession>, AdapterError> {
        Ok(Box::new(GatedSession {
            content: Some(self.content.clone()),
            gate: self.gate.clone(),
            reached: self.reached.clone(),
        }))
    }
}

#[async_trait]
impl SourceSession for GatedSession {
    async fn next_entry(&mut self) -> Result<Option<SourceEntry>, AdapterError> {
        let Some(content) = self.content.take() else {
            return Ok(None);
        };
        self.reached.notify_one();
        let _permit = self.gate.acquire().await.unwrap();
        let meta = EntryMeta::file("f", content.len() as u64);
        Ok(Some(SourceEntry {
            meta,
            content: Some(Box::pin(std::io::Cursor::new(content))),
        }))
    }
    async fn finish(&mut self) -> Result<SourceMetadata, AdapterError> {
        Ok(Default::default())
    }
}

#[tokio::test]
async fn a_backup_that_races_a_prune_keeps_what_it_deduplicated_against() {
    let mem = Arc::new(MemorySink::new());
    let repo = repo_on(mem.clone()).await;
    let content = data(4 << 20, 9);
    repo.backup(
        &MemorySource::new("old").file("f", content.clone()),
        Default::default(),
    )
    .await
    .unwrap();
    repo.backup(
        &MemorySource::new("other").file("g", data(1 << 20, 3)),
        Default::default(),
    )
    .await
    .unwrap();

    // The racing backup loads the index (with the soon-to-be garbage packs) and then waits.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let src = Arc::new(GatedSource::new(content.clone(), &gate));
    let mut racing = {
        let (repo, src) = (repo.clone(), src.clone());
        tokio::spawn(async move { repo.backup(src.as_ref(), Default::default()).await })
    };
    until_reached(&src, &mut racing).await;

    // Forget the only snapshot that used the content, and prune twice: the plan must wait for
    // the racing backup, whose lock is older than the plan.
    let old = repo.latest_for_source("old").await.unwrap().unwrap();
    let records = repo.catalog().list(&CatalogQuery::default()).await.unwrap();
    let mut plan = retention::plan(
        &StandardPolicy::from_toml("keep_last = 1").unwrap(),
        &records,
        chrono::Utc::now(),
    );
    plan.decisions
        .iter_mut()
        .filter(|d| d.id == old.id)
        .for_each(|d| d.action = retention::Action::Delete);
    repo.forget(&plan).await.unwrap();
    let first = repo.prune(now_prune()).await.unwrap();
    assert!(first.condemned_packs > 0);
    let second = repo.prune(now_prune()).await.unwrap();
    assert_eq!(second.deleted_packs, 0, "{second:?}");
    assert!(
        second.waiting_plans.iter().any(|w| w.contains("backup")),
        "{second:?}"
    );

    gate.add_permits(1);
    let report = racing.await.unwrap().unwrap();
    assert_eq!(
        report.record.new_bytes, 0,
        "the racing backup deduplicated against the condemned pack"
    );
    // Readable through the plan before the next prune…
    let target = MemoryTarget::new();
    repo.restore(&report.record.id, &target, Default::default())
        .await
        .unwrap();
    assert!(target.content("f").unwrap() == content);
    assert!(repo
        .verify(VerifyOptions { full: true })
        .await
        .unwrap()
        .is_ok());
    // …and resurrected by it.
    let third = repo.prune(now_prune()).await.unwrap();
    assert!(third.resurrected_packs > 0, "{third:?}");
    let v = repo.verify(VerifyOptions { full: true }).await.unwrap();
    assert!(v.is_ok(), "{v:?}");
    let target = MemoryTarget::new();
    repo.restore(&report.record.id, &target, Default::default())
        .await
        .unwrap();
    assert!(target.content("f").unwrap() == content);
}

#[tokio::test]
async fn prune_killed_part_way_leaves_a_sound_repository_and_the_next_prune_finishes() {
    let faulty = Arc::new(FaultySink::new(MemorySink::new(), -1));
    let repo = repo_on(faulty.clone()).await;
    for i in 0..4u64 {
        repo.backup(
            &MemorySource::new("s").file("f", data(2 << 20, i)),
            Default::default(),
        )
        .await
        .unwrap();
    }
    forget_all_but_last(&repo).await;
    for budget in [1, 2, 3] {
        faulty.set_budget(budget);
        let _ = repo.prune(now_prune()).await;
        faulty.set_budget(-1);
        let v = repo.verify(VerifyOptions { full: true }).await.unwrap();
        assert!(v.is_ok(), "after a prune stopped at budget {budget}: {v:?}");
    }
    repo.prune(now_prune()).await.unwrap();
    let last = repo.prune(now_prune()).await.unwrap();
    assert_eq!(last.condemned_packs, 0, "{last:?}");
    assert!(repo
        .verify(VerifyOptions { full: true })
        .await
        .unwrap()
        .is_ok());
    let target = MemoryTarget::new();
    repo.restore("latest", &target, Default::default())
        .await
        .unwrap();
    assert!(target.content("f").unwrap() == data(2 << 20, 3));
}

#[tokio::test]
async fn prune_in_a_loop_beside_backups_in_a_loop_loses_nothing() {
    let mem: Arc<dyn Sink> = Arc::new(MemorySink::new());
    let repo = repo_on(mem.clone()).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let backups = {
        let repo = repo.clone();
        let stop = stop.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                // Half the content repeats across rounds, so dedup hits packs prune is judging.
                let src = MemorySource::new("s")
                    .file("same", data(1 << 20, i % 3))
                    .file("new", data(1 << 20, 100 + i));
                repo.backup(&src, Default::default()).await.unwrap();
                i += 1;
                done.store(i, std::sync::atomic::Ordering::SeqCst);
            }
            i
        })
    };
    let mut freed = 0;
    let started = std::time::Instant::now();
    while done.load(std::sync::atomic::Ordering::SeqCst) < 6
        && started.elapsed() < Duration::from_secs(120)
    {
        forget_all_but_last(&repo).await;
        freed += repo.prune(now_prune()).await.unwrap().freed_bytes;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let rounds = backups.await.unwrap();
    assert!(rounds >= 3, "only {rounds} backups ran");
    assert!(freed > 0, "prune freed nothing");
    let v = repo.verify(VerifyOptions { full: true }).await.unwrap();
    assert!(v.is_ok(), "{v:?}");
    for r in repo
        .catalog()
        .list(&CatalogQuery {
            statuses: vec![BackupStatus::Succeeded],
            ..Default::default()
        })
        .await
        .unwrap()
    {
        repo.restore(&r.id, &MemoryTarget::new(), Default::default())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn append_only_mode_backs_up_but_refuses_every_delete_and_overwrite() {
    use resilience_core::sink::{AppendOnlySink, PutMode};
    let mem = Arc::new(MemorySink::new());
    let admin = repo_on(mem.clone()).await;
    let appender: Arc<dyn Sink> = Arc::new(AppendOnlySink::new(mem.clone()));
    let repo = Repository::open(appender.clone(), &KeyFileProvider::from_key([1; 32]))
        .await
        .unwrap();
    let content = data(2 << 20, 5);
    repo.backup(
        &MemorySource::new("s").file("a", content.clone()),
        Default::default(),
    )
    .await
    .unwrap();
    repo.backup(
        &MemorySource::new("s").file("b", data(2 << 20, 6)),
        Default::default(),
    )
    .await
    .unwrap();

    let records = repo.catalog().list(&CatalogQuery::default()).await.unwrap();
    let plan = retention::plan(
        &StandardPolicy::from_toml("keep_last = 1").unwrap(),
        &records,
        chrono::Utc::now(),
    );
    let err = repo.forget(&plan).await.unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    let packs: Vec<String> = mem
        .list("data/")
        .map_ok(|m| m.key)
        .try_collect()
        .await
        .unwrap();
    let err = appender.delete(&packs[0]).await.unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    let err = appender
        .put("config", "{}".into(), PutMode::Overwrite)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    // Prune on the append-only side deletes nothing, whatever it decides.
    let before = data_bytes(mem.as_ref()).await;
    let _ = repo.prune(now_prune()).await;
    let _ = repo.prune(now_prune()).await;
    assert_eq!(data_bytes(mem.as_ref()).await, before);
    // Nothing was lost: the maintenance side still sees and restores everything.
    assert!(admin
        .verify(VerifyOptions { full: true })
        .await
        .unwrap()
        .is_ok());
    let first = records
        .iter()
        .find(|r| r.status == BackupStatus::Succeeded)
        .unwrap();
    let target = MemoryTarget::new();
    admin
        .restore(&first.id, &target, Default::default())
        .await
        .unwrap();
    assert!(target.content("a").unwrap() == content);
}

#[tokio::test]
async fn a_mostly_dead_pack_is_repacked_and_the_original_is_deleted_not_resurrected() {
    let mem = Arc::new(MemorySink::new());
    let opts = InitOptions {
        pack_size: 16 << 20,
        ..Default::default()
    };
    let repo = Repository::init(mem.clone(), &KeyFileProvider::from_key([1; 32]), opts)
        .await
        .unwrap()
        .with_lock_settings(LockSettings {
            settle: Duration::from_millis(1),
            ..Default::default()
        });
    let live = data(1 << 20, 1);
    // One pack holding a live 1 MiB and a soon-dead 3 MiB.
    repo.backup(
        &MemorySource::new("s")
            .file("a", live.clone())
            .file("b", data(3 << 20, 2)),
        Default::default(),
    )
    .await
    .unwrap();
    repo.backup(
        &MemorySource::new("s").file("a", live.clone()),
        Default::default(),
    )
    .await
    .unwrap();
    forget_all_but_last(&repo).await;
    let before = data_bytes(mem.as_ref()).await;
    let first = repo.prune(now_prune()).await.unwrap();
    assert!(first.repacked_packs >= 1, "{first:?}");
    let second = repo.prune(now_prune()).await.unwrap();
    assert_eq!(second.resurrected_packs, 0, "{second:?}");
    assert!(second.deleted_packs >= 1, "{second:?}");
    assert!(data_bytes(mem.as_ref()).await < before - (2 << 20));
    assert!(repo
        .verify(VerifyOptions { full: true })
        .await
        .unwrap()
        .is_ok());
    let target = MemoryTarget::new();
    repo.restore("latest", &target, Default::default())
        .await
        .unwrap();
    assert!(target.content("a").unwrap() == live);
}

/// Waits (bounded) until a lock is in the store: a backup spawned has taken its lock.
async fn until_locked(sink: &dyn Sink) {
    for _ in 0..2000 {
        let locks: Vec<_> = sink.list("locks/").try_collect().await.unwrap();
        if !locks.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the backup never took its lock");
}

#[tokio::test]
async fn unfinished_uploads_are_discarded_once_older_than_the_grace_period() {
    let clock = Arc::new(resilience_core::time::clock::ManualClock::new(
        "2026-06-01T00:00:00Z".parse().unwrap(),
    ));
    let mem = Arc::new(MemorySink::with_clock(clock.clone()));
    let repo = repo_on(mem.clone()).await.with_clock(clock.clone());
    repo.backup(
        &MemorySource::new("s").file("a", data(1 << 20, 1)),
        Default::default(),
    )
    .await
    .unwrap();
    let upload = mem.plant_unfinished_upload("data/ab/ab00");
    let hour = PruneOptions {
        grace: Duration::from_secs(3600),
        ..Default::default()
    };

    let young = repo.prune(hour).await.unwrap();
    assert_eq!(young.discarded_uploads, 0, "{young:?}");
    assert!(
        young.waiting_uploads.len() == 1 && young.waiting_uploads[0].contains("grace"),
        "{young:?}"
    );
    assert_eq!(
        mem.unfinished_uploads("").await.unwrap(),
        vec![upload.clone()]
    );

    clock.advance(chrono::Duration::hours(2));
    let dry = repo
        .prune(PruneOptions {
            dry_run: true,
            ..hour
        })
        .await
        .unwrap();
    assert_eq!(dry.discarded_uploads, 1, "{dry:?}");
    assert_eq!(
        mem.unfinished_uploads("").await.unwrap(),
        vec![upload],
        "a dry run discards nothing"
    );
    let ripe = repo.prune(hour).await.unwrap();
    assert_eq!(ripe.discarded_uploads, 1, "{ripe:?}");
    assert!(ripe.waiting_uploads.is_empty() && ripe.upload_warnings.is_empty());
    assert!(mem.unfinished_uploads("").await.unwrap().is_empty());
    repo.verify(VerifyOptions::default()).await.unwrap();
}

#[tokio::test]
async fn an_unfinished_upload_waits_while_a_backup_that_may_own_it_runs() {
    let mem = Arc::new(MemorySink::new());
    let repo = repo_on(mem.clone()).await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let running = {
        let repo = repo.clone();
        let src = GatedSource::new(data(1 << 20, 4), &gate);
        tokio::spawn(async move { repo.backup(&src, Default::default()).await })
    };
    until_locked(mem.as_ref()).await;
    // The running backup's upload (started after its lock was taken).
    mem.plant_unfinished_upload("data/cd/cd00");

    let waiting = repo.prune(now_prune()).await.unwrap();
    assert_eq!(waiting.discarded_uploads, 0, "{waiting:?}");
    assert!(
        waiting.waiting_uploads.len() == 1 && waiting.waiting_uploads[0].contains("backup"),
        "{waiting:?}"
    );
    assert_eq!(mem.unfinished_uploads("").await.unwrap().len(), 1);

    gate.add_permits(1);
    running.await.unwrap().unwrap();
    let done = repo.prune(now_prune()).await.unwrap();
    assert_eq!(done.discarded_uploads, 1, "{done:?}");
    assert!(mem.unfinished_uploads("").await.unwrap().is_empty());
}

#[tokio::test]
async fn an_upload_that_cannot_be_discarded_is_a_warning_naming_it_not_a_failed_prune() {
    let mem = Arc::new(MemorySink::new());
    repo_on(mem.clone()).await;
    mem.plant_unfinished_upload("data/ef/ef00");
    // Append-only credentials cannot discard (it deletes what the upload stored).
    let append_only: Arc<dyn Sink> =
        Arc::new(resilience_core::sink::AppendOnlySink::new(mem.clone()));
    let repo = Repository::open(append_only, &KeyFileProvider::from_key([1; 32]))
        .await
        .unwrap();
    let report = repo.prune(now_prune()).await.unwrap();
    assert_eq!(report.discarded_uploads, 0, "{report:?}");
    assert!(
        report.upload_warnings.len() == 1 && report.upload_warnings[0].contains("data/ef/ef00"),
        "{report:?}"
    );
    assert_eq!(mem.unfinished_uploads("").await.unwrap().len(), 1);
}

/// The space a failed backup used (packs it wrote and never indexed) comes back with the next
/// prune, without waiting for the grace period — once no backup that began before that prune
/// runs (one might have adopted the packs).
#[tokio::test]
async fn a_failed_backups_packs_are_freed_by_the_next_prune_without_a_grace_period() {
    let mem = Arc::new(MemorySink::new());
    let repo = repo_on(mem.clone()).await;
    let keep = data(1 << 20, 1);
    repo.backup(
        &MemorySource::new("keep").file("k", keep.clone()),
        Default::default(),
    )
    .await
    .unwrap();
    let before = data_bytes(mem.as_ref()).await;

    // Its lock, its `running` record and two packs are written; the third pack fails.
    let faulty: Arc<dyn Sink> = Arc::new(FaultySink::new(mem.clone(), 4));
    let failing = Repository::open(faulty, &KeyFileProvider::from_key([1; 32]))
        .await
        .unwrap();
    failing
        .backup(
            &MemorySource::new("big").file("b", data(6 << 20, 2)),
            Default::default(),
        )
        .await
        .expect_err("the store failed under the backup");
    let left = data_bytes(mem.as_ref()).await - before;
    assert!(left >= 1 << 20, "the failed backup left {left} bytes");
    let index_files = || async {
        let keys: Vec<String> = mem
            .list("index/")
            .map_ok(|m| m.key)
            .try_collect()
            .await
            .unwrap();
        keys
    };
    let indexed_before = index_files().await;

    // Anyone holding a lock taken before the prune's plan (a backup about to adopt those
    // packs) makes them wait: here, a shared lock as a starting backup holds it.
    let holder = resilience_core::repo::lock::RepoLock::acquire(
        mem.clone(),
        Arc::new(resilience_core::time::clock::SystemClock),
        resilience_core::repo::lock::LockKind::Shared,
        "backup",
        None,
        LockSettings {
            settle: Duration::from_millis(1),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let waiting = repo.prune(PruneOptions::default()).await.unwrap();
    assert_eq!(waiting.deleted_packs, 0, "{waiting:?}");
    assert!(
        waiting.waiting_plans.iter().any(|w| w.contains("backup")),
        "{waiting:?}"
    );
    holder.release().await.unwrap();

    // The next prune, with the default grace period of a day, frees them.
    let freed = repo.prune(PruneOptions::default()).await.unwrap();
    assert!(freed.deleted_packs >= 2, "{freed:?}");
    assert!(freed.freed_bytes >= left, "{freed:?}");
    assert!(repo.prune_plans().await.unwrap().is_empty());
    // Condemning only unindexed packs rewrites no index file: on a full disk, the plan is all
    // such a prune has to write.
    assert_eq!(index_files().await, indexed_before);
    let report = repo.verify(VerifyOptions { full: true }).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    let target = MemoryTarget::new();
    repo.restore(
        &repo.latest_for_source("keep").await.unwrap().unwrap().id,
        &target,
        Default::default(),
    )
    .await
    .unwrap();
    assert!(target.content("k").unwrap() == keep);
}

/// A backup that fails returns only once every upload it started has settled: a pack still in
/// flight when another one fails reaches the store before `backup` returns, rather than being
/// abandoned mid-write (which, on a local disk, would go on filling it after the caller moved
/// on). Pack puts are slowed so that the first is still in flight when the second fails.
#[tokio::test]
async fn a_failed_backup_returns_only_once_its_uploads_in_flight_have_settled() {
    let mem = Arc::new(MemorySink::new());
    repo_on(mem.clone()).await;
    let slow = Arc::new(resilience_core::testing::PausableSink::new(mem.clone()));
    slow.delay_puts_of("data/", Duration::from_secs(1));
    // Its lock, its `running` record and the first pack are written; the second pack fails.
    let faulty: Arc<dyn Sink> = Arc::new(FaultySink::new(slow, 3));
    let failing = Repository::open(faulty, &KeyFileProvider::from_key([1; 32]))
        .await
        .unwrap();
    failing
        .backup(
            &MemorySource::new("big").file("b", data(6 << 20, 2)),
            resilience_core::ops::backup::BackupOptions {
                upload_concurrency: 4,
                ..Default::default()
            },
        )
        .await
        .expect_err("the store failed under the backup");
    let packs: Vec<String> = mem
        .list("data/")
        .map_ok(|m| m.key)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        packs.len(),
        1,
        "the pack in flight when the other failed was stored before backup returned: {packs:?}"
    );
}
