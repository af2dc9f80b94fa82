//! The operations on a repository, each a method of [`crate::repo::Repository`] with its
//! options and its report: [`backup`], [`restore`], [`verify`], [`prune`], [`replicate`] (to
//! another store, once, or [`follow`]ing it), [`lifecycle`] (retention decisions applied: expiry, tier moves, holds) and
//! [`repair`] (derived state rebuilt). [`progress`] is how they report while they run.

pub mod backup;
pub(crate) mod cpu;
pub mod follow;
pub mod lifecycle;
pub mod memory;
pub mod progress;
pub mod prune;
pub mod repair;
pub mod replicate;
pub mod restore;
pub mod verify;
