//! Concurrent `wal-push` of one segment name against Garage, which ignores `If-None-Match` (a
//! create-only put overwrites silently): of two pushes of different bytes at most one is
//! acknowledged, and the archive holds exactly the acknowledged bytes (or nothing, when both
//! backed off); pushes of the same bytes both succeed; pushes of different segments at once
//! never interfere. Each push runs over its own repository handle and store client, as two
//! `archive_command` processes would.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use resilience_core::keys::KeyFileProvider;
use resilience_core::repo::{InitOptions, Repository};
use resilience_core::sink::Sink;
use resilience_core::testing::pseudo_random;
use resilience_objstore::open_sink;
use resilience_pg::archive::{PushOutcome, WalArchive, DEFAULT_SOURCE};
use resilience_pg::PgError;

/// Rounds of each race.
const ROUNDS: u64 = 24;

fn key() -> KeyFileProvider {
    KeyFileProvider::from_key([9; 32])
}

/// A fresh archive on Garage; returns its URL.
async fn archive_url(name: &str) -> String {
    let url = common::garage_url(name);
    Repository::init(open_sink(&url).unwrap(), &key(), InitOptions::default())
        .await
        .unwrap();
    url
}

/// An archive handle of its own (its own store client), as a separate process has.
async fn handle(url: &str) -> WalArchive {
    let repo = Repository::open(open_sink(url).unwrap(), &key())
        .await
        .unwrap();
    WalArchive::new(&repo, DEFAULT_SOURCE).unwrap()
}

fn segment_name(n: u64) -> String {
    format!("00000001{n:016X}")
}

fn segment(seed: u64) -> Bytes {
    Bytes::from(pseudo_random(256 << 10, seed))
}

/// Pushes every `(archive, bytes)` of `name` at the same moment.
async fn race(pushes: Vec<(WalArchive, Bytes)>, name: &str) -> Vec<Result<PushOutcome, PgError>> {
    let start = Arc::new(tokio::sync::Barrier::new(pushes.len()));
    let tasks: Vec<_> = pushes
        .into_iter()
        .map(|(archive, bytes)| {
            let start = start.clone();
            let name = name.to_owned();
            tokio::spawn(async move {
                start.wait().await;
                archive.push(&name, bytes).await
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// No claim is left once every push has returned.
async fn assert_no_claims(url: &str) {
    let sink = open_sink(url).unwrap();
    let claims: Vec<String> = sink
        .list(&format!("wal/{DEFAULT_SOURCE}/claims/"))
        .map_ok(|m| m.key)
        .try_collect()
        .await
        .unwrap();
    assert!(claims.is_empty(), "claims left behind: {claims:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_two_pushes_of_different_bytes_at_most_one_is_acknowledged() {
    let url = archive_url("wal-race-different").await;
    let check = handle(&url).await;
    let mut won = 0;
    for round in 0..ROUNDS {
        let name = segment_name(round + 1);
        let (a, b) = (segment(2 * round), segment(2 * round + 1));
        let results = race(
            vec![
                (handle(&url).await, a.clone()),
                (handle(&url).await, b.clone()),
            ],
            &name,
        )
        .await;
        let acked: Vec<&Bytes> = results
            .iter()
            .zip([&a, &b])
            .filter(|(r, _)| r.is_ok())
            .map(|(_, bytes)| bytes)
            .collect();
        assert!(
            acked.len() <= 1,
            "round {round}: both pushes of {name} were acknowledged"
        );
        for r in &results {
            if let Err(e) = r {
                assert!(
                    matches!(
                        e,
                        PgError::WalPushContended { .. } | PgError::WalConflict { .. }
                    ) && e.to_string().contains(&name),
                    "round {round}: {e}"
                );
            }
        }
        let stored = check.fetch(&name).await.unwrap().map(|(_, bytes)| bytes);
        match acked.first() {
            Some(bytes) => {
                won += 1;
                assert_eq!(
                    stored.as_ref(),
                    Some(*bytes),
                    "round {round}: {name} holds other bytes than the acknowledged push's"
                );
            }
            None => assert!(
                stored.is_none(),
                "round {round}: {name} was archived though no push was acknowledged"
            ),
        }
    }
    eprintln!("{won} of {ROUNDS} races had a winner; the others backed off both");
    assert_no_claims(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_pushes_of_the_same_bytes_both_succeed() {
    let url = archive_url("wal-race-same").await;
    let check = handle(&url).await;
    for round in 0..ROUNDS {
        let name = segment_name(round + 1);
        let bytes = segment(round);
        let results = race(
            vec![
                (handle(&url).await, bytes.clone()),
                (handle(&url).await, bytes.clone()),
            ],
            &name,
        )
        .await;
        for r in results {
            r.unwrap_or_else(|e| panic!("round {round}: a push of the same bytes failed: {e}"));
        }
        let (_, stored) = check.fetch(&name).await.unwrap().expect("archived");
        assert_eq!(stored, bytes, "round {round}");
    }
    assert_no_claims(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushes_of_different_segments_at_once_never_interfere() {
    let url = archive_url("wal-race-segments").await;
    let start = Arc::new(tokio::sync::Barrier::new(8));
    let mut tasks = Vec::new();
    for n in 1..=8u64 {
        let archive = handle(&url).await;
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            archive.push(&segment_name(n), segment(100 + n)).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(
            t.await
                .unwrap()
                .unwrap_or_else(|e| panic!("segment {}: {e}", i + 1)),
            PushOutcome::Stored
        );
    }
    let check = handle(&url).await;
    for n in 1..=8u64 {
        let (_, stored) = check
            .fetch(&segment_name(n))
            .await
            .unwrap()
            .expect("archived");
        assert_eq!(stored, segment(100 + n), "segment {n}");
    }
    assert_no_claims(&url).await;
}
