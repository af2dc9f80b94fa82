//! Faults between the engine and S3: every operation run against Garage (started by
//! `scripts/test`) through the fault-injecting proxy of `fault_proxy`, which answers `500`,
//! `503 SlowDown`, resets connections before the answer or in the middle of its body, cuts bodies
//! short under their full `Content-Length`, delays and stalls, as a seeded schedule decides.
//!
//! For each operation — init, backup, restore, verify (full), prune (both phases), forget,
//! replicate, bucket backup and restore, WAL push and fetch, key rotation — several rounds, each
//! at its own fault rate. A round either succeeds, and then, read without the proxy, the
//! repository verifies sound (`verify --full`) and every acknowledged snapshot restores
//! identical; or fails with an error whose text (with its sources) names the object and the
//! cause, and the repository still opens and verifies sound without the proxy. Every operation
//! runs under a timeout far above the documented bound of the store client's retries
//! (`resilience-objstore/src/config/client.rs`, `retry`): a hang fails the test.
//!
//! The client's request timeout is shortened to [`CLIENT_TIMEOUT`] (`AWS_TIMEOUT`) so that a
//! stall costs seconds, not the default 30 s. `RESILIENCE_TEST_SEED` picks another schedule (the
//! seed is printed); `RESILIENCE_TEST_LONG=1` (`scripts/test --long`) runs
//! [`LONG_ROUNDS`] rounds per operation instead of [`ROUNDS`].

mod common;
mod fault_proxy;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use fault_proxy::{Counts, FaultProxy, FaultSchedule};
use futures::TryStreamExt;
use resilience_core::catalog::{BackupStatus, Catalog};
use resilience_core::error::error_chain;
use resilience_core::keys::KeyFileProvider;
use resilience_core::ops::prune::PruneOptions;
use resilience_core::ops::replicate::{replicate, ReplicateOptions};
use resilience_core::ops::verify::VerifyOptions;
use resilience_core::repo::{InitOptions, Repository};
use resilience_core::retention::{self, StandardPolicy};
use resilience_core::sink::{PutMode, Sink};
use resilience_core::testing::{pseudo_random as data, MemorySource, MemoryTarget};
use resilience_objstore::bucket::{BucketRestoreOptions, BucketSource, BucketTarget};
use resilience_objstore::open_sink;

const KEY: [u8; 32] = [0x5a; 32];

/// The store client's request timeout in these tests (`AWS_TIMEOUT`): a stall is cut after it.
const CLIENT_TIMEOUT: &str = "1500ms";
/// How long the proxy stalls: longer than [`CLIENT_TIMEOUT`].
const STALL: Duration = Duration::from_secs(4);
/// The bound every operation must return within. One request of the store client returns within
/// min(6 × 1.5 s + 3.1 s, 121.6 s + 1.5 s) ≈ 12 s with [`CLIENT_TIMEOUT`] (see `retry` in
/// `config/client.rs`); an operation makes tens of them, most answered at once.
const OPERATION_BOUND: Duration = Duration::from_secs(180);
/// Rounds per operation by default (each at the next of [`RATES`]).
const ROUNDS: usize = 3;
/// Rounds per operation with `RESILIENCE_TEST_LONG`.
const LONG_ROUNDS: usize = 12;
/// The fault rate of each round, in turn: a few faults, many, nearly every request.
const RATES: [f64; 3] = [0.1, 0.35, 0.9];

/// What a test run sees, printed at its end.
#[derive(Default)]
struct Tally {
    counts: Counts,
    ok: usize,
    err: usize,
    /// Locks found left behind after a round (and removed, as their expiry would).
    stale_locks: usize,
    /// Failed forgets after which verify named a record whose manifest is gone (until the
    /// second forget that finishes it).
    forget_left_damage: usize,
}

/// One operation's rounds: the Garage prefix it works in, and the proxy of the current round.
struct Run {
    name: &'static str,
    seed: u64,
    /// `s3://bucket/prefix` of this run (reached directly, without the proxy).
    base: String,
    tally: Tally,
    started: Instant,
}

impl Run {
    fn new(name: &'static str) -> Run {
        let seed = fault_proxy::test_seed(0x5eed);
        // Each operation its own schedule, from the one seed.
        let seed = seed ^ name.bytes().fold(0u64, |h, b| h.rotate_left(5) ^ b as u64);
        Run {
            name,
            seed,
            base: common::garage_url(&format!("faults-{name}")),
            tally: Tally::default(),
            started: Instant::now(),
        }
    }

    fn rounds(&self) -> usize {
        if std::env::var_os("RESILIENCE_TEST_LONG").is_some() {
            LONG_ROUNDS
        } else {
            ROUNDS
        }
    }

    /// The proxy of round `round`, with its own seed and rate.
    async fn proxy(&self, round: usize) -> FaultProxy {
        let rate = RATES[round % RATES.len()];
        let seed = self.seed.wrapping_add(round as u64);
        eprintln!(
            "{}: round {round}, fault rate {rate}, schedule seed {seed}",
            self.name
        );
        let upstream = std::env::var("AWS_ENDPOINT_URL").expect("AWS_ENDPOINT_URL");
        FaultProxy::start(&upstream, FaultSchedule::new(seed, rate), STALL).await
    }

    /// The URL of `sub` below this run's prefix, directly.
    fn direct(&self, sub: &str) -> String {
        format!("{}/{sub}", self.base)
    }

    /// The URL of `sub` below this run's prefix, through `proxy`.
    fn proxied(&self, proxy: &FaultProxy, sub: &str) -> String {
        format!("{}/{sub}?endpoint={}", self.base, proxy.endpoint())
    }

    /// Records an outcome: an `Ok`, or an error that must name the object and the cause.
    fn outcome<T, E: std::error::Error>(
        &mut self,
        what: &str,
        proxy: &FaultProxy,
        result: &Result<T, E>,
    ) {
        match result {
            Ok(_) => self.tally.ok += 1,
            Err(e) => {
                self.tally.err += 1;
                let text = error_chain(e);
                eprintln!("{}: {what} failed: {text}", self.name);
                assert_named(what, &text, proxy);
            }
        }
    }

    fn finish_round(&mut self, proxy: &FaultProxy) {
        self.tally.counts.add(&proxy.counts());
        proxy.take_log();
    }

    fn report(&self) {
        let t = &self.tally;
        eprintln!(
            "FAULTS {}: {} rounds, {} Ok, {} Err; {}; {} stale lock(s) removed{}; {:.1} s",
            self.name,
            self.rounds(),
            t.ok,
            t.err,
            t.counts,
            t.stale_locks,
            if t.forget_left_damage > 0 {
                format!(
                    "; {} failed forget(s) left a record verify names until forget ran again",
                    t.forget_left_damage
                )
            } else {
                String::new()
            },
            self.started.elapsed().as_secs_f64()
        );
    }
}

/// What names an object in an error: a repository key (a sink error says "… of object KEY in
/// LOCATION"), a bucket object (`obj-…`), or the bucket a failed listing of it names (its URL
/// ends in `/bucket`).
const OBJECT_MARKERS: [&str; 12] = [
    "object ",
    "data/",
    "index/",
    "snapshots/",
    "catalog/",
    "locks/",
    "keys/",
    "prune/",
    "wal/",
    "config",
    "/bucket",
    "obj-",
];
/// What names a transport cause. ("request or response body error" is all the bucket adapter
/// keeps of a body cut short: it flattens the error to its first two messages.)
const CAUSES: [&str; 15] = [
    "500",
    "503",
    "slowdown",
    "internalerror",
    "reset",
    "timed out",
    "timeout",
    "error sending request",
    "connection",
    "closed",
    "end of file",
    "incomplete",
    "error decoding",
    "no progress",
    "body error",
];

fn assert_named(what: &str, text: &str, proxy: &FaultProxy) {
    let lower = text.to_lowercase();
    let object = OBJECT_MARKERS.iter().any(|m| text.contains(m));
    let cause = CAUSES.iter().any(|c| lower.contains(c));
    assert!(
        object && cause,
        "{what} failed without naming {}: {text}\nfaults injected:\n{}",
        match (object, cause) {
            (false, false) => "the object or the cause",
            (false, true) => "the object",
            _ => "the cause",
        },
        proxy.take_log().join("\n")
    );
}

/// `fut`, or a failure naming it if it runs past [`OPERATION_BOUND`].
async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let out = tokio::time::timeout(OPERATION_BOUND, fut)
        .await
        .unwrap_or_else(|_| panic!("HANG: {what} did not return within {OPERATION_BOUND:?}"));
    let took = started.elapsed();
    if took > Duration::from_secs(30) {
        eprintln!("{what} took {:.1} s", took.as_secs_f64());
    }
    out
}

/// Runs a test: the client's request timeout shortened (before any client or thread exists),
/// then `body` on a runtime.
fn run<F: Future<Output = ()>>(body: impl FnOnce() -> F) {
    // Set before the runtime starts: nothing else reads the environment yet.
    std::env::set_var("AWS_TIMEOUT", CLIENT_TIMEOUT);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(body());
}

fn sink(url: &str) -> Arc<dyn Sink> {
    open_sink(url).unwrap_or_else(|e| panic!("{url}: {e}"))
}

fn key() -> KeyFileProvider {
    KeyFileProvider::from_key(KEY)
}

fn init_options() -> InitOptions {
    InitOptions {
        pack_size: 256 << 10,
        ..Default::default()
    }
}

async fn init(url: &str) -> Repository {
    Repository::init(sink(url), &key(), init_options())
        .await
        .unwrap_or_else(|e| panic!("init {url}: {e}"))
}

async fn open(url: &str) -> Repository {
    Repository::open(sink(url), &key())
        .await
        .unwrap_or_else(|e| panic!("{url} does not open without the proxy: {}", error_chain(&e)))
}

/// The files of snapshot `seed`: some shared by every snapshot (deduplicated), some its own,
/// across several packs.
fn files(seed: u64) -> Vec<(String, Vec<u8>)> {
    vec![
        ("shared/a".into(), data(300 << 10, 1)),
        ("shared/empty".into(), Vec::new()),
        (format!("own/{seed}/b"), data(200 << 10, seed * 10 + 2)),
        (format!("own/{seed}/c"), data(3000, seed * 10 + 3)),
    ]
}

fn source(seed: u64) -> MemorySource {
    files(seed)
        .into_iter()
        .fold(MemorySource::new("app"), |s, (p, c)| s.file(&p, c))
}

/// Restores `id` into memory: `Ok` only with every file identical (wrong bytes panic).
async fn restore_checked(repo: &Repository, id: &str, seed: u64) -> resilience_core::Result<()> {
    let target = MemoryTarget::new();
    repo.restore(id, &target, Default::default()).await?;
    for (path, content) in files(seed) {
        assert!(
            target.content(&path).as_deref() == Some(&content[..]),
            "WRONG BYTES: snapshot {id} restored Ok with {path} different"
        );
    }
    Ok(())
}

/// Removes the locks left in `url` (by an operation whose release failed; they would expire),
/// counting them.
async fn clear_stale_locks(url: &str, tally: &mut Tally) {
    let store = sink(url);
    let left: Vec<String> = store
        .list("locks/")
        .map_ok(|m| m.key)
        .try_collect()
        .await
        .unwrap();
    for key in &left {
        store.delete(key).await.unwrap();
    }
    if !left.is_empty() {
        eprintln!("stale locks removed: {left:?}");
    }
    tally.stale_locks += left.len();
}

/// Without the proxy: the repository opens, verifies sound in full, and every acknowledged
/// snapshot restores identical.
async fn assert_sound(url: &str, acknowledged: &[(String, u64)], tally: &mut Tally) {
    clear_stale_locks(url, tally).await;
    bounded("the check without the proxy", async {
        let repo = open(url).await;
        let report = repo.verify(VerifyOptions { full: true }).await.unwrap();
        assert!(
            report.is_ok(),
            "{url} does not verify sound: {:#?}",
            report.damaged
        );
        for (id, seed) in acknowledged {
            restore_checked(&repo, id, *seed)
                .await
                .unwrap_or_else(|e| panic!("acknowledged snapshot {id}: {}", error_chain(&e)));
        }
    })
    .await;
}

/// A repository at `url` with `n` snapshots, made without the proxy.
async fn seeded_repo(url: &str, n: u64) -> Vec<(String, u64)> {
    let repo = init(url).await;
    let mut acked = Vec::new();
    for seed in 1..=n {
        let r = repo
            .backup(&source(seed), Default::default())
            .await
            .unwrap();
        acked.push((r.record.id, seed));
    }
    acked
}

#[test]
fn faults_init() {
    run(|| async {
        let mut run = Run::new("init");
        for round in 0..run.rounds() {
            let proxy = run.proxy(round).await;
            let sub = format!("r{round}");
            let result = bounded(
                "init",
                Repository::init(sink(&run.proxied(&proxy, &sub)), &key(), init_options()),
            )
            .await;
            run.outcome("init", &proxy, &result);
            run.finish_round(&proxy);
            let direct = run.direct(&sub);
            match result {
                Ok(_) => assert_sound(&direct, &[], &mut run.tally).await,
                Err(_) => {
                    // Either no repository, or one that opens and is sound.
                    if Repository::exists(sink(&direct).as_ref()).await.unwrap() {
                        assert_sound(&direct, &[], &mut run.tally).await;
                    }
                }
            }
        }
        run.report();
    });
}

#[test]
fn faults_backup() {
    run(|| async {
        let mut run = Run::new("backup");
        let url = run.direct("repo");
        init(&url).await;
        let mut acked = Vec::new();
        for round in 0..run.rounds() {
            let proxy = run.proxy(round).await;
            let seed = round as u64 + 1;
            let result = bounded("backup", async {
                let repo = Repository::open(sink(&run.proxied(&proxy, "repo")), &key()).await?;
                repo.backup(&source(seed), Default::default()).await
            })
            .await;
            run.outcome("backup", &proxy, &result);
            run.finish_round(&proxy);
            if let Ok(report) = result {
                acked.push((report.record.id, seed));
            }
            assert_sound(&url, &acked, &mut run.tally).await;
        }
        run.report();
    });
}

#[test]
fn faults_restore() {
    run(|| async {
        let mut run = Run::new("restore");
        let url = run.direct("repo");
        let acked = seeded_repo(&url, 2).await;
        for round in 0..run.rounds() {
            let proxy = run.proxy(round).await;
            let (id, seed) = &acked[round % acked.len()];
            let result = bounded("restore", async {
                let repo = Repository::open(sink(&run.proxied(&proxy, "repo")), &key()).await?;
                restore_checked(&repo, id, *seed).await
            })
            .await;
            run.outcome("restore", &proxy, &result);
            run.finish_round(&proxy);
            assert_sound(&url, &acked, &mut run.tally).await;
        }
        run.report();
    });
}

#[test]
fn faults_verify() {
    run(|| async {
        let mut run = Run::new("verify");
        let url = run.direct("repo");
        let acked = seeded_repo(&url, 2).await;
        for round in 0..run.rounds() {
            let proxy = run.proxy(round).await;
            let result = bounded("verify --full", async {
                let repo = Repository::open(sink(&run.proxied(&proxy, "repo")), &key()).await?;
                repo.verify(VerifyOptions { full: true }).await
            })
            .await;
            run.outcome("verify --full", &proxy, &result);
            if let Ok(report) = &result {
                // The repository is sound: damage reported here came from the transport.
                for d in &report.damaged {
                    eprintln!(
                        "verify: {} reported damaged ({}) by faults alone",
                        d.object, d.problem
                    );
                    assert_named("verify (a damaged object)", &d.problem, &proxy);
                }
                assert!(
                    report.is_ok(),
                    "verify through faults reported a sound repository damaged: {:#?}",
                    report.damaged
                );
            }
            run.finish_round(&proxy);
            assert_sound(&url, &acked, &mut run.tally).await;
        }
        run.report();
    });
}

fn prune_now() -> PruneOptions {
    PruneOptions {
        grace: Duration::ZERO,
        ..Default::default()
    }
}

/// Expires every snapshot but the newest, without the proxy; returns the one kept.
async fn forget_all_but_newest(repo: &Repository, acked: &mut Vec<(String, u64)>) {
    let records = repo.catalog().list(&Default::default()).await.unwrap();
    let plan = retention::plan(
        &StandardPolicy::from_toml("keep_last = 1").unwrap(),
        &records,
        Utc::now(),
    );
    repo.forget(&plan).await.unwrap();
    acked.drain(..acked.len().saturating_sub(1));
}

#[test]
fn faults_prune() {
    run(|| async {
        let mut run = Run::new("prune");
        let url = run.direct("repo");
        let mut acked = seeded_repo(&url, 1).await;
        let (mut condemned, mut deleted) = (0, 0);
        for round in 0..run.rounds() {
            // Garbage for this round: a new snapshot, the older ones expired.
            {
                let repo = open(&url).await;
                let seed = round as u64 + 2;
                let r = repo
                    .backup(&source(seed), Default::default())
                    .await
                    .unwrap();
                acked.push((r.record.id, seed));
                forget_all_but_newest(&repo, &mut acked).await;
            }
            let proxy = run.proxy(round).await;
            // Phase 1 (condemn, plan), then phase 2 (the plan is ripe at once: delete).
            for phase in ["prune (phase 1)", "prune (phase 2)"] {
                let result = bounded(phase, async {
                    let repo = Repository::open(sink(&run.proxied(&proxy, "repo")), &key()).await?;
                    repo.prune(prune_now()).await
                })
                .await;
                run.outcome(phase, &proxy, &result);
                if let Ok(report) = &result {
                    condemned += report.condemned_packs;
                    deleted += report.deleted_packs;
                }
                clear_stale_locks(&url, &mut run.tally).await;
            }
            run.finish_round(&proxy);
            assert_sound(&url, &acked, &mut run.tally).await;
        }
        // Without faults, prune finishes what the rounds left: still sound.
        for _ in 0..2 {
            open(&url).await.prune(prune_now()).await.unwrap();
        }
        assert_sound(&url, &acked, &mut run.tally).await;
        eprintln!("prune through faults: {condemned} pack(s) condemned (phase 1), {deleted} deleted (phase 2)");
        run.report();
    });
}

#[test]
fn faults_forget() {
    run(|| async {
        let mut run = Run::new("forget");
        let url = run.direct("repo");
        let mut acked = seeded_repo(&url, 1).await;
        for round in 0..run.rounds() {
            {
                let repo = open(&url).await;
                for seed in [10 * round as u64 + 2, 10 * round as u64 + 3] {
                    let r = repo
                        .backup(&source(seed), Default::default())
                        .await
                        .unwrap();
                    acked.push((r.record.id, seed));
                }
            }
            let proxy = run.proxy(round).await;
            let result = bounded("forget", async {
                let repo = Repository::open(sink(&run.proxied(&proxy, "repo")), &key()).await?;
                let records = repo.catalog().list(&Default::default()).await?;
                let plan = retention::plan(
                    &StandardPolicy::from_toml("keep_last = 1").unwrap(),
                    &records,
                    Utc::now(),
                );
                repo.forget(&plan).await
            })
            .await;
            run.outcome("forget", &proxy, &result);
            run.finish_round(&proxy);
            clear_stale_locks(&url, &mut run.tally).await;
            let repo = open(&url).await;
            if result.is_err() {
                let before = repo.verify(VerifyOptions::default()).await.unwrap();
                run.tally.forget_left_damage += usize::from(!before.is_ok());
                for d in &before.damaged {
                    eprintln!(
                        "forget: after the failed forget, verify names {}: {}",
                        d.object, d.problem
                    );
                }
                // A forget cut short between a manifest's deletion and its record's expiry
                // leaves a record verify names; a second forget finishes it (documented in
                // `forget`): run it, without faults, as an operator would.
                forget_all_but_newest(&repo, &mut acked).await;
            }
            // Every snapshot still listed succeeded is promised; the others were forgotten.
            let records = repo.catalog().list(&Default::default()).await.unwrap();
            acked.retain(|(id, _)| {
                records
                    .iter()
                    .any(|r| &r.id == id && r.status == BackupStatus::Succeeded)
            });
            assert!(!acked.is_empty(), "the newest snapshot is never forgotten");
            assert_sound(&url, &acked, &mut run.tally).await;
        }
        run.report();
    });
}

#[test]
fn faults_replicate() {
    run(|| async {
        let mut run = Run::new("replicate");
        let url = run.direct("source");
        let replica_url = run.direct("replica");
        let mut acked = seeded_repo(&url, 1).await;
        for round in 0..run.rounds() {
            {
                let seed = round as u64 + 2;
                let r = open(&url)
                    .await
                    .backup(&source(seed), Default::default())
                    .await
                    .unwrap();
                acked.push((r.record.id, seed));
            }
            let proxy = run.proxy(round).await;
            // Both ends through the proxy: reads of the source, streamed puts to the replica.
            let from = sink(&run.proxied(&proxy, "source"));
            let to = sink(&run.proxied(&proxy, "replica"));
            let result = bounded(
                "replicate",
                replicate(from.as_ref(), to.as_ref(), &ReplicateOptions::default()),
            )
            .await;
            run.outcome("replicate", &proxy, &result);
            run.finish_round(&proxy);
            assert_sound(&url, &acked, &mut run.tally).await;
            match &result {
                // Every snapshot the source had is on the replica, identical.
                Ok(_) => assert_sound(&replica_url, &acked, &mut run.tally).await,
                // What the replica holds so far is sound (once it is a repository).
                Err(_) => {
                    if Repository::exists(sink(&replica_url).as_ref())
                        .await
                        .unwrap()
                    {
                        let replica = open(&replica_url).await;
                        let listed = replica.catalog().list(&Default::default()).await.unwrap();
                        let there: Vec<(String, u64)> = acked
                            .iter()
                            .filter(|(id, _)| {
                                listed
                                    .iter()
                                    .any(|r| &r.id == id && r.status == BackupStatus::Succeeded)
                            })
                            .cloned()
                            .collect();
                        assert_sound(&replica_url, &there, &mut run.tally).await;
                    }
                }
            }
        }
        run.report();
    });
}

/// The objects of the source bucket after round `round` (each round adds one and rewrites one).
fn bucket_objects(round: usize) -> BTreeMap<String, Vec<u8>> {
    let mut objects = BTreeMap::new();
    objects.insert("obj-empty".to_owned(), Vec::new());
    objects.insert(
        "obj-dir/rewritten".to_owned(),
        data(150 << 10, 1000 + round as u64),
    );
    for r in 0..=round {
        objects.insert(format!("obj-{r}"), data(100 << 10 | r, 2000 + r as u64));
    }
    objects
}

async fn bucket_contents(url: &str) -> BTreeMap<String, Vec<u8>> {
    let store = sink(url);
    let keys: Vec<String> = store
        .list("")
        .map_ok(|m| m.key)
        .try_collect()
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for k in keys {
        let body = store.get(&k).await.unwrap();
        out.insert(k, body.to_vec());
    }
    out
}

#[test]
fn faults_bucket_backup_and_restore() {
    run(|| async {
        let mut run = Run::new("bucket");
        let url = run.direct("repo");
        init(&url).await;
        let bucket = run.direct("bucket");
        let mut acked: Vec<(String, BTreeMap<String, Vec<u8>>)> = Vec::new();
        let mut checked = 0;
        for round in 0..run.rounds() {
            let objects = bucket_objects(round);
            {
                let store = sink(&bucket);
                for (k, v) in &objects {
                    store
                        .put(k, Bytes::from(v.clone()), PutMode::Overwrite)
                        .await
                        .unwrap();
                }
            }
            let proxy = run.proxy(round).await;
            let backup = bounded("bucket backup", async {
                let repo = Repository::open(sink(&run.proxied(&proxy, "repo")), &key()).await?;
                let src = BucketSource::new(run.proxied(&proxy, "bucket")).with_id("bucket");
                repo.backup(&src, Default::default()).await
            })
            .await;
            run.outcome("bucket backup", &proxy, &backup);
            if let Ok(report) = backup {
                acked.push((report.record.id, objects));
            }
            if let Some((id, expected)) = acked.last() {
                let target_sub = format!("restored-{round}");
                let restore = bounded("bucket restore", async {
                    let repo = Repository::open(sink(&run.proxied(&proxy, "repo")), &key()).await?;
                    let target = BucketTarget::new(
                        &run.proxied(&proxy, &target_sub),
                        BucketRestoreOptions::default(),
                    )
                    .expect("target");
                    repo.restore(id, &target, Default::default()).await
                })
                .await;
                run.outcome("bucket restore", &proxy, &restore);
                if restore.is_ok() {
                    let got = bucket_contents(&run.direct(&target_sub)).await;
                    assert!(
                        &got == expected,
                        "WRONG OBJECTS: bucket restore of {id} returned Ok with {:?}, expected {:?}",
                        got.keys().collect::<Vec<_>>(),
                        expected.keys().collect::<Vec<_>>()
                    );
                }
            }
            run.finish_round(&proxy);
            assert_sound(&url, &[], &mut run.tally).await;
            // The snapshot this round acknowledged restores identical without the proxy (and
            // every one, after the last round).
            let last = round + 1 == run.rounds();
            let newly = usize::from(acked.len() > checked);
            let check = if last { 0 } else { acked.len() - newly };
            let repo = open(&url).await;
            for (i, (id, expected)) in acked.iter().enumerate().skip(check) {
                let sub = format!("check-{round}-{i}");
                let target =
                    BucketTarget::new(&run.direct(&sub), BucketRestoreOptions::default()).unwrap();
                bounded("bucket restore without the proxy", async {
                    repo.restore(id, &target, Default::default()).await
                })
                .await
                .unwrap_or_else(|e| panic!("acknowledged {id}: {}", error_chain(&e)));
                assert!(
                    &bucket_contents(&run.direct(&sub)).await == expected,
                    "acknowledged bucket snapshot {id} does not restore identical"
                );
            }
            checked = acked.len();
        }
        run.report();
    });
}

/// A WAL segment's name and bytes (not a real segment: archived without a summary).
fn segment(n: u64) -> (String, Bytes) {
    (
        format!("00000001{:016X}", n),
        Bytes::from(data(64 << 10, 5000 + n)),
    )
}

#[test]
fn faults_wal_push_and_fetch() {
    use resilience_pg::archive::{WalArchive, DEFAULT_SOURCE};
    run(|| async {
        let mut run = Run::new("wal");
        let url = run.direct("repo");
        init(&url).await;
        let mut pushed: Vec<u64> = Vec::new();
        let per_round = 4;
        for round in 0..run.rounds() {
            let proxy = run.proxy(round).await;
            let repo = bounded(
                "open",
                Repository::open(sink(&run.proxied(&proxy, "repo")), &key()),
            )
            .await;
            run.outcome("open for wal-push", &proxy, &repo);
            let Ok(repo) = repo else {
                run.finish_round(&proxy);
                continue;
            };
            let archive = WalArchive::new(&repo, DEFAULT_SOURCE).unwrap();
            let direct = WalArchive::new(&open(&url).await, DEFAULT_SOURCE).unwrap();
            for i in 0..per_round {
                let n = (round * per_round + i) as u64 + 1;
                let (name, bytes) = segment(n);
                let result = bounded("wal-push", archive.push(&name, bytes.clone())).await;
                run.outcome("wal-push", &proxy, &result);
                if result.is_err() {
                    // Postgres runs archive_command again: the second push stores it, or finds
                    // the first one's bytes there.
                    direct
                        .push(&name, bytes.clone())
                        .await
                        .unwrap_or_else(|e| panic!("wal-push again of {name}: {e}"));
                }
                pushed.push(n);
                // Acknowledged: stored, identical.
                let (_, back) = direct.fetch(&name).await.unwrap().expect("archived");
                assert_eq!(back, bytes, "{name} archived with other bytes");
            }
            for &n in pushed.iter().rev().take(3) {
                let (name, bytes) = segment(n);
                let result = bounded("wal-fetch", archive.fetch(&name)).await;
                run.outcome("wal-fetch", &proxy, &result);
                if let Ok(got) = result {
                    let (_, back) = got.unwrap_or_else(|| panic!("wal-fetch: {name} not found"));
                    assert_eq!(back, bytes, "WRONG BYTES: wal-fetch of {name}");
                }
            }
            run.finish_round(&proxy);
            assert_sound(&url, &[], &mut run.tally).await;
        }
        run.report();
    });
}

#[test]
fn faults_key_rotate() {
    run(|| async {
        let mut run = Run::new("rotate");
        let url = run.direct("repo");
        let mut acked = seeded_repo(&url, 1).await;
        for round in 0..run.rounds() {
            let proxy = run.proxy(round).await;
            let result = bounded("key rotate", async {
                let repo = Repository::open(sink(&run.proxied(&proxy, "repo")), &key()).await?;
                repo.rotate_keys().await
            })
            .await;
            run.outcome("key rotate", &proxy, &result);
            run.finish_round(&proxy);
            clear_stale_locks(&url, &mut run.tally).await;
            // Whatever generation is in force, the repository opens, writes and reads.
            let seed = round as u64 + 2;
            let r = open(&url)
                .await
                .backup(&source(seed), Default::default())
                .await
                .unwrap_or_else(|e| panic!("backup after the rotation: {}", error_chain(&e)));
            acked.push((r.record.id, seed));
            assert_sound(&url, &acked, &mut run.tally).await;
        }
        run.report();
    });
}

/// A server that never answers: every request through the proxy stalls (for an hour). Each
/// store request still returns, failed, within its documented bound (min(6·T + 3.1 s,
/// 121.6 s + T) with T = [`CLIENT_TIMEOUT`]), naming the object and the timeout; a streamed copy
/// to it fails after T without progress.
#[test]
fn faults_a_server_that_never_answers_is_cut_off_within_the_bounds() {
    use fault_proxy::Fault;
    run(|| async {
        let mut run = Run::new("stalled");
        let timeout = Duration::from_millis(1500);
        let bound = timeout * 6 + Duration::from_millis(3100);
        let direct = sink(&run.direct("objects"));
        let body = Bytes::from(data(300 << 10, 7));
        direct
            .put("o", body.clone(), PutMode::Overwrite)
            .await
            .unwrap();
        let upstream = std::env::var("AWS_ENDPOINT_URL").expect("AWS_ENDPOINT_URL");
        let proxy = FaultProxy::start(
            &upstream,
            FaultSchedule::always(run.seed, Fault::Stall),
            Duration::from_secs(3600),
        )
        .await;
        let stalled = sink(&run.proxied(&proxy, "objects"));

        let started = Instant::now();
        let got = bounded("a get from a stalled server", stalled.get("o")).await;
        let took = started.elapsed();
        run.outcome("get", &proxy, &got);
        assert!(got.is_err(), "a get from a server that never answers");
        assert!(
            took <= bound + Duration::from_secs(2),
            "the get took {took:?}, past its bound {bound:?}"
        );
        eprintln!("get from a stalled server: failed after {took:?} (bound {bound:?})");

        // A streamed copy (what replication sends to an S3 replica) of an object whose ETag is
        // its MD5.
        let origin = direct.head("o").await.unwrap();
        let started = Instant::now();
        let copied = bounded(
            "a streamed copy to a stalled server",
            stalled.put_copy(
                "copy",
                Box::pin(futures::stream::iter([Ok(body.clone())])),
                &origin,
            ),
        )
        .await;
        let took = started.elapsed();
        run.outcome("streamed copy", &proxy, &copied);
        let err = copied.expect_err("a copy to a server that never answers");
        assert!(err.to_string().contains("no progress"), "{err}");
        assert!(
            took <= timeout + Duration::from_secs(2),
            "the streamed copy took {took:?}, past {timeout:?} without progress"
        );
        eprintln!("streamed copy to a stalled server: failed after {took:?}");
        eprintln!("FAULTS stalled: {}", proxy.counts());
    });
}
