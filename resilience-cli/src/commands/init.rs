//! `init`: create a repository, its keys wrapped by a passphrase, a key file, a KMS or Vault
//! key, or one of those and a passphrase.

use resilience_core::keys::{EnvKeyProvider, KeyFileProvider, KeyProvider};
use resilience_core::repo::{InitOptions, Repository};
use resilience_core::Error;
use serde_json::json;

use crate::access;
use crate::cli::Global;
use crate::output::print_json;
use crate::CliError;

/// Creates the repository. With both a passphrase and `--key-file`, either opens it (two
/// wrapped copies of the key set). A key file that does not exist yet is generated (mode 0600),
/// but only once it is certain the repository will be created.
pub async fn run(g: &Global) -> Result<(), CliError> {
    let url = access::repo_url(g)?;
    let passphrase = access::passphrase(g)?;
    let cloud = if g.kms_key_id.is_some() || g.vault_transit_key.is_some() {
        access::explicit_provider(g)?
    } else {
        None
    };
    let env_key = EnvKeyProvider::from_env(EnvKeyProvider::DEFAULT_VARIABLE)?;
    if passphrase.is_none() && g.key_file.is_none() && cloud.is_none() && env_key.is_none() {
        return Err(access::no_key());
    }
    let sink = access::sink(g, url, true)?;
    if Repository::exists(sink.as_ref()).await? {
        return Err(Error::AlreadyInitialized {
            location: sink.location(),
        }
        .into());
    }
    let key_file = match &g.key_file {
        Some(path) if path.exists() => Some(KeyFileProvider::from_file(path)?),
        Some(path) => Some(KeyFileProvider::generate(path)?),
        None => None,
    };
    let provider: &dyn KeyProvider = match (&cloud, &key_file, &env_key, &passphrase) {
        (Some(c), ..) => c.as_ref(),
        (None, Some(k), ..) => k,
        (None, None, Some(e), _) => e,
        (None, None, None, Some(p)) => p,
        (None, None, None, None) => return Err(access::no_key()),
    };
    let repo = Repository::init(sink, provider, InitOptions::default()).await?;
    if provider.name() != "passphrase" {
        if let Some(p) = &passphrase {
            repo.add_key(p).await?;
        }
    }
    if g.json {
        print_json(&json!({
            "repository": repo.sink().location(),
            "id": repo.config().id,
            "format": repo.config().format,
        }));
    } else {
        println!(
            "created repository {} at {}",
            repo.config().id,
            repo.sink().location()
        );
    }
    Ok(())
}
