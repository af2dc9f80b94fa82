//! Power cuts: what a command reported at exit 0 is on the disk, not only in the page cache.
//!
//! Each test writes into an ext4 file system of its own, on a loop device over an image file.
//! The file system is made with its inode tables and journal written up front and mounted with
//! `commit=600`, so that nothing reaches the device in the background during a test: the
//! journal commits only when a sync asks, and the kernel writes dirty pages back only after
//! 30 seconds. The power cut is a copy of the image taken while the file system is still
//! mounted: it holds exactly what reached the device, as a disk does when the power goes out.
//! The copy is then mounted (its journal replayed, as after a crash) and checked.
//!
//! Every test has its control: the same command with its syncs skipped (`--no-sync`, or
//! `eatmydata`, which turns every sync call into a no-op) loses its work to the cut, which
//! shows that the cut loses whatever was not synced. The tests need root (losetup, mount), as
//! `scripts/test` runs them; they fail, not skip, without it.

mod tree_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use tree_support::{compare_trees, same_tree};

const BIN: &str = env!("CARGO_BIN_EXE_resilience");

/// The size of a test's file system.
const IMAGE_BYTES: u64 = 128 << 20;

/// A test path as the `&str` an argument list takes (temporary directories are UTF-8).
fn utf8(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// Runs `program ARGS`; panics with its output unless it exits 0. Returns its standard output.
fn run(program: &str, args: &[&str]) -> String {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// An ext4 file system of its own, on a loop device over an image file, mounted at `mount`;
/// unmounted and detached when dropped.
struct Disk {
    image: PathBuf,
    device: String,
    mount: PathBuf,
}

impl Disk {
    /// A new, empty file system in the file `image`, mounted at `mount`.
    fn new(image: &Path, mount: &Path) -> Disk {
        std::fs::File::create(image)
            .and_then(|f| f.set_len(IMAGE_BYTES))
            .unwrap();
        run(
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                "-E",
                "lazy_itable_init=0,lazy_journal_init=0",
                utf8(image),
            ],
        );
        Disk::attach(image, mount)
    }

    /// The file system in `image` behind a new loop device, mounted at `mount`.
    fn attach(image: &Path, mount: &Path) -> Disk {
        let device = run("losetup", &["--find", "--show", utf8(image)])
            .trim()
            .to_owned();
        std::fs::create_dir_all(mount).unwrap();
        let disk = Disk {
            image: image.to_owned(),
            device,
            mount: mount.to_owned(),
        };
        run(
            "mount",
            &["-o", "commit=600,noatime", &disk.device, utf8(mount)],
        );
        disk
    }

    /// The disk as a power cut now would leave it: a copy of the device's bytes, taken with the
    /// file system still mounted, in the file `image` and mounted at `mount` (which replays
    /// its journal, as after a crash).
    fn cut(&self, image: &Path, mount: &Path) -> Disk {
        std::fs::copy(&self.image, image).unwrap();
        Disk::attach(image, mount)
    }

    fn path(&self, p: &str) -> PathBuf {
        self.mount.join(p)
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg(&self.mount).status();
        if !matches!(unmounted, Ok(s) if s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

/// A test's directory: the data to back up, the images, and the mount points.
struct Lab {
    dir: tempfile::TempDir,
    /// Images made so far: each has a name of its own, so that no image is reused while a
    /// file system lazily unmounted (a background pusher still in it) may write to it.
    images: std::cell::Cell<usize>,
}

impl Lab {
    fn new() -> Lab {
        let lab = Lab {
            dir: tempfile::tempdir().unwrap(),
            images: std::cell::Cell::new(0),
        };
        write_tree(&lab.path("data"));
        lab
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// A name not used before: `<prefix>-<n>`.
    fn new_name(&self, prefix: &str) -> String {
        let n = self.images.get();
        self.images.set(n + 1);
        format!("{prefix}-{n}")
    }

    /// A new file system.
    fn disk(&self) -> Disk {
        let name = self.new_name("disk");
        Disk::new(&self.path(&format!("{name}.img")), &self.path(&name))
    }

    /// `disk` after a power cut now.
    fn cut(&self, disk: &Disk) -> Disk {
        let name = self.new_name("cut");
        disk.cut(&self.path(&format!("{name}.img")), &self.path(&name))
    }

    /// `resilience ARGS` (through `eatmydata` when `skip_syncs`): its output, whatever its status.
    fn resilience(&self, skip_syncs: bool, args: &[&str]) -> Output {
        let mut cmd = if skip_syncs {
            let mut c = Command::new("eatmydata");
            c.arg(BIN);
            c
        } else {
            Command::new(BIN)
        };
        cmd.args(args)
            .env("RESILIENCE_PASSWORD", "correct horse")
            .env_remove("RESILIENCE_REPOSITORY")
            .output()
            .unwrap()
    }

    /// `resilience ARGS`, which must exit 0: its standard output.
    fn ok(&self, skip_syncs: bool, args: &[&str]) -> String {
        let out = self.resilience(skip_syncs, args);
        assert!(
            out.status.success(),
            "{args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn init(&self, repo: &Path) {
        self.ok(false, &["init", "--repo", utf8(repo)]);
    }

    /// Backs the data up into `repo`: the new snapshot's id.
    fn backup(&self, skip_syncs: bool, repo: &Path) -> String {
        let data = self.path("data");
        let out = self.ok(
            skip_syncs,
            &["backup", "--repo", utf8(repo), "--json", "dir", utf8(&data)],
        );
        let report: Value = serde_json::from_str(&out).unwrap();
        report["id"]
            .as_str()
            .expect("the report names the snapshot")
            .to_owned()
    }

    /// `resilience restore` of snapshot `id` from `repo` into `target`, with `extra` options.
    fn restore(&self, repo: &Path, id: &str, target: &Path, extra: &[&str]) {
        let mut args = vec![
            "restore",
            "--repo",
            utf8(repo),
            id,
            "--target",
            utf8(target),
        ];
        args.extend(extra);
        self.ok(false, &args);
    }

    /// The ids of `repo`'s snapshots, or the error `snapshots` reported.
    fn snapshot_ids(&self, repo: &Path) -> Result<Vec<String>, String> {
        let out = self.resilience(false, &["snapshots", "--repo", utf8(repo), "--json"]);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        Ok(list
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .collect())
    }
}

/// `len` varied bytes (xorshift from `seed`): incompressible, and never repeated within the
/// lengths the tests use, so that nothing is deduplicated away.
fn varied_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    std::iter::repeat_with(|| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state.to_le_bytes()
    })
    .flatten()
    .take(len)
    .collect()
}

/// A tree of about 6 MB: 48 files of 0 to 256 KiB of varied bytes in nested directories, and
/// a symbolic link.
fn write_tree(root: &Path) {
    for i in 0..48u64 {
        let dir = root.join(format!("d{}/e{}", i % 4, i % 3));
        std::fs::create_dir_all(&dir).unwrap();
        let len = (i * 5_449 % 256) << 10;
        std::fs::write(dir.join(format!("f{i}")), varied_bytes(i + 1, len as usize)).unwrap();
    }
    std::os::unix::fs::symlink("d0/e0/f0", root.join("link")).unwrap();
}

/// A backup that exited 0 into a repository on the disk is whole after a power cut: listed,
/// sound, and restored byte for byte.
#[test]
fn a_backup_that_exited_0_is_whole_after_a_power_cut() {
    let lab = Lab::new();
    let disk = lab.disk();
    let repo = disk.path("repo");
    lab.init(&repo);
    let id = lab.backup(false, &repo);

    let cut = lab.cut(&disk);
    let repo = cut.path("repo");
    assert_eq!(lab.snapshot_ids(&repo), Ok(vec![id.clone()]));
    let verified = lab.ok(false, &["verify", "--repo", utf8(&repo)]);
    assert!(verified.contains("sound"), "{verified}");
    let out = lab.path("restored");
    lab.restore(&repo, &id, &out, &[]);
    same_tree(&lab.path("data"), &out);
}

/// The control: the same backup with its syncs skipped is not in the repository after the cut
/// (the repository itself, made durably before, is).
#[test]
fn a_backup_whose_syncs_are_skipped_is_lost_to_a_power_cut() {
    let lab = Lab::new();
    let disk = lab.disk();
    let repo = disk.path("repo");
    lab.init(&repo);
    let id = lab.backup(true, &repo);
    assert_eq!(lab.snapshot_ids(&repo), Ok(vec![id]), "before the cut");

    let cut = lab.cut(&disk);
    assert_eq!(lab.snapshot_ids(&cut.path("repo")), Ok(vec![]));
}

/// A restore that exited 0 into a directory on the disk is whole after a power cut; with
/// `--no-sync` (the control) it is not.
#[test]
fn a_restore_that_exited_0_is_whole_after_a_power_cut_unless_told_not_to_sync() {
    let lab = Lab::new();
    let repo = lab.path("repo");
    lab.init(&repo);
    let id = lab.backup(false, &repo);
    let data = lab.path("data");

    for durable in [false, true] {
        let disk = lab.disk();
        let target = disk.path("restored");
        let extra: &[&str] = if durable { &[] } else { &["--no-sync"] };
        lab.restore(&repo, &id, &target, extra);
        same_tree(&data, &target);

        let cut = lab.cut(&disk);
        let after = compare_trees(&data, &cut.path("restored"));
        if durable {
            assert_eq!(after, Ok(()), "a durable restore lost files to the cut");
        } else {
            assert!(
                after.is_err(),
                "the cut lost nothing of a --no-sync restore"
            );
        }
    }
}

/// A WAL file that `wal-push` acknowledged (exit 0, which Postgres takes for archived), by
/// itself or through the background pusher (`--async`), is in the archive after a power cut;
/// pushed with its syncs skipped (the control), it is not.
#[test]
fn a_wal_file_acknowledged_by_wal_push_survives_a_power_cut() {
    const SEGMENT: &str = "000000010000000000000001";
    let lab = Lab::new();
    let content = varied_bytes(7, 16 << 20);
    for (case, (async_push, skip_syncs)) in
        [(false, false), (false, true), (true, false), (true, true)]
            .into_iter()
            .enumerate()
    {
        let disk = lab.disk();
        let repo = disk.path("repo");
        lab.init(&repo);
        // A WAL directory as Postgres keeps it: the file, and for --async its .ready mark.
        let pg_wal = lab.path(&format!("pg_wal-{case}"));
        std::fs::create_dir_all(pg_wal.join("archive_status")).unwrap();
        std::fs::write(pg_wal.join(SEGMENT), &content).unwrap();
        let mut push = vec!["wal-push", "--repo", utf8(&repo)];
        if async_push {
            std::fs::write(pg_wal.join(format!("archive_status/{SEGMENT}.ready")), b"").unwrap();
            push.push("--async");
        }
        let file = pg_wal.join(SEGMENT);
        push.push(utf8(&file));
        lab.ok(skip_syncs, &push);

        let cut = lab.cut(&disk);
        let fetched = lab.path(&format!("fetched-{case}"));
        let cut_repo = cut.path("repo");
        let fetch = lab.resilience(
            false,
            &[
                "wal-fetch",
                "--repo",
                utf8(&cut_repo),
                SEGMENT,
                utf8(&fetched),
            ],
        );
        let context = format!("async {async_push}, syncs skipped {skip_syncs}");
        if skip_syncs {
            assert!(!fetch.status.success(), "{context}: the cut lost nothing");
        } else {
            assert!(
                fetch.status.success(),
                "{context}: {}",
                String::from_utf8_lossy(&fetch.stderr)
            );
            assert!(
                std::fs::read(&fetched).unwrap() == content,
                "{context}: other bytes"
            );
        }
    }
}
