//! The runbooks' commands, as written: every ```sh block after a `<!-- runbook-test -->` marker in
//! `docs/runbooks/*.md` runs with bash (`set -euo pipefail`, `resilience` on the PATH) against
//! throw-away servers, with the variables the runbook documents, and the outcome is checked.

mod pg_support;
mod redis_support;
mod runbook_support;
mod tls_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_resilience");
use runbook_support::{blocks, run_runbook, run_runbook_marked, MARKER};

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A repository with a key file in a temporary directory.
struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    fn new() -> Self {
        let r = Repo {
            dir: tempfile::tempdir().unwrap(),
        };
        r.ok(&["init", "--key-file", &s(&r.key())]);
        r
    }
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    fn repo(&self) -> PathBuf {
        self.path("repo")
    }
    fn key(&self) -> PathBuf {
        self.path("key")
    }
    fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--repo")
            .arg(self.repo())
            .arg("--key-file")
            .arg(self.key())
            .args(args)
            .env_remove("RESILIENCE_PASSWORD")
            .output()
            .unwrap()
    }
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            out.push((
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            ));
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_primary_lost() {
    let lab = pg_support::Lab::new();
    let primary = lab.cluster("primary").await;
    let c = primary.client().await;
    c.batch_execute("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 100);")
        .await
        .unwrap();
    lab.base_backup(&primary);
    c.batch_execute("INSERT INTO t SELECT generate_series(101, 250);")
        .await
        .unwrap();
    primary.archive_now().await;
    drop(c);
    primary.stop(); // the primary is lost
    let recovered = pg_support::Cluster {
        pgdata: lab.path("recovered"),
        port: pg_support::free_port(),
        dsn_params: String::new(),
        host: "127.0.0.1".into(),
    };
    run_runbook(
        "postgres-pitr.md",
        lab.dir.path(),
        &[
            ("REPO", s(&lab.repo())),
            ("KEY", s(&lab.key_file())),
            ("SOURCE", lab.source.clone()),
            ("PGDATA", s(&recovered.pgdata)),
            ("PORT", recovered.port.to_string()),
        ],
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(lab.path("recovered.json")).unwrap())
            .unwrap();
    assert_eq!(report["reached"]["promoted"], true, "{report:#}");
    let n: i64 = recovered
        .client()
        .await
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 250, "every archived commit is replayed");
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_table_dropped() {
    let lab = pg_support::Lab::new();
    let cluster = lab.cluster("db").await;
    let c = cluster.client().await;
    c.batch_execute(
        "CREATE TABLE accounts (id int PRIMARY KEY, owner text);
         INSERT INTO accounts SELECT g, 'owner ' || g FROM generate_series(1, 300) g;
         CREATE TABLE other (id int); INSERT INTO other VALUES (1);",
    )
    .await
    .unwrap();
    let before = pg_support::table_sum(&c, "accounts").await;
    lab.ok(&[
        "pg",
        "table-backup",
        "--dsn",
        &cluster.dsn(),
        "--table",
        "public.accounts",
    ]);
    c.batch_execute("DROP TABLE accounts; INSERT INTO other VALUES (2);")
        .await
        .unwrap();
    run_runbook(
        "postgres-table.md",
        lab.dir.path(),
        &[
            ("REPO", s(&lab.repo())),
            ("KEY", s(&lab.key_file())),
            ("DSN", cluster.dsn()),
            ("TABLE", "public.accounts".into()),
            ("TABLES_SOURCE", "postgres-tables".into()),
        ],
    );
    assert_eq!(pg_support::table_sum(&c, "accounts").await, before);
    let other: i64 = c
        .query_one("SELECT count(*) FROM other", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(other, 2, "the rest of the database keeps its changes");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_data_lost() {
    use fred::prelude::*;
    let repo = Repo::new();
    let server = redis_support::start_server(repo.dir.path(), false);
    let client = Builder::from_config(Config::from_url(&server.url()).unwrap())
        .build()
        .unwrap();
    client.init().await.unwrap();
    for i in 0..150 {
        let _: () = client
            .set(format!("k:{i}"), format!("v{i}"), None, None, false)
            .await
            .unwrap();
    }
    repo.ok(&[
        "redis",
        "backup",
        "--url",
        &server.url(),
        "--source",
        "cache",
    ]);
    let _: () = client.flushall(false).await.unwrap(); // the data is lost
    run_runbook(
        "redis-restore.md",
        repo.dir.path(),
        &[
            ("REPO", s(&repo.repo())),
            ("KEY", s(&repo.key())),
            ("REDIS_URL", server.url()),
            ("SOURCE", "cache".into()),
        ],
    );
    let n: u64 = client.dbsize().await.unwrap();
    assert_eq!(n, 150);
    let v: String = client.get("k:42").await.unwrap();
    assert_eq!(v, "v42");
}

#[test]
fn bucket_objects_deleted_or_overwritten() {
    let repo = Repo::new();
    let bucket = repo.path("bucket");
    std::fs::create_dir(&bucket).unwrap();
    for i in 0..5 {
        std::fs::write(
            bucket.join(format!("o{i}")),
            format!("object {i}").repeat(100),
        )
        .unwrap();
    }
    let url = format!("file://{}", bucket.display());
    let before = files(&bucket);
    repo.ok(&["bucket", "backup", &url, "--source", "assets"]);
    std::fs::remove_file(bucket.join("o1")).unwrap();
    std::fs::write(bucket.join("o2"), b"overwritten by a bad deploy").unwrap();
    run_runbook(
        "bucket-restore.md",
        repo.dir.path(),
        &[
            ("REPO", s(&repo.repo())),
            ("KEY", s(&repo.key())),
            ("BUCKET", url),
            ("SOURCE", "assets".into()),
        ],
    );
    assert_eq!(files(&bucket), before);
}

#[test]
fn region_lost_restore_from_the_replica() {
    let repo = Repo::new();
    let data = repo.path("data");
    std::fs::create_dir(&data).unwrap();
    for i in 0..4 {
        std::fs::write(data.join(format!("f{i}")), vec![i as u8; 50_000 + i]).unwrap();
    }
    repo.ok(&["backup", "dir", &s(&data)]);
    let replica = repo.path("replica");
    repo.ok(&["replicate", "--to", &s(&replica)]);
    std::fs::remove_dir_all(repo.repo()).unwrap(); // the region is lost
    let target = repo.path("restored");
    run_runbook(
        "region-loss.md",
        repo.dir.path(),
        &[
            ("REPLICA", s(&replica)),
            ("KEY", s(&repo.key())),
            ("TARGET", s(&target)),
        ],
    );
    assert_eq!(files(&target), files(&data));
}

#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_failover() {
    // The manifests run the command the runbook runs, on the config the ConfigMap holds.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/k8s");
    let job = std::fs::read_to_string(root.join("drill-job.yaml")).unwrap();
    assert!(
        job.contains(r#"args: ["--json", "drill", "--config", "/etc/resilience/resilience.toml", "--source", "billing"]"#),
        "drill-job.yaml no longer runs the runbook's drill command"
    );
    assert!(blocks("kubernetes-failover.md", MARKER)[0]
        .contains(r#"resilience --json drill --config "$CONFIG" --source "$SOURCE""#));
    let map = std::fs::read_to_string(root.join("resilience-config.yaml")).unwrap();
    let toml_text: String = map
        .split_once("resilience.toml: |\n")
        .expect("the ConfigMap holds resilience.toml")
        .1
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let config: toml::Value = toml::from_str(&toml_text).expect("the ConfigMap's TOML parses");
    let source = &config["source"][0];
    assert_eq!(source["name"].as_str(), Some("billing"));
    assert_eq!(source["drill"]["scratch_dir"].as_str(), Some("/scratch"));
    assert!(job.contains("mountPath: /scratch"));
    // The daemon accepts it: the drill gets past the config to the (absent) key file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("resilience.toml");
    std::fs::write(&file, &toml_text).unwrap();
    let out = Command::new(BIN)
        .args(["drill", "--config", &s(&file), "--source", "billing"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("/etc/resilience/key/repo.key"),
        "{err}"
    );
    assert!(std::fs::read_to_string(root.join("backup-cronjob.yaml"))
        .unwrap()
        .contains("drill.query.invoices=$n"));

    // The runbook's drill, as written, on a real cluster and backup with its figure.
    let lab = pg_support::Lab::new();
    let cluster = lab.cluster("db").await;
    let c = cluster.client().await;
    c.batch_execute(
        "CREATE TABLE invoices (id int); INSERT INTO invoices SELECT generate_series(1, 40);",
    )
    .await
    .unwrap();
    let scratch = lab.path("scratch");
    std::fs::create_dir(&scratch).unwrap();
    pg_support::chown_tree(&scratch);
    lab.json(&[
        "pg",
        "backup",
        "--source",
        &lab.source,
        "--pgdata",
        &s(&cluster.pgdata),
        "--dsn",
        &cluster.dsn(),
        "--label",
        "drill.query.invoices=40",
    ]);
    let config = lab.path("resilience.toml");
    std::fs::write(
        &config,
        format!(
            "[repository]\nurl = {:?}\nkey_file = {:?}\n[[source]]\nname = {:?}\nkind = \"postgres\"\n\
             pgdata = {:?}\ndsn = {:?}\nschedule = \"0 0 2 * * *\"\nrpo = \"26h\"\n[source.drill]\n\
             scratch_dir = {:?}\nqueries = [{{ name = \"invoices\", sql = \"select count(*) from invoices\", compare = \"at_least\" }}]\n",
            s(&lab.repo()),
            s(&lab.key_file()),
            lab.source,
            s(&cluster.pgdata),
            cluster.dsn(),
            s(&scratch)
        ),
    )
    .unwrap();
    let out = run_runbook(
        "kubernetes-failover.md",
        lab.dir.path(),
        &[("CONFIG", s(&config)), ("SOURCE", lab.source.clone())],
    );
    assert!(out.starts_with("RTO "), "{out}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(lab.path("drill.json")).unwrap()).unwrap();
    assert_eq!(report["ok"], true, "{report:#}");
    assert!(report["checks"].to_string().contains("query:invoices"));
}

#[test]
fn leaked_passphrase_rotated_away() {
    let repo = Repo::new();
    let data = repo.path("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("billing.csv"), b"id,amount\n1,10\n").unwrap();
    let leaked_pw = repo.path("leaked.pw");
    std::fs::write(&leaked_pw, "leaked-passphrase-Qw7\n").unwrap();
    repo.ok(&["key", "add", "--new-password-file", &s(&leaked_pw)]);
    let copies: Value = serde_json::from_str(&repo.ok(&["--json", "key", "list"])).unwrap();
    let leaked = copies
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["provider"] == "passphrase")
        .expect("the passphrase copy")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    repo.ok(&["backup", "dir", &s(&data)]);
    let new_pw = repo.path("new.pw");
    std::fs::write(&new_pw, "new-operator-passphrase-Zk2\n").unwrap();

    run_runbook(
        "leaked-key.md",
        repo.dir.path(),
        &[
            ("REPO", s(&repo.repo())),
            ("KEY", s(&repo.key())),
            ("LEAKED", leaked.clone()),
            ("NEW_PASSWORD_FILE", s(&new_pw)),
        ],
    );

    let with_password = |pw: &Path, args: &[&str]| {
        Command::new(BIN)
            .arg("--repo")
            .arg(repo.repo())
            .arg("--password-file")
            .arg(pw)
            .args(args)
            .env_remove("RESILIENCE_PASSWORD")
            .output()
            .unwrap()
    };
    let refused = with_password(&leaked_pw, &["snapshots"]);
    assert!(
        !refused.status.success(),
        "the leaked passphrase still opens the repository"
    );
    let restored = repo.path("restored");
    let out = with_password(&new_pw, &["restore", "latest", "--target", &s(&restored)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(restored.join("billing.csv")).unwrap(),
        b"id,amount\n1,10\n"
    );
    let copies: Value = serde_json::from_str(&repo.ok(&["--json", "key", "list"])).unwrap();
    assert!(
        copies
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["id"] != leaked.as_str()),
        "{copies:#}"
    );
}

#[test]
fn damaged_index_repaired() {
    let repo = Repo::new();
    let (a, b) = (repo.path("a"), repo.path("b"));
    for (dir, seed) in [(&a, 1u64), (&b, 2)] {
        std::fs::create_dir_all(dir).unwrap();
        for i in 0..3 {
            let bytes: Vec<u8> = (0..(1u64 << 20))
                .map(|x| ((x * 2654435761 + seed * 97 + i) >> 7) as u8)
                .collect();
            std::fs::write(dir.join(format!("f{i}")), bytes).unwrap();
        }
    }
    repo.ok(&["backup", "dir", &s(&a)]);
    repo.ok(&["backup", "dir", &s(&b)]);
    let index: Vec<PathBuf> = std::fs::read_dir(repo.repo().join("index"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let damaged = &index[0];
    let mut bytes = std::fs::read(damaged).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid..mid + 3].iter_mut().for_each(|b| *b ^= 0xa5);
    std::fs::write(damaged, bytes).unwrap();
    let name = format!("index/{}", damaged.file_name().unwrap().to_str().unwrap());

    run_runbook(
        "damaged-repository.md",
        repo.dir.path(),
        &[("REPO", s(&repo.repo())), ("KEY", s(&repo.key()))],
    );

    let plan: Value =
        serde_json::from_slice(&std::fs::read(repo.path("repair-plan.json")).unwrap()).unwrap();
    assert_eq!(plan["dry_run"], true, "{plan}");
    let done: Value =
        serde_json::from_slice(&std::fs::read(repo.path("repair.json")).unwrap()).unwrap();
    assert!(
        done.to_string().contains(&name),
        "the repair names {name}: {done}"
    );
    assert!(!damaged.exists(), "the damaged index file is gone");
    let snapshots: Value = serde_json::from_str(&repo.ok(&["--json", "snapshots"])).unwrap();
    let ids: Vec<String> = snapshots
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 2, "{snapshots}");
    for (id, source) in ids.iter().zip([&a, &b]) {
        let out = repo.path(&format!("restored-{id}"));
        repo.ok(&["restore", id, "--target", &s(&out)]);
        assert_eq!(files(&out), files(source), "{id}");
    }
}

#[test]
fn damaged_pack_salvaged() {
    let repo = Repo::new();
    let (a, b) = (repo.path("a"), repo.path("b"));
    for (dir, seed) in [(&a, 1u64), (&b, 2)] {
        std::fs::create_dir_all(dir).unwrap();
        for i in 0..3 {
            let bytes: Vec<u8> = (0..(1u64 << 20))
                .map(|x| ((x * 2654435761 + seed * 97 + i) >> 7) as u8)
                .collect();
            std::fs::write(dir.join(format!("f{i}")), bytes).unwrap();
        }
    }
    repo.ok(&["backup", "dir", &s(&a)]);
    let first: Vec<PathBuf> = packs(&repo);
    repo.ok(&["backup", "dir", &s(&b)]);
    // A byte flipped in the middle of the first snapshot's pack: inside one file's data.
    let pack = first
        .iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(pack).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(pack, bytes).unwrap();

    let out = run_runbook_marked(
        "damaged-repository.md",
        SALVAGE_MARKER,
        repo.dir.path(),
        &[("REPO", s(&repo.repo())), ("KEY", s(&repo.key()))],
    );

    let plan: Value =
        serde_json::from_slice(&std::fs::read(repo.path("salvage-plan.json")).unwrap()).unwrap();
    assert_eq!(plan["dry_run"], true, "{plan}");
    assert_eq!(
        plan["damaged"][0]["salvage"]["action"], "would_write",
        "{plan}"
    );
    let done: Value =
        serde_json::from_slice(&std::fs::read(repo.path("salvage.json")).unwrap()).unwrap();
    let salvaged = done["salvaged"][0].as_str().unwrap().to_owned();
    assert!(
        out.contains(&format!(
            "salvaged from {}",
            done["damaged"][0]["snapshot"].as_str().unwrap()
        )),
        "{out}"
    );
    let lost: Vec<String> = done["damaged"][0]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(lost.len(), 1, "{done}");
    let restored = repo.path("restored");
    repo.ok(&["restore", &salvaged, "--target", &s(&restored)]);
    let expected: Vec<(String, Vec<u8>)> = files(&a)
        .into_iter()
        .filter(|(name, _)| !lost.contains(name))
        .collect();
    assert_eq!(files(&restored), expected);
}

const SALVAGE_MARKER: &str = "<!-- runbook-test: salvage -->";

fn packs(repo: &Repo) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in std::fs::read_dir(repo.repo().join("data")).unwrap() {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    out.sort();
    out
}
