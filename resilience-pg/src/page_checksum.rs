//! Postgres data page checksums, computed as the server computes them.
//!
//! A cluster initialised with `initdb --data-checksums` stores in each 8 KiB page header a 16-bit
//! checksum (`pd_checksum`) of the page. The algorithm is the one of Postgres'
//! `src/include/storage/checksum_impl.h`: the page is read as 32 columns of native-endian
//! 32-bit words, each column folded by an FNV-1a-like step (`x = (s ^ w) * FNV_PRIME ^
//! ((s ^ w) >> 17)`) from its own base offset, with `pd_checksum` taken as zero, two more
//! rounds of zeroes mixed in, the 32 sums xor-ed together and the block number xor-ed in (so a
//! page written at the wrong place fails), then reduced to `1..=65535`.
//!
//! [`check_page`] applies the rules a backup tool applies while the cluster runs (those of
//! pgBackRest): an all-zero page and a page whose `pd_upper` is 0 are new and valid, a page
//! whose LSN is at or past the backup's start may be being written and is not judged (WAL
//! replay rewrites it), everything else must carry the right checksum.
//!
//! Pages are read little-endian: the x86-64 and arm64 layout of every cluster this crate backs up.

use crate::lsn::Lsn;

/// The page size this module checks (Postgres' default `BLCKSZ`).
pub const PAGE_SIZE: usize = 8192;

/// Blocks in one relation segment file with the default 1 GiB segments (`RELSEG_SIZE`).
pub const DEFAULT_SEGMENT_BLOCKS: u32 = 131_072;

/// Parallel sums of the algorithm.
const N_SUMS: usize = 32;

/// FNV-1a's 32-bit prime.
const FNV_PRIME: u32 = 16_777_619;

/// The initial state of each of the parallel sums (`checksumBaseOffsets`).
const BASE_OFFSETS: [u32; N_SUMS] = [
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
    0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
    0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
    0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
];

/// Where `pd_checksum` sits in the page header (after the 8-byte `pd_lsn`).
const CHECKSUM_OFFSET: usize = 8;

/// Where `pd_upper` sits in the page header.
const UPPER_OFFSET: usize = 14;

/// One step of a sum (`CHECKSUM_COMP`).
#[inline(always)]
fn comp(sum: u32, value: u32) -> u32 {
    let tmp = sum ^ value;
    tmp.wrapping_mul(FNV_PRIME) ^ (tmp >> 17)
}

/// The checksum Postgres stores in the page at block `block` of its relation fork (the block
/// number counts from the start of the relation, not of the segment file:
/// `segment * 131072 + block in file`). The stored `pd_checksum` is ignored, as the server
/// ignores it.
pub fn pg_checksum_page(page: &[u8; PAGE_SIZE], block: u32) -> u16 {
    let mut sums = BASE_OFFSETS;
    for (row, words) in page.chunks_exact(4 * N_SUMS).enumerate() {
        for (lane, sum) in sums.iter_mut().enumerate() {
            let at = 4 * lane;
            let mut word = [words[at], words[at + 1], words[at + 2], words[at + 3]];
            if row == 0 && at == CHECKSUM_OFFSET {
                // pd_checksum (the first two bytes of this word) counts as zero.
                word[0] = 0;
                word[1] = 0;
            }
            *sum = comp(*sum, u32::from_le_bytes(word));
        }
    }
    for _ in 0..2 {
        for sum in sums.iter_mut() {
            *sum = comp(*sum, 0);
        }
    }
    let folded = sums.iter().fold(0u32, |acc, s| acc ^ s) ^ block;
    ((folded % 65535) + 1) as u16
}

/// The checksum stored in a page's header (`pd_checksum`).
pub fn stored_checksum(page: &[u8; PAGE_SIZE]) -> u16 {
    u16::from_le_bytes([page[CHECKSUM_OFFSET], page[CHECKSUM_OFFSET + 1]])
}

/// The LSN in a page's header (`pd_lsn`): where the WAL record of its last change ends.
pub fn page_lsn(page: &[u8; PAGE_SIZE]) -> Lsn {
    let hi = u32::from_le_bytes(page[0..4].try_into().expect("4 bytes"));
    let lo = u32::from_le_bytes(page[4..8].try_into().expect("4 bytes"));
    Lsn((u64::from(hi) << 32) | u64::from(lo))
}

/// A page's `pd_upper` (0 on a page that was never initialised).
fn page_upper(page: &[u8; PAGE_SIZE]) -> u16 {
    u16::from_le_bytes([page[UPPER_OFFSET], page[UPPER_OFFSET + 1]])
}

/// What [`check_page`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageVerdict {
    /// The stored checksum is right.
    Valid,
    /// A new page (all zeroes, or `pd_upper` 0): it carries no checksum yet.
    New,
    /// Changed at or after the backup's start: it may be being written while read, and WAL
    /// replay rewrites it, so it is not judged.
    Recent,
    /// The stored checksum is wrong.
    Corrupt {
        /// `pd_checksum` as stored.
        stored: u16,
        /// What the page's content gives.
        computed: u16,
    },
}

/// Judges one page read during a backup that started at `backup_start` (see the module
/// documentation for the rules). `block` is its block number in the relation fork.
pub fn check_page(page: &[u8; PAGE_SIZE], block: u32, backup_start: Lsn) -> PageVerdict {
    if page_upper(page) == 0 || page.iter().all(|&b| b == 0) {
        return PageVerdict::New;
    }
    if page_lsn(page) >= backup_start {
        return PageVerdict::Recent;
    }
    let stored = stored_checksum(page);
    let computed = pg_checksum_page(page, block);
    if stored == computed {
        PageVerdict::Valid
    } else {
        PageVerdict::Corrupt { stored, computed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A page that looks initialised: LSN 0/1000, pd_lower 28, pd_upper 8000, bytes after.
    fn sample_page(block: u32) -> Box<[u8; PAGE_SIZE]> {
        let mut page = Box::new([0u8; PAGE_SIZE]);
        page[4..8].copy_from_slice(&0x1000u32.to_le_bytes());
        page[12..14].copy_from_slice(&28u16.to_le_bytes());
        page[14..16].copy_from_slice(&8000u16.to_le_bytes());
        page[16..18].copy_from_slice(&8192u16.to_le_bytes());
        for (i, b) in page[8000..].iter_mut().enumerate() {
            *b = (i * 7 % 251) as u8;
        }
        let sum = pg_checksum_page(&page, block);
        page[8..10].copy_from_slice(&sum.to_le_bytes());
        page
    }

    #[test]
    fn header_fields_are_read_little_endian() {
        let mut page = [0u8; PAGE_SIZE];
        page[0..4].copy_from_slice(&1u32.to_le_bytes());
        page[4..8].copy_from_slice(&0x2000_0028u32.to_le_bytes());
        page[8..10].copy_from_slice(&0xBEEFu16.to_le_bytes());
        assert_eq!(page_lsn(&page), Lsn(0x1_2000_0028));
        assert_eq!(stored_checksum(&page), 0xBEEF);
    }

    #[test]
    fn the_stored_checksum_does_not_enter_the_sum() {
        let mut page = sample_page(3);
        let before = pg_checksum_page(&page, 3);
        page[8] ^= 0xFF;
        page[9] ^= 0x0F;
        assert_eq!(pg_checksum_page(&page, 3), before);
        // pd_flags shares the word with pd_checksum, and does count.
        page[10] ^= 1;
        assert_ne!(pg_checksum_page(&page, 3), before);
    }

    #[test]
    fn the_block_number_is_mixed_in() {
        let page = sample_page(7);
        assert_eq!(check_page(&page, 7, Lsn(0x2000)), PageVerdict::Valid);
        assert!(matches!(
            check_page(&page, 8, Lsn(0x2000)),
            PageVerdict::Corrupt { .. }
        ));
    }

    #[test]
    fn new_and_recent_pages_are_not_judged() {
        let zero = [0u8; PAGE_SIZE];
        assert_eq!(check_page(&zero, 0, Lsn(1)), PageVerdict::New);
        let mut page = sample_page(0);
        page[100] ^= 0x55;
        assert!(matches!(
            check_page(&page, 0, Lsn(0x2000)),
            PageVerdict::Corrupt { .. }
        ));
        // The backup started before its last change: maybe torn, left to WAL replay.
        assert_eq!(check_page(&page, 0, Lsn(0x1000)), PageVerdict::Recent);
        assert_eq!(check_page(&page, 0, Lsn(0x800)), PageVerdict::Recent);
        page[14..16].copy_from_slice(&0u16.to_le_bytes());
        assert_eq!(check_page(&page, 0, Lsn(0x2000)), PageVerdict::New);
    }

    #[test]
    fn the_result_is_never_zero() {
        // Zero means "no checksum" to Postgres; the reduction maps into 1..=65535.
        for block in 0..2000 {
            assert_ne!(pg_checksum_page(&sample_page(0), block), 0);
        }
    }

    #[test]
    fn single_bit_flips_are_caught_but_for_the_16_bit_odds() {
        // A 16-bit checksum lets about one damaged page in 65535 through, even a single flipped
        // bit (the algorithm is not a CRC): of this page's 65 472 flips, a few at most.
        let clean = sample_page(5);
        let mut page = clean.clone();
        let mut missed = Vec::new();
        for at in (8..PAGE_SIZE).filter(|&at| !(8..10).contains(&at) && !(14..16).contains(&at)) {
            for bit in 0..8 {
                page[at] ^= 1 << bit;
                match check_page(&page, 5, Lsn(0x2000)) {
                    PageVerdict::Corrupt { .. } => {}
                    PageVerdict::Valid => missed.push((at, bit)),
                    other => panic!("byte {at} bit {bit}: {other:?}"),
                }
                page[at] ^= 1 << bit;
            }
        }
        assert_eq!(page, clean);
        assert!(missed.len() <= 4, "missed {missed:?}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn a_page_carrying_its_checksum_is_valid(fill in proptest::collection::vec(any::<u8>(), 1..512), block in any::<u32>()) {
            let mut page = Box::new([0u8; PAGE_SIZE]);
            for (i, b) in page.iter_mut().enumerate().skip(16) {
                *b = fill[i % fill.len()];
            }
            page[14..16].copy_from_slice(&8000u16.to_le_bytes());
            let sum = pg_checksum_page(&page, block);
            prop_assert_ne!(sum, 0);
            page[8..10].copy_from_slice(&sum.to_le_bytes());
            prop_assert_eq!(check_page(&page, block, Lsn(1)), PageVerdict::Valid);
        }
    }
}
