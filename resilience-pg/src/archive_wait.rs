//! Waiting, after `pg_backup_stop(false)`, until Postgres has archived the WAL a base backup
//! needs: the segment holding the backup's stop point and the backup history file.
//!
//! `pg_backup_stop(true)` waits for the same two files itself, but it looks again only once a
//! second, so every base backup paid up to a second after its WAL was already archived. Here
//! the archiver's own record is read instead, as `XLogArchiveIsBusy` reads it: a file is
//! archived once `archive_status/<name>.done` exists, or once it is gone from `pg_wal` with no
//! `.ready` left (archived, then recycled). The wait looks every few milliseconds at first and
//! fails after a timeout naming the file, where Postgres would wait for ever.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use resilience_core::source::AdapterError;

use crate::lsn::{Lsn, SegmentName};

/// How long a base backup waits by default for Postgres to archive its WAL.
pub const DEFAULT_ARCHIVE_TIMEOUT: Duration = Duration::from_secs(60);

/// The first pause between two looks; each later one doubles, up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(5);
const MAX_PAUSE: Duration = Duration::from_millis(100);

/// The names of the WAL files a base backup from `start` to `stop` on `timeline` cannot be
/// restored without, as `pg_backup_stop` names them: the segment holding the last byte before
/// `stop`, and the backup history file (`<start segment>.<offset>.backup`).
pub fn backup_wal_files(timeline: u32, start: Lsn, stop: Lsn, segment_size: u64) -> [String; 2] {
    let last = SegmentName::containing(timeline, Lsn(stop.0.saturating_sub(1)), segment_size);
    let first = SegmentName::containing(timeline, start, segment_size);
    [
        last.file_name(segment_size),
        format!(
            "{}.{:08X}.backup",
            first.file_name(segment_size),
            start.0 % segment_size
        ),
    ]
}

/// Whether Postgres still has to archive `name` from the WAL directory `pg_wal`. A look that
/// fails (other than "no such file") is an error, never taken for "archived".
pub fn is_busy(pg_wal: &Path, name: &str) -> std::io::Result<bool> {
    let status = pg_wal.join("archive_status");
    if status.join(format!("{name}.done")).try_exists()? {
        return Ok(false);
    }
    if status.join(format!("{name}.ready")).try_exists()? {
        return Ok(true);
    }
    // Neither mark: archived and recycled if the file is gone, else not yet marked ready.
    pg_wal.join(name).try_exists()
}

/// Waits until Postgres has archived every one of `names` from `pg_wal`, or fails after
/// `timeout` naming the first one still waiting.
pub async fn wait_archived(
    pg_wal: PathBuf,
    names: &[String],
    timeout: Duration,
) -> Result<(), AdapterError> {
    let started = Instant::now();
    let mut pause = FIRST_PAUSE;
    loop {
        let dir = pg_wal.clone();
        let list = names.to_vec();
        let waiting = tokio::task::spawn_blocking(move || {
            for name in list {
                match is_busy(&dir, &name) {
                    Ok(false) => {}
                    Ok(true) => return Ok(Some(name)),
                    Err(e) => return Err(AdapterError::new("wait for archiving", name, e)),
                }
            }
            Ok(None)
        })
        .await
        .map_err(|e| AdapterError::new("wait for archiving", "pg_wal", e))??;
        let Some(name) = waiting else {
            return Ok(());
        };
        if started.elapsed() >= timeout {
            return Err(AdapterError::msg(
                "wait for archiving",
                name,
                format!(
                    "Postgres has not archived this WAL file {:.0?} after the base backup \
                     stopped, and the backup cannot be restored without it: check \
                     archive_command and the server log",
                    started.elapsed()
                ),
            ));
        }
        tokio::time::sleep(pause.min(timeout.saturating_sub(started.elapsed()))).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    #[test]
    fn the_files_are_named_as_postgres_names_them() {
        // A backup started at 0/2000028 and stopped at 0/2000138 on timeline 1.
        let [last, history] = backup_wal_files(1, Lsn(0x0200_0028), Lsn(0x0200_0138), SEG);
        assert_eq!(last, "000000010000000000000002");
        assert_eq!(history, "000000010000000000000002.00000028.backup");
        // A stop point at a segment's first byte: the WAL it needs ends in the segment before.
        let [last, _] = backup_wal_files(3, Lsn(0x1_0000_0028), Lsn(0x1_0300_0000), SEG);
        assert_eq!(last, "000000030000000100000002");
    }

    #[test]
    fn a_file_is_busy_until_postgres_marks_it_done_or_recycles_it() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path();
        std::fs::create_dir(wal.join("archive_status")).unwrap();
        let name = "000000010000000000000002";
        std::fs::write(wal.join(name), b"wal").unwrap();
        assert!(is_busy(wal, name).unwrap(), "written, not yet marked ready");
        std::fs::write(
            wal.join("archive_status").join(format!("{name}.ready")),
            b"",
        )
        .unwrap();
        assert!(is_busy(wal, name).unwrap(), "ready");
        std::fs::rename(
            wal.join("archive_status").join(format!("{name}.ready")),
            wal.join("archive_status").join(format!("{name}.done")),
        )
        .unwrap();
        assert!(!is_busy(wal, name).unwrap(), "done");
        std::fs::remove_file(wal.join("archive_status").join(format!("{name}.done"))).unwrap();
        std::fs::remove_file(wal.join(name)).unwrap();
        assert!(!is_busy(wal, name).unwrap(), "archived and recycled");
    }

    #[tokio::test]
    async fn a_status_directory_that_cannot_be_read_fails_the_wait_never_passes_it() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().to_path_buf();
        // `archive_status` a file, not a directory: every look into it fails (ENOTDIR), as an
        // unreadable one would; the segment itself is gone, which alone would read "archived".
        std::fs::write(wal.join("archive_status"), b"").unwrap();
        let names = vec!["000000010000000000000002".to_owned()];
        assert!(is_busy(&wal, &names[0]).is_err());
        let err = wait_archived(wal, &names, Duration::from_secs(30))
            .await
            .expect_err("a wait that could not look passed");
        assert!(err.to_string().contains(&names[0]), "{err}");
    }

    #[tokio::test]
    async fn the_wait_ends_when_the_archiver_marks_the_files_and_fails_naming_one_it_never_does() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().to_path_buf();
        std::fs::create_dir(wal.join("archive_status")).unwrap();
        let names = vec!["000000010000000000000002".to_owned()];
        let ready = wal.join("archive_status/000000010000000000000002.ready");
        std::fs::write(&ready, b"").unwrap();

        let err = wait_archived(wal.clone(), &names, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(err.to_string().contains(&names[0]), "{err}");

        let marker = {
            let ready = ready.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                std::fs::rename(&ready, ready.with_extension("done")).unwrap();
            })
        };
        wait_archived(wal.clone(), &names, Duration::from_secs(30))
            .await
            .unwrap();
        assert!(
            !ready.exists(),
            "the wait ended before the file was marked done"
        );
        marker.await.unwrap();
    }
}
