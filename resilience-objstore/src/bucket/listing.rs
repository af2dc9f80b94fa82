//! The listing a bucket backup reads: the current objects under the prefix, each with its
//! attributes, in the order of its entries; then, when versions are backed up, every other
//! version and delete marker. The `HEAD` requests that fetch attributes run ahead of the
//! session, a bounded number at a time.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{Attributes, GetOptions, ObjectMeta, ObjectStore};
use resilience_core::source::{AdapterError, EntryOrder};

use super::key_under;
use crate::exact::ExactStore;
use crate::versions::{version_entry_path, ObjectVersion, VersionLister, VersionsError};

/// `HEAD` requests in flight while listing.
const HEADS_IN_FLIGHT: usize = 16;

/// A current object, as the listing hands it to the session.
pub(super) struct CurrentObject {
    /// Its full key in the bucket, exactly.
    pub(super) key: String,
    /// Its size in bytes.
    pub(super) size: u64,
    /// Its ETag.
    pub(super) e_tag: Option<String>,
    /// When it was written.
    pub(super) last_modified: DateTime<Utc>,
    /// Its version id, where the store keeps versions.
    pub(super) version: Option<String>,
    /// Its content type, encoding, cache control, user metadata…
    pub(super) attributes: Attributes,
}

/// What the listing hands the session: an object, or another version of one.
pub(super) enum Listed {
    /// A current object, with its attributes (and version id, where the store has versions).
    Current(CurrentObject),
    /// A non-current version or a delete marker; `seq` counts the newer versions of its key.
    Version {
        version: ObjectVersion,
        seq: usize,
        attributes: Attributes,
    },
}

/// The current objects under `prefix` of an S3, GCS or Azure bucket, listed and read by exact key
/// ([`ExactStore`]): every key the bucket holds, with its attributes, in byte order. An object
/// deleted between its listing and its `HEAD` is left out.
pub(super) fn exact_listing(
    store: ExactStore,
    prefix: &str,
) -> BoxStream<'static, Result<Listed, AdapterError>> {
    let under = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    };
    let shown = store.location().to_owned();
    store
        .list(&under)
        .map_err(move |e| AdapterError::msg("list", shown.clone(), e))
        .map_ok(move |listed| {
            let store = store.clone();
            async move {
                let head = store
                    .head(&listed.key, None)
                    .await
                    .map_err(|e| AdapterError::msg("HEAD", listed.key.clone(), e))?;
                // Deleted since it was listed: it was not there to back up.
                Ok(head.map(|head| {
                    Listed::Current(CurrentObject {
                        key: listed.key,
                        size: head.size,
                        e_tag: head.e_tag.or(listed.e_tag),
                        last_modified: head.last_modified,
                        version: head.version,
                        attributes: head.attributes,
                    })
                }))
            }
        })
        .try_buffered(HEADS_IN_FLIGHT)
        .try_filter_map(|x| async move { Ok(x) })
        .boxed()
}

/// The current objects under `prefix` of `store` (shown as `location` in errors), with their
/// attributes, in `order`: the store's own listing in byte order, or a local directory walked
/// ([`sorted_walk`]). An object deleted between its listing and its `HEAD` is left out.
///
/// object_store lists a key with a leading or trailing `/` under the name without it, which no
/// `HEAD` finds: such an object is left out as deleted. (Cloud buckets are listed by exact key
/// instead, [`exact_listing`]; this is a local directory's and memory's listing.)
pub(super) fn object_listing(
    store: Arc<dyn ObjectStore>,
    prefix: &str,
    location: &str,
    order: EntryOrder,
) -> BoxStream<'static, Result<Listed, AdapterError>> {
    let list_prefix = (!prefix.is_empty()).then(|| Path::from(prefix));
    let listed = match order {
        EntryOrder::Walk => sorted_walk(store.clone(), prefix.to_owned(), list_prefix),
        EntryOrder::Bytes => store.list(list_prefix.as_ref()),
    };
    let shown = location.to_owned();
    listed
        .map_err(move |e| AdapterError::msg("list", shown.clone(), e.to_string()))
        .map_ok(move |meta| {
            let store = store.clone();
            async move {
                let head = store
                    .get_opts(
                        &meta.location,
                        GetOptions {
                            head: true,
                            ..Default::default()
                        },
                    )
                    .await;
                match head {
                    Ok(r) => Ok(Some(Listed::Current(CurrentObject {
                        key: meta.location.as_ref().to_owned(),
                        size: meta.size,
                        e_tag: meta.e_tag,
                        last_modified: meta.last_modified,
                        version: r.meta.version,
                        attributes: r.attributes,
                    }))),
                    // Deleted since it was listed: it was not there to back up.
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(AdapterError::msg(
                        "HEAD",
                        meta.location.to_string(),
                        e.to_string(),
                    )),
                }
            }
        })
        .try_buffered(HEADS_IN_FLIGHT)
        .try_filter_map(|x| async move { Ok(x) })
        .boxed()
}

/// The objects under `root` in a store without an ordered listing (a local directory), in walk
/// order ([`EntryOrder::Walk`]): one directory level listed and sorted at a time, so memory
/// holds the levels on the current path, not the whole tree.
pub(super) fn sorted_walk(
    store: Arc<dyn ObjectStore>,
    prefix: String,
    root: Option<Path>,
) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
    enum Child {
        Object(ObjectMeta),
        Dir(Path),
    }
    let key = move |child: &Child| match child {
        Child::Object(meta) => key_under(&prefix, meta.location.as_ref()),
        Child::Dir(dir) => key_under(&prefix, dir.as_ref()),
    };
    let first: Vec<Child> = vec![Child::Dir(root.unwrap_or_default())];
    let levels = vec![first.into_iter()];
    futures::stream::try_unfold(levels, move |mut levels| {
        let store = store.clone();
        let key = key.clone();
        async move {
            loop {
                let Some(level) = levels.last_mut() else {
                    return Ok(None);
                };
                match level.next() {
                    None => {
                        levels.pop();
                    }
                    Some(Child::Object(meta)) => return Ok(Some((meta, levels))),
                    Some(Child::Dir(dir)) => {
                        let under = (!dir.as_ref().is_empty()).then_some(&dir);
                        let found = store.list_with_delimiter(under).await?;
                        let mut children: Vec<Child> = found
                            .objects
                            .into_iter()
                            .map(Child::Object)
                            .chain(found.common_prefixes.into_iter().map(Child::Dir))
                            .collect();
                        children.sort_by_cached_key(&key);
                        levels.push(children.into_iter());
                    }
                }
            }
        }
    })
    .boxed()
}

/// The versions of one key, in the server's order (newest first).
fn group_by_key(
    versions: BoxStream<'static, Result<ObjectVersion, VersionsError>>,
) -> BoxStream<'static, Result<Vec<ObjectVersion>, VersionsError>> {
    futures::stream::try_unfold(
        (versions, None::<ObjectVersion>),
        |(mut versions, pending)| async move {
            let mut group: Vec<ObjectVersion> = pending.into_iter().collect();
            loop {
                match versions.try_next().await? {
                    Some(v) if group.first().is_none_or(|g| g.key == v.key) => group.push(v),
                    Some(v) => return Ok(Some((group, (versions, Some(v))))),
                    None if group.is_empty() => return Ok(None),
                    None => return Ok(Some((group, (versions, None)))),
                }
            }
        },
    )
    .boxed()
}

/// Every non-current version and delete marker under the prefix, with its attributes (from a
/// `HEAD` of that version by exact key, prefetched), each key's versions in entry-path order.
pub(super) fn version_listing(
    lister: &VersionLister,
    s3: ExactStore,
) -> BoxStream<'static, Result<Listed, AdapterError>> {
    let shown = lister.location().to_owned();
    group_by_key(lister.list())
        .map_err(move |e| AdapterError::msg("list versions", shown.clone(), e.to_string()))
        .map_ok(move |mut group| {
            // Newest first: the current state, then by time; the server's order (newest first
            // on S3) within one second. Some servers (moto) list delete markers after versions.
            group.sort_by_key(|v| (!v.is_latest, std::cmp::Reverse(v.last_modified)));
            let mut others: Vec<(ObjectVersion, usize)> = group
                .into_iter()
                .enumerate()
                .filter(|(_, v)| !v.is_latest || v.delete_marker)
                .map(|(seq, v)| (v, seq))
                .collect();
            others.sort_by(|a, b| {
                version_entry_path("", &a.0.version_id)
                    .cmp(&version_entry_path("", &b.0.version_id))
            });
            futures::stream::iter(others.into_iter().map(Ok))
        })
        .try_flatten()
        .map_ok(move |(version, seq)| {
            let s3 = s3.clone();
            async move {
                if version.delete_marker {
                    return Ok(Some(Listed::Version {
                        version,
                        seq,
                        attributes: Attributes::new(),
                    }));
                }
                let head = s3
                    .head(&version.key, Some(&version.version_id))
                    .await
                    .map_err(|e| {
                        AdapterError::msg(
                            "HEAD",
                            format!("{} (version {})", version.key, version.version_id),
                            e,
                        )
                    })?;
                // Removed for good since it was listed.
                Ok(head.map(|head| Listed::Version {
                    version,
                    seq,
                    attributes: head.attributes,
                }))
            }
        })
        .try_buffered(HEADS_IN_FLIGHT)
        .try_filter_map(|x| async move { Ok(x) })
        .boxed()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Keys whose walk order differs from their byte order (`logs-old`, `logs.txt`, `logs/`).
    pub(in crate::bucket) const ODD_ORDER: [&str; 6] = [
        "logs-old/1",
        "logs.txt",
        "logs/a",
        "logs/b/c",
        "logs0",
        "z z/ünï",
    ];

    pub(in crate::bucket) fn odd_order_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (i, key) in ODD_ORDER.iter().enumerate() {
            let path = dir.path().join(key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, vec![i as u8; 10 + i]).unwrap();
        }
        dir
    }

    #[tokio::test]
    async fn a_local_directory_is_listed_in_walk_order() {
        let dir = odd_order_dir();
        let store: Arc<dyn ObjectStore> =
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let keys: Vec<String> = sorted_walk(store, String::new(), None)
            .map_ok(|meta| key_under("", meta.location.as_ref()))
            .try_collect()
            .await
            .unwrap();
        let mut walk: Vec<&str> = ODD_ORDER.to_vec();
        walk.sort_by(|a, b| {
            resilience_core::source::entry::EntryPath::from(*a)
                .walk_cmp(&resilience_core::source::entry::EntryPath::from(*b))
        });
        assert_eq!(keys, walk);
        assert_ne!(walk, ODD_ORDER, "the walk differs from byte order");
    }
}
