//! Crash sweeps: backup, forget, prune, key rotation with rewrite, replication, index repair
//! and moves to the cold tier are each run
//! against a store that dies at its N-th put, get or delete, for every N until the operation completes.
//! After each death: the repository opens, a full verification is sound, every acknowledged
//! snapshot restores byte for byte, and running the operation again completes. The runs before
//! the last must have failed (else the sweep proved nothing).
//!
//! The default test run sweeps a seeded sample of the crash points: the first three and about
//! one in three after them (`RESILIENCE_TEST_SEED` picks which); `scripts/test --long`
//! (`RESILIENCE_TEST_LONG=1`) sweeps every one. A failure names the point, so it reproduces.
//!
//! A forget cut short after it deleted a manifest leaves a record that verification reports as
//! an expiry to finish (its journal says so), not as damage; a second forget finishes it.
//!
//! Torn puts (`On::TornPut`: the first half of the object stored, then death) are swept for
//! backup, prune and forget (not for the key rewrite, which replaces manifests in place and so
//! relies on the store's atomic put). No real store tears a put (S3 and Azure put atomically, the local
//! store renames a synced staging file), so a torn object stands for one that rotted as it was
//! written. Verification may then name it (and nothing else), since it cannot tell rot of an
//! acknowledged object from an unacknowledged one; the operation run again completes, the
//! remedy verification names (`repair index` for an index file, `repair catalog` for a catalog
//! revision) makes the repository sound, and a prune runs and leaves it sound.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use resilience_core::catalog::{BackupStatus, Catalog, CatalogQuery, Tier};
use resilience_core::keys::KeyFileProvider;
use resilience_core::ops::prune::PruneOptions;
use resilience_core::ops::repair::{RepairCatalogOptions, RepairIndexOptions};
use resilience_core::ops::replicate::{replicate, ReplicateOptions};
use resilience_core::ops::verify::VerifyOptions;
use resilience_core::repo::lock::LockSettings;
use resilience_core::repo::{InitOptions, Repository};
use resilience_core::retention::{self, StandardPolicy};
use resilience_core::sink::{ByteStream, Copied, MemorySink, ObjectMeta, PutMode, Sink, SinkError};
use resilience_core::testing::{pseudo_random as data, MemorySource, MemoryTarget};

/// Which store operation dies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum On {
    Put,
    TornPut,
    Get,
    Delete,
}

/// A store whose process dies at the N-th operation of one kind: that operation fails (a torn
/// put leaves the first half of its bytes first), and so does every operation after it.
#[derive(Debug)]
struct DyingSink {
    inner: Arc<MemorySink>,
    on: On,
    /// The operation that dies (0: none yet; see [`DyingSink::arm`]).
    at: AtomicU64,
    seen: AtomicU64,
    dead: AtomicBool,
    /// The object a torn put left half written.
    torn: std::sync::Mutex<Option<String>>,
}

impl DyingSink {
    fn new(inner: Arc<MemorySink>, on: On) -> Self {
        DyingSink {
            inner,
            on,
            at: AtomicU64::new(0),
            seen: AtomicU64::new(0),
            dead: AtomicBool::new(false),
            torn: Default::default(),
        }
    }

    /// From now on, the `at`-th operation of the sink's kind dies.
    fn arm(&self, at: u64) {
        self.seen.store(0, Ordering::SeqCst);
        self.at.store(at, Ordering::SeqCst);
    }

    fn died(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    fn torn(&self) -> Option<String> {
        self.torn.lock().unwrap().clone()
    }

    fn gone(&self, operation: &'static str, key: &str) -> SinkError {
        SinkError::Backend {
            operation,
            key: key.into(),
            location: self.inner.location(),
            source: "the process died".into(),
        }
    }

    /// Whether this operation is the one that dies (and from now on, every one).
    fn dies_now(&self, kind: On, operation: &'static str, key: &str) -> Result<bool, SinkError> {
        if self.died() {
            return Err(self.gone(operation, key));
        }
        let counts = kind == self.on || (kind == On::Put && self.on == On::TornPut);
        let at = self.at.load(Ordering::SeqCst);
        if counts && at > 0 && self.seen.fetch_add(1, Ordering::SeqCst) + 1 == at {
            self.dead.store(true, Ordering::SeqCst);
            return Ok(true);
        }
        Ok(false)
    }

    async fn put_bytes(&self, key: &str, data: Bytes, mode: PutMode) -> Result<(), SinkError> {
        if self.dies_now(On::Put, "put", key)? {
            if self.on == On::TornPut {
                let half = data.slice(..data.len() / 2);
                if self.inner.put(key, half, mode).await.is_ok() {
                    *self.torn.lock().unwrap() = Some(key.to_owned());
                }
            }
            return Err(self.gone("put", key));
        }
        self.inner.put(key, data, mode).await
    }
}

#[async_trait::async_trait]
impl Sink for DyingSink {
    fn location(&self) -> String {
        self.inner.location()
    }

    async fn put_stream(
        &self,
        key: &str,
        data: ByteStream,
        mode: PutMode,
    ) -> Result<u64, SinkError> {
        let chunks: Vec<Bytes> = data.try_collect().await?;
        let whole = Bytes::from(chunks.concat());
        let len = whole.len() as u64;
        self.put_bytes(key, whole, mode).await.map(|()| len)
    }

    async fn get_stream(&self, key: &str) -> Result<ByteStream, SinkError> {
        if self.dies_now(On::Get, "get", key)? {
            return Err(self.gone("get", key));
        }
        self.inner.get_stream(key).await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, SinkError> {
        if self.died() {
            return Err(self.gone("head", key));
        }
        self.inner.head(key).await
    }

    fn list(&self, prefix: &str) -> futures::stream::BoxStream<'_, Result<ObjectMeta, SinkError>> {
        if self.died() {
            let e = self.gone("list", prefix);
            return Box::pin(futures::stream::once(async move { Err(e) }));
        }
        self.inner.list(prefix)
    }

    async fn delete(&self, key: &str) -> Result<(), SinkError> {
        if self.dies_now(On::Delete, "delete", key)? {
            return Err(self.gone("delete", key));
        }
        self.inner.delete(key).await
    }

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<(), SinkError> {
        self.put_bytes(key, data, mode).await
    }

    async fn put_copy(
        &self,
        key: &str,
        data: ByteStream,
        _origin: &ObjectMeta,
    ) -> Result<Copied, SinkError> {
        let size = self.put_stream(key, data, PutMode::Create).await?;
        Ok(Copied {
            size,
            proven: false,
        })
    }

    async fn get(&self, key: &str) -> Result<Bytes, SinkError> {
        if self.dies_now(On::Get, "get", key)? {
            return Err(self.gone("get", key));
        }
        self.inner.get(key).await
    }

    async fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<Bytes, SinkError> {
        if self.dies_now(On::Get, "get", key)? {
            return Err(self.gone("get", key));
        }
        self.inner.get_range(key, range).await
    }
}

const KEY: [u8; 32] = [4; 32];

/// Whether crash point `at` is swept in this run: all of them in a long run, else the first
/// three and a seeded third of the others.
fn swept(at: u64) -> bool {
    if std::env::var_os("RESILIENCE_TEST_LONG").is_some() || at <= 3 {
        return true;
    }
    let seed: u64 = std::env::var("RESILIENCE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (at + seed).is_multiple_of(3)
}

/// Lock settings for a fast sweep (a dead process's locks are cleared by the sweep itself: their
/// expiry is the lock tests' business).
fn locks() -> LockSettings {
    LockSettings {
        settle: Duration::from_millis(1),
        ..Default::default()
    }
}

/// Removes the locks a dead process left, as their expiry would.
async fn clear_locks(mem: &MemorySink) {
    let left: Vec<ObjectMeta> = mem.list("locks/").try_collect().await.unwrap();
    for lock in left {
        mem.delete(&lock.key).await.unwrap();
    }
}

async fn open(sink: Arc<dyn Sink>) -> Repository {
    Repository::open(sink, &KeyFileProvider::from_key(KEY))
        .await
        .expect("the repository opens after the crash")
        .with_lock_settings(locks())
}

/// Source `s` at version `v`: files that partly change between versions.
fn source(v: u64) -> MemorySource {
    MemorySource::new("s")
        .file("changes.bin", data(900_000, 10 + v))
        .file(&format!("only-in-{v}.txt"), format!("version {v}"))
        .file("same.bin", data(700_000, 1))
}

/// A repository with two acknowledged snapshots of `s`, versions 1 and 2, the first of them
/// expired (its data left for prune).
async fn seeded() -> Arc<MemorySink> {
    let mem = Arc::new(MemorySink::new());
    let options = InitOptions {
        pack_size: 256 << 10,
        ..Default::default()
    };
    let repo = Repository::init(mem.clone(), &KeyFileProvider::from_key(KEY), options)
        .await
        .unwrap()
        .with_lock_settings(locks());
    for v in [1, 2] {
        repo.backup(&source(v), Default::default()).await.unwrap();
    }
    forget(repo).await.unwrap();
    mem
}

/// Every succeeded snapshot restores exactly its version, and a full verification is sound.
async fn assert_sound(repo: &Repository, context: &str) {
    assert_sound_but(repo, context, None).await;
}

/// [`assert_sound`], except that verification may report one object damaged: `torn`, the object
/// a torn put left half written (and nothing else). Returns whether it did.
async fn assert_sound_but(repo: &Repository, context: &str, torn: Option<&str>) -> bool {
    let report = repo.verify(VerifyOptions { full: true }).await.unwrap();
    let torn_reported = report
        .damaged
        .iter()
        .any(|d| Some(d.object.as_str()) == torn);
    assert!(
        report
            .damaged
            .iter()
            .all(|d| Some(d.object.as_str()) == torn),
        "{context}: {:?}",
        report.damaged
    );
    let records = repo.catalog().list(&CatalogQuery::default()).await.unwrap();
    // An expiry cut short after it deleted the manifest is no longer restorable, and says so
    // (a second forget finishes it).
    // A record whose torn revision verification names reads from an older one, which may say
    // succeeded of a snapshot whose expiry had deleted it: the remedy decides.
    let torn_record = |id: &str| torn.is_some_and(|t| t.starts_with(&format!("catalog/{id}/")));
    for r in records.iter().filter(|r| {
        r.status == BackupStatus::Succeeded
            && !report.expiring.contains(&r.id)
            && !(torn_reported && torn_record(&r.id))
    }) {
        let target = MemoryTarget::new();
        repo.restore(&r.id, &target, Default::default())
            .await
            .unwrap_or_else(|e| panic!("{context}: restore of {}: {e}", r.id));
        let paths: Vec<String> = target
            .entries
            .lock()
            .unwrap()
            .keys()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        let v: u64 = paths
            .iter()
            .find_map(|p| {
                p.strip_prefix("only-in-")
                    .and_then(|s| s.strip_suffix(".txt"))
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "{context}: snapshot {} has no version file: {paths:?}",
                    r.id
                )
            });
        let want = [
            ("same.bin".to_owned(), data(700_000, 1)),
            ("changes.bin".to_owned(), data(900_000, 10 + v)),
            (
                format!("only-in-{v}.txt"),
                format!("version {v}").into_bytes(),
            ),
        ];
        assert_eq!(paths.len(), want.len(), "{context}: {paths:?}");
        for (path, content) in want {
            assert_eq!(
                target.content(&path).as_deref(),
                Some(&content[..]),
                "{context}: {path} of snapshot {}",
                r.id
            );
        }
    }
    torn_reported
}

/// Runs `operation` on a fresh seeded repository whose store dies at every N in turn, checks
/// what each death leaves, reruns it, and returns how many runs failed. A run may still succeed
/// when what died was cleanup after its work was durable (releasing its lock): it is checked
/// the same way.
async fn sweep<F, Fut>(name: &str, on: On, operation: F) -> u64
where
    F: Fn(Repository) -> Fut,
    Fut: std::future::Future<Output = resilience_core::Result<()>>,
{
    sweep_from(name, on, seeded, operation).await
}

/// [`sweep`], each run on a repository that `seed` makes.
async fn sweep_from<S, SFut, F, Fut>(name: &str, on: On, seed: S, operation: F) -> u64
where
    S: Fn() -> SFut,
    SFut: std::future::Future<Output = Arc<MemorySink>>,
    F: Fn(Repository) -> Fut,
    Fut: std::future::Future<Output = resilience_core::Result<()>>,
{
    let mut failed = 0;
    for at in (1..).filter(|&at| swept(at)) {
        let mem = seed().await;
        let dying = Arc::new(DyingSink::new(mem.clone(), on));
        let repo = open(dying.clone()).await;
        dying.arm(at);
        let outcome = operation(repo).await;
        let context = format!("{name}, store dead at {on:?} #{at}");
        if !dying.died() {
            outcome.unwrap_or_else(|e| panic!("{context}: failed without a fault: {e}"));
            assert!(at > 1, "{name}: no {on:?} was ever made, nothing was swept");
            eprintln!(
                "{name}, {on:?}: crash points 1 to {}, {failed} swept and failed",
                at - 1
            );
            return failed;
        }
        if outcome.is_err() {
            failed += 1;
        }
        clear_locks(&mem).await;
        let torn = dying.torn();
        let context = match &torn {
            Some(key) => format!("{context} (torn: {key})"),
            None => context,
        };
        let repo = open(mem.clone()).await;
        let reported = assert_sound_but(&repo, &context, torn.as_deref()).await;
        if let Err(e) = operation(repo.clone()).await {
            // Maintenance refuses to work over a damaged index file, naming the repair; run
            // it, then the operation again.
            let key = torn.as_deref().filter(|_| reported);
            let Some(key) = key.filter(|k| {
                e.to_string().contains("repair index")
                    && (k.starts_with("index/") || k.starts_with("prune/"))
            }) else {
                panic!("{context}: the rerun failed: {e}");
            };
            remedy(&repo, key).await;
            operation(open(mem.clone()).await)
                .await
                .unwrap_or_else(|e| panic!("{context}: the rerun after the repair failed: {e}"));
        }
        // Opened anew: an operation may change the keys (a rotation).
        let repo = open(mem.clone()).await;
        let context = format!("{context}, after the rerun");
        let still = assert_sound_but(&repo, &context, torn.as_deref()).await;
        if let Some(key) = torn {
            eprintln!("{context}: reported damaged before the rerun: {reported}, after: {still}");
            if still {
                remedy(&repo, &key).await;
                assert_sound(&repo, &format!("{context}, after the remedy for {key}")).await;
            }
            // Nothing torn stops maintenance: a prune runs (an unreadable manifest of a
            // backup that never committed is skipped and removed), and leaves it sound.
            prune_twice(repo.clone())
                .await
                .unwrap_or_else(|e| panic!("{context}: prune after the rerun: {e}"));
            assert_sound(
                &open(mem.clone()).await,
                &format!("{context}, after a prune"),
            )
            .await;
        }
    }
    unreachable!()
}

/// What a user runs when verification names `key`, an object a torn put left half written
/// (the remedy the damage report names).
async fn remedy(repo: &Repository, key: &str) {
    if key.starts_with("index/") || key.starts_with("prune/") {
        repo.repair_index(RepairIndexOptions::default())
            .await
            .unwrap_or_else(|e| panic!("repair index after {key} was torn: {e}"));
    } else if key.starts_with("catalog/") {
        let report = repo
            .repair_catalog(RepairCatalogOptions::default())
            .await
            .unwrap_or_else(|e| panic!("repair catalog after {key} was torn: {e}"));
        assert!(
            report.rewritten.iter().any(|r| r.damaged == key) && report.left.is_empty(),
            "repair catalog after {key} was torn: {report:?}"
        );
    } else {
        panic!("no remedy for a torn {key}");
    }
}

async fn backup(repo: Repository) -> resilience_core::Result<()> {
    repo.backup(&source(3), Default::default()).await.map(drop)
}

async fn forget(repo: Repository) -> resilience_core::Result<()> {
    let records = repo.catalog().list(&CatalogQuery::default()).await?;
    let policy = StandardPolicy::from_toml("keep_last = 1").expect("a policy");
    let plan = retention::plan(&policy, &records, chrono::Utc::now());
    repo.forget(&plan).await.map(drop)
}

async fn prune_twice(repo: Repository) -> resilience_core::Result<()> {
    let now = PruneOptions {
        grace: Duration::ZERO,
        ..Default::default()
    };
    repo.prune(now).await?;
    repo.prune(now).await.map(drop)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_survives_its_store_dying_at_any_operation() {
    for on in [On::Put, On::TornPut, On::Get] {
        let failed = sweep("backup", on, backup).await;
        assert!(failed >= 3, "backup, {on:?}: only {failed} runs failed");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_survives_its_store_dying_at_any_operation_of_either_phase() {
    for on in [On::Put, On::TornPut, On::Get, On::Delete] {
        let failed = sweep("prune", on, prune_twice).await;
        assert!(failed > 0, "prune, {on:?}: no run failed");
    }
}

/// [`seeded`], then a third backup: the forget that keeps the last one has a backup to expire.
async fn seeded_with_three() -> Arc<MemorySink> {
    let mem = seeded().await;
    backup(open(mem.clone()).await).await.unwrap();
    mem
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forget_survives_its_store_dying_at_any_operation() {
    for on in [On::Put, On::TornPut, On::Get, On::Delete] {
        let failed = sweep_from("forget", on, seeded_with_three, forget).await;
        assert!(failed > 0, "forget, {on:?}: no run failed");
    }
}

async fn rewrite(repo: Repository) -> resilience_core::Result<()> {
    repo.rewrite_data().await.map(drop)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_rotation_with_rewrite_survives_its_store_dying_at_any_operation() {
    // Not torn puts: a rewrite replaces each manifest in place, which relies on the store's
    // atomic put (every supported store has one); a torn overwrite loses the manifest.
    for on in [On::Put, On::Get, On::Delete] {
        let failed = sweep("key rotate --rewrite", on, rewrite).await;
        assert!(failed > 0, "rewrite, {on:?}: no run failed");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replication_survives_its_replica_dying_at_any_operation() {
    let source = seeded().await;
    for on in [On::Put, On::Get] {
        let mut failed = 0;
        for at in (1..).filter(|&at| swept(at)) {
            let replica = Arc::new(MemorySink::new());
            let dying = Arc::new(DyingSink::new(replica.clone(), on));
            dying.arm(at);
            let options = ReplicateOptions::default();
            let outcome = replicate(source.as_ref(), dying.as_ref(), &options).await;
            let context = format!("replicate, replica dead at {on:?} #{at}");
            if !dying.died() {
                outcome.unwrap_or_else(|e| panic!("{context}: failed without a fault: {e}"));
                eprintln!(
                    "replicate, {on:?}: crash points 1 to {}, {failed} swept and failed",
                    at - 1
                );
                break;
            }
            if outcome.is_err() {
                failed += 1;
            }
            // Whatever the replica holds is consistent enough to resume: the rerun completes,
            // and the replica is then a sound copy of every snapshot.
            replicate(source.as_ref(), replica.as_ref(), &options)
                .await
                .unwrap_or_else(|e| panic!("{context}: the rerun failed: {e}"));
            assert_sound(&open(replica).await, &context).await;
        }
        assert!(
            on == On::Get || failed >= 3,
            "replicate, {on:?}: only {failed} runs failed"
        );
    }
}

async fn repair_index(repo: Repository) -> resilience_core::Result<()> {
    repo.repair_index(RepairIndexOptions::default())
        .await
        .map(drop)
}

/// `repair index` writes new index files, then removes the old ones: a death anywhere leaves
/// every pack indexed by one or the other.
#[tokio::test(flavor = "multi_thread")]
async fn an_index_repair_survives_its_store_dying_at_any_operation() {
    for on in [On::Put, On::Get, On::Delete] {
        let failed = sweep("repair index", on, repair_index).await;
        assert!(failed > 0, "repair index, {on:?}: no run failed");
    }
}

/// Which tier's store dies during a move.
#[derive(Clone, Copy, Debug)]
enum Dies {
    Hot,
    Cold,
}

/// The newest succeeded snapshot.
async fn newest(repo: &Repository) -> String {
    let records = repo.catalog().list(&CatalogQuery::default()).await.unwrap();
    records
        .iter()
        .rev()
        .find(|r| r.status == BackupStatus::Succeeded)
        .expect("a succeeded snapshot")
        .id
        .clone()
}

/// A snapshot's move to the cold tier, with either tier's store dying at every N: after each
/// death both tiers open and verify, every snapshot restores from wherever the catalog says it
/// is, and the move run again completes.
#[tokio::test(flavor = "multi_thread")]
async fn a_move_to_cold_survives_either_store_dying_at_any_operation() {
    // The move only writes to the cold tier (its listings and heads are not swept).
    let sweeps = [
        (Dies::Hot, On::Put),
        (Dies::Hot, On::Get),
        (Dies::Hot, On::Delete),
        (Dies::Cold, On::Put),
    ];
    for (dies, on) in sweeps {
        let mut failed = 0;
        for at in (1..).filter(|&at| swept(at)) {
            let hot = seeded().await;
            let cold = Arc::new(MemorySink::new());
            let id = newest(&open(hot.clone()).await).await;
            // The cold tier exists before the move (attaching initializes it).
            open(hot.clone())
                .await
                .attach_cold(cold.clone())
                .await
                .unwrap();
            let (hot_sink, cold_sink, dying): (Arc<dyn Sink>, Arc<dyn Sink>, _) = match dies {
                Dies::Hot => {
                    let d = Arc::new(DyingSink::new(hot.clone(), on));
                    (d.clone(), cold.clone(), d)
                }
                Dies::Cold => {
                    let d = Arc::new(DyingSink::new(cold.clone(), on));
                    (hot.clone(), d.clone(), d)
                }
            };
            let repo = open(hot_sink).await.attach_cold(cold_sink).await.unwrap();
            dying.arm(at);
            let outcome = repo.move_to_cold(&id).await;
            let context = format!("move to cold, {dies:?} store dead at {on:?} #{at}");
            if !dying.died() {
                outcome.unwrap_or_else(|e| panic!("{context}: failed without a fault: {e}"));
                assert!(at > 1, "{context}: nothing was swept");
                eprintln!(
                        "move to cold, {dies:?} dies, {on:?}: crash points 1 to {}, {failed} swept and failed",
                        at - 1
                    );
                break;
            }
            if outcome.is_err() {
                failed += 1;
            }
            clear_locks(&hot).await;
            clear_locks(&cold).await;
            let both = open(hot.clone())
                .await
                .attach_cold(cold.clone())
                .await
                .unwrap();
            assert_sound(&both, &context).await;
            assert_sound(both.cold_tier().unwrap(), &format!("{context}, cold tier")).await;
            both.move_to_cold(&id)
                .await
                .unwrap_or_else(|e| panic!("{context}: the rerun failed: {e}"));
            let rec = both.catalog().get(&id).await.unwrap().unwrap();
            assert_eq!(rec.tier, Tier::Cold, "{context}: after the rerun");
            assert_sound(&both, &format!("{context}, after the rerun")).await;
            assert_sound(
                both.cold_tier().unwrap(),
                &format!("{context}, cold tier after the rerun"),
            )
            .await;
        }
        assert!(
            failed > 0,
            "move to cold, {dies:?} dies, {on:?}: no run failed"
        );
    }
}
