//! Key providers: where the key-encryption key (KEK) that wraps a repository's [`KeySet`] comes
//! from.
//!
//! A repository holds one or more wrapped copies of its key set under `keys/`, one per provider
//! (envelope encryption): a service may unlock with a key file while an operator's offline
//! passphrase still opens it in a disaster. Opening tries each wrapped copy that the provider
//! can handle.
//!
//! - [`PassphraseProvider`]: Argon2id, parameters stored with the wrapped key. Deliberately slow
//!   (hundreds of milliseconds): fine for an operator, too slow for `wal-push` per segment.
//! - [`KeyFileProvider`]: 32 random bytes (64 hex digits) in a file with tight permissions; the
//!   KEK is the file's key, so unlocking costs microseconds.
//! - [`EnvKeyProvider`]: the same 64 hex digits in an environment variable (`RESILIENCE_KEY`),
//!   for platforms that inject secrets as variables.
//!
//! Cloud providers (AWS KMS, HashiCorp Vault's transit engine) are HTTP clients and live in
//! `resilience-objstore`; they implement the same trait.
//!
//! Since format 2 a provider wraps a copy's *identity* (an X25519 secret, see
//! [`crate::format::crypto::Identity`]), and the key set itself is sealed to every copy's public key in
//! `keys/keyset-<generation>` ([`crate::keys::ring`]). Format-1 copies wrap the key set directly;
//! they still open.

use std::path::Path;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::format::crypto::{self, KeySet, SecretKey};

/// One wrapped copy of the key set, as stored in `keys/<id>`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WrappedKey {
    /// Random id of this copy (also its object name).
    pub id: String,
    /// Which provider wrapped it (`passphrase`, `key-file`, …).
    pub provider: String,
    /// When it was written.
    pub created_at: DateTime<Utc>,
    /// Provider-specific parameters (KDF settings and salt, KMS key id…). Never secret.
    pub params: serde_json::Value,
    /// `nonce || ciphertext || tag`, hex: of the copy's identity (format 2) or of the key set
    /// itself (format 1).
    pub wrapped: String,
    /// 1: `wrapped` seals the key set; 2: it seals this copy's identity and the key set is
    /// sealed to [`WrappedKey::recipient`] in `keys/keyset-<generation>`.
    #[serde(default = "format_one")]
    pub format: u32,
    /// Hex X25519 public key of the copy's identity (format 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
}

fn format_one() -> u32 {
    1
}

impl WrappedKey {
    /// A copy of `secret` sealed under `kek` (the way every provider here stores it), with a
    /// new random id. Providers that obtain a KEK elsewhere (a KMS) use this too.
    pub fn seal(
        provider: &str,
        kek: &SecretKey,
        secret: &[u8],
        params: serde_json::Value,
        now: DateTime<Utc>,
    ) -> WrappedKey {
        let id = new_key_id();
        let wrapped = hex::encode(crypto::seal(kek, &key_aad(&id), secret));
        WrappedKey {
            id,
            provider: provider.to_owned(),
            created_at: now,
            params,
            wrapped,
            format: 1,
            recipient: None,
        }
    }

    /// Opens what [`WrappedKey::seal`] sealed; `None` when `kek` is not the right key.
    pub fn open(&self, kek: &SecretKey) -> Option<Zeroizing<Vec<u8>>> {
        open_wrapped(kek, self)
    }

    /// The object's key in the sink: `keys/<id>`.
    pub fn object_name(&self) -> String {
        format!("keys/{}", self.id)
    }
}

/// A source of key-encryption keys.
#[async_trait]
pub trait KeyProvider: Send + Sync {
    /// The provider's name as stored in [`WrappedKey::provider`].
    fn name(&self) -> &'static str;

    /// Wraps a serialized key set into a new [`WrappedKey`].
    async fn wrap(&self, key_set: &[u8], now: DateTime<Utc>) -> Result<WrappedKey>;

    /// Unwraps a copy written by this provider; `Ok(None)` when the credentials do not open it.
    async fn unwrap(&self, wrapped: &WrappedKey) -> Result<Option<Zeroizing<Vec<u8>>>>;
}

/// Cost parameters of Argon2id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl KdfParams {
    /// The most memory a stored key copy may ask for: 4 GiB.
    pub const MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;
    /// The most passes: 64.
    pub const MAX_ITERATIONS: u32 = 64;
    /// The most lanes: 64.
    pub const MAX_PARALLELISM: u32 = 64;
    /// The most work, memory × passes: 16 GiB-passes (4 GiB × 4, 1 GiB × 16, 256 MiB × 64;
    /// the default is 192 MiB-passes), a few seconds at most where the bounds alone allow
    /// 4 GiB × 64 (minutes).
    pub const MAX_WORK_KIB_PASSES: u64 = 16 * 1024 * 1024;

    /// Refuses costs beyond the bounds above, and parameters Argon2id does not accept. They
    /// are read from a key copy before anything in it is authenticated, so whoever can write
    /// the store could otherwise make every open exhaust memory or time.
    pub fn check_bounds(&self, object: &str) -> Result<()> {
        let work = u64::from(self.memory_kib) * u64::from(self.iterations);
        if self.memory_kib > Self::MAX_MEMORY_KIB
            || self.iterations > Self::MAX_ITERATIONS
            || self.parallelism > Self::MAX_PARALLELISM
            || work > Self::MAX_WORK_KIB_PASSES
        {
            return Err(Error::corrupt(
                object,
                format!(
                    "Argon2id cost {} KiB, {} passes, {} lanes exceeds the bounds ({} KiB, {} passes, {} lanes, {} KiB × passes): refused before deriving",
                    self.memory_kib,
                    self.iterations,
                    self.parallelism,
                    Self::MAX_MEMORY_KIB,
                    Self::MAX_ITERATIONS,
                    Self::MAX_PARALLELISM,
                    Self::MAX_WORK_KIB_PASSES
                ),
            ));
        }
        self.argon2_params()
            .map_err(|e| Error::corrupt(object, format!("invalid Argon2id parameters: {e}")))?;
        Ok(())
    }

    fn argon2_params(&self) -> std::result::Result<argon2::Params, argon2::Error> {
        argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
    }
}

/// The salt lengths a stored key copy may carry (Argon2's minimum; ours are 16 bytes).
const SALT_LEN: std::ops::RangeInclusive<usize> = argon2::MIN_SALT_LEN..=64;

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 1 lane: about 0.2–0.4 s on a current core.
    fn default() -> Self {
        KdfParams {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct PassphraseParams {
    kdf: String,
    #[serde(flatten)]
    cost: KdfParams,
    salt: String,
}

/// Derives the KEK from a passphrase with Argon2id.
pub struct PassphraseProvider {
    passphrase: Zeroizing<String>,
    params: KdfParams,
}

impl PassphraseProvider {
    /// A provider for `passphrase` with default cost for new keys (stored keys keep theirs).
    pub fn new(passphrase: impl Into<String>) -> Self {
        PassphraseProvider {
            passphrase: Zeroizing::new(passphrase.into()),
            params: KdfParams::default(),
        }
    }

    /// Sets the cost used when wrapping new keys (tests use a low cost to run fast).
    pub fn with_params(mut self, params: KdfParams) -> Self {
        self.params = params;
        self
    }

    /// Reads the passphrase from a file (its first line, without the line break).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text =
            Zeroizing::new(
                std::fs::read_to_string(path).map_err(|e| Error::KeyProvider {
                    provider: "passphrase".into(),
                    message: format!("cannot read password file {}: {e}", path.display()),
                })?,
            );
        let line = text.lines().next().unwrap_or("");
        if line.is_empty() {
            return Err(Error::KeyProvider {
                provider: "passphrase".into(),
                message: format!("password file {} is empty", path.display()),
            });
        }
        Ok(Self::new(line))
    }

    fn derive(&self, cost: KdfParams, salt: &[u8]) -> Result<SecretKey> {
        let params = cost.argon2_params().map_err(|e| Error::KeyProvider {
            provider: "passphrase".into(),
            message: format!("invalid Argon2id parameters {cost:?}: {e}"),
        })?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = [0u8; 32];
        argon
            .hash_password_into(self.passphrase.as_bytes(), salt, &mut out)
            .map_err(|e| Error::KeyProvider {
                provider: "passphrase".into(),
                message: format!("key derivation failed: {e}"),
            })?;
        Ok(SecretKey(out))
    }
}

#[async_trait]
impl KeyProvider for PassphraseProvider {
    fn name(&self) -> &'static str {
        "passphrase"
    }

    async fn wrap(&self, key_set: &[u8], now: DateTime<Utc>) -> Result<WrappedKey> {
        // A cost the bounds refuse would make a copy that never opens again.
        self.params.check_bounds("a new passphrase key copy")?;
        let mut salt = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        let kek = self.derive(self.params, &salt)?;
        let params = serde_json::to_value(PassphraseParams {
            kdf: "argon2id".into(),
            cost: self.params,
            salt: hex::encode(salt),
        })
        .expect("params serialize");
        Ok(WrappedKey::seal(self.name(), &kek, key_set, params, now))
    }

    async fn unwrap(&self, wrapped: &WrappedKey) -> Result<Option<Zeroizing<Vec<u8>>>> {
        let params: PassphraseParams =
            serde_json::from_value(wrapped.params.clone()).map_err(|e| {
                Error::corrupt(
                    format!("keys/{}", wrapped.id),
                    format!("bad KDF parameters: {e}"),
                )
            })?;
        if params.kdf != "argon2id" {
            return Err(Error::corrupt(
                format!("keys/{}", wrapped.id),
                format!("unknown KDF {}", params.kdf),
            ));
        }
        let salt = hex::decode(&params.salt).map_err(|e| {
            Error::corrupt(format!("keys/{}", wrapped.id), format!("bad salt: {e}"))
        })?;
        if !SALT_LEN.contains(&salt.len()) {
            return Err(Error::corrupt(
                format!("keys/{}", wrapped.id),
                format!(
                    "bad salt: {} bytes (Argon2id takes {} to {})",
                    salt.len(),
                    SALT_LEN.start(),
                    SALT_LEN.end()
                ),
            ));
        }
        params.cost.check_bounds(&format!("keys/{}", wrapped.id))?;
        let kek = self.derive(params.cost, &salt)?;
        Ok(open_wrapped(&kek, wrapped))
    }
}

/// Uses a 256-bit key from a file as the KEK: cheap to unlock on every call.
pub struct KeyFileProvider {
    key: SecretKey,
}

impl KeyFileProvider {
    /// Reads a key file: 64 hex digits (surrounding white space ignored).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text =
            Zeroizing::new(
                std::fs::read_to_string(path).map_err(|e| Error::KeyProvider {
                    provider: "key-file".into(),
                    message: format!("cannot read key file {}: {e}", path.display()),
                })?,
            );
        let mut key = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut key).map_err(|_| Error::KeyProvider {
            provider: "key-file".into(),
            message: format!("key file {} must hold 64 hex digits", path.display()),
        })?;
        Ok(KeyFileProvider {
            key: SecretKey(key),
        })
    }

    /// Writes a new random key file with mode 0600 and returns its provider.
    pub fn generate(path: &Path) -> Result<Self> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let key = SecretKey::random();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::KeyProvider {
                provider: "key-file".into(),
                message: format!("cannot create key file {}: {e}", path.display()),
            })?;
        f.write_all(hex::encode(key.0).as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::KeyProvider {
                provider: "key-file".into(),
                message: format!("cannot write key file {}: {e}", path.display()),
            })?;
        Ok(KeyFileProvider { key })
    }

    /// A provider for a key held in memory.
    pub fn from_key(key: [u8; 32]) -> Self {
        KeyFileProvider {
            key: SecretKey(key),
        }
    }
}

#[async_trait]
impl KeyProvider for KeyFileProvider {
    fn name(&self) -> &'static str {
        "key-file"
    }

    async fn wrap(&self, key_set: &[u8], now: DateTime<Utc>) -> Result<WrappedKey> {
        let params = serde_json::json!({ "fingerprint": key_fingerprint(&self.key) });
        Ok(WrappedKey::seal(
            self.name(),
            &self.key,
            key_set,
            params,
            now,
        ))
    }

    async fn unwrap(&self, wrapped: &WrappedKey) -> Result<Option<Zeroizing<Vec<u8>>>> {
        // The fingerprint lets us skip copies made with other key files without a decryption.
        if wrapped.params.get("fingerprint").and_then(|v| v.as_str())
            != Some(key_fingerprint(&self.key).as_str())
        {
            return Ok(None);
        }
        Ok(open_wrapped(&self.key, wrapped))
    }
}

/// Uses a 256-bit key from an environment variable (64 hex digits) as the KEK, like a key
/// file: for platforms that inject secrets as variables. The variable's name is recorded with
/// the copy; its value never is.
pub struct EnvKeyProvider {
    key: SecretKey,
}

impl EnvKeyProvider {
    /// The variable read by default: `RESILIENCE_KEY`.
    pub const DEFAULT_VARIABLE: &'static str = "RESILIENCE_KEY";

    /// Reads the key from `variable`; `Ok(None)` when it is unset or empty.
    pub fn from_env(variable: &str) -> Result<Option<Self>> {
        let Some(value) = std::env::var_os(variable) else {
            return Ok(None);
        };
        let value = Zeroizing::new(value.to_string_lossy().into_owned());
        if value.trim().is_empty() {
            return Ok(None);
        }
        let mut key = [0u8; 32];
        hex::decode_to_slice(value.trim(), &mut key).map_err(|_| Error::KeyProvider {
            provider: "env".into(),
            message: format!("environment variable {variable} must hold 64 hex digits"),
        })?;
        Ok(Some(EnvKeyProvider {
            key: SecretKey(key),
        }))
    }

    /// A provider for a key held in memory.
    pub fn from_key(key: [u8; 32]) -> Self {
        EnvKeyProvider {
            key: SecretKey(key),
        }
    }
}

#[async_trait]
impl KeyProvider for EnvKeyProvider {
    fn name(&self) -> &'static str {
        "env"
    }

    async fn wrap(&self, key_set: &[u8], now: DateTime<Utc>) -> Result<WrappedKey> {
        let params = serde_json::json!({ "fingerprint": key_fingerprint(&self.key) });
        Ok(WrappedKey::seal(
            self.name(),
            &self.key,
            key_set,
            params,
            now,
        ))
    }

    async fn unwrap(&self, wrapped: &WrappedKey) -> Result<Option<Zeroizing<Vec<u8>>>> {
        if wrapped.params.get("fingerprint").and_then(|v| v.as_str())
            != Some(key_fingerprint(&self.key).as_str())
        {
            return Ok(None);
        }
        Ok(open_wrapped(&self.key, wrapped))
    }
}

/// A non-secret fingerprint of a KEK (keyed hash of a constant), to pick the right copy fast.
fn key_fingerprint(key: &SecretKey) -> String {
    hex::encode(&blake3::keyed_hash(&key.0, b"resilience key fingerprint").as_bytes()[..8])
}

fn key_aad(id: &str) -> Vec<u8> {
    format!("resilience/keys/{id}").into_bytes()
}

fn open_wrapped(kek: &SecretKey, wrapped: &WrappedKey) -> Option<Zeroizing<Vec<u8>>> {
    let sealed = hex::decode(&wrapped.wrapped).ok()?;
    crypto::open(kek, &key_aad(&wrapped.id), &sealed).map(Zeroizing::new)
}

/// A new random key-copy id (16 hex digits).
pub fn new_key_id() -> String {
    let mut b = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// Opens a key set from format-1 copies with one provider: the first copy that opens wins.
/// (Repositories open through [`crate::keys::ring::KeyRing::unlock`], which also reads format 2.)
pub async fn unwrap_any(
    provider: &dyn KeyProvider,
    copies: &[WrappedKey],
    location: &str,
) -> Result<KeySet> {
    let mut tried = 0;
    for copy in copies.iter().filter(|c| c.provider == provider.name()) {
        tried += 1;
        if let Some(plain) = provider.unwrap(copy).await? {
            return KeySet::from_bytes(&plain).ok_or_else(|| {
                Error::corrupt(
                    format!("keys/{}", copy.id),
                    "unwrapped key set does not parse",
                )
            });
        }
    }
    Err(Error::WrongKey {
        location: location.to_owned(),
        tried,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast() -> KdfParams {
        KdfParams {
            memory_kib: 256,
            iterations: 1,
            parallelism: 1,
        }
    }

    #[tokio::test]
    async fn passphrase_wraps_and_refuses_wrong_one() {
        let ks = KeySet::generate();
        let p = PassphraseProvider::new("correct horse").with_params(fast());
        let w = p.wrap(&ks.to_bytes(), Utc::now()).await.unwrap();
        assert!(!w.wrapped.contains("correct"));
        let back = unwrap_any(&p, std::slice::from_ref(&w), "mem")
            .await
            .unwrap();
        assert_eq!(back.blob_id(b"a"), ks.blob_id(b"a"));
        let wrong = PassphraseProvider::new("battery staple");
        let err = unwrap_any(&wrong, &[w], "mem").await.unwrap_err();
        assert!(matches!(err, Error::WrongKey { tried: 1, .. }), "{err}");
    }

    #[tokio::test]
    async fn env_key_round_trips_and_debug_hides_nothing_secret() {
        std::env::set_var("RESILIENCE_TEST_ENV_KEY_A", hex::encode([9u8; 32]));
        let p = EnvKeyProvider::from_env("RESILIENCE_TEST_ENV_KEY_A")
            .unwrap()
            .unwrap();
        let ks = KeySet::generate();
        let w = p.wrap(&ks.to_bytes(), Utc::now()).await.unwrap();
        assert!(!format!("{w:?}").contains(&hex::encode([9u8; 32])));
        assert!(unwrap_any(&p, std::slice::from_ref(&w), "mem")
            .await
            .is_ok());
        assert!(EnvKeyProvider::from_env("RESILIENCE_TEST_ENV_KEY_UNSET")
            .unwrap()
            .is_none());
        std::env::set_var("RESILIENCE_TEST_ENV_KEY_B", "not hex");
        let err = EnvKeyProvider::from_env("RESILIENCE_TEST_ENV_KEY_B")
            .err()
            .unwrap();
        assert!(!err.to_string().contains("not hex"), "{err}");
    }

    #[tokio::test]
    async fn key_file_round_trip_and_other_file_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let p = KeyFileProvider::generate(&path).unwrap();
        let ks = KeySet::generate();
        let w = p.wrap(&ks.to_bytes(), Utc::now()).await.unwrap();
        let again = KeyFileProvider::from_file(&path).unwrap();
        assert!(unwrap_any(&again, std::slice::from_ref(&w), "mem")
            .await
            .is_ok());
        let other = KeyFileProvider::from_key([7; 32]);
        assert!(matches!(
            unwrap_any(&other, &[w], "mem").await,
            Err(Error::WrongKey { .. })
        ));
        std::fs::write(dir.path().join("bad"), "xyz").unwrap();
        assert!(KeyFileProvider::from_file(&dir.path().join("bad")).is_err());
    }

    #[tokio::test]
    async fn hostile_argon2_costs_are_refused_before_deriving() {
        let provider = PassphraseProvider::new("pw").with_params(KdfParams {
            memory_kib: 256,
            iterations: 1,
            parallelism: 1,
        });
        let wrapped = provider.wrap(b"key set", chrono::Utc::now()).await.unwrap();
        for (field, value) in [
            ("memory_kib", u32::MAX as u64),
            ("iterations", 1_000_000),
            ("parallelism", 10_000),
        ] {
            let mut hostile = wrapped.clone();
            hostile.params[field] = value.into();
            let started = std::time::Instant::now();
            let err = provider.unwrap(&hostile).await.unwrap_err().to_string();
            assert!(err.contains(&format!("keys/{}", wrapped.id)), "{err}");
            assert!(err.contains("exceeds the bounds"), "{err}");
            assert!(started.elapsed() < std::time::Duration::from_secs(5));
        }
        assert!(provider.unwrap(&wrapped).await.unwrap().is_some());
    }
}
