//! Retention: which backups to keep, move to the cold tier, or delete — as a pure function.
//!
//! A [`RetentionPolicy`] maps (catalog records, now) to a [`RetentionPlan`] in which every record
//! has an [`Action`] and the reasons that decided it. Policies do no I/O and read no clock, so a
//! service unit-tests its own rules against a synthetic catalog. [`plan`] runs a policy and then
//! enforces the safety rules that no configuration can override ([`safety`]). Applying a plan
//! (tier moves, deletion, garbage collection) is a separate step.

mod duration;
pub mod safety;
mod standard;

pub use duration::{DurationError, RetentionDuration};
pub use standard::{KeepRules, LabelRules, PolicyError, StandardPolicy};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::catalog::{BackupRecord, Tier};

/// What happens to one backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Stays where it is (in the hot tier, or wherever it is now if not tiered).
    Keep,
    /// Kept, in the cold tier.
    Cold,
    /// Removed.
    Delete,
}

/// The decision for one record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The backup's id.
    pub id: String,
    /// Its source id.
    pub source: String,
    /// What happens to it.
    pub action: Action,
    /// Why: every rule that kept it, or why it is deleted.
    pub reasons: Vec<String>,
}

/// A decision for every record, sorted by backup id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RetentionPlan {
    /// The decisions.
    pub decisions: Vec<Decision>,
}

impl RetentionPlan {
    /// The decision for a backup.
    pub fn get(&self, id: &str) -> Option<&Decision> {
        self.decisions
            .binary_search_by(|d| d.id.as_str().cmp(id))
            .ok()
            .map(|i| &self.decisions[i])
    }

    /// Ids with a given action.
    pub fn with_action(&self, action: Action) -> impl Iterator<Item = &Decision> {
        self.decisions.iter().filter(move |d| d.action == action)
    }
}

/// A retention policy: pure, deterministic, independent of the order of `records`.
pub trait RetentionPolicy: Send + Sync {
    /// Decides for every record. Callers use [`plan`], which adds the safety rules.
    fn decide(&self, records: &[BackupRecord], now: DateTime<Utc>) -> RetentionPlan;

    /// How far back point-in-time recovery is promised: WAL inside this window is never deleted.
    fn pitr_window(&self) -> Option<chrono::Duration> {
        None
    }
}

/// Runs `policy` and enforces the safety rules on its result.
pub fn plan(
    policy: &dyn RetentionPolicy,
    records: &[BackupRecord],
    now: DateTime<Utc>,
) -> RetentionPlan {
    let mut plan = policy.decide(records, now);
    safety::enforce(&mut plan, records, now, policy.pitr_window());
    plan.decisions.sort_by(|a, b| a.id.cmp(&b.id));
    plan
}

/// Applies a plan to records in memory, as executing it would: deleted records go, cold ones
/// change tier. For tests and dry runs (`plan(apply(plan(r)))` equals `plan(r)` on what is left).
pub fn apply_in_memory(records: &[BackupRecord], plan: &RetentionPlan) -> Vec<BackupRecord> {
    records
        .iter()
        .filter_map(|r| match plan.get(&r.id).map(|d| d.action) {
            Some(Action::Delete) => None,
            Some(Action::Cold) => Some(BackupRecord {
                tier: Tier::Cold,
                ..r.clone()
            }),
            _ => Some(r.clone()),
        })
        .collect()
}
