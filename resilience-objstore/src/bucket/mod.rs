//! Backing up a bucket (or a prefix of one) and restoring it into a bucket.
//!
//! Each object is an entry: its key (below the prefix) as the path, its bytes as content, and
//! as attributes its ETag, last-modified time, content type and user metadata (`meta.<name>`).
//! The listing is streamed; the attributes come from `HEAD` requests, prefetched with bounded
//! concurrency, so an unchanged object (same size and ETag as in the previous snapshot) is
//! never read again: its blobs are reused. Bodies are read with `GET` only when the engine asks
//! for them, and streamed.
//!
//! A restore writes objects back with their content type and user metadata, in parts above
//! [`PART_SIZE`]. It is resumable: an object already present with the size and ETag it had, or
//! carrying the `resilience-source-etag` metadata a previous restore wrote, is skipped. Without
//! `overwrite` an existing different object is refused, named, and left as it is.
//!
//! The parts, one job each: [`BucketSource`] and its session turn a listing into entries
//! (`source`), fed by the listing of objects and of their other versions (`listing`); the
//! mapping between object attributes and entry attributes is `attributes`. A restore is
//! planned (`as_of`, for a time) and written by [`BucketTarget`] (`target`), whose objects go up
//! in the background (`upload`).

mod as_of;
mod attributes;
mod listing;
mod source;
mod target;
mod upload;

use object_store::path::Path;

pub use as_of::{plan_as_of, AsOfPlan};
pub use source::BucketSource;
pub use target::{BucketRestoreOptions, BucketTally, BucketTarget};

/// Objects above this size are written in parts of this size.
pub const PART_SIZE: usize = 8 << 20;

/// The key of the object at `location`, below `prefix`.
fn key_under(prefix: &str, location: &Path) -> String {
    let full = location.as_ref();
    let rel = if prefix.is_empty() {
        full
    } else {
        full.strip_prefix(prefix)
            .map(|r| r.trim_start_matches('/'))
            .unwrap_or(full)
    };
    percent_encoding::percent_decode_str(rel)
        .decode_utf8_lossy()
        .into_owned()
}

/// The path of the object `key` below `prefix`.
fn path_for(prefix: &str, key: &str) -> Path {
    let mut parts: Vec<String> = Vec::new();
    if !prefix.is_empty() {
        parts.extend(prefix.split('/').map(str::to_owned));
    }
    parts.extend(key.split('/').map(str::to_owned));
    Path::from_iter(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_paths() {
        let p = path_for("backups/x", "a b/ünï/c.txt");
        assert_eq!(key_under("backups/x", &p), "a b/ünï/c.txt");
        assert_eq!(key_under("", &path_for("", "k")), "k");
    }
}
