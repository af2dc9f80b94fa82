use std::sync::atomic::{AtomicU32, Ordering};

use super::*;

/// A step that counts its runs and fails while `failures` lasts.
struct Counted {
    name: &'static str,
    runs: Arc<AtomicU32>,
    failures: u32,
    recovered_to: Option<DateTime<Utc>>,
}

#[async_trait]
impl FailoverStep for Counted {
    fn name(&self) -> String {
        self.name.into()
    }
    fn describe(&self) -> String {
        format!("do {}", self.name)
    }
    async fn run(&self) -> std::result::Result<StepOutcome, StepError> {
        let n = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        if n <= self.failures {
            return Err(format!("{} failed (run {n})", self.name).into());
        }
        Ok(StepOutcome::done(format!("{} done", self.name)).recovered_to(self.recovered_to))
    }
}

fn plan(runs: &[Arc<AtomicU32>; 3], failures: [u32; 3], last_commit: DateTime<Utc>) -> Plan {
    let names = ["fence", "promote", "restore cache"];
    let mut p = Plan::new("b");
    for i in 0..3 {
        p = p.step(Counted {
            name: names[i],
            runs: runs[i].clone(),
            failures: failures[i],
            recovered_to: (i == 1).then_some(last_commit),
        });
    }
    p
}

#[tokio::test]
async fn a_failed_step_stops_the_plan_and_a_second_run_resumes_without_doing_anything_twice() {
    let runs: [Arc<AtomicU32>; 3] = Default::default();
    let last_commit = Utc::now() - chrono::Duration::seconds(12);
    let journal = MemoryJournal::default();
    let plan = plan(&runs, [0, 0, 1], last_commit);
    assert_eq!(
        plan.describe()
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        ["fence", "promote", "restore cache"]
    );

    let first = plan.run(&journal).await.unwrap();
    assert!(!first.ok);
    assert_eq!(first.left, ["restore cache"]);
    assert_eq!(first.steps.len(), 3);
    assert!(!first.steps[2].ok);
    assert!(first.steps[2].detail.contains("restore cache failed"));
    assert_eq!(first.rto_seconds, None);

    let second = plan.run(&journal).await.unwrap();
    assert!(second.ok, "{second:?}");
    assert_eq!(second.id, first.id, "the same failover, resumed");
    assert!(second.left.is_empty());
    let counts: Vec<u32> = runs.iter().map(|r| r.load(Ordering::SeqCst)).collect();
    assert_eq!(counts, [1, 1, 2], "done steps are not run again");
    assert!(second.steps[0].earlier && second.steps[1].earlier && !second.steps[2].earlier);
    let rpo = second.rpo_seconds.unwrap();
    assert!((12.0..20.0).contains(&rpo), "RPO {rpo}");
    assert!(second.rto_seconds.unwrap() >= 0.0);

    // A third run starts a new failover: the last one finished.
    let third = plan.run(&journal).await.unwrap();
    assert!(third.ok);
    assert_eq!(journal.list().await.unwrap().len(), 2);
    assert_eq!(runs[0].load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn failovers_are_journaled_in_the_repository_sealed_and_in_revisions() {
    use crate::keys::PassphraseProvider;
    use crate::repo::{InitOptions, Repository};
    use crate::sink::{MemorySink, PutMode, Sink};
    let sink = Arc::new(MemorySink::new());
    let repo = Repository::init(
        sink.clone(),
        &PassphraseProvider::new("failover"),
        InitOptions::default(),
    )
    .await
    .unwrap();
    let runs: [Arc<AtomicU32>; 3] = Default::default();
    let log = repo.failovers();
    let first = plan(&runs, [0, 1, 0], Utc::now()).run(&log).await.unwrap();
    assert!(!first.ok);
    assert_eq!(log.unfinished("b").await.unwrap().unwrap().id, first.id);
    assert!(log.unfinished("c").await.unwrap().is_none());
    let done = plan(&runs, [0, 1, 0], Utc::now()).run(&log).await.unwrap();
    assert!(done.ok);
    let keys: Vec<String> = {
        use futures::TryStreamExt;
        sink.list(FAILOVER_PREFIX)
            .map_ok(|m| m.key)
            .try_collect()
            .await
            .unwrap()
    };
    assert_eq!(keys.len(), 4, "one revision per step run: {keys:?}");
    let listed = log.list().await.unwrap();
    assert_eq!(listed, vec![done.clone()]);
    // Sealed: the record is not readable in the clear, and a flipped byte is named.
    let key = keys.iter().max().unwrap();
    let bytes = sink.get(key).await.unwrap();
    assert!(!String::from_utf8_lossy(&bytes).contains("\"region\""));
    let mut damaged = bytes.to_vec();
    damaged[40] ^= 1;
    sink.put(key, damaged.into(), PutMode::Overwrite)
        .await
        .unwrap();
    let err = log.list().await.unwrap_err().to_string();
    assert!(err.contains(key.as_str()), "{err}");
}
