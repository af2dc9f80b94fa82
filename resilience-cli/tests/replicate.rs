//! Replication between two S3 endpoints (two Garage servers started by `scripts/test` as two
//! regions): the replica verifies and restores with the same key, catches up after more
//! backups, resumes after a kill part way, and reports a lag of zero once caught up. And from a
//! local repository into Google Cloud Storage (fake-gcs-server).

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_resilience");

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run the tests with scripts/test, which starts two Garage servers"
        )
    })
}

struct Regions {
    dir: tempfile::TempDir,
    source: String,
    replica: String,
}

impl Regions {
    fn new() -> Self {
        let bucket = env("RESILIENCE_TEST_S3_BUCKET");
        env("AWS_ENDPOINT_URL");
        let b = env("RESILIENCE_TEST_S3B_ENDPOINT");
        let region_b = env("RESILIENCE_TEST_S3B_REGION");
        let prefix = format!(
            "replication-{}",
            std::process::id() as u64 * 1000 + rand_suffix()
        );
        Regions {
            dir: tempfile::tempdir().unwrap(),
            source: format!("s3://{bucket}/{prefix}"),
            replica: format!("s3://{bucket}/{prefix}?endpoint={b}&region={region_b}"),
        }
    }

    fn run(&self, repo: &str, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(["--repo", repo, "--key-file"])
            .arg(self.dir.path().join("key"))
            .args(args)
            .env_remove("RESILIENCE_PASSWORD")
            .output()
            .unwrap()
    }

    fn ok(&self, repo: &str, args: &[&str]) -> String {
        let out = self.run(repo, args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, repo: &str, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(repo, &all)).unwrap()
    }

    fn replicate(&self, extra: &[&str]) -> Value {
        let mut args = vec!["replicate", "--to", &self.replica];
        args.extend_from_slice(extra);
        self.json(&self.source, &args)
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        % 1000
}

fn write_files(dir: &Path, seed: u64, count: usize, size: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut x = seed | 1;
    for i in 0..count {
        let mut v = Vec::with_capacity(size);
        while v.len() < size {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.extend_from_slice(&x.to_le_bytes());
        }
        std::fs::write(dir.join(format!("f{seed}-{i}")), &v).unwrap();
    }
}

fn same_tree(a: &Path, b: &Path) {
    let mut names: Vec<_> = std::fs::read_dir(a)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    for n in names {
        assert_eq!(
            std::fs::read(a.join(&n)).unwrap(),
            std::fs::read(b.join(&n)).unwrap(),
            "{n:?}"
        );
    }
}

#[test]
fn a_replica_in_another_region_verifies_restores_catches_up_and_resumes() {
    let r = Regions::new();
    let data = r.dir.path().join("data");
    write_files(&data, 1, 4, 1 << 20);
    r.ok(
        &r.source,
        &[
            "init",
            "--key-file",
            r.dir.path().join("key").to_str().unwrap(),
        ],
    );
    let first = r.json(&r.source, &["backup", "dir", data.to_str().unwrap()]);

    let rep = r.replicate(&[]);
    assert!(rep["copied_objects"].as_u64().unwrap() >= 5, "{rep}");
    assert_eq!(
        rep["read_back_objects"], 0,
        "between two Garage regions every copy is proven by its ETag: {rep}"
    );
    assert_eq!(
        (
            rep["lag_snapshots"].as_u64(),
            rep["lag_bytes"].as_u64(),
            rep["lag_seconds"].as_u64()
        ),
        (Some(0), Some(0), Some(0)),
        "{rep}"
    );
    r.ok(&r.replica, &["verify", "--full"]);
    let out = r.dir.path().join("restored");
    r.ok(
        &r.replica,
        &[
            "restore",
            first["id"].as_str().unwrap(),
            "--target",
            out.to_str().unwrap(),
        ],
    );
    same_tree(&data, &out);

    // More backups: the lag shows them, and replication catches up.
    write_files(&data, 2, 40, 1 << 20);
    let second = r.json(&r.source, &["backup", "dir", data.to_str().unwrap()]);
    let dry = r.replicate(&["--dry-run"]);
    assert_eq!(dry["lag_snapshots"], 1, "{dry}");
    assert!(dry["lag_bytes"].as_u64().unwrap() > 40 << 20, "{dry}");

    // Killed part way (throttled so that it is still running), then resumed.
    let mut child = Command::new(BIN)
        .args(["--repo", &r.source, "--key-file"])
        .arg(r.dir.path().join("key"))
        .args([
            "replicate",
            "--to",
            &r.replica,
            "--max-rate",
            "10000000",
            "--concurrency",
            "1",
        ])
        .spawn()
        .unwrap();
    // Killed once some objects are on the replica (the lag shrank), the snapshot still to come.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the throttled replication ended ({status}) before it could be killed part way");
        }
        let now = r.replicate(&["--dry-run"]);
        if now["lag_bytes"].as_u64().unwrap() < dry["lag_bytes"].as_u64().unwrap() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the throttled replication copied nothing within 120 s: {now}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = r.replicate(&["--dry-run"]);
    assert!(
        partial["lag_bytes"].as_u64().unwrap() < dry["lag_bytes"].as_u64().unwrap(),
        "some objects were copied before the kill: {partial}"
    );
    assert_eq!(
        partial["lag_snapshots"], 1,
        "the snapshot is not visible on the replica yet"
    );
    let done = r.replicate(&[]);
    assert_eq!(done["lag_snapshots"], 0, "{done}");
    assert_eq!(done["lag_bytes"], 0, "{done}");
    assert!(done["present_objects"].as_u64().unwrap() > rep["copied_objects"].as_u64().unwrap());
    r.ok(&r.replica, &["verify", "--full"]);
    let out2 = r.dir.path().join("restored2");
    r.ok(
        &r.replica,
        &[
            "restore",
            second["id"].as_str().unwrap(),
            "--target",
            out2.to_str().unwrap(),
        ],
    );
    same_tree(&data, &out2);
    let again = r.replicate(&[]);
    assert_eq!(again["copied_objects"], 0, "nothing left to copy: {again}");
}

/// Replication into Google Cloud Storage (fake-gcs-server, started by `scripts/test`): a local
/// repository holding a directory backup and a GCS bucket backup is replicated to a `gs://`
/// replica, which verifies; the directory restores identical from it, and the bucket snapshot
/// restores from it into GCS, every object with its bytes and attributes.
#[test]
fn a_replica_on_gcs_verifies_and_restores_a_directory_and_a_bucket() {
    use object_store::path::Path as ObjectPath;
    use object_store::{Attribute, GetOptions, ObjectStore, PutOptions};
    let bucket = std::env::var("RESILIENCE_TEST_GCS_BUCKET").unwrap_or_else(|_| {
        panic!("RESILIENCE_TEST_GCS_BUCKET is not set: run the tests with scripts/test, which starts fake-gcs-server")
    });
    let endpoint = std::env::var("RESILIENCE_TEST_GCS_ENDPOINT").unwrap_or_else(|_| {
        panic!("RESILIENCE_TEST_GCS_ENDPOINT is not set: run the tests with scripts/test, which starts fake-gcs-server")
    });
    let run = format!("gcs-replication-{}-{}", std::process::id(), rand_suffix());
    let gs = |p: &str| format!("gs://{bucket}/{run}/{p}?endpoint={endpoint}");
    let dir = tempfile::tempdir().unwrap();
    let r = Regions {
        source: dir.path().join("repo").display().to_string(),
        replica: gs("replica"),
        dir,
    };
    let data = r.dir.path().join("data");
    write_files(&data, 3, 3, 3 << 20);
    r.ok(
        &r.source,
        &[
            "init",
            "--key-file",
            r.dir.path().join("key").to_str().unwrap(),
        ],
    );
    let tree = r.json(&r.source, &["backup", "dir", data.to_str().unwrap()]);

    // A few objects in GCS with attributes, backed up into the local repository.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store =
        resilience_objstore::open_store(&format!("gs://{bucket}?endpoint={endpoint}"), false)
            .unwrap()
            .store;
    let objects = [
        ("a.json", "application/json", b"{}".to_vec()),
        (
            "dir/b c%+#.bin",
            "application/octet-stream",
            vec![7u8; 9 << 20],
        ),
    ];
    rt.block_on(async {
        for (key, ctype, body) in &objects {
            let mut attributes = object_store::Attributes::new();
            attributes.insert(Attribute::ContentType, ctype.to_string().into());
            attributes.insert(Attribute::Metadata("owner".into()), "billing".into());
            store
                .put_opts(
                    &ObjectPath::from(format!("{run}/src/{key}")),
                    body.clone().into(),
                    PutOptions {
                        attributes,
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
        }
    });
    let buckets = r.json(&r.source, &["bucket", "backup", &gs("src")]);
    assert_eq!(buckets["objects"], objects.len(), "{buckets}");

    let rep = r.replicate(&[]);
    assert!(rep["copied_objects"].as_u64().unwrap() >= 5, "{rep}");
    assert_eq!(rep["lag_snapshots"], 0, "{rep}");
    r.ok(&r.replica, &["verify", "--full"]);
    let out = r.dir.path().join("restored");
    r.ok(
        &r.replica,
        &[
            "restore",
            tree["id"].as_str().unwrap(),
            "--target",
            out.to_str().unwrap(),
        ],
    );
    same_tree(&data, &out);
    let restored = r.json(
        &r.replica,
        &[
            "bucket",
            "restore",
            buckets["id"].as_str().unwrap(),
            &gs("dst"),
        ],
    );
    assert_eq!(restored["written"], objects.len(), "{restored}");
    rt.block_on(async {
        for (key, ctype, body) in &objects {
            let got = store
                .get_opts(
                    &ObjectPath::from(format!("{run}/dst/{key}")),
                    GetOptions::default(),
                )
                .await
                .unwrap_or_else(|e| panic!("{key}: {e}"));
            let attributes = got.attributes.clone();
            assert_eq!(
                got.bytes().await.unwrap().as_ref(),
                body.as_slice(),
                "{key}"
            );
            assert_eq!(
                attributes.get(&Attribute::ContentType).map(|v| v.as_ref()),
                Some(*ctype),
                "{key}"
            );
            assert_eq!(
                attributes
                    .get(&Attribute::Metadata("owner".into()))
                    .map(|v| v.as_ref()),
                Some("billing"),
                "{key}"
            );
        }
    });
    let again = r.replicate(&[]);
    assert_eq!(again["copied_objects"], 0, "nothing left to copy: {again}");
}
