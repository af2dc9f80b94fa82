//! A warm standby fed from a repository: the newest base backup restored, `standby.signal`
//! written, and a `restore_command` that fetches WAL from the repository (in a failover setup,
//! the other region's replica, which `replicate --follow` keeps within seconds of the primary's
//! archive). The standby replays each segment as it arrives and waits for the next, following
//! new timelines; promoting it ends recovery after replaying whatever the repository holds.
//!
//! ```no_run
//! use resilience_pg::{archive::WalArchive, recovery::{self, RecoveryTarget}, standby};
//! # async fn demo(repo: resilience_core::repo::Repository, options: recovery::RecoveryOptions,
//! #               start: recovery::StartOptions) -> Result<(), resilience_pg::PgError> {
//! let wal = WalArchive::new(&repo, "postgres")?;
//! let plan = recovery::plan(&repo, &wal, &RecoveryTarget::Standby, "latest").await?;
//! let pgdata = std::path::Path::new("/srv/pg-standby");
//! recovery::prepare(&repo, &plan, pgdata, &options).await?; // options.target: Standby
//! let replaying = standby::start(pgdata, &start).await?;
//! // … the other region is lost:
//! let promoted = standby::promote(pgdata, &start).await?;
//! println!("last commit replayed: {:?}", promoted.commit_time);
//! # Ok(()) }
//! ```

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::base::connect;
use crate::cluster;
use crate::error::PgError;
use crate::lsn::Lsn;
use crate::recovery::{start_until, RecoveryOutcome, StartOptions, Until};

/// Starts a cluster prepared with [`crate::recovery::RecoveryTarget::Standby`] and returns once
/// it is consistent and replaying (it accepts read-only connections), with the point reached.
pub async fn start(pgdata: &Path, options: &StartOptions) -> Result<RecoveryOutcome, PgError> {
    start_until(pgdata, options, Until::Replaying).await
}

/// Where a standby (or a promoted one) stands.
#[derive(Clone, Debug, Serialize)]
pub struct ReplayStatus {
    /// Still replaying (not promoted).
    pub in_recovery: bool,
    /// The last WAL position replayed.
    pub lsn: Option<Lsn>,
    /// The commit time of the last transaction replayed.
    pub commit_time: Option<DateTime<Utc>>,
    /// Seconds from that commit to now, by the server's clock: the replay lag while the
    /// primary commits (on an idle primary it grows though nothing is missing).
    pub lag_seconds: Option<f64>,
}

/// The replay position of the standby behind `dsn`.
pub async fn status(dsn: &str) -> Result<ReplayStatus, PgError> {
    let client = connect(dsn).await?;
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, \
             pg_last_xact_replay_timestamp(), \
             extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8",
            &[],
        )
        .await
        .map_err(PgError::pg("reading the standby's replay position"))?;
    let lsn: Option<String> = row.get(1);
    Ok(ReplayStatus {
        in_recovery: row.get(0),
        lsn: lsn.and_then(|l| l.parse().ok()),
        commit_time: row.get(2),
        lag_seconds: row.get(3),
    })
}

/// What [`promote`] did.
#[derive(Clone, Debug, Serialize)]
pub struct Promotion {
    /// The last WAL position replayed before it began accepting writes.
    pub lsn: Option<Lsn>,
    /// The commit time of the last transaction replayed: every transaction the primary
    /// committed up to then is here.
    pub commit_time: Option<DateTime<Utc>>,
    /// The new timeline it writes on.
    pub timeline: Option<u32>,
    /// It was promoted already (by an earlier run): nothing was done.
    pub already_promoted: bool,
    /// How long the promotion took (the replay of what the repository still held included).
    pub seconds: f64,
}

/// The connection string of the cluster in `pgdata` as `options` describes it.
fn dsn(options: &StartOptions) -> String {
    format!(
        "host=127.0.0.1 port={} user={} dbname=postgres connect_timeout=5",
        options.port, options.user
    )
}

/// Promotes the standby in `pgdata`: Postgres first replays every segment the repository holds
/// (its `restore_command` is asked for each next one until there is none), then ends recovery on
/// a new timeline and accepts writes. Promoting a cluster already promoted reports where it
/// stands and does nothing, so a failover run again after a later step failed goes on.
pub async fn promote(pgdata: &Path, options: &StartOptions) -> Result<Promotion, PgError> {
    let began = Instant::now();
    let dsn = dsn(options);
    let before = status(&dsn).await?;
    if before.in_recovery {
        let mut cmd = cluster::command_as_owner(&options.bindir, "pg_ctl", pgdata)?;
        cmd.arg("promote")
            .arg("-D")
            .arg(pgdata)
            .arg("-w")
            .arg("-t")
            .arg(options.timeout.as_secs().max(1).to_string());
        cluster::run(cmd, "pg_ctl promote").await?;
    }
    let deadline = began + options.timeout;
    let after = loop {
        let now = status(&dsn).await?;
        if !now.in_recovery {
            break now;
        }
        if Instant::now() > deadline {
            return Err(PgError::Recovery(format!(
                "the standby in {} was asked to promote but is still in recovery after {:?}",
                pgdata.display(),
                options.timeout
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let client = connect(&dsn).await?;
    let timeline: Option<i32> = client
        .query_one(
            "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int",
            &[],
        )
        .await
        .map_err(PgError::pg("reading the promoted cluster's timeline"))?
        .get(0);
    Ok(Promotion {
        lsn: after.lsn,
        commit_time: after.commit_time,
        timeline: timeline.map(|t| t as u32),
        already_promoted: !before.in_recovery,
        seconds: began.elapsed().as_secs_f64(),
    })
}
