//! The repository's key copies and key-set generations: opening, adding and removing copies,
//! and rotation.
//!
//! ```text
//! keys/<16 hex>                 one copy: a provider-wrapped identity (X25519 secret) and its
//!                               public key, the *recipient* (format 2); or, format 1, the key
//!                               set wrapped directly
//! keys/keyset-<10-digit gen>    the key set, sealed once to every format-2 copy's recipient
//! ```
//!
//! A change of keys (a copy added or removed, a rotation) writes the next generation as one
//! object, then deletes the older generations: the newest generation is the key set, and a
//! crash leaves either the old one or the new one in force, never neither. Sealing to public
//! keys means a rotation re-wraps the key set for *every* copy without their credentials: an
//! operator's offline passphrase keeps opening the repository after a service rotated with
//! KMS, and a removed copy is simply not sealed to again.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::crypto::{self, DataKeyId, Identity, KeySet};
use crate::format::object;
use crate::keys::{KeyProvider, WrappedKey};
use crate::repo::lock::{LockKind, RepoLock};
use crate::repo::Repository;
use crate::sink::{ObjectMeta, PutMode, Sink};

/// An operation on key copies or key sets that cannot be done, naming the copy or key set.
#[derive(Debug, thiserror::Error)]
pub enum KeyRingError {
    /// The copy that opened is not in the key set in force.
    #[error("{copy} is not in the key set in force {keyset} (an interrupted `key add` or `key remove`): open with another key and add this provider again")]
    StaleCopy {
        /// The copy's object.
        copy: String,
        /// The key set in force.
        keyset: String,
    },
    /// The key set in force holds a data key this process lacks.
    #[error("{keyset} holds data key {data_key}, which this process does not: the keys changed since the repository was opened; open it again")]
    KeysChanged {
        /// The key set in force.
        keyset: String,
        /// The data key this process lacks.
        data_key: String,
    },
    /// No key copy has this id.
    #[error("keys/{id}: no such key copy (see `resilience key list`)")]
    NoSuchCopy {
        /// The id asked for.
        id: String,
    },
    /// Removing this copy would leave none that opens the repository.
    #[error("keys/{id} is the last key copy that opens the repository: add another with `resilience key add` first")]
    LastCopy {
        /// The copy's id.
        id: String,
    },
    /// A format-1 copy, which rotation cannot re-wrap.
    #[error("{copy} ({provider}) is a format-1 copy, which rotation cannot re-wrap: add a new copy for that provider with `resilience key add` and remove this one, then rotate")]
    LegacyCopy {
        /// The copy's object.
        copy: String,
        /// Its provider.
        provider: String,
    },
    /// No active copy would open the rotated keys.
    #[error("no key copy would open the rotated keys")]
    NoRecipient,
}

/// Prefix of key-set generation objects.
pub const KEYSET_PREFIX: &str = "keys/keyset-";

/// The object name of key-set generation `generation`.
pub fn keyset_name(generation: u64) -> String {
    format!("{KEYSET_PREFIX}{generation:010}")
}

/// The order that decides which key-set generation object is in force (the first): the store's
/// time of writing (where it gives one), then the name. See [`KeyRing::in_force`].
pub(crate) fn force_order(meta: &ObjectMeta) -> (Option<DateTime<Utc>>, &str) {
    (meta.last_modified, &meta.key)
}

fn keyset_aad(generation: u64, copy: &str) -> Vec<u8> {
    format!("resilience/{}/{copy}", keyset_name(generation)).into_bytes()
}

/// One key-set generation, `keys/keyset-<generation>`: the key set sealed to each copy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySetObject {
    /// Increases by one with every change of keys.
    pub generation: u64,
    /// When it was written.
    pub created_at: DateTime<Utc>,
    /// The data key for new writes (its id only; not secret).
    pub current: DataKeyId,
    /// Every data key id the key set holds (not secret).
    pub data_keys: Vec<DataKeyId>,
    /// Copy id → hex of the key set sealed to that copy's recipient.
    pub sealed: BTreeMap<String, String>,
}

/// Encodes a key-set generation: JSON and checksum.
pub fn encode_keyset_object(object: &KeySetObject) -> Vec<u8> {
    let mut body = serde_json::to_vec_pretty(object).expect("serializes");
    object::append_checksum(&mut body);
    body
}

/// Decodes and checks a key-set generation stored as `name`.
pub fn decode_keyset_object(name: &str, bytes: &[u8]) -> Result<KeySetObject> {
    let body = object::check_checksum(name, bytes)?;
    let obj: KeySetObject = serde_json::from_slice(body)
        .map_err(|e| Error::corrupt(name, format!("does not parse: {e}")))?;
    if keyset_name(obj.generation) != name {
        return Err(Error::corrupt(
            name,
            format!("holds generation {}", obj.generation),
        ));
    }
    Ok(obj)
}

/// Decodes and checks a key copy stored as `name` (`keys/<id>`).
pub fn decode_copy(name: &str, bytes: &[u8]) -> Result<WrappedKey> {
    let body = object::check_checksum(name, bytes)?;
    let copy: WrappedKey = serde_json::from_slice(body)
        .map_err(|e| Error::corrupt(name, format!("does not parse: {e}")))?;
    if copy.object_name() != name {
        return Err(Error::corrupt(name, format!("names copy {}", copy.id)));
    }
    if copy.format == 0 {
        return Err(Error::corrupt(name, "format 0 (copies are format 1 or 2)"));
    }
    if copy.format > 2 {
        return Err(Error::UnsupportedFormat {
            object: name.to_owned(),
            found: copy.format,
            supported: 2,
        });
    }
    Ok(copy)
}

/// Seals `keys` to every copy in `recipients` as generation `generation`.
pub fn seal_generation(
    keys: &KeySet,
    generation: u64,
    recipients: &[&WrappedKey],
    now: DateTime<Utc>,
) -> Result<KeySetObject> {
    let plain = keys.to_bytes();
    let mut sealed = BTreeMap::new();
    for copy in recipients {
        let recipient = recipient_of(copy)?;
        let s = crypto::seal_to_recipient(&recipient, &keyset_aad(generation, &copy.id), &plain);
        sealed.insert(copy.id.clone(), hex::encode(s));
    }
    Ok(KeySetObject {
        generation,
        created_at: now,
        current: keys.current_key_id(),
        data_keys: keys.data_key_ids(),
        sealed,
    })
}

fn recipient_of(copy: &WrappedKey) -> Result<[u8; 32]> {
    let mut r = [0u8; 32];
    copy.recipient
        .as_deref()
        .and_then(|h| hex::decode_to_slice(h, &mut r).ok())
        .ok_or_else(|| Error::corrupt(copy.object_name(), "format-2 copy without a recipient"))?;
    Ok(r)
}

/// A copy's state, as `key list` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CopyState {
    /// The newest key set is sealed to it: it opens the repository.
    Active,
    /// A format-1 copy (the key set wrapped directly): it opens the repository, but rotation
    /// cannot re-wrap it; replace it with `key add` and `key remove`.
    Legacy,
    /// Not in the key set in force (an interrupted `key add` or `key remove`, or a copy made
    /// by a writer that cannot complete a change of keys): it does not open.
    Stale,
}

/// Everything under `keys/`.
#[derive(Debug, Default)]
pub struct KeyRing {
    /// The copies that parsed.
    pub copies: Vec<WrappedKey>,
    /// The key-set generations that parsed, oldest first.
    pub generations: Vec<KeySetObject>,
    /// Objects under `keys/` that are damaged (each error names its object).
    pub damaged: Vec<Error>,
    /// Names of every key-set generation object, damaged or not, in the order that decides
    /// which is in force: by the store's time of writing (where the store gives it), then by
    /// name. The first is in force.
    pub generation_names: Vec<String>,
}

impl KeyRing {
    /// Reads every object under `keys/`. Damaged objects are collected, not fatal: another copy
    /// may still open the repository.
    pub async fn load(sink: &dyn Sink) -> Result<KeyRing> {
        let mut listed: Vec<ObjectMeta> = sink.list("keys/").try_collect().await?;
        // Generations in force order (see `in_force`); copies by name.
        listed.sort_by(|a, b| force_order(a).cmp(&force_order(b)));
        let mut names: Vec<String> = listed.into_iter().map(|m| m.key).collect();
        names.sort_by_key(|n| !n.starts_with(KEYSET_PREFIX));
        let mut ring = KeyRing::default();
        for name in names {
            let bytes = sink.get(&name).await?;
            if name.starts_with(KEYSET_PREFIX) {
                ring.generation_names.push(name.clone());
                match decode_keyset_object(&name, &bytes) {
                    Ok(g) => ring.generations.push(g),
                    Err(e) => ring.damaged.push(e),
                }
                continue;
            }
            match decode_copy(&name, &bytes) {
                Ok(c) => ring.copies.push(c),
                Err(e) => ring.damaged.push(e),
            }
        }
        ring.copies.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(ring)
    }

    /// The key-set generation in force: the generation object the store wrote FIRST of those
    /// present (by the store's clock; ties, and stores that give no times, by name).
    ///
    /// A change of keys writes the next generation and only then deletes the older ones, the
    /// one in force last, so the generation in force changes when the change completes. Only a
    /// credential that can delete (maintenance) can complete one: an append-only writer (a
    /// stolen backup host) can create a generation object under any free name, but the store
    /// dates it after the one in force, which it cannot delete, so what it creates never comes
    /// into force. `Err` names the generation in force when it is damaged (another one is not
    /// used instead: it may be a forgery).
    pub fn in_force(&self) -> Result<Option<&KeySetObject>> {
        let Some(first) = self.generation_names.first() else {
            return Ok(None);
        };
        match self
            .generations
            .iter()
            .find(|g| keyset_name(g.generation) == *first)
        {
            Some(g) => Ok(Some(g)),
            None => Err(self
                .damaged
                .iter()
                .find(|e| matches!(e, Error::Corrupt { object, .. } if object == first))
                .map(clone_error)
                .unwrap_or_else(|| Error::corrupt(first, "damaged"))),
        }
    }

    /// Generation objects present beside the one in force: an interrupted change of keys, or
    /// objects made by a writer that cannot delete. The next change of keys removes them.
    pub fn not_in_force(&self) -> &[String] {
        self.generation_names.get(1..).unwrap_or_default()
    }

    /// The newest generation number (0 when there is none).
    pub fn latest_generation(&self) -> u64 {
        let from_names = self
            .generation_names
            .iter()
            .filter_map(|n| n.strip_prefix(KEYSET_PREFIX)?.parse::<u64>().ok())
            .max();
        from_names.unwrap_or(0)
    }

    /// Whether `copy` opens the repository.
    pub fn state(&self, copy: &WrappedKey) -> CopyState {
        if copy.format == 1 {
            return CopyState::Legacy;
        }
        match self.in_force() {
            Ok(Some(g)) if g.sealed.contains_key(&copy.id) => CopyState::Active,
            _ => CopyState::Stale,
        }
    }

    /// Opens the key set with `provider`: each of its copies is tried until one opens.
    /// `location` names the repository in errors.
    pub async fn unlock(&self, provider: &dyn KeyProvider, location: &str) -> Result<KeySet> {
        Ok(self.unlock_copy(provider, location).await?.0)
    }

    /// As [`KeyRing::unlock`], also returning the id of the copy that opened.
    pub async fn unlock_copy(
        &self,
        provider: &dyn KeyProvider,
        location: &str,
    ) -> Result<(KeySet, String)> {
        let (keys, opener) = self.unlock_opener(provider, location).await?;
        Ok((keys, opener.copy))
    }

    /// As [`KeyRing::unlock_copy`], returning what re-opens a later generation without the
    /// provider ([`KeyRing::reopen`]).
    pub(crate) async fn unlock_opener(
        &self,
        provider: &dyn KeyProvider,
        location: &str,
    ) -> Result<(KeySet, Opener)> {
        let mut tried = 0;
        let mut stale = None;
        for copy in self.copies.iter().filter(|c| c.provider == provider.name()) {
            tried += 1;
            let Some(plain) = provider.unwrap(copy).await? else {
                continue;
            };
            if copy.format == 1 {
                let keys = KeySet::from_bytes(&plain).ok_or_else(|| {
                    Error::corrupt(copy.object_name(), "unwrapped key set does not parse")
                })?;
                let opener = Opener {
                    copy: copy.id.clone(),
                    identity: None,
                };
                return Ok((keys, opener));
            }
            let identity = Identity::from_bytes(&plain).ok_or_else(|| {
                Error::corrupt(copy.object_name(), "unwrapped identity is not 32 bytes")
            })?;
            if Some(hex::encode(identity.recipient())) != copy.recipient {
                return Err(Error::corrupt(
                    copy.object_name(),
                    "the unwrapped identity does not match the copy's recipient (edited)",
                ));
            }
            match self.open_generation(copy, &identity)? {
                Some(keys) => {
                    let opener = Opener {
                        copy: copy.id.clone(),
                        identity: Some(identity),
                    };
                    return Ok((keys, opener));
                }
                None => stale = Some(copy.object_name()),
            }
        }
        if let Some(e) = self.damaged.first() {
            return Err(clone_error(e));
        }
        // A copy the key set in force is sealed to, but gone: likely the one these credentials
        // wrapped, and in any case lost.
        if let Ok(Some(generation)) = self.in_force() {
            if let Some(id) = generation
                .sealed
                .keys()
                .find(|id| !self.copies.iter().any(|c| &c.id == *id))
            {
                return Err(Error::corrupt(
                    format!("keys/{id}"),
                    format!(
                        "missing: {} is sealed to it, and no other key copy in {location} opens \
                         with these credentials",
                        keyset_name(generation.generation)
                    ),
                ));
            }
        }
        if let Some(copy) = stale {
            return Err(KeyRingError::StaleCopy {
                copy,
                keyset: self
                    .generation_names
                    .first()
                    .map_or("-", String::as_str)
                    .to_owned(),
            }
            .into());
        }
        Err(Error::WrongKey {
            location: location.to_owned(),
            tried,
        })
    }
}

impl KeyRing {
    /// The key set in force, opened with `copy`'s unwrapped identity; `None` when that
    /// generation is not sealed to the copy (a stale copy).
    fn open_generation(&self, copy: &WrappedKey, identity: &Identity) -> Result<Option<KeySet>> {
        let Some(generation) = self.in_force()? else {
            return Err(Error::corrupt(
                copy.object_name(),
                format!("no {KEYSET_PREFIX}* object holds the key set (deleted?)"),
            ));
        };
        let name = keyset_name(generation.generation);
        let Some(sealed) = generation.sealed.get(&copy.id) else {
            return Ok(None);
        };
        let keys = hex::decode(sealed)
            .ok()
            .and_then(|s| {
                crypto::open_as_recipient(
                    identity,
                    &keyset_aad(generation.generation, &copy.id),
                    &s,
                )
            })
            .and_then(|plain| KeySet::from_bytes(&plain))
            .ok_or_else(|| {
                Error::corrupt(
                    &name,
                    format!("the key set sealed to {} does not open", copy.object_name()),
                )
            })?;
        if keys.current_key_id() != generation.current
            || keys.data_key_ids() != generation.data_keys
        {
            return Err(Error::corrupt(
                &name,
                "its data key list does not match the sealed key set (edited)",
            ));
        }
        Ok(Some(keys))
    }

    /// The key set in force, re-opened with what opened `held` (no provider is asked again),
    /// when its data keys differ from `held`'s: a change of keys made since, by another
    /// process. `None` when nothing changed.
    pub(crate) fn reopen(&self, opener: &Opener, held: &KeySet) -> Result<Option<KeySet>> {
        let Some(generation) = self.in_force()? else {
            return Ok(None);
        };
        if generation.current == held.current_key_id()
            && generation.data_keys == held.data_key_ids()
        {
            return Ok(None);
        }
        let changed = || KeyRingError::KeysChanged {
            keyset: keyset_name(generation.generation),
            data_key: generation.current.to_string(),
        };
        let (Some(identity), Some(copy)) = (
            &opener.identity,
            self.copies.iter().find(|c| c.id == opener.copy),
        ) else {
            // A format-1 copy, or the copy that opened this repository was removed: only its
            // provider could open the new key set. Reopen the repository.
            return Err(changed().into());
        };
        match self.open_generation(copy, identity)? {
            Some(keys) => Ok(Some(keys)),
            None => Err(changed().into()),
        }
    }
}

/// What opened a repository's key set: the copy, and (for a format-2 copy) its unwrapped
/// identity, which opens every later generation sealed to that copy.
pub(crate) struct Opener {
    copy: String,
    identity: Option<Identity>,
}

impl Opener {
    /// The id of the copy that opened the key set.
    pub(crate) fn copy(&self) -> &str {
        &self.copy
    }

    /// An opener that cannot open another key set (a key set handed over as it is).
    pub(crate) fn fixed() -> Self {
        Opener {
            copy: String::new(),
            identity: None,
        }
    }

    /// The opener of a format-2 copy whose identity is known (a repository just created).
    pub(crate) fn new(copy: String, identity: Identity) -> Self {
        Opener {
            copy,
            identity: Some(identity),
        }
    }
}

fn clone_error(e: &Error) -> Error {
    match e {
        Error::Corrupt { object, reason } => Error::Corrupt {
            object: object.clone(),
            reason: reason.clone(),
        },
        Error::UnsupportedFormat {
            object,
            found,
            supported,
        } => Error::UnsupportedFormat {
            object: object.clone(),
            found: *found,
            supported: *supported,
        },
        other => Error::Repeated(other.to_string()),
    }
}

/// What a rotation did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rotation {
    /// The new key-set generation.
    pub generation: u64,
    /// The new data key, used for everything written from now on.
    pub data_key: DataKeyId,
    /// The data keys kept for reading.
    pub data_keys: Vec<DataKeyId>,
    /// The copies the new key set was sealed to.
    pub copies: Vec<String>,
}

/// Creates a format-2 copy for `provider`: a new identity, wrapped by it.
pub async fn new_copy(
    provider: &dyn KeyProvider,
    now: DateTime<Utc>,
) -> Result<(WrappedKey, Identity)> {
    let identity = Identity::generate();
    let mut copy = provider.wrap(&identity.to_bytes(), now).await?;
    copy.format = 2;
    copy.recipient = Some(hex::encode(identity.recipient()));
    Ok((copy, identity))
}

pub(crate) fn encode_copy(copy: &WrappedKey) -> bytes::Bytes {
    let mut body = serde_json::to_vec_pretty(copy).expect("serializes");
    object::append_checksum(&mut body);
    body.into()
}

/// Writes the next generation of `keys`, sealed to `recipients`, then deletes every older
/// generation object, newest first and the one in force last: the new generation comes into
/// force only when no older one is left, so a crash leaves the old or the new one in force,
/// and never a generation that was not in force before (one left by an interrupted change or
/// made by a writer that cannot delete).
pub(crate) async fn write_generation(
    sink: &dyn Sink,
    ring: &KeyRing,
    keys: &KeySet,
    recipients: &[&WrappedKey],
    now: DateTime<Utc>,
) -> Result<u64> {
    refuse_if_generations_locked(sink, &ring.generation_names).await?;
    let generation = ring.latest_generation() + 1;
    let obj = seal_generation(keys, generation, recipients, now)?;
    sink.put(
        &keyset_name(generation),
        encode_keyset_object(&obj).into(),
        PutMode::Create,
    )
    .await?;
    for old in ring.generation_names.iter().rev() {
        delete_generation(sink, old).await?;
    }
    // Anything written under keys/keyset- while this change ran (no other change can run: the
    // caller holds the key lock) is not ours: remove it, so a forgery cannot tie with the new
    // generation on the store's clock.
    let ours = keyset_name(generation);
    let listed: Vec<String> = sink
        .list(KEYSET_PREFIX)
        .map_ok(|m| m.key)
        .try_collect()
        .await?;
    for other in listed.iter().filter(|n| **n != ours) {
        tracing::warn!(object = %other, "a key-set generation appeared during a change of keys: removed");
        delete_generation(sink, other).await?;
    }
    Ok(generation)
}

/// Refuses a change of keys while the store's object lock holds one of the generations
/// `names` (a change must delete them, and the generation in force is the oldest present),
/// naming it and its date.
async fn refuse_if_generations_locked(sink: &dyn Sink, names: &[String]) -> Result<()> {
    for name in names {
        match sink.retention(name).await {
            Ok(Some(r)) if r.until > Utc::now() => {
                return Err(crate::sink::SinkError::Locked {
                    key: name.clone(),
                    mode: r.mode,
                    until: r.until,
                }
                .into())
            }
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn delete_generation(sink: &dyn Sink, name: &str) -> Result<()> {
    match sink.delete(name).await {
        Ok(()) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

impl Repository {
    /// Everything under `keys/`.
    pub async fn key_ring(&self) -> Result<KeyRing> {
        KeyRing::load(self.sink.as_ref()).await
    }

    /// Refuses a change of keys when the generation in force holds data keys this open
    /// repository lacks (someone rotated since it was opened).
    fn check_fresh(&self, ring: &KeyRing) -> Result<()> {
        if let Some(g) = ring.in_force()? {
            let ours = self.keys().data_key_ids();
            if let Some(k) = g.data_keys.iter().find(|k| !ours.contains(k)) {
                return Err(KeyRingError::KeysChanged {
                    keyset: keyset_name(g.generation),
                    data_key: k.to_string(),
                }
                .into());
            }
        }
        Ok(())
    }

    /// Adds a copy of the keys for another provider (a KMS beside a passphrase…), so either
    /// opens the repository. Writes the copy, then the next key-set generation sealed to it.
    pub async fn add_key(&self, provider: &dyn KeyProvider) -> Result<WrappedKey> {
        let lock = self.key_lock("key add").await?;
        let result = self.add_key_locked(provider).await;
        lock.release().await?;
        result
    }

    /// Takes the maintenance lock that serializes changes of keys (two concurrent changes
    /// would write the same generation; on a store that ignores create-only puts one would be
    /// lost). Backups go on beside it.
    /// Under an object lock, a change of keys is refused here, before it writes anything.
    async fn key_lock(&self, purpose: &str) -> Result<RepoLock> {
        let lock = RepoLock::acquire(
            self.sink.clone(),
            self.clock.clone(),
            LockKind::Maintenance,
            purpose,
            None,
            self.lock_settings,
        )
        .await?;
        if self.config.object_lock.is_some() {
            let names: Vec<String> = match self
                .sink
                .list(KEYSET_PREFIX)
                .map_ok(|m| m.key)
                .try_collect()
                .await
            {
                Ok(names) => names,
                Err(e) => {
                    crate::ops::lifecycle::release_quietly(lock, purpose).await;
                    return Err(e.into());
                }
            };
            if let Err(e) = refuse_if_generations_locked(self.sink.as_ref(), &names).await {
                crate::ops::lifecycle::release_quietly(lock, purpose).await;
                return Err(e);
            }
        }
        Ok(lock)
    }

    async fn add_key_locked(&self, provider: &dyn KeyProvider) -> Result<WrappedKey> {
        let ring = self.key_ring().await?;
        self.check_fresh(&ring)?;
        let now = self.clock.now();
        let (copy, _identity) = new_copy(provider, now).await?;
        self.sink
            .put(&copy.object_name(), encode_copy(&copy), PutMode::Create)
            .await?;
        let mut recipients: Vec<&WrappedKey> = ring
            .copies
            .iter()
            .filter(|c| ring.state(c) == CopyState::Active)
            .collect();
        recipients.push(&copy);
        write_generation(self.sink.as_ref(), &ring, &self.keys(), &recipients, now).await?;
        tracing::info!(copy = %copy.object_name(), provider = %copy.provider, "key copy added");
        Ok(copy)
    }

    /// Removes copy `id`: the next key-set generation is not sealed to it, then `keys/<id>` is
    /// deleted. Refused when no other copy would open the repository.
    pub async fn remove_key(&self, id: &str) -> Result<WrappedKey> {
        let lock = self.key_lock("key remove").await?;
        let result = self.remove_key_locked(id).await;
        lock.release().await?;
        result
    }

    async fn remove_key_locked(&self, id: &str) -> Result<WrappedKey> {
        let ring = self.key_ring().await?;
        self.check_fresh(&ring)?;
        let Some(copy) = ring.copies.iter().find(|c| c.id == id).cloned() else {
            return Err(KeyRingError::NoSuchCopy { id: id.to_owned() }.into());
        };
        let others_open = ring
            .copies
            .iter()
            .filter(|c| c.id != id)
            .any(|c| ring.state(c) != CopyState::Stale);
        if !others_open {
            return Err(KeyRingError::LastCopy { id: id.to_owned() }.into());
        }
        if copy.format == 2 {
            let recipients: Vec<&WrappedKey> = ring
                .copies
                .iter()
                .filter(|c| c.format == 2 && c.id != id && ring.state(c) == CopyState::Active)
                .collect();
            write_generation(
                self.sink.as_ref(),
                &ring,
                &self.keys(),
                &recipients,
                self.clock.now(),
            )
            .await?;
        }
        match self.sink.delete(&copy.object_name()).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!(copy = %copy.object_name(), provider = %copy.provider, "key copy removed");
        Ok(copy)
    }

    /// Rotates the data key: a new data key for everything written from now on, every old one
    /// kept for reading, the key set re-sealed to every copy (one object write). Refused while
    /// a format-1 copy remains (it cannot be re-wrapped without its credentials). Returns the
    /// repository opened with the new keys.
    pub async fn rotate_keys(&self) -> Result<(Repository, Rotation)> {
        self.rotate_keys_marked(false).await
    }

    /// [`Repository::rotate_keys`], marking the new key set as "rewrite under way" or not.
    pub(crate) async fn rotate_keys_marked(
        &self,
        rewriting: bool,
    ) -> Result<(Repository, Rotation)> {
        let lock = self.key_lock("key rotate").await?;
        let result = self.rotate_keys_locked(rewriting).await;
        lock.release().await?;
        result
    }

    async fn rotate_keys_locked(&self, rewriting: bool) -> Result<(Repository, Rotation)> {
        let ring = self.key_ring().await?;
        self.check_fresh(&ring)?;
        if let Some(legacy) = ring.copies.iter().find(|c| c.format == 1) {
            return Err(KeyRingError::LegacyCopy {
                copy: legacy.object_name(),
                provider: legacy.provider.clone(),
            }
            .into());
        }
        let mut keys = (*self.keys()).clone();
        let data_key = keys.rotate();
        keys.set_rewriting(rewriting);
        self.rewrap(&ring, keys, data_key).await
    }

    /// Writes `keys` as the next generation for every active copy.
    pub(crate) async fn rewrap(
        &self,
        ring: &KeyRing,
        keys: KeySet,
        data_key: DataKeyId,
    ) -> Result<(Repository, Rotation)> {
        let recipients: Vec<&WrappedKey> = ring
            .copies
            .iter()
            .filter(|c| ring.state(c) == CopyState::Active)
            .collect();
        if recipients.is_empty() {
            return Err(KeyRingError::NoRecipient.into());
        }
        let generation = write_generation(
            self.sink.as_ref(),
            ring,
            &keys,
            &recipients,
            self.clock.now(),
        )
        .await?;
        let rotation = Rotation {
            generation,
            data_key,
            data_keys: keys.data_key_ids(),
            copies: recipients.iter().map(|c| c.id.clone()).collect(),
        };
        tracing::info!(generation, data_key, "keys rotated");
        // Every clone of this handle uses the new keys from now on.
        self.keys.set(keys);
        Ok((self.clone(), rotation))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn keyset_object_round_trips(generation in 1u64..1_000_000, ids in proptest::collection::btree_map("[0-9a-f]{16}", "[0-9a-f]{0,200}", 0..5), data_keys in proptest::collection::vec(any::<u32>(), 1..5)) {
            let obj = KeySetObject {
                generation,
                created_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
                current: data_keys[0],
                data_keys,
                sealed: ids,
            };
            let name = keyset_name(generation);
            let bytes = encode_keyset_object(&obj);
            prop_assert_eq!(decode_keyset_object(&name, &bytes).unwrap(), obj);
            prop_assert!(decode_keyset_object(&keyset_name(generation + 1), &bytes).is_err());
            let mut bad = bytes.clone();
            bad[3] ^= 1;
            let refused = matches!(decode_keyset_object(&name, &bad), Err(Error::Corrupt { .. }));
            prop_assert!(refused);
        }
    }

    proptest! {
        #[test]
        fn key_copy_round_trips(params in proptest::collection::btree_map("[a-z_]{1,10}", "[ -~]{0,40}", 0..4), wrapped in "[0-9a-f]{0,200}", format in 1u32..3, recipient in proptest::option::of("[0-9a-f]{64}")) {
            let copy = WrappedKey {
                id: crate::keys::new_key_id(),
                provider: "passphrase".into(),
                created_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
                params: serde_json::to_value(&params).unwrap(),
                wrapped,
                format,
                recipient,
            };
            let bytes = encode_copy(&copy);
            let body = object::check_checksum(&copy.object_name(), &bytes).unwrap();
            let back: WrappedKey = serde_json::from_slice(body).unwrap();
            prop_assert_eq!(back.id, copy.id);
            prop_assert_eq!(back.params, copy.params);
            prop_assert_eq!(back.wrapped, copy.wrapped);
            prop_assert_eq!(back.format, copy.format);
            prop_assert_eq!(back.recipient, copy.recipient);
            prop_assert_eq!(back.created_at, copy.created_at);
        }
    }

    #[tokio::test]
    async fn generation_seals_to_every_copy_and_only_to_them() {
        let a = crate::keys::KeyFileProvider::from_key([1; 32]);
        let b = crate::keys::KeyFileProvider::from_key([2; 32]);
        let now = Utc::now();
        let (ca, _) = new_copy(&a, now).await.unwrap();
        let (cb, _) = new_copy(&b, now).await.unwrap();
        let keys = KeySet::generate();
        let obj = seal_generation(&keys, 3, &[&ca], now).unwrap();
        let ring = KeyRing {
            copies: vec![ca.clone(), cb.clone()],
            generation_names: vec![keyset_name(3)],
            generations: vec![obj],
            damaged: vec![],
        };
        let opened = ring.unlock(&a, "mem").await.unwrap();
        assert_eq!(opened.blob_id(b"x"), keys.blob_id(b"x"));
        assert_eq!(ring.state(&cb), CopyState::Stale);
        assert!(matches!(
            ring.unlock(&b, "mem").await,
            Err(Error::KeyRing(KeyRingError::StaleCopy { .. }))
        ));
    }
}
