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
//! [`PART_SIZE`], with exactly the original's attributes: nothing is added to mark them. It is
//! resumable: an object already present with the size and ETag it had, or whose bytes read
//! back are the entry's content (named piece by piece with the repository's keyed hash), is
//! skipped. Without `overwrite` an existing different object is refused, named, and left as it
//! is.
//!
//! Keys are kept exactly as the store names them (any UTF-8, `%`, `+`, `#`, `?`, spaces). On
//! S3, GCS and Azure, the bucket is listed, read and written by exact key (`exact`),
//! so every key the store can hold round-trips: a leading, trailing or doubled `/`, `.` and
//! `..` segments, control characters. (A key that is only `.` or `..`, at the root of an S3
//! bucket or an Azure container, has no URL path and is an error naming it.) Objects whose keys
//! object_store can name are still written through it (in parts above [`PART_SIZE`]); the
//! others in one streamed request. A local directory and memory go through object_store, whose
//! paths are file names there.
//!
//! The parts, one job each: [`BucketSource`] and its session turn a listing into entries
//! (`source`), fed by the listing of objects (by exact key on S3, GCS and Azure) and of their other versions
//! (`listing`); the
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
use resilience_core::source::AdapterError;

pub use as_of::{plan_as_of, AsOfPlan};
pub use source::BucketSource;
pub use target::{BucketRestoreOptions, BucketTally, BucketTarget};

/// Objects above this size are written in parts of this size.
pub const PART_SIZE: usize = 8 << 20;

/// The key of the object `full` (its whole key, or an object_store path's text), below
/// `prefix`: the name exactly as the store gives it.
///
/// object_store keeps a cloud object's key verbatim as its path (and a local file's name,
/// decoded from its URL), so nothing is decoded here: a key holding `%41` stays `%41`.
fn key_under(prefix: &str, full: &str) -> String {
    let rel = if prefix.is_empty() {
        full
    } else {
        full.strip_prefix(prefix)
            .map(|r| r.strip_prefix('/').unwrap_or(r))
            .unwrap_or(full)
    };
    rel.to_owned()
}

/// The whole key of the object `key` below `prefix`.
fn full_key(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}/{key}")
    }
}

/// The path of the object `key` below `prefix`, naming exactly that key.
///
/// object_store cannot name every key a bucket can hold: a key with an empty segment (a
/// leading, trailing or doubled `/`), a `.` or `..` segment, or an ASCII control character is
/// refused here, naming it, rather than written under a different name.
fn path_for(prefix: &str, key: &str) -> Result<Path, AdapterError> {
    let full = full_key(prefix, key);
    match Path::parse(&full) {
        Ok(path) if path.as_ref() == full => Ok(path),
        Ok(_) => Err(AdapterError::msg(
            "name",
            full,
            "a key with a leading or trailing `/` cannot be named through object_store",
        )),
        Err(e) => Err(AdapterError::new("name", full, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_paths() {
        for key in ["a b/ünï/c.txt", "50%/%41+#?=&.txt", "k", ".a/..b/b."] {
            let p = path_for("backups/x", key).unwrap();
            assert_eq!(p.as_ref(), format!("backups/x/{key}"));
            assert_eq!(key_under("backups/x", p.as_ref()), key);
            assert_eq!(key_under("", path_for("", key).unwrap().as_ref()), key);
        }
        for bad in ["/a", "a//b", "a/", "a/../b", "a\nb", "."] {
            let e = path_for("", bad).unwrap_err();
            assert!(e.to_string().contains(bad), "{e:?}");
        }
    }
}
