//! The scheduled retention and prune.

use std::sync::Arc;

use async_trait::async_trait;

use crate::catalog::{Catalog, CatalogQuery};
use crate::error::Result;
use crate::jobs::JobError;
use crate::ops::prune::PruneOptions;
use crate::repo::Repository;
use crate::retention::{self, RetentionPolicy};
use crate::time::scheduler::{JobOutcome, ScheduledJob};
use crate::time::stop::StopSignal;

/// Applies each source's retention policy to that source's backups (with the safety rules of
/// [`retention::plan`]), then prunes the packs nothing references any more.
pub struct PruneJob {
    repo: Repository,
    policies: Vec<(String, Arc<dyn RetentionPolicy>)>,
    options: PruneOptions,
}

impl PruneJob {
    /// A job that only prunes, until policies are added.
    pub fn new(repo: Repository) -> Self {
        PruneJob {
            repo,
            policies: Vec::new(),
            options: PruneOptions::default(),
        }
    }

    /// Applies `policy` to the backups of source `source` before pruning.
    pub fn with_policy(
        mut self,
        source: impl Into<String>,
        policy: Arc<dyn RetentionPolicy>,
    ) -> Self {
        self.policies.push((source.into(), policy));
        self
    }

    /// How the prune runs (grace period, ...).
    pub fn with_options(mut self, options: PruneOptions) -> Self {
        self.options = options;
        self
    }

    async fn expire_and_prune(&self) -> Result<String> {
        let repo = &self.repo;
        let records = repo.catalog().list(&CatalogQuery::default()).await?;
        let now = repo.clock().now();
        let mut expired = 0;
        for (source, policy) in &self.policies {
            let mine: Vec<_> = records
                .iter()
                .filter(|r| &r.source.id == source)
                .cloned()
                .collect();
            let plan = retention::plan(policy.as_ref(), &mine, now);
            expired += repo.forget(&plan).await?.expired.len();
        }
        let report = repo.prune(self.options).await?;
        Ok(format!(
            "expired {expired} backup(s); pruned {} pack(s), {} bytes freed",
            report.deleted_packs, report.freed_bytes
        ))
    }
}

#[async_trait]
impl ScheduledJob for PruneJob {
    async fn run(&self, stop: StopSignal) -> JobOutcome {
        tokio::select! {
            r = self.expire_and_prune() => Ok(r?),
            _ = stop.stopped() => Err(JobError::Interrupted { job: "prune".into(), reason: stop.reason() }.into()),
        }
    }
}
