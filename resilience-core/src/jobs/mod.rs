//! Ready-made scheduled jobs: what a service hands to the [`Scheduler`](crate::time::scheduler::Scheduler)
//! to back up a source, verify the repository, apply retention and prune, replicate to another
//! region and drill restores — the same jobs the `resilience daemon` runs.
//!
//! Each job is a value built from a [`Repository`](crate::repo::Repository) and what it works
//! on, and implements [`ScheduledJob`](crate::time::scheduler::ScheduledJob): its run returns a
//! one-line summary for the job board, or an error whose chain names what failed.
//!
//! ```no_run
//! use std::sync::Arc;
//! use resilience_core::jobs::{BackupJob, VerifyJob};
//! use resilience_core::time::schedule::JobSchedule;
//! use resilience_core::{DirSource, Repository, Scheduler};
//! # fn demo(repo: Repository) -> Result<(), Box<dyn std::error::Error>> {
//! let source = Arc::new(DirSource::new("/srv/exports").with_id("exports"));
//! let scheduler = Scheduler::new(repo.clock().clone())
//!     .job(
//!         JobSchedule::new("exports", "0 30 2 * * *", "Europe/Berlin")?,
//!         Arc::new(BackupJob::new(repo.clone(), source)),
//!     )
//!     .job(
//!         JobSchedule::new("verify", "0 0 4 * * Sun", "Europe/Berlin")?,
//!         Arc::new(VerifyJob::new(repo.clone()).full(true)),
//!     );
//! # Ok(()) }
//! ```

mod backup;
mod drill;
mod error;
mod prune;
mod replicate;
mod verify;

pub use backup::{BackupFigures, BackupJob};
pub use drill::DrillJob;
pub use error::JobError;
pub use prune::PruneJob;
pub use replicate::ReplicateJob;
pub use verify::VerifyJob;
