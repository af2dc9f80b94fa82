#![warn(missing_docs)]
//! # resilience-core
//!
//! The model and the engine of resilience: the traits that adapters implement, the encrypted,
//! deduplicating repository format, the catalog, verification and locks. No store-specific
//! client code lives here.
//!
//! Read it top-down:
//! - The traits an adapter implements: [`source::Source`] and [`source::Target`] (what is
//!   backed up and where it is restored; [`source::fs`] is the directory source and target),
//!   [`sink::Sink`] (where repository objects live; [`sink::MemorySink`] for tests, wrappers for
//!   append-only, throttled and faulty stores), [`catalog::Catalog`] (the backup records;
//!   [`catalog::RepoCatalog`] keeps them in the repository) and [`keys::KeyProvider`] (where
//!   the key that wraps the repository's keys comes from; [`keys::ring`] holds the copies).
//! - The repository ([`repo::Repository`]): opening, creating, and its locks ([`repo::lock`]).
//!   Its byte format is internal (`format`: chunking, blobs, packs, index, snapshots, framing,
//!   crypto), described in `docs/FORMAT.md`.
//! - The operations ([`ops`]): backup, restore, verify, prune, replicate, lifecycle (expiry,
//!   tiers, holds) and repair; key rotation and re-keying in [`keys`].
//! - Policy and time: [`retention`] (which backups to keep, as a pure function), [`time`]
//!   (clock, stop signal, schedules, the scheduler).
//! - What a service runs and watches: [`jobs`] (ready-made scheduled jobs: backup, verify,
//!   prune, replicate, drill), [`health`] (the report behind `/health` and `/metrics`, and the
//!   [`health::Monitor`] that serves it), [`drill`] (restore drills and their records) and
//!   [`failover`] (a plan of steps that moves a service to another region, journaled and
//!   resumable).
//! - What adapters share to reach their stores: [`net`] (the loopback check and, with the
//!   `tls` feature, rustls client configuration).
//!
//! The types a service embeds are re-exported here.
//!
//! ```no_run
//! use std::sync::Arc;
//! use resilience_core::{DirSource, DirTarget, InitOptions, MemorySink, PassphraseProvider, Repository};
//! # async fn demo() -> resilience_core::Result<()> {
//! let sink = Arc::new(MemorySink::new());
//! let key = PassphraseProvider::new("correct horse battery staple");
//! let repo = Repository::init(sink, &key, InitOptions::default()).await?;
//! let report = repo.backup(&DirSource::new("/srv/exports"), Default::default()).await?;
//! repo.restore(&report.record.id, &DirTarget::new("/tmp/restored"), Default::default()).await?;
//! assert!(repo.verify(Default::default()).await?.is_ok());
//! # Ok(()) }
//! ```

pub mod catalog;
pub mod drill;
pub mod error;
pub mod failover;
pub(crate) mod format;
pub mod health;
#[cfg(test)]
mod hostile_bytes;
pub mod jobs;
pub mod keys;
pub mod net;
pub mod ops;
pub mod repo;
pub mod retention;
pub mod sink;
pub mod source;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod time;

pub use error::{Error, Result};

pub use catalog::{BackupRecord, BackupStatus, Catalog, CatalogQuery, RepoCatalog};
pub use keys::{EnvKeyProvider, KeyFileProvider, KeyProvider, PassphraseProvider};
pub use ops::backup::{BackupOptions, BackupReport};
pub use ops::restore::RestoreOptions;
pub use ops::verify::{VerifyOptions, VerifyReport};
pub use repo::{InitOptions, Repository};
pub use sink::{MemorySink, Sink};
pub use source::fs::{DirSource, DirTarget};
pub use source::{Source, Target};
pub use time::clock::{Clock, SystemClock};
pub use time::scheduler::Scheduler;

/// The repository format's internals, for benches and format tests only: not a stable API.
#[doc(hidden)]
pub mod internals {
    pub use crate::format::{blob, chunker, crypto, index, object, pack, snapshot};
}
