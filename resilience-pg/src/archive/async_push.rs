//! The asynchronous push (`wal-push --async`): a background pusher archives the WAL files
//! Postgres has marked ready, several at a time, and Postgres' archive_command only waits for
//! the pusher's word on its own file — but that word is given only once the file is durable in
//! the repository.
//!
//! The pusher reads `archive_status/*.ready` beside the WAL files (history files first, then
//! oldest first), pushes up to `parallel` of them at once through [`WalArchive`] (idempotent,
//! refusing different bytes), and after each push that returned writes a *marker* in the spool
//! ([`Spool::write_durably`]: synced, renamed, directory synced): `<name>.push` saying
//! [`PushMarker::Archived`] with the size and BLAKE3 of what it archived, or
//! [`PushMarker::Failed`] with the error. A marker is written only after the repository write
//! returned, so a pusher killed at any point leaves no marker of a file it did not archive;
//! the next pusher pushes such a file again (a push of the same bytes succeeds).
//!
//! The caller ([`await_archived`]) hashes its own file and waits for its marker: `Archived`
//! with the same size and BLAKE3 is success; `Failed` is that error (the marker is removed, so
//! the pusher tries again when Postgres retries); a marker of other bytes is stale and removed.
//! Markers of files whose `.ready` is gone (Postgres took the success) are removed by the
//! pusher. The pusher exits after an idle period; the caller starts one when none holds the
//! spool's lock.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use resilience_core::repo::side::CompressionThreads;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use super::spool::{hash_file, Spool};
use super::WalArchive;
use crate::error::PgError;
use crate::lsn::{self, WalFileKind};

/// The name of the lock the pusher holds on its spool.
pub const PUSHER_LOCK: &str = "pusher";
/// The suffix of a marker file.
pub const MARKER_SUFFIX: &str = ".push";
/// The marker encoding's version.
const MARKER_FORMAT: u32 = 1;
/// The largest marker read (markers are bounded before they are parsed).
const MAX_MARKER_BYTES: usize = 16 * 1024;
/// The longest error message a marker keeps.
const MAX_MESSAGE_BYTES: usize = 4096;

/// What the pusher says of one WAL file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum PushMarker {
    /// The file is durable in the repository: these bytes.
    Archived {
        /// Its length.
        size: u64,
        /// BLAKE3 of its content, hex.
        blake3: String,
    },
    /// The push failed with this error.
    Failed {
        /// The error.
        message: String,
    },
}

#[derive(Serialize, Deserialize)]
struct MarkerFile {
    format: u32,
    name: String,
    #[serde(flatten)]
    marker: PushMarker,
}

impl PushMarker {
    /// A failure marker; the message is cut to 4096 bytes (at a character boundary).
    pub fn failed(message: &str) -> Self {
        let mut end = message.len().min(MAX_MESSAGE_BYTES);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        PushMarker::Failed {
            message: message[..end].to_owned(),
        }
    }

    /// The marker's bytes for the WAL file `name`.
    pub fn encode(&self, name: &str) -> Vec<u8> {
        serde_json::to_vec(&MarkerFile {
            format: MARKER_FORMAT,
            name: name.to_owned(),
            marker: self.clone(),
        })
        .expect("a marker serializes")
    }

    /// Reads a marker of the WAL file `name`; anything else — too long, not parsing, of
    /// another format or name, a malformed digest, an overlong message — is refused.
    pub fn decode(name: &str, bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() > MAX_MARKER_BYTES {
            return Err(format!("{} bytes, more than a marker holds", bytes.len()));
        }
        let file: MarkerFile =
            serde_json::from_slice(bytes).map_err(|e| format!("does not parse: {e}"))?;
        if file.format != MARKER_FORMAT {
            return Err(format!("marker format {}", file.format));
        }
        if file.name != name {
            return Err(format!("a marker of {:?}", file.name));
        }
        match &file.marker {
            PushMarker::Archived { blake3, .. }
                if blake3.len() != 64
                    || !blake3
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
            {
                Err("a malformed BLAKE3".into())
            }
            PushMarker::Failed { message } if message.len() > MAX_MESSAGE_BYTES => {
                Err("an overlong message".into())
            }
            _ => Ok(file.marker),
        }
    }
}

fn marker_file(name: &str) -> String {
    format!("{name}{MARKER_SUFFIX}")
}

impl Spool {
    /// The marker of the WAL file `name`, if there is one; one that does not decode is an
    /// error naming it.
    pub fn read_marker(&self, name: &str) -> Result<Option<PushMarker>, PgError> {
        let path = self.path(&marker_file(name));
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(PgError::io("read", path.display())(e)),
        };
        PushMarker::decode(name, &bytes)
            .map(Some)
            .map_err(|reason| PgError::SpoolDamaged {
                path: path.display().to_string(),
                reason,
            })
    }

    /// Writes the marker of the WAL file `name`, durably.
    pub fn write_marker(&self, name: &str, marker: &PushMarker) -> Result<(), PgError> {
        self.write_durably(&marker_file(name), &marker.encode(name))
    }

    /// Removes the marker of the WAL file `name`.
    pub fn remove_marker(&self, name: &str) -> Result<(), PgError> {
        self.remove(&marker_file(name))
    }

    /// The WAL file names that have a marker.
    fn marked(&self) -> Result<BTreeSet<String>, PgError> {
        Ok(self
            .files()?
            .into_iter()
            .filter_map(|f| f.strip_suffix(MARKER_SUFFIX).map(str::to_owned))
            .collect())
    }
}

/// The WAL files Postgres has marked ready for archiving in `wal_dir`
/// (`archive_status/<name>.ready`), in the order Postgres archives them: history files first,
/// then by name (oldest first).
pub fn ready_files(wal_dir: &Path) -> Result<Vec<String>, PgError> {
    let status = wal_dir.join("archive_status");
    let entries = std::fs::read_dir(&status).map_err(PgError::io("list", status.display()))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(PgError::io("list", status.display()))?;
        if let Some(name) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_suffix(".ready"))
        {
            if lsn::classify(name).is_some() {
                out.push(name.to_owned());
            }
        }
    }
    out.sort_by_key(|n| {
        (
            !matches!(lsn::classify(n), Some(WalFileKind::History { .. })),
            n.clone(),
        )
    });
    Ok(out)
}

/// Whether Postgres has marked `name` ready in `wal_dir` (an archive_command call outside of
/// Postgres' archiver has no such mark, and is pushed synchronously).
pub fn is_ready(wal_dir: &Path, name: &str) -> bool {
    wal_dir
        .join("archive_status")
        .join(format!("{name}.ready"))
        .exists()
}

/// How the pusher works.
#[derive(Clone, Debug)]
pub struct PusherOptions {
    /// Pushes at once.
    pub parallel: usize,
    /// The pusher exits once nothing was ready for this long.
    pub idle: Duration,
    /// How often it looks at `archive_status` again.
    pub poll: Duration,
}

impl Default for PusherOptions {
    fn default() -> Self {
        PusherOptions {
            parallel: 4,
            idle: Duration::from_secs(10),
            poll: Duration::from_millis(20),
        }
    }
}

/// What a pusher did before it went idle.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PusherReport {
    /// Files archived (or found archived with the same bytes).
    pub archived: u64,
    /// Files whose push failed (each has its error marker).
    pub failed: u64,
}

/// Runs the pusher of `spool` for the WAL files in `wal_dir` until it has been idle for
/// `options.idle`. The caller holds the spool's [`PUSHER_LOCK`].
pub async fn run_pusher(
    wal: &WalArchive,
    wal_dir: &Path,
    spool: &Spool,
    options: &PusherOptions,
) -> Result<PusherReport, PgError> {
    spool.remove_leftovers()?;
    // Several files at once keep the cores busy: each is compressed by one thread.
    let one_at_a_time;
    let wal = if options.parallel > 1 {
        one_at_a_time = wal
            .clone()
            .with_compression_threads(CompressionThreads::One);
        &one_at_a_time
    } else {
        wal
    };
    let mut report = PusherReport::default();
    let mut in_flight: HashSet<String> = HashSet::new();
    let mut tasks: JoinSet<(String, bool)> = JoinSet::new();
    let mut idle_since = Instant::now();
    loop {
        let ready = ready_files(wal_dir)?;
        let marked = spool.marked()?;
        // Postgres took the success of these (their .ready is gone): their markers are done.
        let ready_set: HashSet<&String> = ready.iter().collect();
        for name in marked.iter() {
            if !ready_set.contains(name) && !in_flight.contains(name) {
                spool.remove_marker(name)?;
            }
        }
        for name in ready.iter().filter(|n| !marked.contains(*n)) {
            if in_flight.len() >= options.parallel.max(1) {
                break;
            }
            if in_flight.contains(name) {
                continue;
            }
            in_flight.insert(name.clone());
            let (wal, spool, path, name) =
                (wal.clone(), spool.clone(), wal_dir.join(name), name.clone());
            tasks.spawn(async move {
                let archived = push_one(&wal, &spool, &path, &name).await;
                (name, archived)
            });
        }
        if in_flight.is_empty() {
            if idle_since.elapsed() >= options.idle {
                return Ok(report);
            }
            tokio::time::sleep(options.poll).await;
            continue;
        }
        idle_since = Instant::now();
        tokio::select! {
            done = tasks.join_next() => {
                if let Some(done) = done {
                    let (name, archived) = done
                        .map_err(|e| PgError::Invalid(format!("a push task failed: {e}")))?;
                    in_flight.remove(&name);
                    if archived { report.archived += 1 } else { report.failed += 1 }
                }
            }
            _ = tokio::time::sleep(options.poll) => {}
        }
    }
}

/// Pushes one ready file and writes its marker; whether it is archived.
async fn push_one(wal: &WalArchive, spool: &Spool, path: &Path, name: &str) -> bool {
    let outcome = async {
        let pushed = wal.push_file(name, path).await?;
        Ok::<_, PgError>(PushMarker::Archived {
            size: pushed.size,
            blake3: pushed.blake3,
        })
    }
    .await;
    let marker = match outcome {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(name, error = %e, "asynchronous push failed");
            PushMarker::failed(&e.to_string())
        }
    };
    let archived = matches!(marker, PushMarker::Archived { .. });
    let (spool, name, m) = (spool.clone(), name.to_owned(), marker);
    let written =
        tokio::task::spawn_blocking(move || spool.write_marker(&name, &m).map_err(|e| (name, e)))
            .await;
    match written {
        Ok(Ok(())) => archived,
        Ok(Err((name, e))) => {
            // No marker: the caller waits on, and the next scan pushes the file again.
            tracing::warn!(name, error = %e, "cannot write a push marker");
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "writing a push marker failed");
            false
        }
    }
}

/// How a caller waits for its file.
#[derive(Clone, Debug)]
pub struct WaitOptions {
    /// Give up (unacknowledged) after this long.
    pub timeout: Duration,
    /// How often the marker is looked for.
    pub poll: Duration,
    /// How often the pusher is checked for (and started when none runs).
    pub check_pusher: Duration,
}

impl Default for WaitOptions {
    fn default() -> Self {
        WaitOptions {
            timeout: Duration::from_secs(120),
            poll: Duration::from_millis(5),
            check_pusher: Duration::from_millis(100),
        }
    }
}

/// Waits until the pusher of `spool` has archived the WAL file `path` (as [`PushMarker`]s
/// say), calling `ensure_pusher` at the start and every `options.check_pusher` while no
/// pusher holds the spool's lock. `Ok` only for a marker of exactly this file's bytes.
pub async fn await_archived(
    spool: &Spool,
    path: &Path,
    mut ensure_pusher: impl FnMut() -> Result<(), PgError>,
    options: &WaitOptions,
) -> Result<(), PgError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| PgError::Invalid(format!("{} has no file name", path.display())))?
        .to_owned();
    let owned: PathBuf = path.to_owned();
    let (digest, size) = tokio::task::spawn_blocking(move || hash_file(&owned))
        .await
        .map_err(|e| PgError::Invalid(format!("hashing {name}: {e}")))?
        .map_err(PgError::io("read", path.display()))?;
    let started = Instant::now();
    let mut checked: Option<Instant> = None;
    loop {
        match spool.read_marker(&name) {
            Ok(Some(PushMarker::Archived { size: s, blake3: b })) if s == size && b == digest => {
                return Ok(())
            }
            Ok(Some(PushMarker::Archived { .. })) => {
                // Of other bytes (a spool reused by another cluster): not ours, pushed anew.
                tracing::warn!(name, "a push marker of other bytes is stale; pushing again");
                spool.remove_marker(&name)?;
            }
            Ok(Some(PushMarker::Failed { message })) => {
                spool.remove_marker(&name)?;
                return Err(PgError::WalAsyncPush { name, message });
            }
            Ok(None) => {}
            Err(e @ PgError::SpoolDamaged { .. }) => {
                tracing::warn!(error = %e, "removing a damaged push marker; pushing again");
                spool.remove_marker(&name)?;
            }
            Err(e) => return Err(e),
        }
        if checked.is_none_or(|t| t.elapsed() >= options.check_pusher)
            && !spool.locked(PUSHER_LOCK)?
        {
            ensure_pusher()?;
            checked = Some(Instant::now());
        } else if checked.is_none() {
            checked = Some(Instant::now());
        }
        if started.elapsed() >= options.timeout {
            return Err(PgError::WalAsyncPush {
                name,
                message: format!(
                    "no pusher confirmed it within {} s (it is retried)",
                    options.timeout.as_secs()
                ),
            });
        }
        tokio::time::sleep(options.poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn wal_name() -> impl Strategy<Value = String> {
        prop_oneof![
            "[0-9A-F]{24}",
            "[0-9A-F]{8}\\.history",
            "[0-9A-F]{24}\\.partial",
        ]
    }

    fn marker() -> impl Strategy<Value = PushMarker> {
        prop_oneof![
            (any::<u64>(), "[0-9a-f]{64}")
                .prop_map(|(size, blake3)| PushMarker::Archived { size, blake3 }),
            ".{0,200}".prop_map(|m| PushMarker::failed(&m)),
        ]
    }

    proptest! {
        #[test]
        fn markers_decode_to_what_was_encoded(name in wal_name(), m in marker()) {
            let bytes = m.encode(&name);
            prop_assert_eq!(PushMarker::decode(&name, &bytes), Ok(m));
        }

        #[test]
        fn a_truncated_or_foreign_marker_is_refused(
            name in wal_name(), m in marker(), cut in any::<prop::sample::Index>(),
        ) {
            let bytes = m.encode(&name);
            let cut = cut.index(bytes.len());
            prop_assert!(PushMarker::decode(&name, &bytes[..cut]).is_err());
            prop_assert!(PushMarker::decode("000000010000000000000099.partial.x", &bytes).is_err());
        }

        #[test]
        fn any_bytes_decode_or_fail_without_panicking(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let _ = PushMarker::decode("000000010000000000000001", &bytes);
        }

        #[test]
        fn long_messages_are_cut_at_a_character_boundary(m in ".{0,3000}", pad in 0usize..4) {
            let long = format!("{}{m}{m}", "é".repeat(pad));
            let marker = PushMarker::failed(&long);
            let PushMarker::Failed { message } = &marker else { unreachable!() };
            prop_assert!(message.len() <= MAX_MESSAGE_BYTES);
            prop_assert!(long.starts_with(message.as_str()));
            prop_assert_eq!(PushMarker::decode("00000002.history", &marker.encode("00000002.history")), Ok(marker.clone()));
        }
    }

    #[test]
    fn a_digest_that_is_not_64_lowercase_hex_is_refused() {
        let name = "000000010000000000000001";
        for bad in ["ab".repeat(31), "AB".repeat(32), "zz".repeat(32)] {
            let m = PushMarker::Archived {
                size: 1,
                blake3: bad,
            };
            assert!(PushMarker::decode(name, &m.encode(name)).is_err());
        }
        let oversized = vec![b' '; MAX_MARKER_BYTES + 1];
        assert!(PushMarker::decode(name, &oversized).is_err());
    }

    #[test]
    fn ready_files_come_history_first_then_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join("archive_status");
        std::fs::create_dir(&status).unwrap();
        for f in [
            "000000020000000000000004.ready",
            "000000010000000000000003.ready",
            "00000002.history.ready",
            "000000010000000000000002.done",
            "junk.ready",
        ] {
            std::fs::write(status.join(f), b"").unwrap();
        }
        assert_eq!(
            ready_files(dir.path()).unwrap(),
            vec![
                "00000002.history",
                "000000010000000000000003",
                "000000020000000000000004"
            ]
        );
        assert!(is_ready(dir.path(), "000000010000000000000003"));
        assert!(!is_ready(dir.path(), "000000010000000000000002"));
    }
}
