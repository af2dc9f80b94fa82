//! Keys: the providers of the key that wraps a repository's key set (passphrase, key file,
//! environment, cloud KMS and Vault in the adapters), the [`ring`] of key copies and key-set
//! generations in the repository, and [`rewrite`] (re-encrypting data with the current key).

pub(crate) mod cell;
mod provider;
pub mod rewrite;
pub mod ring;

pub use crate::format::crypto::SecretKey;
pub use provider::*;
