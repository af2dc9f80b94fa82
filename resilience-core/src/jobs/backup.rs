//! A source's scheduled backup.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::Result;
use crate::ops::backup::{BackupOptions, BackupReport};
use crate::repo::Repository;
use crate::sink::BoxError;
use crate::source::Source;
use crate::time::scheduler::{JobOutcome, ScheduledJob};
use crate::time::stop::StopSignal;

/// Figures taken from a source at backup time and recorded as the backup's labels, for a drill
/// to compare with the restored copy later (for Postgres, the results of check queries:
/// `resilience_pg::drill::QueryFigures`).
#[async_trait]
pub trait BackupFigures: Send + Sync {
    /// The labels to record. A figure that cannot be taken is recorded as a label saying why
    /// (the drill then fails that check), not as an error: the backup itself must go on.
    async fn take(&self) -> BTreeMap<String, String>;
}

/// Backs up one source on each run, optionally throttled, with fixed labels and the figures a
/// drill checks. The summary names the snapshot and its sizes.
pub struct BackupJob {
    repo: Repository,
    source: Arc<dyn Source>,
    labels: BTreeMap<String, String>,
    max_rate: Option<u64>,
    figures: Option<Arc<dyn BackupFigures>>,
}

impl BackupJob {
    /// A job backing up `source` into `repo`.
    pub fn new(repo: Repository, source: Arc<dyn Source>) -> Self {
        BackupJob {
            repo,
            source,
            labels: BTreeMap::new(),
            max_rate: None,
            figures: None,
        }
    }

    /// Labels recorded with every backup.
    pub fn with_labels(mut self, labels: BTreeMap<String, String>) -> Self {
        self.labels = labels;
        self
    }

    /// Limits the backup's writes to the repository to `bytes_per_second`.
    pub fn with_max_rate(mut self, bytes_per_second: u64) -> Self {
        self.max_rate = Some(bytes_per_second);
        self
    }

    /// Takes `figures` before each backup and records them as labels.
    pub fn with_figures(mut self, figures: Arc<dyn BackupFigures>) -> Self {
        self.figures = Some(figures);
        self
    }

    /// Runs one backup now; with `stop`, an interrupted backup is recorded failed.
    pub async fn back_up(&self, stop: Option<StopSignal>) -> Result<BackupReport> {
        let mut labels = self.labels.clone();
        if let Some(figures) = &self.figures {
            labels.extend(figures.take().await);
        }
        let options = BackupOptions {
            labels,
            stop,
            ..Default::default()
        };
        let repo = match self.max_rate {
            Some(rate) => self.repo.throttled(rate),
            None => self.repo.clone(),
        };
        repo.backup(self.source.as_ref(), options).await
    }
}

#[async_trait]
impl ScheduledJob for BackupJob {
    async fn run(&self, stop: StopSignal) -> JobOutcome {
        let report = self.back_up(Some(stop)).await.map_err(BoxError::from)?;
        let r = &report.record;
        Ok(format!(
            "snapshot {}: {} entries, {} bytes read, {} new, {} stored",
            r.id, r.entries, r.logical_bytes, r.new_bytes, r.stored_bytes
        ))
    }
}
