//! AWS RDS and Aurora snapshots as backups.
//!
//! [`RdsSource`] takes a manual snapshot of a DB instance or cluster (or picks its newest
//! automated one), waits until it is available, optionally copies it to another region
//! re-encrypted with that region's KMS key, and [`take_snapshot`] records it in the catalog
//! like any backup: source kind `rds`, an empty repository snapshot, and the snapshot's ids,
//! ARNs in both regions, engine and size in `source_metadata` ([`RdsSnapshotRecord`]). So
//! `forget` expires RDS snapshots with the same policies, holds and safety rules; then
//! [`delete_expired_snapshots`] deletes the AWS snapshots of what it expired. [`restore`]
//! makes a new instance from one, and [`RdsDrill`] drills them.
//!
//! The client ([`RdsClient`]) speaks the RDS Query API, signed as the KMS provider signs
//! (SigV4 through `object_store`); see [`client`] for its configuration.
//!
//! ```no_run
//! use resilience_objstore::rds::{take_snapshot, RdsClient, RdsResource, RdsSource, SnapshotOptions};
//! # async fn demo(repo: resilience_core::repo::Repository) -> Result<(), resilience_objstore::rds::RdsError> {
//! let client = RdsClient::from_env(Some("eu-west-1"))?;
//! let source = RdsSource::new(client, RdsResource::Instance("orders".into()), SnapshotOptions {
//!     copy_to_region: Some("eu-central-1".into()),
//!     kms_key_id: Some("alias/backups".into()),
//!     ..Default::default()
//! });
//! let report = take_snapshot(&repo, &source, Default::default(), None).await?;
//! println!("backup {}", report.record.id);
//! # Ok(()) }
//! ```

pub mod client;
mod drill;
mod error;
mod expire;
mod model;
mod restore;
mod snapshot;
mod wait;
mod xml;

pub use client::{RdsClient, RdsConfig};
pub use drill::RdsDrill;
pub use error::RdsError;
pub use expire::{delete_expired_snapshots, pending_deletions, AwsExpiry, ExpiredSnapshot};
pub use model::{
    DbServer, DbSnapshot, RdsResource, RdsSnapshotRecord, SnapshotCopy, KIND, METADATA_KEY,
};
pub use restore::{copy_in, new_resource, rds_record, restore, wait_available};
pub use snapshot::{take_snapshot, RdsSource, SnapshotOptions};
pub use wait::WaitPolicy;
