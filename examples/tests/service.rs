//! Runs the `service` example (built by `cargo test` with the crate's examples) against a real
//! PostgreSQL cluster and a real redis-server, as a service would run: it must back up both,
//! push the cluster's WAL, verify, pass a Postgres restore drill, report all of it on its
//! `/health` endpoint, and stop cleanly on SIGTERM.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fred::prelude::*;
use resilience_core::catalog::{BackupStatus, Catalog, CatalogQuery};
use resilience_core::keys::KeyFileProvider;
use resilience_core::Repository;
use resilience_pg::testing::{chown, free_port, ClusterOptions, TestCluster};
use resilience_redis::testing::{start_server, ServerOptions};
use serde_json::Value;

/// The example's binary, beside this test's (`target/<profile>/examples/service`).
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let bin = profile_dir.join("examples").join("service");
    assert!(
        bin.exists(),
        "the example is not built at {} (`cargo test` builds it; or run `cargo build -p \
         resilience-examples --examples`)",
        bin.display()
    );
    bin
}

/// The service process, killed if the test fails before it stops it.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The successes the job board shows for `job`.
fn successes(health: &Value, job: &str) -> u64 {
    health["jobs"][job]["successes"].as_u64().unwrap_or(0)
}

/// The Postgres source's part of a health report.
fn pg_source(health: &Value) -> &Value {
    health["sources"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["source"] == "postgres"))
        .unwrap_or(&Value::Null)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_service_backs_up_postgres_and_redis_verifies_and_drills() {
    let dir = tempfile::Builder::new().prefix("rsvc").tempdir().unwrap();
    let root = dir.path();
    std::fs::set_permissions(
        root,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
    )
    .unwrap();
    chown(root);
    for d in ["spool", "scratch", "redis"] {
        std::fs::create_dir(root.join(d)).unwrap();
        chown(&root.join(d));
    }
    let spool = root.join("spool");
    let cluster = TestCluster::init(
        &root.join("pg"),
        &ClusterOptions {
            archive_command: Some(format!(
                "cp %p {s}/%f.part && sync {s}/%f.part && mv {s}/%f.part {s}/%f",
                s = spool.display()
            )),
            socket_dir: Some(root.to_owned()),
            ..Default::default()
        },
    );
    cluster.start();
    let client = cluster.client().await;
    client
        .batch_execute(
            "CREATE TABLE jobs (id int primary key, body text);
             INSERT INTO jobs SELECT g, 'job ' || g FROM generate_series(1, 1000) g;",
        )
        .await
        .unwrap();

    let redis = start_server(&root.join("redis"), &ServerOptions::default());
    let r = Client::new(Config::from_url(&redis.url()).unwrap(), None, None, None);
    r.init().await.unwrap();
    for i in 0..100 {
        let _: () = r
            .set(
                format!("token:{i}"),
                format!("secret {i}"),
                None,
                None,
                false,
            )
            .await
            .unwrap();
    }

    let port = free_port();
    let log = std::fs::File::create(root.join("service.log")).unwrap();
    let mut service = Service(
        Command::new(example_binary())
            .env("SERVICE_REPOSITORY", root.join("repo"))
            .env("SERVICE_KEY_FILE", root.join("repo.key"))
            .env("SERVICE_PG_DSN", cluster.dsn())
            .env("SERVICE_PGDATA", &cluster.pgdata)
            .env("SERVICE_WAL_SPOOL", &spool)
            .env("SERVICE_DRILL_DIR", root.join("scratch"))
            .env("SERVICE_REDIS_URL", redis.url())
            .env("SERVICE_EVERY", "*/3 * * * * *")
            .env("SERVICE_LISTEN", format!("127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // Every job has succeeded at least once, the drill included.
    let url = format!("http://127.0.0.1:{port}/health");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut last = Value::Null;
    let health = loop {
        if let Some(status) = service.0.try_wait().unwrap() {
            panic!(
                "the service exited ({status}): {}",
                std::fs::read_to_string(root.join("service.log")).unwrap()
            );
        }
        if let Ok(response) = http.get(&url).send().await {
            last = response.json().await.unwrap();
            // The board is live; the drill's record reaches the report with the catalog's
            // next listing (read at most once a second).
            let jobs_done = ["postgres", "redis", "wal", "verify", "drill"]
                .iter()
                .all(|job| successes(&last, job) > 0);
            if jobs_done && !pg_source(&last)["drill"].is_null() {
                break last;
            }
        }
        assert!(
            Instant::now() < deadline,
            "not every job succeeded within 240 s: {last:#}\n{}",
            std::fs::read_to_string(root.join("service.log")).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let pg = pg_source(&health);
    assert_eq!(pg["drill"]["ok"], true, "{health:#}");
    assert!(
        pg["drill"]["rto_seconds"].as_f64().unwrap() > 0.0,
        "{health:#}"
    );
    let summary = health["jobs"]["drill"]["last_summary"].as_str().unwrap();
    assert!(summary.starts_with("postgres: snapshot "), "{summary}");

    // SIGTERM stops it cleanly.
    // SAFETY: kill has no memory preconditions; the pid is our child's.
    assert_eq!(
        unsafe { libc::kill(service.0.id() as i32, libc::SIGTERM) },
        0
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = service.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the service did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        status.success(),
        "exit {status}: {}",
        std::fs::read_to_string(root.join("service.log")).unwrap()
    );

    // What it reported is in the repository: both sources backed up, the figures recorded.
    let sink = resilience_objstore::open_sink(root.join("repo").to_str().unwrap()).unwrap();
    let key = KeyFileProvider::from_file(&root.join("repo.key")).unwrap();
    let repo = Repository::open(sink, &key).await.unwrap();
    let records = repo.catalog().list(&CatalogQuery::default()).await.unwrap();
    for source in ["postgres", "redis"] {
        assert!(
            records
                .iter()
                .any(|r| r.source.id == source && r.status == BackupStatus::Succeeded),
            "no succeeded backup of {source}: {records:#?}"
        );
    }
    let redis_backup = records
        .iter()
        .find(|r| r.source.id == "redis" && r.status == BackupStatus::Succeeded)
        .unwrap();
    assert_eq!(
        redis_backup.source_metadata["keys"], 100,
        "{redis_backup:#?}"
    );
    let pg_backup = records
        .iter()
        .find(|r| r.source.id == "postgres" && r.status == BackupStatus::Succeeded)
        .unwrap();
    assert!(
        pg_backup.labels.contains_key("drill.query.tables"),
        "{pg_backup:#?}"
    );
}
