//! Cryptography: blob ids, authenticated encryption, and the repository's key set.
//!
//! - Blob ids are keyed BLAKE3 of the plaintext, with a key derived from the repository key, so
//!   that ids leak nothing about content to someone without the key.
//! - Blobs and metadata objects are sealed with XChaCha20-Poly1305 under a random 192-bit nonce,
//!   with associated data binding them to their id or name (a blob cannot be swapped for another).
//! - The [`KeySet`] (id key, chunker seed, data keys) is random and wrapped by key-encryption keys
//!   from [`crate::keys`] providers; data keys have ids so that rotation adds keys without
//!   rewriting data.

use std::collections::BTreeMap;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Nonce length of XChaCha20-Poly1305.
pub const NONCE_LEN: usize = 24;
/// Authentication tag length.
pub const TAG_LEN: usize = 16;
/// Bytes that sealing adds to a plaintext.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// A 256-bit secret.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct SecretKey(pub [u8; 32]);

impl SecretKey {
    /// A fresh random key.
    pub fn random() -> Self {
        let mut k = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut k);
        SecretKey(k)
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(…)")
    }
}

/// Seals `plaintext` into `nonce || ciphertext || tag`.
pub fn seal(key: &SecretKey, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(plaintext.len() + SEAL_OVERHEAD);
    seal_into(key, aad, plaintext, &mut out);
    out
}

/// Seals `plaintext` and appends `nonce || ciphertext || tag` to `out`.
pub fn seal_into(key: &SecretKey, aad: &[u8], plaintext: &[u8], out: &mut Vec<u8>) {
    seal_appended(key, aad, out, |out| out.extend_from_slice(plaintext));
}

/// Appends `nonce || ciphertext || tag` to `out`, where the plaintext is what `write` appends
/// to `out` (then encrypted in place): a plaintext produced straight into the output, without
/// a buffer of its own.
pub fn seal_appended(
    key: &SecretKey,
    aad: &[u8],
    out: &mut Vec<u8>,
    write: impl FnOnce(&mut Vec<u8>),
) {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    out.extend_from_slice(&nonce);
    let start = out.len();
    write(out);
    let cipher = XChaCha20Poly1305::new(Key::from_slice(&key.0));
    let tag = cipher
        .encrypt_in_place_detached(XNonce::from_slice(&nonce), aad, &mut out[start..])
        .expect("XChaCha20-Poly1305 encrypts any length a pack can hold");
    out.extend_from_slice(&tag);
}

/// Opens `nonce || ciphertext || tag`; `None` when it is damaged, truncated or sealed with
/// another key or associated data.
pub fn open(key: &SecretKey, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < SEAL_OVERHEAD {
        return None;
    }
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
    let mut buf = ciphertext.to_vec();
    let cipher = XChaCha20Poly1305::new(Key::from_slice(&key.0));
    cipher
        .decrypt_in_place_detached(
            XNonce::from_slice(nonce),
            aad,
            &mut buf,
            Tag::from_slice(tag),
        )
        .ok()?;
    Some(buf)
}

/// [`open`] without a copy: decrypts `nonce || ciphertext || tag` where it lies and returns the
/// plaintext, a part of `sealed`; `None` as [`open`] (the bytes are then left undefined).
pub fn open_in_place<'a>(key: &SecretKey, aad: &[u8], sealed: &'a mut [u8]) -> Option<&'a [u8]> {
    if sealed.len() < SEAL_OVERHEAD {
        return None;
    }
    let (nonce, rest) = sealed.split_at_mut(NONCE_LEN);
    let (ciphertext, tag) = rest.split_at_mut(rest.len() - TAG_LEN);
    let cipher = XChaCha20Poly1305::new(Key::from_slice(&key.0));
    cipher
        .decrypt_in_place_detached(
            XNonce::from_slice(nonce),
            aad,
            ciphertext,
            Tag::from_slice(tag),
        )
        .ok()?;
    Some(ciphertext)
}

/// Length of an X25519 public key (a key copy's *recipient*).
pub const RECIPIENT_LEN: usize = 32;

/// A key copy's identity: an X25519 secret. Its public half (the *recipient*) is stored in the
/// clear, so anyone holding the key set can seal a new key set to every copy without the
/// copies' credentials (rotation); only the identity, unwrapped by its provider, opens it.
pub struct Identity(x25519_dalek::StaticSecret);

impl Identity {
    /// A fresh random identity.
    pub fn generate() -> Self {
        Identity(x25519_dalek::StaticSecret::random_from_rng(
            rand::rngs::OsRng,
        ))
    }

    /// An identity from its 32 secret bytes (as unwrapped by a provider).
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let arr: [u8; 32] = bytes.try_into().ok()?;
        Some(Identity(x25519_dalek::StaticSecret::from(arr)))
    }

    /// The secret bytes, for a provider to wrap.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.0.to_bytes().to_vec())
    }

    /// The public key that key sets are sealed to.
    pub fn recipient(&self) -> [u8; RECIPIENT_LEN] {
        x25519_dalek::PublicKey::from(&self.0).to_bytes()
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity(recipient {})", hex::encode(self.recipient()))
    }
}

fn recipient_key(shared: &[u8; 32], ephemeral: &[u8; 32], recipient: &[u8; 32]) -> SecretKey {
    let mut input = Zeroizing::new(Vec::with_capacity(96));
    input.extend_from_slice(shared);
    input.extend_from_slice(ephemeral);
    input.extend_from_slice(recipient);
    SecretKey(blake3::derive_key(
        "resilience 2 key set to recipient",
        &input,
    ))
}

/// Seals `plaintext` to an X25519 `recipient` (ECIES): `ephemeral public key (32) || seal(key,
/// aad, plaintext)`, the key being BLAKE3 `derive_key` of the shared secret and both public keys.
pub fn seal_to_recipient(recipient: &[u8; RECIPIENT_LEN], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let ephemeral = x25519_dalek::EphemeralSecret::random_from_rng(rand::rngs::OsRng);
    let eph_pub = x25519_dalek::PublicKey::from(&ephemeral).to_bytes();
    let shared = ephemeral.diffie_hellman(&x25519_dalek::PublicKey::from(*recipient));
    let key = recipient_key(shared.as_bytes(), &eph_pub, recipient);
    let mut out = Vec::with_capacity(RECIPIENT_LEN + plaintext.len() + SEAL_OVERHEAD);
    out.extend_from_slice(&eph_pub);
    seal_into(&key, aad, plaintext, &mut out);
    out
}

/// Opens what [`seal_to_recipient`] sealed to `identity`; `None` when damaged or sealed to
/// another recipient or associated data.
pub fn open_as_recipient(
    identity: &Identity,
    aad: &[u8],
    sealed: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    if sealed.len() < RECIPIENT_LEN + SEAL_OVERHEAD {
        return None;
    }
    let (eph, rest) = sealed.split_at(RECIPIENT_LEN);
    let eph: [u8; 32] = eph.try_into().ok()?;
    let shared = identity
        .0
        .diffie_hellman(&x25519_dalek::PublicKey::from(eph));
    let key = recipient_key(shared.as_bytes(), &eph, &identity.recipient());
    open(&key, aad, rest).map(Zeroizing::new)
}

/// Identifies a data key inside a [`KeySet`].
pub type DataKeyId = u32;

/// The repository's secrets. Never stored in the clear: providers wrap its serialized form.
#[derive(Clone, Serialize, Deserialize)]
pub struct KeySet {
    /// Key of the keyed BLAKE3 that names blobs.
    #[serde(with = "hex_key")]
    id_key: [u8; 32],
    /// Seed of the chunker's gear table, so chunk boundaries leak nothing either.
    chunker_seed: u64,
    /// Data keys by id; every one is kept for reading.
    #[serde(with = "hex_keys")]
    data_keys: BTreeMap<DataKeyId, [u8; 32]>,
    /// The data key used for new writes.
    current: DataKeyId,
    /// A `key rotate --rewrite` is under way (to `current`): a resumed one does not rotate again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    rewriting: bool,
}

impl Drop for KeySet {
    fn drop(&mut self) {
        self.id_key.zeroize();
        self.chunker_seed.zeroize();
        for k in self.data_keys.values_mut() {
            k.zeroize();
        }
    }
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("data_keys", &self.data_keys.keys().collect::<Vec<_>>())
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

impl KeySet {
    /// A fresh random key set with one data key.
    pub fn generate() -> Self {
        let mut data_keys = BTreeMap::new();
        data_keys.insert(1, SecretKey::random().0);
        KeySet {
            id_key: SecretKey::random().0,
            chunker_seed: rand::rngs::OsRng.next_u64(),
            data_keys,
            current: 1,
            rewriting: false,
        }
    }

    /// The blob id of `plaintext`: keyed BLAKE3.
    pub fn blob_id(&self, plaintext: &[u8]) -> crate::format::blob::BlobId {
        crate::format::blob::BlobId(*blake3::keyed_hash(&self.id_key, plaintext).as_bytes())
    }

    /// The chunker's gear-table seed.
    pub fn chunker_seed(&self) -> u64 {
        self.chunker_seed
    }

    /// The id of the data key for new writes.
    pub fn current_key_id(&self) -> DataKeyId {
        self.current
    }

    /// The data key for new writes.
    pub fn current_key(&self) -> SecretKey {
        SecretKey(self.data_keys[&self.current])
    }

    /// A data key by id, for reading.
    pub fn data_key(&self, id: DataKeyId) -> Option<SecretKey> {
        self.data_keys.get(&id).map(|k| SecretKey(*k))
    }

    /// Adds a new data key and makes it current (rotation); old keys stay for reading.
    pub fn rotate(&mut self) -> DataKeyId {
        let next = self.data_keys.keys().max().copied().unwrap_or(0) + 1;
        self.data_keys.insert(next, SecretKey::random().0);
        self.current = next;
        next
    }

    /// Whether a rewrite (`key rotate --rewrite`) to the current key is under way.
    pub fn rewriting(&self) -> bool {
        self.rewriting
    }

    /// Marks a rewrite as under way, or done.
    pub fn set_rewriting(&mut self, on: bool) {
        self.rewriting = on;
    }

    /// The ids of every data key (not secret).
    pub fn data_key_ids(&self) -> Vec<DataKeyId> {
        self.data_keys.keys().copied().collect()
    }

    /// Drops a data key that no object uses any more (after a rewrite); the current key cannot
    /// be dropped. Returns whether it was there.
    pub fn retire(&mut self, id: DataKeyId) -> bool {
        if id == self.current {
            return false;
        }
        match self.data_keys.remove(&id) {
            Some(mut k) => {
                k.zeroize();
                true
            }
            None => false,
        }
    }

    /// Serializes for wrapping.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(serde_json::to_vec(self).expect("key set serializes"))
    }

    /// Parses an unwrapped key set.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let ks: KeySet = serde_json::from_slice(bytes).ok()?;
        ks.data_keys.contains_key(&ks.current).then_some(ks)
    }
}

mod hex_key {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(k: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(k))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = zeroize::Zeroizing::new(String::deserialize(d)?);
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.as_str(), &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}

mod hex_keys {
    use std::collections::BTreeMap;

    use serde::ser::SerializeMap;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        keys: &BTreeMap<u32, [u8; 32]>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(keys.len()))?;
        for (id, k) in keys {
            map.serialize_entry(&id.to_string(), &hex::encode(k))?;
        }
        map.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<u32, [u8; 32]>, D::Error> {
        let raw = BTreeMap::<String, String>::deserialize(d)?;
        let mut out = BTreeMap::new();
        for (id, k) in raw {
            let id: u32 = id.parse().map_err(serde::de::Error::custom)?;
            let mut key = [0u8; 32];
            hex::decode_to_slice(&k, &mut key).map_err(serde::de::Error::custom)?;
            out.insert(id, key);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn seal_open_round_trip(data in proptest::collection::vec(any::<u8>(), 0..4096), aad in proptest::collection::vec(any::<u8>(), 0..64)) {
            let key = SecretKey::random();
            let sealed = seal(&key, &aad, &data);
            prop_assert_eq!(sealed.len(), data.len() + SEAL_OVERHEAD);
            prop_assert_eq!(open(&key, &aad, &sealed), Some(data));
        }

        #[test]
        fn any_flipped_bit_is_refused(data in proptest::collection::vec(any::<u8>(), 1..512), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let key = SecretKey::random();
            let mut sealed = seal(&key, b"aad", &data);
            let i = pos.index(sealed.len());
            sealed[i] ^= 1 << bit;
            prop_assert_eq!(open(&key, b"aad", &sealed), None);
        }
    }

    proptest! {
        #[test]
        fn recipient_seal_round_trip(data in proptest::collection::vec(any::<u8>(), 0..1024), aad in proptest::collection::vec(any::<u8>(), 0..64)) {
            let id = Identity::generate();
            let sealed = seal_to_recipient(&id.recipient(), &aad, &data);
            prop_assert_eq!(sealed.len(), data.len() + RECIPIENT_LEN + SEAL_OVERHEAD);
            prop_assert_eq!(open_as_recipient(&id, &aad, &sealed).map(|z| z.to_vec()), Some(data.clone()));
            prop_assert!(open_as_recipient(&Identity::generate(), &aad, &sealed).is_none());
            let back = Identity::from_bytes(&id.to_bytes()).unwrap();
            prop_assert_eq!(back.recipient(), id.recipient());
        }

        #[test]
        fn key_set_encoding_round_trips(rotations in 0usize..6, retire in proptest::collection::vec(1u32..8, 0..4)) {
            let mut ks = KeySet::generate();
            for _ in 0..rotations { ks.rotate(); }
            for id in retire { ks.retire(id); }
            let back = KeySet::from_bytes(&ks.to_bytes()).unwrap();
            prop_assert_eq!(back.data_key_ids(), ks.data_key_ids());
            prop_assert_eq!(back.current_key_id(), ks.current_key_id());
            prop_assert!(back.current_key() == ks.current_key());
            prop_assert_eq!(back.chunker_seed(), ks.chunker_seed());
            prop_assert_eq!(back.blob_id(b"x"), ks.blob_id(b"x"));
        }
    }

    #[test]
    fn wrong_key_or_aad_is_refused() {
        let key = SecretKey::random();
        let sealed = seal(&key, b"a", b"secret");
        assert_eq!(open(&SecretKey::random(), b"a", &sealed), None);
        assert_eq!(open(&key, b"b", &sealed), None);
        assert_eq!(open(&key, b"a", &sealed[..10]), None);
    }

    #[test]
    fn key_set_round_trips_and_rotates() {
        let mut ks = KeySet::generate();
        let first = ks.current_key();
        let new_id = ks.rotate();
        assert_eq!(new_id, 2);
        let back = KeySet::from_bytes(&ks.to_bytes()).unwrap();
        assert_eq!(back.current_key_id(), 2);
        assert!(back.data_key(1).unwrap() == first);
        assert_eq!(back.blob_id(b"x"), ks.blob_id(b"x"));
        assert_ne!(back.blob_id(b"x"), KeySet::generate().blob_id(b"x"));
    }
}
