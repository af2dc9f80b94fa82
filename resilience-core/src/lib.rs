//! # resilience-core
//!
//! The model and the engine of resilience: the traits that adapters implement, the encrypted,
//! deduplicating repository format, the catalog, verification and locks. No store-specific
//! client code lives here.
//!
//! - [`sink`] — where repository objects live ([`sink::Sink`]), with an in-memory one.
//! - [`source`] and [`entry`] — what is backed up ([`source::Source`]) and restored
//!   ([`source::Target`]).
//! - [`fs`] — a directory source and target (file trees, analytics exports).
//! - [`clock`] — injected time.

pub mod clock;
pub mod entry;
pub mod fs;
pub mod sink;
pub mod source;
