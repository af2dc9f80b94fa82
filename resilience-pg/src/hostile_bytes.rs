//! Hostile bytes: the decoders of what Postgres hands over and the archive holds (WAL pages and
//! records, timeline history files, data pages), fed structured garbage.
//!
//! WAL segments are laid out as Postgres lays them out (page headers with the right addresses,
//! records with the right length and CRC-32C) around garbage record bodies, then damaged (page
//! header fields, first-page fields, bytes anywhere); history files are lines of the right
//! shape with hostile fields; data pages carry the checksum of their garbage. Nothing may
//! panic (debug builds: an overflow panics), and every error names the file it was given.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index as At;

use crate::lsn::{parse_history, Lsn};
use crate::page_checksum::{check_page, pg_checksum_page, PageVerdict, PAGE_SIZE};
use crate::walscan::summarize;
use crate::walscan::tests::SegmentWriter;

fn hostile_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        3 => any::<u32>(),
        1 => Just(0u32),
        1 => Just(u32::MAX),
        1 => Just(1u32 << 30),
        2 => 0u32..512,
    ]
}

/// A record body: random bytes, or block headers and a main-data header with hostile ids and
/// lengths, each byte of which the reader interprets.
fn record_body() -> impl Strategy<Value = Vec<u8>> {
    let block = (
        prop_oneof![0u8..=32, 252u8..=255, any::<u8>()],
        any::<u8>(),
        any::<u16>(),
        any::<[u8; 6]>(),
    )
        .prop_map(|(id, flags, len, rest)| {
            let mut b = vec![id, flags];
            b.extend_from_slice(&len.to_le_bytes());
            b.extend_from_slice(&rest);
            b
        });
    prop_oneof![
        vec(any::<u8>(), 0..64),
        (
            vec(block, 0..4),
            prop_oneof![
                (any::<u8>()).prop_map(|n| vec![255, n]),
                hostile_u32().prop_map(|n| {
                    let mut v = vec![254];
                    v.extend_from_slice(&n.to_le_bytes());
                    v
                }),
                Just(vec![]),
            ],
            vec(any::<u8>(), 0..40),
        )
            .prop_map(|(blocks, main, tail)| {
                let mut b: Vec<u8> = blocks.concat();
                b.extend_from_slice(&main);
                b.extend_from_slice(&tail);
                b
            }),
    ]
}

/// Changes to a laid-out segment.
#[derive(Clone, Debug)]
enum Damage {
    /// A byte flipped anywhere.
    Flip(At, u8),
    /// A hostile u32 over four bytes anywhere (a record's length, a page's `xlp_rem_len`).
    Put(At, u32),
    /// The first page's info flags (continuation, long header).
    FirstInfo(u16),
    /// The first page's `xlp_rem_len` (a record continued from the previous segment).
    FirstRemLen(u32),
    /// The first page's address.
    FirstAddr(u64),
    /// The long header's segment size and page size.
    Sizes(u32, u32),
    Truncate(At),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        4 => (any::<At>(), 1u8..=255).prop_map(|(i, x)| Damage::Flip(i, x)),
        2 => (any::<At>(), hostile_u32()).prop_map(|(i, v)| Damage::Put(i, v)),
        1 => any::<u16>().prop_map(Damage::FirstInfo),
        1 => hostile_u32().prop_map(Damage::FirstRemLen),
        1 => prop_oneof![Just(u64::MAX), Just(u64::MAX - 8191), any::<u64>()].prop_map(Damage::FirstAddr),
        1 => (hostile_u32(), prop_oneof![Just(1024u32), Just(8192), Just(65536), hostile_u32()])
            .prop_map(|(s, p)| Damage::Sizes(s, p)),
        1 => any::<At>().prop_map(Damage::Truncate),
    ]
}

fn put(seg: &mut [u8], at: usize, b: &[u8]) {
    for (k, x) in b.iter().enumerate() {
        if let Some(slot) = seg.get_mut(at + k) {
            *slot = *x;
        }
    }
}

fn apply(seg: &mut Vec<u8>, d: &Damage) {
    let len = seg.len();
    match d {
        Damage::Flip(i, x) => seg[i.index(len)] ^= x,
        Damage::Put(i, v) => put(seg, i.index(len), &v.to_le_bytes()),
        Damage::FirstInfo(v) => put(seg, 2, &v.to_le_bytes()),
        Damage::FirstRemLen(v) => put(seg, 16, &v.to_le_bytes()),
        Damage::FirstAddr(v) => put(seg, 8, &v.to_le_bytes()),
        Damage::Sizes(s, p) => {
            put(seg, 32, &s.to_le_bytes());
            put(seg, 36, &p.to_le_bytes());
        }
        Damage::Truncate(i) => seg.truncate(i.index(len)),
    }
}

#[derive(Clone, Debug)]
struct SegmentCase {
    page_size: usize,
    start: u64,
    records: Vec<(u8, u8, Vec<u8>)>,
    damage: Vec<Damage>,
    random: Option<Vec<u8>>,
}

fn segment_case() -> impl Strategy<Value = SegmentCase> {
    (
        prop_oneof![4 => Just(8192usize), 1 => Just(1024usize), 1 => Just(4096usize)],
        prop_oneof![
            Just(0u64),
            Just(5u64 << 24),
            Just(u64::MAX - (1 << 16) - 8191)
        ],
        vec(
            (
                prop_oneof![Just(0u8), Just(1u8), any::<u8>()],
                prop_oneof![Just(0x00u8), Just(0x30u8), Just(0x70u8), any::<u8>()],
                record_body(),
            ),
            0..12,
        ),
        vec(damage(), 0..4),
        prop::option::weighted(0.03, vec(any::<u8>(), 0..20_000)),
    )
        .prop_map(|(page_size, start, records, damage, random)| SegmentCase {
            page_size,
            start,
            records,
            damage,
            random,
        })
}

#[test]
fn hostile_wal_segment() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 1000,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&segment_case(), |case| {
        let name = "000000010000000500000003";
        let seg = match &case.random {
            Some(r) => r.clone(),
            None => {
                let mut w = SegmentWriter::new(7, 1, 1 << 16, case.page_size, case.start);
                for (rmid, info, body) in &case.records {
                    if w.raw_record(*rmid, *info, body).is_none() {
                        break;
                    }
                }
                let mut seg = w.seg;
                for d in &case.damage {
                    if !seg.is_empty() {
                        apply(&mut seg, d);
                    }
                }
                seg
            }
        };
        if let Err(e) = summarize(name, &seg) {
            prop_assert!(e.to_string().contains(name), "{e}");
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// A history file: lines of the right shape with hostile fields, damaged.
fn history_text() -> impl Strategy<Value = Vec<u8>> {
    let timeline = prop_oneof![
        (1u32..100).prop_map(|t| t.to_string()),
        Just(u32::MAX.to_string()),
        Just("4294967296".to_owned()),
        Just("-1".to_owned()),
        "[0-9a-zA-Z]{0,12}",
    ];
    let half = prop_oneof![
        (0u32..0x100).prop_map(|v| format!("{v:X}")),
        Just("FFFFFFFF".to_owned()),
        Just("100000000".to_owned()),
        Just(String::new()),
        "[0-9A-Fa-fg/]{0,10}",
    ];
    let lsn = prop_oneof![
        4 => (half.clone(), half).prop_map(|(a, b)| format!("{a}/{b}")),
        1 => "\\PC{0,12}",
    ];
    let line = prop_oneof![
        6 => (timeline, lsn, "[ -~]{0,30}").prop_map(|(t, l, r)| format!("{t}\t{l}\t{r}")),
        1 => Just("# comment".to_owned()),
        1 => Just(String::new()),
        1 => "\\PC{0,30}",
    ];
    (
        vec(line, 0..8),
        vec((any::<At>(), any::<u8>()), 0..3),
        prop::option::weighted(0.05, vec(any::<u8>(), 0..200)),
    )
        .prop_map(|(lines, flips, random)| {
            if let Some(r) = random {
                return r;
            }
            let mut b = lines.join("\n").into_bytes();
            for (i, x) in flips {
                if !b.is_empty() {
                    let at = i.index(b.len());
                    b[at] ^= x;
                }
            }
            b
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn hostile_history_file(bytes in history_text()) {
        let name = "00000003.history";
        // As the archive check reads it.
        let text = String::from_utf8_lossy(&bytes);
        if let Err(e) = parse_history(name, &text) {
            prop_assert!(e.to_string().contains(name), "{e}");
        }
    }

    #[test]
    fn hostile_data_page(
        fill in vec(any::<u8>(), 1..64),
        header in vec((0usize..24, any::<u8>()), 0..6),
        block in any::<u32>(),
        start in prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()],
        flips in vec((any::<At>(), 1u8..=255), 0..3),
    ) {
        // Garbage content carrying its own checksum: valid unless flipped (or new, or recent).
        let mut page = Box::new([0u8; PAGE_SIZE]);
        for (i, b) in page.iter_mut().enumerate() {
            *b = fill[i % fill.len()];
        }
        for (at, b) in header {
            page[at] = b;
        }
        let sum = pg_checksum_page(&page, block);
        page[8..10].copy_from_slice(&sum.to_le_bytes());
        let flipped = !flips.is_empty();
        for (i, x) in flips {
            page[i.index(PAGE_SIZE)] ^= x;
        }
        let verdict = check_page(&page, block, Lsn(start));
        if !flipped {
            prop_assert!(!matches!(verdict, PageVerdict::Corrupt { .. }), "{verdict:?}");
        }
    }
}
