//! The memory budget of a backup or a restore: the bytes it may hold at once, and how the
//! budget is shared between the stages, whatever the size of the data.
//!
//! The budget is what the operation's process may hold at its peak: a part of it
//! ([`reserve`], a quarter of it and at most 16 MiB) is left for what no stage counts — the
//! binary's pages, the runtime, and what the allocator keeps of freed buffers — and the
//! stages share the rest. A backup holds, at most:
//! - the chunker's buffers: the one being read into and an earlier one whose chunks are still
//!   in flight, each a largest chunk and a quarter (2.5 × the largest chunk, 10 MiB with the
//!   default 4 MiB);
//! - the pack being filled (`pack_size`, 8 MiB by default);
//! - the packs being sealed and uploaded (`uploads` × `pack_size`);
//! - the chunks being hashed, compressed and sealed (`chunk_bytes`, raw, and their sealed form);
//! - the small files read ahead (`read_ahead_bytes`).
//!
//! The index of the blobs the repository holds comes on top: 52 bytes per blob, about
//! 52 MiB per TiB of unique data with the default 1 MiB chunks (docs/FORMAT.md).
//!
//! A restore holds the blobs it reads ahead of the target: `read_bytes`, each blob counted in
//! its sealed and its opened form, with at least one blob in flight whatever its size.

/// The default budget: 64 MiB.
pub const DEFAULT_MEMORY: usize = 64 << 20;

/// The part of a `budget` left for what no stage counts (the binary, the runtime, the
/// allocator's keeping): a quarter of it, at most 16 MiB.
pub fn reserve(budget: usize) -> usize {
    (budget / 4).min(16 << 20)
}

/// How a backup shares its memory budget between its stages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupShares {
    /// Packs sealed and uploaded at once, besides the one being filled (at least one).
    pub uploads: usize,
    /// Raw bytes of chunks hashed, compressed and sealed at once (at least one largest chunk).
    pub chunk_bytes: usize,
    /// Bytes of small files read ahead of the chunker (at least 1 MiB).
    pub read_ahead_bytes: usize,
    /// Files up to this size are read ahead whole: an eighth of the read-ahead share, at
    /// most 1 MiB.
    pub read_ahead_max_file: u64,
}

impl BackupShares {
    /// The shares of `budget` bytes (less its [`reserve`]) for a repository of
    /// `pack_size`-byte packs and chunks of at most `max_chunk` bytes. A budget below what one
    /// pack, one upload and the chunker need gets those minimums (so the backup still runs,
    /// over budget by what it must hold): any budget whose stages' part is at least
    /// 4.5 × `max_chunk` + 2 × `pack_size` + 2 MiB is kept.
    pub fn of(budget: usize, pack_size: usize, max_chunk: usize) -> Self {
        let fixed = chunker_bytes(max_chunk) + pack_size;
        let rest = (budget - reserve(budget)).saturating_sub(fixed);
        let uploads = (rest / 2 / pack_size.max(1)).clamp(1, 4);
        let left = rest.saturating_sub(uploads * pack_size);
        // Two largest chunks keep every core sealing; more would only hold more buffers.
        let chunk_bytes = (left / 2).clamp(max_chunk, 2 * max_chunk);
        let read_ahead_bytes = left.saturating_sub(chunk_bytes).max(1 << 20);
        BackupShares {
            uploads,
            chunk_bytes,
            read_ahead_bytes,
            read_ahead_max_file: (read_ahead_bytes as u64 / 8).min(1 << 20),
        }
    }
}

/// What the chunker's buffers hold at most: two, each a largest chunk and a quarter.
fn chunker_bytes(max_chunk: usize) -> usize {
    2 * (max_chunk + max_chunk / 4)
}

/// How a restore uses its memory budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestoreShares {
    /// Bytes the blobs read ahead of the target may hold at once, each blob counted twice
    /// (sealed and opened).
    pub read_bytes: usize,
}

impl RestoreShares {
    /// The shares of `budget` bytes: a quarter for the blobs read ahead; the rest is for the
    /// target's writes, the tree being read and the [`reserve`].
    pub fn of(budget: usize) -> Self {
        RestoreShares {
            read_bytes: (budget / 4).max(1 << 20),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_default_budget_holds_one_pack_filling_and_one_uploading() {
        let s = BackupShares::of(DEFAULT_MEMORY, 8 << 20, 4 << 20);
        assert_eq!(s.uploads, 1);
        assert_eq!(s.chunk_bytes, 8 << 20);
        assert_eq!(s.read_ahead_bytes, 14 << 20);
        assert_eq!(s.read_ahead_max_file, 1 << 20);
        let total = chunker_bytes(4 << 20)
            + (8 << 20) * (1 + s.uploads)
            + s.chunk_bytes
            + s.read_ahead_bytes;
        assert_eq!(total, DEFAULT_MEMORY - reserve(DEFAULT_MEMORY));
        // A repository made before the defaults changed (16 MiB packs, 8 MiB chunks) runs at
        // its minimums within the same budget.
        let old = BackupShares::of(DEFAULT_MEMORY, 16 << 20, 8 << 20);
        assert_eq!((old.uploads, old.chunk_bytes), (1, 8 << 20));
    }

    proptest! {
        #[test]
        fn shares_fit_the_budget_above_the_minimum(
            budget in 1usize..(4 << 30),
            pack in (1usize << 20)..(128 << 20),
            chunk in (64usize << 10)..(16 << 20),
        ) {
            let s = BackupShares::of(budget, pack, chunk);
            prop_assert!(s.uploads >= 1 && s.uploads <= 4);
            prop_assert!(s.chunk_bytes >= chunk);
            prop_assert!(s.read_ahead_max_file <= 1 << 20);
            let total = chunker_bytes(chunk) + pack * (1 + s.uploads) + s.chunk_bytes + s.read_ahead_bytes;
            let minimum = chunker_bytes(chunk) + 2 * chunk + 2 * pack + (2 << 20);
            let stages = budget - reserve(budget);
            prop_assert!(total <= stages.max(minimum), "{total} over {stages} of {budget}");
            prop_assert!(reserve(budget) <= 16 << 20 && reserve(budget) <= budget / 4);
            let r = RestoreShares::of(budget);
            prop_assert!(r.read_bytes * 2 <= budget.max(2 << 20));
        }
    }
}
