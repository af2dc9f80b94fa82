//! Opening a repository from options: where it is, what unlocks it and how its store is
//! wrapped. The `resilience` command's flags and the daemon's `[repository]` table both become
//! [`RepositoryOptions`], so a service that embeds the library opens a repository exactly as
//! the command line does.

use std::path::PathBuf;
use std::sync::Arc;

use resilience_core::keys::{EnvKeyProvider, KeyFileProvider, KeyProvider, PassphraseProvider};
use resilience_core::repo::{InitOptions, Repository};
use resilience_core::sink::{AppendOnlySink, Sink};

use crate::keys::kms::KmsProvider;
use crate::keys::vault::VaultTransitProvider;
use crate::StoreConfigError;

/// The environment variable holding a repository passphrase.
pub const PASSWORD_VARIABLE: &str = "RESILIENCE_PASSWORD";

/// What unlocks a repository. At most one of the explicit choices may be given; with none,
/// `RESILIENCE_KEY` (a key in hex), then the passphrase, are used.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyOptions {
    /// A file holding the passphrase (else `RESILIENCE_PASSWORD`).
    pub password_file: Option<PathBuf>,
    /// A key file (64 hex digits).
    pub key_file: Option<PathBuf>,
    /// An AWS KMS key id or ARN that unwraps a key copy (credentials from the AWS variables).
    pub kms_key_id: Option<String>,
    /// A Vault transit key that unwraps a key copy (`VAULT_ADDR`, `VAULT_TOKEN` or AppRole).
    pub vault_transit_key: Option<String>,
}

/// How to reach a repository.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RepositoryOptions {
    /// The repository's URL or path (`s3://bucket/prefix`, `/var/backups/repo`, `memory://`).
    pub location: String,
    /// What unlocks it.
    pub key: KeyOptions,
    /// The cold tier's URL, for retention's tier moves (created if missing on a local path).
    pub cold: Option<String>,
    /// Refuse deletes and overwrites through this handle (prune then runs elsewhere).
    pub append_only: bool,
    /// Limit reads and writes to this many bytes per second.
    pub max_rate: Option<u64>,
}

/// Why a repository could not be opened from its options.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The options contradict themselves or lack something (a usage error).
    #[error("{0}")]
    Usage(String),
    /// The store's URL cannot be used.
    #[error(transparent)]
    Store(#[from] StoreConfigError),
    /// The key provider or the repository failed.
    #[error(transparent)]
    Core(#[from] resilience_core::Error),
}

impl OpenError {
    fn usage(message: impl Into<String>) -> Self {
        OpenError::Usage(message.into())
    }
}

/// The usage error of options that name no key.
const NO_KEY: &str = "no key: set RESILIENCE_PASSWORD or RESILIENCE_KEY, or give --password-file, \
     --key-file, --kms-key-id or --vault-transit-key";

impl KeyOptions {
    /// The passphrase provider, from the password file or `RESILIENCE_PASSWORD`, if either is
    /// given.
    pub fn passphrase(&self) -> Result<Option<PassphraseProvider>, OpenError> {
        if let Some(file) = &self.password_file {
            return Ok(Some(PassphraseProvider::from_file(file)?));
        }
        Ok(std::env::var(PASSWORD_VARIABLE)
            .ok()
            .filter(|p| !p.is_empty())
            .map(PassphraseProvider::new))
    }

    /// The provider named explicitly (KMS, Vault transit or key file), if any.
    pub fn explicit_provider(&self) -> Result<Option<Box<dyn KeyProvider>>, OpenError> {
        let given = [
            self.kms_key_id.is_some(),
            self.vault_transit_key.is_some(),
            self.key_file.is_some(),
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            return Err(OpenError::usage(
                "give one of --kms-key-id, --vault-transit-key and --key-file",
            ));
        }
        if let Some(id) = &self.kms_key_id {
            return Ok(Some(Box::new(KmsProvider::from_env(id)?)));
        }
        if let Some(key) = &self.vault_transit_key {
            return Ok(Some(Box::new(VaultTransitProvider::from_env(key)?)));
        }
        if let Some(file) = &self.key_file {
            return Ok(Some(Box::new(KeyFileProvider::from_file(file)?)));
        }
        Ok(None)
    }

    /// The provider that opens the repository: the explicit one if given, else
    /// `RESILIENCE_KEY`, else the passphrase.
    pub fn provider(&self) -> Result<Box<dyn KeyProvider>, OpenError> {
        if let Some(p) = self.explicit_provider()? {
            return Ok(p);
        }
        if let Some(p) = EnvKeyProvider::from_env(EnvKeyProvider::DEFAULT_VARIABLE)? {
            return Ok(Box::new(p));
        }
        match self.passphrase()? {
            Some(p) => Ok(Box::new(p)),
            None => Err(no_key()),
        }
    }
}

/// The usage error of options that name no key.
pub fn no_key() -> OpenError {
    OpenError::usage(NO_KEY)
}

impl RepositoryOptions {
    /// Options for the repository at `location`, unlocked as the environment says.
    pub fn new(location: impl Into<String>) -> Self {
        RepositoryOptions {
            location: location.into(),
            ..Default::default()
        }
    }

    /// The repository's store, wrapped as the options ask (`create`: make a local directory
    /// that does not exist yet).
    pub fn sink(&self, create: bool) -> Result<Arc<dyn Sink>, OpenError> {
        self.check_location()?;
        let sink = if create {
            crate::open_sink_or_create(&self.location)?
        } else {
            crate::open_sink(&self.location)?
        };
        Ok(self.wrap(sink))
    }

    /// A usage error when no location is given.
    fn check_location(&self) -> Result<(), OpenError> {
        if self.location.is_empty() {
            return Err(OpenError::usage(
                "no repository: give --repo or set RESILIENCE_REPOSITORY",
            ));
        }
        Ok(())
    }

    fn wrap(&self, sink: Arc<dyn Sink>) -> Arc<dyn Sink> {
        if self.append_only {
            Arc::new(AppendOnlySink::new(sink))
        } else {
            sink
        }
    }

    /// Opens the repository, with its cold tier and rate limit if the options give them.
    pub async fn open(&self) -> Result<Repository, OpenError> {
        if self.max_rate == Some(0) {
            return Err(OpenError::usage("--max-rate must be above 0"));
        }
        self.check_location()?;
        let provider = self.key.provider()?;
        let repo = Repository::open(self.sink(false)?, provider.as_ref()).await?;
        let repo = match &self.cold {
            Some(cold) => {
                let cold_sink = match crate::open_sink(cold) {
                    Ok(s) => s,
                    Err(StoreConfigError::MissingDirectory { .. }) => {
                        crate::open_sink_or_create(cold)?
                    }
                    Err(e) => return Err(e.into()),
                };
                repo.attach_cold(self.wrap(cold_sink)).await?
            }
            None => repo,
        };
        Ok(match self.max_rate {
            Some(rate) => repo.throttled(rate),
            None => repo,
        })
    }

    /// Creates the repository with the options' key (a passphrase, key file, KMS or Vault key;
    /// not `RESILIENCE_KEY`'s raw key unless nothing else is given).
    pub async fn init(&self, init: InitOptions) -> Result<Repository, OpenError> {
        self.check_location()?;
        let provider = self.key.provider()?;
        Ok(Repository::init(self.sink(true)?, provider.as_ref(), init).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_explicit_keys_are_a_usage_error() {
        let key = KeyOptions {
            key_file: Some("/k".into()),
            kms_key_id: Some("alias/x".into()),
            ..Default::default()
        };
        let err = key.explicit_provider().err().expect("refused");
        assert!(matches!(err, OpenError::Usage(_)), "{err}");
    }

    #[tokio::test]
    async fn no_location_and_a_zero_rate_are_usage_errors() {
        let Err(err) = RepositoryOptions::default().sink(false) else {
            panic!("a sink without a location");
        };
        assert!(matches!(err, OpenError::Usage(_)), "{err}");
        let options = RepositoryOptions {
            max_rate: Some(0),
            ..RepositoryOptions::new("memory://")
        };
        let Err(err) = options.open().await else {
            panic!("opened with a rate of 0");
        };
        assert!(err.to_string().contains("--max-rate"), "{err}");
    }

    #[tokio::test]
    async fn a_repository_made_from_options_opens_from_the_same_options() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("key");
        std::fs::write(&key_file, "ab".repeat(32)).unwrap();
        let options = RepositoryOptions {
            key: KeyOptions {
                key_file: Some(key_file),
                ..Default::default()
            },
            append_only: true,
            ..RepositoryOptions::new(dir.path().join("repo").display().to_string())
        };
        let made = options.init(InitOptions::default()).await.unwrap();
        let opened = options.open().await.unwrap();
        assert_eq!(made.config().id, opened.config().id);
        let sink = options.sink(false).unwrap();
        let err = sink
            .delete("config")
            .await
            .expect_err("append-only refuses deletes");
        assert!(err.to_string().contains("config"), "{err}");
    }
}
