//! `resilience key …` end to end: AWS KMS through moto (`RESILIENCE_TEST_MOTO_ENDPOINT`; the
//! test fails, not skips, without it), Vault's transit engine through the contract server in
//! `tests/support/vault_transit.py` (not a real Vault), rotation with a removed passphrase,
//! SIGKILL during `key rotate` and `key rotate --rewrite`, and hand-edited objects refused by
//! name.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_resilience");

struct Env {
    dir: tempfile::TempDir,
    vars: Vec<(String, String)>,
}

impl Env {
    fn new() -> Self {
        Env {
            dir: tempfile::tempdir().unwrap(),
            vars: Vec::new(),
        }
    }
    fn var(mut self, k: &str, v: &str) -> Self {
        self.vars.push((k.into(), v.into()));
        self
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
            .arg("--repo")
            .arg(self.repo())
            .env_remove("RESILIENCE_REPOSITORY")
            .env_remove("RESILIENCE_PASSWORD")
            .env_remove("RESILIENCE_KEY")
            .env_remove("VAULT_TOKEN")
            .env_remove("VAULT_ADDR");
        for (k, v) in &self.vars {
            c.env(k, v);
        }
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
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).unwrap()
    }
    fn write(&self, name: &str, content: &str) -> String {
        let p = self.path(name);
        std::fs::write(&p, content).unwrap();
        p.display().to_string()
    }
    fn backup(&self, auth: &[&str], dir: &Path) -> String {
        let mut a = auth.to_vec();
        a.extend(["backup", "dir", dir.to_str().unwrap()]);
        self.json(&a)["id"].as_str().unwrap().to_owned()
    }
    fn restores(&self, auth: &[&str], id: &str, expected: &Path) {
        let target = self.path(&format!("restore-{}", rand_suffix()));
        let mut a = auth.to_vec();
        a.extend(["restore", id, "--target", target.to_str().unwrap()]);
        self.ok(&a);
        same_tree(expected, &target);
    }
    fn verifies_full(&self, auth: &[&str]) {
        let mut a = auth.to_vec();
        a.extend(["verify", "--full"]);
        self.ok(&a);
    }
    fn key_list(&self) -> Vec<Value> {
        self.json(&["key", "list"]).as_array().unwrap().clone()
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
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
    std::fs::create_dir_all(root.join("nested")).unwrap();
    std::fs::write(
        root.join("notes.txt"),
        format!("notes {seed}\n").repeat(500),
    )
    .unwrap();
    std::fs::write(root.join("nested/random.bin"), random_bytes(big, seed)).unwrap();
}

fn same_tree(a: &Path, b: &Path) {
    let out = Command::new("diff")
        .arg("-r")
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "trees differ: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn moto() -> String {
    std::env::var("RESILIENCE_TEST_MOTO_ENDPOINT").expect(
        "RESILIENCE_TEST_MOTO_ENDPOINT is not set: run the tests through scripts/test, or start \
         moto with scripts/moto.sh start DIR and source DIR/env",
    )
}

fn create_kms_key() -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import boto3,sys; c=boto3.client('kms', endpoint_url=sys.argv[1], \
             region_name='us-east-1', aws_access_key_id='moto', aws_secret_access_key='moto'); \
             print(c.create_key(Description='resilience cli test')['KeyMetadata']['Arn'])",
            &moto(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "CreateKey: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn kms_init_backup_restore_then_passphrase_only() {
    let arn = create_kms_key();
    let env = Env::new()
        .var("RESILIENCE_KMS_ENDPOINT", &moto())
        .var("RESILIENCE_KMS_REGION", "us-east-1")
        .var("RESILIENCE_KMS_ACCESS_KEY_ID", "moto")
        .var("RESILIENCE_KMS_SECRET_ACCESS_KEY", "moto");
    let kms = ["--kms-key-id", arn.as_str()];
    let data = env.path("data");
    make_tree(&data, 1, 3 << 20);
    env.ok(&["init", "--kms-key-id", &arn]);
    let id = env.backup(&kms, &data);
    env.restores(&kms, &id, &data);
    let copies = env.key_list();
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0]["provider"], "aws-kms");
    let kms_copy = copies[0]["id"].as_str().unwrap().to_owned();
    assert!(copies[0]["created_at"].as_str().unwrap().contains('T'));

    // An operator's offline passphrase is added; the KMS copy is removed.
    let pw = env.write("operator.pw", "operator passphrase\n");
    let added = env.json(&[
        "--kms-key-id",
        &arn,
        "key",
        "add",
        "--new-password-file",
        &pw,
    ]);
    assert_eq!(added["provider"], "passphrase");
    let by_pw = ["--password-file", pw.as_str()];
    let mut a = by_pw.to_vec();
    a.extend(["key", "remove", &kms_copy]);
    env.ok(&a);
    let copies = env.key_list();
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0]["provider"], "passphrase");
    assert!(!serde_json::to_string(&copies)
        .unwrap()
        .contains("operator passphrase"));
    // The passphrase alone opens it; KMS no longer does.
    env.restores(&by_pw, &id, &data);
    env.verifies_full(&by_pw);
    let err = env.fails(&["--kms-key-id", &arn, "snapshots"]);
    assert!(err.contains("wrong passphrase or key"), "{err}");
    // The last copy is not removed.
    let last = env.key_list()[0]["id"].as_str().unwrap().to_owned();
    let mut a = by_pw.to_vec();
    a.extend(["key", "remove", &last]);
    let out = env.cmd(&a).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("last key copy"));
}

struct VaultServer {
    child: Child,
    addr: String,
}

impl VaultServer {
    fn start() -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/vault_transit.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(["root-token-123", "role-1", "secret-id-456"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the Vault transit test server");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line.trim().parse().expect("the server prints its port");
        VaultServer {
            child,
            addr: format!("http://127.0.0.1:{port}"),
        }
    }
    fn stats(&self) -> Value {
        let out = Command::new("python3")
            .args([
                "-c",
                "import urllib.request,sys; print(urllib.request.urlopen(sys.argv[1]+'/test/stats').read().decode())",
                &self.addr,
            ])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for VaultServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn vault_transit_with_token_and_approle() {
    let vault = VaultServer::start();
    let env = Env::new().var("VAULT_ADDR", &vault.addr);
    let data = env.path("data");
    make_tree(&data, 2, 1 << 20);
    let transit = ["--vault-transit-key", "backups"];
    // init and backup with a token.
    let with_token = |args: &[&str]| {
        let mut c = env.cmd(args);
        c.env("VAULT_TOKEN", "root-token-123");
        c.output().unwrap()
    };
    let out = with_token(&["--vault-transit-key", "backups", "init"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = with_token(&[
        "--vault-transit-key",
        "backups",
        "--json",
        "backup",
        "dir",
        data.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = serde_json::from_slice::<Value>(&out.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let copies = env.key_list();
    assert_eq!(copies[0]["provider"], "vault-transit");
    let after_init = vault.stats();
    assert_eq!(after_init["encrypt"], 1);
    assert_eq!(after_init["decrypt"], 1, "one decrypt for the backup run");

    // AppRole instead of a token: one login, one decrypt per run.
    let run_approle = |args: &[&str]| {
        let mut c = env.cmd(args);
        c.env("VAULT_ROLE_ID", "role-1")
            .env("VAULT_SECRET_ID", "secret-id-456");
        c.output().unwrap()
    };
    let target = env.path("restored");
    let out = run_approle(&[
        "--vault-transit-key",
        "backups",
        "restore",
        &id,
        "--target",
        target.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    same_tree(&data, &target);
    let s = vault.stats();
    assert_eq!(s["login"], 1);
    assert_eq!(s["decrypt"], 2);

    // A wrong token is refused, and never printed.
    let mut c = env.cmd(&[transit[0], transit[1], "snapshots"]);
    c.env("VAULT_TOKEN", "not-the-token-789");
    let out = c.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("permission denied"), "{err}");
    assert!(!err.contains("not-the-token-789"), "{err}");
    // A wrong AppRole secret likewise.
    let mut c = env.cmd(&[transit[0], transit[1], "snapshots"]);
    c.env("VAULT_ROLE_ID", "role-1")
        .env("VAULT_SECRET_ID", "wrong-secret-000");
    let out = c.output().unwrap();
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("wrong-secret-000"));
}

/// The passphrase environment for the rotation tests: a key file for the service, a
/// passphrase for the operator.
fn rotation_env() -> (Env, String, String) {
    let env = Env::new();
    let key = env.path("service.key").display().to_string();
    let pw = env.write("operator.pw", "operator passphrase\n");
    env.ok(&["--key-file", &key, "init"]);
    env.ok(&["--key-file", &key, "key", "add", "--new-password-file", &pw]);
    (env, key, pw)
}

#[test]
fn rotation_restores_old_and_new_data_and_refuses_a_removed_passphrase() {
    let (env, key, pw) = rotation_env();
    let by_key = ["--key-file", key.as_str()];
    let leaked = env.write("leaked.pw", "leaked passphrase\n");
    env.ok(&[
        "--key-file",
        &key,
        "key",
        "add",
        "--new-password-file",
        &leaked,
    ]);
    let d1 = env.path("d1");
    make_tree(&d1, 3, 1 << 20);
    let before = env.backup(&by_key, &d1);
    // The leaked passphrase's copy is removed, then the keys rotated.
    let copies = env.key_list();
    assert_eq!(copies.len(), 3);
    // Find which passphrase copy is the leaked one: the newest.
    let mut pw_copies: Vec<&Value> = copies
        .iter()
        .filter(|c| c["provider"] == "passphrase")
        .collect();
    pw_copies.sort_by_key(|c| c["created_at"].as_str().unwrap().to_owned());
    let leaked_id = pw_copies[1]["id"].as_str().unwrap().to_owned();
    env.ok(&["--key-file", &key, "key", "remove", &leaked_id]);
    let rotation = env.json(&["--key-file", &key, "key", "rotate"]);
    assert_eq!(rotation["data_key"], 2);
    let d2 = env.path("d2");
    make_tree(&d2, 4, 1 << 20);
    let after = env.backup(&by_key, &d2);
    for auth in [by_key.to_vec(), vec!["--password-file", pw.as_str()]] {
        env.restores(&auth, &before, &d1);
        env.restores(&auth, &after, &d2);
    }
    let err = env.fails(&["--password-file", &leaked, "snapshots"]);
    assert!(err.contains("wrong passphrase or key"), "{err}");
}

fn kill_after(mut child: Child, after: Duration) -> bool {
    std::thread::sleep(after);
    let finished = child.try_wait().unwrap().is_some();
    unsafe {
        libc::kill(child.id() as i32, libc::SIGKILL);
    }
    let _ = child.wait();
    !finished
}

#[test]
fn sigkill_during_rotate_leaves_a_repository_that_opens_with_every_copy() {
    let (env, key, pw) = rotation_env();
    let by_key = ["--key-file", key.as_str()];
    let by_pw = ["--password-file", pw.as_str()];
    let d1 = env.path("d1");
    make_tree(&d1, 5, 1 << 20);
    let id = env.backup(&by_key, &d1);
    let mut interrupted = 0;
    // Throttled to 400 B/s, a rotation (reading key objects, writing the next generation,
    // deleting the old) takes seconds: kills land at different steps.
    for ms in [300, 1500, 3000, 4500, 6000] {
        let child = env
            .cmd(&["--key-file", &key, "key", "rotate", "--max-rate", "400"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        if kill_after(child, Duration::from_millis(ms)) {
            interrupted += 1;
        }
        for auth in [&by_key[..], &by_pw[..]] {
            env.restores(auth, &id, &d1);
        }
        env.verifies_full(&by_pw);
    }
    assert!(
        interrupted >= 3,
        "only {interrupted} rotations were interrupted"
    );
    // It completes afterwards, and everything still opens and restores.
    env.ok(&["--key-file", &key, "key", "rotate"]);
    let d2 = env.path("d2");
    make_tree(&d2, 6, 1 << 20);
    let id2 = env.backup(&by_pw, &d2);
    env.restores(&by_key, &id, &d1);
    env.restores(&by_key, &id2, &d2);
}

#[test]
fn sigkill_during_rotate_rewrite_leaves_a_repository_that_verifies_and_resumes() {
    let (env, key, pw) = rotation_env();
    let by_key = ["--key-file", key.as_str()];
    let d1 = env.path("d1");
    make_tree(&d1, 7, 4 << 20);
    let id = env.backup(&by_key, &d1);
    let d2 = env.path("d2");
    make_tree(&d2, 8, 2 << 20);
    let id2 = env.backup(&by_key, &d2);
    let mut interrupted = 0;
    for ms in [1500, 4000] {
        let child = env
            .cmd(&[
                "--key-file",
                &key,
                "key",
                "rotate",
                "--rewrite",
                "--max-rate",
                "1000000",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        if kill_after(child, Duration::from_millis(ms)) {
            interrupted += 1;
        }
        env.verifies_full(&by_key);
        env.restores(&by_key, &id, &d1);
    }
    assert!(interrupted >= 1, "no rewrite was interrupted");
    let report = env.json(&["--key-file", &key, "key", "rotate", "--rewrite"]);
    assert_eq!(report["kept_because"], Value::Null, "{report}");
    assert!(
        !report["retired_keys"].as_array().unwrap().is_empty(),
        "{report}"
    );
    env.verifies_full(&["--password-file", &pw]);
    env.restores(&["--password-file", &pw], &id, &d1);
    env.restores(&by_key, &id2, &d2);
    // Every pack is now sealed with the one remaining data key.
    let out = env.ok(&["key", "list"]);
    assert!(out.contains("data keys ["), "{out}");
    let keys_line = out
        .lines()
        .find(|l| l.contains("data keys"))
        .unwrap()
        .to_owned();
    assert_eq!(
        keys_line.matches(',').count(),
        1,
        "one data key left: {keys_line}"
    );
}

#[test]
fn hand_edited_key_pack_and_snapshot_are_refused_by_name() {
    let env = Env::new().var("RESILIENCE_PASSWORD", "correct horse");
    env.ok(&["init"]);
    let d = env.path("d");
    make_tree(&d, 9, 1 << 20);
    let id = env.backup(&[], &d);
    // A wrapped key.
    let copy = env.key_list()[0]["id"].as_str().unwrap().to_owned();
    let key_path = env.path(&format!("repo/keys/{copy}"));
    let original = std::fs::read(&key_path).unwrap();
    let mut edited = original.clone();
    edited[30] ^= 1;
    std::fs::write(&key_path, &edited).unwrap();
    let err = env.fails(&["snapshots"]);
    assert!(err.contains(&format!("keys/{copy}")), "{err}");
    std::fs::write(&key_path, &original).unwrap();
    // A pack header.
    let data_dir = env.path("repo/data");
    let sub = std::fs::read_dir(&data_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let pack = std::fs::read_dir(&sub)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[5] ^= 1;
    std::fs::write(&pack, &bytes).unwrap();
    let out = env.run(&["verify"]);
    assert_eq!(out.status.code(), Some(3));
    let name = pack
        .strip_prefix(env.path("repo"))
        .unwrap()
        .display()
        .to_string();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&name), "{name} not named: {text}");
    bytes[5] ^= 1;
    std::fs::write(&pack, &bytes).unwrap();
    // A snapshot manifest.
    let manifest = env.path(&format!("repo/snapshots/{id}"));
    let mut bytes = std::fs::read(&manifest).unwrap();
    let n = bytes.len();
    bytes[n - 40] ^= 1;
    std::fs::write(&manifest, &bytes).unwrap();
    let target = env.path("t");
    let err = env.fails(&["restore", &id, "--target", target.to_str().unwrap()]);
    assert!(err.contains(&format!("snapshots/{id}")), "{err}");
}
