//! `wal-push --async` and `wal-fetch --prefetch` against real PostgreSQL clusters: Postgres
//! drives the asynchronous push as its archive_command; every file Postgres took as archived
//! (its `.done` in archive_status) must be in the repository with the bytes Postgres gave,
//! also while the background pusher is killed again and again; a refused push is reported to
//! the caller; prefetched segments are served only when their bytes check.

mod pg_support;
mod tls_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pg_support::{chown, Cluster, Lab};

/// An archive_command that keeps a copy of each file Postgres hands over (the bytes it
/// archives), then pushes it asynchronously.
fn copying_async_command(lab: &Lab, copies: &Path) -> String {
    format!(
        "cp %p {}/%f && {}",
        copies.display(),
        lab.archive_command_with("--async --parallel 4 --timeout 60")
    )
}

fn copies_dir(lab: &Lab) -> PathBuf {
    let copies = lab.path("copies");
    std::fs::create_dir(&copies).unwrap();
    chown(&copies);
    copies
}

/// Writes about `segments` 1 MiB segments of WAL, switching segments as it goes.
async fn burst(cluster: &Cluster, segments: usize) {
    let c = cluster.client().await;
    c.batch_execute("CREATE TABLE IF NOT EXISTS burst (id serial, pad text)")
        .await
        .unwrap();
    for _ in 0..segments {
        c.batch_execute(
            "INSERT INTO burst (pad) SELECT md5(random()::text) FROM generate_series(1, 4000);
             SELECT pg_switch_wal();",
        )
        .await
        .unwrap();
    }
}

/// The files Postgres took as archived: the `.done` marks in archive_status.
fn acknowledged(cluster: &Cluster) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(cluster.pgdata.join("pg_wal/archive_status"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_suffix(".done").map(str::to_owned)
        })
        .collect();
    out.sort();
    out
}

/// Fetches every acknowledged file back and compares it with the copy the archive_command
/// made; returns how many were compared.
fn all_acknowledged_are_archived(lab: &Lab, cluster: &Cluster, copies: &Path) -> usize {
    let work = lab.path("fetched");
    std::fs::create_dir_all(&work).unwrap();
    let done = acknowledged(cluster);
    for name in &done {
        let dest = work.join(name);
        let out = lab.run(&[
            "wal-fetch",
            "--source",
            "main",
            name,
            dest.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{name} was acknowledged to Postgres but is not in the repository: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            std::fs::read(&dest).unwrap() == std::fs::read(copies.join(name)).unwrap(),
            "{name}: the archived bytes differ from what Postgres handed over"
        );
    }
    done.len()
}

#[tokio::test(flavor = "multi_thread")]
async fn async_push_archives_a_burst_and_every_acknowledged_segment_comes_back() {
    let lab = Lab::new();
    let copies = copies_dir(&lab);
    let primary = lab
        .cluster_archiving("primary", copying_async_command(&lab, &copies))
        .await;
    burst(&primary, 24).await;
    primary.archive_now().await;
    let compared = all_acknowledged_are_archived(&lab, &primary, &copies);
    assert!(compared >= 24, "only {compared} segments acknowledged");
    // The asynchronous path was taken: the pusher's spool is in pg_wal.
    assert!(primary
        .pgdata
        .join("pg_wal/.resilience-push/.lock.pusher")
        .exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pusher_killed_mid_batch_loses_nothing_acknowledged() {
    let lab = Lab::new();
    let copies = copies_dir(&lab);
    let primary = lab
        .cluster_archiving("primary", copying_async_command(&lab, &copies))
        .await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let (stop, repo) = (stop.clone(), lab.repo());
        std::thread::spawn(move || {
            let mut kills = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for pid in pushers_of(&repo) {
                    // SAFETY: kill(2) on a pid we found running our own pusher.
                    if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
                        kills += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(40));
            }
            kills
        })
    };
    burst(&primary, 30).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let kills = killer.join().unwrap();
    assert!(kills > 0, "no pusher was killed");
    // Archiving resumes with a new pusher, and catches up.
    primary.archive_now().await;
    let compared = all_acknowledged_are_archived(&lab, &primary, &copies);
    assert!(compared >= 30, "only {compared} segments acknowledged");
    assert!(pushers_of(&lab.repo()).len() <= 1);
}

/// The pids of the background pushers archiving into `repo`.
fn pushers_of(repo: &Path) -> Vec<i32> {
    let repo = repo.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains("--async-worker") && c.contains(&repo)
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_async_push_of_different_bytes_is_refused_and_reported_to_the_caller() {
    let lab = Lab::new();
    let primary = lab.cluster("primary").await;
    let seg = primary.archive_now().await;
    let stored = std::fs::read(lab.wal_object(&seg)).unwrap();
    // A WAL directory as Postgres keeps it: the file, and its .ready mark.
    let pg_wal = lab.path("pg_wal");
    std::fs::create_dir_all(pg_wal.join("archive_status")).unwrap();
    let fetched = pg_wal.join(&seg);
    lab.ok(&[
        "wal-fetch",
        "--source",
        "main",
        &seg,
        fetched.to_str().unwrap(),
    ]);
    let original = std::fs::read(&fetched).unwrap();
    let mut other = original.clone();
    other[500_000] ^= 0xFF;
    std::fs::write(&fetched, &other).unwrap();
    std::fs::write(pg_wal.join(format!("archive_status/{seg}.ready")), b"").unwrap();
    let push = |lab: &Lab| {
        lab.run(&[
            "wal-push",
            "--async",
            "--timeout",
            "60",
            "--source",
            "main",
            fetched.to_str().unwrap(),
        ])
    };
    for attempt in 0..2 {
        let out = push(&lab);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "attempt {attempt}: {err}");
        assert!(
            err.contains("different content"),
            "attempt {attempt}: {err}"
        );
        assert!(err.contains(&seg), "attempt {attempt}: {err}");
    }
    assert_eq!(std::fs::read(lab.wal_object(&seg)).unwrap(), stored);
    // The right bytes, retried: acknowledged.
    std::fs::write(&fetched, &original).unwrap();
    let out = push(&lab);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The processes (pids) whose command lines hold every one of `words`.
fn processes_with(words: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if words.iter().all(|w| args.iter().any(|a| a == w)) {
            found.push(pid);
        }
    }
    found
}

/// The nice value of process `pid` (or `self`), from `/proc/<pid>/stat`.
fn nice_of(pid: &str) -> i64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command's closing parenthesis: state is field 3, nice field 19.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .collect();
    fields[16].parse().unwrap()
}

/// Waits until `spool` holds prefetched copies of every one of `names`.
fn wait_prefetched(spool: &Path, names: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let files: Vec<String> = std::fs::read_dir(spool)
            .map(|d| {
                d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        if names
            .iter()
            .all(|n| files.iter().any(|f| f.starts_with(&format!("{n}."))))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{names:?} not prefetched into {} within 60 s: {files:?}",
            spool.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn prefetched_segments_are_served_checked_and_a_damaged_one_is_fetched_again() {
    let lab = Lab::new();
    let primary = lab.cluster("primary").await;
    burst(&primary, 6).await;
    let last = primary.archive_now().await;
    let segments: Vec<String> = acknowledged(&primary)
        .into_iter()
        .filter(|n| n.len() == 24 && n[..] <= last[..])
        .collect();
    assert!(segments.len() >= 5, "{segments:?}");
    let (first, next) = (&segments[0], &segments[1..5]);
    let pg_wal = lab.path("restore-wal");
    std::fs::create_dir(&pg_wal).unwrap();
    let dest = pg_wal.join("RECOVERYXLOG");
    let fetch = |lab: &Lab, name: &str| {
        lab.run(&[
            "wal-fetch",
            "--source",
            "main",
            "--prefetch",
            "4",
            name,
            dest.to_str().unwrap(),
        ])
    };
    let reference = |name: &str| {
        let out = lab.path(&format!("reference-{name}"));
        lab.ok(&["wal-fetch", "--source", "main", name, out.to_str().unwrap()]);
        std::fs::read(out).unwrap()
    };
    assert!(fetch(&lab, first).status.success());
    assert_eq!(std::fs::read(&dest).unwrap(), reference(first));
    let spool = pg_wal.join(".resilience-prefetch");
    wait_prefetched(&spool, next);
    // The prefetcher (idle now, not yet exited) yields the CPU to recovery: ten steps nicer.
    let ours = nice_of("self");
    let prefetchers = processes_with(&["--prefetch-worker", dest.to_str().unwrap()]);
    assert_eq!(prefetchers.len(), 1, "{prefetchers:?}");
    assert_eq!(nice_of(&prefetchers[0]), (ours + 10).min(19));

    // A prefetched file damaged in the spool: named, not served, fetched again.
    let damaged = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&next[0])
        })
        .unwrap();
    let mut bytes = std::fs::read(&damaged).unwrap();
    bytes[1000] ^= 1;
    std::fs::write(&damaged, &bytes).unwrap();
    let out = fetch(&lab, &next[0]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(&damaged.display().to_string()), "{err}");
    assert_eq!(std::fs::read(&dest).unwrap(), reference(&next[0]));

    // The next one comes from the spool alone: it is served even with the repository gone.
    wait_prefetched(&spool, &next[1..2]);
    let out = std::process::Command::new(pg_support::BIN)
        .args(["--repo", "/nonexistent/repository", "--key-file"])
        .arg(lab.key_file())
        .args(["wal-fetch", "--source", "main", "--prefetch", "4", &next[1]])
        .arg(&dest)
        .env_remove("RESILIENCE_REPOSITORY")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&dest).unwrap(), reference(&next[1]));

    // Not archived: exit 1 and not a word, prefetch or not.
    let out = fetch(&lab, "0000000100000000000000FF");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recovery_through_the_prefetching_restore_command_replays_to_the_same_state() {
    let lab = Lab::new();
    let primary = lab.cluster("primary").await;
    let backup = lab.base_backup(&primary);
    assert_eq!(backup["status"], "succeeded", "{backup}");
    burst(&primary, 20).await;
    let c = primary.client().await;
    let expected = pg_support::table_sum(&c, "burst").await;
    assert!(expected.is_some());
    primary.archive_now().await;
    let (restored, doc) = lab.restore("restored", &[]);
    assert_eq!(
        pg_support::table_sum(&restored.client().await, "burst").await,
        expected,
        "{doc}"
    );
    // The restore_command prefetched: its spool is in the restored pg_wal.
    assert!(restored
        .pgdata
        .join("pg_wal/.resilience-prefetch/.lock.prefetcher")
        .exists());
}
