#![warn(missing_docs)]
//! # resilience-core
//!
//! The model and the engine of resilience: the traits that adapters implement, the encrypted,
//! deduplicating repository format, the catalog, verification and locks. No store-specific
//! client code lives here.
//!
//! The traits:
//! - [`sink::Sink`] — where repository objects live (an in-memory one is [`sink::MemorySink`]).
//! - [`source::Source`] and [`source::Target`] — what is backed up and where it is restored.
//! - [`catalog::Catalog`] — the backup records ([`catalog::RepoCatalog`] keeps them in the
//!   repository).
//! - [`keys::KeyProvider`] — where the key that wraps the repository's keys comes from;
//!   [`keyring`] holds the copies, adds and removes them and rotates the data key.
//! - [`clock::Clock`] and [`progress::Progress`] — injected time and progress reports.
//!
//! The repository ([`repo::Repository`]): [`chunker`] (FastCDC), [`crypto`] (keyed BLAKE3 ids,
//! XChaCha20-Poly1305), [`blob`], [`pack`], [`index`], [`snapshot`], [`object`] framing, [`lock`]s;
//! its operations [`backup`], [`restore`], [`verify`], [`repair`] and [`replicate`]. [`fs`] is the directory source and
//! target. The byte layout is in `docs/FORMAT.md`.
//!
//! ```no_run
//! use std::sync::Arc;
//! use resilience_core::{fs::{DirSource, DirTarget}, keys::PassphraseProvider, repo::*, sink::MemorySink};
//! # async fn demo() -> resilience_core::Result<()> {
//! let sink = Arc::new(MemorySink::new());
//! let key = PassphraseProvider::new("correct horse battery staple");
//! let repo = Repository::init(sink, &key, InitOptions::default()).await?;
//! let report = repo.backup(&DirSource::new("/srv/exports"), Default::default()).await?;
//! repo.restore(&report.record.id, &DirTarget::new("/tmp/restored"), Default::default()).await?;
//! assert!(repo.verify(Default::default()).await?.is_ok());
//! # Ok(()) }
//! ```

pub mod backup;
pub mod blob;
pub mod catalog;
pub mod chunker;
pub mod clock;
pub mod crypto;
pub mod drill;
pub mod entry;
pub mod error;
pub mod fs;
pub mod health;
pub mod index;
pub mod keyring;
pub mod keys;
pub mod lifecycle;
pub mod lock;
pub mod object;
pub mod pack;
pub mod progress;
pub mod prune;
pub mod repair;
pub mod replicate;
pub mod repo;
pub mod restore;
pub mod retention;
pub mod rewrite;
pub mod schedule;
pub mod scheduler;
pub mod sink;
pub mod snapshot;
pub mod source;
pub mod stop;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod throttle;
pub mod verify;

pub use error::{Error, Result};
