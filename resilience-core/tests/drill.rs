//! Drills through the library: the directory drill end to end (checks, RTO and RPO, the catalog
//! record, the scratch directory gone), a damaged pack failing the drill by name, drills that
//! cannot begin, and the run's promises to every kind of drill: the running copy torn down after
//! the RTO is measured, the scratch directory removed on every path (a panic included).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use resilience_core::catalog::{BackupRecord, Catalog};
use resilience_core::drill::{
    self, DirDrill, Drill, DrillCheck, DrillError, DrillOptions, DrillReport, Drilled, ScratchCopy,
};
use resilience_core::keys::KeyFileProvider;
use resilience_core::repo::{InitOptions, Repository};
use resilience_core::sink::{MemorySink, PutMode, Sink};
use resilience_core::source::fs::DirSource;
use resilience_core::testing::{pseudo_random, MemorySource};

async fn repo() -> (Arc<MemorySink>, Repository) {
    let sink = Arc::new(MemorySink::new());
    let repo = Repository::init(
        sink.clone(),
        &KeyFileProvider::from_key([7; 32]),
        InitOptions::default(),
    )
    .await
    .unwrap();
    (sink, repo)
}

/// 12 files in 3 directories (15 entries); their bytes.
fn make_tree(root: &Path) -> u64 {
    let mut bytes = 0;
    for d in 0..3u64 {
        let dir = root.join(format!("d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..4u64 {
            let content = pseudo_random((40_000 + d * 7_000 + f * 13) as usize, d * 10 + f);
            bytes += content.len() as u64;
            std::fs::write(dir.join(format!("f{f}.bin")), content).unwrap();
        }
    }
    bytes
}

fn options(scratch: &Path) -> DrillOptions {
    DrillOptions {
        scratch_dir: Some(scratch.to_path_buf()),
    }
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

fn check<'a>(report: &'a DrillReport, name: &str) -> &'a DrillCheck {
    report
        .checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name}: {report:#?}"))
}

/// The drills recorded for `snapshot`.
async fn recorded(repo: &Repository, snapshot: &str) -> Vec<DrillReport> {
    let record = repo.catalog().get(snapshot).await.unwrap().unwrap();
    record
        .verifications
        .iter()
        .filter_map(DrillReport::from_verification)
        .collect()
}

/// A tree backed up as directory source `docs`: the scratch base, the snapshot, the bytes.
async fn docs(repo: &Repository, dir: &Path) -> (PathBuf, String, u64) {
    let data = dir.join("docs");
    let bytes = make_tree(&data);
    let report = repo
        .backup(&DirSource::new(&data).with_id("docs"), Default::default())
        .await
        .unwrap();
    let scratch = dir.join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    (scratch, report.record.id, bytes)
}

#[tokio::test]
async fn a_directory_drill_restores_checks_sizes_records_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (_, repo) = repo().await;
    let (scratch, id, bytes) = docs(&repo, dir.path()).await;
    let report = drill::run(&repo, &DirDrill::new("docs"), None, &options(&scratch))
        .await
        .unwrap();
    assert!(report.ok, "{report:#?}");
    assert_eq!(report.source, "docs");
    assert_eq!(report.snapshot, id);
    assert_eq!(
        report
            .checks
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["restore", "size"]
    );
    assert!(check(&report, "restore")
        .detail
        .contains("checksum verified"));
    let size = &check(&report, "size").detail;
    assert!(
        size.starts_with(&format!("15 entries and {bytes} bytes restored")),
        "{size}"
    );
    assert!(report.rto_seconds > 0.0 && report.rto_seconds < 60.0);
    // The newest point a directory snapshot holds is its start, before the drill began.
    assert!(report.rpo_seconds >= report.rto_seconds, "{report:#?}");
    assert!(entries(&scratch).is_empty(), "left {:?}", entries(&scratch));
    assert_eq!(recorded(&repo, &id).await, vec![report.clone()]);
    // A named snapshot (by prefix) is drilled too, and recorded beside the first.
    let again = drill::run(
        &repo,
        &DirDrill::new("docs"),
        Some(&id[..8]),
        &options(&scratch),
    )
    .await
    .unwrap();
    assert!(again.ok && again.snapshot == id);
    assert_eq!(recorded(&repo, &id).await.len(), 2);
}

#[tokio::test]
async fn a_damaged_pack_fails_the_drill_naming_the_pack_and_the_failure_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let (sink, repo) = repo().await;
    let (scratch, id, _) = docs(&repo, dir.path()).await;
    let packs: Vec<_> = sink.list("data/").try_collect().await.unwrap();
    let pack = packs.iter().max_by_key(|m| m.size).expect("a pack");
    let mut bytes = sink.get(&pack.key).await.unwrap().to_vec();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    sink.put(&pack.key, Bytes::from(bytes), PutMode::Overwrite)
        .await
        .unwrap();
    let report = drill::run(&repo, &DirDrill::new("docs"), None, &options(&scratch))
        .await
        .unwrap();
    assert!(!report.ok);
    let restore = check(&report, "restore");
    let name = pack.key.rsplit('/').next().unwrap();
    assert!(
        !restore.ok && restore.detail.contains(name),
        "the failed check must name {name}: {restore:?}"
    );
    assert_eq!(report.failures().len(), 1, "{report:#?}");
    assert!(entries(&scratch).is_empty(), "left {:?}", entries(&scratch));
    let drills = recorded(&repo, &id).await;
    assert_eq!(drills.len(), 1);
    assert!(!drills[0].ok && drills[0].checks[0].detail.contains(name));
}

#[tokio::test]
async fn a_drill_that_cannot_begin_is_an_error_naming_why() {
    let dir = tempfile::tempdir().unwrap();
    let (_, repo) = repo().await;
    let run = |drill: DirDrill, snapshot: Option<&'static str>, scratch: PathBuf| {
        let repo = repo.clone();
        async move { drill::run(&repo, &drill, snapshot, &options(&scratch)).await }
    };
    let scratch = dir.path().to_path_buf();
    let e = run(DirDrill::new("docs"), None, scratch.clone())
        .await
        .unwrap_err();
    assert!(matches!(e, DrillError::NoSnapshot { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "drill of docs: no succeeded backup (latest) of this source in the catalog"
    );
    // A backup of another kind under the source's name.
    let memory = repo
        .backup(
            &MemorySource::new("docs").file("a", pseudo_random(100, 1)),
            Default::default(),
        )
        .await
        .unwrap();
    let e = run(DirDrill::new("docs"), None, scratch.clone())
        .await
        .unwrap_err();
    match &e {
        DrillError::WrongKind {
            snapshot,
            found,
            expected,
            ..
        } => assert_eq!(
            (snapshot.as_str(), found.as_str(), expected.as_str()),
            (memory.record.id.as_str(), "memory", "dir")
        ),
        e => panic!("{e:?}"),
    }
    let e = run(DirDrill::new("docs"), Some("ffffffff"), scratch.clone())
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("no succeeded backup ffffffff"),
        "{e}"
    );
    // No scratch directory can be made under a file.
    let (_, id, _) = docs(&repo, dir.path()).await;
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let e = run(DirDrill::new("docs"), None, file.clone())
        .await
        .unwrap_err();
    match &e {
        DrillError::Scratch {
            operation, path, ..
        } => assert!(*operation == "create" && path.starts_with(&file), "{e}"),
        e => panic!("{e:?}"),
    }
    assert!(recorded(&repo, &id).await.is_empty(), "nothing was drilled");
}

/// A drill of `memory` backups that writes into its scratch directory, fails a check, says its
/// copy holds a point an hour before the snapshot, and leaves a copy running whose tear-down
/// takes 400 ms; or panics.
struct Probe {
    panic: bool,
    seen: Arc<Mutex<Option<PathBuf>>>,
    torn_down: Arc<AtomicBool>,
    tear_down_began: Arc<Mutex<Option<Instant>>>,
}

struct ProbeCopy {
    scratch: PathBuf,
    torn_down: Arc<AtomicBool>,
    tear_down_began: Arc<Mutex<Option<Instant>>>,
}

#[async_trait]
impl ScratchCopy for ProbeCopy {
    async fn tear_down(self: Box<Self>) {
        assert!(
            self.scratch.join("copy").exists(),
            "the scratch directory is removed after the tear-down"
        );
        *self.tear_down_began.lock().unwrap() = Some(Instant::now());
        tokio::time::sleep(Duration::from_millis(400)).await;
        self.torn_down.store(true, Ordering::SeqCst);
    }
}

#[async_trait]
impl Drill for Probe {
    fn source(&self) -> &str {
        "mem"
    }

    fn kind(&self) -> &str {
        "memory"
    }

    async fn restore_and_check(
        &self,
        _repo: &Repository,
        record: &BackupRecord,
        scratch: &Path,
    ) -> Drilled {
        *self.seen.lock().unwrap() = Some(scratch.to_path_buf());
        std::fs::write(scratch.join("copy"), b"restored").unwrap();
        if self.panic {
            panic!("a drill that panics");
        }
        Drilled::new(
            vec![
                DrillCheck::pass("restore", "fine"),
                DrillCheck::fail("rows", "expected 10, found 9"),
            ],
            Some(record.started_at - chrono::Duration::hours(1)),
        )
        .with_running(Box::new(ProbeCopy {
            scratch: scratch.to_path_buf(),
            torn_down: self.torn_down.clone(),
            tear_down_began: self.tear_down_began.clone(),
        }))
    }
}

#[tokio::test]
async fn the_copy_is_torn_down_after_the_rto_and_the_scratch_directory_goes_on_every_path() {
    let dir = tempfile::tempdir().unwrap();
    let (_, repo) = repo().await;
    let id = repo
        .backup(
            &MemorySource::new("mem").file("a", pseudo_random(100, 1)),
            Default::default(),
        )
        .await
        .unwrap()
        .record
        .id;
    let probe = Probe {
        panic: false,
        seen: Default::default(),
        torn_down: Default::default(),
        tear_down_began: Default::default(),
    };
    let before = Instant::now();
    let report = drill::run(&repo, &probe, None, &options(dir.path()))
        .await
        .unwrap();
    assert!(probe.torn_down.load(Ordering::SeqCst), "not torn down");
    // Measured against when the tear-down began, not against its length: a loaded machine
    // slows the drill, never the order. (The report keeps whole milliseconds.)
    let tear_down_began = probe.tear_down_began.lock().unwrap().unwrap();
    let before_tear_down = (tear_down_began - before).as_secs_f64();
    assert!(
        report.rto_seconds <= before_tear_down + 0.001,
        "the RTO ends before the tear-down (which began {before_tear_down} s in): {}",
        report.rto_seconds
    );
    assert!(
        report.rpo_seconds >= 3600.0 && report.rpo_seconds < 3700.0,
        "the RPO runs from the newest point the copy holds: {}",
        report.rpo_seconds
    );
    assert!(!report.ok);
    assert_eq!(report.failures(), vec!["rows: expected 10, found 9"]);
    let seen = probe.seen.lock().unwrap().clone().unwrap();
    assert!(seen.starts_with(dir.path()) && !seen.exists());
    assert_eq!(recorded(&repo, &id).await, vec![report]);

    // A drill that panics: the scratch directory goes all the same, and nothing is recorded.
    let probe = Arc::new(Probe {
        panic: true,
        seen: Default::default(),
        torn_down: Default::default(),
        tear_down_began: Default::default(),
    });
    let task = {
        let (repo, probe) = (repo.clone(), probe.clone());
        let scratch = dir.path().to_path_buf();
        tokio::spawn(
            async move { drill::run(&repo, probe.as_ref(), None, &options(&scratch)).await },
        )
    };
    assert!(task.await.unwrap_err().is_panic());
    let seen = probe.seen.lock().unwrap().clone().unwrap();
    assert!(!seen.exists(), "{} left behind", seen.display());
    assert!(entries(dir.path()).is_empty());
    assert_eq!(recorded(&repo, &id).await.len(), 1);
}
