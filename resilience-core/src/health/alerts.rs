//! Alerts from health: successive reports turned into events (a job failed, a source
//! breached its RPO or failed its verification or drill, a source recovered), queued until a
//! service delivers them (the daemon posts them to its webhook).
//!
//! Alerts follow every health assessment, not a sample of them: an [`AlertTracker`] is a
//! [`HealthObserver`] that the [`super::Monitor`] calls for each report it makes, whether for
//! `/health`, `/metrics` or the delivery loop's own look. So whenever `/health` has answered 503
//! naming a source, a `breach` event for it is queued, and when a later answer no longer names
//! it, a `recovered` event is queued, however short either state lasted.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::{HealthObserver, HealthReport};
use crate::time::scheduler::JobStatus;

/// Events kept for a receiver that is down; older ones are dropped with a warning.
pub const MAX_PENDING: usize = 1000;

/// Turns successive health assessments into alert events (`breach`, `recovered`, `failure`),
/// each a JSON object with `event`, `source` or `job`, `at` and `detail`.
#[derive(Default)]
pub struct AlertTracker {
    state: Mutex<TrackerState>,
}

#[derive(Default)]
struct TrackerState {
    healthy: BTreeMap<String, bool>,
    failures_seen: BTreeMap<String, DateTime<Utc>>,
    queued: VecDeque<Value>,
}

impl HealthObserver for AlertTracker {
    /// Queues the events that `report` (made with the board's `jobs`) implies, compared with the
    /// report observed before it. Reports must be observed in the order they were made.
    fn observe(&self, report: &HealthReport, jobs: &BTreeMap<String, JobStatus>) {
        let mut state = self.state.lock().expect("alert tracker lock poisoned");
        let TrackerState {
            healthy,
            failures_seen,
            queued,
        } = &mut *state;
        for (job, status) in jobs {
            if let (Some(at), Some(error)) = (status.last_failure, &status.last_error) {
                if failures_seen.insert(job.clone(), at) != Some(at) {
                    queued.push_back(
                        json!({"event": "failure", "job": job, "at": at, "detail": error}),
                    );
                }
            }
        }
        for s in &report.sources {
            match (healthy.insert(s.source.clone(), s.ok), s.ok) {
                (Some(true) | None, false) => queued.push_back(json!({
                    "event": "breach", "source": s.source, "at": report.at,
                    "detail": s.breaches.join("; "),
                })),
                (Some(false), true) => queued.push_back(json!({
                    "event": "recovered", "source": s.source, "at": report.at,
                    "detail": format!("within its RPO; newest backup {}", s.last_snapshot.as_deref().unwrap_or("-")),
                })),
                _ => {}
            }
        }
        while queued.len() > MAX_PENDING {
            queued.pop_front();
            tracing::warn!(
                "the alert webhook is behind by {MAX_PENDING} alerts; dropped the oldest"
            );
        }
    }
}

impl AlertTracker {
    /// The oldest queued event, left queued until [`AlertTracker::delivered`] is called.
    pub fn front(&self) -> Option<Value> {
        let state = self.state.lock().expect("alert tracker lock poisoned");
        state.queued.front().cloned()
    }

    /// Removes the oldest queued event once the receiver accepted it.
    pub fn delivered(&self) {
        let mut state = self.state.lock().expect("alert tracker lock poisoned");
        state.queued.pop_front();
    }
}

/// An event of an [`AlertTracker`] as Alertmanager takes alerts (`POST /api/v2/alerts`, a
/// JSON array): `breach` and `recovered` become `ResilienceSourceBreach` for the source, firing
/// from the breach and resolved (`endsAt`) at the recovery; `failure` becomes
/// `ResilienceJobFailed` for the job, firing from the failure (Alertmanager resolves it after
/// its `resolve_timeout`). The event's text is the `description` annotation.
pub fn alertmanager_alerts(event: &Value) -> Value {
    let at = event["at"].clone();
    let detail = event["detail"].clone();
    let (alertname, key, severity) = match event["event"].as_str() {
        Some("failure") => ("ResilienceJobFailed", "job", "warning"),
        _ => ("ResilienceSourceBreach", "source", "critical"),
    };
    let subject = event[key].as_str().unwrap_or_default();
    let mut alert = json!({
        "labels": {"alertname": alertname, key: subject, "severity": severity},
        "annotations": {
            "summary": match alertname {
                "ResilienceJobFailed" => format!("{subject}: the job failed"),
                _ => format!("{subject}: breaches its RPO, verification or drill"),
            },
            "description": detail,
        },
        "startsAt": at,
    });
    if event["event"] == "recovered" {
        alert["endsAt"] = at;
        alert["annotations"]["summary"] = json!(format!("{subject}: recovered"));
    }
    json!([alert])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::SourceHealth;

    fn report(ok: bool) -> HealthReport {
        HealthReport {
            ok,
            at: Utc::now(),
            breaches: Vec::new(),
            sources: vec![SourceHealth {
                source: "cache".into(),
                ok,
                rpo_seconds: 4,
                last_snapshot: None,
                last_success: None,
                backup_age_seconds: None,
                last_duration_seconds: None,
                logical_bytes: 0,
                new_bytes: 0,
                stored_bytes: 0,
                last_failure: None,
                last_error: None,
                verification: None,
                drill: None,
                breaches: Vec::new(),
            }],
            replication: Vec::new(),
        }
    }

    fn events(t: &AlertTracker) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(e) = t.front() {
            out.push(e["event"].as_str().unwrap().to_owned());
            t.delivered();
        }
        out
    }

    #[test]
    fn a_breach_seen_once_is_alerted_and_its_end_too() {
        let t = AlertTracker::default();
        let jobs = BTreeMap::new();
        t.observe(&report(true), &jobs);
        t.observe(&report(false), &jobs);
        t.observe(&report(true), &jobs);
        t.observe(&report(true), &jobs);
        assert_eq!(events(&t), ["breach", "recovered"]);
        t.observe(&report(false), &jobs);
        t.observe(&report(false), &jobs);
        assert_eq!(events(&t), ["breach"]);
    }

    #[test]
    fn undelivered_alerts_stay_queued_in_order() {
        let t = AlertTracker::default();
        let jobs = BTreeMap::new();
        t.observe(&report(false), &jobs);
        t.observe(&report(true), &jobs);
        assert_eq!(t.front().unwrap()["event"], "breach");
        assert_eq!(
            t.front().unwrap()["event"],
            "breach",
            "not delivered, still first"
        );
        t.delivered();
        assert_eq!(t.front().unwrap()["event"], "recovered");
    }

    #[test]
    fn events_take_alertmanagers_shape() {
        let at = "2026-12-03T10:00:00Z";
        let breach =
            json!({"event": "breach", "source": "cache", "at": at, "detail": "RPO 4s breached"});
        let firing = alertmanager_alerts(&breach);
        assert_eq!(firing[0]["labels"]["alertname"], "ResilienceSourceBreach");
        assert_eq!(firing[0]["labels"]["source"], "cache");
        assert_eq!(firing[0]["startsAt"], at);
        assert_eq!(firing[0]["annotations"]["description"], "RPO 4s breached");
        assert!(firing[0].get("endsAt").is_none());
        let recovered =
            json!({"event": "recovered", "source": "cache", "at": at, "detail": "within"});
        assert_eq!(alertmanager_alerts(&recovered)[0]["endsAt"], at);
        let failure = json!({"event": "failure", "job": "verify", "at": at, "detail": "x"});
        let job = alertmanager_alerts(&failure);
        assert_eq!(job[0]["labels"]["alertname"], "ResilienceJobFailed");
        assert_eq!(job[0]["labels"]["job"], "verify");
    }
}
