//! The key set an open repository uses, shared by every clone of the handle, and what
//! re-opens it when another process changes keys ([`Repository::refresh_keys`]).
//!
//! A change of keys only adds data keys, except retirement (`key rotate --rewrite`), which runs
//! under the exclusive lock; so swapping the key set under a running operation that holds a lock
//! never takes away a key it uses.
//!
//! [`Repository::refresh_keys`]: crate::repo::Repository::refresh_keys

use std::sync::{Arc, RwLock};

use crate::error::Result;
use crate::format::crypto::{DataKeyId, KeySet};
use crate::keys::ring::{KeyRing, Opener};
use crate::sink::Sink;

/// An open repository's key set, its opener, and the store its key ring is read from.
pub(crate) struct KeyCell {
    current: RwLock<Arc<KeySet>>,
    opener: Opener,
    sink: Arc<dyn Sink>,
}

impl KeyCell {
    /// A cell holding `keys`, opened by `opener` from the key ring in `sink`.
    pub(crate) fn new(keys: KeySet, opener: Opener, sink: Arc<dyn Sink>) -> Self {
        KeyCell {
            current: RwLock::new(Arc::new(keys)),
            opener,
            sink,
        }
    }

    /// Re-reads the key set in force; `true` when it changed (see
    /// [`Repository::refresh_keys`]).
    ///
    /// A damaged key-set generation is not an error here: the held keys go on working, and
    /// verify names the damage.
    pub(crate) async fn refresh(&self) -> Result<bool> {
        let ring = KeyRing::load(self.sink.as_ref()).await?;
        let reopened = match ring.reopen(&self.opener, &self.get()) {
            Err(e) if e.is_damage() => {
                tracing::warn!(error = %e, "the key set in force cannot be read: keeping the keys this repository was opened with");
                return Ok(false);
            }
            other => other?,
        };
        match reopened {
            Some(keys) => {
                tracing::info!(
                    data_key = keys.current_key_id(),
                    data_keys = ?keys.data_key_ids(),
                    "the keys changed since the repository was opened: re-read"
                );
                self.set(keys);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The key set, re-read first when it lacks `key_id` (an object sealed after a change of
    /// keys made elsewhere). Still lacking it, opening the object fails naming it.
    pub(crate) async fn holding(&self, key_id: Option<DataKeyId>) -> Result<Arc<KeySet>> {
        let keys = self.get();
        match key_id {
            Some(id) if keys.data_key(id).is_none() => {
                self.refresh().await?;
                Ok(self.get())
            }
            _ => Ok(keys),
        }
    }

    /// The key set now.
    pub(crate) fn get(&self) -> Arc<KeySet> {
        self.current.read().expect("key cell lock").clone()
    }

    /// Replaces the key set (for every clone of the handle).
    pub(crate) fn set(&self, keys: KeySet) {
        *self.current.write().expect("key cell lock") = Arc::new(keys);
    }
}
