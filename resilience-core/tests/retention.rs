//! Retention: property tests over random catalogs and policies, and hand-written cases
//! (daylight-saving changes, ISO week years, the 90-day-hot / 365-day-cold example).

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;
use resilience_core::catalog::{BackupKind, BackupRecord, BackupStatus};
use resilience_core::retention::{self, Action, KeepRules, RetentionDuration, StandardPolicy};

fn record(id: &str, source: &str, at: DateTime<Utc>, status: BackupStatus) -> BackupRecord {
    let mut r = resilience_core::testing::record_at(id, source, at);
    r.status = status;
    r
}

fn arb_status() -> impl Strategy<Value = BackupStatus> {
    prop_oneof![
        6 => Just(BackupStatus::Succeeded),
        1 => Just(BackupStatus::Failed),
        1 => Just(BackupStatus::Running),
    ]
}

fn arb_records() -> impl Strategy<Value = Vec<BackupRecord>> {
    proptest::collection::vec(
        (
            0u32..3,
            0i64..(400 * 24),
            arb_status(),
            any::<bool>(),
            prop::bool::weighted(0.1),
            prop::bool::weighted(0.2),
        ),
        0..60,
    )
    .prop_map(|v| {
        let base = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        v.into_iter()
            .enumerate()
            .map(|(i, (src, hours, status, prod, hold, wal))| {
                let mut r = record(
                    &format!("b{i:03}"),
                    &format!("s{src}"),
                    base + Duration::hours(hours),
                    status,
                );
                if prod {
                    r.labels.insert("env".into(), "prod".into());
                }
                r.legal_hold = hold;
                if wal {
                    r.kind = BackupKind::Wal;
                }
                r
            })
            .collect()
    })
}

fn arb_rules() -> impl Strategy<Value = KeepRules> {
    (
        proptest::option::of(0u32..5),
        proptest::option::of(0u32..5),
        proptest::option::of(0u32..10),
        proptest::option::of(0u32..5),
        proptest::option::of(0u32..5),
        proptest::option::of(0u32..3),
        proptest::option::of(0i64..100),
        proptest::option::of((1i64..60, 0i64..300)),
    )
        .prop_map(
            |(last, hourly, daily, weekly, monthly, yearly, within, tiers)| KeepRules {
                keep_last: last,
                keep_hourly: hourly,
                keep_daily: daily,
                keep_weekly: weekly,
                keep_monthly: monthly,
                keep_yearly: yearly,
                keep_within: within.map(RetentionDuration::days),
                hot: tiers.map(|(h, _)| RetentionDuration::days(h)),
                cold: tiers.map(|(h, c)| RetentionDuration::days(h + c)),
            },
        )
}

fn arb_policy() -> impl Strategy<Value = StandardPolicy> {
    (
        arb_rules(),
        proptest::option::of(arb_rules()),
        prop::sample::select(vec![
            "UTC",
            "Europe/Berlin",
            "America/New_York",
            "Australia/Lord_Howe",
        ]),
        proptest::option::of(0i64..30),
    )
        .prop_map(|(default, prod, tz, pitr)| StandardPolicy {
            default,
            timezone: Some(tz.into()),
            pitr_window: pitr.map(RetentionDuration::days),
            per_source: BTreeMap::new(),
            per_label: prod
                .map(|rules| {
                    vec![retention::LabelRules {
                        label: "env=prod".into(),
                        rules,
                    }]
                })
                .unwrap_or_default(),
        })
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2027, 2, 10, 12, 0, 0).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn safety_rules_always_hold(records in arb_records(), policy in arb_policy()) {
        let plan = retention::plan(&policy, &records, now());
        prop_assert_eq!(plan.decisions.len(), records.len());
        for r in &records {
            let d = plan.get(&r.id).unwrap();
            if r.legal_hold || r.status == BackupStatus::Running {
                prop_assert_ne!(d.action, Action::Delete, "{:?}", d);
            }
        }
        // The newest succeeded (non-WAL) backup of each source survives.
        let mut newest: BTreeMap<&str, &BackupRecord> = BTreeMap::new();
        for r in records.iter().filter(|r| r.status == BackupStatus::Succeeded && r.kind != BackupKind::Wal) {
            let e = newest.entry(&r.source.id).or_insert(r);
            if (r.started_at, &r.id) > (e.started_at, &e.id) { *e = r; }
        }
        for r in newest.values() {
            prop_assert_ne!(plan.get(&r.id).unwrap().action, Action::Delete);
        }
        // WAL after the oldest kept base backup of its source is kept.
        for r in records.iter().filter(|r| r.kind == BackupKind::Wal && r.status == BackupStatus::Succeeded) {
            let oldest_kept = records.iter()
                .filter(|b| b.source.id == r.source.id && b.kind != BackupKind::Wal && b.status == BackupStatus::Succeeded)
                .filter(|b| plan.get(&b.id).unwrap().action != Action::Delete)
                .map(|b| b.started_at).min();
            if let Some(base) = oldest_kept {
                if r.finished_at.unwrap() >= base {
                    prop_assert_ne!(plan.get(&r.id).unwrap().action, Action::Delete);
                }
            }
        }
        // Every decision has a reason.
        prop_assert!(plan.decisions.iter().all(|d| !d.reasons.is_empty()));
    }

    #[test]
    fn plan_is_deterministic_and_independent_of_order(records in arb_records(), policy in arb_policy(), seed in any::<u64>()) {
        let a = retention::plan(&policy, &records, now());
        let mut shuffled = records.clone();
        let mut x = seed | 1;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        prop_assert_eq!(&a, &retention::plan(&policy, &shuffled, now()));
        prop_assert_eq!(a, retention::plan(&policy, &records, now()));
    }

    #[test]
    fn applying_a_plan_then_planning_again_changes_nothing(records in arb_records(), policy in arb_policy()) {
        let first = retention::plan(&policy, &records, now());
        let remaining = retention::apply_in_memory(&records, &first);
        let second = retention::plan(&policy, &remaining, now());
        for d in &second.decisions {
            let before = first.get(&d.id).unwrap();
            prop_assert_eq!(d.action, before.action, "{} was {:?} now {:?}", d.id, before, d);
        }
        prop_assert!(second.decisions.iter().all(|d| d.action != Action::Delete
            || remaining.iter().find(|r| r.id == d.id).unwrap().status != BackupStatus::Succeeded));
    }

    #[test]
    fn keep_daily_keeps_one_per_day_for_the_newest_days(records in arb_records(), n in 0u32..15) {
        let policy = StandardPolicy { default: KeepRules { keep_daily: Some(n), ..Default::default() }, ..Default::default() };
        let plan = retention::plan(&policy, &records, now());
        for source in ["s0", "s1", "s2"] {
            let days: std::collections::BTreeSet<_> = records.iter()
                .filter(|r| r.source.id == source && r.status == BackupStatus::Succeeded)
                .map(|r| r.started_at.date_naive()).collect();
            let kept_by_rule = plan.decisions.iter()
                .filter(|d| d.source == source && d.reasons.iter().any(|x| x == &format!("keep-daily {n}")))
                .count();
            prop_assert_eq!(kept_by_rule, days.len().min(n as usize));
        }
    }
}

#[test]
fn legal_hold_wins_over_every_rule_and_release_lets_it_go() {
    let t = now();
    let mut old = record("old", "s", t - Duration::days(800), BackupStatus::Succeeded);
    old.legal_hold = true;
    let newer = record("new", "s", t - Duration::days(1), BackupStatus::Succeeded);
    let policy = StandardPolicy::from_toml("keep_last = 1").unwrap();
    let plan = retention::plan(&policy, &[old.clone(), newer.clone()], t);
    assert_eq!(plan.get("old").unwrap().action, Action::Keep);
    assert!(plan
        .get("old")
        .unwrap()
        .reasons
        .contains(&"legal hold".to_string()));
    old.legal_hold = false;
    let plan = retention::plan(&policy, &[old, newer], t);
    assert_eq!(plan.get("old").unwrap().action, Action::Delete);
}

#[test]
fn ninety_days_hot_then_cold_until_a_year_then_deleted() {
    let t = now();
    let policy = StandardPolicy::from_toml("hot = \"90d\"\ncold = \"365d\"").unwrap();
    let records: Vec<_> = [1, 89, 91, 200, 364, 366, 1000]
        .iter()
        .map(|d| {
            record(
                &format!("d{d:04}"),
                "s",
                t - Duration::days(*d),
                BackupStatus::Succeeded,
            )
        })
        .collect();
    let plan = retention::plan(&policy, &records, t);
    let action = |id: &str| plan.get(id).unwrap().action;
    assert_eq!(action("d0001"), Action::Keep);
    assert_eq!(action("d0089"), Action::Keep);
    assert_eq!(action("d0091"), Action::Cold);
    assert_eq!(action("d0200"), Action::Cold);
    assert_eq!(action("d0364"), Action::Cold);
    assert_eq!(action("d0366"), Action::Delete);
    assert_eq!(action("d1000"), Action::Delete);
}

#[test]
fn daily_buckets_follow_the_zone_across_daylight_saving_changes() {
    // Europe/Berlin leaves summer time on 2026-10-25 at 03:00 CEST (01:00 UTC).
    let tz: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
    let at = |y, m, d, h, min| {
        tz.with_ymd_and_hms(y, m, d, h, min, 0)
            .earliest()
            .unwrap()
            .with_timezone(&Utc)
    };
    let records = vec![
        record("a", "s", at(2026, 10, 24, 23, 30), BackupStatus::Succeeded), // Oct 24 local
        record("b", "s", at(2026, 10, 25, 0, 30), BackupStatus::Succeeded), // Oct 25 local, Oct 24 in UTC
        record("c", "s", at(2026, 10, 25, 23, 30), BackupStatus::Succeeded), // Oct 25 local
        record("d", "s", at(2026, 10, 26, 0, 15), BackupStatus::Succeeded), // Oct 26 local, Oct 25 in UTC
    ];
    let berlin = StandardPolicy::from_toml("keep_daily = 3\ntimezone = \"Europe/Berlin\"").unwrap();
    let plan = retention::plan(&berlin, &records, now());
    let kept: Vec<_> = plan
        .with_action(Action::Keep)
        .map(|d| d.id.as_str())
        .collect();
    assert_eq!(kept, vec!["a", "c", "d"]);
    let utc = StandardPolicy::from_toml("keep_daily = 3").unwrap();
    let plan = retention::plan(&utc, &records, now());
    let kept: Vec<_> = plan
        .with_action(Action::Keep)
        .map(|d| d.id.as_str())
        .collect();
    // In UTC, a+b fall on Oct 24 (b newest) and c+d on Oct 25 (d newest).
    assert_eq!(kept, vec!["b", "d"]);
}

#[test]
fn the_repeated_hour_of_a_fall_back_is_two_hourly_buckets() {
    let tz: chrono_tz::Tz = "America/New_York".parse().unwrap();
    let first = tz
        .with_ymd_and_hms(2026, 11, 1, 1, 30, 0)
        .earliest()
        .unwrap()
        .with_timezone(&Utc);
    let second = tz
        .with_ymd_and_hms(2026, 11, 1, 1, 30, 0)
        .latest()
        .unwrap()
        .with_timezone(&Utc);
    assert_eq!(second - first, Duration::hours(1));
    let records = vec![
        record("x", "s", first, BackupStatus::Succeeded),
        record("y", "s", second, BackupStatus::Succeeded),
    ];
    let policy =
        StandardPolicy::from_toml("keep_hourly = 5\ntimezone = \"America/New_York\"").unwrap();
    let plan = retention::plan(&policy, &records, now());
    assert_eq!(plan.with_action(Action::Keep).count(), 2);
}

#[test]
fn iso_weeks_span_the_year_boundary() {
    // 2026-12-31 (Thursday) and 2027-01-03 (Sunday) are both in ISO week 2026-W53.
    let t = |y, m, d| Utc.with_ymd_and_hms(y, m, d, 12, 0, 0).unwrap();
    let records = vec![
        record("w53a", "s", t(2026, 12, 31), BackupStatus::Succeeded),
        record("w53b", "s", t(2027, 1, 3), BackupStatus::Succeeded),
        record("w01", "s", t(2027, 1, 4), BackupStatus::Succeeded),
    ];
    let plan = retention::plan(
        &StandardPolicy::from_toml("keep_weekly = 5").unwrap(),
        &records,
        now(),
    );
    let kept: Vec<_> = plan
        .with_action(Action::Keep)
        .map(|d| d.id.as_str())
        .collect();
    assert_eq!(kept, vec!["w01", "w53b"]);
    let yearly = retention::plan(
        &StandardPolicy::from_toml("keep_yearly = 5").unwrap(),
        &records,
        now(),
    );
    let kept: Vec<_> = yearly
        .with_action(Action::Keep)
        .map(|d| d.id.as_str())
        .collect();
    assert_eq!(kept, vec!["w01", "w53a"]);
}

#[test]
fn failed_backups_never_count_as_the_kept_one() {
    let t = now();
    let records = vec![
        record("good", "s", t - Duration::days(3), BackupStatus::Succeeded),
        record("bad", "s", t - Duration::days(1), BackupStatus::Failed),
    ];
    let plan = retention::plan(
        &StandardPolicy::from_toml("keep_last = 1").unwrap(),
        &records,
        t,
    );
    assert_eq!(plan.get("good").unwrap().action, Action::Keep);
    assert_eq!(plan.get("bad").unwrap().action, Action::Delete);
}

#[test]
fn bad_policy_documents_are_refused_with_the_reason() {
    for (doc, needle) in [
        ("keep_dayly = 3", "unknown field"),
        ("timezone = \"Mars/Olympus\"", "unknown time zone"),
        ("cold = \"10d\"", "needs `hot`"),
        ("hot = \"10d\"\ncold = \"5d\"", "must not be shorter"),
        ("keep_within = \"ten days\"", "duration"),
    ] {
        let err = StandardPolicy::from_toml(doc).unwrap_err();
        let text = resilience_core::error::error_chain(&err);
        assert!(text.contains(needle), "{doc}: {text}");
    }
    assert!(StandardPolicy::from_json(
        r#"{"keep_last": 3, "per_label": [{"label": "env=prod", "rules": {"keep_daily": 7}}]}"#
    )
    .is_ok());
}

#[test]
fn an_empty_policy_keeps_everything() {
    let t = now();
    let records: Vec<_> = (0..5)
        .map(|i| {
            record(
                &format!("r{i}"),
                "s",
                t - Duration::days(i * 100),
                BackupStatus::Succeeded,
            )
        })
        .collect();
    let plan = retention::plan(&StandardPolicy::default(), &records, t);
    assert!(plan.decisions.iter().all(|d| d.action == Action::Keep));
}
