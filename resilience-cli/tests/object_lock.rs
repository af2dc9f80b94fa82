//! Immutable backups on S3 Object Lock, against moto's S3 server (which implements Object
//! Lock and versioning; started by `scripts/test`, which exports
//! `RESILIENCE_TEST_MOTO_ENDPOINT`). Every lock and retention is read back with boto3, a client
//! independent of ours, and raw deletes are sent with it too.
//!
//! The retention period is 20 s (a real one is days), so the test can watch a lock lapse:
//! - `init --object-lock 20s --object-lock-mode compliance` locks every pack, manifest, key
//!   object and `config` it writes; index files, locks, catalog records are not locked;
//! - a raw `DeleteObject` of a locked version fails (AccessDenied), and one without a version
//!   only hides it behind a delete marker: the locked bytes stay readable;
//! - `forget` of a snapshot under lock plans it but keeps it (`kept_locked`, still restorable)
//!   until its date, then expires it;
//! - `prune` extends the retention of what the live snapshot needs (and not of what the
//!   forgotten one alone needs), defers deleting a repacked pack while its lock holds
//!   (`deferred`, the plan kept), and deletes it after the date;
//! - the live snapshot restores and verifies throughout.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use resilience_core::testing::pseudo_random as noise;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_resilience");

/// The retention period of the test's repository.
const PERIOD: u64 = 20;

fn moto() -> String {
    std::env::var("RESILIENCE_TEST_MOTO_ENDPOINT").unwrap_or_else(|_| {
        panic!("RESILIENCE_TEST_MOTO_ENDPOINT is not set: run the tests with scripts/test (it starts moto), or scripts/moto.sh start DIR and source DIR/env")
    })
}

/// Runs a boto3 script with the endpoint and `args` as `sys.argv[1..]`; its stdout as JSON.
fn boto3(script: &str, args: &[&str]) -> Value {
    let prelude = r#"
import boto3, json, sys, datetime
s3 = boto3.client("s3", endpoint_url=sys.argv[1], aws_access_key_id="moto",
                  aws_secret_access_key="moto", region_name="us-east-1")
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(format!("{prelude}{script}"))
        .arg(moto())
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "boto3 script failed: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "boto3 script printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Creates a bucket: with Object Lock, and with a default retention rule, as asked.
fn bucket(name: &str, lock: bool, default_rule: bool) {
    boto3(
        r#"
name, lock, rule = sys.argv[2], sys.argv[3] == "1", sys.argv[4] == "1"
s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=lock)
if rule:
    s3.put_object_lock_configuration(Bucket=name, ObjectLockConfiguration={
        "ObjectLockEnabled": "Enabled",
        "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}}})
print("{}")
"#,
        &[
            name,
            if lock { "1" } else { "0" },
            if default_rule { "1" } else { "0" },
        ],
    );
}

/// Every current object under `prefix`: key (without the prefix) → lock mode and
/// retain-until (seconds since the epoch), or nulls.
fn locks(bucket: &str, prefix: &str) -> serde_json::Map<String, Value> {
    let v = boto3(
        r#"
bucket, prefix = sys.argv[2], sys.argv[3]
out = {}
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
    for o in page.get("Contents", []):
        h = s3.head_object(Bucket=bucket, Key=o["Key"])
        until = h.get("ObjectLockRetainUntilDate")
        out[o["Key"][len(prefix):]] = {"mode": h.get("ObjectLockMode"),
            "until": until.timestamp() if until else None, "version": h.get("VersionId")}
print(json.dumps(out))
"#,
        &[bucket, prefix],
    );
    v.as_object().unwrap().clone()
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

struct Lab {
    dir: tempfile::TempDir,
    repo: String,
}

impl Lab {
    fn new(bucket: &str) -> Lab {
        Lab {
            dir: tempfile::tempdir().unwrap(),
            repo: format!("s3://{bucket}/repo?endpoint={}&region=us-east-1", moto()),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut c = Command::new(BIN);
        // moto's credentials, not the shared ones that point at Garage.
        for v in [
            "AWS_ENDPOINT_URL",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
            "AWS_REGION",
            "RESILIENCE_REPOSITORY",
            "RESILIENCE_PASSWORD",
        ] {
            c.env_remove(v);
        }
        c.env("AWS_ACCESS_KEY_ID", "moto")
            .env("AWS_SECRET_ACCESS_KEY", "moto")
            .arg("--repo")
            .arg(&self.repo)
            .arg("--key-file")
            .arg(self.dir.path().join("key"))
            .args(args)
            .output()
            .unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `forget --keep-last 1`, which must succeed; its stderr.
    fn forget(&self) -> String {
        let out = self.run(&["forget", "--keep-last", "1"]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "forget: {stderr}");
        stderr
    }

    /// A backup's status in the catalog.
    fn status(&self, id: &str) -> String {
        let listed = self.json(&["snapshots"]);
        let record = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("{id} is not listed: {listed}"));
        record["status"].as_str().unwrap().to_owned()
    }

    fn backup(&self, data: &Path) -> String {
        let v = self.json(&["backup", "dir", data.to_str().unwrap()]);
        v["id"]
            .as_str()
            .or_else(|| v["snapshot"].as_str())
            .unwrap_or_else(|| panic!("no snapshot id in {v}"))
            .to_owned()
    }

    fn restores(&self, id: &str, expected: &Path) {
        let target = self.dir.path().join(format!("restore-{}", now() as u64));
        self.json(&["restore", id, "--target", target.to_str().unwrap()]);
        for entry in std::fs::read_dir(expected).unwrap() {
            let entry = entry.unwrap();
            let back = std::fs::read(target.join(entry.file_name())).unwrap();
            assert!(
                back == std::fs::read(entry.path()).unwrap(),
                "{:?} restored differently",
                entry.file_name()
            );
        }
        self.json(&["verify"]);
    }
}

fn wait_until(t: f64) {
    let left = t - now();
    if left > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(left));
    }
}

#[test]
fn a_bucket_that_cannot_lock_is_refused_by_name() {
    let run = format!("lockless-{}", std::process::id());
    bucket(&run, false, false);
    let lab = Lab::new(&run);
    let e = lab.fails(&["init", "--object-lock", "1"]);
    assert!(e.contains(&run) && e.contains("has no Object Lock"), "{e}");
    // Nothing usable was left behind: the repository does not exist.
    let e = lab.fails(&["snapshots"]);
    assert!(
        e.contains("no repository") || e.contains("not found"),
        "{e}"
    );

    let ruled = format!("ruled-{}", std::process::id());
    bucket(&ruled, true, true);
    // A default retention rule would lock the working objects too: S3 (and moto) refuse the
    // first put of a client that sends no Content-MD5, naming the object; the client's own
    // check says so where a store lets the put through.
    let e = Lab::new(&ruled).fails(&["init", "--object-lock", "1"]);
    assert!(
        e.contains(&ruled) && (e.contains("default retention") || e.contains("Object Lock")),
        "{e}"
    );

    let bad = Lab::new(&ruled).fails(&["init", "--object-lock", "soon"]);
    assert!(bad.contains("--object-lock"), "{bad}");
}

#[test]
fn locked_backups_outlive_every_delete_until_their_date_and_maintenance_keeps_live_ones() {
    let run = format!("locked-{}", std::process::id());
    bucket(&run, true, false);
    let lab = Lab::new(&run);
    let period = format!("{PERIOD}s");
    let init = lab.json(&[
        "init",
        "--object-lock",
        &period,
        "--object-lock-mode",
        "compliance",
    ]);
    assert_eq!(init["object_lock"]["mode"], "compliance", "{init}");
    assert_eq!(init["object_lock"]["period_secs"], PERIOD, "{init}");

    let data = lab.dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("x"), noise(200_000, 1)).unwrap();
    std::fs::write(data.join("y"), noise(3_000_000, 2)).unwrap();
    let started = now();
    let a = lab.backup(&data);

    // Everything the repository cannot lose is locked, in compliance mode, for the period.
    let objects = locks(&run, "repo/");
    let mut retained = 0;
    for (key, lock) in &objects {
        let must = key == "config"
            || ["data/", "snapshots/", "keys/"]
                .iter()
                .any(|p| key.starts_with(p));
        if must {
            retained += 1;
            assert_eq!(lock["mode"], "COMPLIANCE", "{key}: {lock}");
            let until = lock["until"].as_f64().unwrap();
            assert!(
                until > started + PERIOD as f64 - 2.0 && until < now() + PERIOD as f64 + 2.0,
                "{key}: locked until {until}, written at {started}"
            );
        } else {
            assert!(lock["mode"].is_null(), "{key} should not be locked: {lock}");
        }
    }
    assert!(
        objects.keys().any(|k| k.starts_with("index/")),
        "{objects:?}"
    );
    assert!(retained >= 5, "{objects:?}");

    // A replica in another bucket with Object Lock is locked as the source is.
    let replica = format!("{run}-replica");
    bucket(&replica, true, false);
    let replica_url = format!("s3://{replica}/repo?endpoint={}&region=us-east-1", moto());
    lab.json(&["replicate", "--to", &replica_url]);
    let copied = locks(&replica, "repo/");
    for (key, lock) in &copied {
        if key.starts_with("data/") || key.starts_with("snapshots/") || key == "config" {
            assert_eq!(lock["mode"], "COMPLIANCE", "replica {key}: {lock}");
        }
    }
    assert!(copied.keys().any(|k| k.starts_with("data/")), "{copied:?}");

    // A raw delete of a locked version, with the credentials maintenance has, is refused.
    let (pack, pack_lock) = objects
        .iter()
        .find(|(k, _)| k.starts_with("data/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .unwrap();
    let denied = boto3(
        r#"
try:
    s3.delete_object(Bucket=sys.argv[2], Key=sys.argv[3], VersionId=sys.argv[4])
    print(json.dumps({"deleted": True}))
except Exception as e:
    print(json.dumps({"deleted": False, "error": str(e)}))
"#,
        &[
            &run,
            &format!("repo/{pack}"),
            pack_lock["version"].as_str().unwrap(),
        ],
    );
    assert_eq!(denied["deleted"], false, "{denied}");
    assert!(
        denied["error"].as_str().unwrap().contains("AccessDenied"),
        "{denied}"
    );

    // y goes; the next snapshot needs only x, which shares a pack with y.
    std::fs::remove_file(data.join("y")).unwrap();
    let b = lab.backup(&data);
    let b_written = now();

    // Forget plans A's expiry, and the lock keeps it, restorable.
    let forget = lab.forget();
    assert!(
        forget.contains(&format!("backup {a} stays until")),
        "A should be kept by the lock: {forget}"
    );
    assert!(forget.contains("expired 0"), "{forget}");
    assert_eq!(lab.status(&a), "succeeded");

    // Past half the period since B was written, prune extends what B needs, not A's manifest.
    wait_until(b_written + PERIOD as f64 / 2.0 + 3.0);
    let before = locks(&run, "repo/");
    let prune = lab.json(&["prune", "--grace", "0s"]);
    let retention = &prune["retention"];
    assert!(retention["extended"].as_u64().unwrap() >= 3, "{prune}");
    assert!(
        retention["expiring"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == a.as_str()),
        "{prune}"
    );
    let after = locks(&run, "repo/");
    let until = |m: &serde_json::Map<String, Value>, k: &str| m[k]["until"].as_f64().unwrap();
    let a_manifest = format!("snapshots/{a}");
    let b_manifest = format!("snapshots/{b}");
    assert_eq!(until(&before, &a_manifest), until(&after, &a_manifest));
    assert!(until(&after, &b_manifest) > now() + PERIOD as f64 - 5.0);
    assert!(until(&after, &pack) > now() + PERIOD as f64 - 5.0, "{pack}");
    assert!(until(&after, "config") > now() + PERIOD as f64 - 5.0);

    // Once A's manifest lapses, forget expires it.
    wait_until(until(&after, &a_manifest) + 1.5);
    let forget = lab.forget();
    assert!(forget.contains("expired 1"), "{forget}");
    assert_eq!(lab.status(&a), "expired");

    // The shared pack is now mostly garbage: repacked and condemned; its deletion waits for
    // its lock, which maintenance extended while B needed it.
    let first = lab.json(&["prune", "--grace", "0s"]);
    assert!(first["repacked_packs"].as_u64().unwrap() >= 1, "{first}");
    let second = lab.json(&["prune", "--grace", "0s"]);
    let deferred = second["deferred"].as_array().cloned().unwrap_or_default();
    assert!(
        deferred.iter().any(|d| d["key"] == pack.as_str()),
        "the repacked pack {pack} should be deferred: {second}"
    );
    assert_eq!(second["deleted_packs"], 0, "{second}");
    assert!(!locks(&run, "repo/prune/").is_empty(), "the plan stays");
    assert!(locks(&run, &format!("repo/{pack}")).contains_key(""));
    lab.restores(&b, &data);

    // After its date, the next prune deletes it.
    wait_until(until(&locks(&run, "repo/"), &pack) + 1.5);
    let third = lab.json(&["prune", "--grace", "0s"]);
    assert!(third["deleted_packs"].as_u64().unwrap() >= 1, "{third}");
    assert!(third["deferred"].is_null(), "{third}");
    assert!(!locks(&run, "repo/").contains_key(&pack));
    lab.restores(&b, &data);

    // A raw delete without a version only hides a locked object behind a delete marker: its
    // bytes stay, readable by version.
    let current = locks(&run, "repo/");
    let manifest_version = current[&b_manifest]["version"].as_str().unwrap().to_owned();
    let hidden = boto3(
        r#"
bucket, key, version = sys.argv[2], sys.argv[3], sys.argv[4]
s3.delete_object(Bucket=bucket, Key=key)
body = s3.get_object(Bucket=bucket, Key=key, VersionId=version)["Body"].read()
print(json.dumps({"still": len(body)}))
"#,
        &[&run, &format!("repo/{b_manifest}"), &manifest_version],
    );
    assert!(hidden["still"].as_u64().unwrap() > 0, "{hidden}");
}
