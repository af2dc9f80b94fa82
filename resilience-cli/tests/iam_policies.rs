//! The IAM policies `docs/SECURITY.md` prints, enforced by a server: moto's S3 with IAM
//! enforcement on (`scripts/moto.sh start-iam`, started by `scripts/test`, which exports
//! `RESILIENCE_TEST_MOTO_IAM_ENDPOINT` and the administrator's key).
//!
//! The policies are read out of the document when the test runs (the fenced `json` blocks
//! under "Backup writer", "Restore" and "Maintenance"), so editing the document changes what
//! is enforced. The administrator creates the buckets `backups` and `backups-eu` (versioned,
//! as the document advises) and the users `writer`, `restore` and `maintenance` with exactly
//! those policies, and `replicator`: the restore policy plus what the document's replicate
//! paragraph adds (the writer's statements for `backups-eu`, and `s3:DeleteObject` on the
//! replica's `keys/keyset-*`). Each role then runs the `resilience` binary with its own key:
//! what the document's table gives the role succeeds, and what it keeps from the role fails
//! with an error naming the object, the operation and `AccessDenied`. A writer policy that
//! drifts (one more `s3:DeleteObject`) lets the writer delete, which the same check reports.
//!
//! What moto does not enforce: IAM `Condition`s (the `s3:prefix` condition on `ListBucket`
//! is ignored, so a listing outside `billing/` is not refused here, as it is on AWS); a bulk
//! delete is checked against the bucket, not each key (resilience deletes one object at a
//! time). moto's signature check decodes percent-escapes before it recomputes a signature (so
//! `prefix=billing%2F` was refused with `SignatureDoesNotMatch`, for boto3 too);
//! `scripts/moto_iam.py` encodes them again as SigV4 does before moto checks, without which no
//! listing of a prefix would pass.
//!
//! The buckets and users are made anew on every run, so the test can run again on one server.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_resilience");

/// moto with IAM enforcement: its endpoint and the administrator's key.
struct Moto {
    endpoint: String,
    admin_id: String,
    admin_secret: String,
}

fn moto_iam() -> Moto {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: run the tests through scripts/test, or start moto with \
                 IAM enforcement with `scripts/moto.sh start-iam DIR` and source DIR/env"
            )
        })
    };
    Moto {
        endpoint: var("RESILIENCE_TEST_MOTO_IAM_ENDPOINT"),
        admin_id: var("RESILIENCE_TEST_MOTO_IAM_ACCESS_KEY_ID"),
        admin_secret: var("RESILIENCE_TEST_MOTO_IAM_SECRET_ACCESS_KEY"),
    }
}

/// The three example policies of `docs/SECURITY.md`, as the document prints them.
struct Policies {
    writer: Value,
    restore: Value,
    maintenance: Value,
}

/// Reads the policies out of `docs/SECURITY.md`; a block that is missing or not JSON panics,
/// naming it.
fn security_md_policies() -> Policies {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/SECURITY.md");
    let doc = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    Policies {
        writer: policy_under(&doc, "**Backup writer**"),
        restore: policy_under(&doc, "**Restore**"),
        maintenance: policy_under(&doc, "**Maintenance**"),
    }
}

/// The first fenced `json` block after the paragraph that starts with `label`.
fn policy_under(doc: &str, label: &str) -> Value {
    let start = doc
        .lines()
        .position(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("docs/SECURITY.md has no paragraph starting {label}"));
    let mut lines = doc.lines().skip(start + 1);
    lines
        .by_ref()
        .find(|l| l.trim() == "```json")
        .unwrap_or_else(|| panic!("docs/SECURITY.md has no ```json block after {label}"));
    let block: Vec<&str> = lines.take_while(|l| l.trim() != "```").collect();
    let policy: Value = serde_json::from_str(&block.join("\n")).unwrap_or_else(|e| {
        panic!("the policy after {label} in docs/SECURITY.md is not JSON: {e}")
    });
    assert!(
        policy["Statement"]
            .as_array()
            .is_some_and(|s| !s.is_empty()),
        "the policy after {label} in docs/SECURITY.md has no statements: {policy}"
    );
    policy
}

/// What the document's replicate paragraph adds to the restore policy: the writer's
/// statements for the replica bucket, and deleting the replica's key-set generations.
fn replica_policy(writer: &Value) -> Value {
    let on_replica = serde_json::to_string(writer)
        .unwrap()
        .replace("arn:aws:s3:::backups\"", "arn:aws:s3:::backups-eu\"")
        .replace("arn:aws:s3:::backups/", "arn:aws:s3:::backups-eu/");
    let mut policy: Value = serde_json::from_str(&on_replica).unwrap();
    let statements = policy["Statement"].as_array_mut().unwrap();
    for s in statements.iter_mut() {
        s["Sid"] = json!(format!("Replica{}", s["Sid"].as_str().unwrap_or("")));
    }
    statements.push(json!({
        "Sid": "ReplicaKeySets", "Effect": "Allow", "Action": "s3:DeleteObject",
        "Resource": "arn:aws:s3:::backups-eu/billing/keys/keyset-*"
    }));
    policy
}

/// As the administrator: (re)creates the versioned buckets and the users with their inline
/// policies, and prints each user's new access key as JSON.
const SETUP: &str = r#"
import boto3, json, sys
spec = json.loads(sys.argv[1])
kw = dict(endpoint_url=spec["endpoint"], aws_access_key_id=spec["id"],
          aws_secret_access_key=spec["secret"], region_name="us-east-1")
s3, iam = boto3.client("s3", **kw), boto3.client("iam", **kw)
existing = [b["Name"] for b in s3.list_buckets().get("Buckets", [])]
for bucket in spec["buckets"]:
    if bucket in existing:
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
            for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
                s3.delete_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])
        s3.delete_bucket(Bucket=bucket)
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
keys = {}
users = [u["UserName"] for u in iam.list_users()["Users"]]
for user, policies in spec["users"].items():
    if user in users:
        for k in iam.list_access_keys(UserName=user)["AccessKeyMetadata"]:
            iam.delete_access_key(UserName=user, AccessKeyId=k["AccessKeyId"])
        for name in iam.list_user_policies(UserName=user)["PolicyNames"]:
            iam.delete_user_policy(UserName=user, PolicyName=name)
        iam.delete_user(UserName=user)
    iam.create_user(UserName=user)
    for i, policy in enumerate(policies):
        iam.put_user_policy(UserName=user, PolicyName=f"{user}-{i}",
                            PolicyDocument=json.dumps(policy))
    k = iam.create_access_key(UserName=user)["AccessKey"]
    keys[user] = [k["AccessKeyId"], k["SecretAccessKey"]]
print(json.dumps(keys))
"#;

/// One raw S3 call with a role's key (what resilience never sends: deleting one version, a
/// delete or an overwrite outside what the binary would make); prints `ok` (for `versions`,
/// how many versions the key has) or the S3 error code.
const RAW: &str = r#"
import boto3, botocore, json, sys
spec = json.loads(sys.argv[1])
s3 = boto3.client("s3", endpoint_url=spec["endpoint"], aws_access_key_id=spec["id"],
                  aws_secret_access_key=spec["secret"], region_name="us-east-1")
args = dict(Bucket=spec["bucket"], Key=spec["key"])
try:
    if spec["op"] == "delete-version":
        v = s3.list_object_versions(Bucket=spec["bucket"], Prefix=spec["key"])["Versions"][0]
        args["VersionId"] = v["VersionId"]
    if spec["op"] in ("delete", "delete-version"):
        s3.delete_object(**args)
    if spec["op"] == "put":
        s3.put_object(Body=b"overwritten", **args)
    if spec["op"] == "versions":
        listed = s3.list_object_versions(Bucket=spec["bucket"], Prefix=spec["key"])
        print(len([v for v in listed.get("Versions", []) if v["Key"] == spec["key"]]))
    else:
        print("ok")
except botocore.exceptions.ClientError as e:
    print(e.response["Error"]["Code"])
"#;

fn python(script: &str, spec: &Value) -> String {
    let out = Command::new("python3")
        .args(["-c", script, &spec.to_string()])
        .output()
        .expect("python3 (with boto3, installed by scripts/test) runs");
    assert!(
        out.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A user's key, and how it runs `resilience` on one repository.
struct Role<'a> {
    name: &'static str,
    moto: &'a Moto,
    id: String,
    secret: String,
    key_file: PathBuf,
}

impl Role<'_> {
    fn url(&self, bucket: &str) -> String {
        format!(
            "s3://{bucket}/billing?endpoint={}&region=us-east-1",
            self.moto.endpoint
        )
    }

    fn run_on(&self, bucket: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        for v in [
            "AWS_ENDPOINT_URL",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
            "AWS_REGION",
            "RESILIENCE_REPOSITORY",
            "RESILIENCE_PASSWORD",
        ] {
            cmd.env_remove(v);
        }
        cmd.env("AWS_ACCESS_KEY_ID", &self.id)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret)
            .arg("--repo")
            .arg(self.url(bucket))
            .arg("--key-file")
            .arg(&self.key_file)
            .args(args)
            .output()
            .unwrap()
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_on("backups", args)
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{}: {args:?} must work with the document's policy: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    /// Runs a command the document keeps from this role: it must fail, naming `operation` of
    /// an object under `object` (relative to the repository) and `AccessDenied`.
    fn denied(&self, args: &[&str], operation: &str, object: &str) -> String {
        match self.try_denied(args, operation, object) {
            Ok(err) => err,
            Err(problem) => panic!("{}: {args:?}: {problem}", self.name),
        }
    }

    /// [`Role::denied`] as a check: `Err` says what was not as the document says.
    fn try_denied(&self, args: &[&str], operation: &str, object: &str) -> Result<String, String> {
        let out = self.run(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            return Err(format!("must be refused, but it succeeded: {err}"));
        }
        let named = format!("{operation} of object {object}");
        if !err.contains(&named) || !err.contains("AccessDenied") {
            return Err(format!(
                "the error must name `{named}…` and AccessDenied: {err}"
            ));
        }
        Ok(err)
    }

    /// One raw S3 call with this role's key; `ok` or the S3 error code.
    fn raw(&self, op: &str, bucket: &str, key: &str) -> String {
        let spec = json!({"endpoint": self.moto.endpoint, "id": self.id, "secret": self.secret,
                          "op": op, "bucket": bucket, "key": key});
        python(RAW, &spec)
    }
}

/// As the administrator, makes the buckets `backups` and `backups-eu` and `users` (each with
/// its inline policies) anew; the users' access keys (id, secret), in order.
fn create_users(moto: &Moto, roles: &[(&str, Vec<Value>)]) -> Vec<(String, String)> {
    let users: serde_json::Map<_, _> = roles
        .iter()
        .map(|(user, policies)| (user.to_string(), json!(policies)))
        .collect();
    let spec = json!({
        "endpoint": moto.endpoint, "id": moto.admin_id, "secret": moto.admin_secret,
        "buckets": ["backups", "backups-eu"], "users": users,
    });
    let keys: Value = serde_json::from_str(&python(SETUP, &spec)).unwrap();
    roles
        .iter()
        .map(|(user, _)| {
            let k = &keys[*user];
            (
                k[0].as_str().unwrap().to_owned(),
                k[1].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn write_tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("a.txt"), "alpha\n".repeat(1000)).unwrap();
    std::fs::write(dir.join("sub/b.bin"), vec![7u8; 300_000]).unwrap();
}

/// A WAL segment of Postgres' default size, 16 MiB.
fn segment() -> Vec<u8> {
    // xorshift64: bytes that do not compress, so the sealed object stays that large.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..2 * 1024 * 1024)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect()
}

#[test]
fn the_policies_are_read_from_security_md() {
    let p = security_md_policies();
    let actions = |policy: &Value| -> Vec<String> {
        policy["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| match &s["Action"] {
                Value::String(a) => vec![a.clone()],
                Value::Array(a) => a.iter().map(|a| a.as_str().unwrap().to_owned()).collect(),
                other => panic!("an Action that is neither a string nor a list: {other}"),
            })
            .collect()
    };
    // The three blocks are distinct: the writer can create, the restore role only read,
    // maintenance delete under the whole prefix.
    assert!(actions(&p.writer).contains(&"s3:PutObject".to_owned()));
    assert!(!actions(&p.restore).contains(&"s3:PutObject".to_owned()));
    assert!(actions(&p.maintenance).contains(&"s3:DeleteObject".to_owned()));
    let replica = replica_policy(&p.writer).to_string();
    assert!(
        replica.contains("arn:aws:s3:::backups-eu/billing/*") && !replica.contains(":::backups/"),
        "{replica}"
    );
}

#[test]
fn each_role_can_do_what_security_md_gives_it_and_nothing_else_on_moto_with_iam() {
    let moto = moto_iam();
    let policies = security_md_policies();
    let mut drifted_writer = policies.writer.clone();
    // Drift: one more statement, deleting anything under the prefix.
    drifted_writer["Statement"]
        .as_array_mut()
        .unwrap()
        .push(json!({
            "Sid": "Drift", "Effect": "Allow", "Action": "s3:DeleteObject",
            "Resource": "arn:aws:s3:::backups/billing/*"
        }));
    let users = [
        ("writer", vec![policies.writer.clone()]),
        ("restore", vec![policies.restore.clone()]),
        ("maintenance", vec![policies.maintenance.clone()]),
        (
            "replicator",
            vec![policies.restore.clone(), replica_policy(&policies.writer)],
        ),
        ("drifted-writer", vec![drifted_writer]),
    ];
    let keys = create_users(&moto, &users);

    let tmp = tempfile::tempdir().unwrap();
    let key_file = tmp.path().join("repo.key");
    let role = |i: usize| Role {
        name: users[i].0,
        moto: &moto,
        id: keys[i].0.clone(),
        secret: keys[i].1.clone(),
        key_file: key_file.clone(),
    };
    let (writer, restore, maintenance, replicator, drifted) =
        (role(0), role(1), role(2), role(3), role(4));

    // Maintenance creates the repository (the writer's policy would allow it too: creating
    // objects is what a writer does).
    maintenance.ok(&["init", "--key-file", key_file.to_str().unwrap()]);

    // The writer: append-only backups, a 16 MiB WAL segment, and reading.
    let data = tmp.path().join("data");
    write_tree(&data);
    let backup = |role: &Role, extra: &[&str]| -> Value {
        let mut args = extra.to_vec();
        args.extend([
            "backup",
            "dir",
            data.to_str().unwrap(),
            "--source-id",
            "docs",
        ]);
        role.json(&args)
    };
    let first = backup(&writer, &["--append-only"]);
    assert_eq!(first["status"], "succeeded", "{first}");
    std::fs::write(data.join("a.txt"), "changed\n").unwrap();
    let second = backup(&writer, &["--append-only"]);
    assert_eq!(second["status"], "succeeded", "{second}");
    let wal = tmp.path().join("000000010000000000000001");
    std::fs::write(&wal, segment()).unwrap();
    writer.ok(&[
        "--append-only",
        "wal-push",
        wal.to_str().unwrap(),
        "--source",
        "pg",
    ]);
    assert_eq!(writer.json(&["snapshots"]).as_array().unwrap().len(), 2);
    writer.ok(&["verify"]);
    let restored = tmp.path().join("restored-by-writer");
    writer.ok(&[
        "restore",
        first["id"].as_str().unwrap(),
        "--target",
        restored.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read_to_string(restored.join("a.txt")).unwrap(),
        "alpha\n".repeat(1000)
    );

    let held = first["id"].as_str().unwrap();
    writer_keeps_to_creating(&writer).unwrap();
    // What IAM cannot keep from a writer, because it only creates: a plain backup, and a
    // legal hold (a new catalog record; it keeps data, and releasing it takes a delete).
    backup(&writer, &[]);
    writer.ok(&["hold", held]);
    // Objects it may never delete: through its own S3 client, not only through resilience.
    assert_eq!(
        writer.raw("delete", "backups", "billing/config"),
        "AccessDenied"
    );
    assert_eq!(
        writer.raw("delete-version", "backups", "billing/config"),
        "AccessDenied"
    );

    // The restore role: read everything, write nothing.
    assert_eq!(restore.json(&["snapshots"]).as_array().unwrap().len(), 3);
    restore.ok(&["verify"]);
    let target = tmp.path().join("restored");
    restore.ok(&["restore", held, "--target", target.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(target.join("sub/b.bin")).unwrap(),
        vec![7u8; 300_000]
    );
    assert_eq!(
        std::fs::read_to_string(target.join("a.txt")).unwrap(),
        "alpha\n".repeat(1000)
    );
    let fetched = tmp.path().join("fetched");
    restore.ok(&[
        "wal-fetch",
        "000000010000000000000001",
        fetched.to_str().unwrap(),
        "--source",
        "pg",
    ]);
    assert!(std::fs::read(&fetched).unwrap() == std::fs::read(&wal).unwrap());
    let source = ["--source-id", "docs"];
    let backup_dir = ["backup", "dir", data.to_str().unwrap()];
    restore.denied(&[&backup_dir[..], &source[..]].concat(), "put", "locks/");
    restore.denied(&["forget", "--keep-last", "1"], "put", "locks/");
    restore.denied(
        &["wal-push", wal.to_str().unwrap(), "--source", "other"],
        "put",
        "wal/other/",
    );
    restore.denied(&["hold", held], "put", "");
    assert_eq!(
        restore.raw("delete", "backups", "billing/config"),
        "AccessDenied"
    );

    // The replication job: read the source, create on the replica.
    let replica = replicator.url("backups-eu");
    replicator.ok(&["replicate", "--to", &replica]);
    let out = replicator.run_on("backups-eu", &["--json", "snapshots"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let on_replica: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(on_replica.as_array().unwrap().len(), 3, "{on_replica}");
    assert!(replicator
        .run_on("backups-eu", &["verify"])
        .status
        .success());
    assert_eq!(
        replicator.raw("delete", "backups-eu", "billing/config"),
        "AccessDenied"
    );
    // The restore role alone cannot even list the replica.
    let err = restore.denied(&["replicate", "--to", &replica], "list", "");
    assert!(err.contains("in s3://backups-eu/billing failed"), "{err}");

    // Maintenance: holds, retention and garbage collection, which delete. The writer's hold
    // keeps the first backup until maintenance releases it.
    let decisions = |plan: &Value| -> Vec<(String, String)> {
        plan.as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["id"].as_str().unwrap().to_owned(),
                    d["action"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let plan = maintenance.json(&["forget", "--keep-last", "1"]);
    assert!(
        decisions(&plan).contains(&(held.to_owned(), "keep".to_owned())),
        "{plan}"
    );
    maintenance.ok(&["hold", "--release", held]);
    let plan = maintenance.json(&["forget", "--keep-last", "1"]);
    assert!(
        decisions(&plan).contains(&(held.to_owned(), "delete".to_owned())),
        "{plan}"
    );
    let mut freed = 0;
    for _ in 0..2 {
        let out = maintenance.run(&["--json", "prune", "--grace", "0s"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !err.contains("WARN"),
            "prune: {err}"
        );
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        freed +=
            report["deleted_packs"].as_u64().unwrap() + report["repacked_packs"].as_u64().unwrap();
    }
    assert!(freed > 0, "prune deleted no pack of the forgotten backups");
    maintenance.ok(&["pg", "expire-wal", "--source", "pg"]);
    let listed = restore.json(&["snapshots"]);
    let live: Vec<_> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] != "expired")
        .collect();
    assert_eq!(live.len(), 1, "{listed}");
    restore.ok(&["verify"]);
    // Old versions stay with a break-glass administrator.
    assert_eq!(
        maintenance.raw("delete-version", "backups", "billing/config"),
        "AccessDenied"
    );

    // Drift: with one backup more to forget, the document's writer policy keeps the writer
    // from deleting it; the same policy with one more delete statement does not, and the same
    // check says so.
    std::fs::write(data.join("a.txt"), "changed again\n").unwrap();
    backup(&writer, &["--append-only"]);
    writer_keeps_to_creating(&writer).unwrap();
    let drift = writer_keeps_to_creating(&drifted);
    assert!(drift.is_err(), "a drifted writer policy must be caught");

    // An overwrite, which IAM cannot refuse a writer: versioning keeps what was there, for
    // the administrator to bring back.
    assert_eq!(writer.raw("put", "backups", "billing/config"), "ok");
    let administrator = Role {
        name: "admin",
        id: moto.admin_id.clone(),
        secret: moto.admin_secret.clone(),
        ..role(0)
    };
    assert_eq!(
        administrator.raw("versions", "backups", "billing/config"),
        "2"
    );
}

/// What the document keeps from the writer: deleting a backup (`forget`, whose delete of the
/// manifest is refused) and, through its own S3 client, any object outside `locks/`. `Err`
/// says what was allowed.
fn writer_keeps_to_creating(writer: &Role) -> Result<(), String> {
    // The first delete forget makes: the manifest, or a marker of an attempt cut short.
    let err = writer.try_denied(&["forget", "--keep-last", "1"], "delete", "")?;
    if err.contains("delete of object locks/") {
        return Err(format!(
            "forget was refused the delete of its own lock: {err}"
        ));
    }
    match writer.raw("delete", "backups", "billing/data/never-written") {
        code if code == "AccessDenied" => Ok(()),
        other => Err(format!("a delete outside locks/ answered {other}")),
    }
}
