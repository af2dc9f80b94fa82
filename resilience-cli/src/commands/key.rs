//! `key`: list, add and remove the repository's key copies; rotate its data key.

use resilience_core::keys::ring::{CopyState, KeyRing};
use resilience_core::keys::{EnvKeyProvider, KeyFileProvider, KeyProvider, PassphraseProvider};
use resilience_core::repo::Repository;
use resilience_objstore::keys::kms::KmsProvider;
use resilience_objstore::keys::vault::VaultTransitProvider;
use serde_json::json;

use crate::access;
use crate::cli::{Global, KeyAddArgs, KeyCommand};
use crate::output::outln;
use crate::output::print_json;
use crate::CliError;

/// Runs a `key` subcommand.
pub async fn run(g: &Global, command: &KeyCommand) -> Result<(), CliError> {
    match command {
        KeyCommand::List => list(g).await,
        KeyCommand::Add(args) => add(g, args).await,
        KeyCommand::Remove { key_id } => remove(g, key_id).await,
        KeyCommand::Rotate { rewrite, max_rate } => rotate(g, *rewrite, *max_rate).await,
    }
}

fn state_name(s: CopyState) -> &'static str {
    match s {
        CopyState::Active => "active",
        CopyState::Legacy => "legacy",
        CopyState::Stale => "stale",
    }
}

/// Lists the copies. Needs no credentials: a copy's metadata is not secret.
async fn list(g: &Global) -> Result<(), CliError> {
    let sink = access::sink(g, access::repo_url(g)?, false)?;
    Repository::read_config(sink.as_ref()).await?;
    let ring = KeyRing::load(sink.as_ref()).await?;
    for e in &ring.damaged {
        tracing::warn!(error = %e, "damaged key object");
    }
    if g.json {
        let copies: Vec<_> = ring
            .copies
            .iter()
            .map(|c| {
                json!({
                    "id": c.id,
                    "provider": c.provider,
                    "created_at": c.created_at.to_rfc3339(),
                    "state": state_name(ring.state(c)),
                    "format": c.format,
                })
            })
            .collect();
        print_json(&serde_json::Value::Array(copies));
    } else {
        outln!("{:<16}  {:<14}  {:<25}  state", "id", "provider", "created");
        for c in &ring.copies {
            outln!(
                "{:<16}  {:<14}  {:<25}  {}",
                c.id,
                c.provider,
                c.created_at.to_rfc3339(),
                state_name(ring.state(c))
            );
        }
        if let Ok(Some(gen)) = ring.in_force() {
            outln!(
                "key set generation {} in force: data keys {:?}, current {}",
                gen.generation,
                gen.data_keys,
                gen.current
            );
        }
        for name in ring.not_in_force() {
            outln!(
                "{name}: not in force (an interrupted change of keys, or made by a writer that \
                 cannot delete); the next `key add`, `key remove` or `key rotate` removes it"
            );
        }
    }
    match ring.damaged.into_iter().next() {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

fn new_provider(args: &KeyAddArgs) -> Result<Box<dyn KeyProvider>, CliError> {
    if let Some(f) = &args.new_password_file {
        return Ok(Box::new(PassphraseProvider::from_file(f)?));
    }
    if let Some(f) = &args.new_key_file {
        return Ok(Box::new(if f.exists() {
            KeyFileProvider::from_file(f)?
        } else {
            KeyFileProvider::generate(f)?
        }));
    }
    if let Some(v) = &args.new_key_env {
        return EnvKeyProvider::from_env(v)?
            .map(|p| Box::new(p) as Box<dyn KeyProvider>)
            .ok_or_else(|| CliError::Usage(format!("environment variable {v} is not set")));
    }
    if let Some(id) = &args.new_kms_key_id {
        return Ok(Box::new(KmsProvider::from_env(id)?));
    }
    if let Some(k) = &args.new_vault_transit_key {
        return Ok(Box::new(VaultTransitProvider::from_env(k)?));
    }
    Err(CliError::Usage(
        "key add: give --new-password-file, --new-key-file, --new-key-env, --new-kms-key-id or \
         --new-vault-transit-key"
            .into(),
    ))
}

async fn add(g: &Global, args: &KeyAddArgs) -> Result<(), CliError> {
    let new = new_provider(args)?;
    let repo = access::open(g).await?;
    let copy = repo.add_key(new.as_ref()).await?;
    if g.json {
        print_json(&json!({
            "id": copy.id,
            "provider": copy.provider,
            "created_at": copy.created_at.to_rfc3339(),
        }));
    } else {
        outln!("added key {} ({})", copy.id, copy.provider);
    }
    Ok(())
}

async fn remove(g: &Global, id: &str) -> Result<(), CliError> {
    let repo = access::open(g).await?;
    let copy = repo.remove_key(id).await?;
    if g.json {
        print_json(&json!({ "removed": copy.id, "provider": copy.provider }));
    } else {
        outln!("removed key {} ({})", copy.id, copy.provider);
    }
    Ok(())
}

async fn rotate(g: &Global, rewrite: bool, max_rate: Option<u64>) -> Result<(), CliError> {
    let repo = access::open_throttled(g, max_rate).await?;
    if rewrite {
        let report = repo.rewrite_data().await?;
        if g.json {
            print_json(&json!(report));
        } else {
            outln!(
                "rewrote {} pack(s) and {} sealed object(s) with data key {} ({} old pack(s) \
                 deleted, {} read)",
                report.packs_rewritten,
                report.objects_resealed,
                report.data_key,
                report.packs_deleted,
                crate::output::bytes(report.bytes_read)
            );
            match &report.kept_because {
                Some(why) => outln!("old data keys kept: {why}"),
                None => outln!("retired data keys {:?}", report.retired_keys),
            }
        }
        return Ok(());
    }
    let (_repo, rotation) = repo.rotate_keys().await?;
    if g.json {
        print_json(&json!(rotation));
    } else {
        outln!(
            "rotated: data key {} for new writes (data keys {:?} kept for reading), key set \
             generation {} sealed to {} copies",
            rotation.data_key,
            rotation.data_keys,
            rotation.generation,
            rotation.copies.len()
        );
    }
    Ok(())
}
