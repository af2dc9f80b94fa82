//! The core's trust guarantees, attacked through the real `resilience` binary on a local
//! repository: a backup stopped past its lock's lifetime never claims data a prune removed; a
//! backup in another PID namespace (same host name) is not judged dead by its PID; processes
//! whose clocks differ by ten minutes agree on which locks are live.
//!
//! `backup dir` has no rate limit, so a "slow" backup is made slow the deterministic way: it
//! is stopped (SIGSTOP to its process group) as soon as it has written its first pack, so that
//! its work is in the store, unindexed and unreferenced, while the others back up and prune,
//! and continued (SIGCONT) afterwards. Every process of a slow backup (the `unshare` or
//! `faketime` wrapper too) is in its own process group, which a failing test kills.

mod tree_support;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;

use tree_support::same_tree;

const BIN: &str = env!("CARGO_BIN_EXE_resilience");

/// How long a slow backup may take to write its first pack, or to finish once continued.
const PATIENCE: Duration = Duration::from_secs(180);

/// A temporary directory holding a local repository and the data backed up into it.
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

    /// `resilience ARGS`, run through `wrapper` (`faketime -f +10m`, …) when it is not empty:
    /// the binary's path follows the wrapper's own arguments.
    fn cmd(&self, wrapper: &[&str], args: &[&str]) -> Command {
        let mut c = match wrapper.split_first() {
            None => Command::new(BIN),
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(BIN);
                c
            }
        };
        c.args(args)
            .env("RESILIENCE_PASSWORD", "correct horse")
            .env_remove("RESILIENCE_REPOSITORY")
            // libfaketime shifts the wall clock only: tokio's timers keep real time.
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        c
    }

    fn ok(&self, wrapper: &[&str], args: &[&str]) -> String {
        let out = self.cmd(wrapper, args).output().unwrap();
        assert!(
            out.status.success(),
            "{wrapper:?} {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, wrapper: &[&str], args: &[&str]) -> Value {
        let text = self.ok(wrapper, args);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
    }

    fn init(&self) {
        self.ok(&[], &["init", "--repo", &self.repo()]);
    }

    fn backup_args(&self, dir: &Path) -> Vec<String> {
        ["backup", "--repo", &self.repo(), "--json", "dir"]
            .iter()
            .map(|s| s.to_string())
            .chain([dir.display().to_string()])
            .collect()
    }

    /// Backs `dir` up (through `wrapper`); returns the report.
    fn backup(&self, wrapper: &[&str], dir: &Path) -> Value {
        let args = self.backup_args(dir);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.json(wrapper, &args)
    }

    /// `prune --grace 0s` (through `wrapper`); returns the report.
    fn prune(&self, wrapper: &[&str]) -> Value {
        self.json(
            wrapper,
            &["prune", "--repo", &self.repo(), "--grace", "0s", "--json"],
        )
    }

    fn snapshots(&self) -> Vec<Value> {
        match self.json(&[], &["snapshots", "--repo", &self.repo(), "--json"]) {
            Value::Array(list) => list,
            other => panic!("snapshots --json is not an array: {other}"),
        }
    }

    fn record(&self, id: &str) -> Option<Value> {
        self.snapshots().into_iter().find(|s| s["id"] == id)
    }

    fn status(&self, id: &str) -> Option<String> {
        self.record(id)
            .map(|r| r["status"].as_str().unwrap().to_owned())
    }

    /// Restores snapshot `id` into a fresh directory and compares it with `data`.
    fn restores_identical(&self, id: &str, data: &Path) {
        static RESTORES: AtomicUsize = AtomicUsize::new(0);
        let n = RESTORES.fetch_add(1, Ordering::SeqCst);
        let target = self.path(&format!("restored-{n}"));
        self.ok(
            &[],
            &[
                "restore",
                "--repo",
                &self.repo(),
                id,
                "--target",
                target.to_str().unwrap(),
            ],
        );
        same_tree(data, &target);
    }

    fn verify(&self) {
        let out = self.ok(&[], &["verify", "--repo", &self.repo()]);
        assert!(out.contains("sound"), "{out}");
    }

    /// The repository's pack files (not the temporary files of packs being written).
    fn packs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let Ok(dirs) = std::fs::read_dir(self.path("repo/data")) else {
            return out;
        };
        for d in dirs.flatten() {
            let Ok(files) = std::fs::read_dir(d.path()) else {
                continue;
            };
            for f in files.flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                if !name.contains('#') && !name.starts_with('.') {
                    out.push(f.path());
                }
            }
        }
        out
    }

    /// The lock objects (JSON followed by a 32-byte checksum), by key.
    fn locks(&self) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        let Ok(files) = std::fs::read_dir(self.path("repo/locks")) else {
            return out;
        };
        for f in files.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.contains('#') {
                continue;
            }
            let Ok(bytes) = std::fs::read(f.path()) else {
                continue;
            };
            if bytes.len() < 32 {
                continue;
            }
            if let Ok(info) = serde_json::from_slice(&bytes[..bytes.len() - 32]) {
                out.push((format!("locks/{name}"), info));
            }
        }
        out
    }

    /// The only lock in the repository, which must be a backup's: (key, what it says).
    fn the_backup_lock(&self) -> (String, Value) {
        let locks = self.locks();
        assert_eq!(locks.len(), 1, "expected one lock: {locks:?}");
        let (key, info) = locks.into_iter().next().unwrap();
        assert_eq!(info["purpose"], "backup", "{info}");
        assert!(info["backup_id"].is_string(), "{info}");
        (key, info)
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

/// A directory of `files` incompressible files of `each` bytes, and a small text file.
fn make_data(root: &Path, seed: u64, files: u64, each: usize) {
    std::fs::create_dir_all(root.join("nested")).unwrap();
    std::fs::write(
        root.join("notes.txt"),
        format!("notes {seed}\n").repeat(500),
    )
    .unwrap();
    for i in 0..files {
        std::fs::write(
            root.join(format!("nested/part{i:02}.bin")),
            random_bytes(each, seed * 1000 + i),
        )
        .unwrap();
    }
}

/// ~40 MiB: more than two 16 MiB packs, so a backup stopped at its first pack has most of its
/// work ahead of it.
fn make_big_data(root: &Path, seed: u64) {
    make_data(root, seed, 5, 8 << 20);
}

fn started_at(record: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(record["started_at"].as_str().unwrap())
        .unwrap_or_else(|e| panic!("started_at of {record}: {e}"))
        .with_timezone(&Utc)
}

/// Fails unless `tool` can be run: a missing tool is a failure, never a skip.
fn require(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is missing: install the Debian package {package} (scripts/test does)"
    );
}

/// A command running in its own process group, its output going to files. Dropped before it
/// was waited for (a failing test), the whole group is continued and killed.
struct Background {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    waited: bool,
}

/// How a background command ended.
struct Ended {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Background {
    fn spawn(mut cmd: Command, env: &Env, name: &str) -> Background {
        let stdout = env.path(&format!("{name}.stdout"));
        let stderr = env.path(&format!("{name}.stderr"));
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Background {
            child,
            stdout,
            stderr,
            waited: false,
        }
    }

    fn pgid(&self) -> i32 {
        self.child.id() as i32
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with a negative PID signals the process group we created.
        let rc = unsafe { libc::kill(-self.pgid(), signal) };
        assert_eq!(
            rc,
            0,
            "kill(-{}, {signal}): {}",
            self.pgid(),
            std::io::Error::last_os_error()
        );
    }

    /// The group's processes, as (pid, command name, state letter).
    fn members(&self) -> Vec<(u32, String, char)> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let comm = stat[open + 1..close].to_owned();
            let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            // state ppid pgrp …
            if rest.len() > 2 && rest[2].parse::<i32>() == Ok(self.pgid()) {
                out.push((pid, comm, rest[0].chars().next().unwrap_or('?')));
            }
        }
        out
    }

    /// The PID, in our namespace, of the group's `resilience` process.
    fn binary_pid(&self) -> u32 {
        let members = self.members();
        members
            .iter()
            .find(|(_, comm, _)| comm == "resilience")
            .unwrap_or_else(|| panic!("no resilience process in {members:?}"))
            .0
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    fn read_output(&self) -> (String, String) {
        (
            std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            std::fs::read_to_string(&self.stderr).unwrap_or_default(),
        )
    }

    /// Stops the whole group with SIGSTOP as soon as the repository holds more than `packs_before`
    /// packs, and checks that the backup was caught before it finished: its `resilience`
    /// process exists and is stopped.
    fn stop_after_its_first_pack(&mut self, env: &Env, packs_before: usize) -> Instant {
        let started = Instant::now();
        while env.packs().len() <= packs_before {
            if let Some(status) = self.exited() {
                let (out, err) = self.read_output();
                panic!("the backup ended ({status}) before writing a pack: {out}{err}");
            }
            assert!(
                started.elapsed() < PATIENCE,
                "the backup wrote no pack in {PATIENCE:?}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        self.signal(libc::SIGSTOP);
        let stopped_at = Instant::now();
        loop {
            let members = self.members();
            let binary = members.iter().any(|(_, comm, _)| comm == "resilience");
            assert!(
                binary,
                "the backup finished before it could be stopped (make its data bigger): {members:?}"
            );
            if members
                .iter()
                .all(|(_, _, state)| matches!(state, 'T' | 't'))
            {
                break;
            }
            assert!(
                stopped_at.elapsed() < Duration::from_secs(10),
                "the group did not stop: {members:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        stopped_at
    }

    fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Waits for the command to end (within `PATIENCE`).
    fn wait(mut self) -> Ended {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.exited() {
                break status;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "the backup did not end within {PATIENCE:?} of being continued"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        self.waited = true;
        let (stdout, stderr) = self.read_output();
        Ended {
            status,
            stdout,
            stderr,
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if !self.waited {
            // SAFETY: signals the process group we created.
            unsafe {
                libc::kill(-self.pgid(), libc::SIGCONT);
                libc::kill(-self.pgid(), libc::SIGKILL);
            }
            let _ = self.child.wait();
        }
    }
}

fn report_id(report: &Value) -> String {
    report["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {report}"))
        .to_owned()
}

/// While a stopped backup holds its lock: a first prune condemns the pack it wrote (no index
/// lists it or no snapshot references it yet), a second deletes nothing and names the lock as
/// the reason it waits.
fn prune_twice_beside_a_live_backup(env: &Env, wrapper: &[&str], lock_key: &str) {
    let first = env.prune(wrapper);
    assert!(
        first["condemned_packs"].as_u64().unwrap() >= 1,
        "the stopped backup's pack was not condemned: {first}"
    );
    let second = env.prune(wrapper);
    assert_eq!(
        second["deleted_packs"], 0,
        "a prune deleted packs while a backup that may use them held a live lock: {second}"
    );
    let waiting = second["waiting_plans"].to_string();
    assert!(
        waiting.contains(lock_key),
        "the plan does not wait for {lock_key}: {second}"
    );
}

/// The stopped backup's lock: it says which backup it protects, which must still be running.
fn live_backup_lock(env: &Env) -> (String, String) {
    let (key, info) = env.the_backup_lock();
    let id = info["backup_id"].as_str().unwrap().to_owned();
    assert_eq!(env.status(&id).as_deref(), Some("running"));
    (key, id)
}

/// A backup stopped (SIGSTOP) with a pack written, for 150 s with the default 120 s lock: a
/// second backup reaps it as failed, two prunes delete its pack. Continued, it must not claim
/// success for a snapshot whose data is gone: it fails saying its lock lapsed (or, if it does
/// claim success, that snapshot must really be there and restore, even after more prunes).
#[test]
fn a_backup_stopped_past_its_lock_lifetime_never_claims_lost_data() {
    let env = Env::new();
    env.init();
    let (a, b) = (env.path("a"), env.path("b"));
    make_big_data(&a, 1);
    make_data(&b, 2, 2, 1 << 20);

    let args = env.backup_args(&a);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut slow = Background::spawn(env.cmd(&[], &args), &env, "slow");
    let stopped_at = slow.stop_after_its_first_pack(&env, 0);
    let (lock_key, slow_id) = live_backup_lock(&env);

    // Past the lock's lifetime (120 s since its last refresh, which was before the stop).
    std::thread::sleep(Duration::from_secs(125).saturating_sub(stopped_at.elapsed()));
    let other = env.backup(&[], &b);
    let other_id = report_id(&other);
    assert_eq!(
        env.status(&slow_id).as_deref(),
        Some("failed"),
        "the second backup did not reap the stopped one"
    );
    let first = env.prune(&[]);
    assert!(
        first["condemned_packs"].as_u64().unwrap() >= 1,
        "the stopped backup's pack was not condemned: {first}"
    );
    let second = env.prune(&[]);
    assert!(
        second["deleted_packs"].as_u64().unwrap() >= 1,
        "the stopped backup's pack was not deleted, so nothing is at stake: {second}"
    );
    assert!(
        !second["waiting_plans"].to_string().contains(&lock_key),
        "{second}"
    );

    std::thread::sleep(Duration::from_secs(150).saturating_sub(stopped_at.elapsed()));
    slow.resume();
    let ended = slow.wait();
    eprintln!(
        "the backup stopped past its lock's lifetime ended with {}: {}",
        ended.status, ended.stderr
    );
    if ended.status.success() {
        // It claims success: then the snapshot must be there, and stay there.
        let report: Value = serde_json::from_str(&ended.stdout).unwrap();
        assert_eq!(report_id(&report), slow_id);
        env.prune(&[]);
        env.prune(&[]);
        assert_eq!(env.status(&slow_id).as_deref(), Some("succeeded"));
        env.restores_identical(&slow_id, &a);
    } else {
        assert!(
            ended.stderr.contains("our lock") && ended.stderr.contains("lapsed"),
            "it failed ({}) without saying its lock lapsed: {}",
            ended.status,
            ended.stderr
        );
        let status = env.status(&slow_id);
        assert!(
            status.is_none() || status.as_deref() == Some("failed"),
            "a backup that failed is listed {status:?}"
        );
    }
    assert_eq!(env.status(&other_id).as_deref(), Some("succeeded"));
    env.restores_identical(&other_id, &b);
    env.verify();
}

/// A high PID that no process of ours has, nor any of the 50 after it: given to the backup
/// inside the new PID namespace, so that looked up in our `/proc` it is "gone".
fn a_pid_absent_here() -> u32 {
    let max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (max / 2..max - 100)
        .rev()
        .find(|p| (*p..p + 50).all(|q| !Path::new(&format!("/proc/{q}")).exists()))
        .expect("a free PID range")
}

/// A backup in another PID namespace on the same host (`unshare --pid`), with a PID that does
/// not exist in ours: a second backup and two prunes beside it must not judge its lock dead, so
/// it completes and its snapshot restores after more prunes.
#[test]
fn a_backup_in_another_pid_namespace_is_not_judged_dead() {
    require("unshare", "util-linux");
    let env = Env::new();
    env.init();
    let (a, b) = (env.path("a"), env.path("b"));
    make_big_data(&a, 3);
    make_data(&b, 4, 2, 1 << 20);

    // PID 1 of the namespace is the shell, which gives the backup PID `pid`.
    let pid = a_pid_absent_here();
    let script = format!(
        "echo {} > /proc/sys/kernel/ns_last_pid || exit 97; \"$0\" \"$@\"; exit $?",
        pid - 1
    );
    let wrapper = [
        "unshare",
        "--pid",
        "--fork",
        "--mount-proc",
        "sh",
        "-c",
        &script,
    ];
    let args = env.backup_args(&a);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut slow = Background::spawn(env.cmd(&wrapper, &args), &env, "namespaced");
    slow.stop_after_its_first_pack(&env, 0);
    let (lock_key, slow_id) = live_backup_lock(&env);

    // The lock names this host and a PID absent from our /proc, in another PID namespace: what
    // the old rule ("same host, PID gone") judged dead at once.
    let (_, info) = env.the_backup_lock();
    let owner = info["owner"].as_str().unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(owner, format!("{}:{pid}", host.trim()), "{info}");
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    // It runs in another PID namespace (and, where the lock says which, not in ours).
    let ours = std::fs::read_link("/proc/self/ns/pid").unwrap();
    let theirs = std::fs::read_link(format!("/proc/{}/ns/pid", slow.binary_pid())).unwrap();
    assert_ne!(theirs, ours);
    if let Some(claimed) = info["pid_namespace"].as_str() {
        assert_eq!(Path::new(claimed), theirs, "{info}");
    }

    let other = env.backup(&[], &b);
    let other_id = report_id(&other);
    assert_eq!(
        env.status(&slow_id).as_deref(),
        Some("running"),
        "the second backup reaped the namespaced one"
    );
    prune_twice_beside_a_live_backup(&env, &[], &lock_key);
    assert_eq!(env.status(&slow_id).as_deref(), Some("running"));

    slow.resume();
    let ended = slow.wait();
    assert!(
        ended.status.success(),
        "the namespaced backup failed ({}): {}",
        ended.status,
        ended.stderr
    );
    let report: Value = serde_json::from_str(&ended.stdout).unwrap();
    assert_eq!(report_id(&report), slow_id);
    env.prune(&[]);
    env.prune(&[]);
    assert_eq!(env.status(&slow_id).as_deref(), Some("succeeded"));
    env.restores_identical(&slow_id, &a);
    env.restores_identical(&other_id, &b);
    env.verify();
}

/// One slow backup at real time while a process ten minutes ahead backs up and prunes twice;
/// then one slow backup ten minutes behind while real-time processes do. Locks are judged by
/// the store's clock, so both slow backups complete and restore after more prunes.
#[test]
fn clients_whose_clocks_differ_by_minutes_agree_on_locks() {
    require("faketime", "faketime");
    const AHEAD: &[&str] = &["faketime", "-f", "+10m"];
    const BEHIND: &[&str] = &["faketime", "-f", "-10m"];
    let env = Env::new();
    env.init();
    let dirs: Vec<PathBuf> = ["a", "b", "c", "d"].iter().map(|d| env.path(d)).collect();
    make_big_data(&dirs[0], 5);
    make_data(&dirs[1], 6, 2, 1 << 20);
    make_big_data(&dirs[2], 7);
    make_data(&dirs[3], 8, 2, 1 << 20);
    let minutes = |d: chrono::Duration| d.num_seconds() as f64 / 60.0;

    // A slow backup at real time; a process ten minutes ahead backs up and prunes beside it.
    let args = env.backup_args(&dirs[0]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut slow = Background::spawn(env.cmd(&[], &args), &env, "real-time");
    slow.stop_after_its_first_pack(&env, 0);
    let (lock_key, slow_a) = live_backup_lock(&env);
    let now = Utc::now();
    let ahead = report_id(&env.backup(AHEAD, &dirs[1]));
    let skew = started_at(&env.record(&ahead).unwrap()) - now;
    assert!(
        (9.0..11.0).contains(&minutes(skew)),
        "faketime did not put the binary's clock 10 minutes ahead: it is {skew} off"
    );
    assert_eq!(
        env.status(&slow_a).as_deref(),
        Some("running"),
        "the process ahead reaped the real-time backup"
    );
    prune_twice_beside_a_live_backup(&env, AHEAD, &lock_key);
    slow.resume();
    let ended = slow.wait();
    assert!(
        ended.status.success(),
        "the real-time backup failed ({}): {}",
        ended.status,
        ended.stderr
    );
    env.prune(AHEAD);
    env.prune(AHEAD);
    assert_eq!(env.status(&slow_a).as_deref(), Some("succeeded"));
    env.restores_identical(&slow_a, &dirs[0]);

    // The reverse: a slow backup ten minutes behind, real-time processes beside it.
    let packs_before = env.packs().len();
    let now = Utc::now();
    let args = env.backup_args(&dirs[2]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut slow = Background::spawn(env.cmd(BEHIND, &args), &env, "behind");
    slow.stop_after_its_first_pack(&env, packs_before);
    let (lock_key, slow_c) = live_backup_lock(&env);
    let skew = started_at(&env.record(&slow_c).unwrap()) - now;
    assert!(
        (-11.0..-9.0).contains(&minutes(skew)),
        "faketime did not put the binary's clock 10 minutes behind: it is {skew} off"
    );
    let real = report_id(&env.backup(&[], &dirs[3]));
    assert_eq!(
        env.status(&slow_c).as_deref(),
        Some("running"),
        "a real-time backup reaped the one behind"
    );
    prune_twice_beside_a_live_backup(&env, &[], &lock_key);
    slow.resume();
    let ended = slow.wait();
    assert!(
        ended.status.success(),
        "the backup behind failed ({}): {}",
        ended.status,
        ended.stderr
    );
    env.prune(&[]);
    env.prune(&[]);
    assert_eq!(env.status(&slow_c).as_deref(), Some("succeeded"));
    for (id, dir) in [
        (&slow_a, &dirs[0]),
        (&ahead, &dirs[1]),
        (&slow_c, &dirs[2]),
        (&real, &dirs[3]),
    ] {
        env.restores_identical(id, dir);
    }
    env.verify();
}
