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

/// Watches health and posts alerts until `shutdown` is given.
pub async fn watch(url: String, monitor: Arc<Monitor>, shutdown: StopSignal) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client builds");
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
        for event in events {
            match client.post(&url).json(&event).send().await {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => tracing::warn!(status = %r.status(), "the alert webhook refused an alert"),
                Err(e) => tracing::warn!(error = %e, "cannot post to the alert webhook"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(PERIOD) => {}
            _ = shutdown.stopped() => return,
        }
    }
}
