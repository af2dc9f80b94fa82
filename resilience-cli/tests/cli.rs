//! The `resilience` binary end to end on a local repository: what scripts rely on, corruption,
//! a backup killed with SIGKILL, concurrent backups, and bad input.

mod tree_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use tree_support::same_tree;

const BIN: &str = env!("CARGO_BIN_EXE_resilience");

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    fn repo(&self) -> String {
        self.path("repo").display().to_string()
    }
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("RESILIENCE_PASSWORD", "correct horse")
            .env_remove("RESILIENCE_REPOSITORY");
        c
    }
    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }
    fn init(&self) {
        self.ok(&["init", "--repo", &self.repo()]);
    }
    fn backup(&self, dir: &Path) -> Value {
        self.json(&[
            "backup",
            "--repo",
            &self.repo(),
            "--json",
            "dir",
            dir.to_str().unwrap(),
        ])
    }
    fn packs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let Ok(dirs) = std::fs::read_dir(self.path("repo/data")) else {
            return out;
        };
        for d in dirs {
            for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
                out.push(f.unwrap().path());
            }
        }
        out.sort();
        out
    }
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn make_tree(root: &Path, seed: u64, big: usize) {
    std::fs::create_dir_all(root.join("nested/deeper")).unwrap();
    std::fs::write(
        root.join("notes.txt"),
        format!("notes {seed}\n").repeat(1000),
    )
    .unwrap();
    std::fs::write(root.join("nested/random.bin"), random_bytes(big, seed)).unwrap();
    std::fs::write(root.join("nested/deeper/empty"), b"").unwrap();
    std::os::unix::fs::symlink("../notes.txt", root.join("nested/link")).unwrap();
}

/// Whether `s` looks like an RFC 3339 time (`2024-05-01T12:00:00.123+00:00`).
fn chrono_like(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && (s.ends_with('Z') || s[s.len() - 6..].starts_with(['+', '-']))
}

#[test]
fn backup_list_restore_verify_and_deduplicate() {
    let env = Env::new();
    env.init();
    let data = env.path("data");
    make_tree(&data, 1, 6 << 20);
    let id = env.ok(&[
        "backup",
        "--repo",
        &env.repo(),
        "dir",
        data.to_str().unwrap(),
        "--label",
        "env=prod",
        "--label",
        "team=billing",
    ]);
    let id = id.trim().to_owned();
    assert!(id.len() > 10 && !id.contains(' '), "{id:?}");

    // `--json` is accepted before the command too, and the repository as a file:// URL.
    let file_url = format!("file://{}", env.repo());
    let list = env.json(&["--json", "snapshots", "--repo", &file_url]);
    let s = &list.as_array().unwrap()[0];
    for field in [
        "id",
        "source",
        "status",
        "started_at",
        "finished_at",
        "logical_bytes",
        "stored_bytes",
        "labels",
    ] {
        assert!(s.get(field).is_some(), "missing {field} in {s}");
    }
    assert_eq!(s["id"], id.as_str());
    assert_eq!(s["status"], "succeeded");
    assert_eq!(s["labels"]["env"], "prod");
    assert_eq!(s["labels"]["team"], "billing");
    assert!(chrono_like(s["started_at"].as_str().unwrap()), "{s}");
    let table = env.ok(&["snapshots", "--repo", &env.repo()]);
    assert!(
        table.contains(&id) && table.contains("env=prod") && table.contains("succeeded"),
        "{table}"
    );

    let second = env.backup(&data);
    for field in [
        "id",
        "logical_bytes",
        "new_bytes",
        "stored_bytes",
        "duration_ms",
    ] {
        assert!(second.get(field).is_some(), "missing {field} in {second}");
    }
    let (logical, stored) = (
        second["logical_bytes"].as_u64().unwrap(),
        second["stored_bytes"].as_u64().unwrap(),
    );
    assert!(
        stored * 100 < logical,
        "second backup stored {stored} of {logical}"
    );
    assert_eq!(second["new_bytes"], 0);

    let restored = env.json(&[
        "restore",
        "--repo",
        &env.repo(),
        "latest",
        "--target",
        env.path("out").to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(restored["snapshot"], second["id"]);
    assert_eq!(restored["bytes"], second["logical_bytes"]);
    assert!(restored["entries"].as_u64().unwrap() >= 4 && restored.get("duration_ms").is_some());
    same_tree(&data, &env.path("out"));
    // A unique id prefix names a snapshot; the repository may come from the environment;
    // `--no-sync` restores the same tree without waiting for the disk.
    let by_prefix = env
        .cmd(&[
            "restore",
            &id[..id.len() - 2],
            "--target",
            env.path("out2").to_str().unwrap(),
            "--no-sync",
        ])
        .env("RESILIENCE_REPOSITORY", env.repo())
        .output()
        .unwrap();
    assert!(
        by_prefix.status.success(),
        "{}",
        String::from_utf8_lossy(&by_prefix.stderr)
    );
    same_tree(&data, &env.path("out2"));
    let verified = env.ok(&["verify", "--repo", &env.repo()]);
    assert!(verified.contains("sound"), "{verified}");
    let full = env.json(&["verify", "--repo", &env.repo(), "--full", "--json"]);
    assert_eq!(full["damaged"].as_array().unwrap().len(), 0);
    assert!(full["blobs_checked"].as_u64().unwrap() > 0);
}

/// Two snapshots of different directories, in separate packs; returns their ids and the packs
/// of the first.
fn two_snapshots(env: &Env) -> (String, String, Vec<PathBuf>) {
    env.init();
    make_tree(&env.path("a"), 1, 3 << 20);
    make_tree(&env.path("b"), 2, 3 << 20);
    let a = env.backup(&env.path("a"))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let packs_a = env.packs();
    let b = env.backup(&env.path("b"))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    (a, b, packs_a)
}

fn damaged(env: &Env) -> (i32, Value) {
    let out = env.run(&["verify", "--repo", &env.repo(), "--json"]);
    (
        out.status.code().unwrap(),
        serde_json::from_slice(&out.stdout).unwrap(),
    )
}

#[test]
fn a_flipped_byte_is_named_with_exactly_the_snapshots_it_affects() {
    let env = Env::new();
    let (a, b, packs_a) = two_snapshots(&env);
    let pack = &packs_a[0];
    let mut bytes = std::fs::read(pack).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(pack, bytes).unwrap();
    let (code, report) = damaged(&env);
    assert_eq!(code, 3);
    let list = report["damaged"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{report}");
    let name = pack.file_name().unwrap().to_str().unwrap();
    assert!(list[0]["object"].as_str().unwrap().ends_with(name));
    assert_eq!(list[0]["affected_snapshots"], serde_json::json!([a]));
    // The text output names it too.
    let out = env.run(&["verify", "--repo", &env.repo()]);
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("DAMAGED "))
        .unwrap_or_else(|| panic!("no DAMAGED line: {text}"));
    assert!(
        line.contains(name) && line.ends_with(&format!("(affects: {a})")),
        "{line}"
    );
    assert!(!text.contains(&b), "{text}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("error: the repository is damaged"));
    // Restoring the affected snapshot fails naming the object; the other restores.
    let out = env.run(&[
        "restore",
        "--repo",
        &env.repo(),
        &a,
        "--target",
        env.path("ra").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(name),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.ok(&[
        "restore",
        "--repo",
        &env.repo(),
        &b,
        "--target",
        env.path("rb").to_str().unwrap(),
    ]);
    same_tree(&env.path("b"), &env.path("rb"));
}

#[test]
fn a_truncated_or_deleted_pack_is_named() {
    let env = Env::new();
    let (a, _b, packs_a) = two_snapshots(&env);
    let pack = &packs_a[0];
    let name = pack.file_name().unwrap().to_str().unwrap().to_owned();
    let bytes = std::fs::read(pack).unwrap();
    std::fs::write(pack, &bytes[..bytes.len() - 100]).unwrap();
    let (code, report) = damaged(&env);
    assert_eq!(code, 3);
    assert!(report["damaged"][0]["object"]
        .as_str()
        .unwrap()
        .ends_with(&name));
    assert_eq!(
        report["damaged"][0]["affected_snapshots"],
        serde_json::json!([a])
    );
    std::fs::remove_file(pack).unwrap();
    let (code, report) = damaged(&env);
    assert_eq!(code, 3);
    assert!(report["damaged"][0]["problem"]
        .as_str()
        .unwrap()
        .contains("missing"));
    assert_eq!(
        report["damaged"][0]["affected_snapshots"],
        serde_json::json!([a])
    );
    let out = env.run(&[
        "restore",
        "--repo",
        &env.repo(),
        &a,
        "--target",
        env.path("ra").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&name));
}

#[test]
fn a_backup_killed_part_way_claims_nothing_and_the_next_one_reuses_its_work() {
    let env = Env::new();
    env.init();
    let data = env.path("data");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..12u64 {
        std::fs::write(data.join(format!("f{i:02}")), random_bytes(16 << 20, i)).unwrap();
    }
    let mut child = env
        .cmd(&[
            "backup",
            "--repo",
            &env.repo(),
            "dir",
            data.to_str().unwrap(),
        ])
        .spawn()
        .unwrap();
    // Killed once it has written two packs.
    let started = std::time::Instant::now();
    while env.packs().len() < 2 {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the backup ended ({status}) before it could be killed part way");
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "the backup wrote {} packs in 60 s, waiting for 2",
            env.packs().len()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!env.packs().is_empty());

    let list = env.json(&["snapshots", "--repo", &env.repo(), "--json"]);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] != "succeeded"),
        "{list}"
    );
    env.ok(&["verify", "--repo", &env.repo()]);

    let next = env.backup(&data);
    let (logical, new) = (
        next["logical_bytes"].as_u64().unwrap(),
        next["new_bytes"].as_u64().unwrap(),
    );
    assert_eq!(logical, 12 * (16 << 20));
    assert!(new < logical, "nothing reused: {new} of {logical}");
    let list = env.json(&["snapshots", "--repo", &env.repo(), "--json"]);
    let statuses: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect();
    assert!(
        statuses.contains(&"failed") && statuses.contains(&"succeeded"),
        "{statuses:?}"
    );
    env.ok(&["verify", "--repo", &env.repo()]);
    env.ok(&[
        "restore",
        "--repo",
        &env.repo(),
        "latest",
        "--target",
        env.path("out").to_str().unwrap(),
    ]);
    same_tree(&data, &env.path("out"));
}

#[test]
fn two_backups_at_once_both_succeed_and_verify() {
    let env = Env::new();
    env.init();
    make_tree(&env.path("a"), 1, 8 << 20);
    make_tree(&env.path("b"), 2, 8 << 20);
    let spawn = |d: &str| {
        env.cmd(&[
            "backup",
            "--repo",
            &env.repo(),
            "--json",
            "dir",
            env.path(d).to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
    };
    let (ca, cb) = (spawn("a"), spawn("b"));
    let (oa, ob) = (
        ca.wait_with_output().unwrap(),
        cb.wait_with_output().unwrap(),
    );
    assert!(oa.status.success() && ob.status.success());
    let list = env.json(&["snapshots", "--repo", &env.repo(), "--json"]);
    assert_eq!(
        list.as_array()
            .unwrap()
            .iter()
            .filter(|s| s["status"] == "succeeded")
            .count(),
        2
    );
    env.ok(&["verify", "--repo", &env.repo(), "--full"]);
}

#[test]
fn bad_input_is_a_clear_error_and_nothing_is_claimed() {
    let env = Env::new();
    let missing = env.run(&["snapshots", "--repo", &env.repo()]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no repository"));
    assert!(
        !env.path("repo").exists(),
        "a read command created the repository directory"
    );

    let nokey = Command::new(BIN)
        .args(["init", "--repo", &env.repo()])
        .env_remove("RESILIENCE_PASSWORD")
        .output()
        .unwrap();
    assert_eq!(nokey.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&nokey.stderr).contains("RESILIENCE_PASSWORD"));
    assert!(!env.path("repo").exists(), "init without a key created it");

    env.init();
    let key = env.path("late.key");
    let twice = env.run(&[
        "init",
        "--repo",
        &env.repo(),
        "--key-file",
        key.to_str().unwrap(),
    ]);
    assert_eq!(twice.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&twice.stderr).contains("already exists"));
    assert!(!key.exists(), "a failed init left a key file behind");

    let wrong = env
        .cmd(&["snapshots", "--repo", &env.repo()])
        .env("RESILIENCE_PASSWORD", "battery staple")
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(1));
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(err.contains("wrong passphrase"), "{err}");
    assert!(
        !err.contains("battery staple"),
        "the passphrase was printed: {err}"
    );

    let nopath = env.run(&[
        "backup",
        "--repo",
        &env.repo(),
        "dir",
        env.path("nowhere").to_str().unwrap(),
    ]);
    assert_eq!(nopath.status.code(), Some(1));
    let err = String::from_utf8_lossy(&nopath.stderr);
    assert!(
        err.starts_with("error: ") && err.contains("nowhere"),
        "{err}"
    );
    let list = env.json(&["snapshots", "--repo", &env.repo(), "--json"]);
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["status"] != "succeeded"));

    let nokey = Command::new(BIN)
        .args(["snapshots", "--repo", &env.repo()])
        .env_remove("RESILIENCE_PASSWORD")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&nokey.stderr).contains("RESILIENCE_PASSWORD"));
}

#[test]
fn a_key_file_opens_the_repository_beside_the_passphrase() {
    let env = Env::new();
    let key = env.path("repo.key");
    env.ok(&[
        "init",
        "--repo",
        &env.repo(),
        "--key-file",
        key.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(&key).unwrap();
    assert_eq!(text.trim().len(), 64);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let by_key = Command::new(BIN)
        .args([
            "snapshots",
            "--repo",
            &env.repo(),
            "--key-file",
            key.to_str().unwrap(),
        ])
        .env_remove("RESILIENCE_PASSWORD")
        .output()
        .unwrap();
    assert!(by_key.status.success());
    env.ok(&["snapshots", "--repo", &env.repo()]);
}

#[test]
fn retention_hold_prune_and_append_only_through_the_cli() {
    let env = Env::new();
    env.init();
    for i in 0..3u64 {
        let d = env.path(&format!("d{i}"));
        make_tree(&d, 10 + i, 2 << 20);
        env.ok(&[
            "backup",
            "--repo",
            &env.repo(),
            "dir",
            d.to_str().unwrap(),
            "--source-id",
            "docs",
        ]);
    }
    let ids: Vec<String> = env
        .json(&["snapshots", "--repo", &env.repo(), "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    env.ok(&["hold", "--repo", &env.repo(), &ids[0]]);

    // Append-only: backups work, forget is refused, nothing is lost.
    env.ok(&[
        "--append-only",
        "backup",
        "--repo",
        &env.repo(),
        "dir",
        env.path("d2").to_str().unwrap(),
        "--source-id",
        "docs",
    ]);
    let refused = env.run(&[
        "--append-only",
        "forget",
        "--repo",
        &env.repo(),
        "--keep-last",
        "1",
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("append-only"));

    let plan = env.json(&[
        "forget",
        "--repo",
        &env.repo(),
        "--keep-last",
        "1",
        "--dry-run",
        "--json",
    ]);
    let actions: Vec<(&str, &str)> = plan
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["id"].as_str().unwrap(), d["action"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions.iter().filter(|(_, a)| *a == "keep").count(),
        2,
        "{plan}"
    );
    assert!(
        actions.contains(&(ids[0].as_str(), "keep")),
        "the held backup is kept"
    );
    assert!(plan
        .as_array()
        .unwrap()
        .iter()
        .all(|d| !d["reasons"].as_array().unwrap().is_empty()));
    env.ok(&["forget", "--repo", &env.repo(), "--keep-last", "1"]);
    let first = env.json(&["prune", "--repo", &env.repo(), "--grace", "0s", "--json"]);
    assert!(first["condemned_packs"].as_u64().unwrap() > 0, "{first}");
    let second = env.json(&["prune", "--repo", &env.repo(), "--grace", "0s", "--json"]);
    assert!(second["freed_bytes"].as_u64().unwrap() > 0, "{second}");
    env.ok(&["verify", "--repo", &env.repo(), "--full"]);
    env.ok(&["hold", "--repo", &env.repo(), &ids[0], "--release"]);
    env.ok(&[
        "restore",
        "--repo",
        &env.repo(),
        &ids[0],
        "--target",
        env.path("held").to_str().unwrap(),
    ]);
    same_tree(&env.path("d0"), &env.path("held"));
}

/// An unreadable file is an error naming it, and nothing is recorded as succeeded. Permission
/// checks do not apply to root, so the backup runs as `nobody` when the tests run as root.
#[test]
fn an_unreadable_file_is_a_clear_error() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let data = env.path("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("readable"), b"fine").unwrap();
    std::fs::write(data.join("secret"), b"no").unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        data.join("readable"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    std::fs::set_permissions(data.join("secret"), std::fs::Permissions::from_mode(0o000)).unwrap();
    let as_root = effective_uid() == 0;
    let run_as_user = |args: &[&str]| -> Output {
        let mut c = if as_root {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .arg(BIN);
            c
        } else {
            Command::new(BIN)
        };
        c.args(args)
            .env("RESILIENCE_PASSWORD", "pw")
            .output()
            .unwrap()
    };
    let init = run_as_user(&["init", "--repo", &env.repo()]);
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let out = run_as_user(&[
        "backup",
        "--repo",
        &env.repo(),
        "dir",
        data.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("secret") && err.to_lowercase().contains("permission denied"),
        "{err}"
    );
    let list = run_as_user(&["snapshots", "--repo", &env.repo(), "--json"]);
    let list: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] != "succeeded"),
        "{list}"
    );
}

fn effective_uid() -> u32 {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn old_backups_move_to_a_cold_repository_and_restore_from_it() {
    let env = Env::new();
    env.init();
    make_tree(&env.path("a"), 1, 2 << 20);
    let id = env.backup(&env.path("a"))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let cold = env.path("cold").display().to_string();
    env.ok(&[
        "forget",
        "--repo",
        &env.repo(),
        "--cold-repo",
        &cold,
        "--keep-last",
        "5",
        "--hot",
        "0s",
        "--cold",
        "3650d",
    ]);
    let list = env.json(&["snapshots", "--repo", &env.repo(), "--json"]);
    assert_eq!(list[0]["tier"], "cold", "{list}");
    let without = env.run(&[
        "restore",
        "--repo",
        &env.repo(),
        &id,
        "--target",
        env.path("x").to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&without.stderr).contains("cold"));
    env.ok(&[
        "restore",
        "--repo",
        &env.repo(),
        "--cold-repo",
        &cold,
        &id,
        "--target",
        env.path("out").to_str().unwrap(),
    ]);
    same_tree(&env.path("a"), &env.path("out"));
    env.ok(&["prune", "--repo", &env.repo(), "--grace", "0s"]);
    env.ok(&["prune", "--repo", &env.repo(), "--grace", "0s"]);
    assert!(
        env.packs().is_empty(),
        "the hot store still holds the moved data"
    );
    env.ok(&[
        "restore",
        "--repo",
        &env.repo(),
        "--cold-repo",
        &cold,
        &id,
        "--target",
        env.path("out2").to_str().unwrap(),
    ]);
    same_tree(&env.path("a"), &env.path("out2"));
}

fn index_files(env: &Env) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(env.path("repo/index"))
        .unwrap()
        .map(|f| f.unwrap().path())
        .collect();
    out.sort();
    out
}

#[test]
fn a_damaged_index_file_never_stops_backups_or_restores_and_repair_index_rebuilds_it() {
    let env = Env::new();
    env.init();
    make_tree(&env.path("a"), 1, 3 << 20);
    let a = env.backup(&env.path("a"))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let file = index_files(&env).remove(0);
    make_tree(&env.path("b"), 2, 3 << 20);
    env.backup(&env.path("b"));
    let name = format!("index/{}", file.file_name().unwrap().to_str().unwrap());
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 3] {
        *b ^= 0x5a;
    }
    std::fs::write(&file, bytes).unwrap();

    // Backups and restores go on, warning about the file.
    make_tree(&env.path("c"), 3, 1 << 20);
    let out = env.run(&[
        "backup",
        "--repo",
        &env.repo(),
        "dir",
        env.path("c").to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(&name), "{stderr}");
    let out = env.run(&[
        "restore",
        "--repo",
        &env.repo(),
        &a,
        "--target",
        env.path("ra").to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(&name), "{stderr}");
    same_tree(&env.path("a"), &env.path("ra"));

    // Verify names it and the repair; prune refuses.
    let out = env.run(&["verify", "--repo", &env.repo()]);
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("DAMAGED {name}")), "{text}");
    assert!(text.contains("resilience repair index"), "{text}");
    let (code, report) = damaged(&env);
    assert_eq!(code, 3);
    assert_eq!(report["damaged"][0]["object"], name.as_str());
    assert_eq!(report["damaged"][0]["repair"], "resilience repair index");
    let out = env.run(&["prune", "--repo", &env.repo(), "--grace", "0s"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&name) && stderr.contains("repair index"),
        "{stderr}"
    );

    // A dry run changes nothing; the repair rebuilds the index.
    let before = index_files(&env);
    let dry = env.json(&[
        "repair",
        "index",
        "--dry-run",
        "--repo",
        &env.repo(),
        "--json",
    ]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(index_files(&env), before);
    let report = env.json(&["repair", "index", "--repo", &env.repo(), "--json"]);
    assert_eq!(report["dry_run"], false);
    assert_eq!(report["damaged_index_files"], serde_json::json!([name]));
    assert_eq!(report["damaged_removed"], serde_json::json!([name]));
    assert_eq!(
        report["packs_indexed"].as_u64().unwrap(),
        env.packs().len() as u64
    );
    assert!(!file.exists());
    env.ok(&["verify", "--repo", &env.repo(), "--full"]);
    env.ok(&["prune", "--repo", &env.repo(), "--grace", "0s"]);
    let text = env.ok(&["repair", "index", "--repo", &env.repo()]);
    assert!(text.contains("removed 0 damaged"), "{text}");
}

/// The repository's objects but locks.
fn objects(env: &Env) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![env.path("repo")];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if !p.ends_with("locks") {
                    dirs.push(p);
                }
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn repair_snapshots_names_the_lost_file_and_salvage_restores_everything_else() {
    let env = Env::new();
    let (a, b, packs_a) = two_snapshots(&env);
    // The middle of the first snapshot's pack is inside nested/random.bin's data.
    let pack = packs_a
        .iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(pack).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(pack, bytes).unwrap();
    let repo = env.repo();
    let args = |extra: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "repair",
            "snapshots",
            "--repo",
            repo.as_str(),
            "--read-data",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let json = |extra: &[&'static str]| -> Value {
        let a = args(extra);
        env.json(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };

    // The text report names the snapshot and the file.
    let a_args = args(&[]);
    let text = env.ok(&a_args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(text.contains(&format!("DAMAGED snapshot {a}")), "{text}");
    assert!(text.contains("file nested/random.bin"), "{text}");
    assert!(!text.contains(&b), "{text}");

    // A dry run says what it would write, and writes nothing.
    let before = objects(&env);
    let plan = json(&["--salvage", "--dry-run", "--json"]);
    assert_eq!(plan["dry_run"], true);
    let found = plan["damaged"].as_array().unwrap();
    assert_eq!(found.len(), 1, "{plan}");
    assert_eq!(found[0]["snapshot"], a.as_str());
    let files = found[0]["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{plan}");
    assert_eq!(files[0]["path"], "nested/random.bin");
    assert!(files[0]["loss"] == "partial" || files[0]["loss"] == "whole");
    assert_eq!(found[0]["salvage"]["action"], "would_write");
    assert_eq!(objects(&env), before);

    // The salvage: a new snapshot, recorded as salvaged, restoring everything else.
    let done = json(&["--salvage", "--json"]);
    let salvaged = done["salvaged"].as_array().unwrap();
    assert_eq!(salvaged.len(), 1, "{done}");
    let s = salvaged[0].as_str().unwrap().to_owned();
    assert_eq!(done["damaged"][0]["salvage"]["action"], "written");
    assert_eq!(done["damaged"][0]["salvage"]["snapshot"], s.as_str());
    let list = env.json(&["snapshots", "--repo", &repo, "--json"]);
    let record = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == s.as_str())
        .unwrap_or_else(|| panic!("{s} is listed: {list}"));
    assert_eq!(record["status"], "succeeded");
    assert_eq!(record["salvaged_from"], a.as_str());
    assert_eq!(record["salvage"]["files_left_out"], 1);
    assert_eq!(
        record["salvage"]["paths_left_out"],
        serde_json::json!(["nested/random.bin"])
    );
    let text = env.ok(&["snapshots", "--repo", &repo]);
    assert!(text.contains(&format!("salvaged from {a}")), "{text}");
    env.ok(&[
        "restore",
        "--repo",
        &repo,
        &s,
        "--target",
        env.path("rs").to_str().unwrap(),
    ]);
    std::fs::remove_file(env.path("a/nested/random.bin")).unwrap();
    same_tree(&env.path("a"), &env.path("rs"));

    // Verify still names the damaged original (left as it is), and the salvage as the way on.
    let (code, report) = damaged(&env);
    assert_eq!(code, 3);
    assert_eq!(
        report["damaged"][0]["affected_snapshots"],
        serde_json::json!([a])
    );
    assert_eq!(
        report["damaged"][0]["repair"],
        "resilience repair snapshots --salvage --read-data"
    );

    // Running it again salvages nothing twice.
    let before = objects(&env);
    let again = json(&["--salvage", "--json"]);
    assert_eq!(again["salvaged"], serde_json::json!([]));
    assert_eq!(again["damaged"][0]["salvage"]["action"], "already_salvaged");
    assert_eq!(again["damaged"][0]["salvage"]["snapshot"], s.as_str());
    assert_eq!(objects(&env), before);
}

/// A reader that went away (`resilience snapshots | head -1`) ends a command quietly, with
/// status 141 as a shell reports SIGPIPE: no panic, no backtrace. Its work is not undone: a
/// backup whose report nobody reads is in the repository.
#[test]
fn a_reader_that_went_away_ends_the_command_quietly() {
    let env = Env::new();
    env.init();
    let data = env.path("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("a"), b"kept").unwrap();
    let closed = || {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        writer
    };
    for args in [
        vec![
            "backup",
            "--repo",
            &env.repo(),
            "--json",
            "dir",
            data.to_str().unwrap(),
        ],
        vec!["snapshots", "--repo", &env.repo()],
        vec!["snapshots", "--repo", &env.repo(), "--json"],
    ] {
        let out = env.cmd(&args).stdout(closed()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    let listed = env.json(&["snapshots", "--repo", &env.repo(), "--json"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
}
