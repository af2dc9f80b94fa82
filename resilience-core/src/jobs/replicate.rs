//! The scheduled replication to another store.

use std::sync::Arc;

use async_trait::async_trait;

use crate::error::Result;
use crate::health::{ReplicationBoard, ReplicationHealth};
use crate::jobs::JobError;
use crate::ops::replicate::{replicate, ReplicateOptions, ReplicationReport};
use crate::repo::Repository;
use crate::sink::throttle::share_budget;
use crate::sink::Sink;
use crate::time::scheduler::{JobOutcome, ScheduledJob};
use crate::time::stop::StopSignal;

/// Copies the repository's new objects to a replica (proving each copy), and posts the lag it
/// leaves to a [`ReplicationBoard`] for the health report and `resilience_replication_lag_*`.
pub struct ReplicateJob {
    repo: Repository,
    replica: Arc<dyn Sink>,
    max_rate: Option<u64>,
    options: ReplicateOptions,
    board: Option<Arc<ReplicationBoard>>,
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
        }
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

    /// Replicates once now.
    pub async fn replicate(&self) -> Result<ReplicationReport> {
        let mut source = self.repo.sink().clone();
        let mut replica = self.replica.clone();
        if let Some(rate) = self.max_rate {
            (source, replica) = share_budget(source, replica, rate);
        }
        let report = replicate(source.as_ref(), replica.as_ref(), &self.options).await?;
        if let Some(board) = &self.board {
            let lag = &report.lag_after;
            board.post(ReplicationHealth {
                target: self.replica.location(),
                at: self.repo.clock().now(),
                lag_snapshots: lag.snapshots,
                lag_bytes: lag.bytes,
                lag_seconds: lag.seconds as f64,
            });
        }
        Ok(report)
    }
}

#[async_trait]
impl ScheduledJob for ReplicateJob {
    async fn run(&self, stop: StopSignal) -> JobOutcome {
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
