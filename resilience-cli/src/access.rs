//! Opening the repository a command names, with the credentials it was given.

use std::sync::Arc;

use resilience_core::keys::{EnvKeyProvider, KeyFileProvider, KeyProvider, PassphraseProvider};
use resilience_core::repo::Repository;
use resilience_core::sink::{AppendOnlySink, Sink};
use resilience_objstore::kms::KmsProvider;
use resilience_objstore::vault::VaultTransitProvider;

use crate::cli::Global;
use crate::CliError;

/// The repository URL, or a usage error.
pub fn repo_url(global: &Global) -> Result<&str, CliError> {
    global.repo.as_deref().ok_or_else(|| {
        CliError::Usage("no repository: give --repo or set RESILIENCE_REPOSITORY".into())
    })
}

/// The passphrase provider, from --password-file or RESILIENCE_PASSWORD.
pub fn passphrase(global: &Global) -> Result<Option<PassphraseProvider>, CliError> {
    if let Some(file) = &global.password_file {
        return Ok(Some(PassphraseProvider::from_file(file)?));
    }
    Ok(std::env::var("RESILIENCE_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty())
        .map(PassphraseProvider::new))
}

/// The provider the global options name explicitly (--kms-key-id, --vault-transit-key,
/// --key-file), if any.
pub fn explicit_provider(global: &Global) -> Result<Option<Box<dyn KeyProvider>>, CliError> {
    let given = [
        global.kms_key_id.is_some(),
        global.vault_transit_key.is_some(),
        global.key_file.is_some(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(CliError::Usage(
            "give one of --kms-key-id, --vault-transit-key and --key-file".into(),
        ));
    }
    if let Some(id) = &global.kms_key_id {
        return Ok(Some(Box::new(KmsProvider::from_env(id)?)));
    }
    if let Some(key) = &global.vault_transit_key {
        return Ok(Some(Box::new(VaultTransitProvider::from_env(key)?)));
    }
    if let Some(file) = &global.key_file {
        return Ok(Some(Box::new(KeyFileProvider::from_file(file)?)));
    }
    Ok(None)
}

/// The provider that opens the repository: --kms-key-id, --vault-transit-key or --key-file
/// if given, else RESILIENCE_KEY, else the passphrase.
pub fn provider(global: &Global) -> Result<Box<dyn KeyProvider>, CliError> {
    if let Some(p) = explicit_provider(global)? {
        return Ok(p);
    }
    if let Some(p) = EnvKeyProvider::from_env(EnvKeyProvider::DEFAULT_VARIABLE)? {
        return Ok(Box::new(p));
    }
    match passphrase(global)? {
        Some(p) => Ok(Box::new(p)),
        None => Err(no_key()),
    }
}

/// The usage error for a command given no credentials.
pub fn no_key() -> CliError {
    CliError::Usage(
        "no key: set RESILIENCE_PASSWORD or RESILIENCE_KEY, or give --password-file, --key-file, \
         --kms-key-id or --vault-transit-key"
            .into(),
    )
}

/// The sink, wrapped as the global options ask.
pub fn sink(global: &Global, url: &str, create: bool) -> Result<Arc<dyn Sink>, CliError> {
    let sink = if create {
        resilience_objstore::open_sink_or_create(url)?
    } else {
        resilience_objstore::open_sink(url)?
    };
    Ok(if global.append_only {
        Arc::new(AppendOnlySink::new(sink))
    } else {
        sink
    })
}

/// Opens the repository (and its cold tier, if given).
pub async fn open(global: &Global) -> Result<Repository, CliError> {
    let url = repo_url(global)?;
    let provider = provider(global)?;
    let repo = Repository::open(sink(global, url, false)?, provider.as_ref()).await?;
    match &global.cold_repo {
        Some(cold) => {
            let cold_sink = match resilience_objstore::open_sink(cold) {
                Ok(s) => s,
                Err(resilience_objstore::StoreConfigError::MissingDirectory { .. }) => {
                    resilience_objstore::open_sink_or_create(cold)?
                }
                Err(e) => return Err(e.into()),
            };
            let cold_sink: Arc<dyn Sink> = if global.append_only {
                Arc::new(AppendOnlySink::new(cold_sink))
            } else {
                cold_sink
            };
            Ok(repo.attach_cold(cold_sink).await?)
        }
        None => Ok(repo),
    }
}

/// Opens the repository with its reads and writes limited to `max_rate` bytes per second
/// (unlimited when `None`): for restores that must not saturate shared disks or links.
pub async fn open_throttled(g: &Global, max_rate: Option<u64>) -> Result<Repository, CliError> {
    let Some(rate) = max_rate else {
        return open(g).await;
    };
    if rate == 0 {
        return Err(CliError::Usage("--max-rate must be above 0".into()));
    }
    Ok(open(g).await?.throttled(rate))
}
