//! SIGKILL sweeps through the real binary: `backup`, `prune`, `forget`, `key rotate --rewrite`,
//! `replicate`, `wal-push`, `bucket restore` (from and into Garage, which `scripts/test`
//! starts) and `pg restore` (of a throw-away cluster's base backup) are each killed (`kill -9`) at seeded random moments, over
//! repeated rounds on a local repository. After each kill: `verify --full` is sound, every
//! acknowledged snapshot restores identical (and every acknowledged WAL segment fetches
//! identical), and the same command run again completes.
//!
//! The moment of each kill is drawn uniformly over the command's own duration, measured by a
//! first run that is not killed. The default test run does [`ROUNDS`] rounds per command;
//! `scripts/test --long` (`RESILIENCE_TEST_LONG=1`) does [`LONG_ROUNDS`]. `RESILIENCE_TEST_SEED`
//! picks other moments (the seed is printed, so a failure reproduces). Each sweep asserts that
//! some of its rounds actually killed the command mid-way.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod pg_support;
mod tls_support;

const BIN: &str = env!("CARGO_BIN_EXE_resilience");
const ROUNDS: u64 = 3;
const LONG_ROUNDS: u64 = 50;

fn rounds() -> u64 {
    if std::env::var_os("RESILIENCE_TEST_LONG").is_some() {
        LONG_ROUNDS
    } else {
        ROUNDS
    }
}

/// A small seeded generator (xorshift64*): the kill moments of a run.
struct Moments(u64);

impl Moments {
    fn new(sweep: &str) -> Self {
        let seed: u64 = std::env::var("RESILIENCE_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x5eed_1e55);
        eprintln!("{sweep}: seed {seed} (RESILIENCE_TEST_SEED)");
        let salt = sweep.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        Moments((seed ^ salt) | 1)
    }

    /// A moment in `0..=span`.
    fn within(&mut self, span: Duration) -> Duration {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        span.mul_f64((r >> 11) as f64 / (1u64 << 53) as f64)
    }
}

/// A test's directory: a repository `repo` opened with a key file, data, restores.
struct Lab {
    dir: tempfile::TempDir,
    restores: std::cell::Cell<u32>,
}

impl Lab {
    fn new() -> Self {
        let lab = Lab {
            dir: tempfile::tempdir().unwrap(),
            restores: Default::default(),
        };
        std::fs::write(lab.path("key"), "ab".repeat(32)).unwrap();
        lab.ok(&["init", "--repo", &lab.repo()]);
        lab
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
            .arg("--key-file")
            .arg(self.path("key"))
            .env_remove("RESILIENCE_REPOSITORY")
            .env_remove("RESILIENCE_PASSWORD");
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let text = self.ok(args);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
    }

    /// Runs `args` and kills it (SIGKILL, with its process group) after `after`; says whether
    /// it was killed before it finished.
    fn killed(&self, args: &[&str], after: Duration) -> bool {
        kill_after(self.cmd(args), after)
    }

    /// How long `args` takes when it is not killed (it runs to completion).
    fn timed(&self, args: &[&str]) -> Duration {
        let started = Instant::now();
        self.ok(args);
        started.elapsed()
    }

    /// Backs `dir` up; returns the snapshot id.
    fn backup(&self, dir: &Path) -> String {
        let report = self.json(&[
            "backup",
            "--repo",
            &self.repo(),
            "--json",
            "dir",
            dir.to_str().unwrap(),
        ]);
        report["record"]["id"]
            .as_str()
            .or_else(|| report["id"].as_str())
            .unwrap_or_else(|| panic!("no snapshot id in {report}"))
            .to_owned()
    }

    /// `verify --full` of `repo` exits 0.
    fn sound(&self, repo: &str, context: &str) {
        let out = self
            .cmd(&["verify", "--repo", repo, "--full"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{context}: verify --full of {repo} is not sound ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Snapshot `id` of `repo` restores identical to `data`.
    fn restores(&self, repo: &str, id: &str, data: &Path, context: &str) {
        let n = self.restores.get();
        self.restores.set(n + 1);
        let target = self.path(&format!("restored-{n}"));
        let out = self
            .cmd(&[
                "restore",
                "--repo",
                repo,
                id,
                "--target",
                target.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{context}: restore of acknowledged snapshot {id} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let diff = Command::new("diff")
            .args(["-r", "--no-dereference"])
            .arg(data)
            .arg(&target)
            .output()
            .expect("diff (diffutils) must be installed");
        assert!(
            diff.status.success(),
            "{context}: snapshot {id} restores with other content: {}",
            String::from_utf8_lossy(&diff.stdout)
        );
        std::fs::remove_dir_all(&target).unwrap();
    }

    /// A directory of `files` files of 1 MiB (incompressible), its content drawn from `seed`.
    fn data(&self, name: &str, files: u64, seed: u64) -> PathBuf {
        let dir = self.path(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        for i in 0..files {
            let bytes = noise(1 << 20, seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i + 1));
            let at = if i % 3 == 0 { "sub/" } else { "" };
            std::fs::write(dir.join(format!("{at}f{i}")), bytes).unwrap();
        }
        dir
    }
}

/// Runs a sweep: `rounds()` times, `prepare` (not killed), then the command `command` gives
/// killed at a moment drawn over its measured duration, then `check`, then the command again to
/// completion, then `check` again. Asserts that some rounds killed it mid-way.
///
/// A round whose command finished before its kill halves the span later moments are drawn
/// from (the calibration run may have been slower than the rounds, on a busy machine); while no
/// round has killed the command, up to [`EXTRA_ROUNDS`] more rounds run.
fn sweep(
    name: &str,
    lab: &Lab,
    mut prepare: impl FnMut(u64),
    command: impl Fn() -> Vec<String>,
    mut check: impl FnMut(&str),
) {
    let mut moments = Moments::new(name);
    prepare(0);
    let mut span = lab.timed(&args(&command())).mul_f64(1.2);
    check(&format!("{name}, calibration run"));
    let mut killed = 0;
    let mut round = 0;
    while round < rounds() || (killed == 0 && round < rounds() + EXTRA_ROUNDS) {
        round += 1;
        prepare(round);
        let at = moments.within(span);
        let context = format!("{name}, round {round}, killed after {at:?} of {span:?}");
        let c = command();
        if lab.killed(&args(&c), at) {
            killed += 1;
        } else {
            span = (span / 2).max(Duration::from_millis(5));
        }
        check(&context);
        lab.ok(&args(&c));
        check(&format!("{context}, after the rerun"));
    }
    eprintln!("{name}: {killed} of {round} rounds killed mid-way");
    assert!(killed > 0, "{name}: no round killed the command mid-way");
}

/// Rounds a sweep may add while none of its rounds has killed the command.
const EXTRA_ROUNDS: u64 = 10;

/// Runs `command` and kills it (SIGKILL, with its process group) after `after`; says whether
/// it was killed before it finished.
fn kill_after(mut command: Command, after: Duration) -> bool {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + after;
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if Instant::now() >= deadline {
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            child.wait().unwrap();
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// `len` incompressible bytes drawn from `seed`.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Borrowed arguments.
fn args(c: &[String]) -> Vec<&str> {
    c.iter().map(String::as_str).collect()
}

/// `args` as owned strings.
fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[test]
fn backup_survives_kill_9_at_any_moment() {
    let lab = Lab::new();
    let data = lab.data("data", 10, 1);
    let first = lab.backup(&data);
    let repo = lab.repo();
    let command = owned(&["backup", "--repo", &repo, "dir", data.to_str().unwrap()]);
    sweep(
        "backup",
        &lab,
        // New content each round (4 MiB), so every backup writes packs, while the repository
        // (and so each check's `verify --full`) grows slowly over 50 rounds.
        |round| {
            std::fs::write(data.join("changing"), noise(4 << 20, 100 + round)).unwrap();
        },
        || command.clone(),
        |context| lab.sound(&repo, context),
    );
    // The last acknowledged backup restores identical; so does the very first (other data,
    // restored against a copy made now).
    let latest = lab.backup(&data);
    lab.restores(&repo, &latest, &data, "after the sweep");
    let original = lab.data("original", 10, 1);
    lab.restores(
        &repo,
        &first,
        &original,
        "the first snapshot, after the sweep",
    );
}

#[test]
fn forget_and_prune_survive_kill_9_at_any_moment() {
    let lab = Lab::new();
    let repo = lab.repo();
    let data = lab.path("data");
    let kept = std::cell::RefCell::new(String::new());
    // Each round: two new backups of new data, then forget keeps the newest. The data the
    // last round's forget left is pruned first, so the repository (and each check's
    // `verify --full`) stays small over 50 rounds.
    let prepare = |round: u64| {
        lab.ok(&["prune", "--repo", &repo, "--grace", "0s"]);
        lab.data("data", 6, 1000 + 2 * round);
        lab.backup(&data);
        lab.data("data", 6, 1001 + 2 * round);
        *kept.borrow_mut() = lab.backup(&data);
    };
    let check = |context: &str| {
        lab.sound(&repo, context);
        lab.restores(&repo, &kept.borrow(), &data, context);
    };
    sweep(
        "forget",
        &lab,
        prepare,
        || owned(&["forget", "--repo", &repo, "--keep-last", "1"]),
        check,
    );
    // Prune: garbage each round (new backups, the older forgotten), then prune is killed.
    let prepare = |round: u64| {
        lab.data("data", 6, 5000 + 2 * round);
        lab.backup(&data);
        lab.data("data", 6, 5001 + 2 * round);
        *kept.borrow_mut() = lab.backup(&data);
        lab.ok(&["forget", "--repo", &repo, "--keep-last", "1"]);
    };
    sweep(
        "prune",
        &lab,
        prepare,
        || owned(&["prune", "--repo", &repo, "--grace", "0s"]),
        check,
    );
}

#[test]
fn key_rotation_with_rewrite_survives_kill_9_at_any_moment() {
    let lab = Lab::new();
    let repo = lab.repo();
    let data = lab.data("data", 8, 7);
    let id = lab.backup(&data);
    sweep(
        "key rotate --rewrite",
        &lab,
        |_| {},
        || owned(&["key", "rotate", "--repo", &repo, "--rewrite"]),
        |context| {
            lab.sound(&repo, context);
            lab.restores(&repo, &id, &data, context);
        },
    );
}

#[test]
fn replicate_survives_kill_9_at_any_moment() {
    let lab = Lab::new();
    let repo = lab.repo();
    let replica = lab.path("replica").display().to_string();
    let data = lab.path("data");
    let latest = std::cell::RefCell::new(String::new());
    sweep(
        "replicate",
        &lab,
        |round| {
            lab.data("data", 6, 300 + round);
            *latest.borrow_mut() = lab.backup(&data);
        },
        || owned(&["replicate", "--repo", &repo, "--to", &replica]),
        |context| {
            lab.sound(&repo, context);
            // A replica exists once a replication created it: it opens and is sound whatever
            // moment the copy was killed at (a copy is visible only once complete).
            if Path::new(&replica).join("config").exists() {
                lab.sound(&replica, &format!("{context}, the replica"));
            }
        },
    );
    // After the last (complete) run, the replica restores the newest snapshot.
    lab.restores(
        &replica,
        &latest.borrow(),
        &data,
        "the replica after the sweep",
    );
}

#[test]
fn wal_push_survives_kill_9_at_any_moment() {
    let lab = Lab::new();
    let repo = lab.repo();
    let wal = lab.path("wal");
    std::fs::create_dir(&wal).unwrap();
    let segment = |round: u64| wal.join(format!("00000001{:016X}", round + 1));
    let content = |round: u64| noise(4 << 20, (round + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let current = std::cell::Cell::new(0u64);
    let fetched = std::cell::Cell::new(0u32);
    // Every segment acknowledged so far (all before the current one) fetches identical; the
    // current one too once its push was run to completion.
    let fetches = |round: u64, context: &str| {
        let name = segment(round)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let n = fetched.get();
        fetched.set(n + 1);
        let dest = lab.path(&format!("fetched-{n}"));
        lab.ok(&["wal-fetch", "--repo", &repo, &name, dest.to_str().unwrap()]);
        let back = std::fs::read(&dest).unwrap();
        assert!(
            back == content(round),
            "{context}: {name} fetched with other bytes"
        );
        std::fs::remove_file(&dest).unwrap();
    };
    sweep(
        "wal-push",
        &lab,
        |round| {
            current.set(round);
            std::fs::write(segment(round), content(round)).unwrap();
        },
        || {
            owned(&[
                "wal-push",
                "--repo",
                &repo,
                segment(current.get()).to_str().unwrap(),
            ])
        },
        |context| {
            lab.sound(&repo, context);
            let round = current.get();
            if round > 0 {
                fetches(round - 1, context);
            }
            if context.ends_with("after the rerun") || context.ends_with("calibration run") {
                fetches(round, context);
            }
        },
    );
}

/// The objects under `url` (an `s3://` prefix), by key relative to it.
fn objects(url: &str) -> std::collections::BTreeMap<String, Vec<u8>> {
    use futures::TryStreamExt;
    let opened = resilience_objstore::open_store(url, false).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let prefix = object_store::path::Path::from(opened.prefix.as_str());
        let listed: Vec<_> = opened
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .unwrap();
        let mut out = std::collections::BTreeMap::new();
        for meta in listed {
            let bytes = opened
                .store
                .get(&meta.location)
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            let key = meta.location.as_ref()[opened.prefix.len() + 1..].to_owned();
            out.insert(key, bytes.to_vec());
        }
        out
    })
}

#[test]
fn bucket_restore_survives_kill_9_at_any_moment() {
    let bucket = std::env::var("RESILIENCE_TEST_S3_BUCKET").expect(
        "RESILIENCE_TEST_S3_BUCKET is not set: run the tests with scripts/test (it starts Garage)",
    );
    let lab = Lab::new();
    let repo = lab.repo();
    let run = format!(
        "kill-{}",
        lab.dir.path().file_name().unwrap().to_string_lossy()
    );
    let source = format!("s3://{bucket}/{run}/src");
    {
        let opened = resilience_objstore::open_store(&source, false).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            for i in 0..48u64 {
                let path = object_store::path::Path::from(format!("{}/o/{i:03}", opened.prefix));
                opened
                    .store
                    .put(&path, noise(96 << 10, 77 + i).into())
                    .await
                    .unwrap();
            }
        });
    }
    let original = objects(&source);
    let report = lab.json(&["bucket", "backup", "--repo", &repo, "--json", &source]);
    let id = report["record"]["id"]
        .as_str()
        .or_else(|| report["id"].as_str())
        .unwrap_or_else(|| panic!("no snapshot id in {report}"))
        .to_owned();
    let target = std::cell::RefCell::new(String::new());
    sweep(
        "bucket restore",
        &lab,
        |round| *target.borrow_mut() = format!("s3://{bucket}/{run}/dst-{round}"),
        || owned(&["bucket", "restore", "--repo", &repo, &id, &target.borrow()]),
        |context| {
            lab.sound(&repo, context);
            // Whatever is restored is whole: every object there is the original's, byte for
            // byte; after the rerun, all of them are there.
            let restored = objects(&target.borrow());
            for (key, bytes) in &restored {
                assert!(
                    original.get(key) == Some(bytes),
                    "{context}: restored object {key} is not the original"
                );
            }
            if context.ends_with("after the rerun") || context.ends_with("calibration run") {
                assert_eq!(
                    restored.keys().collect::<Vec<_>>(),
                    original.keys().collect::<Vec<_>>(),
                    "{context}"
                );
            }
        },
    );
}

/// `pg restore` killed at seeded moments: Postgres can never start on what a killed restore
/// leaves (its `global/pg_control` is put in place last); a restore run again without
/// `--resume` refuses the directory, naming the interrupted restore; with `--resume` it
/// completes, and the cluster started on it holds exactly the backed-up rows.
#[tokio::test(flavor = "multi_thread")]
async fn pg_restore_survives_kill_9_at_any_moment() {
    let lab = pg_support::Lab::new();
    let primary = lab.cluster("primary").await;
    let c = primary.client().await;
    c.batch_execute(
        "CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance bigint);
         INSERT INTO accounts SELECT i, md5(i::text) || md5((i * 7)::text), i * 100
           FROM generate_series(1, 400000) i;",
    )
    .await
    .unwrap();
    let want = pg_support::table_sum(&c, "accounts").await;
    let backup = lab.base_backup(&primary);
    assert_eq!(backup["status"], "succeeded", "{backup}");
    primary.archive_now().await;
    let restore = |pgdata: &Path, resume: bool| {
        let mut args = vec![
            "pg".to_owned(),
            "restore".into(),
            "--source".into(),
            lab.source.clone(),
            "--pgdata".into(),
            pgdata.display().to_string(),
            "--no-archive".into(),
        ];
        if resume {
            args.push("--resume".into());
        }
        args
    };
    let calibration = lab.path("calibration");
    let started = Instant::now();
    lab.ok(&args(&restore(&calibration, false)));
    let mut span = started.elapsed().mul_f64(1.2);
    assert!(calibration.join("global/pg_control").is_file());
    let mut moments = Moments::new("pg restore");
    let mut killed = 0;
    let mut partial = 0;
    // As in `sweep`: a restore that finished before its kill halves the span, and rounds are
    // added while none has killed it.
    let mut round = 0;
    while round < rounds() || (killed == 0 && round < rounds() + EXTRA_ROUNDS) {
        round += 1;
        let pgdata = lab.path(&format!("restored-{round}"));
        let at = moments.within(span);
        let context = format!("pg restore, round {round}, killed after {at:?} of {span:?}");
        let finished = !kill_after(lab.cmd(&args(&restore(&pgdata, false))), at);
        if finished {
            span = (span / 2).max(Duration::from_millis(5));
        }
        let control = pgdata.join("global/pg_control");
        let pending = pgdata.join(resilience_pg::pgdata_target::PENDING_CONTROL);
        if !finished {
            killed += 1;
            // Either the restore had completed when the kill came, or no Postgres can start.
            if !control.exists() {
                if pgdata.exists() && std::fs::read_dir(&pgdata).unwrap().next().is_some() {
                    partial += 1;
                    let out = lab.run(&args(&restore(&pgdata, false)));
                    let err = String::from_utf8_lossy(&out.stderr);
                    assert!(
                        !out.status.success() && err.contains(&pgdata.display().to_string()),
                        "{context}: a restore into the partly restored directory without \
                         --resume must refuse it, naming it: {err}"
                    );
                    if pending.exists() {
                        assert!(
                            err.contains("interrupted restore") && err.contains("--resume"),
                            "{context}: {err}"
                        );
                    }
                }
            } else {
                assert!(!pending.exists(), "{context}: both control files are there");
            }
        }
        let port = pg_support::free_port();
        let port_s = port.to_string();
        let mut again = restore(&pgdata, true);
        again.extend([
            "--start".into(),
            "--port".into(),
            port_s,
            "--timeout".into(),
            "120".into(),
        ]);
        lab.ok(&args(&again));
        let copy = pg_support::Cluster {
            pgdata: pgdata.clone(),
            port,
            dsn_params: String::new(),
            host: "127.0.0.1".into(),
        };
        let got = pg_support::table_sum(&copy.client().await, "accounts").await;
        assert_eq!(got, want, "{context}: the resumed restore holds other rows");
        copy.stop();
        std::fs::remove_dir_all(&pgdata).unwrap();
    }
    eprintln!(
        "pg restore: {killed} of {round} rounds killed mid-way, {partial} leaving a partial data directory"
    );
    assert!(
        killed > 0,
        "pg restore: no round killed the command mid-way"
    );
}
