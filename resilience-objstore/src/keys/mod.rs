//! Cloud key providers: a repository's key set sealed by a key held in a key service, reached
//! over HTTP — [`kms::KmsProvider`] (AWS KMS, envelope encryption) and
//! [`vault::VaultTransitProvider`] (HashiCorp Vault's transit engine). Each implements
//! [`resilience_core::keys::KeyProvider`] and costs one call to its service when a repository
//! is opened, never one per blob.

use resilience_core::keys::WrappedKey;
use resilience_core::Error;

pub mod kms;
pub mod vault;

/// Names the copy in a provider error (a damaged ciphertext is refused by the service).
fn name_copy(e: Error, copy: &WrappedKey) -> Error {
    match e {
        Error::KeyProvider { provider, message } => Error::KeyProvider {
            provider,
            message: format!("{}: {message}", copy.object_name()),
        },
        other => other,
    }
}
