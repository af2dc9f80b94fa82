//! A repository written by format version 1 must stay readable by every later version.
//!
//! The fixture in `tests/fixtures/repo-v1/` was written by this test with
//! `RESILIENCE_WRITE_FIXTURE=1 cargo test -p resilience-core --test format_v1`; never regenerate
//! it after a format change: that is what it guards against.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::TryStreamExt;
use resilience_core::keys::KeyFileProvider;
use resilience_core::ops::verify::VerifyOptions;
use resilience_core::repo::{InitOptions, Repository};
use resilience_core::sink::{MemorySink, PutMode, Sink};
use resilience_core::testing::{MemorySource, MemoryTarget};

const KEY: [u8; 32] = [7; 32];

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/repo-v1")
}

fn contents() -> Vec<(&'static str, Vec<u8>)> {
    let text: Vec<u8> = (0..200_000u32)
        .flat_map(|i| format!("line {i} of the fixture\n").into_bytes())
        .collect();
    vec![
        ("hello.txt", b"hello, format v1\n".to_vec()),
        ("dir/text", text),
        ("empty", Vec::new()),
    ]
}

async fn load(dir: &Path) -> Arc<MemorySink> {
    let sink = Arc::new(MemorySink::new());
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let key = p.strip_prefix(dir).unwrap().to_str().unwrap().to_owned();
                sink.put(&key, std::fs::read(&p).unwrap().into(), PutMode::Create)
                    .await
                    .unwrap();
            }
        }
    }
    sink
}

async fn write_fixture(dir: &Path) {
    let sink = Arc::new(MemorySink::new());
    let opts = InitOptions {
        pack_size: 64 * 1024,
        ..Default::default()
    };
    let repo = Repository::init(sink.clone(), &KeyFileProvider::from_key(KEY), opts)
        .await
        .unwrap();
    let mut src = MemorySource::new("fixture");
    for (p, c) in contents() {
        src = src.file(p, c);
    }
    repo.backup(&src, Default::default()).await.unwrap();
    let keys: Vec<String> = sink.list("").map_ok(|m| m.key).try_collect().await.unwrap();
    for key in keys.into_iter().filter(|k| !k.starts_with("locks/")) {
        let path = dir.join(&key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, sink.get(&key).await.unwrap()).unwrap();
    }
}

#[tokio::test]
async fn reads_a_repository_written_by_format_version_1() {
    let dir = fixture_dir();
    if std::env::var_os("RESILIENCE_WRITE_FIXTURE").is_some() {
        let _ = std::fs::remove_dir_all(&dir);
        write_fixture(&dir).await;
    }
    assert!(
        dir.join("config").exists(),
        "fixture missing at {}",
        dir.display()
    );
    let sink = load(&dir).await;
    let repo = Repository::open(sink, &KeyFileProvider::from_key(KEY))
        .await
        .unwrap();
    assert_eq!(repo.config().format, 1);
    let report = repo.verify(VerifyOptions { full: true }).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.snapshots_checked, 1);
    let target = MemoryTarget::new();
    repo.restore("latest", &target, Default::default())
        .await
        .unwrap();
    for (p, c) in contents() {
        assert_eq!(target.content(p).unwrap(), c, "{p}");
    }
}

/// A version-1 repository's keys move to version 2 with the documented steps (a new copy for
/// the same provider, the format-1 copy removed), then rotate; old and new data restore.
#[tokio::test]
async fn a_version_1_repository_upgrades_its_keys_and_rotates() {
    use resilience_core::keys::ring::CopyState;
    let sink = load(&fixture_dir()).await;
    let v1 = KeyFileProvider::from_key(KEY);
    let repo = Repository::open(sink.clone(), &v1).await.unwrap();
    let ring = repo.key_ring().await.unwrap();
    let legacy = ring.copies[0].clone();
    assert_eq!(ring.state(&legacy), CopyState::Legacy);
    // Rotation refuses while a format-1 copy remains, naming it.
    let err = repo.rotate_keys().await.unwrap_err();
    assert!(err.to_string().contains(&legacy.object_name()), "{err}");
    let v2 = KeyFileProvider::from_key([8; 32]);
    repo.add_key(&v2).await.unwrap();
    repo.remove_key(&legacy.id).await.unwrap();
    let repo = Repository::open(sink.clone(), &v2).await.unwrap();
    let (repo, rotation) = repo.rotate_keys().await.unwrap();
    assert_eq!(rotation.data_keys.len(), 2);
    let src = MemorySource::new("after-upgrade").file("new.txt", b"written after".to_vec());
    let report = repo.backup(&src, Default::default()).await.unwrap();
    let repo = Repository::open(sink.clone(), &v2).await.unwrap();
    let target = MemoryTarget::new();
    repo.restore(&report.record.id, &target, Default::default())
        .await
        .unwrap();
    assert_eq!(target.content("new.txt").unwrap(), b"written after");
    let report = repo.verify(VerifyOptions { full: true }).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert!(Repository::open(sink, &v1).await.is_err());
}
