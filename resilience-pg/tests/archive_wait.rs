//! A base backup of a primary returns only once Postgres has archived the WAL it cannot be
//! restored without (the segment holding its stop point and its backup history file), however
//! slow the archiver; and an archiver that never succeeds fails the backup after the archive
//! timeout, naming the file, instead of a success that could not be restored.

mod support;

use std::time::{Duration, Instant};

use resilience_core::catalog::Catalog;
use resilience_pg::archive_wait::backup_wal_files;
use resilience_pg::base::{BaseBackupInfo, PgBaseSource};
use support::{Cluster, ClusterOptions, Lab};

fn cluster_archiving_with(lab: &Lab, name: &str, archive_command: String) -> Cluster {
    let options = ClusterOptions {
        archive_command: Some(archive_command),
        socket_dir: Some(lab.dir.path().to_owned()),
        ..Default::default()
    };
    let cluster = Cluster::init(&lab.path(name), &options);
    cluster.start();
    cluster
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_waits_for_a_slow_archiver_to_archive_its_wal() {
    let lab = Lab::new().await;
    // Every file takes the archiver a second and a half: the backup must wait for its own.
    let primary = cluster_archiving_with(
        &lab,
        "primary",
        format!(
            "sleep 1.5 && test ! -f {spool}/%f && cp %p {spool}/%f",
            spool = lab.spool().display()
        ),
    );
    primary
        .client()
        .await
        .batch_execute("CREATE TABLE t AS SELECT g FROM generate_series(1, 10000) g")
        .await
        .unwrap();
    let report = lab.base_backup(&primary).await;
    let info = BaseBackupInfo::from_metadata(&report.record.source_metadata).unwrap();
    let needed = backup_wal_files(
        info.timeline,
        info.start_lsn,
        info.stop_lsn,
        info.wal_segment_size,
    );
    for name in &needed {
        assert!(
            lab.spool().join(name).exists(),
            "the backup returned before Postgres archived {name}"
        );
    }
    assert!(needed[1].ends_with(".backup"), "{needed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_whose_wal_is_never_archived_fails_naming_the_file() {
    let lab = Lab::new().await;
    let primary = cluster_archiving_with(&lab, "primary", "false".into());
    let started = Instant::now();
    let err = lab
        .repo
        .backup(
            &PgBaseSource::new(&primary.pgdata, primary.dsn())
                .with_id("main")
                .archive_timeout(Duration::from_secs(2)),
            Default::default(),
        )
        .await
        .expect_err("a backup whose WAL Postgres never archived succeeded");
    let waited = started.elapsed();
    let text = format!("{err:#}");
    assert!(
        text.contains("has not archived this WAL file"),
        "the error does not say what is missing: {text}"
    );
    // It names the segment holding the stop point: 24 hex digits of timeline 1.
    assert!(
        text.split(|c: char| !c.is_ascii_hexdigit())
            .any(|w| w.len() == 24 && w.starts_with("00000001")),
        "the error names no WAL file: {text}"
    );
    assert!(
        waited >= Duration::from_secs(2),
        "failed before the timeout ({waited:?}): {text}"
    );
    // Nothing claims the backup succeeded.
    let records = lab.repo.catalog().list(&Default::default()).await.unwrap();
    assert!(
        records
            .iter()
            .all(|r| r.status != resilience_core::catalog::BackupStatus::Succeeded),
        "{records:?}"
    );
}
