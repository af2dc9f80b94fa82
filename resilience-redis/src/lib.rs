#![warn(missing_docs)]
//! # resilience-redis
//!
//! Redis for resilience: portable keyspace backups with `SCAN` + `DUMP` + `PEXPIRETIME` across
//! every primary of a cluster ([`source::RedisSource`]), restores with `RESTORE … ABSTTL`,
//! pipelined, throttled and routed to the right primary ([`target::RedisTarget`]), a comparison
//! of a snapshot with a server after a restore ([`verify::CompareTarget`]), and RDB files as a
//! source where the service runs beside Redis ([`rdb::RdbFileSource`], its CRC64 checked on the way:
//! [`rdb_checksum`]); the restore drill of a keyspace backup into a scratch server
//! ([`drill::RedisDrill`]); the restore step of a failover ([`failover::RestoreNewest`]). The entry format is in [`record`].
//!
//! ```no_run
//! use resilience_redis::{connect::RedisEndpoint, source::RedisSource, target::{RedisTarget, RestoreSettings}};
//! # async fn demo(repo: resilience_core::repo::Repository) -> Result<(), Box<dyn std::error::Error>> {
//! let cluster = RedisEndpoint { url: "redis://10.0.0.5:6379".into(), cluster: true };
//! let report = repo.backup(&RedisSource::new(cluster.clone()), Default::default()).await?;
//! let target = RedisTarget::new(cluster.connect().await?, RestoreSettings { replace: true, pipeline: 512, ..Default::default() });
//! repo.restore(&report.record.id, &target, Default::default()).await?;
//! println!("{:?}", target.tally());
//! # Ok(()) }
//! ```

pub mod connect;
pub mod drill;
mod error;
pub mod failover;
pub mod glob;
#[cfg(test)]
mod hostile_bytes;
mod pipe;
pub mod rdb;
pub mod rdb_checksum;
pub mod record;
pub mod source;
pub mod target;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod verify;

pub use error::RedisError;
