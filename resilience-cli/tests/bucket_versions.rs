//! Bucket versions against moto's S3 server, which implements versioning (started by
//! `scripts/test`, which exports `RESILIENCE_TEST_MOTO_ENDPOINT`): an object overwritten twice
//! and then deleted comes back as it was at each time, with its content type; after the delete
//! it is reported deleted and not restored. A store without versions, and `--as-of` on a backup
//! taken without `--versions`, are clear errors.
//!
//! The buckets are set up with boto3 (installed with moto by `scripts/test`).

use std::process::{Command, Output};

use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{Attribute, ObjectStore};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_resilience");

fn moto() -> String {
    std::env::var("RESILIENCE_TEST_MOTO_ENDPOINT").unwrap_or_else(|_| {
        panic!("RESILIENCE_TEST_MOTO_ENDPOINT is not set: run the tests with scripts/test (it starts moto)")
    })
}

/// Sets up the buckets with boto3 and prints, as JSON, the times between the writes.
const SETUP: &str = r#"
import boto3, json, sys, time, datetime
endpoint, run = sys.argv[1], sys.argv[2]
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="moto",
                  aws_secret_access_key="moto", region_name="us-east-1")
src = f"{run}-src"
s3.create_bucket(Bucket=src)
s3.put_bucket_versioning(Bucket=src, VersioningConfiguration={"Status": "Enabled"})
for i in range(5):
    s3.create_bucket(Bucket=f"{run}-r{i}")
s3.create_bucket(Bucket=f"{run}-plain")
s3.put_object(Bucket=f"{run}-plain", Key="p/x", Body=b"x")
s3.put_object(Bucket=src, Key="p/keep/stays.txt", Body=b"I stay", ContentType="text/plain")
s3.put_object(Bucket=src, Key="p/keep/big.bin", Body=bytes(range(256)) * (40000),
              ContentType="application/octet-stream")
def pause():
    time.sleep(1.3)
    t = datetime.datetime.now(datetime.timezone.utc).isoformat()
    time.sleep(1.3)
    return t
times = [pause()]
for i, ctype in [(1, "text/plain"), (2, "application/json"), (3, "text/csv")]:
    s3.put_object(Bucket=src, Key="p/docs/report.txt", Body=f"version {i}\n".encode() * (1000 * i),
                  ContentType=ctype)
    times.append(pause())
s3.delete_object(Bucket=src, Key="p/docs/report.txt")
times.append(pause())
print(json.dumps(times))
"#;

struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    /// A lab with a new repository and its key file.
    fn initialized() -> Self {
        let lab = Lab {
            dir: tempfile::tempdir().unwrap(),
        };
        let key_file = lab.dir.path().join("key");
        assert!(lab
            .run(&["init", "--key-file", key_file.to_str().unwrap()])
            .status
            .success());
        lab
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_at(&self.dir.path().join("repo"), args)
    }

    /// `args` on the repository at `repo`, opened with the lab's key.
    fn run_at(&self, repo: &std::path::Path, args: &[&str]) -> Output {
        let mut c = Command::new(BIN);
        // moto's credentials, not the shared ones that point at Garage.
        for v in [
            "AWS_ENDPOINT_URL",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
            "AWS_REGION",
        ] {
            c.env_remove(v);
        }
        c.env("AWS_ACCESS_KEY_ID", "moto")
            .env("AWS_SECRET_ACCESS_KEY", "moto")
            .args(["--repo"])
            .arg(repo)
            .arg("--key-file")
            .arg(self.dir.path().join("key"))
            .args(args)
            .output()
            .unwrap()
    }
    fn json(&self, args: &[&str]) -> Value {
        self.json_at(&self.dir.path().join("repo"), args)
    }
    fn json_at(&self, repo: &std::path::Path, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run_at(repo, &all);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

fn url(bucket: &str, prefix: &str) -> String {
    format!(
        "s3://{bucket}/{prefix}?endpoint={}&region=us-east-1",
        moto()
    )
}

fn store(bucket: &str) -> impl ObjectStore {
    AmazonS3Builder::new()
        .with_endpoint(moto())
        .with_allow_http(true)
        .with_bucket_name(bucket)
        .with_region("us-east-1")
        .with_access_key_id("moto")
        .with_secret_access_key("moto")
        .build()
        .unwrap()
}

/// The object's bytes and content type, or `None` when it is absent.
async fn read(bucket: &str, key: &str) -> Option<(Vec<u8>, Option<String>)> {
    match store(bucket).get(&Path::from(key)).await {
        Ok(r) => {
            let ctype = r
                .attributes
                .get(&Attribute::ContentType)
                .map(|v| v.to_string());
            Some((r.bytes().await.unwrap().to_vec(), ctype))
        }
        Err(object_store::Error::NotFound { .. }) => None,
        Err(e) => panic!("{bucket}/{key}: {e}"),
    }
}

fn version(i: usize) -> Vec<u8> {
    format!("version {i}\n").repeat(1000 * i).into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_object_overwritten_twice_then_deleted_comes_back_as_of_each_time() {
    let endpoint = moto();
    let run = format!("v{}", std::process::id());
    let setup = Command::new("python3")
        .args(["-c", SETUP, &endpoint, &run])
        .output()
        .unwrap();
    assert!(
        setup.status.success(),
        "boto3 setup: {}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let times: Vec<String> = serde_json::from_slice(&setup.stdout).unwrap();
    assert_eq!(times.len(), 5);

    let lab = Lab::initialized();
    let src = url(&format!("{run}-src"), "p");

    // Without --versions: only the current objects, and --as-of is refused, clearly.
    let plain = lab.json(&["bucket", "backup", &src]);
    assert_eq!(plain["objects"], 2, "{plain}");
    let refused = lab.fails(&[
        "bucket",
        "restore",
        plain["id"].as_str().unwrap(),
        &url(&format!("{run}-r0"), ""),
        "--as-of",
        &times[1],
    ]);
    assert!(refused.contains("without --versions"), "{refused}");

    let first = lab.json(&["bucket", "backup", "--versions", &src]);
    assert_eq!(first["objects"], 2, "current objects: {first}");
    assert_eq!(
        first["other_versions"], 4,
        "three versions and a delete marker: {first}"
    );
    let second = lab.json(&["bucket", "backup", "--versions", &src]);
    assert_eq!(
        second["objects_reused"], 6,
        "versions are never read twice: {second}"
    );
    let id = second["id"].as_str().unwrap();

    for (i, at) in times.iter().enumerate() {
        let bucket = format!("{run}-r{i}");
        let done = lab.json(&["bucket", "restore", id, &url(&bucket, ""), "--as-of", at]);
        assert_eq!(done["refused"], Value::Array(vec![]), "{done}");
        let report = read(&bucket, "docs/report.txt").await;
        match i {
            0 => {
                assert_eq!(report, None, "not yet written at {at}");
                assert_eq!(done["not_yet_created"], 1, "{done}");
            }
            1..=3 => {
                let ctype = ["text/plain", "application/json", "text/csv"][i - 1];
                assert_eq!(
                    report,
                    Some((version(i), Some(ctype.to_owned()))),
                    "version {i} as of {at}"
                );
                assert_eq!(done["deleted"], Value::Array(vec![]), "{done}");
            }
            _ => {
                assert_eq!(report, None, "deleted before {at}");
                assert_eq!(
                    done["deleted"],
                    serde_json::json!(["docs/report.txt"]),
                    "the restore reports the deleted object: {done}"
                );
            }
        }
        // The objects that stay are there at every time.
        let (stays, ctype) = read(&bucket, "keep/stays.txt").await.unwrap();
        assert_eq!(
            (stays.as_slice(), ctype.as_deref()),
            (&b"I stay"[..], Some("text/plain"))
        );
        let (big, _) = read(&bucket, "keep/big.bin").await.unwrap();
        assert_eq!(big.len(), 256 * 40000);
        assert!(big.chunks(256).all(|c| c.iter().copied().eq(0..=255u8)));
    }

    // Without --as-of: the objects current at the backup (the deleted one is not among them).
    let current = lab.json(&["bucket", "restore", id, &url(&format!("{run}-r0"), "now")]);
    assert_eq!(current["written"], 2, "{current}");
    assert_eq!(current["other_versions"], 4, "{current}");
    assert_eq!(
        read(&format!("{run}-r0"), "now/docs/report.txt").await,
        None
    );

    // A bad time is a usage error naming the flag.
    let bad = lab.fails(&[
        "bucket",
        "restore",
        id,
        &url(&format!("{run}-r0"), "x"),
        "--as-of",
        "yesterday",
    ]);
    assert!(bad.contains("--as-of"), "{bad}");
}

#[test]
fn versions_from_a_store_that_keeps_none_is_a_clear_error() {
    let run = format!("n{}", std::process::id());
    let setup = Command::new("python3")
        .args([
            "-c",
            "import boto3, sys; s3 = boto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id='moto', aws_secret_access_key='moto', region_name='us-east-1'); s3.create_bucket(Bucket=sys.argv[2]); s3.put_object(Bucket=sys.argv[2], Key='a', Body=b'a')",
            &moto(),
            &run,
        ])
        .output()
        .unwrap();
    assert!(
        setup.status.success(),
        "{}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let lab = Lab::initialized();
    let unversioned = lab.fails(&["bucket", "backup", "--versions", &url(&run, "")]);
    assert!(
        unversioned.contains("versioning is not enabled") && unversioned.contains(&run),
        "{unversioned}"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"f").unwrap();
    let local = lab.fails(&[
        "bucket",
        "backup",
        "--versions",
        dir.path().to_str().unwrap(),
    ]);
    assert!(local.contains("only S3 buckets keep versions"), "{local}");
    // The refused backups are recorded as failed, with the reason; none succeeded.
    let list = lab.json(&["snapshots"]);
    let records = list.as_array().unwrap();
    assert_eq!(records.len(), 2, "{list}");
    for r in records {
        assert_eq!(r["status"], "failed", "{r}");
        assert!(
            r["error"]
                .as_str()
                .unwrap()
                .contains("does not keep object versions"),
            "{r}"
        );
    }
}

/// Keys that object_store cannot name — a leading, trailing or doubled `/`, `.` and `..`
/// segments, control characters — round-trip through `bucket backup --versions`, `bucket
/// restore`, `bucket restore --as-of` and a restore from a replica, on moto (which holds them as S3 does). The buckets
/// are written and read back with boto3, a client independent of ours.
const ODD_KEYS: &str = r#"
import boto3, json, sys, time, datetime
endpoint, run, mode = sys.argv[1], sys.argv[2], sys.argv[3]
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="moto",
                  aws_secret_access_key="moto", region_name="us-east-1")
keys = ["/lead", "trail/", "a//b", "//x//", "d/./e", "f/../g", "./h", "i/..", "ctl",
        "/", "ok/ünï cødé %41+#?=&.txt"]
if mode == "setup":
    src = f"{run}-src"
    s3.create_bucket(Bucket=src)
    s3.put_bucket_versioning(Bucket=src, VersioningConfiguration={"Status": "Enabled"})
    for b in ["now", "then", "replica"]:
        s3.create_bucket(Bucket=f"{run}-{b}")
    for k in keys:
        s3.put_object(Bucket=src, Key=k, Body=("old " + k).encode(), ContentType="text/old")
    time.sleep(1.3)
    t = datetime.datetime.now(datetime.timezone.utc).isoformat()
    time.sleep(1.3)
    for k in keys[:4]:
        s3.put_object(Bucket=src, Key=k, Body=("new " + k).encode(), ContentType="text/new",
                      Metadata={"owner": "billing"})
    s3.delete_object(Bucket=src, Key=keys[4])
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=src)["Contents"]]
    assert sorted(listed) == sorted(keys[:4] + keys[5:]), listed
    print(json.dumps(t))
else:
    out = {}
    for o in s3.list_objects_v2(Bucket=mode).get("Contents", []):
        got = s3.get_object(Bucket=mode, Key=o["Key"])
        out[o["Key"]] = [got["Body"].read().decode(), got["ContentType"], got["Metadata"]]
    print(json.dumps(out))
"#;

fn odd_keys(run: &str, mode: &str) -> Value {
    let out = Command::new("python3")
        .args(["-c", ODD_KEYS, &moto(), run, mode])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "boto3 {mode}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn keys_object_store_cannot_name_round_trip_with_their_versions() {
    let run = format!("odd{}", std::process::id());
    let then = odd_keys(&run, "setup");
    let lab = Lab::initialized();
    let backup = lab.json(&[
        "bucket",
        "backup",
        "--versions",
        &url(&format!("{run}-src"), ""),
    ]);
    assert_eq!(backup["status"], "succeeded", "{backup}");
    assert_eq!(backup["objects"], 10, "{backup}");
    let id = backup["id"].as_str().unwrap();

    let keys = [
        "/lead",
        "trail/",
        "a//b",
        "//x//",
        "d/./e",
        "f/../g",
        "./h",
        "i/..",
        "c\u{1}t\u{1f}l",
        "/",
        "ok/ünï cødé %41+#?=&.txt",
    ];
    let now = lab.json(&["bucket", "restore", id, &url(&format!("{run}-now"), "")]);
    assert_eq!(now["written"], 10, "{now}");
    let restored = odd_keys(&run, &format!("{run}-now"));
    let mut expected = serde_json::Map::new();
    for (i, key) in keys.iter().enumerate() {
        let entry = match i {
            0..=3 => serde_json::json!([format!("new {key}"), "text/new", {"owner": "billing"}]),
            4 => continue,
            _ => serde_json::json!([format!("old {key}"), "text/old", {}]),
        };
        expected.insert(key.to_string(), entry);
    }
    assert_eq!(restored, Value::Object(expected), "the current objects");

    let as_of = lab.json(&[
        "bucket",
        "restore",
        id,
        &url(&format!("{run}-then"), ""),
        "--as-of",
        then.as_str().unwrap(),
    ]);
    assert_eq!(as_of["written"], 11, "{as_of}");
    let restored = odd_keys(&run, &format!("{run}-then"));
    let expected: serde_json::Map<String, Value> = keys
        .iter()
        .map(|k| {
            (
                k.to_string(),
                serde_json::json!([format!("old {k}"), "text/old", {}]),
            )
        })
        .collect();
    assert_eq!(
        restored,
        Value::Object(expected),
        "the objects as they were"
    );

    // The replica (another region) restores the same keys: a replicated snapshot restored
    // into a bucket emptied meanwhile brings every current object back under its name.
    let replica = lab.dir.path().join("replica");
    lab.json(&["replicate", "--to", replica.to_str().unwrap()]);
    let from_replica = lab.json_at(
        &replica,
        &["bucket", "restore", id, &url(&format!("{run}-replica"), "")],
    );
    assert_eq!(from_replica["written"], 10, "{from_replica}");
    assert_eq!(
        odd_keys(&run, &format!("{run}-replica")),
        odd_keys(&run, &format!("{run}-now")),
        "restored from the replica"
    );

    // A resumed restore finds every object already there.
    let again = lab.json(&["bucket", "restore", id, &url(&format!("{run}-now"), "")]);
    assert_eq!(
        (again["written"].clone(), again["skipped"].clone()),
        (0.into(), 10.into()),
        "{again}"
    );
}
