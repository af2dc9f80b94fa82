//! Restore drills (`resilience drill`, and the daemon's drill jobs): a `[[source]]` and its
//! `[source.drill]` mapped to the library's drills ([`resilience_core::drill`]), whose run picks
//! the snapshot, restores, checks, measures RTO and RPO, records the report and tears the
//! scratch copy down; and the figures a daemon's Postgres backups take for them.

use std::sync::Arc;

use resilience_core::drill::{self, DirDrill, Drill, DrillError, DrillOptions, DrillReport};
use resilience_core::jobs::BackupFigures;
use resilience_core::repo::Repository;
use resilience_objstore::drill::BucketDrill;
use resilience_objstore::rds::{RdsClient, RdsDrill, WaitPolicy};
use resilience_pg::drill::{Compare as PgCompare, DrillQuery, PgDrill, QueryFigures, WalFetch};
use resilience_pg::PgError;
use resilience_redis::drill::RedisDrill;

use crate::cli::Global;
use crate::config::{Compare, SourceConfig, SourceKind};
use crate::{wal_fetch, CliError};

/// Figures a drill later compares with the restored copy, taken at each backup and recorded
/// as the backup's labels (`drill.query.<name>` for Postgres queries; see
/// [`resilience_pg::drill::QueryFigures`]); `None` for sources whose drill needs none.
pub fn backup_figures(source: &SourceConfig) -> Result<Option<Arc<dyn BackupFigures>>, CliError> {
    match source.kind {
        SourceKind::Postgres if !source.drill.queries.is_empty() => {
            let dsn = source.dsn.as_deref().ok_or_else(|| {
                CliError::Usage(format!("source {}: `dsn` is missing", source.name))
            })?;
            Ok(Some(Arc::new(QueryFigures::new(dsn, queries(source)))))
        }
        _ => Ok(None),
    }
}

/// Drills `source`: restores `snapshot` (default: its newest succeeded backup), checks it,
/// records the report in the catalog and returns it. A Postgres copy fetches WAL with this
/// program's `wal-fetch`, on the repository and credentials of `g`.
///
/// Errors are reserved for drills that cannot begin (no such snapshot, an unreadable
/// catalog); a restore or check that fails is a failed check in the report.
pub async fn run(
    repo: &Repository,
    g: &Global,
    source: &SourceConfig,
    snapshot: Option<&str>,
) -> Result<DrillReport, CliError> {
    let options = DrillOptions {
        scratch_dir: source.drill.scratch_dir.clone(),
    };
    let kind = library_drill(g, source)?;
    drill::run(repo, kind.as_ref(), snapshot, &options)
        .await
        .map_err(|e| usage(e, source))
}

/// The library's drill of a `[[source]]`.
pub fn library_drill(g: &Global, source: &SourceConfig) -> Result<Box<dyn Drill>, CliError> {
    Ok(match source.kind {
        SourceKind::Dir => Box::new(DirDrill::new(&source.name)),
        SourceKind::Postgres => {
            let g = g.clone();
            let wal = WalFetch::command_for_archive(move |archive| {
                wal_fetch::restore_command(&g, archive).map_err(|e| PgError::Setup(e.to_string()))
            });
            let mut pg = PgDrill::new(&source.name, wal).with_queries(queries(source));
            if let Some(dsn) = &source.dsn {
                pg = pg.with_dsn(dsn);
            }
            Box::new(pg)
        }
        SourceKind::Redis => Box::new(
            RedisDrill::new(&source.name).with_sample_every(source.drill.sample_every.unwrap_or(1)),
        ),
        SourceKind::Bucket => Box::new(BucketDrill::new(&source.name)),
        SourceKind::Rds => {
            let client = RdsClient::from_env(source.region.as_deref())?;
            let mut wait = WaitPolicy::default();
            if let Some(poll) = source.drill.poll_seconds {
                wait.poll = std::time::Duration::from_secs(poll.max(1));
            }
            Box::new(
                RdsDrill::new(&source.name, client)
                    .in_region(source.drill.region.clone())
                    .with_wait(wait),
            )
        }
    })
}

/// The `[source.drill]` queries.
fn queries(source: &SourceConfig) -> Vec<DrillQuery> {
    source
        .drill
        .queries
        .iter()
        .map(|q| DrillQuery {
            name: q.name.clone(),
            sql: q.sql.clone(),
            compare: match q.compare {
                Compare::Equal => PgCompare::Equal,
                Compare::AtLeast => PgCompare::AtLeast,
            },
        })
        .collect()
}

/// A drill that cannot begin, in the words of the config file.
fn usage(e: DrillError, source: &SourceConfig) -> CliError {
    match e {
        DrillError::Core(e) => e.into(),
        DrillError::WrongKind {
            snapshot, found, ..
        } => CliError::Usage(format!(
            "drill of {}: snapshot {snapshot} is a {found} backup, but the source is of kind {}",
            source.name,
            source.kind.as_str()
        )),
        DrillError::Scratch {
            operation: "create",
            path,
            source: e,
        } => CliError::Usage(format!(
            "cannot create the drill's scratch directory {}: {e} (set drill.scratch_dir)",
            path.display()
        )),
        DrillError::Scratch {
            operation,
            path,
            source: e,
        } => CliError::Usage(format!("{operation} {}: {e}", path.display())),
        e => CliError::Usage(e.to_string()),
    }
}
