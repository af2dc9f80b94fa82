//! Reads the records of one WAL segment, enough to summarize it: the cluster it belongs to,
//! its commit times and its named restore points.
//!
//! The summary is what lets `pg check` state the latest recoverable time exactly and lets
//! `pg restore --target-name` pick the base backup that precedes a restore point without
//! replaying anything. Only what Postgres' own reader checks is trusted: page headers must carry
//! the expected page address (recycled segments hold stale pages after the valid end), and every
//! record's CRC-32C must match; reading stops at the first record that fails either check.
//!
//! Layout (Postgres 10 and later): 8 KiB pages, each with a header (40 bytes on a segment's first
//! page, 24 on the others); records aligned to 8 bytes, each a 24-byte header (`xl_tot_len`,
//! `xl_xid`, `xl_prev`, `xl_info`, `xl_rmid`, 2 padding, `xl_crc`), block headers, block data
//! and main data last; a record that does not fit continues on the next page after its header.

use std::io::Read;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::lsn::Lsn;

const LONG_HEADER: usize = 40;
const SHORT_HEADER: usize = 24;
const RECORD_HEADER: usize = 24;
const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
const XLP_LONG_HEADER: u16 = 0x0002;
const RM_XLOG_ID: u8 = 0;
const RM_XACT_ID: u8 = 1;
const XLOG_RESTORE_POINT: u8 = 0x70;
const XLOG_XACT_OPMASK: u8 = 0x70;
const XLOG_XACT_COMMIT: u8 = 0x00;
const XLOG_XACT_COMMIT_PREPARED: u8 = 0x30;
/// Seconds from the Unix epoch to Postgres' epoch (2000-01-01 UTC).
const PG_EPOCH_UNIX: i64 = 946_684_800;

/// A named restore point (`pg_create_restore_point`) found in the WAL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestorePoint {
    /// Its name.
    pub name: String,
    /// The position of its record: recovery to it stops here.
    pub lsn: Lsn,
    /// When it was created.
    pub time: DateTime<Utc>,
}

/// What one segment holds, as far as recovery targets are concerned.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentSummary {
    /// The cluster's system identifier, from the segment's first page.
    pub system_id: u64,
    /// The timeline in the first page's header.
    pub timeline: u32,
    /// The segment size the cluster was created with.
    pub segment_size: u64,
    /// Records read.
    pub records: u64,
    /// The commit time of the first and last transaction that commits in this segment.
    pub first_commit: Option<DateTime<Utc>>,
    /// See `first_commit`.
    pub last_commit: Option<DateTime<Utc>>,
    /// Restore points created in this segment.
    pub restore_points: Vec<RestorePoint>,
}

/// Why a segment could not be read at all (individual bad records just end the scan).
#[derive(Debug, thiserror::Error)]
#[error("{name} is not a WAL segment: {reason}")]
pub struct NotASegment {
    /// The WAL file.
    pub name: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Reads a whole segment, the WAL file `name`, and summarizes it.
pub fn summarize(name: &str, segment: &[u8]) -> Result<SegmentSummary, NotASegment> {
    summarize_read(name, segment.len() as u64, segment)
}

/// Summarizes the WAL file `name`, `len` bytes long, read from `source` one page at a time:
/// memory stays at one page and one record whatever the segment size. Reading stops where
/// the valid records end, so `source` may not be read to its end; a read that fails ends the
/// scan as a damaged record does (a caller that must know wraps `source` to see the error).
pub fn summarize_read(
    name: &str,
    len: u64,
    mut source: impl Read,
) -> Result<SegmentSummary, NotASegment> {
    let not = |reason: String| NotASegment {
        name: name.to_owned(),
        reason,
    };
    let mut head = [0u8; LONG_HEADER];
    let read = read_full(&mut source, &mut head);
    let header =
        PageHeader::parse(&head[..read]).ok_or_else(|| not(format!("{len} bytes, too short")))?;
    if header.info & XLP_LONG_HEADER == 0 || read < LONG_HEADER {
        return Err(not("the first page has no long header".into()));
    }
    let field_u32 = |at: usize| u32::from_le_bytes(head[at..at + 4].try_into().expect("4"));
    let system_id = u64::from_le_bytes(head[24..32].try_into().expect("8"));
    let segment_size = u64::from(field_u32(32));
    let page_size = field_u32(36) as usize;
    if !(1024..=65536).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(not(format!("page size {page_size}")));
    }
    if segment_size != len {
        return Err(not(format!(
            "header says {segment_size} bytes, the file has {len}"
        )));
    }
    let Ok(len) = usize::try_from(len) else {
        return Err(not(format!("{len} bytes, too long")));
    };
    // Every position read is the first page's address plus an offset in the segment.
    if header.page_addr.0.checked_add(segment_size).is_none() {
        return Err(not(format!(
            "its first page's address {} is past the end of the WAL",
            header.page_addr
        )));
    }
    let mut reader = Reader {
        source,
        len,
        page: head.to_vec(),
        page_at: 0,
        page_size,
        start_lsn: header.page_addr,
        magic: header.magic,
        pos: LONG_HEADER,
    };
    reader.top_up_page();
    let mut summary = SegmentSummary {
        system_id,
        timeline: header.timeline,
        segment_size,
        ..Default::default()
    };
    if header.info & XLP_FIRST_IS_CONTRECORD != 0 && !reader.skip(header.rem_len as usize) {
        return Ok(summary);
    }
    let mut record = Vec::new();
    while let Some(lsn) = reader.next_record(&mut record) {
        summary.records += 1;
        inspect(lsn, &record, &mut summary);
    }
    Ok(summary)
}

/// Reads into `buf` until it is full, the source ends or a read fails; the bytes read.
fn read_full(source: &mut impl Read, buf: &mut [u8]) -> usize {
    let mut filled = 0;
    while filled < buf.len() {
        match source.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    filled
}

fn inspect(lsn: Lsn, record: &[u8], summary: &mut SegmentSummary) {
    let info = record[16];
    let rmid = record[17];
    let Some(main) = main_data(record) else {
        return;
    };
    let timestamp = |b: &[u8]| -> Option<DateTime<Utc>> {
        let micros = i64::from_le_bytes(b.get(0..8)?.try_into().ok()?);
        let secs = micros.div_euclid(1_000_000) + PG_EPOCH_UNIX;
        let nanos = (micros.rem_euclid(1_000_000) * 1000) as u32;
        Utc.timestamp_opt(secs, nanos).single()
    };
    if rmid == RM_XACT_ID
        && matches!(
            info & XLOG_XACT_OPMASK,
            XLOG_XACT_COMMIT | XLOG_XACT_COMMIT_PREPARED
        )
    {
        if let Some(t) = timestamp(main) {
            summary.first_commit.get_or_insert(t);
            summary.last_commit = Some(t);
        }
    } else if rmid == RM_XLOG_ID && info & 0xF0 == XLOG_RESTORE_POINT {
        if let (Some(time), Some(name)) = (timestamp(main), main.get(8..)) {
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            summary.restore_points.push(RestorePoint {
                name: String::from_utf8_lossy(name).into_owned(),
                lsn,
                time,
            });
        }
    }
}

/// The record's main data: its last bytes, after the block headers say how many.
fn main_data(record: &[u8]) -> Option<&[u8]> {
    let total = record.len();
    let mut p = RECORD_HEADER;
    let mut data_total = 0usize;
    let u16_at = |p: usize| -> Option<usize> {
        Some(u16::from_le_bytes(record.get(p..p + 2)?.try_into().ok()?) as usize)
    };
    let mut main_len = 0usize;
    // The block headers' lengths are the record's own: `p` may step past its end.
    while total.checked_sub(p)? > data_total {
        let id = *record.get(p)?;
        p += 1;
        match id {
            255 => {
                main_len = *record.get(p)? as usize;
                break;
            }
            254 => {
                main_len = u32::from_le_bytes(record.get(p..p + 4)?.try_into().ok()?) as usize;
                break;
            }
            253 => p += 2,
            252 => p += 4,
            0..=32 => {
                let fork_flags = *record.get(p)?;
                data_total += u16_at(p + 1)?;
                p += 3;
                if fork_flags & 0x10 != 0 {
                    let image_len = u16_at(p)?;
                    let image_info = *record.get(p + 4)?;
                    p += 5;
                    let compressed = image_info & (0x04 | 0x08 | 0x10) != 0;
                    if image_info & 0x01 != 0 && compressed {
                        p += 2;
                    }
                    data_total += image_len;
                }
                if fork_flags & 0x80 == 0 {
                    p += 12;
                }
                p += 4;
            }
            _ => return None,
        }
    }
    record.get(total.checked_sub(main_len)?..)
}

struct PageHeader {
    magic: u16,
    info: u16,
    timeline: u32,
    page_addr: Lsn,
    rem_len: u32,
}

impl PageHeader {
    /// The header at the start of `b` (a page's first bytes).
    fn parse(b: &[u8]) -> Option<Self> {
        let b = b.get(..SHORT_HEADER)?;
        Some(PageHeader {
            magic: u16::from_le_bytes([b[0], b[1]]),
            info: u16::from_le_bytes([b[2], b[3]]),
            timeline: u32::from_le_bytes(b[4..8].try_into().ok()?),
            page_addr: Lsn(u64::from_le_bytes(b[8..16].try_into().ok()?)),
            rem_len: u32::from_le_bytes(b[16..20].try_into().ok()?),
        })
    }
}

/// Reads a segment's records in order, holding one page of it.
struct Reader<R> {
    source: R,
    /// The segment's length.
    len: usize,
    /// The bytes of the page at `page_at` that the source held (fewer at its end).
    page: Vec<u8>,
    page_at: usize,
    page_size: usize,
    start_lsn: Lsn,
    magic: u16,
    /// Offset of the next byte to read; never inside a page header.
    pos: usize,
}

impl<R: Read> Reader<R> {
    /// The offset where the current page ends (`pos` must be inside a page, not at its start).
    fn page_end(&self) -> usize {
        (self.pos / self.page_size + 1) * self.page_size
    }

    /// Reads the rest of the current page (as far as the segment goes).
    fn top_up_page(&mut self) {
        let want = self.page_size.min(self.len.saturating_sub(self.page_at));
        let have = self.page.len();
        if have < want {
            self.page.resize(want, 0);
            let read = read_full(&mut self.source, &mut self.page[have..]);
            self.page.truncate(have + read);
        }
    }

    /// The bytes `from..to`, which lie in one page at or after the current one: pages are read
    /// in order, never again.
    fn bytes(&mut self, from: usize, to: usize) -> Option<&[u8]> {
        let page_at = from / self.page_size * self.page_size;
        if page_at < self.page_at {
            return None;
        }
        while self.page_at < page_at {
            // The current page is whole (or the source ended), so the next is next in it.
            if self.page.len() < self.page_size {
                return None;
            }
            self.page_at += self.page_size;
            self.page.clear();
            self.top_up_page();
        }
        self.page.get(from - page_at..to.checked_sub(page_at)?)
    }

    /// Steps over the header of the page starting at `at`, checking it; `continuation` is the
    /// number of bytes of a record still expected there (0 when a new record starts).
    fn enter_page(&mut self, at: usize, continuation: usize) -> bool {
        let Some(h) = self
            .bytes(at, at + SHORT_HEADER)
            .and_then(PageHeader::parse)
        else {
            return false;
        };
        let expected_addr = Lsn(self.start_lsn.0 + at as u64);
        if h.magic != self.magic || h.page_addr != expected_addr {
            return false;
        }
        let is_continuation = h.info & XLP_FIRST_IS_CONTRECORD != 0;
        if continuation > 0 && (!is_continuation || h.rem_len as usize != continuation) {
            return false;
        }
        self.pos = at + SHORT_HEADER;
        true
    }

    /// Skips the rest of a record that began in an earlier segment.
    fn skip(&mut self, mut remaining: usize) -> bool {
        loop {
            let end = self.page_end();
            if remaining <= end - self.pos {
                self.pos = align8(self.pos + remaining);
                return true;
            }
            remaining -= end - self.pos;
            if !self.enter_page(end, remaining) {
                return false;
            }
        }
    }

    /// Reads the next record into `record` (its earlier content replaced; one buffer serves
    /// every record) and returns its position.
    fn next_record(&mut self, record: &mut Vec<u8>) -> Option<Lsn> {
        if self.pos.is_multiple_of(self.page_size) && !self.enter_page(self.pos, 0) {
            return None;
        }
        let start = self.pos;
        let total = u32::from_le_bytes(self.bytes(start, start + 4)?.try_into().ok()?) as usize;
        // A record longer than what is left of the segment cannot complete in it (its
        // continuation would need another segment): refused before anything is allocated.
        if !(RECORD_HEADER..=1 << 30).contains(&total) || total > self.len - start {
            return None;
        }
        record.clear();
        record.reserve(total);
        loop {
            let end = self.page_end();
            let take = (total - record.len()).min(end - self.pos);
            let pos = self.pos;
            record.extend_from_slice(self.bytes(pos, pos + take)?);
            self.pos += take;
            if record.len() == total {
                break;
            }
            if !self.enter_page(end, total - record.len()) {
                return None;
            }
        }
        self.pos = align8(self.pos);
        if !crc_matches(record) {
            return None;
        }
        Some(Lsn(self.start_lsn.0 + start as u64))
    }
}

fn align8(n: usize) -> usize {
    (n + 7) & !7
}

fn crc_matches(record: &[u8]) -> bool {
    let stored = u32::from_le_bytes(record[20..24].try_into().expect("4"));
    let crc = crc32c::crc32c(&record[RECORD_HEADER..]);
    crc32c::crc32c_append(crc, &record[..20]) == stored
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Lays records out in pages the way Postgres does, to test the reader against.
    pub(crate) struct SegmentWriter {
        pub seg: Vec<u8>,
        page_size: usize,
        start: u64,
        pos: usize,
    }

    impl SegmentWriter {
        pub fn new(
            system_id: u64,
            timeline: u32,
            segment_size: usize,
            page_size: usize,
            start: u64,
        ) -> Self {
            let mut w = SegmentWriter {
                seg: vec![0; segment_size],
                page_size,
                start,
                pos: 0,
            };
            w.page_header(0, 0, timeline);
            w.seg[24..32].copy_from_slice(&system_id.to_le_bytes());
            w.seg[32..36].copy_from_slice(&(segment_size as u32).to_le_bytes());
            w.seg[36..40].copy_from_slice(&(page_size as u32).to_le_bytes());
            w.pos = LONG_HEADER;
            w
        }

        fn page_header(&mut self, at: usize, rem: usize, timeline: u32) {
            let mut info = if rem > 0 { XLP_FIRST_IS_CONTRECORD } else { 0 };
            if at == 0 {
                info |= XLP_LONG_HEADER;
            }
            self.seg[at..at + 2].copy_from_slice(&0xD110u16.to_le_bytes());
            self.seg[at + 2..at + 4].copy_from_slice(&info.to_le_bytes());
            self.seg[at + 4..at + 8].copy_from_slice(&timeline.to_le_bytes());
            self.seg[at + 8..at + 16].copy_from_slice(&(self.start + at as u64).to_le_bytes());
            self.seg[at + 16..at + 20].copy_from_slice(&(rem as u32).to_le_bytes());
        }

        /// Appends a record with `main` data and `block_data` bytes of one block reference;
        /// returns its LSN, or `None` if the segment is full.
        pub fn record(
            &mut self,
            rmid: u8,
            info: u8,
            block_data: usize,
            main: &[u8],
        ) -> Option<u64> {
            let mut body = Vec::new();
            if block_data > 0 {
                body.push(0u8); // block id 0
                body.push(0u8); // fork flags: no image, not same rel
                body.extend_from_slice(&(block_data as u16).to_le_bytes());
                body.extend_from_slice(&[7u8; 12]); // relfilenode
                body.extend_from_slice(&3u32.to_le_bytes()); // block number
            }
            if main.len() < 256 {
                body.push(255);
                body.push(main.len() as u8);
            } else {
                body.push(254);
                body.extend_from_slice(&(main.len() as u32).to_le_bytes());
            }
            body.extend(std::iter::repeat_n(0xABu8, block_data));
            body.extend_from_slice(main);
            self.raw_record(rmid, info, &body)
        }

        /// Appends a record whose body (block headers, data, main data) is `body`, with its
        /// length and CRC right; returns its LSN, or `None` if the segment is full.
        pub fn raw_record(&mut self, rmid: u8, info: u8, body: &[u8]) -> Option<u64> {
            let total = RECORD_HEADER + body.len();
            let mut rec = vec![0u8; RECORD_HEADER];
            rec[0..4].copy_from_slice(&(total as u32).to_le_bytes());
            rec[16] = info;
            rec[17] = rmid;
            rec.extend_from_slice(body);
            let crc = crc32c::crc32c_append(crc32c::crc32c(&rec[RECORD_HEADER..]), &rec[..20]);
            rec[20..24].copy_from_slice(&crc.to_le_bytes());
            if self.pos.is_multiple_of(self.page_size) {
                if self.pos >= self.seg.len() {
                    return None;
                }
                let at = self.pos;
                self.page_header(at, 0, 1);
                self.pos += SHORT_HEADER;
            }
            let lsn = self.start + self.pos as u64;
            let mut written = 0;
            while written < rec.len() {
                let page_end = (self.pos / self.page_size + 1) * self.page_size;
                let n = (rec.len() - written).min(page_end - self.pos);
                self.seg[self.pos..self.pos + n].copy_from_slice(&rec[written..written + n]);
                written += n;
                self.pos += n;
                if written < rec.len() {
                    if self.pos >= self.seg.len() {
                        return None;
                    }
                    let at = self.pos;
                    self.page_header(at, rec.len() - written, 1);
                    self.pos += SHORT_HEADER;
                }
            }
            self.pos = align8(self.pos);
            Some(lsn)
        }
    }

    /// Hands out `data` in reads of the given sizes, in turn: pages split across reads.
    struct Pieces<'a> {
        data: &'a [u8],
        sizes: Vec<usize>,
        next: usize,
    }

    impl std::io::Read for Pieces<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let size = self.sizes[self.next % self.sizes.len()];
            self.next += 1;
            let n = size.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn a_failed_read_ends_the_scan_without_a_panic() {
        struct Failing<'a>(&'a [u8]);
        impl std::io::Read for Failing<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0.is_empty() {
                    return Err(std::io::Error::other("disk gone"));
                }
                let n = buf.len().min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut w = SegmentWriter::new(1, 1, 1 << 16, 8192, 0);
        while w
            .record(RM_XACT_ID, XLOG_XACT_COMMIT, 100, &pg_time(1))
            .is_some()
        {}
        let whole = summarize("seg", &w.seg).unwrap().records;
        let cut = summarize_read("seg", 1 << 16, Failing(&w.seg[..20_000])).unwrap();
        assert!(
            cut.records > 0 && cut.records < whole,
            "{} of {whole}",
            cut.records
        );
    }

    fn pg_time(micros: i64) -> Vec<u8> {
        micros.to_le_bytes().to_vec()
    }

    #[test]
    fn finds_commits_and_restore_points() {
        let mut w = SegmentWriter::new(42, 1, 1 << 16, 8192, 3 << 24);
        w.record(RM_XACT_ID, XLOG_XACT_COMMIT, 0, &pg_time(1_000_000))
            .unwrap();
        let mut rp = pg_time(2_000_000);
        let mut name = b"before-accident".to_vec();
        name.resize(64, 0);
        rp.extend_from_slice(&name);
        let rp_lsn = w.record(RM_XLOG_ID, XLOG_RESTORE_POINT, 0, &rp).unwrap();
        w.record(RM_XACT_ID, XLOG_XACT_COMMIT, 9000, &pg_time(3_000_000))
            .unwrap();
        let s = summarize("seg", &w.seg).unwrap();
        assert_eq!(s.system_id, 42);
        assert_eq!(s.records, 3);
        let t = |m: i64| Utc.timestamp_opt(PG_EPOCH_UNIX + m, 0).unwrap();
        assert_eq!(s.first_commit, Some(t(1)));
        assert_eq!(s.last_commit, Some(t(3)));
        assert_eq!(s.restore_points.len(), 1);
        assert_eq!(s.restore_points[0].name, "before-accident");
        assert_eq!(s.restore_points[0].lsn, Lsn(rp_lsn));
    }

    #[test]
    fn a_damaged_record_ends_the_scan() {
        let mut w = SegmentWriter::new(1, 1, 1 << 16, 8192, 0);
        w.record(RM_XACT_ID, XLOG_XACT_COMMIT, 0, &pg_time(1))
            .unwrap();
        let second = w
            .record(RM_XACT_ID, XLOG_XACT_COMMIT, 0, &pg_time(2))
            .unwrap() as usize;
        w.seg[second + RECORD_HEADER + 3] ^= 1;
        assert_eq!(summarize("seg", &w.seg).unwrap().records, 1);
    }

    #[test]
    fn rejects_what_is_not_a_segment() {
        assert!(summarize("seg", b"short").is_err());
        assert!(summarize("seg", &vec![0u8; 1 << 16]).is_err());
        let mut w = SegmentWriter::new(1, 1, 1 << 16, 8192, 0);
        w.seg.truncate(1 << 15);
        assert!(summarize("seg", &w.seg).is_err());
    }

    proptest! {
        #[test]
        fn reads_back_what_was_written(
            records in proptest::collection::vec((any::<bool>(), 0usize..20_000, 0i64..1 << 40), 1..40),
        ) {
            let mut w = SegmentWriter::new(7, 3, 1 << 18, 8192, 5 << 24);
            let mut expected = Vec::new();
            for (commit, block, time) in records {
                let (rmid, info, main) = if commit {
                    (RM_XACT_ID, XLOG_XACT_COMMIT, pg_time(time))
                } else {
                    (RM_XACT_ID, 0x50, vec![1u8; 300])
                };
                match w.record(rmid, info, block, &main) {
                    Some(_) => if commit { expected.push(time) },
                    None => break,
                }
            }
            let s = summarize("seg", &w.seg).unwrap();
            let t = |m: i64| Utc.timestamp_opt(PG_EPOCH_UNIX + m.div_euclid(1_000_000), (m.rem_euclid(1_000_000) * 1000) as u32).unwrap();
            prop_assert_eq!(s.first_commit, expected.first().map(|&m| t(m)));
            prop_assert_eq!(s.last_commit, expected.last().map(|&m| t(m)));
        }

        #[test]
        fn reading_in_pieces_finds_what_the_whole_segment_holds(
            records in proptest::collection::vec((0u8..3, 0usize..20_000, 0i64..1 << 40), 1..40),
            pieces in proptest::collection::vec(1usize..10_000, 1..20),
        ) {
            let mut w = SegmentWriter::new(7, 3, 1 << 18, 8192, 5 << 24);
            for (kind, block, time) in records {
                let (rmid, info, main) = match kind {
                    0 => (RM_XACT_ID, XLOG_XACT_COMMIT, pg_time(time)),
                    1 => (RM_XLOG_ID, XLOG_RESTORE_POINT, [pg_time(time), b"point\0".to_vec()].concat()),
                    _ => (RM_XACT_ID, 0x50, vec![1u8; 300]),
                };
                if w.record(rmid, info, block, &main).is_none() {
                    break;
                }
            }
            let whole = summarize("seg", &w.seg).unwrap();
            let reader = Pieces { data: &w.seg, sizes: pieces, next: 0 };
            let read = summarize_read("seg", w.seg.len() as u64, reader).unwrap();
            prop_assert_eq!(read, whole);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..70_000)) {
            let _ = summarize("seg", &bytes);
        }
    }
}
