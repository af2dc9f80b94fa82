//! Least privilege, as `docs/SECURITY.md` gives it, enforced by a real S3 server: a Garage of
//! the test's own with one key per role and per-key bucket permissions. Each role runs the
//! commands the document gives it, which must work, and the forbidden ones, which must fail
//! with an error naming the object refused.
//!
//! | role        | Garage permission on the repository bucket | commands |
//! |-------------|---------------------------------------------|----------|
//! | writer      | read + write (not owner)                    | `--append-only` backup, wal-push, verify |
//! | restore     | read only (+ write on the replica bucket)   | snapshots, verify, restore, wal-fetch, replicate |
//! | maintenance | read + write + owner                        | init, forget, prune, pg expire-wal |

mod garage_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use garage_support::{Garage, S3Key};

const BIN: &str = env!("CARGO_BIN_EXE_resilience");

struct Role<'a> {
    garage: &'a Garage,
    key: S3Key,
    repo: String,
    key_file: PathBuf,
}

impl Role<'_> {
    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.arg("--repo")
            .arg(&self.repo)
            .arg("--key-file")
            .arg(&self.key_file)
            .args(args)
            .env_remove("RESILIENCE_REPOSITORY")
            .env_remove("RESILIENCE_PASSWORD");
        self.garage.with_key(&mut cmd, &self.key).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} must work with this role's permissions: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    /// Runs a command that the role's permissions forbid: it fails, naming the object the
    /// server refused and saying it was refused.
    fn refused(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "{args:?} must be refused with this role's permissions"
        );
        let lower = err.to_lowercase();
        assert!(
            lower.contains("forbidden") || lower.contains("denied") || lower.contains("403"),
            "{args:?}: the error must say access was refused: {err}"
        );
        assert!(
            err.contains("repo/"),
            "{args:?}: the error must name the object: {err}"
        );
        err
    }
}

fn write_tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("a.txt"), "alpha\n".repeat(1000)).unwrap();
    std::fs::write(dir.join("sub/b.bin"), vec![7u8; 300_000]).unwrap();
}

#[test]
fn each_role_works_with_exactly_the_permissions_security_md_gives_it() {
    let tmp = tempfile::tempdir().unwrap();
    let garage = Garage::start(&tmp.path().join("garage"), "perms");
    let bucket = garage.bucket.clone();
    garage.bucket("replica");
    let writer_key = garage.key("backup-writer");
    garage.allow(&bucket, "backup-writer", &["--read", "--write"]);
    let restore_key = garage.key("restore");
    garage.allow(&bucket, "restore", &["--read"]);
    garage.allow("replica", "restore", &["--read", "--write"]);

    let key_file = tmp.path().join("repo.key");
    let role = |key: &S3Key| Role {
        garage: &garage,
        key: key.clone(),
        repo: garage.url(&bucket, "repo"),
        key_file: key_file.clone(),
    };
    let maintenance = role(&garage.admin);
    let writer = role(&writer_key);
    let restore = role(&restore_key);

    // Maintenance creates the repository.
    maintenance.ok(&["init", "--key-file", key_file.to_str().unwrap()]);

    // The writer: append-only backups and WAL pushes; reading is allowed.
    let data = tmp.path().join("data");
    write_tree(&data);
    let first = writer.json(&[
        "--append-only",
        "backup",
        "dir",
        data.to_str().unwrap(),
        "--source-id",
        "docs",
    ]);
    assert_eq!(first["status"], "succeeded", "{first}");
    std::fs::write(data.join("a.txt"), "changed\n").unwrap();
    writer.json(&[
        "--append-only",
        "backup",
        "dir",
        data.to_str().unwrap(),
        "--source-id",
        "docs",
    ]);
    let history = tmp.path().join("00000002.history");
    std::fs::write(&history, "1\t0/3000000\tno recovery target specified\n").unwrap();
    writer.ok(&[
        "--append-only",
        "wal-push",
        history.to_str().unwrap(),
        "--source",
        "pg",
    ]);
    writer.ok(&["verify"]);
    // Deletion is what append-only mode refuses on the writer's side (Garage cannot forbid
    // delete separately from write).
    let out = writer.run(&["--append-only", "forget", "--keep-last", "1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("append-only"));

    // The restore role: read everything, write nothing in the repository.
    let listed = restore.json(&["snapshots"]);
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    restore.ok(&["verify"]);
    let target = tmp.path().join("restored");
    restore.ok(&[
        "restore",
        first["id"].as_str().unwrap(),
        "--target",
        target.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(target.join("sub/b.bin")).unwrap(),
        vec![7u8; 300_000]
    );
    assert_eq!(
        std::fs::read_to_string(target.join("a.txt")).unwrap(),
        "alpha\n".repeat(1000)
    );
    let fetched = tmp.path().join("fetched.history");
    restore.ok(&[
        "wal-fetch",
        "00000002.history",
        fetched.to_str().unwrap(),
        "--source",
        "pg",
    ]);
    assert_eq!(
        std::fs::read(&fetched).unwrap(),
        std::fs::read(&history).unwrap()
    );
    // Replication needs only read on the source, write on the replica.
    let replica = garage.url("replica", "repo");
    restore.ok(&["replicate", "--to", &replica]);
    let on_replica = Role {
        repo: replica.clone(),
        ..role(&restore_key)
    };
    on_replica.ok(&["verify"]);
    // Forbidden to the restore role: anything that writes or deletes in the repository.
    restore.refused(&[
        "backup",
        "dir",
        data.to_str().unwrap(),
        "--source-id",
        "docs",
    ]);
    restore.refused(&["wal-push", history.to_str().unwrap(), "--source", "other"]);
    restore.refused(&["forget", "--keep-last", "1"]);

    // Maintenance: retention and garbage collection, which delete.
    let plan = maintenance.json(&["forget", "--keep-last", "1"]);
    assert!(
        plan.as_array()
            .unwrap()
            .iter()
            .any(|d| d["action"] == "delete"),
        "{plan}"
    );
    maintenance.ok(&["prune", "--grace", "0s"]);
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
}
