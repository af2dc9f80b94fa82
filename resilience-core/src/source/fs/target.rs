//! Restores entries into a directory.
//!
//! Every entry path is checked before anything is written: no absolute paths, no `.`, `..` or
//! empty components, no NUL, and no component of an existing parent that is a symlink — so a
//! damaged or malicious snapshot can never write outside the target directory. A name the
//! snapshot holds twice (a file, then a symlink in its place) is refused, and the metadata
//! pass never follows a symlink: modes and times are set with `AT_SYMLINK_NOFOLLOW`, on an
//! entry that is still of the kind the snapshot records.
//!
//! A restore can be resumed ([`DirTarget::resume`]): a file already there whose bytes are the
//! entry's content is skipped without reading the repository; the rest is written again.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::OnceCell;

use crate::source::entry::{EntryKind, EntryMeta};
use crate::source::{AdapterError, ContentCheck, ContentWriter, Target};

use super::write_behind::{self, FileRules, SmallFile, WriteBehind};

/// Restores into a directory, created if missing; an existing directory must be empty unless
/// [`DirTarget::allow_existing`] says otherwise.
#[derive(Debug)]
pub struct DirTarget {
    root: PathBuf,
    allow_existing: bool,
    resume: bool,
    durable: bool,
    ready: OnceCell<PathBuf>,
    /// The device of the file system holding the root, once the root is ready.
    root_device: std::sync::OnceLock<u64>,
    /// A directory of every other file system the restore wrote into (a mount point inside an
    /// existing target), by device: a durable finish syncs each.
    other_file_systems: Mutex<Vec<(u64, PathBuf)>>,
    checked_parent: Mutex<Option<PathBuf>>,
    behind: Arc<WriteBehind>,
}

impl DirTarget {
    /// A target directory.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirTarget {
            root: root.into(),
            allow_existing: false,
            resume: false,
            durable: false,
            ready: OnceCell::new(),
            root_device: std::sync::OnceLock::new(),
            other_file_systems: Mutex::new(Vec::new()),
            checked_parent: Mutex::new(None),
            behind: Arc::new(WriteBehind::new()),
        }
    }

    /// Restore into a directory that already has content (files are replaced).
    pub fn allow_existing(mut self, allow: bool) -> Self {
        self.allow_existing = allow;
        self
    }

    /// Resume a restore into a directory that holds part of it (an interrupted restore):
    /// files whose content already matches the snapshot are skipped, without reading the
    /// repository; every other entry is written again. Implies [`DirTarget::allow_existing`].
    pub fn resume(mut self, resume: bool) -> Self {
        self.resume = resume;
        self.allow_existing |= resume;
        self
    }

    /// Whether the regular file at `path` holds exactly `content` (never following a symlink).
    async fn holds(
        &self,
        path: &std::path::Path,
        content: &ContentCheck<'_>,
    ) -> Result<bool, AdapterError> {
        let shown = path.display().to_string();
        match std::fs::symlink_metadata(path) {
            Ok(md) if md.is_file() && md.len() == content.size() => {}
            Ok(_) => return Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(AdapterError::new("stat", shown, e)),
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| AdapterError::new("open", shown.clone(), e))?;
        let reader = tokio::io::BufReader::with_capacity(1 << 20, tokio::fs::File::from_std(file));
        content.matches(&shown, reader).await
    }

    /// Make the restore durable: once [`Target::finish`] returns `Ok`, every file, directory
    /// and symlink it wrote is on disk, not only in the page cache. `finish` syncs the file
    /// system holding the target once ([`sync_file_system`]), where an fsync of every entry
    /// would wait for the disk once per entry. A large file's write-back starts as each of its
    /// writes is made (Linux `sync_file_range`, without waiting), so the disk writes while the
    /// restore goes on; small files are left to the final sync (starting each one's write-back
    /// cost a million-file restore 13 s of system time, where the final sync took 2 to 4 s).
    /// A directory already in the target that is the mount point of another file system, and
    /// that the restore writes into, has that file system synced as well
    /// ([`DirTarget::file_systems`]).
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    fn rules(&self) -> FileRules {
        FileRules {
            allow_existing: self.allow_existing,
        }
    }

    async fn root(&self) -> Result<&PathBuf, AdapterError> {
        self.ready
            .get_or_try_init(|| async {
                let shown = self.root.display().to_string();
                match std::fs::read_dir(&self.root) {
                    Ok(mut entries) => {
                        if !self.allow_existing && entries.next().is_some() {
                            return Err(AdapterError::msg(
                                "restore into",
                                shown,
                                "the directory is not empty (choose an empty or new directory)",
                            ));
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        std::fs::create_dir_all(&self.root)
                            .map_err(|e| AdapterError::new("create", shown.clone(), e))?;
                    }
                    Err(e) => return Err(AdapterError::new("open", shown, e)),
                }
                let root = std::fs::canonicalize(&self.root)
                    .map_err(|e| AdapterError::new("open", shown.clone(), e))?;
                let md =
                    std::fs::metadata(&root).map_err(|e| AdapterError::new("stat", shown, e))?;
                let _ = self.root_device.set(md.dev());
                Ok(root)
            })
            .await
    }

    /// The file systems a durable [`Target::finish`] syncs, each by a directory of it: the
    /// root's, then every other one that the restore wrote into (mounted inside an existing
    /// target), in the order they were met. Empty before the first entry.
    pub fn file_systems(&self) -> Vec<PathBuf> {
        let mut all: Vec<PathBuf> = self.ready.get().cloned().into_iter().collect();
        all.extend(
            self.other_file_systems
                .lock()
                .expect("lock")
                .iter()
                .map(|(_, dir)| dir.clone()),
        );
        all
    }

    /// Notes the file system of `dir`, an existing directory the restore writes into, when it
    /// is not the root's.
    fn note_file_system(&self, dir: &std::path::Path, md: &std::fs::Metadata) {
        if self.root_device.get() == Some(&md.dev()) {
            return;
        }
        let mut others = self.other_file_systems.lock().expect("lock");
        if !others.iter().any(|(dev, _)| *dev == md.dev()) {
            others.push((md.dev(), dir.to_path_buf()));
        }
    }

    /// The on-disk path of an entry, after checking it stays inside the root.
    async fn place(&self, meta: &EntryMeta) -> Result<PathBuf, AdapterError> {
        let root = self.root().await?.clone();
        let raw = meta.path.as_bytes();
        let bad = |why: &str| {
            AdapterError::msg(
                "restore",
                meta.path.to_string(),
                format!("unsafe entry path: {why}"),
            )
        };
        if raw.is_empty() || raw[0] == b'/' {
            return Err(bad("absolute or empty"));
        }
        if raw.contains(&0) {
            return Err(bad("contains NUL"));
        }
        let mut path = root.clone();
        for c in raw.split(|b| *b == b'/') {
            if c.is_empty() || c == b"." || c == b".." {
                return Err(bad("empty, `.` or `..` component"));
            }
            path.push(OsStr::from_bytes(c));
        }
        let parent = path.parent().expect("below the root").to_path_buf();
        let already = self.checked_parent.lock().expect("lock").as_ref() == Some(&parent);
        if !already {
            // Every existing ancestor below the root must be a real directory, not a symlink.
            let mut p = root.clone();
            for c in parent
                .strip_prefix(&root)
                .expect("below the root")
                .components()
            {
                p.push(c);
                match std::fs::symlink_metadata(&p) {
                    Ok(md) if md.file_type().is_symlink() => {
                        return Err(bad("a parent is a symlink"))
                    }
                    Ok(md) if !md.is_dir() => return Err(bad("a parent is not a directory")),
                    Ok(md) => self.note_file_system(&p, &md),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        std::fs::create_dir_all(&p)
                            .map_err(|e| AdapterError::new("create", p.display().to_string(), e))?;
                    }
                    Err(e) => return Err(AdapterError::new("stat", p.display().to_string(), e)),
                }
            }
            *self.checked_parent.lock().expect("lock") = Some(parent);
        }
        Ok(path)
    }
}

/// A libc call's return code as a result: nonzero is the OS error, naming `object`.
pub(super) fn os_result(
    rc: libc::c_int,
    operation: &'static str,
    object: &str,
) -> Result<(), AdapterError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(AdapterError::new(
            operation,
            object,
            std::io::Error::last_os_error(),
        ))
    }
}

/// A name the snapshot holds twice: refused, so a later entry never replaces an earlier one
/// (a file by a symlink that the metadata pass would then follow).
pub(super) fn duplicate(meta: &EntryMeta) -> AdapterError {
    AdapterError::msg(
        "restore",
        meta.path.to_string(),
        "the snapshot holds this name twice (a damaged or forged tree): refused",
    )
}

struct FileWriter {
    /// The file, and the turn its writes take one at a time (see [`WRITES_IN_FLIGHT`]).
    file: Arc<(std::fs::File, std::sync::Mutex<()>)>,
    path: PathBuf,
    /// The entry: its size, and the owner, mode and times set once it is written.
    meta: EntryMeta,
    offset: u64,
    /// Start the write-back of each large write ([`DirTarget::durable`]).
    write_back: bool,
    /// Writes in flight, so the restore reads ahead while the disk writes.
    inflight: VecDeque<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// The last piece was a skipped zero run: the length must be set at the end.
    ends_in_hole: bool,
}

/// Positional writes in flight per file. They are made one at a time, in turn: the kernel
/// takes the file's lock for each write, and a second writer spun on it (in a Postgres restore,
/// 9% of all CPU time went to `rwsem_spin_on_owner`) where it now sleeps on the turn.
const WRITES_IN_FLIGHT: usize = 4;
/// Writes up to this size are made at once, on the calling thread.
const SMALL_WRITE: usize = 64 * 1024;

impl FileWriter {
    async fn reap_one(&mut self) -> Result<(), AdapterError> {
        if let Some(h) = self.inflight.pop_front() {
            h.await
                .map_err(|e| AdapterError::new("write", self.path.display().to_string(), e))?
                .map_err(|e| AdapterError::new("write", self.path.display().to_string(), e))?;
        }
        Ok(())
    }
}

/// Asks the kernel to start writing `len` bytes at `at` back to disk, without waiting. A hint:
/// where it fails or does not exist, the final sync writes the pages all the same.
fn start_write_back(file: &std::fs::File, at: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid open descriptor; no memory is passed.
        let rc = unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                at as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "sync_file_range failed; the final sync writes the pages");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, at, len);
}

/// Writes back every dirty page and inode of the file system holding `path` and waits for
/// the disk (Linux `syncfs`; elsewhere `sync`): one call that makes a whole restored tree
/// durable, where an fsync of each file and directory would wait for the disk once per entry.
pub fn sync_file_system(path: &std::path::Path) -> std::io::Result<()> {
    let dir = std::fs::File::open(path)?;
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: `dir` is an open descriptor for the duration of the call.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        drop(dir);
        // SAFETY: sync has no preconditions.
        unsafe { libc::sync() };
    }
    Ok(())
}

pub(super) fn is_zero(data: &[u8]) -> bool {
    let (head, body, tail) = unsafe { data.align_to::<u128>() };
    head.iter().all(|b| *b == 0) && body.iter().all(|w| *w == 0) && tail.iter().all(|b| *b == 0)
}

#[async_trait]
impl Target for DirTarget {
    /// Resuming, a file already holding its content is declined (not read, not written).
    async fn wants(
        &self,
        meta: &EntryMeta,
        content: &ContentCheck<'_>,
    ) -> Result<bool, AdapterError> {
        if !self.resume || meta.kind != EntryKind::File {
            return Ok(true);
        }
        let path = self.place(meta).await?;
        Ok(!self.holds(&path, content).await?)
    }

    async fn create(
        &self,
        meta: &EntryMeta,
    ) -> Result<Option<Box<dyn ContentWriter>>, AdapterError> {
        // A small file written behind that failed fails the restore here.
        self.behind.check()?;
        let path = self.place(meta).await?;
        let shown = path.display().to_string();
        match meta.kind {
            EntryKind::Dir => {
                match std::fs::symlink_metadata(&path) {
                    Ok(md) if md.is_dir() => self.note_file_system(&path, &md),
                    Ok(_) => {
                        return Err(AdapterError::msg(
                            "create",
                            shown,
                            "exists and is not a directory",
                        ))
                    }
                    Err(_) => std::fs::create_dir(&path)
                        .map_err(|e| AdapterError::new("create", shown, e))?,
                }
                Ok(None)
            }
            EntryKind::Symlink => {
                let target = meta.link_target.clone().unwrap_or_default();
                if std::fs::symlink_metadata(&path).is_ok() {
                    if !self.allow_existing {
                        return Err(duplicate(meta));
                    }
                    std::fs::remove_file(&path)
                        .map_err(|e| AdapterError::new("replace", shown.clone(), e))?;
                }
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                    .map_err(|e| AdapterError::new("symlink", shown, e))?;
                Ok(None)
            }
            EntryKind::Other => {
                tracing::warn!(entry = %meta.path, "not restoring a special file (FIFO, socket or device)");
                Ok(None)
            }
            EntryKind::File if meta.size <= write_behind::SMALL_FILE => {
                Ok(Some(Box::new(SmallWriter {
                    behind: self.behind.clone(),
                    rules: self.rules(),
                    file: SmallFile {
                        path,
                        meta: meta.clone(),
                        content: Vec::new(),
                    },
                })))
            }
            EntryKind::File => {
                // Never through a symlink; into a directory that must start empty, never over
                // an entry restored before (a name the snapshot holds twice).
                let file = write_behind::open_new(&path, self.allow_existing).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::AlreadyExists {
                        duplicate(meta)
                    } else {
                        AdapterError::new("create", shown, e)
                    }
                })?;
                Ok(Some(Box::new(FileWriter {
                    file: Arc::new((file, std::sync::Mutex::new(()))),
                    path,
                    meta: meta.clone(),
                    offset: 0,
                    write_back: self.durable,
                    inflight: VecDeque::new(),
                    ends_in_hole: false,
                })))
            }
        }
    }

    /// Owner, mode and times, never through a symlink: the entry must still be of the kind
    /// the snapshot records (a file or directory swapped for a symlink since it was written is
    /// refused, naming it), and every call takes `AT_SYMLINK_NOFOLLOW`.
    ///
    /// Waits first for every file handed to the write-behind threads. A file this target
    /// created has had its metadata set through its descriptor as it was completed, so only
    /// a resumed restore (whose files already there were not written again) sets a file's
    /// metadata here.
    async fn apply_metadata(&self, meta: &EntryMeta) -> Result<(), AdapterError> {
        self.behind.drain(self.rules()).await?;
        if meta.kind == EntryKind::Other || (meta.kind == EntryKind::File && !self.resume) {
            return Ok(());
        }
        let path = self.place(meta).await?;
        let shown = path.display().to_string();
        let found = std::fs::symlink_metadata(&path)
            .map_err(|e| AdapterError::new("stat", shown.clone(), e))?;
        let expected = match meta.kind {
            EntryKind::File => found.file_type().is_file(),
            EntryKind::Dir => found.file_type().is_dir(),
            EntryKind::Symlink => found.file_type().is_symlink(),
            EntryKind::Other => true,
        };
        if !expected {
            return Err(AdapterError::msg(
                "restore",
                meta.path.to_string(),
                format!(
                    "{shown} is no longer the {:?} the restore wrote: its metadata is not applied through it",
                    meta.kind
                ),
            ));
        }
        let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|e| AdapterError::new("restore", shown.clone(), e))?;
        if unsafe { libc::geteuid() } == 0 {
            if let (Some(uid), Some(gid)) = (meta.uid, meta.gid) {
                if let Err(e) = std::os::unix::fs::lchown(&path, Some(uid), Some(gid)) {
                    if e.kind() != std::io::ErrorKind::PermissionDenied {
                        return Err(AdapterError::new("chown", shown, e));
                    }
                }
            }
        }
        if meta.mode != 0 && meta.kind != EntryKind::Symlink {
            // SAFETY: a valid NUL-terminated path; no memory is shared.
            let rc = unsafe {
                libc::fchmodat(
                    libc::AT_FDCWD,
                    c_path.as_ptr(),
                    (meta.mode & 0o7777) as libc::mode_t,
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            };
            os_result(rc, "chmod", &shown)?;
        }
        if let Some(ns) = meta.mtime_ns {
            let t = libc::timespec {
                tv_sec: ns.div_euclid(1_000_000_000) as libc::time_t,
                tv_nsec: ns.rem_euclid(1_000_000_000) as _,
            };
            let times = [t, t];
            // SAFETY: a valid NUL-terminated path and two timespecs.
            let rc = unsafe {
                libc::utimensat(
                    libc::AT_FDCWD,
                    c_path.as_ptr(),
                    times.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            };
            os_result(rc, "set times of", &shown)?;
        }
        Ok(())
    }

    async fn finish(&self) -> Result<(), AdapterError> {
        self.behind.drain(self.rules()).await?;
        self.root().await?;
        if self.durable {
            for dir in self.file_systems() {
                let shown = dir.display().to_string();
                tokio::task::spawn_blocking(move || sync_file_system(&dir))
                    .await
                    .map_err(|e| AdapterError::new("sync", shown.clone(), e))?
                    .map_err(|e| AdapterError::new("sync", shown, e))?;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl ContentWriter for FileWriter {
    async fn write(&mut self, data: Bytes) -> Result<(), AdapterError> {
        let at = self.offset;
        self.offset += data.len() as u64;
        // Zero runs of 4 KiB or more become holes: sparse files stay sparse.
        if data.len() >= 4096 && is_zero(&data) {
            self.ends_in_hole = true;
            return Ok(());
        }
        self.ends_in_hole = false;
        if data.len() <= SMALL_WRITE && self.inflight.is_empty() {
            // A small write into the page cache takes less time than a trip to the blocking
            // pool: a tree of small files is written without one trip per file.
            let file = &self.file.0;
            file.write_all_at(&data, at)
                .map_err(|e| AdapterError::new("write", self.path.display().to_string(), e))?;
            if self.write_back {
                start_write_back(file, at, data.len() as u64);
            }
            return Ok(());
        }
        while self.inflight.len() >= WRITES_IN_FLIGHT {
            self.reap_one().await?;
        }
        let (shared, write_back) = (self.file.clone(), self.write_back);
        self.inflight
            .push_back(tokio::task::spawn_blocking(move || {
                let (file, turn) = &*shared;
                let _turn = turn
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                file.write_all_at(&data, at)?;
                if write_back {
                    start_write_back(file, at, data.len() as u64);
                }
                Ok(())
            }));
        Ok(())
    }

    async fn complete(mut self: Box<Self>) -> Result<(), AdapterError> {
        while !self.inflight.is_empty() {
            self.reap_one().await?;
        }
        let shown = self.path.display().to_string();
        if self.offset != self.meta.size {
            return Err(AdapterError::msg(
                "restore",
                shown,
                format!(
                    "wrote {} bytes, the snapshot records {}",
                    self.offset, self.meta.size
                ),
            ));
        }
        if self.ends_in_hole {
            let (size, file) = (self.offset, self.file.clone());
            tokio::task::spawn_blocking(move || file.0.set_len(size))
                .await
                .map_err(|e| AdapterError::new("finish", shown.clone(), e))?
                .map_err(|e| AdapterError::new("finish", shown.clone(), e))?;
        }
        write_behind::set_metadata(&self.file.0, &self.meta, &shown)
    }
}

/// A small file's content, gathered and handed to the write-behind threads once complete.
struct SmallWriter {
    behind: Arc<WriteBehind>,
    rules: FileRules,
    file: SmallFile,
}

#[async_trait]
impl ContentWriter for SmallWriter {
    async fn write(&mut self, data: Bytes) -> Result<(), AdapterError> {
        self.file.content.push(data);
        Ok(())
    }

    async fn complete(self: Box<Self>) -> Result<(), AdapterError> {
        let this = *self;
        let written = this.file.len() as u64;
        if written != this.file.meta.size {
            return Err(AdapterError::msg(
                "restore",
                this.file.path.display().to_string(),
                format!(
                    "wrote {written} bytes, the snapshot records {}",
                    this.file.meta.size
                ),
            ));
        }
        this.behind.submit(this.file, this.rules).await
    }
}
