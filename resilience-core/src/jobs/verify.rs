//! The scheduled verification.

use async_trait::async_trait;

use crate::jobs::JobError;
use crate::ops::verify::VerifyOptions;
use crate::repo::Repository;
use crate::sink::BoxError;
use crate::time::scheduler::{JobOutcome, ScheduledJob};
use crate::time::stop::StopSignal;

/// Verifies the repository (quick: every object present and its index sound; full: every
/// pack read and every blob decrypted) and records the result in the catalog, where the health
/// report reads it. Damage fails the run ([`JobError::Damaged`]) naming each object.
pub struct VerifyJob {
    repo: Repository,
    full: bool,
}

impl VerifyJob {
    /// A quick verification of `repo`.
    pub fn new(repo: Repository) -> Self {
        VerifyJob { repo, full: false }
    }

    /// Reads every pack (`true`) or checks presence and indexes only (`false`).
    pub fn full(mut self, full: bool) -> Self {
        self.full = full;
        self
    }
}

#[async_trait]
impl ScheduledJob for VerifyJob {
    async fn run(&self, stop: StopSignal) -> JobOutcome {
        let work = async {
            let report = self.repo.verify(VerifyOptions { full: self.full }).await?;
            self.repo.record_verification(&report).await?;
            Ok::<_, BoxError>(report)
        };
        let report = tokio::select! {
            r = work => r?,
            _ = stop.stopped() => return Err(JobError::Interrupted { job: "verify".into(), reason: stop.reason() }.into()),
        };
        if report.is_ok() {
            return Ok(format!(
                "{} verification of {} snapshot(s): sound",
                report.mode, report.snapshots_checked
            ));
        }
        let objects: Vec<String> = report
            .damaged
            .iter()
            .map(|d| format!("{}: {}", d.object, d.problem))
            .collect();
        Err(JobError::Damaged {
            mode: report.mode.clone(),
            count: report.damaged.len(),
            objects: objects.join("; "),
        }
        .into())
    }
}
