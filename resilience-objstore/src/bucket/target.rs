//! Restoring into a bucket: [`BucketTarget`] decides, before anything is read, which entries
//! to write (the chosen version of each key, within the prefix, not already there), writes them
//! through [`ObjectWriter`]s, and tallies what it did.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use object_store::{Attributes, GetOptions, ObjectStore};
use resilience_core::source::entry::{EntryKind, EntryMeta};
use resilience_core::source::{AdapterError, ContentCheck, ContentWriter, Target};
use serde::Serialize;

use super::as_of::AsOfPlan;
use super::attributes::object_attributes;
use super::upload::{ExactWriter, ObjectWriter, Uploads};
use super::{full_key, path_for};
use crate::config::open_bucket_store;
use crate::exact::ExactStore;
use crate::versions::parse_version_entry_path;

/// How a bucket restore treats what is already there.
#[derive(Clone, Debug, Default)]
pub struct BucketRestoreOptions {
    /// Replace existing objects that differ (else they are refused and named).
    pub overwrite: bool,
    /// Only objects whose key starts with this.
    pub prefix: Option<String>,
    /// Restore each object as it was at a time (a snapshot taken with versions), rather than
    /// the current objects.
    pub as_of: Option<Arc<AsOfPlan>>,
}

/// What a bucket restore did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BucketTally {
    /// Objects written.
    pub written: u64,
    /// Their bytes.
    pub written_bytes: u64,
    /// Objects already there, identical (a resumed restore).
    pub skipped: u64,
    /// Objects left out by the prefix.
    pub filtered: u64,
    /// Existing different objects not replaced (without `overwrite`).
    pub refused: Vec<String>,
    /// Versions in the snapshot not restored: not the one of their key at the `as_of` time, or
    /// (without `as_of`) any non-current version or delete marker.
    pub other_versions: u64,
    /// With `as_of`: keys deleted at that time (their newest version then is a delete marker),
    /// so not restored.
    pub deleted: Vec<String>,
    /// With `as_of`: keys not yet written at that time, so not restored.
    pub not_yet_created: u64,
}

/// Restores objects into a bucket URL.
pub struct BucketTarget {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    location: String,
    options: BucketRestoreOptions,
    tally: Arc<Mutex<BucketTally>>,
    /// A local directory: it stores no attributes (object_store's local file system refuses
    /// puts that carry any), so objects are written without them.
    local: bool,
    /// A cloud bucket's requests by exact key: objects are looked at and read back
    /// through them, and those object_store cannot name are written through them.
    exact: Option<ExactStore>,
    uploads: Uploads,
}

impl BucketTarget {
    /// A target writing under `url`. A local directory (a path or `file://`) keeps the objects
    /// only: content types and user metadata are not written there.
    pub fn new(url: &str, options: BucketRestoreOptions) -> Result<Self, crate::StoreConfigError> {
        let opened = open_bucket_store(url, true)?;
        let tally = BucketTally {
            deleted: options
                .as_of
                .as_ref()
                .map(|p| p.deleted.clone())
                .unwrap_or_default(),
            not_yet_created: options.as_of.as_ref().map_or(0, |p| p.not_yet_created),
            ..Default::default()
        };
        Ok(BucketTarget {
            exact: ExactStore::for_url(url)?,
            local: opened.local_root.is_some(),
            store: opened.store,
            prefix: opened.prefix,
            location: opened.location,
            options,
            tally: Arc::new(Mutex::new(tally)),
            uploads: Uploads::new(),
        })
    }

    /// What the restore did (complete once it returned).
    pub fn tally(&self) -> BucketTally {
        self.tally.lock().expect("tally lock").clone()
    }
}

impl BucketTarget {
    /// The key an entry restores to, if it is the one chosen for its key (the current object,
    /// or with `as_of` the version current then) and within the prefix; else tallies why not.
    fn chosen_key(&self, meta: &EntryMeta) -> Option<String> {
        let chosen = match &self.options.as_of {
            Some(plan) => plan.restores(meta.path.as_bytes()),
            // Without a time, the current objects (as they were at the backup).
            None => parse_version_entry_path(meta.path.as_bytes()).is_none(),
        };
        if !chosen {
            self.tally.lock().expect("tally lock").other_versions += 1;
            return None;
        }
        let key = Self::key_of(meta);
        if let Some(p) = &self.options.prefix {
            if !key.starts_with(p.as_str()) {
                self.tally.lock().expect("tally lock").filtered += 1;
                return None;
            }
        }
        Some(key)
    }

    /// Whether the object at `path` holds exactly the entry's content: read back and compared
    /// piece by piece, for an object already there whose ETag does not prove it (written in
    /// other parts, or by a store whose ETags are not content hashes). Nothing a restore
    /// writes marks the object as its own, so this is how a resumed restore knows its work.
    async fn holds(&self, full: &str, content: &ContentCheck<'_>) -> Result<bool, AdapterError> {
        let shown = format!("{}/{full}", self.location.trim_end_matches('/'));
        let failed = |e: String| AdapterError::msg("GET", shown.clone(), e);
        let body = match &self.exact {
            Some(exact) => match exact.get(full, None).await.map_err(failed)? {
                Some(body) => body,
                // Deleted since its HEAD: not there, so not the same.
                None => return Ok(false),
            },
            None => match self.store.get(&path_for("", full)?).await {
                Ok(body) => body.into_stream().map_err(std::io::Error::other).boxed(),
                Err(object_store::Error::NotFound { .. }) => return Ok(false),
                Err(e) => return Err(failed(e.to_string())),
            },
        };
        content
            .matches(&shown, tokio_util::io::StreamReader::new(body))
            .await
    }

    /// The size and ETag of the object `full`, if there is one.
    async fn existing(&self, full: &str) -> Result<Option<(u64, Option<String>)>, AdapterError> {
        let failed = |e: String| AdapterError::msg("HEAD", full.to_owned(), e);
        if let Some(exact) = &self.exact {
            let head = exact.head(full, None).await.map_err(failed)?;
            return Ok(head.map(|h| (h.size, h.e_tag)));
        }
        let head = self
            .store
            .get_opts(
                &path_for("", full)?,
                GetOptions {
                    head: true,
                    ..Default::default()
                },
            )
            .await;
        match head {
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(failed(e.to_string())),
            Ok(found) => Ok(Some((found.meta.size, found.meta.e_tag))),
        }
    }

    /// The key an entry restores to (whichever version it is).
    fn key_of(meta: &EntryMeta) -> String {
        match parse_version_entry_path(meta.path.as_bytes()) {
            Some((key, _)) => key,
            None => String::from_utf8_lossy(meta.path.as_bytes()).into_owned(),
        }
    }
}

#[async_trait]
impl Target for BucketTarget {
    /// Decides before anything is read: objects of other versions, outside the prefix, already
    /// there and identical, or different and not to be replaced are declined (and tallied), so
    /// a resumed or filtered restore reads only what it writes.
    async fn wants(
        &self,
        meta: &EntryMeta,
        content: &ContentCheck<'_>,
    ) -> Result<bool, AdapterError> {
        if meta.kind != EntryKind::File {
            return Ok(false);
        }
        let Some(key) = self.chosen_key(meta) else {
            return Ok(false);
        };
        let full = full_key(&self.prefix, &key);
        let Some((size, e_tag)) = self.existing(&full).await? else {
            return Ok(true);
        };
        let same = size == meta.size
            && (e_tag.is_some() && e_tag.as_ref() == meta.attrs.get("etag")
                || self.holds(&full, content).await?);
        let mut tally = self.tally.lock().expect("tally lock");
        if same {
            tally.skipped += 1;
            Ok(false)
        } else if !self.options.overwrite {
            tally.refused.push(key);
            Ok(false)
        } else {
            Ok(true)
        }
    }

    /// Writes a wanted object; its upload finishes in the background, a bounded number at
    /// once (eight), and `finish` waits for all of them.
    async fn create(
        &self,
        meta: &EntryMeta,
    ) -> Result<Option<Box<dyn ContentWriter>>, AdapterError> {
        if meta.kind != EntryKind::File {
            return Ok(None);
        }
        let full = full_key(&self.prefix, &Self::key_of(meta));
        let attributes = if self.local {
            Attributes::new()
        } else {
            object_attributes(&meta.attrs)
        };
        let path = match (path_for("", &full), &self.exact) {
            (Ok(path), _) => path,
            // A key object_store cannot name, written by exact key, streamed in one `PUT`.
            (Err(_), Some(exact)) => {
                return ExactWriter::start(
                    exact.clone(),
                    full,
                    meta.size,
                    &attributes,
                    self.tally.clone(),
                    &self.uploads,
                )
                .await
                .map(|w| Some(Box::new(w) as Box<dyn ContentWriter>));
            }
            (Err(e), None) => return Err(e),
        };
        Ok(Some(Box::new(ObjectWriter::new(
            self.store.clone(),
            path,
            attributes,
            self.tally.clone(),
            self.uploads.clone(),
        ))))
    }

    async fn apply_metadata(&self, _meta: &EntryMeta) -> Result<(), AdapterError> {
        Ok(())
    }

    /// Waits for every upload, then fails if any object was refused. The refused keys are
    /// sorted (objects are looked at several at a time, so they are found in no fixed order):
    /// the report and the error are the same on every run, and the error names the first
    /// few in key order.
    async fn finish(&self) -> Result<(), AdapterError> {
        self.uploads.wait_all().await?;
        let t = {
            let mut tally = self.tally.lock().expect("tally lock");
            tally.refused.sort_unstable();
            tally.clone()
        };
        let Some(first) = t.refused.first() else {
            return Ok(());
        };
        let more = match t.refused.len() {
            1 => String::new(),
            n => {
                let named: Vec<&str> = t.refused[1..].iter().take(4).map(String::as_str).collect();
                let rest = n - 1 - named.len();
                let tail = if rest > 0 {
                    format!(" and {rest} more")
                } else {
                    String::new()
                };
                format!(" (also refused: {}{tail})", named.join(", "))
            }
        };
        Err(AdapterError::msg(
            "restore",
            format!("{}/{first}", self.location.trim_end_matches('/')),
            format!(
                "exists with different content; {} object(s) not replaced{more} (give --overwrite to replace them), {} written, {} already identical",
                t.refused.len(),
                t.written,
                t.skipped
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use resilience_core::repo::Repository;

    use super::*;
    use crate::bucket::BucketSource;

    #[tokio::test]
    async fn a_filtered_or_refused_restore_reads_only_what_it_writes() {
        let dir = tempfile::tempdir().unwrap();
        for (key, len) in [("big/a", 3 << 20), ("big/b", 3 << 20), ("small", 100)] {
            let path = dir.path().join(key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(
                path,
                resilience_core::testing::pseudo_random(len, len as u64),
            )
            .unwrap();
        }
        let counting = Arc::new(resilience_core::testing::FaultySink::new(
            resilience_core::sink::MemorySink::new(),
            -1,
        ));
        let repo = Repository::init(
            counting.clone(),
            &resilience_core::keys::KeyFileProvider::from_key([7; 32]),
            Default::default(),
        )
        .await
        .unwrap();
        let source = BucketSource::new(dir.path().display().to_string());
        repo.backup(&source, Default::default()).await.unwrap();
        let out = tempfile::tempdir().unwrap();
        let url = out.path().display().to_string();
        let restore = |options: BucketRestoreOptions| {
            let (repo, counting, url) = (repo.clone(), counting.clone(), url.clone());
            async move {
                let target = BucketTarget::new(&url, options).unwrap();
                let before = counting.range_bytes_read();
                let done = repo.restore("latest", &target, Default::default()).await;
                (
                    done.map(|_| ()),
                    target.tally(),
                    counting.range_bytes_read() - before,
                )
            }
        };

        let (done, first, read) = restore(Default::default()).await;
        done.unwrap();
        assert_eq!(first.written, 3);
        assert!(read > 6 << 20, "{read}");

        // Everything already there and identical (a local directory's ETags are not content
        // hashes, so each is read back and compared): all skipped, nothing read from the
        // repository.
        let (done, again, read) = restore(Default::default()).await;
        done.unwrap();
        assert_eq!((again.written, again.skipped), (0, 3));
        assert!(
            read < 1 << 20,
            "a restore that writes nothing read {read} bytes"
        );

        // Objects in the way that differ (same size, other bytes; another size) are refused,
        // found several at a time, in no fixed order; the report sorts them and the error names
        // them in that order, the same on every run.
        let mut changed = resilience_core::testing::pseudo_random(3 << 20, 3 << 20);
        changed[1 << 20] ^= 1;
        std::fs::write(out.path().join("big/a"), &changed).unwrap();
        std::fs::write(out.path().join("small"), b"other").unwrap();
        let (done, again, read) = restore(Default::default()).await;
        let err = done.unwrap_err().to_string();
        assert!(
            err.contains("/big/a failed: exists with different content; 2 object(s) not replaced (also refused: small)"),
            "{err}"
        );
        assert_eq!((again.written, again.skipped), (0, 1));
        assert_eq!(again.refused, ["big/a", "small"]);
        assert!(
            read < 1 << 20,
            "a restore that writes nothing read {read} bytes"
        );

        std::fs::remove_file(out.path().join("small")).unwrap();
        let only_small = BucketRestoreOptions {
            prefix: Some("sm".into()),
            ..Default::default()
        };
        let (done, filtered, read) = restore(only_small).await;
        done.unwrap();
        assert_eq!((filtered.written, filtered.filtered), (1, 2));
        assert!(read < 1 << 20, "a filtered restore read {read} bytes");
        assert_eq!(
            std::fs::read(out.path().join("small")).unwrap(),
            resilience_core::testing::pseudo_random(100, 100)
        );
    }
}
