//! What a kind of source implements ([`Drill`]), and the run every drill shares ([`run`]):
//! pick the snapshot, make the scratch directory, time the drill, tear the copy down, record
//! the report.

use std::path::{Path, PathBuf};
use std::time::Instant;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::catalog::BackupRecord;
use crate::repo::Repository;

use super::scratch::Scratch;
use super::{error_chain, DrillCheck, DrillError, DrillReport};

/// The drill of one kind of source: restores a given snapshot into a scratch directory, runs
/// its checks, and says what the copy holds and what is left running.
///
/// Implementations report failures (a restore that fails, a server that does not start, a
/// check that finds a difference) as failed [`DrillCheck`]s, never as a panic: [`run`] records
/// them.
#[async_trait]
pub trait Drill: Send + Sync {
    /// The source drilled: its id in the catalog, whose newest succeeded backup [`run`] drills
    /// when no snapshot is named.
    fn source(&self) -> &str;

    /// The kind of backup it restores, as the catalog records it (`dir`, `postgres`, `redis`,
    /// `bucket`); [`run`] refuses a snapshot of another kind.
    fn kind(&self) -> &str;

    /// Restores `record` into `scratch` (an empty directory of its own, mode 0700, removed after
    /// the drill), runs the checks, and returns them with the newest point the copy holds.
    ///
    /// A server it started stays up until [`run`] has measured the RTO: hand it back as
    /// [`Drilled::running`], and `run` tears it down, on every path.
    async fn restore_and_check(
        &self,
        repo: &Repository,
        record: &BackupRecord,
        scratch: &Path,
    ) -> Drilled;
}

/// What a scratch copy left running (a database server), torn down by [`run`] once the drill
/// is measured, before the scratch directory is removed.
#[async_trait]
pub trait ScratchCopy: Send {
    /// Stops it. A copy that cannot be stopped is logged, not reported: the drill's result
    /// stands.
    async fn tear_down(self: Box<Self>);
}

/// What a kind-specific drill found.
pub struct Drilled {
    /// The checks, in the order they ran.
    pub checks: Vec<DrillCheck>,
    /// The newest point the restored copy holds (`None`: the snapshot's start).
    pub newest_point: Option<DateTime<Utc>>,
    /// What is still running, to be torn down after the RTO is measured.
    pub running: Option<Box<dyn ScratchCopy>>,
}

impl Drilled {
    /// Checks that left nothing running.
    pub fn new(checks: Vec<DrillCheck>, newest_point: Option<DateTime<Utc>>) -> Self {
        Drilled {
            checks,
            newest_point,
            running: None,
        }
    }

    /// The same, with what is still running.
    pub fn with_running(mut self, running: Box<dyn ScratchCopy>) -> Self {
        self.running = Some(running);
        self
    }
}

impl std::fmt::Debug for Drilled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drilled")
            .field("checks", &self.checks)
            .field("newest_point", &self.newest_point)
            .field("running", &self.running.is_some())
            .finish()
    }
}

/// How [`run`] drills.
#[derive(Clone, Debug, Default)]
pub struct DrillOptions {
    /// Where the scratch directory goes (default: the system's temporary directory). The
    /// database user a scratch server runs as must be able to reach it.
    pub scratch_dir: Option<PathBuf>,
}

/// Drills `drill`'s source: restores `snapshot` (an id or a unique prefix; default: the newest
/// succeeded backup of the source) into a new scratch directory, checks it, tears it down,
/// records the report in the catalog and returns it.
///
/// The RTO runs from the start to the end of the checks (a verified, usable copy), before the
/// tear-down; the RPO from the newest point the copy holds (the snapshot's start when the drill
/// cannot say) to that same moment.
///
/// Errors are reserved for drills that cannot begin ([`DrillError`]: no such snapshot, one of
/// another kind, no scratch directory, an unreadable catalog); a restore or check that fails is
/// a failed check in the report, and so is a report that cannot be recorded.
pub async fn run(
    repo: &Repository,
    drill: &dyn Drill,
    snapshot: Option<&str>,
    options: &DrillOptions,
) -> Result<DrillReport, DrillError> {
    let source = drill.source();
    let started_at = repo.clock().now();
    let began = Instant::now();
    let record = repo
        .resolve_snapshot(snapshot.unwrap_or("latest"), Some(source))
        .await
        .map_err(|e| match e {
            crate::Error::SnapshotNotFound { .. } => DrillError::NoSnapshot {
                source_id: source.to_owned(),
                snapshot: snapshot.map(str::to_owned),
            },
            e => e.into(),
        })?;
    if record.source.kind != drill.kind() {
        return Err(DrillError::WrongKind {
            source_id: source.to_owned(),
            snapshot: record.id.clone(),
            found: record.source.kind.clone(),
            expected: drill.kind().to_owned(),
        });
    }
    let base = options
        .scratch_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir);
    let scratch = Scratch::create(&base, source, &record.id)?;
    tracing::info!(source, snapshot = %record.id, scratch = %scratch.path().display(), "drill started");
    let drilled = drill.restore_and_check(repo, &record, scratch.path()).await;
    let checked = began.elapsed();
    if let Some(running) = drilled.running {
        running.tear_down().await;
    }
    drop(scratch);
    let rto = checked.as_secs_f64();
    let ended = started_at + chrono::Duration::from_std(checked).unwrap_or_default();
    let newest = drilled.newest_point.unwrap_or(record.started_at);
    let rpo = ((ended - newest).num_milliseconds() as f64 / 1000.0).max(0.0);
    let mut report = DrillReport::new(source, &record.id, started_at, rto, rpo, drilled.checks);
    if let Err(e) = repo.record_drill(&report).await {
        report.checks.push(DrillCheck::fail(
            "record",
            format!(
                "the drill's result could not be recorded in the catalog (health and metrics \
                 will not see it): {}",
                error_chain(&e)
            ),
        ));
        report.ok = false;
    }
    Ok(report)
}
