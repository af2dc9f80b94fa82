//! Page checksum validation of a base backup's relation files, while their bytes flow to the
//! repository.
//!
//! When the cluster has data checksums on, [`crate::base::PgBaseSource`] wraps the reader of
//! every relation file it backs up (main, `_fsm`, `_vm` and `_init` forks and their `.N`
//! segments, under `base/`, `global/` and each tablespace) in a reader that judges each whole
//! 8 KiB page as it passes ([`crate::page_checksum::check_page`]); a trailing partial page
//! (a file being extended) is not judged. Nothing is buffered beyond the page being filled.
//!
//! A page that fails is read again from the file once the file has been read to its end: it may
//! have been written while it was read. It is corrupt only if the second read fails too (a page
//! that has since been rewritten, truncated away or whose file was dropped is not). Corrupt pages
//! are logged (`tracing::warn!`), counted and listed ([`PageCheckReport`]), at most
//! [`MAX_LISTED_CORRUPT_PAGES`] of them.
//!
//! Files that a backup reuses unchanged from the previous snapshot are not read, so not checked
//! again: as with pgBackRest's incremental backups, only the files copied are validated.

use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use resilience_core::source::EntryReader;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;

use crate::lsn::Lsn;
use crate::page_checksum::{check_page, PageVerdict, PAGE_SIZE};

/// At most this many corrupt pages are listed in a [`PageCheckReport`] (all are counted).
pub const MAX_LISTED_CORRUPT_PAGES: usize = 1000;

/// One page whose checksum is wrong.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CorruptPage {
    /// The relation segment file, relative to the data directory (`base/5/16384`,
    /// `base/5/16384.2`, `pg_tblspc/16390/PG_15_202209061/5/16391_fsm`).
    pub file: String,
    /// The block number within that file (the page at byte `block * 8192`).
    pub block: u32,
}

/// What page checksum validation found in one base backup.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageCheckReport {
    /// Whether pages were validated: the cluster has data checksums on (and 8 KiB pages).
    pub enabled: bool,
    /// Relation files read and validated.
    pub files: u64,
    /// Pages whose checksum was computed and compared.
    pub pages_checked: u64,
    /// Pages not judged: new (all zeroes or `pd_upper` 0) or changed since the backup started.
    pub pages_skipped: u64,
    /// Corrupt pages found (all of them, whether listed or not).
    pub corrupt_count: u64,
    /// The corrupt pages, sorted, at most [`MAX_LISTED_CORRUPT_PAGES`].
    pub corrupt_pages: Vec<CorruptPage>,
}

impl PageCheckReport {
    /// The corrupt pages in words: `base/5/16384 block 3, …` (and how many more are unlisted).
    pub fn describe_corrupt(&self) -> String {
        let mut s = self
            .corrupt_pages
            .iter()
            .map(|p| format!("{} block {}", p.file, p.block))
            .collect::<Vec<_>>()
            .join(", ");
        let unlisted = self
            .corrupt_count
            .saturating_sub(self.corrupt_pages.len() as u64);
        if unlisted > 0 {
            s.push_str(&format!(" and {unlisted} more"));
        }
        s
    }
}

/// A base backup refused because pages of the cluster are corrupt
/// ([`crate::base::PgBaseSource::fail_on_corrupt_page`]).
#[derive(Debug, thiserror::Error)]
#[error(
    "{} corrupt page(s) in the data directory {pgdata}: {}; the backup is refused (without \
     --fail-on-corrupt-page it would be kept, with the pages listed)",
    report.corrupt_count,
    report.describe_corrupt()
)]
pub struct CorruptPagesError {
    /// The cluster's data directory.
    pub pgdata: String,
    /// What the validation found.
    pub report: PageCheckReport,
}

/// The segment number of a relation file, or `None` for a file that holds no checksummed
/// pages (`pg_filenode.map`, `PG_VERSION`, `pg_control`, temporary relations…). `path` is
/// relative to the data directory.
pub fn relation_segment(path: &str) -> Option<u32> {
    let parts: Vec<&str> = path.split('/').collect();
    let name = match parts.as_slice() {
        ["base", db, name] | ["pg_tblspc", _, _, db, name] if all_digits(db) => name,
        ["global", name] => name,
        _ => return None,
    };
    let (stem, segment) = match name.split_once('.') {
        Some((stem, seg)) if all_digits(seg) => (stem, seg.parse().ok()?),
        Some(_) => return None,
        None => (*name, 0),
    };
    let node = match stem.split_once('_') {
        Some((node, "fsm" | "vm" | "init")) => node,
        Some(_) => return None,
        None => stem,
    };
    all_digits(node).then_some(segment)
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Validates the relation files of one base backup and gathers what it finds.
pub(crate) struct PageChecker {
    start_lsn: Lsn,
    segment_blocks: u32,
    report: Arc<Mutex<PageCheckReport>>,
    /// Held by every reader handed out; [`PageChecker::finish`] waits until all are dropped.
    alive: Option<mpsc::Sender<()>>,
    gone: mpsc::Receiver<()>,
}

impl PageChecker {
    /// A checker for a backup that started at `start_lsn`, of a cluster whose relation segment
    /// files hold `segment_blocks` pages.
    pub(crate) fn new(start_lsn: Lsn, segment_blocks: u32) -> Self {
        let (alive, gone) = mpsc::channel(1);
        PageChecker {
            start_lsn,
            segment_blocks,
            report: Arc::new(Mutex::new(PageCheckReport {
                enabled: true,
                ..Default::default()
            })),
            alive: Some(alive),
            gone,
        }
    }

    /// Wraps the reader of `file` (relative to the data directory; `abs` is where it is on disk)
    /// if it is a relation file; returns other readers as they are.
    pub(crate) fn wrap(&self, file: &str, abs: PathBuf, reader: EntryReader) -> EntryReader {
        let (Some(segment), Some(alive)) = (relation_segment(file), &self.alive) else {
            return reader;
        };
        Box::pin(PageReader {
            inner: reader,
            file: file.to_owned(),
            abs,
            first_block: segment.wrapping_mul(self.segment_blocks),
            start_lsn: self.start_lsn,
            page: Box::new([0; PAGE_SIZE]),
            filled: 0,
            next_block: 0,
            checked: 0,
            skipped: 0,
            suspects: Vec::new(),
            reread: None,
            done: false,
            report: self.report.clone(),
            _alive: alive.clone(),
        })
    }

    /// The report, once every reader handed out has been read to its end or dropped.
    pub(crate) async fn finish(mut self) -> PageCheckReport {
        self.alive = None;
        while self.gone.recv().await.is_some() {}
        let mut report = std::mem::take(&mut *self.report.lock().expect("report lock"));
        report.corrupt_pages.sort();
        report
    }
}

/// The reader of one relation file, judging its pages as they pass.
struct PageReader {
    inner: EntryReader,
    file: String,
    abs: PathBuf,
    /// The relation block number of the file's first page.
    first_block: u32,
    start_lsn: Lsn,
    /// The page being filled, when reads do not end on page boundaries.
    page: Box<[u8; PAGE_SIZE]>,
    filled: usize,
    /// The block (in the file) of the next whole page.
    next_block: u32,
    checked: u64,
    skipped: u64,
    /// Blocks (in the file) that failed the first read.
    suspects: Vec<u32>,
    /// Reading the suspects again, after the end of the file.
    reread: Option<tokio::task::JoinHandle<Vec<u32>>>,
    done: bool,
    report: Arc<Mutex<PageCheckReport>>,
    _alive: mpsc::Sender<()>,
}

impl PageReader {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.filled == 0 && data.len() >= PAGE_SIZE {
                let (page, rest) = data.split_at(PAGE_SIZE);
                let verdict = self.judge(page.try_into().expect("a whole page"));
                self.record(verdict);
                data = rest;
            } else {
                let take = (PAGE_SIZE - self.filled).min(data.len());
                self.page[self.filled..self.filled + take].copy_from_slice(&data[..take]);
                self.filled += take;
                data = &data[take..];
                if self.filled == PAGE_SIZE {
                    let verdict = self.judge(&self.page);
                    self.record(verdict);
                    self.filled = 0;
                }
            }
        }
    }

    /// The verdict on the next whole page of the file.
    fn judge(&self, page: &[u8; PAGE_SIZE]) -> PageVerdict {
        let block = self.first_block.wrapping_add(self.next_block);
        check_page(page, block, self.start_lsn)
    }

    fn record(&mut self, verdict: PageVerdict) {
        let block = self.next_block;
        self.next_block += 1;
        match verdict {
            PageVerdict::Valid => self.checked += 1,
            PageVerdict::New | PageVerdict::Recent => self.skipped += 1,
            PageVerdict::Corrupt { stored, computed } => {
                tracing::debug!(file = %self.file, block, stored, computed, "page checksum mismatch; reading it again");
                self.checked += 1;
                self.suspects.push(block);
            }
        }
    }

    /// Adds this file's findings to the backup's report.
    fn settle(&mut self, corrupt: Vec<u32>) {
        let mut report = self.report.lock().expect("report lock");
        report.files += 1;
        report.pages_checked += self.checked;
        report.pages_skipped += self.skipped;
        for block in corrupt {
            report.corrupt_count += 1;
            if report.corrupt_pages.len() < MAX_LISTED_CORRUPT_PAGES {
                tracing::warn!(file = %self.file, block, "corrupt page: its checksum is wrong (page {block} of {})", self.file);
                report.corrupt_pages.push(CorruptPage {
                    file: self.file.clone(),
                    block,
                });
            }
        }
    }
}

/// The suspects that are still corrupt when read again from the file.
fn reread(abs: PathBuf, suspects: Vec<u32>, first_block: u32, start_lsn: Lsn) -> Vec<u32> {
    let file = match std::fs::File::open(&abs) {
        Ok(f) => f,
        // Dropped meanwhile: nothing is left to restore wrongly.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!(file = %abs.display(), error = %e, "cannot read pages again to confirm checksum failures");
            return suspects;
        }
    };
    let mut page = Box::new([0u8; PAGE_SIZE]);
    suspects
        .into_iter()
        .filter(|&block| {
            match file.read_exact_at(&mut page[..], u64::from(block) * PAGE_SIZE as u64) {
                Ok(()) => matches!(
                    check_page(&page, first_block.wrapping_add(block), start_lsn),
                    PageVerdict::Corrupt { .. }
                ),
                // Truncated since (vacuum): the page is no longer part of the relation.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => false,
                Err(_) => true,
            }
        })
        .collect()
}

impl AsyncRead for PageReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(Ok(()));
            }
            if let Some(handle) = &mut this.reread {
                let confirmed = ready!(Pin::new(handle).poll(cx))
                    .unwrap_or_else(|_| std::mem::take(&mut this.suspects));
                this.reread = None;
                this.settle(confirmed);
                this.done = true;
                continue;
            }
            let before = buf.filled().len();
            ready!(this.inner.as_mut().poll_read(cx, buf))?;
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                this.feed(new);
                return Poll::Ready(Ok(()));
            }
            // The end of the file: confirm the failures by reading them again.
            if this.suspects.is_empty() {
                this.settle(Vec::new());
                this.done = true;
            } else {
                let (abs, first, lsn) = (this.abs.clone(), this.first_block, this.start_lsn);
                let suspects = this.suspects.clone();
                this.reread = Some(tokio::task::spawn_blocking(move || {
                    reread(abs, suspects, first, lsn)
                }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page_checksum::pg_checksum_page;
    use tokio::io::AsyncReadExt;

    #[test]
    fn relation_files_are_told_apart() {
        assert_eq!(relation_segment("base/5/16384"), Some(0));
        assert_eq!(relation_segment("base/5/16384.3"), Some(3));
        assert_eq!(relation_segment("base/5/16384_fsm"), Some(0));
        assert_eq!(relation_segment("base/5/16384_vm.1"), Some(1));
        assert_eq!(relation_segment("base/5/16384_init"), Some(0));
        assert_eq!(relation_segment("global/1262"), Some(0));
        assert_eq!(
            relation_segment("pg_tblspc/16390/PG_15_202209061/5/16391"),
            Some(0)
        );
        for other in [
            "global/pg_control",
            "global/pg_filenode.map",
            "base/5/pg_filenode.map",
            "base/5/PG_VERSION",
            "base/5/pg_internal.init",
            "base/5/t3_16384",
            "base/5/16384_xyz",
            "base/5/16384.x",
            "base/pgsql_tmp/pgsql_tmp123.0",
            "pg_wal/000000010000000000000001",
            "16384",
        ] {
            assert_eq!(relation_segment(other), None, "{other}");
        }
    }

    fn page(block: u32, lsn: u32) -> Vec<u8> {
        let mut p = [0u8; PAGE_SIZE];
        p[4..8].copy_from_slice(&lsn.to_le_bytes());
        p[14..16].copy_from_slice(&8000u16.to_le_bytes());
        p[8000..].fill(0xAB);
        let sum = pg_checksum_page(&p, block);
        p[8..10].copy_from_slice(&sum.to_le_bytes());
        p.to_vec()
    }

    /// A reader that hands out `data` `step` bytes at a time.
    struct Trickle(Vec<u8>, usize, usize);

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let (at, step) = (self.1, self.2);
            let n = step.min(self.0.len() - at).min(buf.remaining());
            buf.put_slice(&self.0[at..at + n]);
            self.1 += n;
            Poll::Ready(Ok(()))
        }
    }

    async fn run(file: &std::path::Path, name: &str, step: usize) -> (Vec<u8>, PageCheckReport) {
        let data = std::fs::read(file).unwrap();
        let checker = PageChecker::new(Lsn(0x5000), 4);
        let mut reader = checker.wrap(
            name,
            file.to_path_buf(),
            Box::pin(Trickle(data.clone(), 0, step)),
        );
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await.unwrap();
        drop(reader);
        (out, checker.finish().await)
    }

    #[tokio::test]
    async fn pages_are_judged_as_they_stream_in_any_read_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("16384.1");
        // Segment 1 of 4-block segments: relation blocks 4, 5, 6, 7.
        let mut data = [page(4, 0x100), page(5, 0x100), vec![0; PAGE_SIZE]].concat();
        let mut bad = page(7, 0x100);
        bad[4000] ^= 0x10;
        data.extend_from_slice(&bad);
        data.extend_from_slice(&page(8, 0x9000)[..100]); // a partial page being written
        std::fs::write(&path, &data).unwrap();
        for step in [1, 100, 4096, PAGE_SIZE, 3 * PAGE_SIZE + 7, 1 << 20] {
            let (out, report) = run(&path, "base/5/16384.1", step).await;
            assert_eq!(out, data, "bytes pass unchanged (step {step})");
            assert_eq!(report.files, 1);
            assert_eq!((report.pages_checked, report.pages_skipped), (3, 1));
            assert_eq!(report.corrupt_count, 1, "step {step}");
            assert_eq!(
                report.corrupt_pages,
                vec![CorruptPage {
                    file: "base/5/16384.1".into(),
                    block: 3
                }]
            );
            assert_eq!(report.describe_corrupt(), "base/5/16384.1 block 3");
        }
    }

    #[tokio::test]
    async fn a_failure_that_reads_well_the_second_time_is_not_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("16384");
        let mut torn = page(0, 0x100);
        torn[5000] ^= 1;
        let good = page(0, 0x100);
        std::fs::write(&path, &good).unwrap();
        // The stream saw a torn page; the file now holds the whole write.
        let checker = PageChecker::new(Lsn(0x5000), 4);
        let mut reader = checker.wrap(
            "base/5/16384",
            path.clone(),
            Box::pin(Trickle(torn, 0, 999)),
        );
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await.unwrap();
        drop(reader);
        let report = checker.finish().await;
        assert_eq!((report.pages_checked, report.corrupt_count), (1, 0));
        // A file dropped meanwhile has nothing left to be corrupt.
        let gone = dir.path().join("16385");
        let mut bad = page(0, 0x100);
        bad[5000] ^= 1;
        let checker = PageChecker::new(Lsn(0x5000), 4);
        let mut reader = checker.wrap("base/5/16385", gone, Box::pin(Trickle(bad, 0, PAGE_SIZE)));
        reader.read_to_end(&mut Vec::new()).await.unwrap();
        drop(reader);
        assert_eq!(checker.finish().await.corrupt_count, 0);
    }

    #[tokio::test]
    async fn other_files_pass_unwrapped_and_unread_readers_do_not_block_the_report() {
        let checker = PageChecker::new(Lsn(0x5000), 4);
        let data = vec![7u8; 3 * PAGE_SIZE];
        let mut plain = checker.wrap(
            "base/5/PG_VERSION",
            PathBuf::from("/nonexistent"),
            Box::pin(Trickle(data.clone(), 0, 10_000)),
        );
        let mut out = Vec::new();
        plain.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, data);
        // Reused from the parent snapshot: dropped without being read.
        let unread = checker.wrap(
            "base/5/1259",
            PathBuf::from("/nonexistent"),
            Box::pin(Trickle(data, 0, 10)),
        );
        drop(unread);
        let report = checker.finish().await;
        assert!(report.enabled);
        assert_eq!((report.files, report.pages_checked), (0, 0));
    }

    #[tokio::test]
    async fn a_file_of_corrupt_pages_is_listed_up_to_the_bound_and_counted_in_full() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("16384");
        let total = MAX_LISTED_CORRUPT_PAGES + 5;
        let mut data = Vec::with_capacity(total * PAGE_SIZE);
        for _ in 0..total {
            let mut p = page(0, 0x100);
            p[6000] ^= 0x20;
            data.extend_from_slice(&p);
        }
        std::fs::write(&path, &data).unwrap();
        let (_, report) = run(&path, "base/5/16384", 1 << 20).await;
        assert_eq!(report.corrupt_count, total as u64);
        assert_eq!(report.corrupt_pages.len(), MAX_LISTED_CORRUPT_PAGES);
        assert_eq!(report.corrupt_pages[7].block, 7);
        assert!(report.describe_corrupt().ends_with(" and 5 more"));
    }

    #[test]
    fn the_list_is_bounded_and_the_rest_counted() {
        let report = PageCheckReport {
            enabled: true,
            corrupt_count: 5,
            corrupt_pages: vec![CorruptPage {
                file: "global/1262".into(),
                block: 0,
            }],
            ..Default::default()
        };
        assert_eq!(report.describe_corrupt(), "global/1262 block 0 and 4 more");
        let e = CorruptPagesError {
            pgdata: "/pg".into(),
            report,
        };
        assert!(e
            .to_string()
            .starts_with("5 corrupt page(s) in the data directory /pg: global/1262 block 0"));
    }
}
