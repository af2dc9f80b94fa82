//! The safety rules that no policy, custom or standard, can override:
//!
//! 1. The newest succeeded backup of each source is never deleted.
//! 2. A backup under legal hold is never deleted.
//! 3. A running backup is never deleted (it is not finished, and it is not "the kept one").
//! 4. WAL that a kept base backup or the promised point-in-time-recovery window needs is never
//!    deleted: a WAL record of a source is kept when it ends at or after the start of the
//!    oldest kept base backup of that source, or inside the PITR window.
//! 5. A record the policy gave no decision for is kept.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};

use super::{Action, Decision, RetentionPlan};
use crate::catalog::{BackupKind, BackupRecord, BackupStatus};

fn keep(decision: &mut Decision, reason: String) {
    if decision.action == Action::Delete {
        decision.action = Action::Keep;
        decision.reasons.clear();
    }
    decision.reasons.push(reason);
}

/// Rewrites `plan` so the safety rules hold.
pub fn enforce(
    plan: &mut RetentionPlan,
    records: &[BackupRecord],
    now: DateTime<Utc>,
    pitr: Option<chrono::Duration>,
) {
    let known: HashSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
    plan.decisions.retain(|d| known.contains(d.id.as_str()));
    let decided: HashSet<String> = plan.decisions.iter().map(|d| d.id.clone()).collect();
    for r in records.iter().filter(|r| !decided.contains(&r.id)) {
        plan.decisions.push(Decision {
            id: r.id.clone(),
            source: r.source.id.clone(),
            action: Action::Keep,
            reasons: vec!["safety: the policy gave no decision".into()],
        });
    }
    let by_id: BTreeMap<&str, &BackupRecord> = records.iter().map(|r| (r.id.as_str(), r)).collect();

    let mut newest: BTreeMap<&str, &BackupRecord> = BTreeMap::new();
    for r in records
        .iter()
        .filter(|r| r.status == BackupStatus::Succeeded && r.kind != BackupKind::Wal)
    {
        let slot = newest.entry(r.source.id.as_str()).or_insert(r);
        if (r.started_at, &r.id) > (slot.started_at, &slot.id) {
            *slot = r;
        }
    }
    let newest_ids: HashSet<&str> = newest.values().map(|r| r.id.as_str()).collect();

    for d in plan.decisions.iter_mut() {
        let r = by_id[d.id.as_str()];
        if newest_ids.contains(d.id.as_str()) && d.action == Action::Delete {
            keep(d, "safety: newest succeeded backup of its source".into());
        }
        if r.legal_hold && d.action == Action::Delete {
            keep(d, "safety: legal hold".into());
        }
        if r.status == BackupStatus::Running && d.action == Action::Delete {
            keep(d, "safety: still running".into());
        }
    }

    // WAL: find the oldest kept base backup per source, after the rules above.
    let mut oldest_kept_base: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
    for d in plan.decisions.iter().filter(|d| d.action != Action::Delete) {
        let r = by_id[d.id.as_str()];
        if r.kind != BackupKind::Wal && r.status == BackupStatus::Succeeded {
            let slot = oldest_kept_base
                .entry(r.source.id.clone())
                .or_insert(r.started_at);
            *slot = (*slot).min(r.started_at);
        }
    }
    for d in plan.decisions.iter_mut() {
        let r = by_id[d.id.as_str()];
        if r.kind != BackupKind::Wal
            || d.action != Action::Delete
            || r.status != BackupStatus::Succeeded
        {
            continue;
        }
        let end = r.finished_at.unwrap_or(r.started_at);
        if let Some(base) = oldest_kept_base.get(&r.source.id) {
            if end >= *base {
                keep(
                    d,
                    format!("safety: WAL needed by a kept base backup (from {base})"),
                );
                continue;
            }
        }
        if let Some(window) = pitr {
            if end >= now - window {
                keep(
                    d,
                    format!(
                        "safety: WAL inside the point-in-time-recovery window ({}s)",
                        window.num_seconds()
                    ),
                );
            }
        }
    }
}
