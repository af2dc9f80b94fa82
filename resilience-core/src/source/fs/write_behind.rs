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
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

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
    /// Fsync each file.
    pub fsync: bool,
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
        if rules.fsync {
            file.sync_all()
                .map_err(|e| AdapterError::new("fsync", shown(), e))?;
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

/// The small files handed over and not yet known written.
pub(super) struct WriteBehind {
    batch: Mutex<Vec<SmallFile>>,
    slots: Arc<Semaphore>,
    failed: Arc<Mutex<Option<AdapterError>>>,
}

impl std::fmt::Debug for WriteBehind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBehind").finish_non_exhaustive()
    }
}

impl WriteBehind {
    pub(super) fn new() -> Self {
        WriteBehind {
            batch: Mutex::new(Vec::new()),
            slots: Arc::new(Semaphore::new(BATCHES_IN_FLIGHT as usize)),
            failed: Arc::new(Mutex::new(None)),
        }
    }

    /// The first failure of a file handed over, if one failed (returned once).
    pub(super) fn check(&self) -> Result<(), AdapterError> {
        match self.failed.lock().expect("write-behind lock").take() {
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
            let mut batch = self.batch.lock().expect("write-behind lock");
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
        let failed = self.failed.clone();
        tokio::task::spawn_blocking(move || {
            for file in &batch {
                if let Err(e) = file.write(rules) {
                    failed.lock().expect("write-behind lock").get_or_insert(e);
                    break;
                }
            }
            drop(slot);
        });
        Ok(())
    }

    /// Writes what is left of the batch and waits for every file handed over; the first
    /// failure, if any.
    pub(super) async fn drain(&self, rules: FileRules) -> Result<(), AdapterError> {
        let rest = std::mem::take(&mut *self.batch.lock().expect("write-behind lock"));
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
