//! `init`: create a repository, its keys wrapped by a passphrase, a key file, a KMS or Vault
//! key, or one of those and a passphrase.

use resilience_core::keys::{EnvKeyProvider, KeyFileProvider, KeyProvider};
use resilience_core::repo::{InitOptions, Repository};
use resilience_core::sink::{LockMode, ObjectLock};
use resilience_core::Error;
use serde_json::json;

use crate::access;
use crate::cli::{Global, InitArgs};
use crate::output::outln;
use crate::output::print_json;
use crate::CliError;

/// Creates the repository. With both a passphrase and `--key-file`, either opens it (two
/// wrapped copies of the key set). A key file that does not exist yet is generated (mode 0600),
/// but only once it is certain the repository will be created.
pub async fn run(g: &Global, args: &InitArgs) -> Result<(), CliError> {
    let object_lock = object_lock(args)?;
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
    let second_copy = provider.name() != "passphrase" && passphrase.is_some();
    if object_lock.is_some() && second_copy {
        return Err(CliError::Usage(
            "with --object-lock, protect the repository with one key: a second copy is a change of keys, which must delete the locked key set (give the passphrase or the other key, not both)".into(),
        ));
    }
    let options = InitOptions {
        object_lock,
        ..InitOptions::default()
    };
    let repo = Repository::init(sink, provider, options).await?;
    if second_copy {
        if let Some(p) = &passphrase {
            repo.add_key(p).await?;
        }
    }
    if g.json {
        print_json(&json!({
            "repository": repo.sink().location(),
            "id": repo.config().id,
            "format": repo.config().format,
            "object_lock": repo.object_lock(),
        }));
    } else {
        outln!(
            "created repository {} at {}",
            repo.config().id,
            repo.sink().location()
        );
        if let Some(lock) = repo.object_lock() {
            outln!(
                "every pack, manifest, key and WAL file is locked ({}) for {} after it is written; run prune at least every {} to extend what live snapshots need",
                lock.mode,
                humantime::format_duration(lock.period()),
                humantime::format_duration(lock.period() / 2)
            );
        }
    }
    Ok(())
}

/// The object lock `--object-lock` asks for: a number is days, anything else a duration.
fn object_lock(args: &InitArgs) -> Result<Option<ObjectLock>, CliError> {
    let Some(text) = &args.object_lock else {
        return Ok(None);
    };
    let period = match text.parse::<u64>() {
        Ok(days) => std::time::Duration::from_secs(days.saturating_mul(86_400)),
        Err(_) => humantime::parse_duration(text).map_err(|e| {
            CliError::Usage(format!(
                "--object-lock {text:?}: neither a number of days nor a duration ({e})"
            ))
        })?,
    };
    if period.as_secs() == 0 {
        return Err(CliError::Usage(
            "--object-lock: the retention period must be at least a second".into(),
        ));
    }
    let mode = match args.object_lock_mode.as_str() {
        "compliance" => LockMode::Compliance,
        _ => LockMode::Governance,
    };
    Ok(Some(ObjectLock {
        mode,
        period_secs: period.as_secs(),
    }))
}
