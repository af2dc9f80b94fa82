//! Failover to another region: a [`Plan`] of named steps (fence the old primary, promote a
//! standby, restore a cache, switch traffic, check), run in order, each timed and recorded.
//!
//! A plan can be read before it runs ([`Plan::describe`]). A step that fails stops the plan, and
//! the report names the steps left. Every run is journaled ([`FailoverJournal`]; in a
//! repository, [`RepoFailoverLog`]) after each step, so running the same plan again resumes
//! where it stopped: a step done by an earlier run is never done twice (restoring a cache over
//! the writes that followed the failover would lose them). The finished record holds the
//! failover's RTO and RPO, in the repository of the region failed over to.
//!
//! Steps are values implementing [`FailoverStep`]; the store adapters provide theirs (the
//! Postgres promotion in `resilience-pg`, a Redis restore in `resilience-redis`), and a service
//! adds its own (a DNS change, a feature flag).
//!
//! ```
//! use resilience_core::failover::{FailoverStep, MemoryJournal, Plan, StepError, StepOutcome};
//! # struct Promote;
//! # #[async_trait::async_trait]
//! # impl FailoverStep for Promote {
//! #     fn name(&self) -> String { "promote".into() }
//! #     fn describe(&self) -> String { "promote the standby".into() }
//! #     async fn run(&self) -> Result<StepOutcome, StepError> { Ok(StepOutcome::done("promoted")) }
//! # }
//! # async fn demo() -> Result<(), resilience_core::Error> {
//! let plan = Plan::new("b").step(Promote);
//! let report = plan.run(&MemoryJournal::default()).await?;
//! assert!(report.ok);
//! # Ok(()) }
//! ```

mod journal;

pub use journal::{FailoverJournal, MemoryJournal, RepoFailoverLog, FAILOVER_PREFIX};

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// Why a step failed, in words an on-call engineer can act on.
pub type StepError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a step did.
#[derive(Clone, Debug, Default)]
pub struct StepOutcome {
    /// What it did, in a line.
    pub detail: String,
    /// The moment the data it brought back reaches: the last commit a promoted standby
    /// replayed, the start of the backup restored. The oldest across steps makes the RPO.
    pub recovered_to: Option<DateTime<Utc>>,
}

impl StepOutcome {
    /// A step done, with what it did.
    pub fn done(detail: impl Into<String>) -> Self {
        StepOutcome {
            detail: detail.into(),
            recovered_to: None,
        }
    }

    /// The same, bringing data back to `at`.
    pub fn recovered_to(mut self, at: Option<DateTime<Utc>>) -> Self {
        self.recovered_to = at;
        self
    }
}

/// One step of a failover.
#[async_trait]
pub trait FailoverStep: Send + Sync {
    /// A short name, unique in its plan (`promote postgres`).
    fn name(&self) -> String;
    /// What it will do, in a sentence, for the plan read before it runs.
    fn describe(&self) -> String;
    /// Does it. A step that finds its work done already (a standby promoted by hand) succeeds.
    async fn run(&self) -> std::result::Result<StepOutcome, StepError>;
}

/// A step as a run recorded it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// The step's name.
    pub name: String,
    /// Whether it succeeded.
    pub ok: bool,
    /// How long it took.
    pub seconds: f64,
    /// What it did, or why it failed.
    pub detail: String,
    /// Done by an earlier run of the plan (and not again by this one).
    #[serde(default)]
    pub earlier: bool,
    /// The moment the data it brought back reaches.
    #[serde(default)]
    pub recovered_to: Option<DateTime<Utc>>,
}

/// A failover, as journaled and reported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FailoverRecord {
    /// Its id (the time it first started, the region, and a random tag).
    pub id: String,
    /// Revision of this record, from 1 (one per step run).
    pub revision: u32,
    /// The region failed over to.
    pub region: String,
    /// When its first run started.
    pub started_at: DateTime<Utc>,
    /// When its last step succeeded.
    pub finished_at: Option<DateTime<Utc>>,
    /// Every step succeeded.
    pub ok: bool,
    /// From the first run's start to the last step's end (across resumed runs).
    pub rto_seconds: Option<f64>,
    /// From the oldest moment the steps brought data back to (a promoted standby's last commit
    /// replayed, a cache backup's start) to the failover's start: an upper bound of the writes
    /// lost.
    pub rpo_seconds: Option<f64>,
    /// The steps run so far, in order, the failed one last.
    pub steps: Vec<StepReport>,
    /// The steps not done yet.
    pub left: Vec<String>,
    /// A drill: the same steps against scratch copies, production untouched (never resumed,
    /// never taken for the region's failover).
    #[serde(default)]
    pub drill: bool,
}

impl FailoverRecord {
    /// In a line, for people: `failover to b: RTO 2.6 s, RPO 1.1 s` (`failover drill to b: …`).
    pub fn summary(&self) -> String {
        format!(
            "failover{} to {}: RTO {}, RPO {}",
            if self.drill { " drill" } else { "" },
            self.region,
            seconds(self.rto_seconds),
            seconds(self.rpo_seconds)
        )
    }
}

fn seconds(s: Option<f64>) -> String {
    s.map(|s| format!("{s:.1} s"))
        .unwrap_or_else(|| "unknown".into())
}

/// A failover plan: the region and its steps, in order.
#[derive(Clone)]
pub struct Plan {
    region: String,
    steps: Vec<Arc<dyn FailoverStep>>,
}

impl Plan {
    /// An empty plan for a failover to `region`.
    pub fn new(region: impl Into<String>) -> Self {
        Plan {
            region: region.into(),
            steps: Vec::new(),
        }
    }

    /// Adds a step at the end.
    pub fn step(mut self, step: impl FailoverStep + 'static) -> Self {
        self.steps.push(Arc::new(step));
        self
    }

    /// Adds a shared step at the end.
    pub fn shared_step(mut self, step: Arc<dyn FailoverStep>) -> Self {
        self.steps.push(step);
        self
    }

    /// The region it fails over to.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Each step's name and what it will do, in order.
    pub fn describe(&self) -> Vec<(String, String)> {
        self.steps
            .iter()
            .map(|s| (s.name(), s.describe()))
            .collect()
    }

    /// Runs the plan: resumes the newest unfinished failover to this region in `journal`, or
    /// starts one. Steps an earlier run did are reported `earlier` and not run again; the
    /// first step that fails stops the plan (the record says what is left). The record is
    /// journaled after every step; the returned report is its last revision.
    ///
    /// Errors only when the journal cannot be read or written: a step's failure is in the
    /// report (`ok: false`).
    pub async fn run(&self, journal: &dyn FailoverJournal) -> Result<FailoverRecord> {
        let names: Vec<String> = self.steps.iter().map(|s| s.name()).collect();
        let now = Utc::now();
        let mut record = match journal.unfinished(&self.region).await? {
            Some(mut earlier) => {
                earlier.steps.retain(|s| s.ok);
                for s in &mut earlier.steps {
                    s.earlier = true;
                }
                earlier
            }
            None => FailoverRecord {
                id: {
                    use rand::RngCore;
                    let mut tag = [0u8; 4];
                    rand::rngs::OsRng.fill_bytes(&mut tag);
                    format!(
                        "{}-{}-{}",
                        now.format("%Y%m%dT%H%M%SZ"),
                        self.region.replace('/', "_"),
                        hex::encode(tag)
                    )
                },
                revision: 0,
                region: self.region.clone(),
                started_at: now,
                finished_at: None,
                ok: false,
                rto_seconds: None,
                rpo_seconds: None,
                steps: Vec::new(),
                left: names.clone(),
                drill: false,
            },
        };
        for step in &self.steps {
            let name = step.name();
            if record.steps.iter().any(|s| s.name == name && s.ok) {
                continue;
            }
            let began = Instant::now();
            tracing::info!(region = %self.region, step = %name, "failover step starting");
            let outcome = step.run().await;
            let seconds = began.elapsed().as_secs_f64();
            let report = match outcome {
                Ok(o) => StepReport {
                    name: name.clone(),
                    ok: true,
                    seconds,
                    detail: o.detail,
                    earlier: false,
                    recovered_to: o.recovered_to,
                },
                Err(e) => StepReport {
                    name: name.clone(),
                    ok: false,
                    seconds,
                    detail: e.to_string(),
                    earlier: false,
                    recovered_to: None,
                },
            };
            let failed = !report.ok;
            if failed {
                tracing::error!(region = %self.region, step = %name, error = %report.detail, "failover step failed");
            }
            record.steps.push(report);
            record.left = names
                .iter()
                .filter(|n| !record.steps.iter().any(|s| &s.name == *n && s.ok))
                .cloned()
                .collect();
            record.revision += 1;
            if !failed && record.left.is_empty() {
                let end = Utc::now();
                record.ok = true;
                record.finished_at = Some(end);
                record.rto_seconds = Some(seconds_between(record.started_at, end));
                record.rpo_seconds = record
                    .steps
                    .iter()
                    .filter_map(|s| s.recovered_to)
                    .min()
                    .map(|at| seconds_between(at, record.started_at));
            }
            journal.save(&record).await?;
            if failed {
                return Ok(record);
            }
        }
        if record.revision == 0 || !record.ok {
            // Nothing was left to run (an empty plan, or every step done by earlier runs).
            let end = Utc::now();
            record.ok = true;
            record.left.clear();
            record.finished_at.get_or_insert(end);
            record.rto_seconds = Some(seconds_between(
                record.started_at,
                record.finished_at.unwrap_or(end),
            ));
            record.revision += 1;
            journal.save(&record).await?;
        }
        Ok(record)
    }
}

fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    ((to - from).num_milliseconds().max(0) as f64) / 1000.0
}

#[cfg(test)]
mod tests;
