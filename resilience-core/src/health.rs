//! The health report: for each source, how old its newest backup is against its recovery point
//! objective (RPO), when it last failed, whether its last verification and its last drill
//! passed; and how far each replica lags. A pure function of the catalog, the scheduler's job
//! board and the time ([`assess`]), so services serve it on their own endpoints and tests build
//! it without I/O; [`report`] reads the catalog for them, and
//! [`HealthReport::publish_metrics`] sets the Prometheus gauges listed in the README.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::catalog::{BackupRecord, BackupStatus, Catalog, CatalogQuery, Verification};
use crate::drill::{DrillReport, DRILL_KIND};
use crate::error::Result;
use crate::time::scheduler::JobStatus;

pub mod alerts;
mod monitor;

pub use alerts::AlertTracker;
pub use monitor::{HealthObserver, Monitor, ReplicationBoard};

/// What a source promises.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourcePolicy {
    /// The source id (as recorded in the catalog).
    pub source: String,
    /// The oldest its newest backup may be.
    pub rpo: Duration,
}

/// How far a replica lags, as the last replication run measured it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReplicationHealth {
    /// The replica's location.
    pub target: String,
    /// When it was measured.
    pub at: DateTime<Utc>,
    /// Snapshots not yet on the replica.
    pub lag_snapshots: u64,
    /// Bytes not yet on the replica.
    pub lag_bytes: u64,
    /// Age of the oldest snapshot not yet on the replica (0 when caught up); for a follower,
    /// at least the time since [`caught_up_to`](Self::caught_up_to), as of the assessment.
    pub lag_seconds: f64,
    /// A follower's ([`crate::ops::follow`]) measure: the replica holds every object the source
    /// held at this moment. Lag is then counted from it whenever health is assessed, so a
    /// follower that stalls shows a growing lag, not its last figure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caught_up_to: Option<DateTime<Utc>>,
}

impl ReplicationHealth {
    /// This measurement as of `now`: a follower's lag counted from its `caught_up_to`.
    pub fn as_of(&self, now: DateTime<Utc>) -> ReplicationHealth {
        let mut at_now = self.clone();
        if let Some(t) = self.caught_up_to {
            let behind = (now - t).num_milliseconds().max(0) as f64 / 1000.0;
            at_now.lag_seconds = at_now.lag_seconds.max(behind);
        }
        at_now
    }
}

/// The last drill of a source, in short.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DrillHealth {
    /// When it ran.
    pub at: DateTime<Utc>,
    /// The snapshot restored.
    pub snapshot: String,
    /// Whether every check passed.
    pub ok: bool,
    /// Recovery time it measured.
    pub rto_seconds: f64,
    /// Recovery point it measured.
    pub rpo_seconds: f64,
    /// Its failed checks.
    pub failures: Vec<String>,
}

/// One source's health.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SourceHealth {
    /// The source id.
    pub source: String,
    /// Within its RPO, and its last verification and drill (if any) passed.
    pub ok: bool,
    /// Its RPO.
    pub rpo_seconds: i64,
    /// The newest succeeded backup.
    pub last_snapshot: Option<String>,
    /// When that backup finished.
    pub last_success: Option<DateTime<Utc>>,
    /// Seconds since then.
    pub backup_age_seconds: Option<f64>,
    /// Its duration.
    pub last_duration_seconds: Option<f64>,
    /// Its logical size.
    pub logical_bytes: u64,
    /// Bytes it added to the repository that were not there before.
    pub new_bytes: u64,
    /// Bytes it stored.
    pub stored_bytes: u64,
    /// The newest failure (a failed backup record, or a failed run of the source's job).
    pub last_failure: Option<DateTime<Utc>>,
    /// What failed then.
    pub last_error: Option<String>,
    /// The newest verification of any of its backups (drills apart).
    pub verification: Option<Verification>,
    /// The newest drill of any of its backups.
    pub drill: Option<DrillHealth>,
    /// What is wrong, one line each.
    pub breaches: Vec<String>,
}

/// The health of everything a service backs up.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HealthReport {
    /// Every source is healthy.
    pub ok: bool,
    /// When it was assessed.
    pub at: DateTime<Utc>,
    /// Every breach, prefixed with its source.
    pub breaches: Vec<String>,
    /// Per source, in the order of the policies.
    pub sources: Vec<SourceHealth>,
    /// Per replica.
    pub replication: Vec<ReplicationHealth>,
}

/// What the assessment reads besides the catalog.
#[derive(Clone, Debug, Default)]
pub struct HealthContext {
    /// The scheduler's jobs, by name; a source's backup job has the source's name.
    pub jobs: BTreeMap<String, JobStatus>,
    /// When the service started: a source with no backup yet breaches its RPO only once that
    /// long has passed since then (so a new service is not unhealthy at birth).
    pub since: Option<DateTime<Utc>>,
    /// The replicas' lag.
    pub replication: Vec<ReplicationHealth>,
}

/// Assesses every source's health from its catalog records at `now`.
pub fn assess(
    policies: &[SourcePolicy],
    records: &[BackupRecord],
    context: &HealthContext,
    now: DateTime<Utc>,
) -> HealthReport {
    let sources: Vec<SourceHealth> = policies
        .iter()
        .map(|p| assess_source(p, records, context, now))
        .collect();
    let breaches: Vec<String> = sources
        .iter()
        .flat_map(|s| s.breaches.iter().map(move |b| format!("{}: {b}", s.source)))
        .collect();
    HealthReport {
        ok: breaches.is_empty(),
        at: now,
        breaches,
        sources,
        replication: context.replication.iter().map(|r| r.as_of(now)).collect(),
    }
}

fn assess_source(
    policy: &SourcePolicy,
    records: &[BackupRecord],
    context: &HealthContext,
    now: DateTime<Utc>,
) -> SourceHealth {
    let mine: Vec<&BackupRecord> = records
        .iter()
        .filter(|r| r.source.id == policy.source)
        .collect();
    let last_ok = mine
        .iter()
        .filter(|r| r.status == BackupStatus::Succeeded && r.finished_at.is_some())
        .max_by_key(|r| r.finished_at);
    let mut last_failure: Option<(DateTime<Utc>, String)> = mine
        .iter()
        .filter(|r| r.status == BackupStatus::Failed)
        .map(|r| {
            let at = r.finished_at.unwrap_or(r.updated_at);
            (at, r.error.clone().unwrap_or_else(|| "failed".into()))
        })
        .max_by_key(|(at, _)| *at);
    if let Some(job) = context.jobs.get(&policy.source) {
        if let (Some(at), Some(e)) = (job.last_failure, &job.last_error) {
            if last_failure.as_ref().is_none_or(|(t, _)| at > *t) {
                last_failure = Some((at, e.clone()));
            }
        }
    }
    let verifications = mine.iter().flat_map(|r| r.verifications.iter());
    let verification = verifications
        .clone()
        .filter(|v| v.kind != DRILL_KIND)
        .max_by_key(|v| v.at)
        .cloned();
    let drill = verifications
        .filter(|v| v.kind == DRILL_KIND)
        .max_by_key(|v| v.at)
        .map(|v| match DrillReport::from_verification(v) {
            Some(d) => DrillHealth {
                at: v.at,
                failures: d.failures(),
                snapshot: d.snapshot,
                ok: d.ok,
                rto_seconds: d.rto_seconds,
                rpo_seconds: d.rpo_seconds,
            },
            None => DrillHealth {
                at: v.at,
                snapshot: String::new(),
                ok: v.ok,
                rto_seconds: 0.0,
                rpo_seconds: 0.0,
                failures: vec![format!("unreadable drill record: {}", v.detail)],
            },
        });

    let age = last_ok
        .and_then(|r| r.finished_at)
        .map(|t| seconds(now - t));
    let rpo_seconds = policy.rpo.num_seconds();
    let mut breaches = Vec::new();
    match age {
        Some(a) if a > rpo_seconds as f64 => breaches.push(format!(
            "newest backup is {} old, past its RPO of {}",
            human(a),
            human(rpo_seconds as f64)
        )),
        Some(_) => {}
        None => {
            let waited = context.since.map(|s| seconds(now - s));
            if waited.is_none_or(|w| w > rpo_seconds as f64) {
                breaches.push(format!(
                    "no successful backup within its RPO of {}",
                    human(rpo_seconds as f64)
                ));
            }
        }
    }
    if !breaches.is_empty() {
        if let Some((at, e)) = &last_failure {
            breaches[0].push_str(&format!("; last failure at {at}: {e}"));
        }
    }
    if let Some(v) = verification.as_ref().filter(|v| !v.ok) {
        breaches.push(format!(
            "last verification ({}, {}) failed: {}",
            v.kind, v.at, v.detail
        ));
    }
    if let Some(d) = drill.as_ref().filter(|d| !d.ok) {
        breaches.push(format!(
            "last drill ({}) failed: {}",
            d.at,
            d.failures.join("; ")
        ));
    }
    SourceHealth {
        source: policy.source.clone(),
        ok: breaches.is_empty(),
        rpo_seconds,
        last_snapshot: last_ok.map(|r| r.id.clone()),
        last_success: last_ok.and_then(|r| r.finished_at),
        backup_age_seconds: age,
        last_duration_seconds: last_ok
            .and_then(|r| r.finished_at.map(|f| seconds(f - r.started_at))),
        logical_bytes: last_ok.map_or(0, |r| r.logical_bytes),
        new_bytes: last_ok.map_or(0, |r| r.new_bytes),
        stored_bytes: last_ok.map_or(0, |r| r.stored_bytes),
        last_failure: last_failure.as_ref().map(|(t, _)| *t),
        last_error: last_failure.map(|(_, e)| e),
        verification,
        drill,
        breaches,
    }
}

fn seconds(d: Duration) -> f64 {
    d.num_milliseconds() as f64 / 1000.0
}

/// `93s`, `5m 3s`, `2h 0m`, `3d 4h`.
fn human(secs: f64) -> String {
    let s = secs.max(0.0).round() as i64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

/// Reads the catalog and assesses at the catalog's clock time `now`.
pub async fn report(
    catalog: &dyn Catalog,
    policies: &[SourcePolicy],
    context: &HealthContext,
    now: DateTime<Utc>,
) -> Result<HealthReport> {
    let records = catalog.list(&CatalogQuery::default()).await?;
    Ok(assess(policies, &records, context, now))
}

impl HealthReport {
    /// Sets the gauges of this report through the `metrics` facade (whatever recorder the
    /// service installed): per source `resilience_backup_*`, `resilience_verification_*`,
    /// `resilience_drill_*`, `resilience_source_healthy`; per replica
    /// `resilience_replication_lag_*`; and `resilience_healthy`.
    pub fn publish_metrics(&self) {
        use metrics::gauge;
        for s in &self.sources {
            let src = s.source.clone();
            let ts = |t: DateTime<Utc>| t.timestamp_millis() as f64 / 1000.0;
            if let Some(t) = s.last_success {
                gauge!("resilience_backup_last_success_timestamp_seconds", "source" => src.clone())
                    .set(ts(t));
            }
            if let Some(t) = s.last_failure {
                gauge!("resilience_backup_last_failure_timestamp_seconds", "source" => src.clone())
                    .set(ts(t));
            }
            if let Some(a) = s.backup_age_seconds {
                gauge!("resilience_backup_age_seconds", "source" => src.clone()).set(a);
            }
            if let Some(d) = s.last_duration_seconds {
                gauge!("resilience_backup_duration_seconds", "source" => src.clone()).set(d);
            }
            gauge!("resilience_backup_rpo_seconds", "source" => src.clone())
                .set(s.rpo_seconds as f64);
            gauge!("resilience_backup_logical_bytes", "source" => src.clone())
                .set(s.logical_bytes as f64);
            gauge!("resilience_backup_new_bytes", "source" => src.clone()).set(s.new_bytes as f64);
            gauge!("resilience_backup_stored_bytes", "source" => src.clone())
                .set(s.stored_bytes as f64);
            if let Some(v) = &s.verification {
                gauge!("resilience_verification_last_timestamp_seconds", "source" => src.clone())
                    .set(ts(v.at));
                gauge!("resilience_verification_ok", "source" => src.clone())
                    .set(f64::from(u8::from(v.ok)));
            }
            if let Some(d) = &s.drill {
                gauge!("resilience_drill_last_timestamp_seconds", "source" => src.clone())
                    .set(ts(d.at));
                gauge!("resilience_drill_ok", "source" => src.clone())
                    .set(f64::from(u8::from(d.ok)));
                gauge!("resilience_drill_rto_seconds", "source" => src.clone()).set(d.rto_seconds);
                gauge!("resilience_drill_rpo_seconds", "source" => src.clone()).set(d.rpo_seconds);
            }
            gauge!("resilience_source_healthy", "source" => src).set(f64::from(u8::from(s.ok)));
        }
        for r in &self.replication {
            let t = r.target.clone();
            gauge!("resilience_replication_lag_snapshots", "target" => t.clone())
                .set(r.lag_snapshots as f64);
            gauge!("resilience_replication_lag_bytes", "target" => t.clone())
                .set(r.lag_bytes as f64);
            gauge!("resilience_replication_lag_seconds", "target" => t).set(r.lag_seconds);
        }
        gauge!("resilience_healthy").set(f64::from(u8::from(self.ok)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drill::DrillCheck;
    use crate::testing::record_at;

    #[test]
    fn a_followers_lag_grows_from_the_moment_it_last_caught_up() {
        let measured = ReplicationHealth {
            target: "s3://b".into(),
            at: utc("2026-12-03T10:00:00Z"),
            lag_snapshots: 0,
            lag_bytes: 0,
            lag_seconds: 0.0,
            caught_up_to: Some(utc("2026-12-03T09:59:58Z")),
        };
        assert_eq!(
            measured.as_of(utc("2026-12-03T10:00:30Z")).lag_seconds,
            32.0
        );
        let once = ReplicationHealth {
            caught_up_to: None,
            lag_seconds: 7.0,
            ..measured
        };
        assert_eq!(once.as_of(utc("2026-12-03T11:00:00Z")).lag_seconds, 7.0);
    }

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn policy(source: &str, hours: i64) -> SourcePolicy {
        SourcePolicy {
            source: source.into(),
            rpo: Duration::hours(hours),
        }
    }

    fn done(id: &str, source: &str, at: &str, status: BackupStatus) -> BackupRecord {
        let mut r = record_at(id, source, utc(at) - Duration::minutes(5));
        r.status = status;
        r.finished_at = Some(utc(at));
        if status == BackupStatus::Failed {
            r.error = Some("connection refused (127.0.0.1:5432)".into());
        }
        r
    }

    #[test]
    fn a_source_within_its_rpo_is_healthy_and_one_past_it_names_the_breach() {
        let records = vec![
            done(
                "a1",
                "docs",
                "2026-01-01T10:00:00Z",
                BackupStatus::Succeeded,
            ),
            done("b1", "pg", "2026-01-01T08:00:00Z", BackupStatus::Succeeded),
            done("b2", "pg", "2026-01-01T10:30:00Z", BackupStatus::Failed),
        ];
        let now = utc("2026-01-01T10:45:00Z");
        let r = assess(
            &[policy("docs", 1), policy("pg", 2)],
            &records,
            &HealthContext::default(),
            now,
        );
        assert!(!r.ok);
        assert!(r.sources[0].ok);
        assert_eq!(r.sources[0].backup_age_seconds, Some(2700.0));
        let pg = &r.sources[1];
        assert!(!pg.ok);
        assert_eq!(pg.last_snapshot.as_deref(), Some("b1"));
        assert_eq!(pg.last_failure, Some(utc("2026-01-01T10:30:00Z")));
        assert_eq!(r.breaches.len(), 1);
        let b = &r.breaches[0];
        assert!(
            b.starts_with("pg: newest backup is 2h 45m old, past its RPO of 2h 0m"),
            "{b}"
        );
        assert!(b.contains("connection refused"), "{b}");
    }

    #[test]
    fn a_new_service_is_not_unhealthy_until_its_rpo_has_passed() {
        let ctx = HealthContext {
            since: Some(utc("2026-01-01T10:00:00Z")),
            ..Default::default()
        };
        let p = [policy("docs", 1)];
        assert!(assess(&p, &[], &ctx, utc("2026-01-01T10:59:00Z")).ok);
        let late = assess(&p, &[], &ctx, utc("2026-01-01T11:01:00Z"));
        assert_eq!(
            late.breaches,
            vec!["docs: no successful backup within its RPO of 1h 0m"]
        );
        assert!(
            !assess(
                &p,
                &[],
                &HealthContext::default(),
                utc("2026-01-01T10:00:00Z")
            )
            .ok
        );
    }

    #[test]
    fn a_failed_job_run_counts_as_the_last_failure() {
        let records = vec![done(
            "a1",
            "docs",
            "2026-01-01T10:00:00Z",
            BackupStatus::Succeeded,
        )];
        let mut ctx = HealthContext::default();
        ctx.jobs.insert(
            "docs".into(),
            JobStatus {
                last_failure: Some(utc("2026-01-01T12:00:00Z")),
                last_error: Some("repository unreachable".into()),
                ..Default::default()
            },
        );
        let r = assess(
            &[policy("docs", 1)],
            &records,
            &ctx,
            utc("2026-01-01T12:00:01Z"),
        );
        assert_eq!(
            r.sources[0].last_error.as_deref(),
            Some("repository unreachable")
        );
        assert!(
            r.breaches[0].contains("repository unreachable"),
            "{:?}",
            r.breaches
        );
    }

    #[test]
    fn the_newest_verification_and_drill_decide() {
        let mut a1 = done(
            "a1",
            "docs",
            "2026-01-01T10:00:00Z",
            BackupStatus::Succeeded,
        );
        a1.verifications.push(Verification {
            at: utc("2026-01-01T10:10:00Z"),
            kind: "full".into(),
            ok: false,
            detail: "packs/ab/cd: checksum mismatch".into(),
        });
        let mut a2 = done(
            "a2",
            "docs",
            "2026-01-01T10:20:00Z",
            BackupStatus::Succeeded,
        );
        let drill = DrillReport::new(
            "docs",
            "a2",
            utc("2026-01-01T10:25:00Z"),
            12.5,
            300.0,
            vec![DrillCheck::pass("checksums", "3 files")],
        );
        a2.verifications
            .push(drill.to_verification(utc("2026-01-01T10:26:00Z")));
        let now = utc("2026-01-01T10:30:00Z");
        let r = assess(
            &[policy("docs", 1)],
            &[a1.clone(), a2.clone()],
            &Default::default(),
            now,
        );
        assert_eq!(r.breaches.len(), 1, "{:?}", r.breaches);
        assert!(r.breaches[0].contains("checksum mismatch"));
        assert_eq!(r.sources[0].drill.as_ref().unwrap().rto_seconds, 12.5);
        // A later passing verification clears the breach.
        a2.verifications.push(Verification {
            at: utc("2026-01-01T10:28:00Z"),
            kind: "quick".into(),
            ok: true,
            detail: "sound".into(),
        });
        assert!(assess(&[policy("docs", 1)], &[a1, a2], &Default::default(), now).ok);
    }
}
