//! The directory source and target on bad input: missing roots, unsafe entry paths, symlink
//! escapes, non-empty targets; and the walk order.

use resilience_core::source::entry::{EntryKind, EntryMeta, EntryPath};
use resilience_core::source::fs::{DirSource, DirTarget};
use resilience_core::source::{Source, Target};

#[tokio::test]
async fn a_missing_root_or_a_file_root_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let err = DirSource::new(&missing).start().await.err().unwrap();
    assert!(
        err.to_string().contains("nope") && err.to_string().contains("does not exist"),
        "{err}"
    );
    std::fs::write(dir.path().join("f"), b"x").unwrap();
    let err = DirSource::new(dir.path().join("f"))
        .start()
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("not a directory"), "{err}");
}

#[tokio::test]
async fn entries_come_in_walk_order() {
    let dir = tempfile::tempdir().unwrap();
    for p in ["a/b", "a.txt", "a b", "b/c/d", "Z"] {
        let path = dir.path().join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, p).unwrap();
    }
    let mut session = DirSource::new(dir.path()).start().await.unwrap();
    let mut paths: Vec<EntryPath> = Vec::new();
    while let Some(e) = session.next_entry().await.unwrap() {
        paths.push(e.meta.path);
    }
    let mut sorted = paths.clone();
    sorted.sort_by(|a, b| a.walk_cmp(b));
    assert_eq!(paths, sorted);
    assert_eq!(paths.len(), 8);
}

fn file(path: &[u8]) -> EntryMeta {
    EntryMeta {
        path: EntryPath(path.to_vec()),
        ..EntryMeta::file("x", 0)
    }
}

#[tokio::test]
async fn unsafe_paths_are_refused_and_nothing_escapes_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let target = DirTarget::new(dir.path().join("out"));
    for bad in [
        &b"../escape"[..],
        b"/etc/passwd",
        b"a/../../b",
        b"a//b",
        b"./a",
        b"a\0b",
    ] {
        let err = target.create(&file(bad)).await.err().unwrap();
        assert!(err.to_string().contains("unsafe entry path"), "{err}");
    }
    // A symlink restored first must not redirect a later entry.
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let mut link = file(b"link");
    link.kind = EntryKind::Symlink;
    link.link_target = Some(outside.as_os_str().as_encoded_bytes().to_vec());
    assert!(target.create(&link).await.unwrap().is_none());
    let err = target.create(&file(b"link/passwd")).await.err().unwrap();
    assert!(err.to_string().contains("symlink"), "{err}");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
}

#[tokio::test]
async fn a_non_empty_target_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("existing"), b"x").unwrap();
    let err = DirTarget::new(dir.path())
        .create(&file(b"a"))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("not empty"), "{err}");
    assert!(DirTarget::new(dir.path())
        .allow_existing(true)
        .create(&file(b"a"))
        .await
        .is_ok());
}

#[tokio::test]
async fn a_short_write_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let target = DirTarget::new(dir.path().join("out"));
    let mut meta = file(b"short");
    meta.size = 10;
    let mut w = target.create(&meta).await.unwrap().unwrap();
    w.write(bytes::Bytes::from_static(b"12345")).await.unwrap();
    let err = w.complete().await.err().unwrap();
    assert!(
        err.to_string().contains("short") && err.to_string().contains("10"),
        "{err}"
    );
}
