//! The Postgres drill through the library, against real clusters: a backup that records its
//! figures ([`backup_figures`]), rows written after it, and drills that restore, recover to the
//! end of the archived WAL (fetched by the library itself, and by a `restore_command`), promote
//! and compare the queries; a query without a figure, a `restore_command` that cannot be made,
//! and figures that cannot be taken, each failing by name.

mod support;

use resilience_core::catalog::Catalog;
use resilience_core::drill::{self, DrillOptions, DrillReport};
use resilience_core::ops::backup::BackupOptions;
use resilience_pg::base::PgBaseSource;
use resilience_pg::drill::{
    backup_figures, DrillQuery, PgDrill, WalFetch, QUERY_ERROR_LABEL, QUERY_LABEL,
};
use resilience_pg::PgError;

fn check<'a>(report: &'a DrillReport, name: &str) -> &'a str {
    let c = report
        .checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name}: {report:#?}"));
    assert!(c.ok, "{name} failed: {report:#?}");
    &c.detail
}

fn assert_empty(dir: &std::path::Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "the drill left {left:?} behind");
}

fn queries() -> Vec<DrillQuery> {
    vec![
        DrillQuery::at_least("jobs", "select count(*) from jobs"),
        DrillQuery::equal("first", "select body from jobs where id = 1"),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_drill_recovers_to_the_end_of_the_wal_and_compares_the_backup_figures() {
    let lab = support::Lab::new().await;
    let scratch = lab.pg_dir("scratch");
    let cluster = lab.cluster("primary").await;
    let c = cluster.client().await;
    c.batch_execute(
        "CREATE TABLE jobs (id int PRIMARY KEY, body text);
         INSERT INTO jobs SELECT g, md5(g::text) FROM generate_series(1, 1000) g;",
    )
    .await
    .unwrap();

    // The backup records the figures the drill compares.
    let labels = backup_figures(&cluster.dsn(), &queries()).await;
    assert_eq!(
        labels.get("drill.query.jobs").map(String::as_str),
        Some("1000")
    );
    let options = BackupOptions {
        labels,
        ..Default::default()
    };
    let backup = lab
        .repo
        .backup(
            &PgBaseSource::new(&cluster.pgdata, cluster.dsn()).with_id("main"),
            options,
        )
        .await
        .unwrap();
    let id = backup.record.id.clone();
    // Rows written after the backup reach the archive, and the drill must replay them.
    c.batch_execute("INSERT INTO jobs SELECT g, md5(g::text) FROM generate_series(1001, 1500) g;")
        .await
        .unwrap();
    cluster.archive_now().await;
    assert!(lab.push_wal().await >= 2);

    // WAL fetched by the library into the scratch directory: no program needed on the host.
    let pg = PgDrill::new("main", WalFetch::Prefetch)
        .with_dsn(cluster.dsn())
        .with_queries(queries());
    let options = DrillOptions {
        scratch_dir: Some(scratch.clone()),
    };
    let report = drill::run(&lab.repo, &pg, None, &options).await.unwrap();
    assert!(report.ok, "{report:#?}");
    assert_eq!(report.snapshot, id);
    assert!(check(&report, "wal").contains("WAL file(s)"));
    assert!(check(&report, "recovery").contains("promoted"));
    assert!(check(&report, "connect").contains("out of recovery"));
    let jobs = check(&report, "query:jobs");
    assert!(
        jobs.starts_with("1500 on the copy, 1000 at backup time"),
        "{jobs}"
    );
    assert!(
        check(&report, "query:first").starts_with("c4ca4238a0b923820dcc509a6f75849b on the copy")
    );
    // RPO: the last commit replayed (the insert above) is seconds old.
    assert!(
        report.rpo_seconds < 60.0 && report.rto_seconds > 0.0 && report.rto_seconds < 120.0,
        "{report:#?}"
    );
    assert_empty(&scratch);
    let record = lab.repo.catalog().get(&id).await.unwrap().unwrap();
    let drills: Vec<DrillReport> = record
        .verifications
        .iter()
        .filter_map(DrillReport::from_verification)
        .collect();
    assert_eq!(drills, vec![report.clone()]);

    // The same through a restore_command, made from the backup's WAL archive name.
    let spool = lab.spool();
    let pg = PgDrill::new(
        "main",
        WalFetch::command_for_archive(move |archive| {
            assert_eq!(archive, "main");
            Ok(format!("cp {}/%f %p", spool.display()))
        }),
    )
    .with_dsn(cluster.dsn())
    .with_queries(queries());
    let report = drill::run(&lab.repo, &pg, Some(&id), &options)
        .await
        .unwrap();
    assert!(report.ok, "{report:#?}");
    assert!(report.checks.iter().all(|c| c.name != "wal"));
    assert!(check(&report, "query:jobs").starts_with("1500 on the copy"));
    assert_empty(&scratch);

    // The original is untouched: its rows, and a port of its own.
    let n: i64 = c
        .query_one("SELECT count(*) FROM jobs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1500);

    // A query added after the backup has no figure: the drill fails, saying so; the others pass.
    let mut late = queries();
    late.push(DrillQuery::equal("late", "select 1"));
    let pg = PgDrill::new("main", WalFetch::Prefetch)
        .with_dsn(cluster.dsn())
        .with_queries(late);
    let report = drill::run(&lab.repo, &pg, None, &options).await.unwrap();
    assert!(!report.ok);
    let failures = report.failures();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        failures[0].starts_with("query:late: no figure for \"late\""),
        "{failures:?}"
    );
    check(&report, "query:jobs");
    assert_empty(&scratch);

    // A restore_command that cannot be made fails the restore, before anything starts.
    let pg = PgDrill::new(
        "main",
        WalFetch::command_for_archive(|_| {
            Err(PgError::Setup("no key file to fetch WAL with".into()))
        }),
    );
    let report = drill::run(&lab.repo, &pg, None, &options).await.unwrap();
    assert!(!report.ok);
    assert_eq!(
        report.failures(),
        vec!["restore: no key file to fetch WAL with"]
    );
    assert_empty(&scratch);
    let record = lab.repo.catalog().get(&id).await.unwrap().unwrap();
    assert_eq!(record.verifications.len(), 4, "every drill is recorded");
}

#[tokio::test]
async fn figures_that_cannot_be_taken_are_recorded_as_errors_not_failures() {
    let lab = support::Lab::new().await;
    let cluster = lab.cluster("primary").await;
    let mut qs = queries();
    qs.push(DrillQuery::equal("broken", "select * from no_such_table"));
    let labels = backup_figures(&cluster.dsn(), &qs).await;
    assert!(labels[&format!("{QUERY_ERROR_LABEL}jobs")].contains("jobs"));
    assert!(
        labels[&format!("{QUERY_ERROR_LABEL}broken")].contains("no_such_table"),
        "{labels:?}"
    );
    assert!(!labels.contains_key(&format!("{QUERY_LABEL}broken")));
    // Nobody listens there: every query records why.
    let port = resilience_pg::testing::free_port();
    let labels = backup_figures(
        &format!("host=127.0.0.1 port={port} user=postgres connect_timeout=2"),
        &qs,
    )
    .await;
    assert_eq!(labels.len(), 3, "{labels:?}");
    assert!(labels
        .iter()
        .all(|(k, v)| k.starts_with(QUERY_ERROR_LABEL) && v.starts_with("cannot connect")));
    assert!(backup_figures(&cluster.dsn(), &[]).await.is_empty());
}
