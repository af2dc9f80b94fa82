//! HashiCorp Vault's transit engine as a key provider.
//!
//! Wrapping draws a random key-encryption key, seals the copy with it locally and has Vault
//! encrypt the KEK (`POST /v1/<mount>/encrypt/<key>`); the `vault:v1:…` ciphertext is stored in
//! the copy's parameters with the key name and mount. Unwrapping is one
//! `POST /v1/<mount>/decrypt/<key>`. Vault never sees the repository's keys, only the KEK.
//!
//! Configuration: `VAULT_ADDR`; a token from `VAULT_TOKEN`, or AppRole credentials from
//! `VAULT_ROLE_ID` and `VAULT_SECRET_ID` (logged in once at `auth/approle/login`, or
//! `auth/<VAULT_APPROLE_MOUNT>/login`); `VAULT_NAMESPACE` for Vault Enterprise namespaces;
//! the transit mount from `RESILIENCE_VAULT_TRANSIT_MOUNT` (default `transit`).

use async_trait::async_trait;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use resilience_core::keys::SecretKey;
use resilience_core::keys::{KeyProvider, WrappedKey};
use resilience_core::{Error, Result};
use serde_json::json;
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use super::name_copy;

/// The provider name stored in copies.
pub const PROVIDER: &str = "vault-transit";

/// How to authenticate to Vault.
#[derive(Clone)]
pub enum VaultAuth {
    /// A token (`X-Vault-Token`).
    Token(Zeroizing<String>),
    /// AppRole: logged in for a token on first use.
    AppRole {
        /// The role id.
        role_id: String,
        /// The secret id.
        secret_id: Zeroizing<String>,
        /// The auth mount (`approle`).
        mount: String,
    },
}

impl std::fmt::Debug for VaultAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VaultAuth::Token(_) => f.write_str("Token(<redacted>)"),
            VaultAuth::AppRole { role_id, mount, .. } => f
                .debug_struct("AppRole")
                .field("role_id", role_id)
                .field("secret_id", &"<redacted>")
                .field("mount", mount)
                .finish(),
        }
    }
}

/// Where and how to reach Vault.
#[derive(Clone, Debug)]
pub struct VaultConfig {
    /// `VAULT_ADDR`, e.g. `https://vault.internal:8200`.
    pub addr: String,
    /// The transit key's name.
    pub key: String,
    /// The transit engine's mount (`transit`).
    pub mount: String,
    /// Authentication.
    pub auth: VaultAuth,
    /// Vault Enterprise namespace.
    pub namespace: Option<String>,
}

fn error(message: impl Into<String>) -> Error {
    Error::KeyProvider {
        provider: PROVIDER.into(),
        message: message.into(),
    }
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl VaultConfig {
    /// Configuration for transit key `key` from the environment (see the module
    /// documentation).
    pub fn from_env(key: &str) -> Result<Self> {
        let addr = var("VAULT_ADDR").ok_or_else(|| error("VAULT_ADDR is not set"))?;
        let auth = if let Some(token) = var("VAULT_TOKEN") {
            VaultAuth::Token(Zeroizing::new(token))
        } else if let (Some(role_id), Some(secret_id)) =
            (var("VAULT_ROLE_ID"), var("VAULT_SECRET_ID"))
        {
            VaultAuth::AppRole {
                role_id,
                secret_id: Zeroizing::new(secret_id),
                mount: var("VAULT_APPROLE_MOUNT").unwrap_or_else(|| "approle".into()),
            }
        } else {
            return Err(error(
                "no credentials: set VAULT_TOKEN, or VAULT_ROLE_ID and VAULT_SECRET_ID",
            ));
        };
        Ok(VaultConfig {
            addr,
            key: key.to_owned(),
            mount: var("RESILIENCE_VAULT_TRANSIT_MOUNT").unwrap_or_else(|| "transit".into()),
            auth,
            namespace: var("VAULT_NAMESPACE"),
        })
    }
}

/// Vault transit key provider. `Debug` shows where it points, never a token.
pub struct VaultTransitProvider {
    config: VaultConfig,
    base: url::Url,
    client: reqwest::Client,
    token: Mutex<Option<Zeroizing<String>>>,
}

impl std::fmt::Debug for VaultTransitProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultTransitProvider")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl VaultTransitProvider {
    /// A provider for `config`. Plain `http://` is accepted only on loopback.
    pub fn new(config: VaultConfig) -> Result<Self> {
        let mut base = url::Url::parse(&config.addr)
            .map_err(|e| error(format!("VAULT_ADDR {:?}: {e}", config.addr)))?;
        match base.scheme() {
            "https" => {}
            "http" if crate::config::is_loopback(&config.addr) => {}
            _ => {
                return Err(error(format!(
                    "VAULT_ADDR {}: use https (plain http only to a loopback address)",
                    config.addr
                )))
            }
        }
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| error(format!("HTTP client: {e}")))?;
        let token = match &config.auth {
            VaultAuth::Token(t) => Some(t.clone()),
            VaultAuth::AppRole { .. } => None,
        };
        Ok(VaultTransitProvider {
            config,
            base,
            client,
            token: Mutex::new(token),
        })
    }

    /// A provider for transit key `key` configured from the environment.
    pub fn from_env(key: &str) -> Result<Self> {
        Self::new(VaultConfig::from_env(key)?)
    }

    async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: serde_json::Value,
    ) -> Result<serde_json::Value> {
        let url = self
            .base
            .join(&format!("v1/{path}"))
            .map_err(|e| error(format!("{path}: {e}")))?;
        let mut req = self.client.post(url).json_body(&body);
        if let Some(t) = token {
            req = req.header("X-Vault-Token", t);
        }
        if let Some(ns) = &self.config.namespace {
            req = req.header("X-Vault-Namespace", ns);
        }
        let resp = req.send().await.map_err(|e| {
            error(format!(
                "{path} at {}: {}",
                self.config.addr,
                e.without_url()
            ))
        })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| error(format!("{path}: reading the answer: {e}")))?;
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        if !status.is_success() {
            let errors = value
                .get("errors")
                .and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|e| e.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default();
            return Err(error(format!("{path}: HTTP {status}: {errors}")));
        }
        Ok(value)
    }

    async fn token(&self) -> Result<Zeroizing<String>> {
        let mut guard = self.token.lock().await;
        if let Some(t) = guard.as_ref() {
            return Ok(t.clone());
        }
        let VaultAuth::AppRole {
            role_id,
            secret_id,
            mount,
        } = &self.config.auth
        else {
            return Err(error("no token"));
        };
        let answer = self
            .post(
                &format!("auth/{mount}/login"),
                None,
                json!({ "role_id": role_id, "secret_id": secret_id.as_str() }),
            )
            .await?;
        let token = answer
            .pointer("/auth/client_token")
            .and_then(|v| v.as_str())
            .ok_or_else(|| {
                error(format!(
                    "auth/{mount}/login: the answer has no client_token"
                ))
            })?;
        let token = Zeroizing::new(token.to_owned());
        *guard = Some(token.clone());
        Ok(token)
    }
}

/// reqwest's `json` feature is not enabled in this build; this is the same, by hand.
trait JsonBody {
    fn json_body(self, body: &serde_json::Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, body: &serde_json::Value) -> Self {
        self.header("content-type", "application/json")
            .body(serde_json::to_vec(body).expect("serializes"))
    }
}

#[async_trait]
impl KeyProvider for VaultTransitProvider {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    async fn wrap(&self, secret: &[u8], now: DateTime<Utc>) -> Result<WrappedKey> {
        let kek = SecretKey::random();
        let token = self.token().await?;
        let path = format!("{}/encrypt/{}", self.config.mount, self.config.key);
        let plaintext = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(kek.0));
        let answer = self
            .post(
                &path,
                Some(&token),
                json!({ "plaintext": plaintext.as_str() }),
            )
            .await?;
        let ciphertext = answer
            .pointer("/data/ciphertext")
            .and_then(|v| v.as_str())
            .filter(|c| c.starts_with("vault:"))
            .ok_or_else(|| error(format!("{path}: the answer has no vault: ciphertext")))?;
        let params = json!({
            "key": self.config.key,
            "mount": self.config.mount,
            "ciphertext": ciphertext,
        });
        Ok(WrappedKey::seal(PROVIDER, &kek, secret, params, now))
    }

    async fn unwrap(&self, copy: &WrappedKey) -> Result<Option<Zeroizing<Vec<u8>>>> {
        let p = |k: &str| copy.params.get(k).and_then(|v| v.as_str());
        if p("key") != Some(self.config.key.as_str())
            || p("mount").unwrap_or("transit") != self.config.mount
        {
            return Ok(None);
        }
        let ciphertext = p("ciphertext").ok_or_else(|| Error::Corrupt {
            object: copy.object_name(),
            reason: "Vault copy without ciphertext".into(),
        })?;
        let token = self.token().await?;
        let path = format!("{}/decrypt/{}", self.config.mount, self.config.key);
        let answer = self
            .post(&path, Some(&token), json!({ "ciphertext": ciphertext }))
            .await
            .map_err(|e| name_copy(e, copy))?;
        let plain = answer
            .pointer("/data/plaintext")
            .and_then(|v| v.as_str())
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .map(Zeroizing::new)
            .ok_or_else(|| error(format!("{path}: the answer has no base64 plaintext")))?;
        let arr: [u8; 32] = plain.as_slice().try_into().map_err(|_| {
            error(format!(
                "{}: the decrypted KEK is not 32 bytes",
                copy.object_name()
            ))
        })?;
        Ok(copy.open(&SecretKey(arr)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_secret() {
        for auth in [
            VaultAuth::Token(Zeroizing::new("hvs.secret-token".into())),
            VaultAuth::AppRole {
                role_id: "role".into(),
                secret_id: Zeroizing::new("secret-id-value".into()),
                mount: "approle".into(),
            },
        ] {
            let p = VaultTransitProvider::new(VaultConfig {
                addr: "http://127.0.0.1:8200".into(),
                key: "k".into(),
                mount: "transit".into(),
                auth,
                namespace: None,
            })
            .unwrap();
            let text = format!("{p:?}");
            assert!(
                !text.contains("secret-token") && !text.contains("secret-id-value"),
                "{text}"
            );
        }
        let refused = VaultTransitProvider::new(VaultConfig {
            addr: "http://vault.example.com:8200".into(),
            key: "k".into(),
            mount: "transit".into(),
            auth: VaultAuth::Token(Zeroizing::new("t".into())),
            namespace: None,
        });
        assert!(refused.is_err(), "plain http to a remote Vault is refused");
    }
}
