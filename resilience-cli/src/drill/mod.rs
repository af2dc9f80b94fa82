//! Restore drills (`resilience drill`, and the daemon's drill jobs): restore the newest backup
//! of a source into a scratch place, check it, measure RTO and RPO, record the result in the
//! catalog, tear the scratch copy down.
//!
//! Each kind of source has its module; each returns a [`Drilled`]: the checks it ran and the
//! newest point the copy holds. This module picks the snapshot, times the drill, makes the
//! scratch directory (removed on every path, failures included) and records the report.

mod bucket;
mod dir;
mod postgres;
mod redis;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::{DateTime, Utc};
use resilience_core::catalog::BackupRecord;
use resilience_core::drill::{DrillCheck, DrillReport};
use resilience_core::repo::Repository;

use crate::config::{DaemonConfig, SourceConfig, SourceKind};
use crate::CliError;

/// The label prefix of the figures a Postgres backup records for its drills.
pub const QUERY_LABEL: &str = "drill.query.";

/// The label prefix recording why a figure could not be taken at backup time.
pub const QUERY_ERROR_LABEL: &str = "drill.query_error.";

/// Figures a drill later compares with the restored copy, taken at backup time and recorded
/// as the backup's labels (`drill.query.<name>` for Postgres queries).
///
/// A query that fails does not fail the backup (a broken check must not cost a backup): its
/// error is recorded as `drill.query_error.<name>` and the drill that finds no figure fails,
/// quoting it.
pub async fn backup_figures(source: &SourceConfig) -> Result<BTreeMap<String, String>, CliError> {
    match source.kind {
        SourceKind::Postgres if !source.drill.queries.is_empty() => {
            postgres::backup_figures(source).await
        }
        _ => Ok(BTreeMap::new()),
    }
}

/// What a kind-specific drill found.
pub(crate) struct Drilled {
    /// The checks, in the order they ran.
    pub checks: Vec<DrillCheck>,
    /// The newest point the restored copy holds (`None`: the snapshot's start).
    pub newest_point: Option<DateTime<Utc>>,
    /// When the checks ended (the copy was verified and usable), before the tear-down.
    pub checked_at: Instant,
}

impl Drilled {
    /// Checks that ended now.
    pub fn new(checks: Vec<DrillCheck>, newest_point: Option<DateTime<Utc>>) -> Self {
        Drilled {
            checks,
            newest_point,
            checked_at: Instant::now(),
        }
    }
}

/// Drills `source`: restores `snapshot` (default: its newest succeeded backup), checks it,
/// records the report in the catalog and returns it.
///
/// Errors are reserved for drills that cannot begin (no such snapshot, an unreadable
/// catalog); a restore or check that fails is a failed check in the report.
pub async fn run(
    repo: &Repository,
    config: &DaemonConfig,
    source: &SourceConfig,
    snapshot: Option<&str>,
) -> Result<DrillReport, CliError> {
    let started_at = repo.clock().now();
    let began = Instant::now();
    let record = repo
        .resolve_snapshot(snapshot.unwrap_or("latest"), Some(&source.name))
        .await
        .map_err(|e| match e {
            resilience_core::Error::SnapshotNotFound { .. } => CliError::Usage(format!(
                "drill of {}: no succeeded backup {} of this source in the catalog",
                source.name,
                snapshot.unwrap_or("(latest)")
            )),
            e => e.into(),
        })?;
    let expected_kind = match source.kind {
        SourceKind::Dir => "dir",
        SourceKind::Postgres => "postgres",
        SourceKind::Redis => "redis",
        SourceKind::Bucket => "bucket",
    };
    if record.source.kind != expected_kind {
        return Err(CliError::Usage(format!(
            "drill of {}: snapshot {} is a {} backup, but the source is of kind {}",
            source.name,
            record.id,
            record.source.kind,
            source.kind.as_str()
        )));
    }
    let scratch = Scratch::create(source, &record)?;
    tracing::info!(source = %source.name, snapshot = %record.id, scratch = %scratch.path.display(), "drill started");
    let drilled = match source.kind {
        SourceKind::Dir => dir::drill(repo, &record, &scratch.path).await,
        SourceKind::Postgres => postgres::drill(repo, config, source, &record, &scratch.path).await,
        SourceKind::Redis => redis::drill(repo, source, &record, &scratch.path).await,
        SourceKind::Bucket => bucket::drill(repo, &record, &scratch.path).await,
    };
    // The tear-down: the kind's own (servers) ran inside its drill; the directory goes here.
    drop(scratch);
    let rto = drilled.checked_at.duration_since(began).as_secs_f64();
    let ended = started_at
        + chrono::Duration::from_std(drilled.checked_at.duration_since(began)).unwrap_or_default();
    let newest = drilled.newest_point.unwrap_or(record.started_at);
    let rpo = ((ended - newest).num_milliseconds() as f64 / 1000.0).max(0.0);
    let mut report = DrillReport::new(
        &source.name,
        &record.id,
        started_at,
        rto,
        rpo,
        drilled.checks,
    );
    if let Err(e) = repo.record_drill(&report).await {
        report.checks.push(DrillCheck::fail(
            "record",
            format!(
                "the drill's result could not be recorded in the catalog (health and metrics \
                 will not see it): {}",
                chain(&e)
            ),
        ));
        report.ok = false;
    }
    Ok(report)
}

/// An error with its causes, as one line (a restore error names the damaged object; its
/// cause says what was wrong with it).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// The check of a restore's result: what was restored, or the error naming what failed.
pub(crate) fn restore_check(
    result: &Result<resilience_core::ops::restore::RestoreReport, impl std::error::Error>,
) -> DrillCheck {
    match result {
        Ok(r) => DrillCheck::pass(
            "restore",
            format!(
                "{} entries, {} bytes restored in {:.1} s, every blob's checksum verified",
                r.entries,
                r.bytes,
                r.duration.as_secs_f64()
            ),
        ),
        Err(e) => DrillCheck::fail("restore", chain(e)),
    }
}

/// A scratch directory of one drill, removed when dropped (also when the drill failed).
struct Scratch {
    path: PathBuf,
}

impl Scratch {
    fn create(source: &SourceConfig, record: &BackupRecord) -> Result<Self, CliError> {
        let base = source
            .drill
            .scratch_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir);
        // The process and the time: two drills of one source (two jobs of a daemon, or a
        // daemon and a command) never share a directory.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let name: String = format!(
            "resilience-drill-{}-{}-{}-{nanos:09}",
            source.name,
            record.id.chars().take(12).collect::<String>(),
            std::process::id()
        )
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
        let path = base.join(name);
        if path.exists() {
            return Err(CliError::Usage(format!(
                "scratch directory {} already exists (another drill of {} is running, or one \
                 was killed: remove it)",
                path.display(),
                source.name
            )));
        }
        std::fs::create_dir_all(&path).map_err(|e| {
            CliError::Usage(format!(
                "cannot create the drill's scratch directory {}: {e} (set drill.scratch_dir)",
                path.display()
            ))
        })?;
        set_mode(&path, 0o700)?;
        Ok(Scratch { path })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the drill's scratch directory");
        }
    }
}

pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<(), CliError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| CliError::Usage(format!("chmod {}: {e}", path.display())))
}

/// A free TCP port on the loopback interface.
pub(crate) fn free_port() -> Result<u16, CliError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| CliError::Usage(format!("no free loopback port for the scratch copy: {e}")))
}
