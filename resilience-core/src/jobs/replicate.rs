//! The scheduled replication to another store.

use std::sync::Arc;

use async_trait::async_trait;

use crate::error::Result;
use crate::health::{ReplicationBoard, ReplicationHealth};
use crate::jobs::JobError;
use crate::ops::follow::{follow, FollowOptions, FollowPass, FollowSummary};
use crate::ops::replicate::{replicate, ReplicateOptions, ReplicationReport};
use crate::repo::Repository;
use crate::sink::throttle::share_budget;
use crate::sink::Sink;
use crate::time::scheduler::{JobOutcome, ScheduledJob};
use crate::time::stop::StopSignal;

/// Copies the repository's new objects to a replica (proving each copy), and posts the lag it
/// leaves to a [`ReplicationBoard`] for the health report and `resilience_replication_lag_*`.
///
/// Once per run, or, [`following`](ReplicateJob::following), in passes every few seconds until
/// the daemon stops it ([`crate::ops::follow`]): each pass posts its lag, counted from the moment
/// the replica last held everything the source held.
pub struct ReplicateJob {
    repo: Repository,
    replica: Arc<dyn Sink>,
    max_rate: Option<u64>,
    options: ReplicateOptions,
    board: Option<Arc<ReplicationBoard>>,
    follow: Option<FollowOptions>,
}

impl ReplicateJob {
    /// A job copying `repo` to `replica`.
    pub fn new(repo: Repository, replica: Arc<dyn Sink>) -> Self {
        ReplicateJob {
            repo,
            replica,
            max_rate: None,
            options: ReplicateOptions::default(),
            board: None,
            follow: None,
        }
    }

    /// Follows the repository instead of copying once: a run goes on, pass after pass, until
    /// stopped.
    pub fn following(mut self, follow: FollowOptions) -> Self {
        self.follow = Some(follow);
        self
    }

    /// Limits reads and writes together to `bytes_per_second`.
    pub fn with_max_rate(mut self, bytes_per_second: u64) -> Self {
        self.max_rate = Some(bytes_per_second);
        self
    }

    /// How the copy runs.
    pub fn with_options(mut self, options: ReplicateOptions) -> Self {
        self.options = options;
        self
    }

    /// Posts the lag after each run to `board`.
    pub fn with_board(mut self, board: Arc<ReplicationBoard>) -> Self {
        self.board = Some(board);
        self
    }

    fn sinks(&self) -> (Arc<dyn Sink>, Arc<dyn Sink>) {
        let source = self.repo.sink().clone();
        let replica = self.replica.clone();
        match self.max_rate {
            Some(rate) => share_budget(source, replica, rate),
            None => (source, replica),
        }
    }

    fn post(
        &self,
        report: &ReplicationReport,
        caught_up_to: Option<chrono::DateTime<chrono::Utc>>,
    ) {
        if let Some(board) = &self.board {
            let lag = &report.lag_after;
            board.post(ReplicationHealth {
                target: self.replica.location(),
                at: self.repo.clock().now(),
                lag_snapshots: lag.snapshots,
                lag_bytes: lag.bytes,
                lag_seconds: lag.seconds as f64,
                caught_up_to,
            });
        }
    }

    /// Replicates once now.
    pub async fn replicate(&self) -> Result<ReplicationReport> {
        let (source, replica) = self.sinks();
        let report = replicate(source.as_ref(), replica.as_ref(), &self.options).await?;
        self.post(&report, None);
        Ok(report)
    }

    /// Follows the repository until `stop` fires, posting each pass's lag.
    pub async fn follow(
        &self,
        follow_options: &FollowOptions,
        stop: &StopSignal,
    ) -> Result<FollowSummary> {
        let (source, replica) = self.sinks();
        let mut on_pass = |pass: &FollowPass<'_>| {
            if let Ok(report) = pass.outcome {
                self.post(report, pass.caught_up_to);
            }
        };
        follow(
            source.as_ref(),
            replica.as_ref(),
            &self.options,
            follow_options,
            stop,
            &mut on_pass,
        )
        .await
    }
}

#[async_trait]
impl ScheduledJob for ReplicateJob {
    async fn run(&self, stop: StopSignal) -> JobOutcome {
        if let Some(follow_options) = &self.follow {
            let summary = self.follow(follow_options, &stop).await?;
            return Ok(format!(
                "followed for {} pass(es) ({} failed), copied {} object(s), {} bytes; stopped: {}",
                summary.passes,
                summary.failed_passes,
                summary.copied_objects,
                summary.copied_bytes,
                stop.reason()
            ));
        }
        let report = tokio::select! {
            r = self.replicate() => r?,
            _ = stop.stopped() => return Err(JobError::Interrupted { job: "replicate".into(), reason: stop.reason() }.into()),
        };
        Ok(format!(
            "copied {} object(s), {} bytes; lag {} snapshot(s)",
            report.copied_objects, report.copied_bytes, report.lag_after.snapshots
        ))
    }
}
