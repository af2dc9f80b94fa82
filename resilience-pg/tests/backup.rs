//! Base backup and point-in-time recovery through the library alone (no `resilience` binary),
//! against real clusters: a base backup taken by [`PgBaseSource`] and recorded with its
//! [`BaseBackupInfo`], WAL pushed into the repository's [`WalArchive`], rows committed after
//! it, and restores into new data directories ([`recovery::plan`], [`recovery::prepare`],
//! [`recovery::start`], WAL fetched back out of the archive by the library) that stop at a
//! point between the two batches (by LSN, by restore point, paused, and by time) or replay all
//! of it; and a segment missing from the archive, which the plan names and never recovers
//! past, while a target before it still recovers exactly.

mod support;

use std::time::Duration;

use chrono::{DateTime, Utc};
use resilience_core::catalog::{BackupStatus, Catalog};
use resilience_pg::archive::WalArchive;
use resilience_pg::base::BaseBackupInfo;
use resilience_pg::lsn::{Lsn, SegmentName, WalFileKind};
use resilience_pg::recovery::{
    self, RecoveryOptions, RecoveryOutcome, RecoveryPlan, RecoveryTarget, StartOptions,
    TargetAction,
};
use resilience_pg::{testing, PgError};
use support::{Cluster, Lab};
use tokio_postgres::Client;

/// WAL segments of the lab's clusters (`initdb --wal-segsize=1`).
const SEGMENT: u64 = 1 << 20;

async fn exec(c: &Client, sql: &str) {
    c.batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", resilience_pg::describe(&e)));
}

/// The server's clock, and (polled, never slept for) a clock past it: the next commit's time
/// is strictly later than the instant returned.
async fn instant_between(c: &Client) -> DateTime<Utc> {
    let t: DateTime<Utc> = c
        .query_one("SELECT clock_timestamp()", &[])
        .await
        .unwrap()
        .get(0);
    loop {
        let later: bool = c
            .query_one("SELECT clock_timestamp() > $1", &[&t])
            .await
            .unwrap()
            .get(0);
        if later {
            return t;
        }
    }
}

/// Where the next WAL record will go (everything inserted so far is before it).
async fn current_lsn(c: &Client) -> Lsn {
    let s: String = c
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    s.parse().unwrap()
}

/// The rows of `jobs`: how many, and a digest of every row in order.
async fn contents(c: &Client) -> (i64, String) {
    let row = c
        .query_one(
            "SELECT count(*), coalesce(md5(string_agg(id || ':' || body, ',' ORDER BY id)), '') \
             FROM jobs",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Fetches every file of the lab's WAL archive through the library into a directory of the
/// Postgres user's; returns the `restore_command` that copies from there.
async fn fetch_wal(lab: &Lab, name: &str) -> String {
    let dir = lab.pg_dir(name);
    let wal = WalArchive::new(&lab.repo, &lab.source).unwrap();
    for file in wal.list().await.unwrap() {
        let (header, content) = wal.fetch(&file.name).await.unwrap().unwrap();
        assert_eq!(header.size, content.len() as u64);
        let path = dir.join(&file.name);
        std::fs::write(&path, &content).unwrap();
        support::chown(&path);
    }
    format!("cp {}/%f %p", dir.display())
}

/// The plan for `target` along its default timeline.
async fn plan(lab: &Lab, target: &RecoveryTarget) -> Result<RecoveryPlan, PgError> {
    let wal = WalArchive::new(&lab.repo, &lab.source).unwrap();
    recovery::plan(&lab.repo, &wal, target, recovery::default_timeline(target)).await
}

/// Plans, restores into `<lab>/<name>` and starts on a new port, as the library's callers do;
/// the restored cluster is stopped when the returned handle is dropped.
async fn recover(
    lab: &Lab,
    name: &str,
    target: RecoveryTarget,
    action: TargetAction,
) -> (Cluster, RecoveryPlan, RecoveryOutcome) {
    let plan = plan(lab, &target)
        .await
        .unwrap_or_else(|e| panic!("{name}: plan: {e}"));
    let restore_command = fetch_wal(lab, &format!("{name}-wal")).await;
    let copy = Cluster {
        pgdata: lab.path(name),
        port: testing::free_port(),
        dsn_params: String::new(),
        host: "127.0.0.1".into(),
    };
    let options = RecoveryOptions {
        target_timeline: recovery::default_timeline(&target).into(),
        target,
        action,
        restore_command,
        port: Some(copy.port),
        archive: false,
        restore: Default::default(),
        tablespaces: Default::default(),
        resume: false,
        archive_command: None,
    };
    let restored = recovery::prepare(&lab.repo, &plan, &copy.pgdata, &options)
        .await
        .unwrap_or_else(|e| panic!("{name}: prepare: {e}"));
    assert_eq!(restored.snapshot, plan.backup.record.id);
    assert!(restored.entries > 0 && restored.bytes > 0, "{restored:?}");
    let start = StartOptions {
        bindir: testing::bindir(),
        port: copy.port,
        user: "postgres".into(),
        timeout: Duration::from_secs(120),
    };
    let outcome = recovery::start(&copy.pgdata, &start, action)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{name}: start: {e} (log: {})",
                recovery::log_path(&copy.pgdata).display()
            )
        });
    (copy, plan, outcome)
}

fn stop_message(outcome: &RecoveryOutcome) -> &str {
    outcome.stop_message.as_deref().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_base_backup_recovers_to_a_point_between_two_batches_and_to_the_end_of_the_wal() {
    let lab = Lab::new().await;
    let primary = lab.cluster("primary").await;
    let c = primary.client().await;
    exec(
        &c,
        "CREATE TABLE jobs (id int PRIMARY KEY, body text);
         INSERT INTO jobs SELECT g, md5(g::text) FROM generate_series(1, 1000) g;",
    )
    .await;

    let report = lab.base_backup(&primary).await;
    let id = report.record.id.clone();
    assert_eq!(report.record.status, BackupStatus::Succeeded);
    assert_eq!(
        (
            report.record.source.kind.as_str(),
            report.record.source.id.as_str()
        ),
        ("postgres", "main")
    );

    // The record carries the base backup's info, matching the server's own view.
    let info = BaseBackupInfo::from_metadata(&report.record.source_metadata)
        .unwrap_or_else(|| panic!("no base backup info in {:?}", report.record.source_metadata));
    let server = c
        .query_one(
            "SELECT system_identifier::text, current_setting('server_version_num')::int \
             FROM pg_control_system()",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(info.system_identifier, server.get::<_, String>(0));
    assert_eq!(info.pg_version_num, server.get::<_, i32>(1) as u32);
    assert_eq!(info.wal_segment_size, SEGMENT);
    assert_eq!(info.timeline, 1);
    assert!(info.start_lsn < info.stop_lsn, "{info:?}");
    assert!(info.stop_lsn <= current_lsn(&c).await);
    assert!(info.start_time <= info.stop_time, "{info:?}");
    assert_eq!(
        info.start_wal,
        SegmentName::containing(1, info.start_lsn, SEGMENT).file_name(SEGMENT)
    );
    assert_eq!(info.pgdata, primary.pgdata.display().to_string());
    assert_eq!(info.wal_source, "main");
    assert!(
        !info.page_checks.enabled,
        "the cluster has no data checksums"
    );
    let stored = lab.repo.catalog().get(&id).await.unwrap().unwrap();
    assert_eq!(
        BaseBackupInfo::from_metadata(&stored.source_metadata),
        Some(info.clone())
    );

    // The first batch goes on after the backup (replayed from the archive); then the point
    // recovery is to stop at, marked three ways; then the second batch.
    exec(
        &c,
        "INSERT INTO jobs SELECT g, md5(g::text) FROM generate_series(1001, 1200) g",
    )
    .await;
    let first = contents(&c).await;
    assert_eq!(first.0, 1200);
    let time = instant_between(&c).await;
    let point_end: Lsn = c
        .query_one("SELECT pg_create_restore_point('between')::text", &[])
        .await
        .unwrap()
        .get::<_, String>(0)
        .parse()
        .unwrap();
    let lsn = current_lsn(&c).await;
    assert!(point_end <= lsn);
    exec(
        &c,
        "INSERT INTO jobs SELECT g, 'late ' || g FROM generate_series(1201, 2000) g;
         UPDATE jobs SET body = 'changed' WHERE id <= 10;",
    )
    .await;
    let both = contents(&c).await;
    assert_eq!(both.0, 2000);
    let last = primary.archive_now().await;
    assert!(lab.push_wal().await >= 2);

    // What the archive now holds: the backup's first segment, its backup-history file, the
    // restore point (found by the library in the pushed WAL), up to the last segment.
    let wal = WalArchive::new(&lab.repo, "main").unwrap();
    let files = wal.list().await.unwrap();
    assert!(files.iter().any(|f| f.name == info.start_wal));
    assert!(files.iter().any(|f| f.name == last));
    assert!(
        files
            .iter()
            .any(|f| f.kind == WalFileKind::BackupHistory && f.name.starts_with(&info.start_wal)),
        "{files:?}"
    );
    let points = wal.restore_points().await.unwrap();
    let between = points
        .iter()
        .find(|p| p.name == "between")
        .unwrap_or_else(|| panic!("restore point not noted: {points:?}"));
    // The library notes where the record begins; Postgres returns where it ends.
    assert!(
        info.stop_lsn <= between.lsn && between.lsn < point_end,
        "{between:?}, backup stop {}, record end {point_end}",
        info.stop_lsn
    );

    // By LSN: promoted on a new timeline, exactly the first batch.
    let (copy, plan, reached) = recover(
        &lab,
        "by-lsn",
        RecoveryTarget::Lsn(lsn),
        TargetAction::Promote,
    )
    .await;
    assert_eq!(plan.backup.record.id, id);
    assert_eq!(plan.last_segment.as_deref(), Some(last.as_str()));
    assert!(reached.promoted, "{reached:?}");
    assert_eq!(reached.timeline, Some(2), "{reached:?}");
    assert!(reached.lsn.is_some_and(|l| l >= lsn), "{reached:?}");
    // Postgres names the first record at or after the target, the last one it replayed.
    let stopped_at: Lsn = stop_message(&reached)
        .strip_prefix("recovery stopping after WAL location (LSN) \"")
        .and_then(|rest| rest.split('"').next())
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("{reached:?}"));
    assert!(stopped_at >= lsn, "{reached:?}");
    assert_eq!(contents(&copy.client().await).await, first);
    drop(copy);

    // By restore point, paused there: still in recovery, read-only, the first batch.
    let (copy, _, reached) = recover(
        &lab,
        "by-name",
        RecoveryTarget::Name("between".into()),
        TargetAction::Pause,
    )
    .await;
    assert!(!reached.promoted, "{reached:?}");
    assert_eq!(reached.timeline, None, "no new timeline while paused");
    assert!(
        stop_message(&reached).starts_with("recovery stopping at restore point \"between\""),
        "{reached:?}"
    );
    let cc = copy.client().await;
    assert_eq!(contents(&cc).await, first);
    let in_recovery: bool = cc
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(in_recovery);
    let write = cc.batch_execute("INSERT INTO jobs VALUES (0, 'x')").await;
    assert!(write.is_err(), "a paused copy accepts no writes");
    drop((cc, copy));

    // By time: stops before the second batch's commit, the first one after the instant.
    let (copy, _, reached) = recover(
        &lab,
        "by-time",
        RecoveryTarget::Time(time),
        TargetAction::Promote,
    )
    .await;
    assert!(reached.promoted, "{reached:?}");
    assert!(
        stop_message(&reached).starts_with("recovery stopping before commit of transaction"),
        "{reached:?}"
    );
    assert!(
        reached.commit_time.is_some_and(|t| t <= time),
        "the last commit replayed is not after the target: {reached:?}"
    );
    assert_eq!(contents(&copy.client().await).await, first);
    drop(copy);

    // To the end of the archived WAL: both batches.
    let (copy, plan, reached) = recover(
        &lab,
        "latest",
        RecoveryTarget::Latest,
        TargetAction::Promote,
    )
    .await;
    assert_eq!(plan.backup.record.id, id);
    assert!(reached.promoted, "{reached:?}");
    assert!(reached.commit_time.is_some_and(|t| t > time), "{reached:?}");
    assert_eq!(contents(&copy.client().await).await, both);

    // The original is untouched.
    assert_eq!(contents(&c).await, both);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_segment_missing_from_the_archive_is_named_and_never_recovered_past() {
    let lab = Lab::new().await;
    let primary = lab.cluster("primary").await;
    let c = primary.client().await;
    exec(&c, "CREATE TABLE jobs (id int PRIMARY KEY, body text)").await;
    let report = lab.base_backup(&primary).await;
    let id = report.record.id;
    let info = BaseBackupInfo::from_metadata(&report.record.source_metadata).unwrap();

    // Segment i holds the commit of row i; each instant comes just before that commit.
    let mut segments = Vec::new();
    for i in 0..4 {
        let before = instant_between(&c).await;
        let xid: i64 = {
            let row = c
                .query_one(
                    "INSERT INTO jobs VALUES ($1, 'row') RETURNING txid_current()",
                    &[&i],
                )
                .await
                .unwrap();
            row.get(0)
        };
        let lsn = current_lsn(&c).await;
        segments.push((primary.archive_now().await, before, lsn, xid as u64));
    }
    for pair in segments.windows(2) {
        let (a, b) = (
            SegmentName::parse(&pair[0].0, SEGMENT).unwrap(),
            SegmentName::parse(&pair[1].0, SEGMENT).unwrap(),
        );
        assert_eq!(a.segno + 1, b.segno, "consecutive segments: {segments:?}");
    }
    assert!(lab.push_wal().await >= 4);
    let wal = WalArchive::new(&lab.repo, "main").unwrap();
    let lost = segments[2].0.clone();
    wal.delete(&lost).await.unwrap();
    assert!(wal.fetch(&lost).await.unwrap().is_none());

    // To the end of the WAL: refused by the plan, naming the missing segment and the last one
    // recovery could reach.
    let past_gap = |e: PgError, target: &str| match e {
        PgError::WalGap(msg) => assert_eq!(
            msg,
            format!(
                "the target {target} lies past a gap in the WAL archive: segment {lost} is \
                 missing, so recovery from base backup {id} cannot go beyond segment {}. \
                 Choose an earlier target, or restore the missing segment",
                segments[1].0
            )
        ),
        other => panic!("{target}: expected a WAL gap, got {other:?}"),
    };
    past_gap(
        plan(&lab, &RecoveryTarget::Latest).await.unwrap_err(),
        "Latest",
    );
    // A time whose last commit before it may be in the missing segment, a position in it, a
    // transaction committed before it (whose place the plan cannot know without replaying).
    let target = RecoveryTarget::Time(segments[2].1);
    past_gap(
        plan(&lab, &target).await.unwrap_err(),
        &format!("{target:?}"),
    );
    let target = RecoveryTarget::Lsn(segments[2].2);
    past_gap(
        plan(&lab, &target).await.unwrap_err(),
        &format!("{target:?}"),
    );
    let target = RecoveryTarget::Xid(segments[0].3);
    past_gap(
        plan(&lab, &target).await.unwrap_err(),
        &format!("{target:?}"),
    );
    let err = plan(&lab, &RecoveryTarget::Latest).await.unwrap_err();
    assert!(
        err.to_string().starts_with("WAL gap: ") && err.to_string().contains(&lost),
        "{err}"
    );

    // Targets before the gap are planned, up to the segment before it.
    for target in [
        RecoveryTarget::Immediate,
        RecoveryTarget::Lsn(segments[1].2),
        RecoveryTarget::Time(segments[1].1),
    ] {
        let p = plan(&lab, &target)
            .await
            .unwrap_or_else(|e| panic!("{target:?}: {e}"));
        assert_eq!(p.backup.record.id, id);
        assert_eq!(
            p.last_segment.as_deref(),
            Some(segments[1].0.as_str()),
            "{target:?}"
        );
    }
    // And recover exactly there: row 0 only (row 1 committed after the instant).
    let (copy, _, reached) = recover(
        &lab,
        "before-gap",
        RecoveryTarget::Time(segments[1].1),
        TargetAction::Promote,
    )
    .await;
    assert!(reached.promoted, "{reached:?}");
    let ids: Vec<i32> = copy
        .client()
        .await
        .query("SELECT id FROM jobs ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, vec![0]);
    drop(copy);

    // A segment the backup itself needs: no target can be reached, and the plan says which.
    wal.delete(&info.start_wal).await.unwrap();
    for target in [RecoveryTarget::Immediate, RecoveryTarget::Latest] {
        match plan(&lab, &target).await.unwrap_err() {
            PgError::WalGap(msg) => assert_eq!(
                msg,
                format!(
                    "base backup {id} needs WAL from {} to {}, but segment {} is not archived",
                    info.start_lsn, info.stop_lsn, info.start_wal
                ),
                "{target:?}"
            ),
            other => panic!("{target:?}: expected a WAL gap, got {other:?}"),
        }
    }
}
