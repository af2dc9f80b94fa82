#![warn(missing_docs)]
//! # resilience-pg
//!
//! Postgres for resilience: physical base backups of a co-located cluster
//! ([`base::PgBaseSource`]) that validate every page's checksum on the way
//! ([`page_verify`], [`page_checksum`]), WAL archiving ([`archive::WalArchive`], what `resilience wal-push`
//! and `wal-fetch` call), point-in-time recovery that picks its base backup and reports the
//! point reached ([`recovery`]), a warm standby fed from a repository and its promotion
//! ([`standby`]) and its steps of a failover ([`failover`]), a check of the archive against the backups with the PITR
//! window per timeline ([`check`]), and logical table-level backup and restore for bringing
//! back one table or one tenant's rows ([`table`]); the backup catalog in a Postgres schema for
//! compliance queries ([`catalog`]); the restore drill of a base backup ([`drill::PgDrill`])
//! and the figures it checks, taken at backup time ([`drill::backup_figures`]). Every
//! connection goes through [`connect`], which speaks TLS as libpq does (`sslmode` up to
//! `verify-full`, client certificates).
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
pub mod archive_wait;
pub mod base;
pub mod catalog;
pub mod check;
pub mod cluster;
pub mod connect;
pub mod drill;
mod error;
pub mod failover;
#[cfg(test)]
mod hostile_bytes;
pub mod lsn;
pub mod page_checksum;
pub mod page_verify;
pub mod pgdata_target;
pub mod recovery;
pub mod standby;
pub mod table;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod walscan;

pub use error::{describe, PgError};
