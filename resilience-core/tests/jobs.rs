//! The ready-made jobs ([`resilience_core::jobs`]) and the health [`Monitor`], on in-memory
//! repositories: what each run does to the repository, the summary or error it reports, and
//! what the monitor makes of it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use resilience_core::catalog::{BackupStatus, Catalog, CatalogQuery};
use resilience_core::drill::{DirDrill, DrillOptions};
use resilience_core::health::{
    HealthObserver, HealthReport, Monitor, ReplicationBoard, SourcePolicy,
};
use resilience_core::jobs::{
    BackupFigures, BackupJob, DrillJob, JobError, PruneJob, ReplicateJob, VerifyJob,
};
use resilience_core::keys::KeyFileProvider;
use resilience_core::repo::{InitOptions, Repository};
use resilience_core::retention::{KeepRules, StandardPolicy};
use resilience_core::sink::{MemorySink, PutMode, Sink};
use resilience_core::testing::{pseudo_random, MemorySource};
use resilience_core::time::scheduler::{JobBoard, JobStatus, ScheduledJob};
use resilience_core::time::stop::StopSignal;

async fn repo() -> (Arc<MemorySink>, Repository) {
    let sink = Arc::new(MemorySink::new());
    let repo = Repository::init(
        sink.clone(),
        &KeyFileProvider::from_key([3; 32]),
        InitOptions::default(),
    )
    .await
    .unwrap();
    (sink, repo)
}

fn source(id: &str, seed: u64) -> Arc<MemorySource> {
    Arc::new(
        MemorySource::new(id)
            .file("a.bin", pseudo_random(300_000, seed))
            .file("b.txt", "billing records"),
    )
}

struct Figures;

#[async_trait]
impl BackupFigures for Figures {
    async fn take(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("drill.query.rows".into(), "42".into())])
    }
}

#[tokio::test]
async fn a_backup_job_records_its_labels_and_the_figures_taken_before_it() {
    let (_, repo) = repo().await;
    let job = BackupJob::new(repo.clone(), source("billing", 1))
        .with_labels(BTreeMap::from([("team".into(), "payments".into())]))
        .with_figures(Arc::new(Figures));
    let summary = job.run(StopSignal::new()).await.unwrap();
    let records = repo.catalog().list(&CatalogQuery::default()).await.unwrap();
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert!(
        summary.starts_with(&format!("snapshot {}: 2 entries", r.id)),
        "{summary}"
    );
    assert_eq!(r.status, BackupStatus::Succeeded);
    assert_eq!(r.labels["team"], "payments");
    assert_eq!(r.labels["drill.query.rows"], "42");
}

#[tokio::test]
async fn a_stopped_backup_job_fails_and_is_recorded_failed() {
    let (_, repo) = repo().await;
    let stop = StopSignal::new();
    stop.stop("shutting down");
    let job = BackupJob::new(repo.clone(), source("billing", 2));
    let err = job.run(stop).await.unwrap_err();
    assert!(err.to_string().contains("interrupted"), "{err}");
    let records = repo.catalog().list(&CatalogQuery::default()).await.unwrap();
    assert!(
        records.iter().all(|r| r.status == BackupStatus::Failed),
        "{records:#?}"
    );
}

#[tokio::test]
async fn a_verify_job_records_its_result_and_fails_naming_each_damaged_object() {
    let (sink, repo) = repo().await;
    BackupJob::new(repo.clone(), source("billing", 3))
        .run(StopSignal::new())
        .await
        .unwrap();
    let quick = VerifyJob::new(repo.clone())
        .run(StopSignal::new())
        .await
        .unwrap();
    assert!(
        quick.contains("verification of 1 snapshot(s): sound"),
        "{quick}"
    );

    let packs: Vec<_> = sink.list("data/").try_collect().await.unwrap();
    let pack = packs.iter().max_by_key(|m| m.size).unwrap();
    let mut bytes = sink.get(&pack.key).await.unwrap().to_vec();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    sink.put(&pack.key, Bytes::from(bytes), PutMode::Overwrite)
        .await
        .unwrap();
    let err = VerifyJob::new(repo.clone())
        .full(true)
        .run(StopSignal::new())
        .await
        .unwrap_err();
    let damaged = err.downcast_ref::<JobError>().expect("a JobError");
    assert!(
        matches!(damaged, JobError::Damaged { count: 1, .. }),
        "{damaged}"
    );
    let name = pack.key.rsplit('/').next().unwrap();
    assert!(err.to_string().contains(name), "{err}");

    // Both results are in the catalog, where the health report reads them.
    let monitor = Monitor::new(
        Arc::new(repo.catalog()),
        repo.clock().clone(),
        vec![policy("billing")],
        Arc::new(JobBoard::default()),
    );
    let report = monitor.report().await;
    let v = report.sources[0].verification.as_ref().expect("recorded");
    assert!(!v.ok, "{report:#?}");
    assert!(!report.ok);
}

#[tokio::test]
async fn a_prune_job_applies_each_sources_policy_to_that_source_only() {
    let (_, repo) = repo().await;
    for seed in 0..3 {
        for id in ["billing", "tokens"] {
            BackupJob::new(
                repo.clone(),
                source(id, seed * 10 + u64::from(id == "tokens")),
            )
            .run(StopSignal::new())
            .await
            .unwrap();
        }
    }
    let keep_one = StandardPolicy {
        default: KeepRules {
            keep_last: Some(1),
            ..Default::default()
        },
        ..Default::default()
    };
    let summary = PruneJob::new(repo.clone())
        .with_policy("billing", Arc::new(keep_one))
        .run(StopSignal::new())
        .await
        .unwrap();
    assert!(summary.starts_with("expired 2 backup(s)"), "{summary}");
    let records = repo.catalog().list(&CatalogQuery::default()).await.unwrap();
    let live = |id: &str| {
        records
            .iter()
            .filter(|r| r.source.id == id && r.status == BackupStatus::Succeeded)
            .count()
    };
    assert_eq!((live("billing"), live("tokens")), (1, 3), "{records:#?}");
    assert!(repo.verify(Default::default()).await.unwrap().is_ok());
}

#[tokio::test]
async fn a_replicate_job_copies_and_posts_the_lag_it_leaves() {
    let (_, repo) = repo().await;
    BackupJob::new(repo.clone(), source("billing", 4))
        .run(StopSignal::new())
        .await
        .unwrap();
    let replica = Arc::new(MemorySink::new());
    let board = Arc::new(ReplicationBoard::default());
    let summary = ReplicateJob::new(repo.clone(), replica.clone())
        .with_board(board.clone())
        .run(StopSignal::new())
        .await
        .unwrap();
    assert!(summary.ends_with("lag 0 snapshot(s)"), "{summary}");
    let posted = board.snapshot();
    assert_eq!(posted.len(), 1);
    assert_eq!(posted[0].target, replica.location());
    assert_eq!(posted[0].lag_snapshots, 0);

    let copy = Repository::open(replica, &KeyFileProvider::from_key([3; 32]))
        .await
        .unwrap();
    assert_eq!(
        copy.catalog()
            .list(&CatalogQuery::default())
            .await
            .unwrap()
            .len(),
        1
    );

    // The monitor reports what the board holds.
    let monitor = Monitor::new(
        Arc::new(repo.catalog()),
        repo.clock().clone(),
        vec![policy("billing")],
        Arc::new(JobBoard::default()),
    )
    .with_replication(board);
    assert_eq!(monitor.report().await.replication, posted);
}

#[tokio::test]
async fn a_drill_job_drills_every_source_and_fails_when_one_cannot_begin() {
    let (_, repo) = repo().await;
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("docs");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("jobs.json"), pseudo_random(50_000, 5)).unwrap();
    repo.backup(
        &resilience_core::DirSource::new(&tree).with_id("docs"),
        Default::default(),
    )
    .await
    .unwrap();
    let options = DrillOptions {
        scratch_dir: Some(dir.path().to_owned()),
    };
    let job =
        DrillJob::new(repo.clone()).with_drill(Arc::new(DirDrill::new("docs")), options.clone());
    let summary = job.run(StopSignal::new()).await.unwrap();
    assert!(summary.starts_with("docs: snapshot "), "{summary}");

    let job = job.with_drill(Arc::new(DirDrill::new("nothing-here")), options);
    let err = job.run(StopSignal::new()).await.unwrap_err();
    assert!(err.to_string().contains("nothing-here"), "{err}");
}

fn policy(source: &str) -> SourcePolicy {
    SourcePolicy {
        source: source.into(),
        rpo: chrono::Duration::hours(1),
    }
}

#[derive(Default)]
struct Seen(Mutex<Vec<bool>>);

impl HealthObserver for Seen {
    fn observe(&self, report: &HealthReport, _jobs: &BTreeMap<String, JobStatus>) {
        self.0.lock().unwrap().push(report.ok);
    }
}

/// A catalog that cannot be read.
struct Broken;

#[async_trait]
impl Catalog for Broken {
    async fn put(&self, _: &resilience_core::BackupRecord) -> resilience_core::Result<()> {
        unreachable!()
    }
    async fn get(
        &self,
        id: &str,
    ) -> resilience_core::Result<Option<resilience_core::BackupRecord>> {
        Err(resilience_core::Error::Usage(format!("cannot read {id}")))
    }
    async fn list(
        &self,
        _: &CatalogQuery,
    ) -> resilience_core::Result<Vec<resilience_core::BackupRecord>> {
        Err(resilience_core::Error::Usage(
            "the catalog store is down".into(),
        ))
    }
}

#[tokio::test]
async fn the_monitor_passes_every_report_to_its_observers_and_an_unreadable_catalog_is_a_breach() {
    let (_, repo) = repo().await;
    let seen = Arc::new(Seen::default());
    let monitor = Monitor::new(
        Arc::new(repo.catalog()),
        repo.clock().clone(),
        vec![],
        Arc::new(JobBoard::default()),
    )
    .with_observer(seen.clone());
    let (ok, body) = monitor.health_document().await;
    assert!(ok, "{body:#}");
    assert!(body["jobs"].is_object(), "{body:#}");
    monitor.report().await;
    assert_eq!(*seen.0.lock().unwrap(), [true, true]);

    let broken = Monitor::new(
        Arc::new(Broken),
        repo.clock().clone(),
        vec![policy("billing")],
        Arc::new(JobBoard::default()),
    );
    let report = broken.report().await;
    assert!(!report.ok);
    assert!(
        report.breaches[0].contains("the catalog cannot be read: ")
            && report.breaches[0].contains("the catalog store is down"),
        "{report:#?}"
    );
}
