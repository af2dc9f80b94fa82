//! # resilience-pg
//!
//! Postgres for resilience: physical base backups of a co-located cluster
//! ([`base::PgBaseSource`]), WAL archiving ([`archive::WalArchive`], what `resilience wal-push`
//! and `wal-fetch` call), point-in-time recovery that picks its base backup and reports the
//! point reached ([`recovery`]), a check of the archive against the backups with the PITR
//! window per timeline ([`check`]).
//!
//! ```no_run
//! use resilience_pg::{archive::WalArchive, base::PgBaseSource, recovery::{self, RecoveryTarget}};
//! # async fn demo(repo: resilience_core::repo::Repository) -> Result<(), resilience_pg::PgError> {
//! let source = PgBaseSource::new("/var/lib/postgresql/15/main", "host=/run/postgresql user=postgres");
//! let report = repo.backup(&source, Default::default()).await?;
//! let wal = WalArchive::new(&repo, "postgres")?;
//! let plan = recovery::plan(&repo, &wal, &RecoveryTarget::Latest, "latest").await?;
//! assert_eq!(plan.backup.record.id, report.record.id);
//! # Ok(()) }
//! ```

pub mod archive;
pub mod base;
pub mod check;
pub mod cluster;
mod error;
pub mod lsn;
pub mod recovery;
pub mod walscan;

pub use error::PgError;
