//! Small files written behind the restore: a [`DirTarget`](super::DirTarget) hands each small
//! file (its whole content, owner, mode and times) to a blocking thread, in batches, and goes
//! on with the next entry. A tree of a million small files is then created on every core, not
//! on the one thread that drives the restore, and each file's metadata is set through the
//! descriptor that wrote it (no second walk of the tree by path).
//!
//! A failure is kept and returned by the target's next call; [`WriteBehind::drain`] waits for
//! every file handed over, so nothing is reported written before it is.

use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::source::entry::EntryMeta;
use crate::source::AdapterError;

/// Files up to this size are written behind.
pub(super) const SMALL_FILE: u64 = 64 << 10;
/// Files in one batch, at most.
const BATCH_FILES: usize = 64;
/// Content bytes in one batch, at most.
const BATCH_BYTES: usize = 512 << 10;
/// Batches being written at once, at most (so at most this many batches' bytes are held).
const BATCHES_IN_FLIGHT: u32 = 4;

/// How the target creates and finishes files.
#[derive(Clone, Copy, Debug)]
pub(super) struct FileRules {
    /// Replace a file already there (else an existing name is a name held twice).
    pub allow_existing: bool,
}

/// One small file: where, what, and the metadata to set once it is written.
pub(super) struct SmallFile {
    pub path: PathBuf,
    pub meta: EntryMeta,
    pub content: Vec<Bytes>,
}

impl SmallFile {
    /// Its content's length (checked against the entry's size before it is handed over).
    pub(super) fn len(&self) -> usize {
        self.content.iter().map(Bytes::len).sum()
    }

    /// Creates, writes, and sets the owner, mode and times of the file, all through its
    /// descriptor (never through a symlink: `O_NOFOLLOW`).
    fn write(&self, rules: FileRules) -> Result<(), AdapterError> {
        let shown = || self.path.display().to_string();
        let file = open_new(&self.path, rules.allow_existing).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                super::target::duplicate(&self.meta)
            } else {
                AdapterError::new("create", shown(), e)
            }
        })?;
        let (mut at, mut ends_in_hole) = (0u64, false);
        for piece in &self.content {
            // A zero run of 4 KiB or more stays a hole.
            ends_in_hole = piece.len() >= 4096 && super::target::is_zero(piece);
            if !ends_in_hole {
                file.write_all_at(piece, at)
                    .map_err(|e| AdapterError::new("write", shown(), e))?;
            }
            at += piece.len() as u64;
        }
        if ends_in_hole {
            file.set_len(at)
                .map_err(|e| AdapterError::new("finish", shown(), e))?;
        }
        set_metadata(&file, &self.meta, &shown())
    }
}

/// Opens a new file for writing: never through a symlink; an existing one is an error unless
/// `allow_existing` (then it is emptied).
pub(super) fn open_new(
    path: &std::path::Path,
    allow_existing: bool,
) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600);
    if allow_existing {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    options.open(path)
}

/// Owner (when running as root), then mode (a change of owner clears set-id bits), then
/// times, of the file open as `file`.
pub(super) fn set_metadata(
    file: &std::fs::File,
    meta: &EntryMeta,
    shown: &str,
) -> Result<(), AdapterError> {
    let fd = file.as_raw_fd();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        if let (Some(uid), Some(gid)) = (meta.uid, meta.gid) {
            // SAFETY: a valid open descriptor.
            if unsafe { libc::fchown(fd, uid, gid) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::PermissionDenied {
                    return Err(AdapterError::new("chown", shown, e));
                }
            }
        }
    }
    if meta.mode != 0 {
        // SAFETY: a valid open descriptor.
        let rc = unsafe { libc::fchmod(fd, (meta.mode & 0o7777) as libc::mode_t) };
        super::target::os_result(rc, "chmod", shown)?;
    }
    if let Some(ns) = meta.mtime_ns {
        let t = libc::timespec {
            tv_sec: ns.div_euclid(1_000_000_000) as libc::time_t,
            tv_nsec: ns.rem_euclid(1_000_000_000) as _,
        };
        let times = [t, t];
        // SAFETY: a valid open descriptor and two timespecs.
        let rc = unsafe { libc::futimens(fd, times.as_ptr()) };
        super::target::os_result(rc, "set times of", shown)?;
    }
    Ok(())
}

/// How one small file is written ([`SmallFile::write`]; another in tests).
type WriteFile = fn(&SmallFile, FileRules) -> Result<(), AdapterError>;

/// The small files handed over and not yet known written.
pub(super) struct WriteBehind {
    batch: Mutex<Vec<SmallFile>>,
    slots: Arc<Semaphore>,
    failed: Arc<Mutex<Option<AdapterError>>>,
    write: WriteFile,
}

impl std::fmt::Debug for WriteBehind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBehind").finish_non_exhaustive()
    }
}

/// `mutex`'s content, also after a panic while it was held (every holder leaves it whole).
fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Writes `batch` in order, stopping at the first failure, which is returned. A panic is a
/// failure of the file being written.
fn write_batch(batch: &[SmallFile], rules: FileRules, write: WriteFile) -> Option<AdapterError> {
    let mut at = 0;
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        while let Some(file) = batch.get(at) {
            write(file, rules)?;
            at += 1;
        }
        Ok(())
    }));
    match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            let shown = batch.get(at).map_or_else(
                || "small files".to_string(),
                |f| f.path.display().to_string(),
            );
            Some(AdapterError::msg(
                "restore",
                shown,
                format!("the thread writing it panicked: {why}"),
            ))
        }
    }
}

impl WriteBehind {
    pub(super) fn new() -> Self {
        Self::writing_with(SmallFile::write)
    }

    fn writing_with(write: WriteFile) -> Self {
        WriteBehind {
            batch: Mutex::new(Vec::new()),
            slots: Arc::new(Semaphore::new(BATCHES_IN_FLIGHT as usize)),
            failed: Arc::new(Mutex::new(None)),
            write,
        }
    }

    /// The first failure of a file handed over, if one failed (returned once).
    pub(super) fn check(&self) -> Result<(), AdapterError> {
        match locked(&self.failed).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Hands `file` over; a full batch starts being written (waiting for a slot first).
    pub(super) async fn submit(
        &self,
        file: SmallFile,
        rules: FileRules,
    ) -> Result<(), AdapterError> {
        self.check()?;
        let full = {
            let mut batch = locked(&self.batch);
            batch.push(file);
            let bytes: usize = batch.iter().map(SmallFile::len).sum();
            (batch.len() >= BATCH_FILES || bytes >= BATCH_BYTES)
                .then(|| std::mem::take(&mut *batch))
        };
        if let Some(batch) = full {
            self.start(batch, rules).await?;
        }
        Ok(())
    }

    async fn start(&self, batch: Vec<SmallFile>, rules: FileRules) -> Result<(), AdapterError> {
        let slot = self.slots.clone().acquire_owned().await.map_err(|_| {
            AdapterError::msg(
                "restore",
                "small files",
                "the write-behind slots were closed",
            )
        })?;
        let (failed, write) = (self.failed.clone(), self.write);
        tokio::task::spawn_blocking(move || {
            if let Some(e) = write_batch(&batch, rules, write) {
                locked(&failed).get_or_insert(e);
            }
            // The slot is given back only once the failure, if any, is recorded.
            drop(slot);
        });
        Ok(())
    }

    /// Writes what is left of the batch and waits for every file handed over; the first
    /// failure, if any.
    pub(super) async fn drain(&self, rules: FileRules) -> Result<(), AdapterError> {
        let rest = std::mem::take(&mut *locked(&self.batch));
        if !rest.is_empty() {
            self.start(rest, rules).await?;
        }
        let all = self
            .slots
            .acquire_many(BATCHES_IN_FLIGHT)
            .await
            .map_err(|_| {
                AdapterError::msg(
                    "restore",
                    "small files",
                    "the write-behind slots were closed",
                )
            })?;
        drop(all);
        self.check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str) -> SmallFile {
        SmallFile {
            path: PathBuf::from(name),
            meta: EntryMeta::file(name, 1),
            content: vec![Bytes::from_static(b"x")],
        }
    }

    const RULES: FileRules = FileRules {
        allow_existing: false,
    };

    fn panics_on_boom(file: &SmallFile, _: FileRules) -> Result<(), AdapterError> {
        if file.path.ends_with("boom") {
            panic!("forced for the test");
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_thread_that_panics_fails_the_restore_naming_the_file() {
        let behind = WriteBehind::writing_with(panics_on_boom);
        for name in ["a", "b", "boom", "c"] {
            behind.submit(file(name), RULES).await.unwrap();
        }
        let err = behind.drain(RULES).await.unwrap_err().to_string();
        assert!(err.contains("boom"), "{err}");
        assert!(err.contains("panicked: forced for the test"), "{err}");
        // Every slot came back: the target can still be drained, and has nothing left.
        behind.drain(RULES).await.unwrap();
    }

    #[tokio::test]
    async fn a_full_batch_that_panics_fails_the_next_file_handed_over() {
        let behind = WriteBehind::writing_with(panics_on_boom);
        behind.submit(file("boom"), RULES).await.unwrap();
        for i in 1..BATCH_FILES {
            behind.submit(file(&format!("f{i}")), RULES).await.unwrap();
        }
        // The full batch was started; wait for its slot to come back.
        drop(behind.slots.acquire_many(BATCHES_IN_FLIGHT).await.unwrap());
        let err = behind.submit(file("late"), RULES).await.unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
    }

    #[test]
    fn a_batch_written_whole_reports_nothing() {
        let batch = [file("a"), file("b")];
        assert!(write_batch(&batch, RULES, panics_on_boom).is_none());
    }
}
