//! `resilience daemon` against real servers on loopback: a directory, a throw-away Postgres
//! cluster and a throw-away redis-server backed up on second-level schedules; `/metrics` shows
//! the backups; `/health` turns 503 naming Redis when its server is stopped past its RPO and
//! back to 200 when it returns, with webhook alerts for both; SIGTERM during a backup leaves no
//! snapshot marked succeeded. A `replicate` job with `follow = true` keeps a replica within
//! seconds and publishes its lag.

mod daemon_support;
mod pg_support;
mod tls_support;

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use daemon_support::{metric, wait_for, webhook, Daemon};
use pg_support::{free_port, Lab, BIN};
use serde_json::Value;

/// `resilience daemon --config FILE`, logging at info.
fn daemon(config: &Path, port: u16) -> Daemon {
    let mut c = Command::new(BIN);
    c.args(["daemon", "--config"])
        .arg(config)
        .env("RESILIENCE_LOG", "info")
        .env_remove("RESILIENCE_PASSWORD")
        .env_remove("RESILIENCE_REPOSITORY");
    Daemon::start(c, port)
}

fn redis_server(port: u16, dir: &Path) -> Child {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (Debian package redis-server)");
    wait_for(10, "redis-server to listen", || {
        TcpStream::connect(("127.0.0.1", port)).ok()
    });
    child
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduled_backups_show_in_metrics_and_health_follows_a_failing_source() {
    let lab = Lab::new();
    let pg = lab.cluster("pg").await;
    pg.client()
        .await
        .batch_execute("CREATE TABLE jobs (id int primary key); INSERT INTO jobs SELECT generate_series(1, 1000);")
        .await
        .unwrap();
    let docs = lab.path("docs");
    std::fs::create_dir_all(docs.join("sub")).unwrap();
    std::fs::write(docs.join("a.txt"), b"alpha").unwrap();
    std::fs::write(docs.join("sub/b.bin"), vec![7u8; 100_000]).unwrap();
    let redis_port = free_port();
    let redis_dir = lab.path("redis");
    std::fs::create_dir_all(&redis_dir).unwrap();
    let mut redis = redis_server(redis_port, &redis_dir);
    let (hook_port, alerts) = webhook();
    let port = free_port();
    let replica = lab.path("region-b");
    let config = lab.path("daemon.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[repository]
url = "{repo}"
key_file = "{key}"
[server]
listen = "127.0.0.1:{port}"
webhook = "http://127.0.0.1:{hook_port}/alerts"
[[source]]
name = "docs"
kind = "dir"
path = "{docs}"
schedule = "* * * * * *"
rpo = "1h"
retention = {{ keep_last = 3 }}
[[source]]
name = "billing"
kind = "postgres"
pgdata = "{pgdata}"
dsn = "{dsn}"
schedule = "*/3 * * * * *"
rpo = "1h"
[[source]]
name = "cache"
kind = "redis"
url = "redis://127.0.0.1:{redis_port}"
schedule = "* * * * * *"
rpo = "4s"
[[job]]
kind = "verify"
schedule = "*/2 * * * * *"
[[job]]
kind = "replicate"
to = "{replica}"
schedule = "* * * * * *"
follow = true
interval = "1s"
"#,
            replica = replica.display(),
            repo = lab.repo().display(),
            key = lab.key_file().display(),
            docs = docs.display(),
            pgdata = pg.pgdata.display(),
            dsn = pg.dsn(),
        ),
    )
    .unwrap();
    let daemon = daemon(&config, port);

    // Every source backed up, verified, and shown in /metrics.
    let text = wait_for(90, "a backup of every source in /metrics", || {
        let m = daemon.metrics();
        ["docs", "billing", "cache"]
            .iter()
            .all(|s| {
                metric(
                    &m,
                    "resilience_backup_last_success_timestamp_seconds",
                    &format!("source=\"{s}\""),
                )
                .is_some()
                    && metric(&m, "resilience_verification_ok", &format!("source=\"{s}\""))
                        == Some(1.0)
            })
            .then_some(m)
    });
    let now = chrono::Utc::now().timestamp() as f64;
    let last = metric(
        &text,
        "resilience_backup_last_success_timestamp_seconds",
        "source=\"docs\"",
    )
    .unwrap();
    assert!(
        (now - last).abs() < 60.0,
        "last success {last} vs now {now}"
    );
    assert!(
        metric(&text, "resilience_backup_logical_bytes", "source=\"docs\"").unwrap() >= 100_005.0
    );
    assert_eq!(
        metric(&text, "resilience_backup_rpo_seconds", "source=\"cache\""),
        Some(4.0)
    );
    assert!(
        text.contains("resilience_job_runs_total{job=\"billing\",result=\"success\"}"),
        "{text}"
    );
    let (status, report) = daemon.health();
    assert_eq!(status, 200, "{report:#}");
    assert_eq!(report["ok"], true);

    // The follower keeps the replica within seconds, and /metrics says how far behind it is.
    let target = "region-b";
    let lag = wait_for(30, "the follower's lag in /metrics", || {
        metric(
            &daemon.metrics(),
            "resilience_replication_lag_seconds",
            target,
        )
    });
    assert!(lag < 10.0, "a follower one second apart lags {lag} s");
    assert!(
        replica.join("config").exists(),
        "the replica is a repository"
    );
    let newest = lab.json(&["snapshots"]).as_array().unwrap().len();
    assert!(newest > 0);
    wait_for(30, "the newest backups on the replica", || {
        let out = std::process::Command::new(BIN)
            .arg("--repo")
            .arg(&replica)
            .arg("--key-file")
            .arg(lab.key_file())
            .args(["--json", "snapshots"])
            .output()
            .unwrap();
        let list: Value = serde_json::from_slice(&out.stdout).ok()?;
        (list.as_array()?.len() >= newest).then_some(())
    });

    // Redis stops: its backups fail, and past its 4 s RPO /health fails naming it.
    redis.kill().unwrap();
    redis.wait().unwrap();
    let report = wait_for(40, "/health to fail", || {
        let (status, report) = daemon.health();
        (status == 503).then_some(report)
    });
    let breaches: Vec<String> = report["breaches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(breaches.len(), 1, "{breaches:?}");
    assert!(
        breaches[0].starts_with("cache: newest backup is"),
        "{breaches:?}"
    );
    assert!(breaches[0].contains("past its RPO of 4s"), "{breaches:?}");
    assert!(breaches[0].contains("last failure"), "{breaches:?}");
    let m = daemon.metrics();
    assert_eq!(
        metric(&m, "resilience_source_healthy", "source=\"cache\""),
        Some(0.0)
    );
    assert_eq!(
        metric(&m, "resilience_source_healthy", "source=\"docs\""),
        Some(1.0)
    );
    assert!(
        metric(
            &m,
            "resilience_job_runs_total",
            "job=\"cache\",result=\"failure\""
        )
        .unwrap()
            >= 1.0
    );

    // It comes back: the next backup succeeds and /health recovers.
    let mut redis = redis_server(redis_port, &redis_dir);
    wait_for(40, "/health to recover", || {
        (daemon.health().0 == 200).then_some(())
    });
    wait_for(10, "the recovery alert", || {
        let a = alerts.lock().unwrap();
        a.iter()
            .any(|e| e["event"] == "recovered" && e["source"] == "cache")
            .then_some(())
    });
    {
        let a = alerts.lock().unwrap();
        assert!(
            a.iter().any(|e| e["event"] == "breach"
                && e["source"] == "cache"
                && e["detail"].as_str().unwrap().contains("RPO")),
            "{a:?}"
        );
        assert!(
            a.iter()
                .any(|e| e["event"] == "failure" && e["job"] == "cache"),
            "{a:?}"
        );
    }

    let (status, log) = daemon.terminate();
    assert!(status.success(), "daemon exit {status}: {log}");
    assert!(
        log.contains("stopped (daemon shutting down (SIGTERM))"),
        "{log}"
    );
    redis.kill().unwrap();
    let _ = redis.wait();
    // Whatever the shutdown interrupted is failed, not running or succeeded-in-name.
    let list = lab.json(&["snapshots"]);
    for r in list.as_array().unwrap() {
        assert_ne!(r["status"], "running", "{r:#}");
    }
}

#[test]
fn sigterm_during_a_backup_leaves_no_snapshot_marked_succeeded() {
    let lab = Lab::new();
    let docs = lab.path("docs");
    std::fs::create_dir_all(&docs).unwrap();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let data: Vec<u8> = (0..8 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(docs.join("big.bin"), data).unwrap();
    let port = free_port();
    let config = lab.path("daemon.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[repository]
url = "{repo}"
key_file = "{key}"
[server]
listen = "127.0.0.1:{port}"
[[source]]
name = "docs"
kind = "dir"
path = "{docs}"
schedule = "* * * * * *"
rpo = "1h"
max_rate = 1000000
"#,
            repo = lab.repo().display(),
            key = lab.key_file().display(),
            docs = docs.display(),
        ),
    )
    .unwrap();
    let daemon = daemon(&config, port);
    wait_for(30, "the backup to start", || {
        let (_, report) = daemon.health();
        (!report["jobs"]["docs"]["running_since"].is_null()).then_some(())
    });
    // Under way: its record (written once it holds its lock) says running.
    wait_for(30, "the backup's record to say running", || {
        let list = lab.json(&["snapshots"]);
        list.as_array()
            .unwrap()
            .iter()
            .any(|r| r["source"] == "docs" && r["status"] == "running")
            .then_some(())
    });
    let (status, log) = daemon.terminate();
    assert!(status.success(), "daemon exit {status}: {log}");

    let list = lab.json(&["snapshots"]);
    let docs: Vec<&Value> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["source"] == "docs")
        .collect();
    assert!(!docs.is_empty(), "the backup left a record: {list:#}");
    for r in &docs {
        assert_eq!(r["status"], "failed", "{r:#}");
        let error = r["error"].as_str().unwrap();
        assert!(
            error.contains("interrupted: daemon shutting down (SIGTERM)"),
            "{error}"
        );
    }
    // What the interrupted backup left behind is harmless.
    let out = lab.run(&["verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
