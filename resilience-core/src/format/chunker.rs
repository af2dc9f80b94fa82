//! Content-defined chunking with FastCDC (the 2020 variant, normalization level 1).
//!
//! The gear table is seeded from the repository's key set, so chunk boundaries (and therefore
//! chunk sizes) reveal nothing about content to someone without the key. Cut points depend only
//! on content: an insertion shifts the chunks around it, not every later one.
//!
//! The chunker owns its buffer: readers fill [`Chunker::buffer_mut`] directly and chunks come
//! out as [`Bytes`] slices of it, without copying. A buffer whose chunks are still in use when
//! the chunker needs room is retired, and taken back once they are all dropped: the chunker
//! cycles through a few buffers of one size rather than allocating one every few chunks (which
//! left the allocator holding freed 16 MiB buffers it never gave back to the system).

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use fastcdc::v2020;
use serde::{Deserialize, Serialize};

/// Chunk size bounds, fixed per repository (stored in its config).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    /// Smallest chunk, except a content's last.
    pub min_size: u32,
    /// Target average.
    pub avg_size: u32,
    /// Largest chunk.
    pub max_size: u32,
}

impl Default for ChunkerParams {
    /// 512 KiB / 1 MiB / 4 MiB: restic's and rustic's smallest and average chunk, a good
    /// balance of deduplication and index memory (about 1 million index records per TiB). The
    /// largest is half theirs (8 MiB): the chunker's buffers hold two and a half largest
    /// chunks; past the average a boundary comes every 512 KiB on average, so about 1 chunk
    /// in 400 (e⁻⁶) runs on to 4 MiB.
    fn default() -> Self {
        ChunkerParams {
            min_size: 512 * 1024,
            avg_size: 1024 * 1024,
            max_size: 4 * 1024 * 1024,
        }
    }
}

impl ChunkerParams {
    /// Checks the bounds against what FastCDC accepts.
    pub fn validate(&self) -> Result<(), InvalidChunkerParams> {
        let ok = (v2020::MINIMUM_MIN..=v2020::MINIMUM_MAX).contains(&self.min_size)
            && (v2020::AVERAGE_MIN..=v2020::AVERAGE_MAX).contains(&self.avg_size)
            && (v2020::MAXIMUM_MIN..=v2020::MAXIMUM_MAX).contains(&self.max_size)
            && self.min_size <= self.avg_size
            && self.avg_size <= self.max_size;
        if ok {
            Ok(())
        } else {
            Err(InvalidChunkerParams(*self))
        }
    }
}

/// How the engine cuts an entry's content into chunks (asked of the session per entry:
/// [`crate::source::SourceSession::cutting`]). Either way the chunks are content-addressed and
/// a restore reads them the same: the choice costs or saves CPU and deduplication, never
/// correctness.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Cutting {
    /// Where the content says (FastCDC): bytes inserted or removed shift only the chunks around
    /// them. For content whose bytes may move: files in general.
    #[default]
    ContentDefined,
    /// At fixed offsets, every so many whole `block`s (the repository's average chunk size,
    /// rounded down to whole blocks). For content made of fixed-size blocks that change in
    /// place and are only ever added at the end (database pages, WAL): a changed block changes
    /// the one chunk that holds it, and no CPU goes into searching for boundaries (the search
    /// is the one step of a backup that cannot be spread over cores within a file). A `block`
    /// larger than the repository's largest chunk falls back to [`Cutting::ContentDefined`].
    Blocks {
        /// The block size in bytes (Postgres: 8192).
        block: u32,
    },
}

/// Chunker parameters outside what FastCDC accepts, or not ordered min ≤ avg ≤ max.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid chunker parameters {0:?}: FastCDC needs min ≤ avg ≤ max within its bounds")]
pub struct InvalidChunkerParams(pub ChunkerParams);

/// A streaming content-defined chunker.
pub struct Chunker {
    params: ChunkerParams,
    gear: Box<[u64; 256]>,
    gear_ls: Box<[u64; 256]>,
    mask_s: u64,
    mask_l: u64,
    buf: BytesMut,
    /// Whether `buf` holds an allocation (it starts empty, without one).
    allocated: bool,
    /// How far the search for the next boundary has come: it resumes there when more bytes
    /// are buffered, so each byte is hashed once.
    scan: Scan,
    /// Earlier buffers, oldest first, held until the chunks cut from them are dropped.
    retired: VecDeque<Bytes>,
    /// When set, chunks are cut at fixed offsets of this many bytes instead of where the
    /// content says ([`Chunker::set_cutting`]).
    fixed: Option<usize>,
    /// Buffers allocated so far.
    #[cfg(test)]
    allocations: usize,
}

/// Earlier buffers kept for reuse: one, so a chunker holds two buffers (see
/// [`Chunker::is_full`]).
const MAX_RETIRED: usize = 1;

impl Chunker {
    /// A chunker with these bounds and gear seed.
    pub fn new(params: ChunkerParams, seed: u64) -> Self {
        let bits = v2020::logarithm2(params.avg_size);
        let (gear, gear_ls) = v2020::get_gear_with_seed(seed);
        Chunker {
            params,
            gear,
            gear_ls,
            mask_s: v2020::MASKS[(bits + 1) as usize],
            mask_l: v2020::MASKS[(bits - 1) as usize],
            buf: BytesMut::new(),
            allocated: false,
            scan: Scan::default(),
            retired: VecDeque::new(),
            fixed: None,
            #[cfg(test)]
            allocations: 0,
        }
    }

    /// How the next content is cut: in blocks ([`Cutting::Blocks`]), at fixed offsets every
    /// average chunk size rounded down to whole blocks (at least one block), so a content made
    /// of blocks that change in place (database pages) changes only the chunks holding changed
    /// blocks, and no boundary is searched for; otherwise (or with a block of 0 or larger than
    /// the largest chunk), where the content says. Returns the fixed chunk size, if any.
    ///
    /// Call it between contents, when nothing is buffered: the bytes buffered are cut the new
    /// way.
    pub fn set_cutting(&mut self, cutting: Cutting) -> Option<usize> {
        debug_assert_eq!(self.buf.len(), 0, "the cutting changes between contents");
        self.scan = Scan::default();
        self.fixed = match cutting {
            Cutting::Blocks { block } if block > 0 && block <= self.params.max_size => {
                Some((self.params.avg_size / block).max(1) as usize * block as usize)
            }
            _ => None,
        };
        self.fixed
    }

    /// Whether a content of `len` bytes, cut as the last [`Chunker::set_cutting`] said, is
    /// one chunk: no longer than a fixed chunk, or than the smallest chunk (no boundary is
    /// searched for before it).
    pub fn cuts_whole(&self, len: usize) -> bool {
        match self.fixed {
            Some(size) => len <= size,
            None => len <= self.params.min_size as usize,
        }
    }

    /// The buffer to read into. Keep reading until [`Chunker::next_chunk`] returns `None`.
    ///
    /// Its buffer holds a largest chunk and a quarter more (5 MiB with the default 4 MiB
    /// chunks; two and a half chunks, 2.5 MiB, when cutting in blocks): chunks come out as
    /// soon as their boundary is read, so what waits in it is usually less than an average
    /// chunk.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        let span = self.span();
        if self.spare() < span / 4 {
            self.make_room(span / 4, span + span / 4);
        }
        &mut self.buf
    }

    /// What a buffer is sized for (and a quarter more): a largest chunk, or two chunks when
    /// cutting in blocks (chunks of about the average size: a buffer of the largest would
    /// hold memory no chunk needs).
    fn span(&self) -> usize {
        match self.fixed {
            Some(size) => (2 * size).min(self.params.max_size as usize),
            None => self.params.max_size as usize,
        }
    }

    /// Whether reading on would take a third buffer: the one being read into has too little
    /// room and both it and the earlier one still hold chunks in use. A reader that drops
    /// (waits for) its oldest chunks first keeps the chunker at two buffers; one that reads
    /// on anyway gets a new buffer.
    pub fn is_full(&mut self) -> bool {
        let span = self.span();
        self.spare() < span / 4
            && self.retired.len() >= MAX_RETIRED
            && !self.buf.try_reclaim(span / 4)
            && !self.retired.iter().any(Bytes::is_unique)
    }

    /// Appends bytes (for producers that do not read into the buffer).
    pub fn push(&mut self, data: &[u8]) {
        if self.spare() < data.len() {
            let grown = (2 * self.buf.capacity()).min(2 * self.params.max_size as usize);
            self.make_room(data.len(), grown);
        }
        self.buf.extend_from_slice(data);
    }

    fn spare(&self) -> usize {
        self.buf.capacity() - self.buf.len()
    }

    /// Room for `additional` more bytes: in place when no chunk of the buffer is in use any
    /// more, else in a retired buffer that is free again, else in a new one of `capacity`
    /// bytes (at least what the buffered bytes and `additional` need).
    fn make_room(&mut self, additional: usize, capacity: usize) {
        if self.buf.try_reclaim(additional) {
            return;
        }
        let capacity = capacity.max(self.buf.len() + additional);
        let mut next = match self.reuse_retired(capacity) {
            Some(free) => free,
            None => {
                #[cfg(test)]
                {
                    self.allocations += 1;
                }
                BytesMut::with_capacity(capacity)
            }
        };
        next.extend_from_slice(&self.buf);
        let mut old = std::mem::replace(&mut self.buf, next);
        if std::mem::replace(&mut self.allocated, true) {
            old.clear();
            self.retired.push_back(old.freeze());
            if self.retired.len() > MAX_RETIRED {
                self.retired.pop_front();
            }
        }
    }

    /// A retired buffer of at least `capacity` bytes whose chunks are all dropped, emptied.
    fn reuse_retired(&mut self, capacity: usize) -> Option<BytesMut> {
        for _ in 0..self.retired.len() {
            let old = self.retired.pop_front().expect("counted");
            match old.try_into_mut() {
                Ok(mut free) => {
                    free.clear();
                    if free.try_reclaim(capacity) {
                        return Some(free);
                    }
                    // Too small to serve (the buffer grew since): let it go.
                }
                Err(in_use) => self.retired.push_back(in_use),
            }
        }
        None
    }

    /// Bytes buffered and not yet cut.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete chunk. Without `eof`, a chunk is cut only where the cut is the same as
    /// on the whole input: at a boundary found before the end of what is buffered (more bytes
    /// cannot move it), or at the largest chunk. With `eof`, the rest is cut as well.
    ///
    /// A chunk comes out as soon as its boundary is buffered, so the chunker holds about one
    /// average chunk, not a largest one. A search that finds no boundary resumes where it
    /// stopped once more bytes are buffered: no byte is hashed twice.
    pub fn next_chunk(&mut self, eof: bool) -> Option<Bytes> {
        let len = self.buf.len();
        if let Some(size) = self.fixed {
            if len == 0 || (!eof && len < size) {
                return None;
            }
            return Some(self.buf.split_to(len.min(size)).freeze());
        }
        let min = self.params.min_size as usize;
        let max = self.params.max_size as usize;
        if len == 0 || (!eof && len <= min) {
            return None;
        }
        let end = len.min(max);
        let cut = if len <= min {
            Some(len)
        } else {
            match self.search(end) {
                Some(cut) => Some(cut),
                None if eof || end == max => Some(end),
                None => None,
            }
        }?;
        self.scan = Scan::default();
        Some(self.buf.split_to(cut.max(1)).freeze())
    }

    /// Searches the buffered bytes up to `end` for the first boundary, from where the last
    /// search stopped: FastCDC 2020's gear hash, two bytes a step, exactly as
    /// [`v2020::cut_gear`] does on the whole input (the hash holds only the last 64 bytes, so
    /// stopping and resuming at a step changes nothing). The boundary is the offset
    /// `cut_gear` returns; `None` when there is none before `end`.
    fn search(&mut self, end: usize) -> Option<usize> {
        let src = &self.buf[..end];
        let (gear, gear_ls) = (&*self.gear, &*self.gear_ls);
        let (mask_s, mask_l) = (self.mask_s, self.mask_l);
        let (mask_s_ls, mask_l_ls) = (mask_s << 1, mask_l << 1);
        let center = self.params.avg_size as usize / 2;
        let Scan {
            mut index,
            mut hash,
        } = self.scan;
        if index == 0 {
            index = self.params.min_size as usize / 2;
            hash = 0;
        }
        let steps = end / 2;
        // Below the average, the harder mask (fewer small chunks); above it, the easier one.
        let (small_end, masks) = (
            center.min(steps),
            [(mask_s_ls, mask_s), (mask_l_ls, mask_l)],
        );
        for (until, (mask_a, mask_b)) in [(small_end, masks[0]), (steps, masks[1])] {
            while index < until {
                let a = index * 2;
                hash = (hash << 2).wrapping_add(gear_ls[src[a] as usize]);
                if hash & mask_a == 0 {
                    return Some(a);
                }
                hash = hash.wrapping_add(gear[src[a + 1] as usize]);
                if hash & mask_b == 0 {
                    return Some(a + 1);
                }
                index += 1;
            }
        }
        self.scan = Scan { index, hash };
        None
    }
}

/// Where a search for a boundary stopped: the next two-byte step and the hash so far
/// (`index` 0: not started).
#[derive(Clone, Copy, Debug, Default)]
struct Scan {
    index: usize,
    hash: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small() -> ChunkerParams {
        ChunkerParams {
            min_size: 256,
            avg_size: 1024,
            max_size: 4096,
        }
    }

    fn chunk_all(data: &[u8], feed: usize, seed: u64) -> Vec<Bytes> {
        let mut c = Chunker::new(small(), seed);
        let mut out = Vec::new();
        for piece in data.chunks(feed.max(1)) {
            c.push(piece);
            while let Some(ch) = c.next_chunk(false) {
                out.push(ch);
            }
        }
        while let Some(ch) = c.next_chunk(true) {
            out.push(ch);
        }
        out
    }

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    proptest! {
        #[test]
        fn chunks_reassemble_and_ignore_feed_size(len in 0usize..60000, feed in 1usize..10000, seed in any::<u64>()) {
            let data = pseudo_random(len, seed);
            let a = chunk_all(&data, feed, 7);
            let b = chunk_all(&data, 100_000, 7);
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(a.concat(), data);
            for (i, ch) in a.iter().enumerate() {
                prop_assert!(ch.len() <= 4096);
                if i + 1 < a.len() { prop_assert!(ch.len() >= 256); }
            }
        }
    }

    proptest! {
        /// A content the chunker says it cuts whole comes out as one chunk (and in blocks,
        /// exactly then): the backup stores such a content read ahead as its one chunk.
        #[test]
        fn a_content_cut_whole_is_one_chunk(len in 1usize..12_000, seed in any::<u64>(), block in prop::sample::select(vec![0u32, 100, 512, 1000, 4096, 5000])) {
            let data = pseudo_random(len, seed);
            let mut c = Chunker::new(small(), 5);
            let cutting = if block == 0 { Cutting::ContentDefined } else { Cutting::Blocks { block } };
            let fixed = c.set_cutting(cutting);
            let whole = c.cuts_whole(len);
            c.push(&data);
            let mut chunks = Vec::new();
            while let Some(ch) = c.next_chunk(true) {
                chunks.push(ch);
            }
            if whole {
                prop_assert_eq!(chunks.len(), 1);
                prop_assert_eq!(&chunks[0][..], &data[..]);
            }
            if fixed.is_some() {
                prop_assert_eq!(whole, chunks.len() == 1);
            } else {
                prop_assert_eq!(whole, len <= 256);
            }
        }
    }

    proptest! {
        #[test]
        fn cuts_in_blocks_are_whole_blocks_at_fixed_offsets(len in 0usize..40_000, feed in 1usize..6000, block in prop::sample::select(vec![1u32, 100, 256, 512, 1000, 1024, 4096, 5000])) {
            // `small()`: average 1024, largest 4096.
            let data = pseudo_random(len, 3);
            let mut c = Chunker::new(small(), 9);
            let size = c.set_cutting(Cutting::Blocks { block });
            let expected = if block > 4096 { None } else { Some((1024 / block).max(1) as usize * block as usize) };
            prop_assert_eq!(size, expected);
            let mut chunks = Vec::new();
            for piece in data.chunks(feed) {
                c.buffer_mut().extend_from_slice(piece);
                while let Some(ch) = c.next_chunk(false) { chunks.push(ch); }
            }
            while let Some(ch) = c.next_chunk(true) { chunks.push(ch); }
            prop_assert_eq!(chunks.concat(), data.clone());
            match size {
                Some(size) => {
                    prop_assert_eq!(chunks.len(), len.div_ceil(size));
                    for (i, ch) in chunks.iter().enumerate() {
                        if i + 1 < chunks.len() { prop_assert_eq!(ch.len(), size); }
                        else { prop_assert!(!ch.is_empty() && ch.len() <= size); }
                    }
                }
                // Too large a block: cut where the content says, as if never asked.
                None => {
                    let lens: Vec<usize> = chunks.iter().map(Bytes::len).collect();
                    prop_assert_eq!(lens, reference_cuts(&data, 9));
                }
            }
            // Back to content-defined cuts for the next content.
            prop_assert_eq!(c.set_cutting(Cutting::ContentDefined), None);
            let again = pseudo_random(len, 4);
            c.push(&again);
            let mut lens = Vec::new();
            while let Some(ch) = c.next_chunk(true) { lens.push(ch.len()); }
            prop_assert_eq!(lens, reference_cuts(&again, 9));
        }
    }

    /// FastCDC's own cuts of the whole input, with the chunker's tables and masks.
    fn reference_cuts(data: &[u8], seed: u64) -> Vec<usize> {
        let p = small();
        let c = Chunker::new(p, seed);
        let (mut at, mut lens) = (0, Vec::new());
        while at < data.len() {
            let (_, cut) = v2020::cut_gear(
                &data[at..],
                p.min_size as usize,
                p.avg_size as usize,
                p.max_size as usize,
                c.mask_s,
                c.mask_l,
                c.mask_s << 1,
                c.mask_l << 1,
                &c.gear,
                &c.gear_ls,
            );
            let cut = cut.max(1);
            lens.push(cut);
            at += cut;
        }
        lens
    }

    /// Bytes of random runs and repeated runs (a run that repeats is where no boundary is).
    fn mixed(len: usize, seed: u64) -> Vec<u8> {
        let mut out = pseudo_random(len, seed);
        let mut x = seed | 1;
        let mut at = 0;
        while at < len {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let run = (x >> 33) as usize % 9000;
            if x & 1 == 0 {
                out[at..(at + run).min(len)].fill((x >> 8) as u8);
            }
            at += run + 1;
        }
        out
    }

    proptest! {
        #[test]
        fn cuts_are_fastcdcs_whatever_the_reads(len in 0usize..80_000, feed in 1usize..6000, seed in any::<u64>(), gear in any::<u64>()) {
            let data = mixed(len, seed);
            let mut c = Chunker::new(small(), gear);
            let mut lens = Vec::new();
            for piece in data.chunks(feed) {
                c.buffer_mut().extend_from_slice(piece);
                while let Some(ch) = c.next_chunk(false) { lens.push(ch.len()); }
            }
            while let Some(ch) = c.next_chunk(true) { lens.push(ch.len()); }
            prop_assert_eq!(lens, reference_cuts(&data, gear));
        }
    }

    /// Reads `data` as a reader does (into `buffer_mut`), holding the last `held` chunks.
    fn read_through(c: &mut Chunker, data: &[u8], held: usize) -> Vec<u8> {
        let mut kept = VecDeque::new();
        let mut out = Vec::new();
        let take = |ch: Bytes, out: &mut Vec<u8>, kept: &mut VecDeque<Bytes>| {
            out.extend_from_slice(&ch);
            kept.push_back(ch);
            if kept.len() > held {
                kept.pop_front();
            }
        };
        for piece in data.chunks(500) {
            // As the backup does: the oldest chunks finish before a third buffer is taken.
            while c.is_full() && !kept.is_empty() {
                kept.pop_front();
            }
            c.buffer_mut().extend_from_slice(piece);
            while let Some(ch) = c.next_chunk(false) {
                take(ch, &mut out, &mut kept);
            }
        }
        while let Some(ch) = c.next_chunk(true) {
            take(ch, &mut out, &mut kept);
        }
        out
    }

    #[test]
    fn cutting_in_blocks_holds_two_buffers_of_two_chunks_and_a_half() {
        let data = pseudo_random(300_000, 8);
        let mut c = Chunker::new(small(), 1);
        let size = c
            .set_cutting(Cutting::Blocks { block: 512 })
            .expect("512-byte blocks fit");
        assert_eq!(size, 1024);
        assert_eq!(read_through(&mut c, &data, 2), data);
        // A largest chunk's buffer (4096 and a quarter) would hold twice what two chunks need.
        assert!(
            c.buf.capacity() <= 2 * size + size / 2,
            "{}",
            c.buf.capacity()
        );
        assert!(
            c.allocations <= 1 + MAX_RETIRED,
            "{} buffers",
            c.allocations
        );
    }

    #[test]
    fn buffers_are_reused_once_their_chunks_are_dropped() {
        let data = pseudo_random(2_000_000, 5);
        let mut c = Chunker::new(small(), 1);
        assert_eq!(read_through(&mut c, &data, 2), data);
        // Without reuse, a new buffer every few chunks: hundreds for 2 MB of 1 KiB chunks.
        assert!(
            c.allocations <= 1 + MAX_RETIRED,
            "{} buffers",
            c.allocations
        );
        assert!(chunk_all(&data, 100_000, 1).len() > 500);
    }

    proptest! {
        #[test]
        fn chunks_held_across_buffers_stay_intact(len in 0usize..100_000, held in 0usize..40, seed in any::<u64>()) {
            let data = pseudo_random(len, seed);
            let mut c = Chunker::new(small(), 7);
            prop_assert_eq!(read_through(&mut c, &data, held), data.clone());
            prop_assert!(c.allocations <= 1 + MAX_RETIRED, "{} buffers", c.allocations);
            let a = chunk_all(&data, 100_000, 7);
            let mut c = Chunker::new(small(), 7);
            let mut cuts = Vec::new();
            for piece in data.chunks(700) {
                c.buffer_mut().extend_from_slice(piece);
                while let Some(ch) = c.next_chunk(false) { cuts.push(ch); }
            }
            while let Some(ch) = c.next_chunk(true) { cuts.push(ch); }
            prop_assert_eq!(cuts, a);
        }
    }

    #[test]
    fn a_chunk_comes_out_once_its_boundary_is_buffered() {
        let data = pseudo_random(400_000, 11);
        let mut c = Chunker::new(small(), 3);
        let (mut total, mut steps) = (0, 0);
        for piece in data.chunks(100) {
            c.push(piece);
            while c.next_chunk(false).is_some() {}
            assert!(c.buffered() < 4096, "never a whole largest chunk left");
            total += c.buffered();
            steps += 1;
        }
        // Waiting for a largest chunk's window (4096 bytes) before each cut kept 3–4 KiB.
        assert!(
            total / steps < 2048,
            "{} bytes held on average",
            total / steps
        );
    }

    #[test]
    fn insertion_changes_only_nearby_chunks() {
        let data = pseudo_random(200_000, 3);
        let mut edited = data.clone();
        edited.insert(100_000, 0xAB);
        let a = chunk_all(&data, 5000, 1);
        let b = chunk_all(&edited, 5000, 1);
        let same = b.iter().filter(|c| a.contains(c)).count();
        assert!(same + 3 >= b.len(), "{same} of {} chunks kept", b.len());
    }

    #[test]
    fn seed_changes_boundaries() {
        let data = pseudo_random(100_000, 9);
        assert_ne!(chunk_all(&data, 1000, 1), chunk_all(&data, 1000, 2));
    }
}
