//! Is every backup recoverable, and to when? The WAL archive is checked against the base
//! backups in the catalog: from each backup's start, every segment must be archived, on the
//! timeline that owns it (history files say where each timeline branched off its parent).
//! The result is a PITR window per timeline and the gaps that break it.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use resilience_core::catalog::{BackupRecord, BackupStatus, Catalog, CatalogQuery};
use resilience_core::repo::Repository;
use serde::Serialize;

use crate::archive::WalArchive;
use crate::base::BaseBackupInfo;
use crate::error::PgError;
use crate::lsn::{self, Lsn, SegmentName, TimelineSwitch, WalFileKind};

/// Segments the window search walks back to find a commit time.
const COMMIT_SEARCH_LIMIT: usize = 64;

/// The timeline histories found in the archive.
#[derive(Clone, Debug, Default)]
pub struct Timelines {
    histories: BTreeMap<u32, Vec<TimelineSwitch>>,
}

impl Timelines {
    /// Reads every `.history` file of the archive.
    pub async fn load(wal: &WalArchive) -> Result<Self, PgError> {
        let mut histories = BTreeMap::new();
        for file in wal.list().await? {
            if let WalFileKind::History { timeline } = file.kind {
                let (_, content) = wal.fetch(&file.name).await?.ok_or_else(|| {
                    PgError::Invalid(format!("{} vanished while it was read", file.name))
                })?;
                let text = String::from_utf8_lossy(&content);
                let parsed = lsn::parse_history(&file.name, &text)?;
                histories.insert(timeline, parsed);
            }
        }
        Ok(Timelines { histories })
    }

    /// Builds from parsed histories (for tests and callers that have them).
    pub fn from_histories(histories: BTreeMap<u32, Vec<TimelineSwitch>>) -> Self {
        Timelines { histories }
    }

    /// The timeline that owns `segno` when recovering along `timeline`'s history: an ancestor
    /// up to the segment before its switch point, then its child.
    pub fn owner(&self, timeline: u32, segno: u64, segment_size: u64) -> u32 {
        if let Some(history) = self.histories.get(&timeline) {
            for switch in history {
                if segno < switch.switch_lsn.0 / segment_size {
                    return switch.parent;
                }
            }
        }
        timeline
    }

    /// The newest timeline that is `from` or descends from it (where `latest` recovery goes).
    pub fn newest_descendant(&self, from: u32) -> u32 {
        self.histories
            .keys()
            .rev()
            .copied()
            .find(|&t| self.lineage_end(t, from).is_some())
            .unwrap_or(from)
    }

    /// Whether `ancestor` is `timeline` or one of its ancestors, and where (if an ancestor)
    /// it was left.
    pub fn lineage_end(&self, timeline: u32, ancestor: u32) -> Option<Option<Lsn>> {
        if ancestor == timeline {
            return Some(None);
        }
        self.histories.get(&timeline).and_then(|h| {
            h.iter()
                .find(|s| s.parent == ancestor)
                .map(|s| Some(s.switch_lsn))
        })
    }
}

/// The recovery window of one timeline.
#[derive(Clone, Debug, Serialize)]
pub struct TimelineWindow {
    /// The timeline.
    pub timeline: u32,
    /// Segments archived on it.
    pub segments: usize,
    /// Its newest archived segment.
    pub last_segment: Option<String>,
    /// Base backups from which recovery along this timeline can start.
    pub backups: usize,
    /// The earliest time a recovery can stop at (the oldest usable backup's end).
    pub earliest: Option<DateTime<Utc>>,
    /// The latest commit recovery can reach.
    pub latest: Option<DateTime<Utc>>,
    /// Missing segments after a backup's start, in order.
    pub gaps: Vec<String>,
}

/// What `check` found.
#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    /// The WAL archive checked.
    pub source: String,
    /// One window per timeline with archived segments.
    pub timelines: Vec<TimelineWindow>,
    /// Base backups considered.
    pub backups: usize,
    /// Problems found, in words.
    pub problems: Vec<String>,
}

impl CheckReport {
    /// Whether every backup's WAL is complete.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// A Postgres base backup as the catalog has it.
#[derive(Clone, Debug)]
pub struct BaseBackup {
    /// The catalog record.
    pub record: BackupRecord,
    /// Its Postgres facts.
    pub info: BaseBackupInfo,
}

/// The succeeded base backups whose WAL goes to `wal_source`, oldest first.
pub async fn base_backups(repo: &Repository, wal_source: &str) -> Result<Vec<BaseBackup>, PgError> {
    let records = repo
        .catalog()
        .list(&CatalogQuery {
            statuses: vec![BackupStatus::Succeeded],
            ..Default::default()
        })
        .await?;
    Ok(records
        .into_iter()
        .filter(|r| r.source.kind == "postgres")
        .filter_map(|record| {
            let info = BaseBackupInfo::from_metadata(&record.source_metadata)?;
            (info.wal_source == wal_source).then_some(BaseBackup { record, info })
        })
        .collect())
}

/// The continuous WAL from a start point along a timeline.
pub(crate) struct Reach {
    /// The last segment of the unbroken run from the start.
    pub last: Option<SegmentName>,
    /// The first missing segment, if the run stops before the newest archived segment.
    pub gap: Option<SegmentName>,
}

/// Walks the segments from `from` along `timeline` while they are archived.
pub(crate) fn reach(
    timelines: &Timelines,
    present: &BTreeSet<SegmentName>,
    timeline: u32,
    from: u64,
    newest: u64,
    segment_size: u64,
) -> Reach {
    let mut last = None;
    for segno in from..=newest {
        let seg = SegmentName {
            timeline: timelines.owner(timeline, segno, segment_size),
            segno,
        };
        if !present.contains(&seg) {
            return Reach {
                last,
                gap: Some(seg),
            };
        }
        last = Some(seg);
    }
    Reach { last, gap: None }
}

/// The commit time of the last commit at or before `seg` (searching a few segments back).
pub(crate) async fn latest_commit_at(
    wal: &WalArchive,
    timelines: &Timelines,
    timeline: u32,
    seg: SegmentName,
    floor: u64,
    segment_size: u64,
) -> Result<Option<DateTime<Utc>>, PgError> {
    let mut segno = seg.segno;
    for _ in 0..COMMIT_SEARCH_LIMIT {
        let s = SegmentName {
            timeline: timelines.owner(timeline, segno, segment_size),
            segno,
        };
        if let Some(header) = wal.header(&s.file_name(segment_size)).await? {
            if let Some(t) = header.summary.and_then(|s| s.last_commit) {
                return Ok(Some(t));
            }
        }
        if segno == 0 || segno <= floor {
            break;
        }
        segno -= 1;
    }
    Ok(None)
}

/// Checks the archive of `wal` against the base backups that use it.
pub async fn check(repo: &Repository, wal: &WalArchive) -> Result<CheckReport, PgError> {
    let backups = base_backups(repo, wal.source()).await?;
    let timelines = Timelines::load(wal).await?;
    let segment_size = backups
        .last()
        .map(|b| b.info.wal_segment_size)
        .unwrap_or(lsn::DEFAULT_SEGMENT_SIZE);
    let by_timeline = wal.segments(segment_size).await?;
    let present: BTreeSet<SegmentName> = by_timeline.values().flatten().copied().collect();
    let mut report = CheckReport {
        source: wal.source().to_owned(),
        timelines: Vec::new(),
        backups: backups.len(),
        problems: Vec::new(),
    };
    if backups.is_empty() {
        report.problems.push(format!(
            "no succeeded base backup uses WAL archive {:?}",
            wal.source()
        ));
    }
    let mut timeline_ids: BTreeSet<u32> = by_timeline.keys().copied().collect();
    timeline_ids.extend(backups.iter().map(|b| b.info.timeline));
    for timeline in timeline_ids {
        let segments = by_timeline.get(&timeline).map_or(0, Vec::len);
        // The newest segment recovery along this timeline could use.
        let newest = present
            .iter()
            .filter(|s| timelines.owner(timeline, s.segno, segment_size) == s.timeline)
            .filter(|s| {
                s.timeline == timeline || timelines.lineage_end(timeline, s.timeline).is_some()
            })
            .map(|s| s.segno)
            .max();
        let mut window = TimelineWindow {
            timeline,
            segments,
            last_segment: by_timeline
                .get(&timeline)
                .and_then(|v| v.iter().max())
                .map(|s| s.file_name(segment_size)),
            backups: 0,
            earliest: None,
            latest: None,
            gaps: Vec::new(),
        };
        let mut gaps = BTreeSet::new();
        for b in &backups {
            let Some(left_at) = timelines.lineage_end(timeline, b.info.timeline) else {
                continue;
            };
            if left_at.is_some_and(|end| b.info.stop_lsn >= end) {
                continue; // the backup ends after its timeline branched to this one
            }
            let start = SegmentName::containing(b.info.timeline, b.info.start_lsn, segment_size);
            let stop = b.info.stop_lsn.0 / segment_size;
            let newest = newest.unwrap_or(start.segno).max(stop);
            let run = reach(
                &timelines,
                &present,
                timeline,
                start.segno,
                newest,
                segment_size,
            );
            if let Some(gap) = run.gap {
                gaps.insert(gap);
            }
            let Some(last) = run.last.filter(|l| l.segno >= stop) else {
                report.problems.push(format!(
                    "base backup {} cannot be restored on timeline {timeline}: WAL segment {} \
                     (needed from its start {} to its end {}) is not archived",
                    b.record.id,
                    run.gap
                        .map(|g| g.file_name(segment_size))
                        .unwrap_or_default(),
                    b.info.start_lsn,
                    b.info.stop_lsn
                ));
                continue;
            };
            window.backups += 1;
            window.earliest = Some(
                window
                    .earliest
                    .map_or(b.info.stop_time, |e: DateTime<Utc>| e.min(b.info.stop_time)),
            );
            let latest = latest_commit_at(wal, &timelines, timeline, last, stop, segment_size)
                .await?
                .unwrap_or(b.info.stop_time)
                .max(b.info.stop_time);
            window.latest = Some(
                window
                    .latest
                    .map_or(latest, |l: DateTime<Utc>| l.max(latest)),
            );
        }
        window.gaps = gaps.iter().map(|g| g.file_name(segment_size)).collect();
        for gap in &window.gaps {
            report.problems.push(format!(
                "timeline {timeline}: WAL segment {gap} is missing from the archive; recovery \
                 cannot pass it"
            ));
        }
        report.timelines.push(window);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    fn seg(tl: u32, segno: u64) -> SegmentName {
        SegmentName {
            timeline: tl,
            segno,
        }
    }

    fn timelines() -> Timelines {
        // Timeline 2 branched from 1 inside segment 5.
        let mut h = BTreeMap::new();
        h.insert(
            2,
            vec![TimelineSwitch {
                parent: 1,
                switch_lsn: Lsn(5 * SEG + 0x28),
            }],
        );
        Timelines::from_histories(h)
    }

    #[test]
    fn segments_belong_to_the_timeline_that_owns_them() {
        let t = timelines();
        assert_eq!(t.owner(2, 4, SEG), 1);
        assert_eq!(t.owner(2, 5, SEG), 2);
        assert_eq!(t.owner(1, 7, SEG), 1);
        assert_eq!(t.lineage_end(2, 1), Some(Some(Lsn(5 * SEG + 0x28))));
        assert_eq!(t.lineage_end(1, 2), None);
        assert_eq!(t.newest_descendant(1), 2);
        assert_eq!(t.newest_descendant(2), 2);
        assert_eq!(t.newest_descendant(5), 5);
    }

    #[test]
    fn reach_crosses_a_timeline_switch_and_stops_at_a_gap() {
        let t = timelines();
        let present: BTreeSet<_> = [
            seg(1, 3),
            seg(1, 4),
            seg(1, 5),
            seg(2, 5),
            seg(2, 6),
            seg(2, 8),
        ]
        .into_iter()
        .collect();
        let r = reach(&t, &present, 2, 3, 8, SEG);
        assert_eq!(r.last, Some(seg(2, 6)));
        assert_eq!(r.gap, Some(seg(2, 7)));
        let r = reach(&t, &present, 1, 3, 5, SEG);
        assert_eq!(r.last, Some(seg(1, 5)));
        assert_eq!(r.gap, None);
    }
}

/// What [`expire_wal`] removed (or would remove).
#[derive(Clone, Debug, Serialize)]
pub struct WalExpiry {
    /// The oldest segment kept: the start of the oldest kept base backup.
    pub kept_from: Option<String>,
    /// WAL files deleted (or, in a dry run, to delete), oldest first.
    pub deleted: Vec<String>,
    /// WAL files no kept base backup needs that the store's object lock still holds, with
    /// their retain-until dates: an expiry after the date deletes them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deferred: Vec<(String, chrono::DateTime<chrono::Utc>)>,
}

/// Deletes archived WAL that no kept base backup needs: segments (and partial and
/// backup-history files) before the start of the oldest succeeded base backup using this
/// archive. Timeline history files are always kept. Nothing is deleted while a base backup of
/// the archive is running (its start is not recorded yet) or when there is no base backup.
pub async fn expire_wal(
    repo: &Repository,
    wal: &WalArchive,
    dry_run: bool,
) -> Result<WalExpiry, PgError> {
    let running = repo
        .catalog()
        .list(&CatalogQuery {
            statuses: vec![BackupStatus::Running],
            ..Default::default()
        })
        .await?
        .into_iter()
        .any(|r| r.source.kind == "postgres");
    if running {
        return Err(PgError::Invalid(
            "a Postgres base backup is running: its WAL is not accounted for yet; expire later"
                .into(),
        ));
    }
    let backups = base_backups(repo, wal.source()).await?;
    let Some(oldest) = backups
        .iter()
        .min_by_key(|b| b.info.start_lsn.0 / b.info.wal_segment_size)
    else {
        return Ok(WalExpiry {
            kept_from: None,
            deleted: Vec::new(),
            deferred: Vec::new(),
        });
    };
    let size = oldest.info.wal_segment_size;
    let first_needed = oldest.info.start_lsn.0 / size;
    let mut deleted = Vec::new();
    let mut deferred = Vec::new();
    for file in wal.list().await? {
        let segment = match file.kind {
            WalFileKind::History { .. } => continue,
            _ => SegmentName::parse(&file.name[..24], size),
        };
        if segment.is_some_and(|s| s.segno < first_needed) {
            if !dry_run {
                match wal.delete(&file.name).await {
                    Ok(()) => {}
                    Err(PgError::Sink(e)) if e.locked_until().is_some() => {
                        deferred.push((file.name, e.locked_until().expect("checked")));
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            deleted.push(file.name);
        }
    }
    Ok(WalExpiry {
        kept_from: Some(oldest.info.start_wal.clone()),
        deleted,
        deferred,
    })
}
