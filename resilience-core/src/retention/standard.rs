//! The standard policy: keep-last, hourly/daily/weekly/monthly/yearly buckets in an explicit time
//! zone, keep-within, hot and cold tiers, legal holds — per source, with overrides per source and
//! per label.
//!
//! Buckets are computed in the policy's time zone (UTC unless set; IANA names such as
//! `Europe/Berlin`). Weeks are ISO weeks. For each bucket rule with count N, records are walked
//! newest first and the newest record of each of the N most recent buckets that have a succeeded
//! backup is kept, so `keep-daily 7` keeps exactly min(7, days with a backup) backups for that
//! rule. Hourly buckets carry the UTC offset, so the hour repeated when clocks go back is two
//! buckets, as it is two hours.
//!
//! Tiers: with `hot = "90d"` and `cold = "365d"`, a backup younger than 365 days is kept (the tier
//! window acts as a keep-within rule), and every kept backup older than 90 days goes to the cold
//! tier; a backup older than 365 days that no other rule keeps is deleted.

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;

use chrono::{DateTime, Datelike, Offset, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::{Action, Decision, RetentionDuration, RetentionPlan, RetentionPolicy};
use crate::catalog::{BackupRecord, BackupStatus};

/// The rules for one group of backups.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeepRules {
    /// Keep the newest N.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    /// Keep the newest of each of the last N hours with a backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_hourly: Option<u32>,
    /// … days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_daily: Option<u32>,
    /// … ISO weeks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_weekly: Option<u32>,
    /// … months.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_monthly: Option<u32>,
    /// … years.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_yearly: Option<u32>,
    /// Keep everything younger than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_within: Option<RetentionDuration>,
    /// Kept backups older than this go to the cold tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hot: Option<RetentionDuration>,
    /// Backups younger than this are kept (in the cold tier once older than `hot`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold: Option<RetentionDuration>,
}

impl KeepRules {
    fn is_empty(&self) -> bool {
        *self == KeepRules::default()
    }

    fn validate(&self, rules: &str) -> Result<(), PolicyError> {
        if let (None, Some(_)) = (self.hot, self.cold) {
            return Err(PolicyError::ColdWithoutHot {
                rules: rules.into(),
            });
        }
        if let (Some(hot), Some(cold)) = (self.hot, self.cold) {
            if cold.as_secs() < hot.as_secs() {
                return Err(PolicyError::ColdShorterThanHot {
                    rules: rules.into(),
                    hot,
                    cold,
                });
            }
        }
        Ok(())
    }
}

/// A retention policy that cannot be used: what is wrong, and in which rules.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A TOML policy does not parse.
    #[error("retention policy is not valid TOML")]
    Toml(#[source] toml::de::Error),
    /// A JSON policy does not parse.
    #[error("retention policy is not valid JSON")]
    Json(#[source] serde_json::Error),
    /// The time zone is not an IANA name.
    #[error("unknown time zone {0:?} (use an IANA name such as Europe/Berlin)")]
    TimeZone(String),
    /// A cold tier without a hot one.
    #[error("{rules}: `cold` needs `hot` (how long backups stay in the hot tier)")]
    ColdWithoutHot {
        /// Which rules (`retention policy`, `rules for source …`, `rules for label …`).
        rules: String,
    },
    /// A cold tier shorter than the hot one.
    #[error("{rules}: `cold` ({cold}) must not be shorter than `hot` ({hot})")]
    ColdShorterThanHot {
        /// Which rules.
        rules: String,
        /// The hot tier's length.
        hot: RetentionDuration,
        /// The cold tier's length.
        cold: RetentionDuration,
    },
    /// A label rule's label is not `key=value`.
    #[error("label rule {0:?} must be written key=value")]
    LabelNotKeyValue(String),
}

/// Rules for backups carrying a label.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelRules {
    /// `key=value`.
    pub label: String,
    /// The rules.
    pub rules: KeepRules,
}

/// The standard retention policy.
///
/// ```
/// use resilience_core::retention::StandardPolicy;
/// let policy = StandardPolicy::from_toml(r#"
///     keep_daily = 7
///     keep_weekly = 4
///     timezone = "Europe/Berlin"
///     [per_source."pg:billing"]
///     hot = "90d"
///     cold = "365d"
/// "#).unwrap();
/// assert_eq!(policy.default.keep_daily, Some(7));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandardPolicy {
    /// Rules for every source without an override.
    #[serde(flatten)]
    pub default: KeepRules,
    /// IANA time zone for buckets (UTC when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Promised point-in-time-recovery window (WAL inside it is never deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pitr_window: Option<RetentionDuration>,
    /// Rules per source id, replacing the default rules.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub per_source: BTreeMap<String, KeepRules>,
    /// Rules per label, for sources without their own; the first matching label wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_label: Vec<LabelRules>,
}

impl StandardPolicy {
    /// Parses and validates a TOML document.
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        let p: StandardPolicy = toml::from_str(text).map_err(PolicyError::Toml)?;
        p.validate()?;
        Ok(p)
    }

    /// Parses and validates a JSON document.
    pub fn from_json(text: &str) -> Result<Self, PolicyError> {
        let p: StandardPolicy = serde_json::from_str(text).map_err(PolicyError::Json)?;
        p.validate()?;
        Ok(p)
    }

    /// Checks the time zone, tiers and labels.
    pub fn validate(&self) -> Result<(), PolicyError> {
        self.tz()?;
        self.default.validate("retention policy")?;
        for (s, r) in &self.per_source {
            r.validate(&format!("rules for source {s}"))?;
        }
        for l in &self.per_label {
            if !l.label.contains('=') {
                return Err(PolicyError::LabelNotKeyValue(l.label.clone()));
            }
            l.rules.validate(&format!("rules for label {}", l.label))?;
        }
        Ok(())
    }

    fn tz(&self) -> Result<Tz, PolicyError> {
        match &self.timezone {
            None => Ok(Tz::UTC),
            Some(name) => Tz::from_str(name).map_err(|_| PolicyError::TimeZone(name.clone())),
        }
    }

    /// The rules for a record and a key naming the rule set (records are grouped by source and
    /// rule set).
    fn rules_for(&self, r: &BackupRecord) -> (String, &KeepRules) {
        if let Some(rules) = self.per_source.get(&r.source.id) {
            return (format!("source:{}", r.source.id), rules);
        }
        for (i, l) in self.per_label.iter().enumerate() {
            let (k, v) = l.label.split_once('=').unwrap_or((&l.label, ""));
            if r.labels.get(k).map(String::as_str) == Some(v) {
                return (format!("label:{i}"), &l.rules);
            }
        }
        ("default".into(), &self.default)
    }
}

type BucketKey = (i32, u32, u32, u32, i32);

fn bucket(kind: &str, t: DateTime<Utc>, tz: Tz) -> BucketKey {
    let local = tz.from_utc_datetime(&t.naive_utc());
    match kind {
        "hourly" => (
            local.year(),
            local.month(),
            local.day(),
            local.hour(),
            local.offset().fix().local_minus_utc(),
        ),
        "daily" => (local.year(), local.month(), local.day(), 0, 0),
        "weekly" => {
            let w = local.iso_week();
            (w.year(), w.week(), 0, 0, 0)
        }
        "monthly" => (local.year(), local.month(), 0, 0, 0),
        _ => (local.year(), 0, 0, 0, 0),
    }
}

impl RetentionPolicy for StandardPolicy {
    fn pitr_window(&self) -> Option<chrono::Duration> {
        self.pitr_window.map(RetentionDuration::to_chrono)
    }

    fn decide(&self, records: &[BackupRecord], now: DateTime<Utc>) -> RetentionPlan {
        let tz = self.tz().unwrap_or(Tz::UTC);
        // Newest first, ties broken by id: the result never depends on the input order.
        let mut sorted: Vec<&BackupRecord> = records.iter().collect();
        sorted.sort_by(|a, b| (b.started_at, &b.id).cmp(&(a.started_at, &a.id)));
        let mut groups: BTreeMap<(String, String), Vec<&BackupRecord>> = BTreeMap::new();
        for r in &sorted {
            let (set, _) = self.rules_for(r);
            groups
                .entry((r.source.id.clone(), set))
                .or_default()
                .push(r);
        }

        let mut reasons: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for group in groups.values() {
            let rules = self.rules_for(group[0]).1;
            let succeeded: Vec<&&BackupRecord> = group
                .iter()
                .filter(|r| r.status == BackupStatus::Succeeded)
                .collect();
            if let Some(n) = rules.keep_last {
                for r in succeeded.iter().take(n as usize) {
                    reasons
                        .entry(&r.id)
                        .or_default()
                        .push(format!("keep-last {n}"));
                }
            }
            for (kind, n) in [
                ("hourly", rules.keep_hourly),
                ("daily", rules.keep_daily),
                ("weekly", rules.keep_weekly),
                ("monthly", rules.keep_monthly),
                ("yearly", rules.keep_yearly),
            ] {
                let Some(n) = n else { continue };
                let mut seen: HashSet<BucketKey> = HashSet::new();
                for r in &succeeded {
                    if seen.len() >= n as usize {
                        break;
                    }
                    let key = bucket(kind, r.started_at, tz);
                    if seen.insert(key) {
                        reasons
                            .entry(&r.id)
                            .or_default()
                            .push(format!("keep-{kind} {n}"));
                    }
                }
            }
            for r in &succeeded {
                let age = now - r.started_at;
                if let Some(w) = rules.keep_within {
                    if age < w.to_chrono() {
                        reasons
                            .entry(&r.id)
                            .or_default()
                            .push(format!("keep-within {w}"));
                    }
                }
                if let Some(c) = rules.cold {
                    if age < c.to_chrono() {
                        reasons
                            .entry(&r.id)
                            .or_default()
                            .push(format!("tier window {c}"));
                    }
                }
            }
        }

        let decisions = sorted
            .iter()
            .map(|r| {
                let rules = self.rules_for(r).1;
                let mut why = reasons.remove(r.id.as_str()).unwrap_or_default();
                let mut action = Action::Keep;
                match r.status {
                    BackupStatus::Running => why = vec!["running: not finished".into()],
                    BackupStatus::Failed => {
                        action = Action::Delete;
                        why = vec!["failed: not restorable".into()];
                    }
                    BackupStatus::Expired => {
                        action = Action::Delete;
                        why = vec!["expired earlier".into()];
                    }
                    BackupStatus::Succeeded => {
                        if rules.is_empty() {
                            why.push("no retention rule configured".into());
                        }
                        if r.legal_hold {
                            why.push("legal hold".into());
                        }
                        if why.is_empty() {
                            action = Action::Delete;
                            why.push("no rule keeps it".into());
                        } else if rules
                            .hot
                            .is_some_and(|h| now - r.started_at >= h.to_chrono())
                        {
                            action = Action::Cold;
                            why.push(format!("older than hot {}", rules.hot.expect("checked")));
                        }
                    }
                }
                Decision {
                    id: r.id.clone(),
                    source: r.source.id.clone(),
                    action,
                    reasons: why,
                }
            })
            .collect();
        RetentionPlan { decisions }
    }
}
