//! Content-defined chunking with FastCDC (the 2020 variant, normalization level 1).
//!
//! The gear table is seeded from the repository's key set, so chunk boundaries (and therefore
//! chunk sizes) reveal nothing about content to someone without the key. Cut points depend only
//! on content: an insertion shifts the chunks around it, not every later one.
//!
//! The chunker owns its buffer: readers fill [`Chunker::buffer_mut`] directly and chunks come
//! out as [`Bytes`] slices of it, without copying.

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
    /// 512 KiB / 1 MiB / 8 MiB, as restic and rustic: a good balance of deduplication and index
    /// memory (about 1 million index records per TiB).
    fn default() -> Self {
        ChunkerParams {
            min_size: 512 * 1024,
            avg_size: 1024 * 1024,
            max_size: 8 * 1024 * 1024,
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
}

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
        }
    }

    /// The buffer to read into. Keep reading until [`Chunker::next_chunk`] returns `None`.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        if self.buf.capacity() - self.buf.len() < self.params.max_size as usize / 4 {
            self.buf.reserve(self.params.max_size as usize);
        }
        &mut self.buf
    }

    /// Appends bytes (for producers that do not read into the buffer).
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered and not yet cut.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete chunk. Without `eof`, a chunk is only cut once a whole maximum-size
    /// window is buffered, so the cut is the same as on the whole input. With `eof`, the rest is
    /// cut as well.
    pub fn next_chunk(&mut self, eof: bool) -> Option<Bytes> {
        let len = self.buf.len();
        if len == 0 || (!eof && len < self.params.max_size as usize) {
            return None;
        }
        let (_, cut) = v2020::cut_gear(
            &self.buf,
            self.params.min_size as usize,
            self.params.avg_size as usize,
            self.params.max_size as usize,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
            &self.gear,
            &self.gear_ls,
        );
        Some(self.buf.split_to(cut.max(1).min(len)).freeze())
    }
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
