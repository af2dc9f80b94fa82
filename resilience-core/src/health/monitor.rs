//! A service's live view of health: the catalog (read at most once a second), the scheduler's
//! job board and the replicas' lag, assessed on demand into a [`HealthReport`], published as
//! metrics, and passed to observers (an alerting webhook) in the order the reports are made.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::catalog::{BackupRecord, Catalog, CatalogQuery};
use crate::failover::{FailoverJournal, FailoverRecord};
use crate::health::{assess, HealthContext, HealthReport, ReplicationHealth, SourcePolicy};
use crate::time::clock::Clock;
use crate::time::scheduler::{JobBoard, JobStatus};

/// How long a catalog listing is reused.
const CATALOG_TTL: Duration = Duration::from_secs(1);

/// The last lag each replication measured, by replica; [`crate::jobs::ReplicateJob`] posts to
/// it and a [`Monitor`] reads it.
#[derive(Debug, Default)]
pub struct ReplicationBoard {
    replicas: Mutex<BTreeMap<String, ReplicationHealth>>,
}

impl ReplicationBoard {
    /// Records `health` as the replica's newest measurement.
    pub fn post(&self, health: ReplicationHealth) {
        self.replicas
            .lock()
            .expect("replication board lock poisoned")
            .insert(health.target.clone(), health);
    }

    /// Every replica's newest measurement, by location.
    pub fn snapshot(&self) -> Vec<ReplicationHealth> {
        self.replicas
            .lock()
            .expect("replication board lock poisoned")
            .values()
            .cloned()
            .collect()
    }
}

/// Sees every report a [`Monitor`] makes, in order (an alerting webhook turns them into
/// breach, recovered and failure events).
pub trait HealthObserver: Send + Sync {
    /// Called once per report, with the job board it was made from, before the next report
    /// is made.
    fn observe(&self, report: &HealthReport, jobs: &BTreeMap<String, JobStatus>);
}

/// Assesses health on demand, for `/health`, `/metrics` and alerts.
pub struct Monitor {
    catalog: Arc<dyn Catalog>,
    clock: Arc<dyn Clock>,
    policies: Vec<SourcePolicy>,
    board: Arc<JobBoard>,
    replication: Arc<ReplicationBoard>,
    since: Option<DateTime<Utc>>,
    cache: tokio::sync::Mutex<Option<(Instant, Vec<BackupRecord>)>>,
    observers: Vec<Arc<dyn HealthObserver>>,
    failovers: Option<Arc<dyn FailoverJournal>>,
    failover_cache: tokio::sync::Mutex<Option<(Instant, Vec<FailoverRecord>)>>,
}

/// How long a listing of the failover journal is reused.
const FAILOVER_TTL: Duration = Duration::from_secs(30);

impl Monitor {
    /// A monitor of `policies`' sources, reading `catalog` and the scheduler's `board`.
    pub fn new(
        catalog: Arc<dyn Catalog>,
        clock: Arc<dyn Clock>,
        policies: Vec<SourcePolicy>,
        board: Arc<JobBoard>,
    ) -> Self {
        Monitor {
            catalog,
            clock,
            policies,
            board,
            replication: Arc::default(),
            since: None,
            cache: Default::default(),
            observers: Vec::new(),
            failovers: None,
            failover_cache: Default::default(),
        }
    }

    /// Publishes the failovers (and failover drills) journaled in `journal` (the region's
    /// repository): per region, `resilience_failover_last_timestamp_seconds`,
    /// `resilience_failover_rto_seconds`, `resilience_failover_rpo_seconds` and
    /// `resilience_failovers_total`; `resilience_failover_drill_last_timestamp_seconds`,
    /// `resilience_failover_drill_ok`, `…_rto_seconds` and `…_rpo_seconds` for drills.
    pub fn with_failovers(mut self, journal: Arc<dyn FailoverJournal>) -> Self {
        self.failovers = Some(journal);
        self
    }

    async fn publish_failovers(&self) {
        let Some(journal) = &self.failovers else {
            return;
        };
        let mut cache = self.failover_cache.lock().await;
        if cache
            .as_ref()
            .is_none_or(|(t, _)| t.elapsed() >= FAILOVER_TTL)
        {
            match journal.list().await {
                Ok(records) => *cache = Some((Instant::now(), records)),
                Err(e) => tracing::warn!(error = %e, "the failover journal cannot be read"),
            }
        }
        let Some((_, records)) = cache.as_ref() else {
            return;
        };
        let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
        for r in records.iter().filter(|r| !r.drill) {
            *totals.entry(r.region.as_str()).or_default() += 1;
        }
        for (region, n) in totals {
            metrics::gauge!("resilience_failovers_total", "region" => region.to_owned())
                .set(n as f64);
        }
        // Oldest first: the newest of each region is set last. A drill counts whether it
        // passed or not; a failover once it finished.
        for r in records.iter().filter(|r| r.ok || r.drill) {
            let region = r.region.clone();
            let at = r.finished_at.unwrap_or(r.started_at).timestamp() as f64;
            let (last, rto, rpo) = if r.drill {
                (
                    "resilience_failover_drill_last_timestamp_seconds",
                    "resilience_failover_drill_rto_seconds",
                    "resilience_failover_drill_rpo_seconds",
                )
            } else {
                (
                    "resilience_failover_last_timestamp_seconds",
                    "resilience_failover_rto_seconds",
                    "resilience_failover_rpo_seconds",
                )
            };
            metrics::gauge!(last, "region" => region.clone()).set(at);
            if let Some(v) = r.rto_seconds {
                metrics::gauge!(rto, "region" => region.clone()).set(v);
            }
            if let Some(v) = r.rpo_seconds {
                metrics::gauge!(rpo, "region" => region.clone()).set(v);
            }
            if r.drill {
                metrics::gauge!("resilience_failover_drill_ok", "region" => region)
                    .set(f64::from(u8::from(r.ok)));
            }
        }
    }

    /// Reads the replicas' lag from `replication`.
    pub fn with_replication(mut self, replication: Arc<ReplicationBoard>) -> Self {
        self.replication = replication;
        self
    }

    /// When the service started (see [`HealthContext::since`]).
    pub fn since(mut self, started_at: DateTime<Utc>) -> Self {
        self.since = Some(started_at);
        self
    }

    /// Passes every report to `observer`, in the order they are made.
    pub fn with_observer(mut self, observer: Arc<dyn HealthObserver>) -> Self {
        self.observers.push(observer);
        self
    }

    /// The scheduler's board.
    pub fn board(&self) -> &JobBoard {
        &self.board
    }

    /// The report now; a catalog that cannot be read is itself a breach. Reports are made one
    /// at a time, and each is passed to the observers before the next is made.
    pub async fn report(&self) -> HealthReport {
        let mut cache = self.cache.lock().await;
        let context = HealthContext {
            jobs: self.board.snapshot(),
            since: self.since,
            replication: self.replication.snapshot(),
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
            (None, Some((_, records))) => assess(&self.policies, records, &context, now),
            _ => {
                let mut report = assess(&self.policies, &[], &context, now);
                report.ok = false;
                let why = unreadable.map_or_else(|| "no listing".to_owned(), |e| e.to_string());
                report
                    .breaches
                    .insert(0, format!("the catalog cannot be read: {why}"));
                report
            }
        };
        for observer in &self.observers {
            observer.observe(&report, &context.jobs);
        }
        report
    }

    /// Makes a report and sets every gauge through the `metrics` facade: the report's
    /// ([`HealthReport::publish_metrics`]) and per job `resilience_job_running`,
    /// `resilience_job_last_duration_seconds` and `resilience_job_next_run_timestamp_seconds`.
    /// A service renders them with the recorder it installed (Prometheus text, say).
    pub async fn publish_metrics(&self) -> HealthReport {
        let report = self.report().await;
        report.publish_metrics();
        self.publish_failovers().await;
        for (job, status) in self.board.snapshot() {
            metrics::gauge!("resilience_job_running", "job" => job.clone())
                .set(f64::from(u8::from(status.running_since.is_some())));
            if let Some(d) = status.last_duration_seconds {
                metrics::gauge!("resilience_job_last_duration_seconds", "job" => job.clone())
                    .set(d);
            }
            if let Some(t) = status.next_run {
                metrics::gauge!("resilience_job_next_run_timestamp_seconds", "job" => job)
                    .set(t.timestamp() as f64);
            }
        }
        report
    }

    /// Makes a report and returns what `/health` serves: whether everything is healthy, and
    /// the report as JSON with the job board under `jobs`.
    pub async fn health_document(&self) -> (bool, serde_json::Value) {
        let report = self.report().await;
        let jobs = self.board.snapshot();
        let mut body = serde_json::to_value(&report).expect("the report serializes");
        body["jobs"] = serde_json::to_value(jobs).expect("the board serializes");
        (report.ok, body)
    }
}
