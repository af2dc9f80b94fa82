//! Durability of a local store's writes: a put is acknowledged only once its file and every
//! directory from the file's up to the store's root are synced, so that neither the bytes nor
//! the names that lead to them (a directory the write created, the rename that published it)
//! can be lost to a power cut.

use std::fmt;
use std::path::Path;

/// Syncs a file or a directory to stable storage: the one call a local store's durability
/// rests on, behind a trait so that a test can record the calls and check their order.
pub trait LocalSync: Send + Sync + fmt::Debug {
    /// Syncs `path` (a file or a directory), data and metadata.
    fn sync(&self, path: &Path) -> std::io::Result<()>;
}

/// [`LocalSync`] by `fsync(2)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fsync;

impl LocalSync for Fsync {
    fn sync(&self, path: &Path) -> std::io::Result<()> {
        std::fs::File::open(path)?.sync_all()
    }
}

/// A sync that failed, naming the file or directory.
#[derive(Debug, thiserror::Error)]
#[error("syncing {} failed", path.display())]
pub(crate) struct SyncFailed {
    path: std::path::PathBuf,
    source: std::io::Error,
}

/// Syncs `file`, then each directory from its parent up to `root` (inclusive), in that order;
/// stops at the first failure, naming the path that failed.
pub(crate) fn sync_path(sync: &dyn LocalSync, root: &Path, file: &Path) -> Result<(), SyncFailed> {
    let synced = |path: &Path| {
        sync.sync(path).map_err(|source| SyncFailed {
            path: path.to_owned(),
            source,
        })
    };
    synced(file)?;
    let mut dir = file.parent();
    while let Some(d) = dir {
        if !d.starts_with(root) {
            break;
        }
        synced(d)?;
        if d == root {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use futures::StreamExt;
    use resilience_core::sink::{ObjectMeta, PutMode, Sink, SinkError};

    use super::*;
    use crate::ObjectStoreSink;

    /// Records every sync, with what a file held when it was synced; fails on `fail_on`.
    #[derive(Debug, Default)]
    struct Recorder {
        calls: Mutex<Vec<(PathBuf, Option<Vec<u8>>)>>,
        fail_on: Option<PathBuf>,
    }

    impl LocalSync for Recorder {
        fn sync(&self, path: &Path) -> std::io::Result<()> {
            let held = path.is_file().then(|| std::fs::read(path).unwrap());
            self.calls.lock().unwrap().push((path.to_owned(), held));
            if self.fail_on.as_deref() == Some(path) {
                return Err(std::io::Error::other("the disk went away"));
            }
            Fsync.sync(path)
        }
    }

    impl Recorder {
        fn take(&self) -> Vec<(PathBuf, Option<Vec<u8>>)> {
            std::mem::take(&mut self.calls.lock().unwrap())
        }
    }

    fn sink(root: &Path, prefix: &str, recorder: Arc<Recorder>) -> ObjectStoreSink {
        let store = object_store::local::LocalFileSystem::new_with_prefix(root).unwrap();
        ObjectStoreSink::new(Arc::new(store), prefix, &root.display().to_string())
            .with_local_root(root.to_owned())
            .with_local_sync(recorder)
    }

    /// What a put of `key` must sync, in order: the file holding exactly `content`, then each
    /// directory up to the root.
    fn expect(calls: &[(PathBuf, Option<Vec<u8>>)], root: &Path, key: &str, content: &[u8]) {
        let file = root.join(key);
        let mut want = vec![file.clone()];
        let mut dir = file.parent().unwrap();
        loop {
            want.push(dir.to_owned());
            if dir == root {
                break;
            }
            dir = dir.parent().unwrap();
        }
        let got: Vec<&PathBuf> = calls.iter().map(|(p, _)| p).collect();
        assert_eq!(got, want.iter().collect::<Vec<_>>(), "syncs of {key}");
        assert_eq!(
            calls[0].1.as_deref(),
            Some(content),
            "{key}: synced content"
        );
        assert!(calls[1..].iter().all(|(_, c)| c.is_none()));
    }

    /// Every way of writing (put, streamed put, multipart-sized put, copy) syncs the file with
    /// its whole content, then every directory up to the root, before it returns — including the
    /// directories the write created and the sink's prefix.
    #[tokio::test]
    async fn every_write_syncs_its_file_and_each_directory_up_to_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let recorder = Arc::new(Recorder::default());
        let s = sink(&root, "repo", recorder.clone());

        let small = Bytes::from_static(b"a catalog revision");
        s.put(
            "catalog/x/0000000001-running",
            small.clone(),
            PutMode::Create,
        )
        .await
        .unwrap();
        expect(
            &recorder.take(),
            &root,
            "repo/catalog/x/0000000001-running",
            &small,
        );

        let big: Vec<u8> = (0..(12usize << 20)).map(|i| (i % 253) as u8).collect();
        let pieces: Vec<Result<Bytes, SinkError>> = big
            .chunks(1 << 20)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        s.put_stream(
            "data/ab/pack",
            futures::stream::iter(pieces).boxed(),
            PutMode::Create,
        )
        .await
        .unwrap();
        expect(&recorder.take(), &root, "repo/data/ab/pack", &big);

        s.put(
            "wal/db/000000010000000000000001",
            Bytes::from(big.clone()),
            PutMode::Create,
        )
        .await
        .unwrap();
        expect(
            &recorder.take(),
            &root,
            "repo/wal/db/000000010000000000000001",
            &big,
        );

        let origin = ObjectMeta {
            key: "x".into(),
            size: small.len() as u64,
            last_modified: None,
            e_tag: None,
        };
        let once = futures::stream::once(async move { Ok(small) }).boxed();
        s.put_copy("copies/one", once, &origin).await.unwrap();
        expect(
            &recorder.take(),
            &root,
            "repo/copies/one",
            b"a catalog revision",
        );
    }

    /// A write whose sync fails is not acknowledged: the error names the object and the path
    /// whose sync failed.
    #[tokio::test]
    async fn a_write_whose_directory_cannot_be_synced_fails_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let recorder = Arc::new(Recorder {
            fail_on: Some(root.join("wal")),
            ..Default::default()
        });
        let s = sink(&root, "", recorder);
        let e = s
            .put("wal/seg", Bytes::from_static(b"wal"), PutMode::Create)
            .await
            .unwrap_err();
        let text = resilience_core::error::error_chain(&e);
        assert!(text.contains("wal/seg"), "{text}");
        assert!(
            text.contains(&format!("syncing {} failed", root.join("wal").display())),
            "{text}"
        );
        assert!(text.contains("the disk went away"), "{text}");
    }
}
