//! How a service unit-tests its own retention rules: build a synthetic catalog, run the
//! policy (a pure function: no I/O, no clock of its own), and assert on the plan.
//!
//! `cargo run -p resilience-examples --example retention_unit_test` prints the plan;
//! `cargo test -p resilience-examples --example retention_unit_test` runs the tests below.

use chrono::{DateTime, Duration, TimeZone, Utc};
use resilience_core::catalog::{BackupKind, BackupRecord, BackupStatus};
use resilience_core::retention::{self, Action, StandardPolicy};
use resilience_core::source::SourceDescriptor;

/// The service's policy: what its compliance officer signed off.
const POLICY: &str = r#"
keep_daily = 7
keep_weekly = 4
keep_monthly = 12
hot = "90d"
cold = "365d"
timezone = "Europe/Berlin"
"#;

/// A backup of the billing database taken at `at`.
fn backup(id: &str, at: DateTime<Utc>) -> BackupRecord {
    BackupRecord {
        id: id.into(),
        revision: 2,
        source: SourceDescriptor {
            id: "pg:billing".into(),
            kind: "postgres".into(),
        },
        kind: BackupKind::Full,
        status: BackupStatus::Succeeded,
        error: None,
        started_at: at,
        finished_at: Some(at + Duration::minutes(12)),
        logical_bytes: 1 << 30,
        stored_bytes: 1 << 28,
        new_bytes: 1 << 26,
        entries: 1000,
        manifest_checksum: None,
        tier: Default::default(),
        labels: Default::default(),
        legal_hold: false,
        verifications: vec![],
        source_metadata: Default::default(),
        parent: None,
        host: "billing-1".into(),
        updated_at: at,
        salvage: None,
    }
}

/// Two years of nightly backups at 02:00 UTC.
fn two_years_of_nightlies(now: DateTime<Utc>) -> Vec<BackupRecord> {
    (0..730)
        .map(|d| {
            backup(
                &format!("b{d:03}"),
                now - Duration::days(d) - Duration::hours(10),
            )
        })
        .collect()
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap()
}

fn main() {
    let policy = StandardPolicy::from_toml(POLICY).expect("the policy parses");
    let plan = retention::plan(&policy, &two_years_of_nightlies(now()), now());
    for action in [Action::Keep, Action::Cold, Action::Delete] {
        println!("{action:?}: {}", plan.with_action(action).count());
    }
    for d in plan
        .decisions
        .iter()
        .filter(|d| d.action != Action::Delete)
        .take(12)
    {
        println!("{} {:?} {}", d.id, d.action, d.reasons.join("; "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> retention::RetentionPlan {
        let policy = StandardPolicy::from_toml(POLICY).unwrap();
        retention::plan(&policy, &two_years_of_nightlies(now()), now())
    }

    #[test]
    fn everything_younger_than_a_year_is_kept_and_only_the_first_90_days_are_hot() {
        let plan = plan();
        for d in &plan.decisions {
            let age: i64 = d.id[1..].parse().unwrap();
            match age {
                0..=88 => assert_eq!(d.action, Action::Keep, "{d:?}"),
                91..=363 => assert_eq!(d.action, Action::Cold, "{d:?}"),
                _ => {}
            }
        }
    }

    #[test]
    fn nothing_older_than_the_monthly_rule_survives_past_a_year() {
        let plan = plan();
        let kept_old = plan
            .decisions
            .iter()
            .filter(|d| d.id[1..].parse::<i64>().unwrap() > 400 && d.action != Action::Delete)
            .count();
        assert_eq!(kept_old, 0);
    }

    #[test]
    fn the_newest_backup_survives_even_an_aggressive_policy() {
        let aggressive = StandardPolicy::from_toml("keep_within = \"1h\"").unwrap();
        let plan = retention::plan(&aggressive, &two_years_of_nightlies(now()), now());
        assert_eq!(
            plan.with_action(Action::Keep)
                .map(|d| d.id.as_str())
                .collect::<Vec<_>>(),
            vec!["b000"]
        );
    }
}
