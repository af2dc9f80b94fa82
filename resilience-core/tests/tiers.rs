//! Hot and cold tiers: a retention plan moves old backups to a second store; restores from the
//! cold tier work the same way; each tier's prune and verify see only its own snapshots.

use std::sync::Arc;
use std::time::Duration;

use resilience_core::catalog::{BackupStatus, Catalog, CatalogQuery, Tier};
use resilience_core::keys::KeyFileProvider;
use resilience_core::ops::prune::PruneOptions;
use resilience_core::ops::verify::VerifyOptions;
use resilience_core::repo::{InitOptions, Repository};
use resilience_core::retention::{self, Action, RetentionPlan, StandardPolicy};
use resilience_core::sink::{MemorySink, Sink};
use resilience_core::testing::{pseudo_random as data, MemorySource, MemoryTarget};

#[tokio::test]
async fn old_backups_move_to_cold_restore_from_there_and_hot_space_is_freed() {
    let hot_sink: Arc<dyn Sink> = Arc::new(MemorySink::new());
    let cold_sink: Arc<dyn Sink> = Arc::new(MemorySink::new());
    let opts = InitOptions {
        pack_size: 1 << 20,
        ..Default::default()
    };
    let repo = Repository::init(hot_sink.clone(), &KeyFileProvider::from_key([3; 32]), opts)
        .await
        .unwrap();
    let repo = repo.attach_cold(cold_sink.clone()).await.unwrap();
    let old = data(3 << 20, 1);
    let a = repo
        .backup(
            &MemorySource::new("s").file("f", old.clone()),
            Default::default(),
        )
        .await
        .unwrap();
    let b = repo
        .backup(
            &MemorySource::new("s").file("f", data(3 << 20, 2)),
            Default::default(),
        )
        .await
        .unwrap();

    // The plan as a 90-day-hot policy would make it when `a` is old: move it to cold.
    let records = repo.catalog().list(&CatalogQuery::default()).await.unwrap();
    let mut plan: RetentionPlan =
        retention::plan(&StandardPolicy::default(), &records, chrono::Utc::now());
    plan.decisions
        .iter_mut()
        .filter(|d| d.id == a.record.id)
        .for_each(|d| d.action = Action::Cold);
    let report = repo.forget(&plan).await.unwrap();
    assert_eq!(report.moved_cold, vec![a.record.id.clone()]);
    let rec = repo.catalog().get(&a.record.id).await.unwrap().unwrap();
    assert_eq!(rec.tier, Tier::Cold);
    assert_eq!(rec.status, BackupStatus::Succeeded);

    // Restores work the same from either tier.
    let target = MemoryTarget::new();
    repo.restore(&a.record.id, &target, Default::default())
        .await
        .unwrap();
    assert!(target.content("f").unwrap() == old);
    repo.restore(&b.record.id, &MemoryTarget::new(), Default::default())
        .await
        .unwrap();

    // Hot prune frees what only the cold snapshot needs; both tiers verify.
    let grace = PruneOptions {
        grace: Duration::ZERO,
        ..Default::default()
    };
    repo.prune(grace).await.unwrap();
    let freed = repo.prune(grace).await.unwrap();
    assert!(freed.freed_bytes >= 3 << 20, "{freed:?}");
    assert!(repo
        .verify(VerifyOptions { full: true })
        .await
        .unwrap()
        .is_ok());
    let cold = repo.cold_tier().unwrap();
    let v = cold.verify(VerifyOptions { full: true }).await.unwrap();
    assert!(v.is_ok() && v.snapshots_checked == 1, "{v:?}");
    cold.prune(grace).await.unwrap();
    cold.prune(grace).await.unwrap();
    let target = MemoryTarget::new();
    repo.restore(&a.record.id, &target, Default::default())
        .await
        .unwrap();
    assert!(target.content("f").unwrap() == old);

    // And back to hot.
    repo.move_to_hot(&a.record.id).await.unwrap();
    assert_eq!(
        repo.catalog()
            .get(&a.record.id)
            .await
            .unwrap()
            .unwrap()
            .tier,
        Tier::Hot
    );
    let target = MemoryTarget::new();
    repo.restore(&a.record.id, &target, Default::default())
        .await
        .unwrap();
    assert!(target.content("f").unwrap() == old);
    assert!(repo
        .verify(VerifyOptions { full: true })
        .await
        .unwrap()
        .is_ok());

    // A cold store of another repository is refused.
    let other = Repository::init(
        Arc::new(MemorySink::new()),
        &KeyFileProvider::from_key([4; 32]),
        InitOptions::default(),
    )
    .await
    .unwrap();
    assert!(other.attach_cold(cold_sink).await.is_err());
}

#[tokio::test]
async fn a_cold_snapshot_without_its_store_is_a_clear_error() {
    let hot_sink: Arc<dyn Sink> = Arc::new(MemorySink::new());
    let repo = Repository::init(
        hot_sink.clone(),
        &KeyFileProvider::from_key([3; 32]),
        InitOptions::default(),
    )
    .await
    .unwrap();
    let with_cold = repo
        .clone()
        .attach_cold(Arc::new(MemorySink::new()))
        .await
        .unwrap();
    let a = repo
        .backup(
            &MemorySource::new("s").file("f", data(1 << 20, 1)),
            Default::default(),
        )
        .await
        .unwrap();
    repo.backup(
        &MemorySource::new("s").file("f", data(1 << 20, 2)),
        Default::default(),
    )
    .await
    .unwrap();
    with_cold.move_to_cold(&a.record.id).await.unwrap();
    let err = repo
        .restore(&a.record.id, &MemoryTarget::new(), Default::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cold"), "{err}");
}
