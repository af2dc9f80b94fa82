//! Immutable backups: every object a repository cannot lose is written under the store's object
//! lock (S3 Object Lock), and is never deleted before its retention passes.
//!
//! A repository created with an [`ObjectLock`] (`init --object-lock DAYS`) is opened over a
//! [`RetainingSink`]. After each put of a *retained* object — a pack (`data/`), a snapshot
//! manifest (`snapshots/`), a key copy or key-set generation (`keys/`), `config`, an archived
//! WAL file (`wal/`) — it sets the object's retention to now plus the lock's period; the put
//! fails, naming the object, if the store cannot lock it, so no object is ever acknowledged
//! unlocked. A delete of a retained object asks the store for its retention first and returns
//! [`SinkError::Locked`] (naming the object and its date) while it holds, instead of sending a
//! `DELETE` that a versioned bucket would answer with a delete marker.
//!
//! The other objects are working state that operations delete as they go, and that the
//! repository can rebuild or do without: locks, expiry and rewrite journals, prune plans, index
//! files (rebuilt from the packs' own tables by `repair index`), catalog records and failover
//! journals. They are not locked, so that maintenance keeps working.
//!
//! Retain-until dates are real time, as the store judges them: the system clock, never a test
//! clock a repository was given (a date in a test clock's past would be refused by the store).
//! Maintenance extends the retention of what live snapshots need before it lapses
//! ([`crate::repo::Repository::extend_retention`]).

use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::{ByteStream, Copied, LockMode, ObjectMeta, PutMode, Retention, Sink, SinkError};

/// A repository's object lock: how, and for how long after it is written (or last extended),
/// each retained object is locked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectLock {
    /// Governance or compliance.
    pub mode: LockMode,
    /// The retention period, in seconds.
    pub period_secs: u64,
}

impl ObjectLock {
    /// The retention period.
    pub fn period(&self) -> Duration {
        Duration::from_secs(self.period_secs)
    }

    /// The retention an object written (or extended) now gets.
    pub fn retention_from_now(&self) -> Retention {
        Retention {
            mode: self.mode,
            until: Utc::now() + chrono::Duration::seconds(self.period_secs as i64),
        }
    }

    /// Whether the object `key` of a repository is locked: what the repository cannot lose
    /// (see the module's text).
    pub fn retains(key: &str) -> bool {
        key == "config"
            || ["data/", "snapshots/", "keys/", "wal/"]
                .iter()
                .any(|p| key.starts_with(p))
    }
}

/// A sink that locks every retained object it writes and refuses to delete one whose retention
/// holds (see the module's text).
#[derive(Debug)]
pub struct RetainingSink<S> {
    inner: S,
    lock: ObjectLock,
}

impl<S: Sink> RetainingSink<S> {
    /// Wraps `inner`, locking as `lock` says.
    pub fn new(inner: S, lock: ObjectLock) -> Self {
        RetainingSink { inner, lock }
    }

    /// Locks `key` after a put, if it is retained. A store that cannot lock it fails the put.
    async fn lock_written(&self, key: &str) -> Result<(), SinkError> {
        if !ObjectLock::retains(key) {
            return Ok(());
        }
        self.inner
            .set_retention(key, self.lock.retention_from_now())
            .await
            .map_err(|e| match e {
                SinkError::Backend {
                    key,
                    location,
                    source,
                    ..
                } => SinkError::Backend {
                    operation: "lock (written, not yet locked)",
                    key,
                    location,
                    source,
                },
                other => other,
            })
    }
}

crate::forward_sink! {
    (impl<S: Sink> Sink for RetainingSink<S>)
    to self.inner: location, get_stream, head, list, get, get_range, unfinished_uploads,
        discard_upload, retention, set_retention;

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<(), SinkError> {
        self.inner.put(key, data, mode).await?;
        self.lock_written(key).await
    }

    async fn put_stream(
        &self,
        key: &str,
        data: ByteStream,
        mode: PutMode,
    ) -> Result<u64, SinkError> {
        let written = self.inner.put_stream(key, data, mode).await?;
        self.lock_written(key).await?;
        Ok(written)
    }

    async fn put_copy(
        &self,
        key: &str,
        data: ByteStream,
        origin: &ObjectMeta,
    ) -> Result<Copied, SinkError> {
        let copied = self.inner.put_copy(key, data, origin).await?;
        self.lock_written(key).await?;
        Ok(copied)
    }

    async fn delete(&self, key: &str) -> Result<(), SinkError> {
        if ObjectLock::retains(key) {
            match self.inner.retention(key).await {
                Ok(Some(r)) if r.until > Utc::now() => {
                    return Err(SinkError::Locked {
                        key: key.to_owned(),
                        mode: r.mode,
                        until: r.until,
                    })
                }
                Ok(_) => {}
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        self.inner.delete(key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::MemorySink;

    fn locked_sink(period_secs: u64) -> RetainingSink<MemorySink> {
        RetainingSink::new(
            MemorySink::new().with_object_lock(),
            ObjectLock {
                mode: LockMode::Compliance,
                period_secs,
            },
        )
    }

    #[tokio::test]
    async fn retained_objects_are_locked_and_refuse_deletion_naming_the_date() {
        let sink = locked_sink(3600);
        sink.put("data/ab/abcd", "pack".into(), PutMode::Create)
            .await
            .unwrap();
        let r = sink.retention("data/ab/abcd").await.unwrap().unwrap();
        assert_eq!(r.mode, LockMode::Compliance);
        let ahead = r.until - Utc::now();
        assert!(ahead > chrono::Duration::seconds(3500), "{ahead}");
        let e = sink.delete("data/ab/abcd").await.unwrap_err();
        assert_eq!(e.locked_until(), Some(r.until));
        assert!(e.to_string().contains("data/ab/abcd"), "{e}");
        assert!(e.to_string().contains("compliance"), "{e}");
        assert!(sink.get("data/ab/abcd").await.is_ok());
    }

    #[tokio::test]
    async fn working_state_is_not_locked() {
        let sink = locked_sink(3600);
        for key in [
            "locks/x",
            "index/ab",
            "prune/p",
            "catalog/b/1",
            "expiring/b",
        ] {
            sink.put(key, "x".into(), PutMode::Create).await.unwrap();
            assert_eq!(sink.retention(key).await.unwrap(), None, "{key}");
            sink.delete(key).await.unwrap();
            assert!(sink.get(key).await.unwrap_err().is_not_found(), "{key}");
        }
    }

    #[tokio::test]
    async fn a_lapsed_retention_lets_the_object_go() {
        let sink = locked_sink(0);
        sink.put("snapshots/a", "m".into(), PutMode::Create)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        sink.delete("snapshots/a").await.unwrap();
        assert!(sink.get("snapshots/a").await.unwrap_err().is_not_found());
        // Deleting what is gone succeeds, as any delete does.
        sink.delete("snapshots/a").await.unwrap();
    }

    #[tokio::test]
    async fn a_store_without_object_lock_fails_the_put_naming_the_object() {
        let sink = RetainingSink::new(
            MemorySink::new(),
            ObjectLock {
                mode: LockMode::Governance,
                period_secs: 60,
            },
        );
        let e = sink
            .put("keys/keyset-0000000001", "k".into(), PutMode::Create)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("keys/keyset-0000000001"), "{e}");
        assert!(e.to_string().contains("no object lock"), "{e}");
    }
}
