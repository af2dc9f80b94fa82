//! `resilience drill` end to end: a directory, a Postgres cluster (its backup made by the
//! daemon, which records the check queries' figures) and a Redis server drilled into scratch
//! copies, and a repository with a damaged pack whose drill fails naming the pack. Every drill
//! must be recorded in the catalog and leave no scratch copy behind.

mod pg_support;
mod redis_support;
mod tls_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_resilience");

/// A repository (key file) and a scratch directory for drills, in a temporary directory.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let env = Env {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir(env.scratch()).unwrap();
        let out = env.cli(&["init", "--key-file", env.key().to_str().unwrap()]);
        assert!(out.status.success(), "init: {}", stderr(&out));
        env
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

    fn scratch(&self) -> PathBuf {
        self.path("scratch")
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--repo")
            .arg(self.repo())
            .arg("--key-file")
            .arg(self.key())
            .args(args)
            .env_remove("RESILIENCE_PASSWORD")
            .env_remove("RESILIENCE_REPOSITORY")
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

    /// A config with this repository, the scratch directory and one `[[source]]` (TOML lines).
    fn config(&self, source: &str) -> PathBuf {
        config_file(
            &self.path("resilience.toml"),
            &self.repo(),
            &self.key(),
            &self.scratch(),
            source,
        )
    }
}

fn config_file(file: &Path, repo: &Path, key: &Path, scratch: &Path, source: &str) -> PathBuf {
    let scratch_line = format!("scratch_dir = {:?}", scratch.display().to_string());
    let text = format!(
        "[repository]\nurl = {:?}\nkey_file = {:?}\n[server]\nlisten = \"127.0.0.1:0\"\n\
         [[source]]\n{}\n",
        repo.display().to_string(),
        key.display().to_string(),
        source.replace("SCRATCH", &scratch_line)
    );
    std::fs::write(file, text).unwrap();
    file.to_path_buf()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `resilience --json drill`: its exit status and report.
fn drill(run: impl Fn(&[&str]) -> Output, config: &Path, source: &str) -> (i32, Value) {
    let out = run(&[
        "--json",
        "drill",
        "--config",
        config.to_str().unwrap(),
        "--source",
        source,
    ]);
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("drill printed no JSON ({e}): {}", stderr(&out)));
    (out.status.code().unwrap(), report)
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {report}"))
}

fn assert_all_ok(report: &Value) {
    assert_eq!(report["ok"], true, "{report:#}");
    for c in report["checks"].as_array().unwrap() {
        assert_eq!(c["ok"], true, "{c}");
    }
}

/// The drills recorded in the catalog for `snapshot`, as (ok, report).
fn recorded_drills(snapshots: &Value, snapshot: &str) -> Vec<(bool, Value)> {
    let record = snapshots
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == snapshot)
        .unwrap_or_else(|| panic!("no record {snapshot}"));
    record["verifications"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["kind"] == "drill")
        .map(|v| {
            (
                v["ok"].as_bool().unwrap(),
                serde_json::from_str(v["detail"].as_str().unwrap()).unwrap(),
            )
        })
        .collect()
}

fn assert_scratch_empty(scratch: &Path) {
    let left: Vec<_> = std::fs::read_dir(scratch)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "the drill left {left:?} behind");
}

fn make_tree(root: &Path) -> (u64, u64) {
    let mut bytes = 0;
    for d in 0..3 {
        let dir = root.join(format!("d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..4 {
            let content: Vec<u8> = (0..(40_000 + d * 7_000 + f * 13))
                .map(|i| ((i * 31 + d * 7 + f) % 251) as u8)
                .collect();
            bytes += content.len() as u64;
            std::fs::write(dir.join(format!("f{f}.bin")), content).unwrap();
        }
    }
    (12, bytes)
}

/// A directory source `name` backed up with `resilience backup dir`; its path and snapshot.
fn dir_source(env: &Env, name: &str) -> (PathBuf, String) {
    let data = env.path(name);
    make_tree(&data);
    let backup = env.json(&["backup", "dir", data.to_str().unwrap(), "--source-id", name]);
    (data, backup["id"].as_str().unwrap().to_owned())
}

fn dir_config(env: &Env, name: &str, data: &Path) -> PathBuf {
    env.config(&format!(
        "name = \"{name}\"\nkind = \"dir\"\npath = {:?}\nschedule = \"0 0 3 * * *\"\nrpo = \"1d\"\n\
         [source.drill]\nSCRATCH",
        data.display().to_string()
    ))
}

#[test]
fn a_directory_drill_restores_checks_sizes_and_records_rto_and_rpo() {
    let env = Env::new();
    let (data, id) = dir_source(&env, "docs");
    let config = dir_config(&env, "docs", &data);
    let (code, report) = drill(|a| env.cli(a), &config, "docs");
    assert_eq!(code, 0, "{report:#}");
    assert_all_ok(&report);
    assert_eq!(report["source"], "docs");
    assert_eq!(report["snapshot"], id);
    assert!(check(&report, "restore")["detail"]
        .as_str()
        .unwrap()
        .contains("checksum verified"));
    let size = check(&report, "size")["detail"].as_str().unwrap();
    let total: u64 = (0..3u64)
        .flat_map(|d| (0..4u64).map(move |f| 40_000 + d * 7_000 + f * 13))
        .sum();
    assert!(size.contains(&format!("{total} bytes restored")), "{size}");
    let rto = report["rto_seconds"].as_f64().unwrap();
    let rpo = report["rpo_seconds"].as_f64().unwrap();
    assert!(rto > 0.0 && rto < 60.0, "rto {rto}");
    // The newest point a directory snapshot holds is its start, a moment ago.
    assert!(rpo >= rto && rpo < 120.0, "rpo {rpo}, rto {rto}");
    assert_scratch_empty(&env.scratch());
    let drills = recorded_drills(&env.json(&["snapshots"]), &id);
    assert_eq!(drills.len(), 1);
    assert!(drills[0].0);
    assert_eq!(drills[0].1["rto_seconds"], report["rto_seconds"]);
    // The text form says the same, and an unknown source is named.
    let out = env.cli(&[
        "drill",
        "--config",
        config.to_str().unwrap(),
        "--source",
        "docs",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ok   size:") && text.contains("passed; RTO"),
        "{text}"
    );
    let out = env.cli(&[
        "drill",
        "--config",
        config.to_str().unwrap(),
        "--source",
        "nope",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no source named \"nope\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_drill_against_a_damaged_pack_fails_names_the_pack_and_is_recorded() {
    let env = Env::new();
    let (data, id) = dir_source(&env, "docs");
    let config = dir_config(&env, "docs", &data);
    let packs: Vec<PathBuf> = walk(&env.repo().join("data"));
    assert!(!packs.is_empty(), "no pack under data/");
    let pack = packs
        .iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(pack).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(pack, bytes).unwrap();
    let (code, report) = drill(|a| env.cli(a), &config, "docs");
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["ok"], false);
    let restore = check(&report, "restore");
    assert_eq!(restore["ok"], false);
    let name = pack.file_name().unwrap().to_str().unwrap();
    assert!(
        restore["detail"].as_str().unwrap().contains(name),
        "the failed check must name {name}: {restore}"
    );
    assert_scratch_empty(&env.scratch());
    let drills = recorded_drills(&env.json(&["snapshots"]), &id);
    assert_eq!(drills.len(), 1, "the failed drill is recorded");
    assert!(!drills[0].0);
    assert!(drills[0].1["checks"].to_string().contains(name));
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The succeeded backups of `source` in the catalog, oldest first.
fn succeeded(run: &impl Fn(&[&str]) -> Output, source: &str) -> Vec<String> {
    let out = run(&["--json", "snapshots"]);
    assert!(out.status.success(), "snapshots: {}", stderr(&out));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .filter(|r| r["source"] == source && r["status"] == "succeeded")
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Runs the daemon on `config` until the catalog holds a succeeded backup of `source`, stops
/// it (SIGTERM), and returns the newest succeeded backup's id.
fn daemon_backup(run: impl Fn(&[&str]) -> Output, config: &Path, source: &str) -> String {
    let mut daemon = Command::new(BIN)
        .args(["daemon", "--config", config.to_str().unwrap()])
        .env("RESILIENCE_LOG", "warn")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while succeeded(&run, source).is_empty() {
        if Instant::now() > deadline || daemon.try_wait().unwrap().is_some() {
            let _ = daemon.kill();
            panic!("the daemon made no backup of {source} within 120 s");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    // SAFETY: kill with a valid pid and signal.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let _ = daemon.wait();
    succeeded(&run, source).pop().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_drill_recovers_to_the_end_of_the_wal_and_checks_its_queries() {
    let lab = pg_support::Lab::new();
    let scratch = lab.path("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let cluster = lab.cluster("primary").await;
    let c = cluster.client().await;
    c.batch_execute(
        "CREATE TABLE jobs (id int PRIMARY KEY, body text);
         INSERT INTO jobs SELECT g, md5(g::text) FROM generate_series(1, 1000) g;",
    )
    .await
    .unwrap();
    let source = |queries: &str| {
        format!(
            "name = \"main\"\nkind = \"postgres\"\npgdata = {:?}\ndsn = {:?}\n\
             schedule = \"* * * * * *\"\nrpo = \"1d\"\n[source.drill]\nSCRATCH\nqueries = [{queries}]",
            cluster.pgdata.display().to_string(),
            cluster.dsn()
        )
    };
    let queries =
        "{ name = \"jobs\", sql = \"select count(*) from jobs\", compare = \"at_least\" }, \
                   { name = \"first\", sql = \"select body from jobs where id = 1\" }";
    let config = config_file(
        &lab.path("resilience.toml"),
        &lab.repo(),
        &lab.key_file(),
        &scratch,
        &source(queries),
    );
    pg_support::chown_tree(&scratch);
    let run = |a: &[&str]| lab.run(a);
    let id = daemon_backup(run, &config, "main");
    let snapshots = lab.json(&["snapshots"]);
    let record = snapshots
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id.as_str())
        .unwrap();
    assert_eq!(record["labels"]["drill.query.jobs"], "1000", "{record:#}");
    // Rows written after the backup reach the archive, and the drill must replay them.
    c.batch_execute("INSERT INTO jobs SELECT g, md5(g::text) FROM generate_series(1001, 1500) g;")
        .await
        .unwrap();
    cluster.archive_now().await;
    let (code, report) = drill(run, &config, "main");
    assert_eq!(code, 0, "{report:#}");
    assert_all_ok(&report);
    assert_eq!(report["snapshot"], id.as_str());
    let jobs = check(&report, "query:jobs")["detail"].as_str().unwrap();
    assert!(
        jobs.starts_with("1500 on the copy, 1000 at backup time"),
        "{jobs}"
    );
    assert!(check(&report, "query:first")["detail"]
        .as_str()
        .unwrap()
        .starts_with("c4ca4238a0b923820dcc509a6f75849b on the copy"));
    assert!(check(&report, "recovery")["detail"]
        .as_str()
        .unwrap()
        .contains("promoted"));
    // RPO: the last commit replayed (the insert above) is seconds old.
    let rpo = report["rpo_seconds"].as_f64().unwrap();
    let rto = report["rto_seconds"].as_f64().unwrap();
    assert!(
        rpo < 60.0 && rto > 0.0 && rto < 120.0,
        "rpo {rpo} rto {rto}"
    );
    assert_scratch_empty(&scratch);
    // The original is untouched and still archiving on its own port.
    let n: i64 = c
        .query_one("SELECT count(*) FROM jobs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1500);
    let drills = recorded_drills(&lab.json(&["snapshots"]), &id);
    assert_eq!(drills.len(), 1);
    assert!(drills[0].0);

    // A query added after the backup has no figure: the drill fails, saying so.
    let queries = format!(
        "{queries}, {{ name = \"late\", sql = \"select 1\" }}, \
         {{ name = \"shrunk\", sql = \"select count(*) - 1000 from jobs\", compare = \"equal\" }}"
    );
    let config = config_file(
        &lab.path("resilience.toml"),
        &lab.repo(),
        &lab.key_file(),
        &scratch,
        &source(&queries),
    );
    let (code, report) = drill(run, &config, "main");
    assert_eq!(code, 1, "{report:#}");
    let late = check(&report, "query:late");
    assert_eq!(late["ok"], false);
    assert!(
        late["detail"].as_str().unwrap().contains("no figure"),
        "{late}"
    );
    assert_eq!(check(&report, "query:jobs")["ok"], true);
    assert_scratch_empty(&scratch);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_drill_restores_into_a_scratch_server_and_compares_keys_and_payloads() {
    use fred::prelude::*;
    let env = Env::new();
    let server = redis_support::start_server(env.dir.path(), false);
    let client = Builder::from_config(Config::from_url(&server.url()).unwrap())
        .build()
        .unwrap();
    client.init().await.unwrap();
    for i in 0..300 {
        let _: () = client
            .set(format!("s:{i}"), format!("value {i}"), None, None, false)
            .await
            .unwrap();
        let _: () = client
            .hset(format!("h:{i}"), [("a", i.to_string()), ("b", "x".into())])
            .await
            .unwrap();
    }
    let _: () = client
        .set(
            "ttl:key",
            "kept",
            Some(fred::types::Expiration::EX(3600)),
            None,
            false,
        )
        .await
        .unwrap();
    let backup = env.json(&[
        "redis",
        "backup",
        "--url",
        &server.url(),
        "--source",
        "cache",
    ]);
    let id = backup["id"].as_str().unwrap().to_owned();
    let config = env.config(&format!(
        "name = \"cache\"\nkind = \"redis\"\nurl = {:?}\nschedule = \"0 0 3 * * *\"\nrpo = \"1d\"\n\
         [source.drill]\nSCRATCH\nsample_every = 1",
        server.url()
    ));
    let (code, report) = drill(|a| env.cli(a), &config, "cache");
    assert_eq!(code, 0, "{report:#}");
    assert_all_ok(&report);
    assert_eq!(report["snapshot"], id.as_str());
    let count = check(&report, "key-count")["detail"].as_str().unwrap();
    assert!(
        count.starts_with("the scratch server holds 601 keys, the snapshot 601"),
        "{count}"
    );
    let payloads = check(&report, "payloads")["detail"].as_str().unwrap();
    assert!(
        payloads.starts_with("601 keys checked (every key): 0 missing"),
        "{payloads}"
    );
    assert_scratch_empty(&env.scratch());
    // The scratch server is gone.
    let scratch = check(&report, "scratch-server")["detail"].as_str().unwrap();
    let port: u16 = scratch
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|p| p.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {scratch}"));
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the scratch redis-server on {port} still runs"
    );
    let drills = recorded_drills(&env.json(&["snapshots"]), &id);
    assert_eq!(drills.len(), 1);
    assert!(drills[0].0);
    // The source server was not touched by the drill.
    let n: u64 = client.dbsize().await.unwrap();
    assert_eq!(n, 601);
}

#[test]
fn a_bucket_drill_restores_every_object_into_a_scratch_directory() {
    let env = Env::new();
    let bucket = env.path("bucket");
    std::fs::create_dir_all(bucket.join("sub")).unwrap();
    for i in 0..6 {
        std::fs::write(
            bucket.join(format!("sub/o{i}")),
            format!("object {i} ").repeat(500),
        )
        .unwrap();
    }
    let url = format!("file://{}", bucket.display());
    let id = env.json(&["bucket", "backup", &url, "--source", "assets"])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let config = env.config(&format!(
        "name = \"assets\"\nkind = \"bucket\"\nurl = {url:?}\nschedule = \"0 0 3 * * *\"\n\
         rpo = \"1d\"\n[source.drill]\nSCRATCH"
    ));
    let (code, report) = drill(|a| env.cli(a), &config, "assets");
    assert_eq!(code, 0, "{report:#}");
    assert_all_ok(&report);
    assert_eq!(report["snapshot"], id.as_str());
    let objects = check(&report, "objects")["detail"].as_str().unwrap();
    assert!(
        objects.starts_with("6 objects and 27000 bytes written"),
        "{objects}"
    );
    assert_scratch_empty(&env.scratch());
}
