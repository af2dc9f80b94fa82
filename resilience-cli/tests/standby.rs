//! A warm standby in "region B", fed by `replicate --follow` from region A's repository:
//! commits reach the replica within seconds of their archiving, the standby replays them, and
//! when region A is lost its promotion holds every row committed more than the follower's lag
//! before, then archives into its own region's repository. Without a standby, the failover
//! recovers the newest base backup from the replica instead.

mod daemon_support;
mod pg_support;
mod tls_support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use daemon_support::{metric, Daemon};
use pg_support::{chown_tree, free_port, must, Cluster, Lab, BIN};
use resilience_pg::testing::as_pg_user;
use serde_json::Value;

/// `resilience replicate --follow` from the lab's repository into `replica`, as the Postgres
/// user (so that the standby, once promoted, can archive into what it created).
fn follower(lab: &Lab, replica: &std::path::Path) -> Child {
    let (repo, key) = (lab.repo(), lab.key_file());
    let args = [
        "--repo",
        repo.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
        "--json",
        "replicate",
        "--to",
        replica.to_str().unwrap(),
        "--follow",
        "--interval",
        "1s",
    ];
    let mut cmd = as_pg_user(BIN);
    cmd.args(args)
        .env_remove("RESILIENCE_REPOSITORY")
        .env_remove("RESILIENCE_PASSWORD")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// The CLI against the replica, with the lab's key.
fn on_replica(lab: &Lab, replica: &std::path::Path, args: &[&str]) -> Value {
    let out = Command::new(BIN)
        .arg("--repo")
        .arg(replica)
        .arg("--key-file")
        .arg(lab.key_file())
        .arg("--json")
        .args(args)
        .env_remove("RESILIENCE_REPOSITORY")
        .env_remove("RESILIENCE_PASSWORD")
        .output()
        .unwrap();
    let out = must(out, &format!("resilience --repo replica {args:?}"));
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Rows of `ticks` on `cluster` (its max id), or None while it does not answer.
async fn max_tick(cluster: &Cluster) -> Option<i64> {
    let dsn = cluster.dsn();
    let (client, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
        .await
        .ok()?;
    tokio::spawn(conn);
    let row = client
        .query_one("SELECT coalesce(max(id), 0) FROM ticks", &[])
        .await
        .ok()?;
    Some(row.get(0))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_fed_by_a_following_replica_replays_within_seconds_and_promotes_with_every_older_commit(
) {
    let lab = Lab::new();
    let primary = lab.cluster("primary").await;
    primary.configure("archive_timeout = '10s'");
    let c = primary.client().await;
    c.batch_execute(
        "SELECT pg_reload_conf();
         CREATE TABLE ticks (id bigint PRIMARY KEY, at timestamptz NOT NULL)",
    )
    .await
    .unwrap();
    let backup = lab.base_backup(&primary);
    assert_eq!(backup["status"], "succeeded", "{backup}");

    // Region B: the replica a follower keeps, and a standby fed from it.
    let replica = lab.path("region-b");
    let mut follow = follower(&lab, &replica);
    let mut passes = BufReader::new(follow.stdout.take().unwrap()).lines();
    let config = replica.join("config");
    wait_for("the follower's first copy", Duration::from_secs(60), || {
        config.exists()
    })
    .await;
    let standby_dir = lab.path("standby");
    let port = free_port();
    let made = on_replica(
        &lab,
        &replica,
        &[
            "pg",
            "standby",
            "--source",
            "main",
            "--pgdata",
            standby_dir.to_str().unwrap(),
            "--port",
            &port.to_string(),
            "--timeout",
            "120",
        ],
    );
    assert_eq!(made["backup"], backup["id"], "{made}");
    assert!(made["replaying"]["lsn"].is_string(), "{made}");
    let standby = Cluster {
        pgdata: standby_dir.clone(),
        port,
        dsn_params: String::new(),
        host: "127.0.0.1".into(),
    };

    // A daemon in region B watches the standby.
    let http = free_port();
    let config = lab.path("region-b.toml");
    std::fs::write(
        &config,
        format!(
            "[repository]\nurl = \"{}\"\nkey_file = \"{}\"\n[server]\nlisten = \"127.0.0.1:{http}\"\n\
             [[standby]]\nname = \"billing-b\"\ndsn = \"{}\"\nevery = \"1s\"\n",
            replica.display(),
            lab.key_file().display(),
            standby.dsn()
        ),
    )
    .unwrap();
    let mut daemon_cmd = Command::new(BIN);
    daemon_cmd
        .args(["daemon", "--config"])
        .arg(&config)
        .env_remove("RESILIENCE_PASSWORD")
        .env_remove("RESILIENCE_REPOSITORY");
    let daemon = Daemon::start(daemon_cmd, http);

    // A write load on the primary: a commit every 100 ms for 30 s. Every second, the standby
    // must hold every row committed more than BOUND before.
    const BOUND: Duration = Duration::from_secs(20);
    let mut committed: Vec<(i64, Instant, DateTime<Utc>)> = Vec::new();
    let mut worst_lag = Duration::ZERO;
    let load_began = Instant::now();
    let mut next_check = load_began + Duration::from_secs(1);
    let mut id = 0i64;
    while load_began.elapsed() < Duration::from_secs(30) {
        id += 1;
        let at: DateTime<Utc> = c
            .query_one(
                "INSERT INTO ticks VALUES ($1, clock_timestamp()) RETURNING at",
                &[&id],
            )
            .await
            .unwrap()
            .get(0);
        committed.push((id, Instant::now(), at));
        if Instant::now() >= next_check {
            next_check += Duration::from_secs(1);
            let seen = max_tick(&standby).await.expect("the standby answers");
            let due = committed
                .iter()
                .filter(|(_, t, _)| t.elapsed() > BOUND)
                .map(|(id, _, _)| *id)
                .max()
                .unwrap_or(0);
            assert!(
                seen >= due,
                "the standby holds rows up to {seen}, but row {due} was committed more than \
                 {BOUND:?} ago"
            );
            if let Some((_, t, _)) = committed.iter().find(|(i, _, _)| *i == seen + 1) {
                worst_lag = worst_lag.max(t.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("standby replay lag behind the primary: at most {worst_lag:?} (archive_timeout 10 s, follow interval 1 s)");
    let m = daemon.metrics();
    assert_eq!(
        metric(&m, "resilience_standby_up", "billing-b"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "resilience_standby_in_recovery", "billing-b"),
        Some(1.0),
        "{m}"
    );
    let lag = metric(&m, "resilience_standby_replay_lag_seconds", "billing-b")
        .expect("the standby's replay lag in /metrics");
    assert!(
        lag < BOUND.as_secs_f64() + 2.0,
        "replay lag {lag} s while the primary commits every 100 ms"
    );
    assert!(
        max_tick(&standby).await.unwrap() > 0,
        "the standby replayed rows of the load"
    );

    // A burst of writes fills segments (their last record runs into the next segment, not
    // archived when region A is lost): the standby stops mid-segment, and its promotion
    // branches the new timeline there.
    c.batch_execute(
        "CREATE TABLE bulk (pad text);
         INSERT INTO bulk SELECT md5(random()::text) FROM generate_series(1, 40000)",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;

    // Region A is lost: the follower stops (its source is gone), the primary dies.
    let stopped_at = Instant::now();
    // SAFETY: kill sends a signal to a child we own.
    unsafe { libc::kill(follow.id() as i32, libc::SIGTERM) };
    let status = follow.wait().unwrap();
    assert!(
        status.success(),
        "the follower exits 0 on SIGTERM: {status}"
    );
    let lines: Vec<Value> = passes
        .by_ref()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    let summary = lines.last().expect("a summary line");
    assert_eq!(summary["stopped"], "SIGTERM", "{summary}");
    assert_eq!(summary["failed_passes"], 0, "{summary}");
    assert!(summary["passes"].as_u64().unwrap() >= 20, "{summary}");
    assert!(lines.len() >= 2, "pass lines before the summary: {lines:?}");
    primary.stop(); // -m immediate
    assert!(
        max_tick(&primary).await.is_none(),
        "region A's primary is down"
    );

    let promoted = on_replica(
        &lab,
        &replica,
        &["pg", "promote", "--pgdata", standby_dir.to_str().unwrap()],
    );
    assert_eq!(promoted["promoted"], true, "{promoted}");
    assert_eq!(promoted["already_promoted"], false, "{promoted}");
    assert_eq!(promoted["timeline"], 2, "{promoted}");
    let held = max_tick(&standby)
        .await
        .expect("the promoted standby answers");
    let must_hold = committed
        .iter()
        .filter(|(_, t, _)| t.duration_since(load_began) + BOUND < stopped_at - load_began)
        .map(|(id, _, _)| *id)
        .max()
        .unwrap();
    assert!(
        held >= must_hold,
        "promoted with rows up to {held}; every row committed {BOUND:?} before region A was \
         lost (up to {must_hold}) must be there"
    );
    let last_commit: DateTime<Utc> = promoted["commit_time"].as_str().unwrap().parse().unwrap();
    // The newest row held was stamped just before its commit; the next one, not held, after.
    let newest_held = committed.iter().find(|(i, _, _)| *i == held).unwrap().2;
    assert!(
        last_commit >= newest_held,
        "the reported last commit {last_commit} is that of the newest row held ({newest_held})"
    );
    if let Some((_, _, next)) = committed.iter().find(|(i, _, _)| *i == held + 1) {
        assert!(
            last_commit < *next,
            "the reported last commit {last_commit} comes before row {} ({next}), not held",
            held + 1
        );
    }
    let rpo = committed.last().unwrap().2 - last_commit;
    eprintln!(
        "promoted with {held} of {id} rows: RPO {} ms",
        rpo.num_milliseconds()
    );

    // Right after the promotion the new timeline's history is archived but not its first
    // segment: a restore from the replica reaches the end of the WAL there (the switch
    // point), it does not report a gap.
    let history = replica.join("wal/main/00000002.history");
    wait_for(
        "the new timeline's history in region B",
        Duration::from_secs(30),
        || history.exists(),
    )
    .await;
    let restored_dir = lab.path("restored-after-promotion");
    let restored_port = free_port();
    let restored = on_replica(
        &lab,
        &replica,
        &[
            "pg",
            "restore",
            "--source",
            "main",
            "--pgdata",
            restored_dir.to_str().unwrap(),
            "--port",
            &restored_port.to_string(),
            "--start",
            "--no-archive",
            "--timeout",
            "120",
        ],
    );
    assert_eq!(restored["reached"]["promoted"], true, "{restored}");
    let copy = Cluster {
        pgdata: restored_dir,
        port: restored_port,
        dsn_params: String::new(),
        host: "127.0.0.1".into(),
    };
    assert_eq!(
        max_tick(&copy).await,
        Some(held),
        "the restore holds what the promoted standby held"
    );
    drop(copy);

    // The promoted standby accepts writes and archives into its own region's repository.
    let b = standby.client().await;
    b.batch_execute("INSERT INTO ticks VALUES (1000000, now())")
        .await
        .unwrap();
    let segment = standby.archive_now().await;
    assert!(segment.starts_with("00000002"), "{segment}");
    assert!(
        replica.join("wal/main").join(&segment).exists()
            || std::fs::read_dir(replica.join("wal/main"))
                .unwrap()
                .any(|e| e
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(&segment)),
        "segment {segment} of the new timeline is archived into region B's repository"
    );

    // The daemon sees the promotion.
    daemon_support::wait_for(10, "the daemon to see the promotion", || {
        (metric(
            &daemon.metrics(),
            "resilience_standby_in_recovery",
            "billing-b",
        ) == Some(0.0))
        .then_some(())
    });
    let (status, log) = daemon.terminate();
    assert!(status.success(), "{log}");

    // Promoting again changes nothing and says so.
    let again = on_replica(
        &lab,
        &replica,
        &["pg", "promote", "--pgdata", standby_dir.to_str().unwrap()],
    );
    assert_eq!(again["already_promoted"], true, "{again}");
}

/// Without a standby in region B, `failover --to b` restores the newest base backup from B's
/// repository and recovers it to the end of the WAL there; the plan says so before it runs.
#[tokio::test(flavor = "multi_thread")]
async fn without_a_standby_the_failover_recovers_the_newest_base_backup_to_the_end_of_the_replicas_wal(
) {
    let lab = Lab::new();
    let primary = lab.cluster("primary").await;
    let c = primary.client().await;
    c.batch_execute(
        "CREATE TABLE ticks (id bigint PRIMARY KEY);
         INSERT INTO ticks SELECT generate_series(1, 1000);",
    )
    .await
    .unwrap();
    let backup = lab.base_backup(&primary);
    assert_eq!(backup["status"], "succeeded", "{backup}");
    c.batch_execute("INSERT INTO ticks SELECT generate_series(1001, 1500)")
        .await
        .unwrap();
    primary.archive_now().await;
    let replica = lab.path("region-b");
    lab.ok(&["replicate", "--to", replica.to_str().unwrap()]);
    chown_tree(&replica);
    primary.stop(); // region A is lost

    let pgdata = lab.path("recovered");
    let port = free_port();
    let config = lab.path("regions.toml");
    std::fs::write(
        &config,
        format!(
            "[repository]\nurl = \"{repo}\"\nkey_file = \"{key}\"\n\
             [[region]]\nname = \"b\"\nrepository = \"{replica}\"\n\
             [region.postgres]\npgdata = \"{pgdata}\"\nport = {port}\nsource = \"main\"\n\
             checks = [{{ name = \"ticks\", sql = \"SELECT count(*) FROM ticks\" }}]\n",
            repo = lab.repo().display(),
            key = lab.key_file().display(),
            replica = replica.display(),
            pgdata = pgdata.display(),
        ),
    )
    .unwrap();
    let failover = |args: &[&str]| {
        let mut c = Command::new(BIN);
        c.args(["--json", "failover", "--config"])
            .arg(&config)
            .args(["--to", "b"])
            .args(args)
            .env_remove("RESILIENCE_REPOSITORY")
            .env_remove("RESILIENCE_PASSWORD");
        c
    };
    let out = must(
        failover(&["--dry-run"]).output().unwrap(),
        "failover --dry-run",
    );
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        plan["steps"][0]["name"], "recover postgres from the repository",
        "{plan}"
    );
    let out = must(failover(&[]).output().unwrap(), "failover");
    let done: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(done["ok"], true, "{done}");
    assert!(
        done["steps"][1]["detail"]
            .as_str()
            .unwrap()
            .contains("ticks = 1500"),
        "the check sees every archived row: {done}"
    );
    let recovered = Cluster {
        pgdata,
        port,
        dsn_params: String::new(),
        host: "127.0.0.1".into(),
    };
    let n: i64 = recovered
        .client()
        .await
        .query_one("SELECT count(*) FROM ticks", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1500);
}
