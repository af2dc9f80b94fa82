//! The scheduled restore drills.

use std::sync::Arc;

use async_trait::async_trait;

use crate::drill::{self, Drill, DrillError, DrillOptions, DrillReport};
use crate::jobs::JobError;
use crate::repo::Repository;
use crate::time::scheduler::{JobOutcome, ScheduledJob};
use crate::time::stop::StopSignal;

/// Drills each of its sources in turn ([`drill::run`]: restore the newest succeeded backup into
/// a scratch place, check it, record RTO and RPO in the catalog, tear it down). The run fails
/// ([`JobError::DrillFailed`]) when any drill failed a check, naming each failure; every drill
/// runs even when an earlier one failed.
pub struct DrillJob {
    repo: Repository,
    drills: Vec<(Arc<dyn Drill>, DrillOptions)>,
}

impl DrillJob {
    /// A job with no drills yet.
    pub fn new(repo: Repository) -> Self {
        DrillJob {
            repo,
            drills: Vec::new(),
        }
    }

    /// Adds a drill, run with `options`.
    pub fn with_drill(mut self, drill: Arc<dyn Drill>, options: DrillOptions) -> Self {
        self.drills.push((drill, options));
        self
    }

    /// Runs every drill now and returns their reports; an error only for a drill that cannot
    /// begin.
    pub async fn drill(&self) -> Result<Vec<DrillReport>, DrillError> {
        let mut reports = Vec::new();
        for (drill, options) in &self.drills {
            reports.push(drill::run(&self.repo, drill.as_ref(), None, options).await?);
        }
        Ok(reports)
    }
}

#[async_trait]
impl ScheduledJob for DrillJob {
    async fn run(&self, stop: StopSignal) -> JobOutcome {
        let reports = tokio::select! {
            r = self.drill() => r?,
            _ = stop.stopped() => return Err(JobError::Interrupted { job: "drill".into(), reason: stop.reason() }.into()),
        };
        let mut passed = Vec::new();
        let mut failed = Vec::new();
        for report in reports {
            let line = format!(
                "{}: snapshot {} rto {:.1}s rpo {:.1}s",
                report.source, report.snapshot, report.rto_seconds, report.rpo_seconds
            );
            if report.ok {
                passed.push(line);
            } else {
                failed.push(format!("{line}: {}", report.failures().join("; ")));
            }
        }
        if failed.is_empty() {
            Ok(passed.join(", "))
        } else {
            Err(JobError::DrillFailed(failed.join(", ")).into())
        }
    }
}
