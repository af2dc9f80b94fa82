//! Full disks, on a real file system: a small tmpfs mounted for each test (the tests run as
//! root under `scripts/test`; without the right to mount they fail, never skip).
//!
//! - A backup into a repository whose disk fills up fails naming the object and the free
//!   space; it leaves nothing that blocks the next backup; the space it used comes back with
//!   the next prune, without waiting for the grace period (the packs were never visible).
//! - A restore into a full target fails naming the file, and `--resume` completes it once
//!   space is freed, skipping what is already there.

use std::path::{Path, PathBuf};
use std::process::Command;

use resilience_core::catalog::Catalog;
use resilience_core::error::error_chain;
use resilience_core::keys::KeyFileProvider;
use resilience_core::ops::prune::PruneOptions;
use resilience_core::ops::verify::VerifyOptions;
use resilience_core::repo::{InitOptions, Repository};
use resilience_core::source::fs::{DirSource, DirTarget};
use resilience_core::testing::{pseudo_random, MemorySource};
use resilience_objstore::open_sink_or_create;

/// A tmpfs of a fixed size, unmounted when dropped.
struct Tmpfs {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Tmpfs {
    fn mount(mib: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fs");
        std::fs::create_dir(&path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("running mount");
        assert!(
            status.success(),
            "cannot mount a {mib} MiB tmpfs at {} ({status}): these tests need root (scripts/test runs them as root)",
            path.display()
        );
        Tmpfs { _dir: dir, path }
    }

    fn resize(&self, mib: u64) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={mib}m")])
            .arg(&self.path)
            .status()
            .unwrap();
        assert!(status.success(), "cannot resize the tmpfs");
    }

    fn free(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.path)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df prints the free space")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn key() -> KeyFileProvider {
    KeyFileProvider::from_key([5; 32])
}

async fn init(root: &Path) -> Repository {
    let url = root.join("repo").to_str().unwrap().to_owned();
    Repository::init(
        open_sink_or_create(&url).unwrap(),
        &key(),
        InitOptions {
            pack_size: 2 << 20,
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_backup_into_a_full_disk_fails_clearly_and_the_next_prune_frees_what_it_used() {
    let disk = Tmpfs::mount(16);
    let repo = init(&disk.path).await;
    let kept = pseudo_random(1 << 20, 1);
    repo.backup(
        &MemorySource::new("kept").file("k", kept.clone()),
        Default::default(),
    )
    .await
    .unwrap();
    let free_before = disk.free();

    let err = repo
        .backup(
            &MemorySource::new("big").file("b", pseudo_random(40 << 20, 2)),
            Default::default(),
        )
        .await
        .expect_err("40 MiB do not fit in 16");
    let text = error_chain(&err);
    assert!(
        text.contains("data/")
            && text.contains("no space left on")
            && text.contains("bytes free of"),
        "the error names the object and the free space: {text}"
    );
    assert!(
        disk.free() < free_before / 2,
        "the failed backup used the space"
    );

    // Nothing blocks the next backup once there is room (its lock is gone, its record says
    // failed or running, never succeeded).
    let report = repo.prune(PruneOptions::default()).await.unwrap();
    assert!(report.deleted_packs > 0, "{report:?}");
    assert!(
        disk.free() + (1 << 20) >= free_before,
        "the default prune (a day's grace) gave the space back: {} of {free_before} bytes free",
        disk.free()
    );
    repo.backup(
        &MemorySource::new("next").file("n", pseudo_random(4 << 20, 3)),
        Default::default(),
    )
    .await
    .expect("the next backup runs");
    let verified = repo.verify(VerifyOptions { full: true }).await.unwrap();
    assert!(verified.is_ok(), "{verified:?}");
    let failed = repo
        .catalog()
        .list(&Default::default())
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.source.id == "big")
        .expect("the failed backup is recorded");
    assert_ne!(
        failed.status,
        resilience_core::catalog::BackupStatus::Succeeded
    );
}

#[tokio::test]
async fn a_restore_into_a_full_target_fails_naming_the_file_and_resume_completes_it() {
    let work = tempfile::tempdir().unwrap();
    let repo = init(work.path()).await;
    let data = work.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let files: Vec<(String, Vec<u8>)> = (0..8u64)
        .map(|i| (format!("f{i}"), pseudo_random(1 << 20, 10 + i)))
        .collect();
    for (name, bytes) in &files {
        std::fs::write(data.join(name), bytes).unwrap();
    }
    let snapshot = repo
        .backup(&DirSource::new(&data), Default::default())
        .await
        .unwrap()
        .record
        .id;

    let disk = Tmpfs::mount(4);
    let target = disk.path.join("restored");
    let err = repo
        .restore(&snapshot, &DirTarget::new(&target), Default::default())
        .await
        .expect_err("8 MiB do not fit in 4");
    let text = error_chain(&err);
    assert!(
        text.contains(target.to_str().unwrap()) && text.to_lowercase().contains("space"),
        "the error names the file and the cause: {text}"
    );

    disk.resize(32);
    repo.restore(
        &snapshot,
        &DirTarget::new(&target).resume(true),
        Default::default(),
    )
    .await
    .expect("the resumed restore completes");
    for (name, bytes) in &files {
        let back = std::fs::read(target.join(name)).unwrap();
        assert!(&back == bytes, "{name} restored with other bytes");
    }
}
