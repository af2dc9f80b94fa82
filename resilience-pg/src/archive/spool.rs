//! A local spool directory beside a cluster's WAL: where the asynchronous push
//! ([`super::async_push`]) leaves its markers and the prefetching fetch
//! ([`super::prefetch`]) the segments it fetched ahead. Everything in it is written whole or
//! not at all (a temporary file, synced, renamed, the directory synced), and one process at a
//! time works on it, holding its lock.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use rand::RngCore;

use crate::error::PgError;

/// Prefix of the temporary files a write goes through (never a WAL file name, never served).
pub(super) const TEMP_PREFIX: &str = ".tmp.";

/// A spool directory.
#[derive(Clone, Debug)]
pub struct Spool {
    dir: PathBuf,
}

/// The lock of a spool, held by the one process working on it; released when dropped (or
/// when the process dies, however it dies).
#[derive(Debug)]
pub struct SpoolLock {
    _file: File,
}

impl Spool {
    /// The spool in `dir`, created (mode 0700) if missing.
    pub fn open(dir: &Path) -> Result<Spool, PgError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(PgError::io("create the spool directory", dir.display()))?;
        Ok(Spool {
            dir: dir.to_owned(),
        })
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of `file` in the spool.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// A fresh temporary path for writing `file` before it is renamed into place: removed by
    /// [`Spool::remove_leftovers`] if a crash leaves it, never listed as a file.
    pub fn temp_path(&self, file: &str) -> PathBuf {
        let mut id = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut id);
        self.path(&format!("{TEMP_PREFIX}{file}.{}", hex::encode(id)))
    }

    /// The size of a temporary file being written for `file` ([`Spool::temp_path`]), if one
    /// is in the spool.
    pub fn writing(&self, file: &str) -> Result<Option<u64>, PgError> {
        let prefix = format!("{TEMP_PREFIX}{file}.");
        let entries =
            std::fs::read_dir(&self.dir).map_err(PgError::io("list", self.dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(PgError::io("list", self.dir.display()))?;
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                return match entry.metadata() {
                    Ok(m) => Ok(Some(m.len())),
                    // Renamed or removed under us: the caller's next look tells which.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Some(0)),
                    Err(e) => Err(PgError::io("stat", entry.path().display())(e)),
                };
            }
        }
        Ok(None)
    }

    /// Writes `bytes` as `file`, whole or not at all, and durably: a temporary file is written
    /// and synced, renamed to `file`, and the directory synced.
    pub fn write_durably(&self, file: &str, bytes: &[u8]) -> Result<(), PgError> {
        self.write_whole(file, bytes, true)
    }

    /// Writes `bytes` as `file`, whole or not at all (a temporary file renamed), synced first
    /// if `durable` (a hint that may be lost to a crash need not be).
    pub fn write_whole(&self, file: &str, bytes: &[u8], durable: bool) -> Result<(), PgError> {
        let tmp = self.temp_path(file);
        let dest = self.path(file);
        let written = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(bytes)?;
            if durable {
                f.sync_all()?;
            }
            Ok(())
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(PgError::io("write", tmp.display())(e));
        }
        if let Err(e) = std::fs::rename(&tmp, &dest) {
            let _ = std::fs::remove_file(&tmp);
            return Err(PgError::io("rename into place", dest.display())(e));
        }
        if !durable {
            return Ok(());
        }
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(PgError::io("sync", self.dir.display()))
    }

    /// Removes `file`; one already gone is fine.
    pub fn remove(&self, file: &str) -> Result<(), PgError> {
        match std::fs::remove_file(self.path(file)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(PgError::io("remove", self.path(file).display())(e)),
        }
    }

    /// The names of the spool's files (temporary files left out).
    pub fn files(&self) -> Result<Vec<String>, PgError> {
        let entries =
            std::fs::read_dir(&self.dir).map_err(PgError::io("list", self.dir.display()))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(PgError::io("list", self.dir.display()))?;
            if let Some(name) = entry.file_name().to_str() {
                if !name.starts_with(TEMP_PREFIX) && !name.starts_with(".lock") {
                    out.push(name.to_owned());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes the temporary files a killed writer left.
    pub fn remove_leftovers(&self) -> Result<(), PgError> {
        let entries =
            std::fs::read_dir(&self.dir).map_err(PgError::io("list", self.dir.display()))?;
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// Takes the spool's lock `name` without waiting: `None` when another process holds it.
    pub fn try_lock(&self, name: &str) -> Result<Option<SpoolLock>, PgError> {
        let path = self.path(&format!(".lock.{name}"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(PgError::io("open the lock", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(SpoolLock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(PgError::io("lock", path.display())(e)),
        }
    }

    /// Whether a process holds the lock `name` (it is taken and released at once otherwise).
    pub fn locked(&self, name: &str) -> Result<bool, PgError> {
        Ok(self.try_lock(name)?.is_none())
    }
}

/// BLAKE3 and length of the file at `path`, read in pieces (a segment is never held whole).
pub fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    // Read in large pieces: std's copy reads 8 KiB at a time, 2048 calls for a segment.
    let mut file = std::io::BufReader::with_capacity(1 << 20, File::open(path)?);
    let mut hasher = blake3::Hasher::new();
    let len = std::io::copy(&mut file, &mut hasher)?;
    Ok((hasher.finalize().to_hex().to_string(), len))
}

/// CRC32C (Castagnoli, as Postgres' WAL records use) and length of the file at `path`, read
/// in pieces, in parts of at least [`CRC_PART`] read at once by up to `threads` threads, their
/// CRCs combined: a served call of a prefetched segment is on recovery's critical path, and
/// recovery replays on one core (a served call of a 16 MiB segment took 5.6–5.7 ms here
/// with two threads, 5.7–6.0 with one).
pub fn crc32c_file(path: &Path, threads: usize) -> std::io::Result<(u32, u64)> {
    crc32c_file_in_parts(path, threads, CRC_PART)
}

/// The cores this process may run on (its CPU affinity): one system call, where
/// `available_parallelism` also reads the cgroup's quota files (15 calls, on every served
/// segment).
pub fn cores() -> usize {
    // SAFETY: `set` is a plain bit set that sched_getaffinity fills in; 0 names this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            return (libc::CPU_COUNT(&set) as usize).max(1);
        }
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The smallest part of a file [`crc32c_file`] gives a thread of its own.
pub const CRC_PART: u64 = 4 << 20;

/// How much of a file [`crc32c_file`] reads at a time, per thread.
const CRC_PIECE: usize = 256 << 10;

fn crc32c_file_in_parts(path: &Path, threads: usize, min_part: u64) -> std::io::Result<(u32, u64)> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let parts = (threads.max(1) as u64).min(len / min_part.max(1)).max(1);
    if parts > 1 {
        let part = len.div_ceil(parts);
        let ranges: Vec<(u64, u64)> = (0..parts)
            .map(|i| (i * part, part.min(len - i * part)))
            .collect();
        let shared = &file;
        let crcs = std::thread::scope(|scope| {
            let others: Vec<_> = ranges[1..]
                .iter()
                .map(|&(at, n)| scope.spawn(move || crc32c_range(shared, at, n)))
                .collect();
            let first = crc32c_range(shared, ranges[0].0, ranges[0].1);
            std::iter::once(first)
                .chain(
                    others
                        .into_iter()
                        .map(|t| t.join().expect("a CRC thread panicked")),
                )
                .collect::<std::io::Result<Vec<u32>>>()
        });
        match crcs {
            // Read as it was when opened: whole parts, and nothing past its length.
            Ok(crcs) if read_at_full(&file, &mut [0u8; 1], len)? == 0 => {
                let crc = ranges.iter().zip(crcs).fold(0, |acc, (&(_, n), crc)| {
                    crc32c::crc32c_combine(acc, crc, n as usize)
                });
                return Ok((crc, len));
            }
            // It changed length meanwhile: read again, from its start to its end.
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
            Err(e) => return Err(e),
        }
    }
    crc32c_read(file)
}

/// CRC32C of `n` bytes of `file` from `at`; an error if it ends before them (it shrank: the
/// caller reads it again from its start).
fn crc32c_range(file: &File, at: u64, n: u64) -> std::io::Result<u32> {
    let mut buf = vec![0u8; CRC_PIECE.min(n as usize)];
    let (mut crc, mut done) = (0u32, 0u64);
    while done < n {
        let want = buf.len().min((n - done) as usize);
        let got = read_at_full(file, &mut buf[..want], at + done)?;
        if got < want {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        }
        crc = crc32c::crc32c_append(crc, &buf[..got]);
        done += got as u64;
    }
    Ok(crc)
}

/// Reads into `buf` from `at` until it is full or the file ends; how many bytes were read.
fn read_at_full(file: &File, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], at + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// CRC32C and length of what `file` holds from its start, read in one thread.
fn crc32c_read(mut file: File) -> std::io::Result<(u32, u64)> {
    use std::io::{Read, Seek};
    file.rewind()?;
    let mut buf = vec![0u8; CRC_PIECE];
    let (mut crc, mut len) = (0u32, 0u64);
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok((crc, len)),
            Ok(n) => {
                crc = crc32c::crc32c_append(crc, &buf[..n]);
                len += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_hash_to_the_blake3_and_crc32c_of_their_bytes_at_every_read_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let piece = 1 << 20;
        let bytes: Vec<u8> = (0..3 * piece + 7).map(|i| (i * 31 % 251) as u8).collect();
        for len in [0, 1, piece - 1, piece, piece + 1, 3 * piece + 7] {
            let path = dir.path().join(format!("f{len}"));
            std::fs::write(&path, &bytes[..len]).unwrap();
            let (digest, got) = hash_file(&path).unwrap();
            assert_eq!(got, len as u64);
            for threads in [1, 2, 3, 4] {
                let (crc, got) = crc32c_file(&path, threads).unwrap();
                assert_eq!(got, len as u64);
                assert_eq!(crc, crc32c::crc32c(&bytes[..len]), "{len}");
                // In parts of any size: each part's CRC32C combined with the next.
                for min_part in [1, 4096, piece as u64 + 3] {
                    let (crc, got) = crc32c_file_in_parts(&path, threads, min_part).unwrap();
                    assert_eq!(got, len as u64);
                    assert_eq!(crc, crc32c::crc32c(&bytes[..len]), "{len} {threads}");
                }
            }
            assert_eq!(
                digest,
                blake3::hash(&bytes[..len]).to_hex().to_string(),
                "{len}"
            );
        }
        let missing = hash_file(&dir.path().join("missing")).unwrap_err();
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
        // A directory opens but does not read: an error, not a digest.
        assert!(hash_file(dir.path()).is_err());
        assert!(crc32c_file(dir.path(), 2).is_err());
        // The affinity: never fewer than the cores std counts (which a CPU quota may lower).
        assert!(cores() >= std::thread::available_parallelism().unwrap().get());
        // A part past the end (the file shrank while read) is told apart from other errors.
        let short = File::open(dir.path().join("f1")).unwrap();
        assert_eq!(
            crc32c_range(&short, 0, 2).unwrap_err().kind(),
            std::io::ErrorKind::UnexpectedEof
        );
        assert_eq!(
            crc32c_file(&dir.path().join("missing"), 2)
                .unwrap_err()
                .kind(),
            std::io::ErrorKind::NotFound
        );
    }

    #[test]
    fn durable_writes_replace_whole_files_and_leave_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("spool")).unwrap();
        spool.write_durably("a", b"one").unwrap();
        spool.write_durably("a", b"two").unwrap();
        assert_eq!(std::fs::read(spool.path("a")).unwrap(), b"two");
        std::fs::write(spool.path(".tmp.b.1234"), b"torn").unwrap();
        assert_eq!(spool.files().unwrap(), vec!["a".to_owned()]);
        spool.remove_leftovers().unwrap();
        assert!(!spool.path(".tmp.b.1234").exists());
        spool.remove("a").unwrap();
        spool.remove("a").unwrap();
        assert!(spool.files().unwrap().is_empty());
    }

    #[test]
    fn one_holder_of_a_lock_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let held = spool.try_lock("pusher").unwrap().expect("free");
        assert!(spool.try_lock("pusher").unwrap().is_none());
        assert!(spool.locked("pusher").unwrap());
        assert!(!spool.locked("other").unwrap());
        drop(held);
        assert!(!spool.locked("pusher").unwrap());
    }
}
