//! What a drill found ([`DrillReport`], made of [`DrillCheck`]s), and how it is recorded in the
//! catalog: an entry of the drilled backup's verification history, so that health reports and
//! metrics read the last drill of each source from the catalog.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, Verification};
use crate::error::{Error, Result};

/// The `kind` of a drill's entry in a backup's verification history.
pub const DRILL_KIND: &str = "drill";

/// One check a drill ran.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DrillCheck {
    /// What was checked (`checksums`, `query:jobs`, `key-count`…).
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was found.
    pub detail: String,
}

impl DrillCheck {
    /// A check that passed.
    pub fn pass(name: impl Into<String>, detail: impl Into<String>) -> Self {
        DrillCheck {
            name: name.into(),
            ok: true,
            detail: detail.into(),
        }
    }

    /// A check that failed.
    pub fn fail(name: impl Into<String>, detail: impl Into<String>) -> Self {
        DrillCheck {
            name: name.into(),
            ok: false,
            detail: detail.into(),
        }
    }
}

/// What a drill found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DrillReport {
    /// The source drilled.
    pub source: String,
    /// The snapshot restored.
    pub snapshot: String,
    /// Whether every check passed.
    pub ok: bool,
    /// When the drill started.
    pub started_at: DateTime<Utc>,
    /// Seconds from the drill's start to a verified, usable copy.
    pub rto_seconds: f64,
    /// Seconds from the newest point the copy holds to the end of the drill.
    pub rpo_seconds: f64,
    /// The checks, in the order they ran.
    pub checks: Vec<DrillCheck>,
}

impl DrillReport {
    /// A report whose `ok` is the conjunction of its checks (false without any check); times
    /// are kept to the millisecond.
    pub fn new(
        source: impl Into<String>,
        snapshot: impl Into<String>,
        started_at: DateTime<Utc>,
        rto_seconds: f64,
        rpo_seconds: f64,
        checks: Vec<DrillCheck>,
    ) -> Self {
        DrillReport {
            source: source.into(),
            snapshot: snapshot.into(),
            ok: !checks.is_empty() && checks.iter().all(|c| c.ok),
            started_at,
            rto_seconds: millis(rto_seconds),
            rpo_seconds: millis(rpo_seconds),
            checks,
        }
    }

    /// The failed checks, as one line each.
    pub fn failures(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect()
    }

    /// The entry this report adds to the drilled backup's verification history.
    pub fn to_verification(&self, at: DateTime<Utc>) -> Verification {
        Verification {
            at,
            kind: DRILL_KIND.into(),
            ok: self.ok,
            detail: serde_json::to_string(self).expect("a drill report serializes"),
        }
    }

    /// The report a drill entry holds; `None` for other kinds or an unreadable detail.
    pub fn from_verification(v: &Verification) -> Option<DrillReport> {
        (v.kind == DRILL_KIND)
            .then(|| serde_json::from_str(&v.detail).ok())
            .flatten()
    }
}

fn millis(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

/// Appends the drill to its snapshot's verification history (a new revision of the record).
pub async fn record(catalog: &dyn Catalog, report: &DrillReport, at: DateTime<Utc>) -> Result<()> {
    let mut record =
        catalog
            .get(&report.snapshot)
            .await?
            .ok_or_else(|| Error::SnapshotNotFound {
                id: report.snapshot.clone(),
            })?;
    record.verifications.push(report.to_verification(at));
    record.revision += 1;
    record.updated_at = at;
    catalog.put(&record).await
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn check() -> impl Strategy<Value = DrillCheck> {
        (".{0,20}", any::<bool>(), ".{0,60}").prop_map(|(name, ok, detail)| DrillCheck {
            name,
            ok,
            detail,
        })
    }

    proptest! {
        #[test]
        fn a_report_survives_its_catalog_entry(
            source in ".{1,20}",
            snapshot in "[0-9a-f-]{1,40}",
            rto in 0.0f64..1e6,
            rpo in 0.0f64..1e6,
            checks in prop::collection::vec(check(), 0..6),
            secs in 0i64..4_000_000_000,
        ) {
            let at = DateTime::from_timestamp(secs, 0).unwrap();
            let report = DrillReport::new(source, snapshot, at, rto, rpo, checks);
            let v = report.to_verification(at);
            prop_assert_eq!(v.ok, report.ok);
            let back = DrillReport::from_verification(&v).expect("parses");
            prop_assert!((back.rto_seconds - report.rto_seconds).abs() < 1e-9);
            prop_assert!((back.rpo_seconds - report.rpo_seconds).abs() < 1e-9);
            prop_assert_eq!(
                DrillReport { rto_seconds: 0.0, rpo_seconds: 0.0, ..back },
                DrillReport { rto_seconds: 0.0, rpo_seconds: 0.0, ..report }
            );
        }
    }

    #[test]
    fn a_drill_without_checks_or_with_a_failed_one_is_not_ok() {
        let at = Utc::now();
        assert!(!DrillReport::new("s", "x", at, 1.0, 1.0, vec![]).ok);
        let r = DrillReport::new(
            "s",
            "x",
            at,
            1.0,
            1.0,
            vec![
                DrillCheck::pass("checksums", "12 files"),
                DrillCheck::fail("query:jobs", "expected 10, found 9"),
            ],
        );
        assert!(!r.ok);
        assert_eq!(r.failures(), vec!["query:jobs: expected 10, found 9"]);
        let other = Verification {
            at,
            kind: "full".into(),
            ok: true,
            detail: "{}".into(),
        };
        assert_eq!(DrillReport::from_verification(&other), None);
    }
}
