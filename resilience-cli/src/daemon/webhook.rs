//! Alerts: a JSON POST to the configured webhook when a job fails, when a source breaches its
//! RPO (or its verification or drill fails), and when it recovers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use resilience_core::stop::StopSignal;
use serde_json::json;

use super::monitor::Monitor;

/// How often health is assessed for alerts.
const PERIOD: Duration = Duration::from_secs(1);

/// Alerts kept for a receiver that is down.
const MAX_PENDING: usize = 1000;

/// Watches health and posts alerts until `shutdown` is given.
pub async fn watch(url: String, monitor: Arc<Monitor>, shutdown: StopSignal) {
    // No idle connections: a receiver that closes after each alert must not make the next
    // one fail on a stale connection.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()
        .expect("an HTTP client builds");
    // Alerts not yet accepted, oldest first: retried each period, so none is lost while the
    // receiver is down (up to MAX_PENDING; older ones are dropped with a warning).
    let mut pending: std::collections::VecDeque<serde_json::Value> = Default::default();
    let mut healthy: BTreeMap<String, bool> = BTreeMap::new();
    let mut failures_seen: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
    loop {
        let report = monitor.report().await;
        let mut events = Vec::new();
        for (job, status) in monitor.board().snapshot() {
            if let (Some(at), Some(error)) = (status.last_failure, status.last_error) {
                if failures_seen.insert(job.clone(), at) != Some(at) {
                    events.push(json!({"event": "failure", "job": job, "at": at, "detail": error}));
                }
            }
        }
        for s in &report.sources {
            let was = healthy.insert(s.source.clone(), s.ok);
            match (was, s.ok) {
                (Some(true) | None, false) => events.push(json!({
                    "event": "breach", "source": s.source, "at": report.at,
                    "detail": s.breaches.join("; "),
                })),
                (Some(false), true) => events.push(json!({
                    "event": "recovered", "source": s.source, "at": report.at,
                    "detail": format!("within its RPO; newest backup {}", s.last_snapshot.as_deref().unwrap_or("-")),
                })),
                _ => {}
            }
        }
        pending.extend(events);
        while pending.len() > MAX_PENDING {
            pending.pop_front();
            tracing::warn!(
                "the alert webhook is behind by {MAX_PENDING} alerts; dropped the oldest"
            );
        }
        while let Some(event) = pending.front() {
            match client.post(&url).json(event).send().await {
                Ok(r) if r.status().is_success() => {
                    pending.pop_front();
                }
                Ok(r) => {
                    tracing::warn!(status = %r.status(), "the alert webhook refused an alert; will retry");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot post to the alert webhook; will retry");
                    break;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(PERIOD) => {}
            _ = shutdown.stopped() => return,
        }
    }
}
