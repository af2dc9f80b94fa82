//! Restore drills: restore a backup into a scratch place, check it, measure the **RTO** (from
//! the drill's start to a verified, usable copy) and the **RPO** (from the newest point the copy
//! holds to the drill's end), record the result in the catalog, tear the copy down.
//!
//! A kind of source implements [`Drill`]: it restores a given snapshot into a scratch
//! directory, runs its checks and says what it left running ([`Drilled`], [`ScratchCopy`]).
//! [`run`] does the rest for every kind alike: it picks the snapshot (by default the newest
//! succeeded backup of the drill's source), makes the scratch directory and removes it on every
//! path, failures included, times the drill and records the [`DrillReport`]. The directory
//! drill is [`DirDrill`]; Postgres, Redis and bucket drills live in their adapter crates.
//!
//! ```no_run
//! use resilience_core::drill::{self, DirDrill, DrillOptions};
//! # async fn demo(repo: resilience_core::repo::Repository) -> Result<(), resilience_core::drill::DrillError> {
//! let report = drill::run(&repo, &DirDrill::new("exports"), None, &DrillOptions::default()).await?;
//! println!("{}: RTO {} s, RPO {} s", if report.ok { "passed" } else { "FAILED" },
//!     report.rto_seconds, report.rpo_seconds);
//! # Ok(()) }
//! ```

mod checks;
mod dir;
mod error;
mod report;
mod runner;
mod scratch;

pub use checks::{error_chain, free_loopback_port, restore_check, size_check};
pub use dir::DirDrill;
pub use error::DrillError;
pub use report::{record, DrillCheck, DrillReport, DRILL_KIND};
pub use runner::{run, Drill, DrillOptions, Drilled, ScratchCopy};
