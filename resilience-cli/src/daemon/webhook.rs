//! Alerts: a JSON POST to the configured webhook when a job fails, when a source breaches its
//! RPO (or its verification or drill fails), and when it recovers.
//!
//! The events come from the library's [`AlertTracker`], which the [`Monitor`] passes every
//! report it makes; this module posts them, as they are or (`webhook_format = "alertmanager"`)
//! as Alertmanager alerts.

use std::sync::Arc;
use std::time::Duration;

use resilience_core::health::alerts::alertmanager_alerts;
use resilience_core::health::{AlertTracker, Monitor};
use resilience_core::time::stop::StopSignal;

use crate::config::WebhookFormat;

/// How often health is assessed for alerts, and undelivered alerts are retried.
const PERIOD: Duration = Duration::from_secs(1);

/// Assesses health once a period (so alerts come even when nobody asks `/health`) and posts
/// queued alerts, oldest first, until `shutdown` is given. An alert the receiver does not
/// accept stays queued and is retried the next period, so none is lost while it is down (up to
/// [`resilience_core::health::alerts::MAX_PENDING`]; older ones are dropped with a warning).
pub async fn watch(
    url: String,
    format: WebhookFormat,
    monitor: Arc<Monitor>,
    tracker: Arc<AlertTracker>,
    shutdown: StopSignal,
) {
    // No idle connections: a receiver that closes after each alert must not make the next
    // one fail on a stale connection.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()
        .expect("an HTTP client builds");
    loop {
        // The monitor passes this report to the tracker, as it does every report.
        monitor.report().await;
        while let Some(event) = tracker.front() {
            let body = match format {
                WebhookFormat::Events => event,
                WebhookFormat::Alertmanager => alertmanager_alerts(&event),
            };
            match client.post(&url).json(&body).send().await {
                Ok(r) if r.status().is_success() => tracker.delivered(),
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
