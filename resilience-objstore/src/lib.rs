#![warn(missing_docs)]
//! # resilience-objstore
//!
//! The object-storage adapter of resilience: [`ObjectStoreSink`] implements
//! [`resilience_core::sink::Sink`] over any [`object_store::ObjectStore`] — local filesystem,
//! memory, S3 and S3-compatible stores, GCS, Azure — and [`open_sink`] builds one from a
//! repository URL:
//!
//! | URL | store |
//! | --- | --- |
//! | `/var/backups/repo`, `file:///var/backups/repo` | local filesystem (writes are fsynced) |
//! | `memory://` | a fresh in-memory store |
//! | `s3://BUCKET/PREFIX[?endpoint=URL&region=R]` | S3; `AWS_*` variables, overridden by the query |
//! | `gs://BUCKET/PREFIX` | Google Cloud Storage; `GOOGLE_*` variables |
//! | `az://CONTAINER/PREFIX` | Azure Blob Storage; `AZURE_*` variables |
//!
//! Plain `http://` endpoints are accepted only on loopback addresses.
//!
//! [`bucket`] backs up and restores a bucket (or prefix), and [`drill::BucketDrill`] drills its
//! backups. [`keys`] holds the HTTP key providers: [`keys::kms::KmsProvider`] (AWS KMS) and
//! [`keys::vault::VaultTransitProvider`] (HashiCorp Vault's transit engine). [`rds`] takes AWS RDS
//! and Aurora snapshots as backups, expires, restores and drills them.

mod aws;
mod azure_exact;
pub mod bucket;
mod config;
pub mod drill;
mod exact;
mod gcs_exact;
#[cfg(test)]
mod hostile_bytes;
pub mod keys;
pub mod rds;
mod repository;
mod s3_exact;
mod sigv4;
mod sink;
mod streaming_put;
pub mod versions;

pub use config::{
    open_bucket_store, open_sink, open_sink_or_create, open_store, OpenedStore, StoreConfigError,
    StoreUrl,
};
pub use exact::{ExactBucket, ExactBucketError, ListedObject, ObjectHead};
pub use keys::kms::AwsCredentials;
pub use repository::{no_key, KeyOptions, OpenError, RepositoryOptions, PASSWORD_VARIABLE};
pub use sink::{Fsync, LocalSync, ObjectStoreSink};
