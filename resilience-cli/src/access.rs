//! Opening the repository a command names, with the credentials it was given: the global flags
//! become [`RepositoryOptions`], which open it as the library does for a service.

use std::sync::Arc;

use resilience_core::keys::{KeyProvider, PassphraseProvider};
use resilience_core::repo::Repository;
use resilience_core::sink::Sink;
use resilience_objstore::{KeyOptions, RepositoryOptions};

use crate::cli::Global;
use crate::CliError;

/// The repository options the global flags give.
pub fn options(global: &Global) -> RepositoryOptions {
    RepositoryOptions {
        location: global.repo.clone().unwrap_or_default(),
        key: KeyOptions {
            password_file: global.password_file.clone(),
            key_file: global.key_file.clone(),
            kms_key_id: global.kms_key_id.clone(),
            vault_transit_key: global.vault_transit_key.clone(),
        },
        cold: global.cold_repo.clone(),
        append_only: global.append_only,
        max_rate: None,
    }
}

/// The repository URL, or a usage error.
pub fn repo_url(global: &Global) -> Result<&str, CliError> {
    global.repo.as_deref().ok_or_else(|| {
        CliError::Usage("no repository: give --repo or set RESILIENCE_REPOSITORY".into())
    })
}

/// The passphrase provider, from --password-file or RESILIENCE_PASSWORD.
pub fn passphrase(global: &Global) -> Result<Option<PassphraseProvider>, CliError> {
    Ok(options(global).key.passphrase()?)
}

/// The provider the global options name explicitly (--kms-key-id, --vault-transit-key,
/// --key-file), if any.
pub fn explicit_provider(global: &Global) -> Result<Option<Box<dyn KeyProvider>>, CliError> {
    Ok(options(global).key.explicit_provider()?)
}

/// The usage error for a command given no credentials.
pub fn no_key() -> CliError {
    resilience_objstore::no_key().into()
}

/// The sink, wrapped as the global options ask.
pub fn sink(global: &Global, url: &str, create: bool) -> Result<Arc<dyn Sink>, CliError> {
    let options = RepositoryOptions {
        location: url.to_owned(),
        ..options(global)
    };
    Ok(options.sink(create)?)
}

/// Opens the repository (and its cold tier, if given).
pub async fn open(global: &Global) -> Result<Repository, CliError> {
    Ok(options(global).open().await?)
}

/// Opens the repository with its reads and writes limited to `max_rate` bytes per second
/// (unlimited when `None`): for restores that must not saturate shared disks or links.
pub async fn open_throttled(g: &Global, max_rate: Option<u64>) -> Result<Repository, CliError> {
    Ok(RepositoryOptions {
        max_rate,
        ..options(g)
    }
    .open()
    .await?)
}
