//! Log sequence numbers and the names of WAL files.
//!
//! A WAL segment is named `TTTTTTTTXXXXXXXXYYYYYYYY`: the timeline, then the segment number split
//! into a "log" part (`segno / segments_per_4GiB`) and a "segment" part (`segno %
//! segments_per_4GiB`), eight hex digits each. Beside segments, the archive holds timeline
//! history files (`TTTTTTTT.history`), backup-history files (`<segment>.XXXXXXXX.backup`) and
//! partial segments (`<segment>.partial`).

use std::fmt;
use std::str::FromStr;

use crate::error::PgError;

/// A position in the WAL (`X/Y` in Postgres' notation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not an LSN (expected hex X/Y, e.g. 0/3000148)");
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The default WAL segment size (16 MiB).
pub const DEFAULT_SEGMENT_SIZE: u64 = 16 << 20;

/// One WAL segment: a timeline and a segment number, for a given segment size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentName {
    /// The timeline.
    pub timeline: u32,
    /// The segment number (LSN / segment size).
    pub segno: u64,
}

impl SegmentName {
    /// The segment holding `lsn` on `timeline`.
    pub fn containing(timeline: u32, lsn: Lsn, segment_size: u64) -> Self {
        SegmentName {
            timeline,
            segno: lsn.0 / segment_size,
        }
    }

    /// Parses a 24-hex-digit segment name.
    pub fn parse(name: &str, segment_size: u64) -> Option<Self> {
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let timeline = u32::from_str_radix(&name[0..8], 16).ok()?;
        let log = u64::from_str_radix(&name[8..16], 16).ok()?;
        let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
        let per_log = segments_per_log(segment_size);
        if seg >= per_log {
            return None;
        }
        Some(SegmentName {
            timeline,
            segno: log * per_log + seg,
        })
    }

    /// The file name, for a given segment size.
    pub fn file_name(&self, segment_size: u64) -> String {
        let per_log = segments_per_log(segment_size);
        format!(
            "{:08X}{:08X}{:08X}",
            self.timeline,
            self.segno / per_log,
            self.segno % per_log
        )
    }

    /// The LSN at which the segment begins.
    pub fn start_lsn(&self, segment_size: u64) -> Lsn {
        Lsn(self.segno * segment_size)
    }
}

fn segments_per_log(segment_size: u64) -> u64 {
    0x1_0000_0000 / segment_size
}

/// What an archived WAL file is, from its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WalFileKind {
    /// A complete segment (`000000010000000000000003`).
    Segment,
    /// A timeline history file (`00000002.history`).
    History {
        /// The timeline it describes.
        timeline: u32,
    },
    /// A backup-history file (`000000010000000000000003.00000028.backup`).
    BackupHistory,
    /// A partial segment left by a promotion (`000000010000000000000003.partial`).
    Partial,
}

/// Classifies a WAL file name, or `None` if Postgres would never archive such a name (which
/// also rules out path separators and other surprises before the name becomes an object key).
pub fn classify(name: &str) -> Option<WalFileKind> {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if hex(name, 24) {
        return Some(WalFileKind::Segment);
    }
    if let Some(tl) = name.strip_suffix(".history") {
        if hex(tl, 8) {
            return u32::from_str_radix(tl, 16)
                .ok()
                .map(|timeline| WalFileKind::History { timeline });
        }
    }
    if let Some(seg) = name.strip_suffix(".partial") {
        if hex(seg, 24) {
            return Some(WalFileKind::Partial);
        }
    }
    if let Some(rest) = name.strip_suffix(".backup") {
        if let Some((seg, off)) = rest.split_once('.') {
            if hex(seg, 24) && hex(off, 8) {
                return Some(WalFileKind::BackupHistory);
            }
        }
    }
    None
}

/// One line of a timeline history file: `parent` ended at `switch_lsn` and the child began.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineSwitch {
    /// The timeline that ended.
    pub parent: u32,
    /// Where it ended (the first LSN of the child).
    pub switch_lsn: Lsn,
}

/// Parses a timeline history file, the WAL file `name`: one `parentTLI <tab> switchpoint <tab>
/// reason` line per ancestor, oldest first; comments and blank lines are skipped. Errors name
/// the file.
pub fn parse_history(name: &str, text: &str) -> Result<Vec<TimelineSwitch>, PgError> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(tl), Some(lsn)) = (fields.next(), fields.next()) else {
            return Err(PgError::corrupt(name, format!("bad history line {line:?}")));
        };
        out.push(TimelineSwitch {
            parent: tl.parse().map_err(|_| {
                PgError::corrupt(name, format!("bad timeline in history line {line:?}"))
            })?,
            switch_lsn: lsn.parse().map_err(|e| PgError::corrupt(name, e))?,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lsn_notation() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn.0, 0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert!("16B374D848".parse::<Lsn>().is_err());
        assert!("x/1".parse::<Lsn>().is_err());
    }

    #[test]
    fn segment_names_match_postgres() {
        let s = SegmentName::containing(1, "0/3000148".parse().unwrap(), DEFAULT_SEGMENT_SIZE);
        assert_eq!(
            s.file_name(DEFAULT_SEGMENT_SIZE),
            "000000010000000000000003"
        );
        let s = SegmentName::containing(2, "1/FF000000".parse().unwrap(), DEFAULT_SEGMENT_SIZE);
        assert_eq!(
            s.file_name(DEFAULT_SEGMENT_SIZE),
            "0000000200000001000000FF"
        );
        // 64 MiB segments: 64 per 4 GiB.
        let s = SegmentName::parse("00000001000000020000003F", 64 << 20).unwrap();
        assert_eq!(s.segno, 2 * 64 + 63);
        assert!(SegmentName::parse("000000010000000200000040", 64 << 20).is_none());
    }

    #[test]
    fn classifies_archive_names() {
        assert_eq!(
            classify("000000010000000000000003"),
            Some(WalFileKind::Segment)
        );
        assert_eq!(
            classify("00000002.history"),
            Some(WalFileKind::History { timeline: 2 })
        );
        assert_eq!(
            classify("000000010000000000000003.00000028.backup"),
            Some(WalFileKind::BackupHistory)
        );
        assert_eq!(
            classify("000000010000000000000003.partial"),
            Some(WalFileKind::Partial)
        );
        for bad in [
            "",
            "../../config",
            "00000001000000000000000G",
            "x.history",
            "a/b",
        ] {
            assert_eq!(classify(bad), None, "{bad}");
        }
    }

    #[test]
    fn history_files_parse() {
        let h =
            "1\t0/3000000\tno recovery target specified\n\n2\t0/5000A28\tat restore point \"x\"\n";
        let parsed = parse_history("h", h).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[1].parent, 2);
        assert_eq!(parsed[1].switch_lsn, "0/5000A28".parse().unwrap());
        assert!(parse_history("h", "garbage").is_err());
    }

    proptest! {
        #[test]
        fn lsn_round_trips(v in any::<u64>()) {
            prop_assert_eq!(Lsn(v).to_string().parse::<Lsn>().unwrap(), Lsn(v));
        }

        #[test]
        fn segment_names_round_trip(tl in 1u32.., segno in 0u64..(1 << 40), shift in 20u32..31) {
            let size = 1u64 << shift;
            let seg = SegmentName { timeline: tl, segno: segno % (segments_per_log(size) << 32) };
            let name = seg.file_name(size);
            prop_assert_eq!(SegmentName::parse(&name, size), Some(seg));
            prop_assert_eq!(classify(&name), Some(WalFileKind::Segment));
        }
    }
}
