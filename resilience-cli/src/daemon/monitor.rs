//! The daemon's view of health: the catalog read at most once a second, the scheduler's board
//! and the replicas' lag, assessed into a [`HealthReport`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use resilience_core::catalog::{Catalog, CatalogQuery, RepoCatalog};
use resilience_core::health::{self, HealthContext, HealthReport, SourcePolicy};
use resilience_core::time::clock::Clock;
use resilience_core::time::scheduler::JobBoard;

use super::jobs::Shared;
use super::webhook::AlertTracker;

/// How long a catalog listing is reused.
const CATALOG_TTL: Duration = Duration::from_secs(1);

/// Assesses health on demand.
pub struct Monitor {
    catalog: RepoCatalog,
    clock: Arc<dyn Clock>,
    policies: Vec<SourcePolicy>,
    board: Arc<JobBoard>,
    shared: Arc<Shared>,
    since: DateTime<Utc>,
    cache: tokio::sync::Mutex<Option<(Instant, Vec<resilience_core::catalog::BackupRecord>)>>,
    alerts: Option<Arc<AlertTracker>>,
}

impl Monitor {
    /// A monitor of these sources.
    pub fn new(
        catalog: RepoCatalog,
        clock: Arc<dyn Clock>,
        policies: Vec<SourcePolicy>,
        board: Arc<JobBoard>,
        shared: Arc<Shared>,
        since: DateTime<Utc>,
    ) -> Self {
        Monitor {
            catalog,
            clock,
            policies,
            board,
            shared,
            since,
            cache: Default::default(),
            alerts: None,
        }
    }

    /// Passes every report this monitor makes to `tracker`, in the order they are made.
    pub fn with_alerts(mut self, tracker: Arc<AlertTracker>) -> Self {
        self.alerts = Some(tracker);
        self
    }

    /// The scheduler's board.
    pub fn board(&self) -> &JobBoard {
        &self.board
    }

    /// The report now; a catalog that cannot be read is itself a breach. Reports are made one
    /// at a time, and each is passed to the alert tracker (if any) before the next is made.
    pub async fn report(&self) -> HealthReport {
        let mut cache = self.cache.lock().await;
        let context = HealthContext {
            jobs: self.board.snapshot(),
            since: Some(self.since),
            replication: self
                .shared
                .replication
                .lock()
                .expect("lock poisoned")
                .values()
                .cloned()
                .collect(),
        };
        let now = self.clock.now();
        let fresh = cache
            .as_ref()
            .is_some_and(|(t, _)| t.elapsed() < CATALOG_TTL);
        let mut unreadable = None;
        if !fresh {
            match self.catalog.list(&CatalogQuery::default()).await {
                Ok(records) => *cache = Some((Instant::now(), records)),
                Err(e) => unreadable = Some(e),
            }
        }
        let report = match (&unreadable, cache.as_ref()) {
            (None, Some((_, records))) => health::assess(&self.policies, records, &context, now),
            _ => {
                let mut report = health::assess(&self.policies, &[], &context, now);
                report.ok = false;
                let why = unreadable.map_or_else(|| "no listing".to_owned(), |e| e.to_string());
                report
                    .breaches
                    .insert(0, format!("the catalog cannot be read: {why}"));
                report
            }
        };
        if let Some(tracker) = &self.alerts {
            tracker.observe(&report, &context.jobs);
        }
        report
    }
}
