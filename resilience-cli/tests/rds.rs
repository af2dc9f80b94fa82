//! `resilience rds …`, `forget`, `drill` and the daemon with RDS sources, against moto's RDS
//! and KMS (`RESILIENCE_TEST_MOTO_ENDPOINT`, started by `scripts/test`; these tests fail, not
//! skip, without it). moto keeps metadata only — no database behind an instance — so these
//! tests check snapshots, copies, instances and the catalog, not a restored database's data.

mod daemon_support;

use std::path::PathBuf;
use std::process::{Command, Output};

use daemon_support::{wait_for, Daemon};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_resilience");
const HOME: &str = "us-east-1";
const AWAY: &str = "eu-west-1";

fn moto() -> String {
    std::env::var("RESILIENCE_TEST_MOTO_ENDPOINT").expect(
        "RESILIENCE_TEST_MOTO_ENDPOINT is not set: run the tests through scripts/test, or \
         start moto with scripts/moto.sh start DIR and source DIR/env",
    )
}

/// The RDS configuration every command gets: moto, region us-east-1, its fixed credentials.
fn rds_env(c: &mut Command) -> &mut Command {
    c.env("RESILIENCE_RDS_ENDPOINT", moto())
        .env("RESILIENCE_RDS_REGION", HOME)
        .env("RESILIENCE_RDS_ACCESS_KEY_ID", "moto")
        .env("RESILIENCE_RDS_SECRET_ACCESS_KEY", "moto")
        .env_remove("RESILIENCE_PASSWORD")
        .env_remove("RESILIENCE_REPOSITORY")
}

/// Runs `code` with boto3 against moto (`c(service, region)` makes a client); its stdout.
fn boto(code: &str) -> String {
    let prelude = "import boto3, sys\n\
        def c(svc, region): return boto3.client(svc, endpoint_url=sys.argv[1], \
        region_name=region, aws_access_key_id='moto', aws_secret_access_key='moto')\n";
    let out = Command::new("python3")
        .args(["-c", &format!("{prelude}{code}"), &moto()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "boto3 failed: {}\n{code}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}", nanos % 1_000_000_000_000)
}

fn create_instance(id: &str) {
    boto(&format!(
        "c('rds', '{HOME}').create_db_instance(DBInstanceIdentifier='{id}', \
         DBInstanceClass='db.t3.micro', Engine='mysql', AllocatedStorage=30, \
         MasterUsername='app', MasterUserPassword='password1')"
    ));
}

fn kms_key(region: &str) -> String {
    boto(&format!(
        "print(c('kms', '{region}').create_key(Description='rds copies')['KeyMetadata']['Arn'])"
    ))
}

/// Whether snapshot `id` exists in `region`.
fn snapshot_exists(region: &str, id: &str) -> bool {
    boto(&format!(
        "print(any(s['DBSnapshotIdentifier'] == '{id}' for s in \
         c('rds', '{region}').describe_db_snapshots()['DBSnapshots']))"
    )) == "True"
}

fn instances(region: &str) -> Vec<String> {
    boto(&format!(
        "print('\\n'.join(i['DBInstanceIdentifier'] for i in \
         c('rds', '{region}').describe_db_instances()['DBInstances']))"
    ))
    .lines()
    .map(str::to_owned)
    .collect()
}

struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Self {
        let lab = Lab {
            dir: tempfile::tempdir().unwrap(),
        };
        let out = lab.cli(&["init", "--key-file", lab.key().to_str().unwrap()]);
        assert!(out.status.success(), "init: {}", stderr(&out));
        lab
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn key(&self) -> PathBuf {
        self.path("key")
    }

    fn repo(&self) -> PathBuf {
        self.path("repo")
    }

    fn cli(&self, args: &[&str]) -> Output {
        rds_env(&mut Command::new(BIN))
            .arg("--repo")
            .arg(self.repo())
            .arg("--key-file")
            .arg(self.key())
            .args(args)
            .output()
            .unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.cli(&all);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn records(&self) -> Vec<Value> {
        self.json(&["snapshots"]).as_array().unwrap().clone()
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn snapshot_copy_restore_and_forget_from_the_command_line() {
    let lab = Lab::new();
    let db = unique("cli-db");
    create_instance(&db);
    let key = kms_key(AWAY);
    let first = lab.json(&[
        "rds",
        "snapshot",
        "--instance",
        &db,
        "--copy-to-region",
        AWAY,
        "--copy-kms-key-id",
        &key,
        "--poll",
        "1",
    ]);
    assert_eq!(first["status"], "succeeded");
    assert_eq!(first["source"], format!("rds:{db}"));
    assert_eq!(first["kind"], "rds");
    assert_eq!(first["rds"]["engine"], "mysql");
    assert_eq!(first["rds"]["allocated_storage_gib"], 30);
    assert_eq!(first["rds"]["copy"]["region"], AWAY);
    assert_eq!(first["rds"]["copy"]["kms_key_id"], key.as_str());
    let snap1 = first["rds"]["snapshot"]["id"].as_str().unwrap().to_owned();
    let copy1 = first["rds"]["copy"]["id"].as_str().unwrap().to_owned();
    assert!(snapshot_exists(HOME, &snap1));
    assert!(snapshot_exists(AWAY, &copy1));

    // The catalog lists it like any backup, with its ARNs in both regions.
    let listed = lab.records();
    let rec = listed
        .iter()
        .find(|r| r["id"] == first["id"])
        .expect("listed");
    assert_eq!(rec["source_kind"], "rds");
    assert!(rec["source_metadata"]["snapshot_arn"]
        .as_str()
        .unwrap()
        .starts_with("arn:aws:rds:us-east-1:"));
    assert!(rec["source_metadata"]["copy_arn"]
        .as_str()
        .unwrap()
        .starts_with("arn:aws:rds:eu-west-1:"));

    // Restore into a new instance.
    let new = unique("cli-restored");
    let restored = lab.json(&[
        "rds",
        "restore",
        first["id"].as_str().unwrap(),
        "--instance",
        &new,
        "--poll",
        "1",
    ]);
    assert_eq!(restored["status"], "available");
    assert_eq!(restored["engine"], "mysql");
    assert!(instances(HOME).contains(&new));
    // A cluster restore of an instance snapshot is refused, saying what to use.
    let wrong = lab.cli(&[
        "rds",
        "restore",
        first["id"].as_str().unwrap(),
        "--cluster",
        "x",
    ]);
    assert_eq!(wrong.status.code(), Some(2));
    assert!(stderr(&wrong).contains("--instance"), "{}", stderr(&wrong));

    // A second snapshot; forget keeps the newest and deletes the first one's snapshots in
    // both regions.
    let second = lab.json(&["rds", "snapshot", "--instance", &db, "--poll", "1"]);
    let snap2 = second["rds"]["snapshot"]["id"].as_str().unwrap().to_owned();
    let out = lab.cli(&["forget", "--keep-last", "1"]);
    assert!(out.status.success(), "forget: {}", stderr(&out));
    assert!(
        stderr(&out).contains("RDS: deleted 2 snapshot(s)"),
        "{}",
        stderr(&out)
    );
    assert!(!snapshot_exists(HOME, &snap1));
    assert!(!snapshot_exists(AWAY, &copy1));
    assert!(snapshot_exists(HOME, &snap2));
    let statuses: Vec<(String, String)> = lab
        .records()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_owned(),
                r["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(statuses.contains(&(first["id"].as_str().unwrap().to_owned(), "expired".into())));
    assert!(statuses.contains(&(
        second["id"].as_str().unwrap().to_owned(),
        "succeeded".into()
    )));
}

#[test]
fn an_unknown_instance_fails_naming_it_and_the_aws_error_code() {
    let lab = Lab::new();
    let out = lab.cli(&["rds", "snapshot", "--instance", "cli-no-such-db"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    assert!(text.contains("cli-no-such-db"), "{text}");
    assert!(text.contains("DBInstanceNotFound"), "{text}");
    let listed = lab.records();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["status"], "failed");
}

#[test]
fn the_daemon_snapshots_on_schedule_its_prune_deletes_expired_snapshots_and_the_drill_passes() {
    let lab = Lab::new();
    let db = unique("daemon-db");
    create_instance(&db);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
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
name = "orders-db"
kind = "rds"
instance = "{db}"
schedule = "* * * * * *"
rpo = "1h"
retention = {{ keep_last = 1 }}
[source.drill]
poll_seconds = 1
[[job]]
kind = "prune"
schedule = "*/2 * * * * *"
"#,
            repo = lab.repo().display(),
            key = lab.key().display(),
        ),
    )
    .unwrap();
    let mut command = Command::new(BIN);
    rds_env(&mut command)
        .args(["daemon", "--config"])
        .arg(&config)
        .env("RESILIENCE_LOG", "info");
    let daemon = Daemon::start(command, port);
    let taken = wait_for(60, "a scheduled RDS snapshot in the catalog", || {
        let out = lab.cli(&["--json", "snapshots"]);
        let list: Value = serde_json::from_slice(&out.stdout).ok()?;
        list.as_array()?
            .iter()
            .find(|r| r["source"] == "orders-db" && r["status"] == "succeeded")
            .cloned()
    });
    // The prune job expires all but the newest, and deletes their snapshots in AWS.
    let gone = wait_for(
        60,
        "an expired RDS backup whose snapshot was deleted",
        || {
            let out = lab.cli(&["--json", "snapshots"]);
            let list: Value = serde_json::from_slice(&out.stdout).ok()?;
            list.as_array()?
                .iter()
                .find(|r| {
                    r["source"] == "orders-db"
                        && r["status"] == "expired"
                        && !r["source_metadata"]["rds"]["aws_deleted_at"].is_null()
                })
                .cloned()
        },
    );
    drop(daemon);
    let gone_id = gone["source_metadata"]["rds"]["snapshot"]["id"]
        .as_str()
        .unwrap();
    assert!(!snapshot_exists(HOME, gone_id));
    assert_eq!(taken["source_kind"], "rds");
    assert!(taken["source_metadata"]["rds"]["snapshot"]["id"]
        .as_str()
        .unwrap()
        .starts_with("resilience-daemon-db-"));

    // The drill of that source restores, checks and deletes its scratch instance.
    let before = instances(HOME);
    let out = lab.cli(&[
        "--json",
        "drill",
        "--config",
        config.to_str().unwrap(),
        "--source",
        "orders-db",
    ]);
    assert!(out.status.success(), "drill: {}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let report = if report.is_array() {
        report[0].clone()
    } else {
        report
    };
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["source"], "orders-db", "{report}");
    let checks: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        checks,
        ["restore", "engine", "storage", "snapshot"],
        "{report}"
    );
    let after = instances(HOME);
    // Other tests make instances meanwhile: only drill copies count.
    let left: Vec<&String> = after
        .iter()
        .filter(|i| !before.contains(i) && i.starts_with("resilience-drill-"))
        .collect();
    assert!(left.is_empty(), "the drill left {left:?}");
}

#[test]
fn the_daemon_config_refuses_an_rds_source_without_an_instance_or_cluster() {
    let lab = Lab::new();
    let config = lab.path("bad.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[repository]
url = "{repo}"
key_file = "{key}"
[[source]]
name = "x"
kind = "rds"
schedule = "* * * * * *"
rpo = "1h"
"#,
            repo = lab.repo().display(),
            key = lab.key().display(),
        ),
    )
    .unwrap();
    let out = rds_env(&mut Command::new(BIN))
        .args(["daemon", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("source x: kind rds needs `instance` or `db_cluster`"),
        "{}",
        stderr(&out)
    );
}
