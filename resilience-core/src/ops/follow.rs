//! Replication that follows its source: a pass of [`replicate`](super::replicate::replicate)
//! every few seconds until stopped, so that the other region holds each WAL segment (and each
//! backup) within seconds of its archiving.
//!
//! Each pass lists the source and copies, in [`replicate`](super::replicate::replicate)'s order
//! (side archives such as Postgres' WAL first), every object the replica lacks, proving each
//! copy. The replica is listed once and then known from what the passes copied, and listed again
//! every [`FollowOptions::relist_every`] passes (its own prune, or a hand, may remove objects).
//! A pass that fails (a store unreachable, a copy refused) is reported and the next pass tries
//! again: a follower stops only when told to. A pass stopped half way is harmless: every copy is
//! whole or absent, and the next pass (or the next follower) copies the rest.
//!
//! Its measure of lag is [`FollowSummary::caught_up_to`]: the moment the source was listed by
//! the newest pass that left nothing behind. The replica holds every object the source held
//! then, so `now - caught_up_to` bounds what a failover to the replica would lose.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::ops::replicate::{listing, replicate_onto, ReplicateOptions, ReplicationReport};
use crate::sink::{ObjectMeta, Sink};
use crate::time::stop::StopSignal;

/// How a follower paces itself.
#[derive(Clone, Debug)]
pub struct FollowOptions {
    /// From the start of one pass to the start of the next; a pass that takes longer is followed
    /// at once.
    pub interval: Duration,
    /// The replica is listed again every this many passes (between them, what the passes copied
    /// is trusted).
    pub relist_every: u32,
}

impl Default for FollowOptions {
    fn default() -> Self {
        FollowOptions {
            interval: Duration::from_secs(2),
            relist_every: 150,
        }
    }
}

/// One pass of a follower, as it is reported.
#[derive(Debug)]
pub struct FollowPass<'a> {
    /// Its number, from 1.
    pub number: u64,
    /// When it listed the source.
    pub listed_at: DateTime<Utc>,
    /// What it copied, or why it failed.
    pub outcome: &'a Result<ReplicationReport>,
    /// The moment the replica is known to hold everything the source held, after this pass.
    pub caught_up_to: Option<DateTime<Utc>>,
}

/// What a follower did, once stopped.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct FollowSummary {
    /// Passes run (a pass interrupted by the stop is not counted).
    pub passes: u64,
    /// Of them, the ones that failed.
    pub failed_passes: u64,
    /// Objects copied and proven, over all passes.
    pub copied_objects: u64,
    /// Their bytes.
    pub copied_bytes: u64,
    /// When the newest pass that left nothing behind listed the source.
    pub caught_up_to: Option<DateTime<Utc>>,
}

/// Replicates `source` to `replica` in passes `follow.interval` apart until `stop` fires, calling
/// `on_pass` after each. Returns an error only when `source` holds no repository; every other
/// failure is a failed pass, reported and retried.
pub async fn follow(
    source: &dyn Sink,
    replica: &dyn Sink,
    options: &ReplicateOptions,
    follow: &FollowOptions,
    stop: &StopSignal,
    on_pass: &mut (dyn FnMut(&FollowPass<'_>) + Send),
) -> Result<FollowSummary> {
    match source.head("config").await {
        Err(e) if e.is_not_found() => {
            return Err(Error::RepositoryNotFound {
                location: source.location(),
            })
        }
        _ => {}
    }
    let mut summary = FollowSummary::default();
    let mut known: Option<HashMap<String, ObjectMeta>> = None;
    let relist_every = u64::from(follow.relist_every.max(1));
    loop {
        if stop.is_stopped() {
            return Ok(summary);
        }
        let began = Instant::now();
        let number = summary.passes + 1;
        if number.is_multiple_of(relist_every) {
            known = None;
        }
        let listed_at = Utc::now();
        let pass = async {
            let have = match &mut known {
                Some(have) => have,
                None => known.insert(listing(replica).await?),
            };
            replicate_onto(source, replica, have, options).await
        };
        let outcome = tokio::select! {
            outcome = pass => outcome,
            _ = stop.stopped() => return Ok(summary),
        };
        summary.passes = number;
        match &outcome {
            Ok(report) => {
                summary.copied_objects += report.copied_objects;
                summary.copied_bytes += report.copied_bytes;
                if report.lag_after.objects == 0 {
                    summary.caught_up_to = Some(listed_at);
                }
            }
            Err(e) => {
                summary.failed_passes += 1;
                // What the replica holds after a failed pass is unknown: list it again.
                known = None;
                tracing::warn!(pass = number, error = %e, "replication pass failed; trying again");
            }
        }
        on_pass(&FollowPass {
            number,
            listed_at,
            outcome: &outcome,
            caught_up_to: summary.caught_up_to,
        });
        let rest = follow.interval.saturating_sub(began.elapsed());
        tokio::select! {
            _ = tokio::time::sleep(rest) => {}
            _ = stop.stopped() => return Ok(summary),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::{MemorySink, PutMode};
    use bytes::Bytes;
    use std::sync::{Arc, Mutex};

    async fn object(sink: &MemorySink, key: &str, body: &[u8]) {
        // Objects carry their own checksum, which replication checks as they pass.
        let mut sealed = body.to_vec();
        crate::format::object::append_checksum(&mut sealed);
        sink.put(key, Bytes::from(sealed), PutMode::Overwrite)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_follower_copies_what_appears_while_it_runs_and_stops_when_told() {
        let source = Arc::new(MemorySink::new());
        let replica = Arc::new(MemorySink::new());
        object(&source, "config", b"config").await;
        object(&source, "wal/pg/000000010000000000000001", b"one").await;
        let stop = StopSignal::new();
        let passes: Arc<Mutex<Vec<(u64, u64, bool)>>> = Arc::default();
        let run = {
            let (source, replica, stop, passes) = (
                source.clone(),
                replica.clone(),
                stop.clone(),
                passes.clone(),
            );
            tokio::spawn(async move {
                let follow_options = FollowOptions {
                    interval: Duration::from_millis(20),
                    relist_every: 3,
                };
                let mut on_pass = move |p: &FollowPass<'_>| {
                    let copied = p.outcome.as_ref().map_or(0, |r| r.copied_objects);
                    passes
                        .lock()
                        .unwrap()
                        .push((p.number, copied, p.caught_up_to.is_some()));
                };
                follow(
                    source.as_ref(),
                    replica.as_ref(),
                    &ReplicateOptions::default(),
                    &follow_options,
                    &stop,
                    &mut on_pass,
                )
                .await
            })
        };
        let wait_for = |key: &'static str| {
            let replica = replica.clone();
            async move {
                for _ in 0..500 {
                    if replica.head(key).await.is_ok() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                panic!("{key} never reached the replica");
            }
        };
        wait_for("wal/pg/000000010000000000000001").await;
        object(&source, "wal/pg/000000010000000000000002", b"two").await;
        wait_for("wal/pg/000000010000000000000002").await;
        // Removed from the replica behind the follower's back: a relist notices.
        replica.delete("config").await.unwrap();
        wait_for("config").await;
        stop.stop("test over");
        let summary = tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("the follower stops when told")
            .unwrap()
            .unwrap();
        assert_eq!(summary.failed_passes, 0);
        assert_eq!(summary.copied_objects, 4, "config twice, two segments");
        assert!(summary.caught_up_to.is_some());
        let passes = passes.lock().unwrap();
        assert!(passes.len() >= 3, "{passes:?}");
        assert!(passes.iter().all(|(_, _, caught_up)| *caught_up));
    }

    #[tokio::test]
    async fn a_replica_that_refuses_writes_fails_passes_and_the_follower_goes_on_until_it_recovers()
    {
        use crate::testing::FaultySink;
        let source = Arc::new(MemorySink::new());
        object(&source, "config", b"config").await;
        object(&source, "wal/pg/000000010000000000000001", b"one").await;
        // Every write refused, as by a store that is down.
        let replica = Arc::new(FaultySink::new(MemorySink::new(), 0));
        let stop = StopSignal::new();
        let outcomes: Arc<Mutex<Vec<bool>>> = Arc::default();
        let run = {
            let (source, replica, stop, outcomes) = (
                source.clone(),
                replica.clone(),
                stop.clone(),
                outcomes.clone(),
            );
            tokio::spawn(async move {
                let follow_options = FollowOptions {
                    interval: Duration::from_millis(20),
                    relist_every: 1000,
                };
                let mut on_pass = move |p: &FollowPass<'_>| {
                    outcomes.lock().unwrap().push(p.outcome.is_ok());
                };
                follow(
                    source.as_ref(),
                    replica.as_ref(),
                    &ReplicateOptions::default(),
                    &follow_options,
                    &stop,
                    &mut on_pass,
                )
                .await
            })
        };
        let failed = || outcomes.lock().unwrap().iter().filter(|ok| !**ok).count();
        for _ in 0..1000 {
            if failed() >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            failed() >= 2,
            "passes fail while the replica refuses writes"
        );
        assert!(
            !run.is_finished(),
            "a failed pass does not end the follower"
        );
        replica.set_budget(-1); // the store is back
        for _ in 0..1000 {
            if replica
                .inner()
                .head("wal/pg/000000010000000000000001")
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.stop("test over");
        let summary = run.await.unwrap().unwrap();
        assert!(summary.failed_passes >= 2, "{summary:?}");
        assert!(summary.caught_up_to.is_some(), "{summary:?}");
        assert!(replica
            .inner()
            .head("wal/pg/000000010000000000000001")
            .await
            .is_ok());
        assert!(outcomes.lock().unwrap().last() == Some(&true));
    }

    #[tokio::test]
    async fn a_source_without_a_repository_is_an_error_not_an_endless_wait() {
        let source = MemorySink::new();
        let replica = MemorySink::new();
        let err = follow(
            &source,
            &replica,
            &ReplicateOptions::default(),
            &FollowOptions::default(),
            &StopSignal::new(),
            &mut |_| {},
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Error::RepositoryNotFound { .. }), "{err}");
    }
}
