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
    let paths = walk_in_order(&mut *session).await;
    assert_eq!(paths.len(), 8);
}

/// Every entry of a walk, checked to come in walk order and each once.
async fn walk_in_order(session: &mut dyn resilience_core::source::SourceSession) -> Vec<EntryPath> {
    let mut paths: Vec<EntryPath> = Vec::new();
    while let Some(e) = session.next_entry().await.unwrap() {
        paths.push(e.meta.path);
    }
    let mut sorted = paths.clone();
    sorted.sort_by(|a, b| a.walk_cmp(b));
    sorted.dedup();
    assert_eq!(paths, sorted, "in walk order, each once");
    paths
}

/// The walk runs a batch ahead of its consumer: across many batches, every entry still comes
/// exactly once and in walk order, the counts are the tree's, and a session dropped with a
/// batch under way goes away quietly.
#[tokio::test]
async fn a_walk_made_ahead_in_batches_keeps_every_entry_once_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    for d in ["b", "a/deep", "c"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
        for i in 0..300 {
            std::fs::write(dir.path().join(format!("{d}/f{i:03}")), format!("{d}{i}")).unwrap();
        }
    }
    let mut session = DirSource::new(dir.path()).start().await.unwrap();
    let paths = walk_in_order(&mut *session).await;
    // 900 files and 4 directories (`a`, `a/deep`, `b`, `c`).
    assert_eq!(paths.len(), 904);
    let finished = session.finish().await.unwrap();
    assert_eq!(finished.get("files").and_then(|v| v.as_u64()), Some(900));
    assert_eq!(finished.get("dirs").and_then(|v| v.as_u64()), Some(4));

    let mut session = DirSource::new(dir.path()).start().await.unwrap();
    for _ in 0..300 {
        session.next_entry().await.unwrap().unwrap();
    }
    drop(session);
}

fn file(path: &[u8]) -> EntryMeta {
    EntryMeta {
        path: EntryPath(path.to_vec()),
        ..EntryMeta::file("x", 0)
    }
}

/// A repository in `sink` holding one backup of the directory `src`.
async fn backed_up(
    sink: std::sync::Arc<dyn resilience_core::sink::Sink>,
    src: &std::path::Path,
) -> resilience_core::repo::Repository {
    let repo = resilience_core::repo::Repository::init(
        sink,
        &resilience_core::keys::KeyFileProvider::from_key([4; 32]),
        Default::default(),
    )
    .await
    .unwrap();
    repo.backup(&DirSource::new(src), Default::default())
        .await
        .unwrap();
    repo
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

/// Creates and completes the entry `meta` (content: nothing, or `size` zero bytes); the
/// error of either call.
async fn put(
    target: &DirTarget,
    meta: &EntryMeta,
) -> Result<(), resilience_core::source::AdapterError> {
    if let Some(mut w) = target.create(meta).await? {
        if meta.size > 0 {
            w.write(bytes::Bytes::from(vec![1u8; meta.size as usize]))
                .await?;
        }
        w.complete().await?;
    }
    Ok(())
}

/// A name held twice is refused by the call that creates it or, for a small file written
/// behind the restore, by the target's finish: the restore fails, and nothing is written
/// through the symlink.
#[tokio::test]
async fn a_name_held_twice_is_refused_whichever_comes_first() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    std::fs::write(&outside, b"secret").unwrap();
    let mut link = file(b"a");
    link.kind = EntryKind::Symlink;
    link.link_target = Some(outside.as_os_str().as_encoded_bytes().to_vec());

    for size in [0u64, 10, 200 << 10] {
        let mut a = file(b"a");
        a.size = size;
        // A file, then a symlink in its place.
        let target = DirTarget::new(dir.path().join(format!("one-{size}")));
        put(&target, &a).await.unwrap();
        let err = match put(&target, &link).await {
            Err(e) => e,
            Ok(()) => target.finish().await.expect_err("refused by finish"),
        };
        assert!(
            err.to_string().contains("twice") && err.to_string().contains('a'),
            "{size}: {err}"
        );

        // A symlink, then a file written through it.
        let target = DirTarget::new(dir.path().join(format!("two-{size}")));
        put(&target, &link).await.unwrap();
        let err = match put(&target, &a).await {
            Err(e) => e,
            Ok(()) => target.finish().await.expect_err("refused by finish"),
        };
        assert!(err.to_string().contains("twice"), "{size}: {err}");
        assert_eq!(std::fs::read(&outside).unwrap(), b"secret");
    }
}

#[tokio::test]
async fn the_metadata_pass_never_follows_a_symlink() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    std::fs::write(&outside, b"secret").unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o600)).unwrap();
    let before = std::fs::metadata(&outside).unwrap();

    let mut meta = file(b"a");
    meta.mode = 0o100777;
    meta.mtime_ns = Some(1_000_000_000);
    let placed = dir.path().join("out/a");
    // A restore sets a file's metadata through the descriptor that wrote it: a file swapped
    // for a symlink afterwards is not touched through it.
    let target = DirTarget::new(dir.path().join("out"));
    put(&target, &meta).await.unwrap();
    target.finish().await.unwrap();
    assert_eq!(
        std::fs::metadata(&placed).unwrap().permissions().mode() & 0o777,
        0o777
    );
    std::fs::remove_file(&placed).unwrap();
    std::os::unix::fs::symlink(&outside, &placed).unwrap();
    target.apply_metadata(&meta).await.unwrap();
    // A resumed restore sets the metadata of the files already there by path: one swapped
    // for a symlink between the passes is refused by name.
    let target = DirTarget::new(dir.path().join("out")).resume(true);
    let err = target.apply_metadata(&meta).await.err().unwrap();
    assert!(err.to_string().contains("no longer"), "{err}");
    let after = std::fs::metadata(&outside).unwrap();
    assert_eq!(after.permissions().mode() & 0o777, 0o600);
    assert_eq!(after.modified().unwrap(), before.modified().unwrap());

    // A symlink entry gets its own times, not its target's.
    let mut link = file(b"l");
    link.kind = EntryKind::Symlink;
    link.link_target = Some(outside.as_os_str().as_encoded_bytes().to_vec());
    link.mtime_ns = Some(2_000_000_000);
    link.mode = 0o120777;
    target.create(&link).await.unwrap();
    target.apply_metadata(&link).await.unwrap();
    let after = std::fs::metadata(&outside).unwrap();
    assert_eq!(after.modified().unwrap(), before.modified().unwrap());
    assert_eq!(after.permissions().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::symlink_metadata(dir.path().join("out/l"))
            .unwrap()
            .modified()
            .unwrap(),
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(2)
    );
}

/// An interrupted restore (files missing, cut short, damaged) is completed with `resume`: the
/// files already right are not read from the repository again, and the result is identical.
#[tokio::test]
async fn a_resumed_restore_completes_reading_only_what_is_missing() {
    use std::sync::Arc;

    use resilience_core::sink::MemorySink;
    use resilience_core::testing::{pseudo_random, FaultySink};

    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    for (seed, name) in ["big1", "big2", "d/big3"].into_iter().enumerate() {
        std::fs::write(src.join(name), pseudo_random(3 << 20, seed as u64)).unwrap();
    }
    std::fs::write(src.join("small"), b"small file").unwrap();
    let counting = Arc::new(FaultySink::new(MemorySink::new(), -1));
    let repo = backed_up(counting.clone(), &src).await;
    let out = dir.path().join("out");
    repo.restore("latest", &DirTarget::new(&out), Default::default())
        .await
        .unwrap();

    // What an interrupted restore leaves: one file missing, one cut short, one damaged in
    // place (same size), one intact.
    std::fs::remove_file(out.join("big1")).unwrap();
    let mut damaged = std::fs::read(out.join("d/big3")).unwrap();
    damaged[1 << 20] ^= 0xff;
    std::fs::write(out.join("d/big3"), &damaged).unwrap();
    std::fs::write(out.join("small"), b"sma").unwrap();

    // Without resume, the directory is refused as not empty.
    let err = repo
        .restore("latest", &DirTarget::new(&out), Default::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");

    let before = counting.range_bytes_read();
    repo.restore(
        "latest",
        &DirTarget::new(&out).resume(true),
        Default::default(),
    )
    .await
    .unwrap();
    let read = counting.range_bytes_read() - before;
    for name in ["big1", "big2", "d/big3", "small"] {
        assert_eq!(
            std::fs::read(out.join(name)).unwrap(),
            std::fs::read(src.join(name)).unwrap(),
            "{name}"
        );
    }
    // big1 and d/big3 read again (6 MiB and a little), big2 not.
    assert!(read > 6 << 20 && read < 8 << 20, "read {read} bytes");
}

/// A file removed after the walk saw it and before the backup read it (a dropped table's
/// file, an upload deleted meanwhile) is left out of the snapshot; the others are all there,
/// small ones read ahead and large ones read through the chunker alike.
#[tokio::test]
async fn a_file_removed_between_the_walk_and_its_read_is_left_out() {
    use resilience_core::keys::KeyFileProvider;
    use resilience_core::repo::{InitOptions, Repository};
    use resilience_core::sink::MemorySink;
    use resilience_core::source::{SourceEntry, SourceSession, Vanished};
    use resilience_core::testing::{pseudo_random, MemoryTarget};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let big = pseudo_random(3 << 20, 5);
    for (name, content) in [
        ("a-small", b"kept".to_vec()),
        ("b-small-gone", b"removed".to_vec()),
        ("c-big-gone", big.clone()),
        ("d-big", big.clone()),
    ] {
        std::fs::write(dir.path().join(name), content).unwrap();
    }

    // The walk has seen every file before any is read: reading a removed one says Vanished.
    let mut session = DirSource::new(dir.path()).start().await.unwrap();
    let first = session.next_entry().await.unwrap().unwrap();
    std::fs::remove_file(dir.path().join("b-small-gone")).unwrap();
    let gone = session.next_entry().await.unwrap().unwrap();
    assert_eq!(gone.meta.path.to_string(), "b-small-gone");
    let mut buf = Vec::new();
    let err = tokio::io::AsyncReadExt::read_to_end(&mut gone.content.unwrap(), &mut buf)
        .await
        .unwrap_err();
    assert!(Vanished::is(&err), "{err}");
    let mut kept = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut first.content.unwrap(), &mut kept)
        .await
        .unwrap();
    assert_eq!(kept, b"kept");
    std::fs::write(dir.path().join("b-small-gone"), b"removed").unwrap();

    // The same through a whole backup: a source that removes two files once the walk saw them.
    struct RemovingSource(DirSource, std::path::PathBuf);
    struct RemovingSession(Box<dyn SourceSession>, std::path::PathBuf, bool);
    #[async_trait::async_trait]
    impl Source for RemovingSource {
        fn descriptor(&self) -> resilience_core::source::SourceDescriptor {
            self.0.descriptor()
        }
        async fn start(
            &self,
        ) -> Result<Box<dyn SourceSession>, resilience_core::source::AdapterError> {
            Ok(Box::new(RemovingSession(
                self.0.start().await?,
                self.1.clone(),
                false,
            )))
        }
    }
    #[async_trait::async_trait]
    impl SourceSession for RemovingSession {
        async fn next_entry(
            &mut self,
        ) -> Result<Option<SourceEntry>, resilience_core::source::AdapterError> {
            let entry = self.0.next_entry().await?;
            if !self.2 {
                self.2 = true;
                for name in ["b-small-gone", "c-big-gone"] {
                    std::fs::remove_file(self.1.join(name)).unwrap();
                }
            }
            Ok(entry)
        }
        async fn finish(
            &mut self,
        ) -> Result<resilience_core::source::SourceMetadata, resilience_core::source::AdapterError>
        {
            self.0.finish().await
        }
    }
    let repo = Repository::init(
        Arc::new(MemorySink::new()),
        &KeyFileProvider::from_key([7; 32]),
        InitOptions::default(),
    )
    .await
    .unwrap();
    let source = RemovingSource(DirSource::new(dir.path()), dir.path().to_path_buf());
    let report = repo.backup(&source, Default::default()).await.unwrap();
    assert_eq!(report.record.entries, 2, "{:?}", report.record);
    let target = MemoryTarget::new();
    repo.restore("latest", &target, Default::default())
        .await
        .unwrap();
    assert_eq!(target.content("a-small").unwrap(), b"kept");
    assert_eq!(target.content("d-big").unwrap(), big);
    assert!(target.content("b-small-gone").is_none());
    assert!(target.content("c-big-gone").is_none());
}

/// A durable restore's final sync is never skipped in silence: a target whose directory is
/// gone by then fails `finish`, naming it, where a target that does not sync finishes.
#[tokio::test]
async fn a_durable_restore_that_cannot_sync_fails_naming_the_target() {
    let dir = tempfile::tempdir().unwrap();
    for durable in [true, false] {
        let out = dir.path().join(format!("out-{durable}"));
        let target = DirTarget::new(&out).durable(durable);
        put(&target, &file(b"a")).await.unwrap();
        // Waits for the small file written behind.
        target.apply_metadata(&file(b"a")).await.unwrap();
        std::fs::remove_dir_all(&out).unwrap();
        let finished = target.finish().await;
        if durable {
            let err = finished.unwrap_err().to_string();
            assert!(err.contains("sync") && err.contains("out-true"), "{err}");
        } else {
            finished.unwrap();
        }
    }
}

/// A durable restore (each write's write-back started at once, the file system synced at the
/// end) writes the same bytes: large files, a zero run inside one and at its end (holes), and
/// small files.
#[tokio::test]
async fn a_durable_restore_writes_the_same_bytes() {
    use resilience_core::sink::MemorySink;
    use resilience_core::testing::pseudo_random;

    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("big"), pseudo_random(9 << 20, 1)).unwrap();
    let mut holes = pseudo_random(6 << 20, 2);
    holes[(1 << 20)..(3 << 20)].fill(0);
    holes[(5 << 20)..].fill(0);
    std::fs::write(src.join("d/holes"), &holes).unwrap();
    std::fs::write(src.join("small"), b"small file").unwrap();
    std::fs::write(src.join("d/mid"), pseudo_random(100_000, 3)).unwrap();
    let repo = backed_up(std::sync::Arc::new(MemorySink::new()), &src).await;
    let out = dir.path().join("out");
    repo.restore(
        "latest",
        &DirTarget::new(&out).durable(true),
        Default::default(),
    )
    .await
    .unwrap();
    for name in ["big", "d/holes", "small", "d/mid"] {
        assert_eq!(
            std::fs::read(out.join(name)).unwrap(),
            std::fs::read(src.join(name)).unwrap(),
            "{name}"
        );
    }
}

/// Unmounts a file system mounted for a test, however the test ends.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A durable restore into an existing directory that holds the mount point of another file
/// system syncs that file system too, not only the root's: the files restored under the mount
/// point are on a disk the root's `syncfs` never reaches. (Mounts a tmpfs: run as root, as
/// `scripts/test` does; it fails, not skips, otherwise.)
#[tokio::test]
async fn a_durable_restore_syncs_each_file_system_mounted_inside_the_target() {
    use resilience_core::sink::MemorySink;

    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("mnt/sub")).unwrap();
    std::fs::create_dir_all(src.join("plain")).unwrap();
    std::fs::write(src.join("top"), b"on the root's file system").unwrap();
    std::fs::write(src.join("mnt/a"), b"on the mounted one").unwrap();
    std::fs::write(src.join("mnt/sub/b"), vec![7u8; 200_000]).unwrap();
    std::fs::write(
        src.join("plain/c"),
        b"an existing directory, same file system",
    )
    .unwrap();
    let repo = backed_up(std::sync::Arc::new(MemorySink::new()), &src).await;

    let out = dir.path().join("out");
    std::fs::create_dir_all(out.join("mnt")).unwrap();
    std::fs::create_dir_all(out.join("plain")).unwrap();
    let status = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "resilience-test",
            out.join("mnt").to_str().unwrap(),
        ])
        .status()
        .expect("runs mount");
    assert!(
        status.success(),
        "this test mounts a tmpfs inside the restore target: run it as root"
    );
    let _mounted = Mounted(out.join("mnt"));

    let target = DirTarget::new(&out).allow_existing(true).durable(true);
    repo.restore("latest", &target, Default::default())
        .await
        .unwrap();
    let root = std::fs::canonicalize(&out).unwrap();
    assert_eq!(target.file_systems(), vec![root.clone(), root.join("mnt")]);
    for name in ["top", "mnt/a", "mnt/sub/b", "plain/c"] {
        assert_eq!(
            std::fs::read(out.join(name)).unwrap(),
            std::fs::read(src.join(name)).unwrap(),
            "{name}"
        );
    }

    // Without a mount inside, the root's file system is the only one synced.
    let out2 = dir.path().join("out2");
    let target = DirTarget::new(&out2).durable(true);
    repo.restore("latest", &target, Default::default())
        .await
        .unwrap();
    assert_eq!(
        target.file_systems(),
        vec![std::fs::canonicalize(&out2).unwrap()]
    );
}
