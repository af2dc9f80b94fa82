//! The failover journal as an encoder/decoder pair: any record saved in a repository lists back
//! equal (sealed with the repository's keys, one object per revision), the newest revision of
//! each failover wins, and a journal opened with another key refuses the records, naming them.

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use resilience_core::failover::{FailoverJournal, FailoverRecord, StepReport};
use resilience_core::repo::{InitOptions, Repository};
use resilience_core::{MemorySink, PassphraseProvider};

fn time(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_780_000_000 + secs, 0).unwrap()
}

fn step() -> impl Strategy<Value = StepReport> {
    (
        "[a-z ]{1,24}",
        any::<bool>(),
        0.0f64..10_000.0,
        "\\PC{0,80}",
        any::<bool>(),
        proptest::option::of(0i64..1_000_000),
    )
        .prop_map(|(name, ok, seconds, detail, earlier, at)| StepReport {
            name,
            ok,
            seconds,
            detail,
            earlier,
            recovered_to: at.map(time),
        })
}

fn record() -> impl Strategy<Value = FailoverRecord> {
    (
        "[a-z0-9-]{1,12}",
        1u32..50,
        "[a-z]{1,8}",
        0i64..1_000_000,
        any::<bool>(),
        proptest::collection::vec(step(), 0..6),
        proptest::collection::vec("[a-z ]{1,12}", 0..4),
        any::<bool>(),
        proptest::option::of(0.0f64..1e6),
    )
        .prop_map(
            |(id, revision, region, start, ok, steps, left, drill, rto)| FailoverRecord {
                id: format!("20270101T000000Z-{id}"),
                revision,
                region,
                started_at: time(start),
                finished_at: ok.then(|| time(start + 60)),
                ok,
                rto_seconds: rto,
                rpo_seconds: rto.map(|r| r / 2.0),
                steps,
                left,
                drill,
            },
        )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn repository(sink: Arc<MemorySink>, pass: &str) -> Repository {
    Repository::init(sink, &PassphraseProvider::new(pass), InitOptions::default())
        .await
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn any_record_lists_back_equal_and_the_newest_revision_wins(mut r in record()) {
        runtime().block_on(async {
            let repo = repository(Arc::new(MemorySink::new()), "journal").await;
            let log = repo.failovers();
            let older = FailoverRecord { revision: r.revision, ok: false, ..r.clone() };
            r.revision += 1;
            log.save(&older).await.unwrap();
            log.save(&r).await.unwrap();
            let listed = log.list().await.unwrap();
            prop_assert_eq!(listed, vec![r.clone()]);
            // A revision is written once.
            prop_assert!(log.save(&r).await.is_err());
            let unfinished = log.unfinished(&r.region).await.unwrap();
            prop_assert_eq!(unfinished.is_some(), !r.ok && !r.drill);
            Ok(())
        })?;
    }
}

#[tokio::test]
async fn a_journal_under_another_key_refuses_the_records_and_names_them() {
    let sink = Arc::new(MemorySink::new());
    let repo = repository(sink.clone(), "journal").await;
    let record = FailoverRecord {
        id: "20270101T000000Z-b-0001".into(),
        revision: 1,
        region: "b".into(),
        started_at: time(0),
        finished_at: None,
        ok: false,
        rto_seconds: None,
        rpo_seconds: None,
        steps: Vec::new(),
        left: vec!["promote".into()],
        drill: false,
    };
    repo.failovers().save(&record).await.unwrap();
    // Another repository (another key) holding the first one's record.
    let err = {
        let copy = Arc::new(MemorySink::new());
        let other = repository(copy.clone(), "another").await;
        use resilience_core::sink::Sink;
        let key = "failovers/20270101T000000Z-b-0001/0000000001";
        copy.put(
            key,
            sink.get(key).await.unwrap(),
            resilience_core::sink::PutMode::Overwrite,
        )
        .await
        .unwrap();
        other.failovers().list().await.unwrap_err().to_string()
    };
    assert!(err.contains("failovers/20270101T000000Z-b-0001"), "{err}");
}
