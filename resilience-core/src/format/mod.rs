//! The repository format, in the order data flows through it: [`chunker`] cuts content into
//! chunks, [`crypto`] names and seals them, [`blob`] is one sealed chunk, [`pack`] many blobs in
//! one object, [`index`] says which pack holds each blob, [`snapshot`] the manifest and trees
//! of one backup, and [`object`] the framing every repository object shares. The byte layout
//! is in `docs/FORMAT.md`.
//!
//! These are internals: the embedding API is re-exported from the crate root and from the
//! public modules; benches and format tests reach these through [`crate::internals`].

pub mod blob;
pub mod chunker;
pub mod crypto;
pub mod index;
pub mod object;
pub mod pack;
pub mod snapshot;
