//! An automated failover between two "regions" on loopback: each with its own Garage (S3), a
//! Kubernetes API server double (a contract test: no API server installs here), Postgres and
//! Redis. Region A's primary archives into A's repository, `replicate --follow` keeps B's
//! replica, a warm standby in B replays from it. Rows are committed for a while, then region A
//! is lost (Postgres killed with `-m immediate`, Redis, Garage and its API server stopped) and
//! `resilience failover --to b` runs: the first time with B's Redis not yet up (the plan stops
//! there and names what is left), then again (it resumes, doing nothing twice). Before the loss,
//! a failover drill (`failover --drill`) restores scratch copies from B and changes nothing.
//! After it, region A comes back empty and `docs/runbooks/failback.md` runs as written.

mod garage_support;
mod pg_support;
mod runbook_support;
mod tls_support;

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use garage_support::Garage;
use pg_support::{chown_tree, free_port, must, Cluster, ClusterOptions, Lab, BIN};
use resilience_k8s::testing::{kubeconfig, role_permissions, ApiDouble};
use resilience_k8s::REGION_LABEL;
use serde_json::Value;

const TOKEN: &str = "failover-token";

/// The CLI with the lab's key and the two Garages' shared credentials.
fn cli(lab: &Lab, garage: &Garage) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--key-file")
        .arg(lab.key_file())
        .env("AWS_ACCESS_KEY_ID", &garage.admin.id)
        .env("AWS_SECRET_ACCESS_KEY", &garage.admin.secret)
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_REGION")
        .env_remove("RESILIENCE_REPOSITORY")
        .env_remove("RESILIENCE_PASSWORD");
    c
}

fn json_of(mut cmd: Command, what: &str) -> Value {
    let out = must(cmd.output().unwrap(), what);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// A child process, killed when dropped (a failed test leaves no server behind).
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_server(port: u16, dir: &std::path::Path) -> Proc {
    std::fs::create_dir_all(dir).unwrap();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server must be installed");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "redis-server on {port} never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Proc(child)
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn failover_to_region_b_promotes_its_standby_restores_redis_switches_traffic_and_records_rto_and_rpo(
) {
    let lab = Lab::new();
    let garage_a = Garage::start(&lab.path("garage-a"), "region-a");
    let garage_b = Garage::start_with_key(&lab.path("garage-b"), "region-b", &garage_a.admin);
    let url_a = garage_a.url(&garage_a.bucket, "billing");
    let url_b = garage_b.url(&garage_b.bucket, "billing");
    let on = |url: &str, args: &[&str]| {
        let mut c = cli(&lab, &garage_a);
        c.arg("--repo").arg(url).arg("--json").args(args);
        c
    };
    // The primary's archive_command and the standby's restore_command run with these.
    std::env::set_var("AWS_ACCESS_KEY_ID", &garage_a.admin.id);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", &garage_a.admin.secret);
    std::env::remove_var("AWS_ENDPOINT_URL");
    std::env::remove_var("AWS_REGION");
    must(on(&url_a, &["init"]).output().unwrap(), "init region A");

    // Region A: a Postgres primary archiving into A's repository, and Redis backed up there.
    let archive = format!(
        "{BIN} --repo \"{url_a}\" --key-file {} wal-push --source main %p",
        lab.key_file().display()
    );
    let primary = Cluster::init(
        &lab.path("primary"),
        &ClusterOptions {
            archive_command: Some(archive),
            data_checksums: false,
            socket_dir: Some(lab.dir.path().to_owned()),
        },
    );
    primary.configure("archive_timeout = '5s'");
    primary.start();
    let c = primary.client().await;
    c.batch_execute("CREATE TABLE ticks (id bigint PRIMARY KEY, at timestamptz NOT NULL)")
        .await
        .unwrap();
    let backup = json_of(
        on(
            &url_a,
            &[
                "pg",
                "backup",
                "--source",
                "main",
                "--pgdata",
                primary.pgdata.to_str().unwrap(),
                "--dsn",
                &primary.dsn(),
            ],
        ),
        "pg backup in region A",
    );
    assert_eq!(backup["status"], "succeeded", "{backup}");
    let redis_a_port = free_port();
    let redis_a = redis_server(redis_a_port, &lab.path("redis-a"));
    for i in 0..200 {
        redis_cli(
            redis_a_port,
            &["SET", &format!("token:{i}"), &format!("value-{i}")],
        );
    }
    let cached = json_of(
        on(
            &url_a,
            &[
                "redis",
                "backup",
                "--url",
                &format!("redis://127.0.0.1:{redis_a_port}"),
                "--source",
                "cache",
            ],
        ),
        "redis backup in region A",
    );
    assert_eq!(cached["status"], "succeeded", "{cached}");
    let cached_at = Instant::now();

    // Region B: the replica a follower keeps, a standby fed from it, Redis not started yet.
    let follower = Proc(
        on(
            &url_a,
            &["replicate", "--to", &url_b, "--follow", "--interval", "1s"],
        )
        .stdout(Stdio::null())
        .spawn()
        .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = on(&url_b, &["snapshots"]).output().unwrap();
        let n = serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().map(|a| a.len()))
            .unwrap_or(0);
        if n >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the backups never reached region B"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let standby_port = free_port();
    let standby_dir = lab.path("standby");
    let made = json_of(
        on(
            &url_b,
            &[
                "pg",
                "standby",
                "--source",
                "main",
                "--pgdata",
                standby_dir.to_str().unwrap(),
                "--port",
                &standby_port.to_string(),
                "--timeout",
                "120",
            ],
        ),
        "pg standby in region B",
    );
    assert!(made["replaying"]["lsn"].is_string(), "{made}");
    let standby = Cluster {
        pgdata: standby_dir.clone(),
        port: standby_port,
        dsn_params: String::new(),
        host: "127.0.0.1".into(),
    };
    let redis_b_port = free_port();

    // Both clusters' API servers, and the configuration of both regions.
    let role = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/k8s/failover-role.yaml"),
    )
    .unwrap();
    let granted = role_permissions(&role);
    let k8s_a = ApiDouble::start(TOKEN, &granted).await;
    let k8s_b = ApiDouble::start(TOKEN, &granted).await;
    k8s_a.deployment("billing", "writer", 2);
    k8s_b.deployment("billing", "writer", 0);
    for k in [&k8s_a, &k8s_b] {
        k.service(
            "billing",
            "billing-db",
            &[("app", "billing-db"), (REGION_LABEL, "a")],
        );
    }
    let kube = lab.path("kubeconfig");
    std::fs::write(
        &kube,
        kubeconfig(
            &[("cluster-a", &k8s_a.url), ("cluster-b", &k8s_b.url)],
            TOKEN,
        ),
    )
    .unwrap();
    let config = lab.path("regions.toml");
    // Region a as it is now (and, for the failback, as it comes back).
    let write_config = |url_a: &str, a_pgdata: &std::path::Path, a_port: u16, a_redis: u16| {
        let a_dsn = format!("host=127.0.0.1 port={a_port} user=postgres dbname=postgres");
        std::fs::write(
            &config,
            format!(
                r#"
[repository]
url = "{url_a}"
key_file = "{key}"

[[source]]
name = "main"
kind = "postgres"
pgdata = "{primary_dir}"
dsn = "{primary_dsn}"
schedule = "0 0 3 * * *"
rpo = "1d"
[source.drill]
scratch_dir = "{scratch}"

[[source]]
name = "cache"
kind = "redis"
url = "redis://127.0.0.1:{redis_a_port}"
schedule = "0 0 3 * * *"
rpo = "1d"
[source.drill]
scratch_dir = "{scratch}"

[[region]]
name = "a"
repository = "{url_a}"
[region.postgres]
pgdata = "{a_pgdata}"
port = {a_port}
source = "main"
dsn = "{a_dsn} connect_timeout=3"
[region.redis]
url = "redis://127.0.0.1:{a_redis}"
source = "cache"
[region.kubernetes]
context = "cluster-a"
namespace = "billing"
service = "billing-db"
deployment = "writer"
kubeconfig = "{kube}"

[[region]]
name = "b"
repository = "{url_b}"
[region.postgres]
pgdata = "{standby_dir}"
port = {standby_port}
source = "main"
dsn = "{b_dsn} connect_timeout=3"
checks = [{{ name = "ticks", sql = "SELECT count(*) FROM ticks" }}]
[region.redis]
url = "redis://127.0.0.1:{redis_b_port}"
source = "cache"
[region.kubernetes]
context = "cluster-b"
namespace = "billing"
service = "billing-db"
deployment = "writer"
replicas = 2
kubeconfig = "{kube}"
"#,
                key = lab.key_file().display(),
                a_pgdata = a_pgdata.display(),
                primary_dir = primary.pgdata.display(),
                primary_dsn = primary.dsn(),
                standby_dir = standby_dir.display(),
                b_dsn = standby.dsn(),
                kube = kube.display(),
                scratch = lab.dir.path().display(),
            ),
        )
        .unwrap();
        chown_tree(&config);
    };
    write_config(&url_a, &primary.pgdata, primary.port, redis_a_port);
    let failover = |args: &[&str]| {
        let mut c = cli(&lab, &garage_a);
        c.arg("--json")
            .arg("failover")
            .arg("--config")
            .arg(&config)
            .args(["--to", "b"])
            .args(args);
        c
    };
    let plan = json_of(failover(&["--dry-run"]), "failover --dry-run");
    let names: Vec<&str> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "fence postgres in region a",
            "promote postgres standby",
            "restore redis cache",
            "switch kubernetes traffic",
            "check postgres"
        ],
        "{plan}"
    );
    assert_eq!(
        k8s_b.replicas("billing", "writer"),
        Some(0),
        "a dry run changes nothing"
    );

    // A failover drill: scratch copies from B's repository, production untouched.
    let drill = json_of(failover(&["--drill"]), "failover --drill");
    assert_eq!(drill["ok"], true, "{drill}");
    assert_eq!(drill["drill"], true, "{drill}");
    let drilled: Vec<&str> = drill["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        drilled,
        [
            "drill postgres main",
            "drill redis cache",
            "check kubernetes traffic switch"
        ],
        "{drill}"
    );
    assert!(drill["rto_seconds"].as_f64().unwrap() > 0.0, "{drill}");
    let journal = json_of(on(&url_b, &["failovers"]), "failovers");
    assert_eq!(
        journal[0]["id"], drill["id"],
        "the drill is journaled in B: {journal}"
    );
    let in_recovery: bool = standby
        .client()
        .await
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(in_recovery, "the drill did not promote the standby");
    assert_eq!(
        k8s_b.replicas("billing", "writer"),
        Some(0),
        "nor scaled anything"
    );
    assert_eq!(
        k8s_b.selector("billing", "billing-db").unwrap()[REGION_LABEL],
        "a"
    );
    // A write load, then region A is lost.
    let began = Instant::now();
    let mut committed: Vec<(i64, Instant)> = Vec::new();
    let mut id = 0;
    while began.elapsed() < Duration::from_secs(20) {
        id += 1;
        c.execute("INSERT INTO ticks VALUES ($1, clock_timestamp())", &[&id])
            .await
            .unwrap();
        committed.push((id, Instant::now()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lost_at = Instant::now();
    primary.stop(); // -m immediate
    drop(redis_a);
    garage_a.stop();
    k8s_a.stop();

    // The first run stops at Redis (not up in B yet) and names what is left.
    let out = failover(&[]).output().unwrap();
    assert!(!out.status.success(), "the plan stops at a failed step");
    let first: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(first["ok"], false, "{first}");
    assert_eq!(
        first["left"],
        serde_json::json!([
            "restore redis cache",
            "switch kubernetes traffic",
            "check postgres"
        ]),
        "{first}"
    );
    let steps = first["steps"].as_array().unwrap();
    assert!(
        steps[0]["detail"]
            .as_str()
            .unwrap()
            .contains("does not answer"),
        "{first}"
    );
    assert_eq!(steps[1]["ok"], true, "{first}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("run the same command again"));

    // Redis comes up; the second run resumes.
    let _redis_b = redis_server(redis_b_port, &lab.path("redis-b"));
    let done = json_of(failover(&[]), "failover, resumed");
    assert_eq!(done["ok"], true, "{done}");
    assert_eq!(
        done["id"], first["id"],
        "the same failover, resumed: {done}"
    );
    let steps = done["steps"].as_array().unwrap();
    assert!(
        steps[0]["earlier"] == true && steps[1]["earlier"] == true,
        "{done}"
    );
    assert!(
        steps[2..]
            .iter()
            .all(|s| s["ok"] == true && s["earlier"] == false),
        "{done}"
    );
    let rto = done["rto_seconds"].as_f64().unwrap();
    let rpo = done["rpo_seconds"].as_f64().unwrap();
    eprintln!("failover: RTO {rto:.1} s (two runs), RPO {rpo:.1} s");

    // B's Postgres is the primary and holds every row committed well before the loss (the
    // archive_timeout of 5 s, the follower's second and the standby's retry).
    let bound = Duration::from_secs(15);
    let b = standby.client().await;
    let held: i64 = b
        .query_one("SELECT coalesce(max(id), 0) FROM ticks", &[])
        .await
        .unwrap()
        .get(0);
    let due = committed
        .iter()
        .filter(|(_, t)| lost_at.duration_since(*t) > bound)
        .map(|(i, _)| *i)
        .max()
        .unwrap();
    assert!(
        held >= due,
        "B holds rows up to {held}; {due} was committed {bound:?} before the loss"
    );
    b.execute("INSERT INTO ticks VALUES (-1, now())", &[])
        .await
        .unwrap();
    // The oldest data brought back is Redis' backup, taken before the 20 s of load.
    assert!(
        rpo >= 20.0 && rpo <= cached_at.elapsed().as_secs_f64() + 1.0,
        "RPO {rpo}: the age of the Redis backup restored"
    );

    // B's Redis holds the backup's keys.
    assert_eq!(redis_cli(redis_b_port, &["DBSIZE"]), "200");
    assert_eq!(redis_cli(redis_b_port, &["GET", "token:42"]), "value-42");

    // Traffic: the writer runs in B, the Service selects region b.
    assert_eq!(k8s_b.replicas("billing", "writer"), Some(2));
    assert_eq!(
        k8s_b.selector("billing", "billing-db").unwrap()[REGION_LABEL],
        "b"
    );
    assert_eq!(
        k8s_a.replicas("billing", "writer"),
        Some(2),
        "A was unreachable, untouched"
    );
    assert!(done["steps"][3]["detail"]
        .as_str()
        .unwrap()
        .contains("cluster-a: does not answer"));

    // Recorded in region B's repository with its RTO and RPO.
    let journal = json_of(on(&url_b, &["failovers"]), "failovers");
    let records = journal.as_array().unwrap();
    assert_eq!(records.len(), 2, "the drill and the failover: {journal}");
    assert_eq!(records[0]["drill"], true);
    let record = records[1].clone();
    assert_eq!(record["id"], done["id"]);
    assert_eq!(record["ok"], true);
    assert_eq!(record["rto_seconds"], done["rto_seconds"]);
    assert_eq!(record["rpo_seconds"], done["rpo_seconds"]);

    // Run again: nothing is done twice (Redis is not restored over the writes since).
    redis_cli(
        redis_b_port,
        &["SET", "token:42", "written-after-the-failover"],
    );
    let again = json_of(failover(&[]), "failover, again");
    assert_eq!(again["already_done"], true, "{again}");
    assert_eq!(
        redis_cli(redis_b_port, &["GET", "token:42"]),
        "written-after-the-failover"
    );

    drop(follower);

    // Region A comes back with an empty store, an empty Redis and its cluster's writer still
    // up: fail back with docs/runbooks/failback.md, as written.
    b.execute(
        "INSERT INTO ticks SELECT g, now() FROM generate_series(500000, 500099) g",
        &[],
    )
    .await
    .unwrap();
    let garage_a2 = Garage::start_with_key(&lab.path("garage-a2"), "region-a", &garage_a.admin);
    let url_a2 = garage_a2.url(&garage_a2.bucket, "billing");
    let redis_a2_port = free_port();
    let _redis_a2 = redis_server(redis_a2_port, &lab.path("redis-a2"));
    let k8s_a2 = ApiDouble::start(TOKEN, &granted).await;
    k8s_a2.deployment("billing", "writer", 2);
    k8s_a2.service(
        "billing",
        "billing-db",
        &[("app", "billing-db"), (REGION_LABEL, "a")],
    );
    std::fs::write(
        &kube,
        kubeconfig(
            &[("cluster-a", &k8s_a2.url), ("cluster-b", &k8s_b.url)],
            TOKEN,
        ),
    )
    .unwrap();
    let a_pgdata = lab.path("primary-again");
    let a_port = free_port();
    write_config(&url_a2, &a_pgdata, a_port, redis_a2_port);
    let s = |p: &std::path::Path| p.display().to_string();
    runbook_support::run_runbook(
        "failback.md",
        lab.dir.path(),
        &[
            ("CONFIG", s(&config)),
            ("KEY", s(&lab.key_file())),
            ("REPO_A", url_a2.clone()),
            ("REPO_B", url_b.clone()),
            ("PG_SOURCE", "main".into()),
            ("B_PGDATA", s(&standby_dir)),
            ("B_DSN", standby.dsn()),
            ("B_REDIS", format!("redis://127.0.0.1:{redis_b_port}")),
            ("REDIS_SOURCE", "cache".into()),
            ("A_PGDATA", s(&a_pgdata)),
            ("A_PORT", a_port.to_string()),
            ("AWS_ACCESS_KEY_ID", garage_a.admin.id.clone()),
            ("AWS_SECRET_ACCESS_KEY", garage_a.admin.secret.clone()),
        ],
    );
    let back: Value =
        serde_json::from_str(&std::fs::read_to_string(lab.path("failback.json")).unwrap()).unwrap();
    assert_eq!(back["ok"], true, "{back}");
    assert_eq!(back["region"], "a", "{back}");
    let names: Vec<&str> = back["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "fence postgres in region b",
            "promote postgres standby",
            "restore redis cache",
            "switch kubernetes traffic",
            "check postgres"
        ],
        "{back}"
    );
    // Every commit of B is in A; B is read-only.
    let a = Cluster {
        pgdata: a_pgdata.clone(),
        port: a_port,
        dsn_params: String::new(),
        host: "127.0.0.1".into(),
    };
    let a_client = a.client().await;
    // The fence ended every session of B's: connect again.
    let b = standby.client().await;
    let count = "SELECT count(*)::bigint, max(id) FROM ticks";
    let in_a = a_client.query_one(count, &[]).await.unwrap();
    let in_b = b.query_one(count, &[]).await.unwrap();
    assert_eq!(in_a.get::<_, i64>(0), in_b.get::<_, i64>(0));
    assert_eq!(in_a.get::<_, i64>(1), 500099);
    a_client
        .execute("INSERT INTO ticks VALUES (-2, now())", &[])
        .await
        .unwrap();
    assert!(
        b.execute("INSERT INTO ticks VALUES (-3, now())", &[])
            .await
            .is_err(),
        "B is fenced"
    );
    // A's Redis holds B's cache as of its backup; traffic is back in A.
    assert_eq!(
        redis_cli(redis_a2_port, &["GET", "token:42"]),
        "written-after-the-failover"
    );
    assert_eq!(k8s_a2.replicas("billing", "writer"), Some(1));
    assert_eq!(k8s_b.replicas("billing", "writer"), Some(0));
    assert_eq!(
        k8s_a2.selector("billing", "billing-db").unwrap()[REGION_LABEL],
        "a"
    );
    let journal = json_of(on(&url_a2, &["failovers"]), "failovers in A");
    let last = journal.as_array().unwrap().last().unwrap();
    assert_eq!(last["region"], "a", "{journal}");
    assert_eq!(last["ok"], true, "{journal}");
}
