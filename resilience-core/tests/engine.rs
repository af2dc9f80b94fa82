//! The repository engine end to end, on in-memory sinks: round trips, deduplication,
//! corruption, interruption, concurrency and bad credentials.

use std::sync::Arc;

use bytes::Bytes;
use resilience_core::catalog::{BackupStatus, Catalog, CatalogQuery};
use resilience_core::keys::{KdfParams, KeyFileProvider, PassphraseProvider};
use resilience_core::ops::backup::BackupOptions;
use resilience_core::ops::verify::VerifyOptions;
use resilience_core::repo::{InitOptions, Repository};
use resilience_core::sink::{MemorySink, Sink};
use resilience_core::source::entry::EntryMeta;
use resilience_core::source::{AdapterError, ContentCheck, ContentWriter, EntryOrder, Target};
use resilience_core::testing::{pseudo_random, FaultySink, MemorySource, MemoryTarget};
use resilience_core::Error;

fn key() -> KeyFileProvider {
    KeyFileProvider::from_key([42; 32])
}

async fn new_repo(sink: Arc<dyn Sink>) -> Repository {
    Repository::init(sink, &key(), InitOptions::default())
        .await
        .unwrap()
}

async fn restore_all(repo: &Repository, id: &str) -> MemoryTarget {
    let target = MemoryTarget::new();
    repo.restore(id, &target, Default::default()).await.unwrap();
    target
}

#[tokio::test]
async fn round_trip_of_small_large_and_empty_entries() {
    let sink: Arc<dyn Sink> = Arc::new(MemorySink::new());
    let repo = new_repo(sink).await;
    let big = pseudo_random(20 << 20, 1);
    let source = MemorySource::new("mem:a")
        .file("empty", Vec::new())
        .file("tiny", b"hello".to_vec())
        .file("big", big.clone())
        .file("zeros", vec![0u8; 3 << 20]);
    let report = repo
        .backup(&source, BackupOptions::default())
        .await
        .unwrap();
    assert_eq!(report.record.status, BackupStatus::Succeeded);
    assert_eq!(report.record.entries, 4);
    assert_eq!(report.record.logical_bytes, 5 + (20 << 20) + (3 << 20));
    let target = restore_all(&repo, "latest").await;
    assert_eq!(target.content("big").unwrap(), big);
    assert_eq!(target.content("tiny").unwrap(), b"hello");
    assert_eq!(target.content("empty").unwrap(), b"");
    assert_eq!(target.content("zeros").unwrap(), vec![0u8; 3 << 20]);
    assert_eq!(target.applied.lock().unwrap().len(), 4);
    let v = repo.verify(VerifyOptions { full: true }).await.unwrap();
    assert!(v.is_ok(), "{v:?}");
    assert!(v.blobs_checked > 0);
}

#[tokio::test]
async fn unchanged_data_costs_nothing_and_an_insertion_costs_a_few_chunks() {
    let sink: Arc<dyn Sink> = Arc::new(MemorySink::new());
    let repo = new_repo(sink).await;
    let data = pseudo_random(100 << 20, 7);
    let first = repo
        .backup(
            &MemorySource::new("s").file("f", data.clone()),
            Default::default(),
        )
        .await
        .unwrap();
    assert!(first.record.new_bytes >= 100 << 20);

    // Same content, no fingerprint: everything is read and deduplicated.
    let mut meta = resilience_core::source::entry::EntryMeta::file("f", data.len() as u64);
    meta.fingerprint = None;
    let second = repo
        .backup(
            &MemorySource::new("s").entry(meta, data.clone()),
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(second.record.new_bytes, 0);
    assert!(
        second.record.stored_bytes * 100 < first.record.stored_bytes,
        "{} vs {}",
        second.record.stored_bytes,
        first.record.stored_bytes
    );

    // Fingerprint unchanged: reused without reading.
    let third = repo
        .backup(
            &MemorySource::new("s").file("f", data.clone()),
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(third.record.new_bytes, 0);

    let mut edited = data.clone();
    edited.insert(50 << 20, 0xAB);
    let fourth = repo
        .backup(
            &MemorySource::new("s").file("f", edited.clone()),
            Default::default(),
        )
        .await
        .unwrap();
    assert!(fourth.record.new_bytes > 0);
    assert!(
        fourth.record.new_bytes < 12 << 20,
        "an insertion stored {} new bytes",
        fourth.record.new_bytes
    );
    let target = restore_all(&repo, &fourth.record.id).await;
    assert!(target.content("f").unwrap() == edited);
    let target = restore_all(&repo, &first.record.id).await;
    assert!(target.content("f").unwrap() == data);
}

/// Content cut in blocks (database pages): a page changed in place costs the one chunk that
/// holds it, pages added at the end cost the last chunk and the new ones, and every version
/// restores as it was.
#[tokio::test]
async fn content_cut_in_blocks_costs_one_chunk_for_a_changed_page() {
    use resilience_core::source::Cutting;
    const PAGE: usize = 8192;
    const CHUNK: u64 = 1 << 20; // the default average chunk, a whole number of pages
    let sink: Arc<dyn Sink> = Arc::new(MemorySink::new());
    let repo = new_repo(sink).await;
    let pages = |data: Vec<u8>| {
        MemorySource::new("pg")
            .with_cutting(Cutting::Blocks { block: PAGE as u32 })
            .file("base/1/16384", data)
    };
    let data = pseudo_random(8 << 20, 11);
    let first = repo
        .backup(&pages(data.clone()), Default::default())
        .await
        .unwrap();
    assert_eq!(first.record.new_bytes, 8 << 20);

    // One page rewritten in the middle of the fifth chunk.
    let mut changed = data.clone();
    let at = 4 * CHUNK as usize + 37 * PAGE;
    changed[at..at + PAGE].copy_from_slice(&pseudo_random(PAGE, 12));
    let second = repo
        .backup(&pages(changed.clone()), Default::default())
        .await
        .unwrap();
    assert_eq!(
        second.record.new_bytes, CHUNK,
        "a changed page costs its one chunk"
    );

    // Three pages added at the end: a new last chunk, nothing else.
    let mut grown = changed.clone();
    grown.extend_from_slice(&pseudo_random(3 * PAGE, 13));
    let third = repo
        .backup(&pages(grown.clone()), Default::default())
        .await
        .unwrap();
    assert_eq!(third.record.new_bytes, 3 * PAGE as u64);

    // The same page change, cut where the content says, costs a whole chunk too (at least
    // the smallest, 512 KiB): the cut in blocks loses no deduplication on such content.
    let sink: Arc<dyn Sink> = Arc::new(MemorySink::new());
    let cdc = new_repo(sink).await;
    let src = |data: Vec<u8>| MemorySource::new("pg").file("base/1/16384", data);
    cdc.backup(&src(data.clone()), Default::default())
        .await
        .unwrap();
    let cdc_second = cdc
        .backup(&src(changed.clone()), Default::default())
        .await
        .unwrap();
    assert!(
        cdc_second.record.new_bytes >= CHUNK / 2,
        "{}",
        cdc_second.record.new_bytes
    );

    for (id, want) in [
        (&first.record.id, &data),
        (&second.record.id, &changed),
        (&third.record.id, &grown),
    ] {
        let target = restore_all(&repo, id).await;
        assert!(target.content("base/1/16384").unwrap() == *want, "{id}");
    }
    let v = repo.verify(VerifyOptions { full: true }).await.unwrap();
    assert!(v.is_ok(), "{v:?}");
}

#[tokio::test]
async fn a_reused_entry_of_the_parent_is_not_read_again() {
    let sink: Arc<dyn Sink> = Arc::new(MemorySink::new());
    let repo = new_repo(sink).await;
    let src = MemorySource::new("s")
        .file("a", pseudo_random(1 << 20, 1))
        .file("b", pseudo_random(2 << 20, 2));
    repo.backup(&src, Default::default()).await.unwrap();
    let again = repo.backup(&src, Default::default()).await.unwrap();
    assert_eq!(again.reused_entries, 2);
    assert!(again.record.parent.is_some());
    assert_eq!(
        restore_all(&repo, "latest").await.content("b").unwrap(),
        pseudo_random(2 << 20, 2)
    );
}

/// Keys as an object store lists them (plain byte order: `logs-old` and `logs.txt` before
/// `logs/`), which a walk would order differently: declared, every one is reused; taken for a
/// walk, the pairing loses its place and some are read again.
#[tokio::test]
async fn entries_in_byte_order_are_all_reused_when_the_source_says_so() {
    let keys = [
        "logs-old/1",
        "logs.txt",
        "logs/a",
        "logs/b/c",
        "logs0",
        "zz",
    ];
    let mut sorted = keys.to_vec();
    sorted.sort();
    assert_eq!(sorted, keys, "the keys are in byte order");
    let source = |order| {
        keys.iter()
            .enumerate()
            .fold(MemorySource::new("s").with_order(order), |s, (i, k)| {
                s.file(k, pseudo_random(100 + i, i as u64))
            })
    };
    let sink: Arc<dyn Sink> = Arc::new(MemorySink::new());
    let repo = new_repo(sink).await;
    let bytes = source(EntryOrder::Bytes);
    repo.backup(&bytes, Default::default()).await.unwrap();
    let again = repo.backup(&bytes, Default::default()).await.unwrap();
    assert_eq!(again.reused_entries, keys.len() as u64);
    let target = restore_all(&repo, "latest").await;
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(target.content(k).unwrap(), pseudo_random(100 + i, i as u64));
    }

    let walk = source(EntryOrder::Walk);
    let mistaken = repo.backup(&walk, Default::default()).await.unwrap();
    assert!(
        mistaken.reused_entries < keys.len() as u64,
        "byte order taken for a walk loses entries: {}",
        mistaken.reused_entries
    );
}

/// Two snapshots of different data, written by separate backups (so in separate packs).
async fn two_snapshots() -> (Arc<MemorySink>, Repository, String, String) {
    let mem = Arc::new(MemorySink::new());
    let repo = new_repo(mem.clone()).await;
    let a = repo
        .backup(
            &MemorySource::new("a").file("x", pseudo_random(3 << 20, 11)),
            Default::default(),
        )
        .await
        .unwrap();
    let b = repo
        .backup(
            &MemorySource::new("b").file("y", pseudo_random(3 << 20, 12)),
            Default::default(),
        )
        .await
        .unwrap();
    (mem, repo, a.record.id, b.record.id)
}

async fn packs_of(mem: &MemorySink) -> Vec<String> {
    use futures::TryStreamExt;
    mem.list("data/")
        .map_ok(|m| m.key)
        .try_collect()
        .await
        .unwrap()
}

async fn pack_used_only_by(repo: &Repository, mem: &MemorySink, snapshot: &str) -> String {
    let index = repo.load_index().await.unwrap();
    let record = repo.resolve_snapshot(snapshot, None).await.unwrap();
    let mut tree = repo.tree_reader(&record, &index).await.unwrap();
    let rec = tree.next().await.unwrap().unwrap();
    let blob = rec.content.blobs()[0].id;
    let pack = resilience_core::internals::pack::pack_key(&index.lookup(&blob).unwrap().pack);
    assert!(packs_of(mem).await.contains(&pack));
    pack
}

#[tokio::test]
async fn a_flipped_byte_is_found_and_names_only_the_affected_snapshot() {
    let (mem, repo, a, b) = two_snapshots().await;
    let pack = pack_used_only_by(&repo, &mem, &a).await;
    let mut bytes = mem.get(&pack).await.unwrap().to_vec();
    bytes[1000] ^= 0x01;
    mem.tamper(&pack, Bytes::from(bytes));

    let report = repo.verify(Default::default()).await.unwrap();
    assert!(!report.is_ok());
    assert_eq!(report.damaged.len(), 1, "{:?}", report.damaged);
    assert_eq!(report.damaged[0].object, pack);
    assert_eq!(report.damaged[0].affected_snapshots, vec![a.clone()]);

    let err = repo
        .restore(&a, &MemoryTarget::new(), Default::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&pack), "{err}");
    restore_all(&repo, &b).await;
}

#[tokio::test]
async fn a_truncated_or_deleted_pack_is_found() {
    let (mem, repo, a, _b) = two_snapshots().await;
    let pack = pack_used_only_by(&repo, &mem, &a).await;
    let bytes = mem.get(&pack).await.unwrap();
    mem.tamper(&pack, bytes.slice(..bytes.len() / 2));
    let report = repo.verify(Default::default()).await.unwrap();
    assert_eq!(report.damaged.len(), 1);
    assert_eq!(report.damaged[0].object, pack);
    assert_eq!(report.damaged[0].affected_snapshots, vec![a.clone()]);

    mem.delete(&pack).await.unwrap();
    let report = repo.verify(Default::default()).await.unwrap();
    assert_eq!(report.damaged[0].object, pack);
    assert!(report.damaged[0].problem.contains("missing"));
    assert_eq!(report.damaged[0].affected_snapshots, vec![a.clone()]);
    let err = repo
        .restore(&a, &MemoryTarget::new(), Default::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&pack), "{err}");
}

#[tokio::test]
async fn a_damaged_manifest_or_index_is_named() {
    let (mem, repo, a, b) = two_snapshots().await;
    let manifest = format!("snapshots/{a}");
    let mut bytes = mem.get(&manifest).await.unwrap().to_vec();
    bytes[20] ^= 0xFF;
    mem.tamper(&manifest, Bytes::from(bytes));
    let report = repo.verify(Default::default()).await.unwrap();
    assert_eq!(report.damaged.len(), 1, "{:?}", report.damaged);
    assert_eq!(report.damaged[0].object, manifest);
    assert_eq!(report.damaged[0].affected_snapshots, vec![a.clone()]);
    assert!(repo
        .restore(&a, &MemoryTarget::new(), Default::default())
        .await
        .unwrap_err()
        .to_string()
        .contains(&manifest));
    restore_all(&repo, &b).await;
}

/// A target that declines every entry under `skip/` (as a bucket restore declines objects that
/// are filtered out or already there).
struct Declining(MemoryTarget);

#[async_trait::async_trait]
impl Target for Declining {
    async fn wants(&self, meta: &EntryMeta, _: &ContentCheck<'_>) -> Result<bool, AdapterError> {
        Ok(!meta.path.as_bytes().starts_with(b"skip/"))
    }
    async fn create(
        &self,
        meta: &EntryMeta,
    ) -> Result<Option<Box<dyn ContentWriter>>, AdapterError> {
        assert!(
            !meta.path.as_bytes().starts_with(b"skip/"),
            "{} was declined",
            meta.path
        );
        self.0.create(meta).await
    }
    async fn apply_metadata(&self, meta: &EntryMeta) -> Result<(), AdapterError> {
        self.0.apply_metadata(meta).await
    }
    async fn finish(&self) -> Result<(), AdapterError> {
        self.0.finish().await
    }
}

#[tokio::test]
async fn entries_the_target_declines_are_not_read() {
    let counting = Arc::new(FaultySink::new(MemorySink::new(), -1));
    let repo = new_repo(counting.clone()).await;
    let kept = pseudo_random(2 << 20, 8);
    let source = MemorySource::new("s")
        .file("keep", kept.clone())
        .file("skip/a", pseudo_random(4 << 20, 9))
        .file("skip/b", pseudo_random(4 << 20, 10));
    repo.backup(&source, Default::default()).await.unwrap();

    let before = counting.range_bytes_read();
    let target = Declining(MemoryTarget::new());
    let report = repo
        .restore("latest", &target, Default::default())
        .await
        .unwrap();
    let read = counting.range_bytes_read() - before;
    assert_eq!(report.entries, 1);
    assert!(target.0.content("keep").unwrap() == kept);
    assert!(target.0.content("skip/a").is_none());
    assert_eq!(
        target.0.applied.lock().unwrap().len(),
        3,
        "metadata sees all"
    );
    assert!(
        read < (3 << 20),
        "only the wanted 2 MiB (and the tree) is read, not the 8 MiB declined: {read}"
    );

    let before = counting.range_bytes_read();
    restore_all(&repo, "latest").await;
    assert!(counting.range_bytes_read() - before > (10 << 20));
}

#[tokio::test]
async fn an_interrupted_backup_is_never_succeeded_and_the_next_one_reuses_its_packs() {
    let faulty = Arc::new(FaultySink::new(MemorySink::new(), -1));
    let repo = new_repo(faulty.clone()).await;
    let data = pseudo_random(60 << 20, 5);
    // Let a few packs through, then fail every write.
    faulty.set_budget(4);
    let err = repo
        .backup(
            &MemorySource::new("s").file("f", data.clone()),
            Default::default(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("injected fault"), "{err}");
    faulty.set_budget(-1);
    let records = repo.catalog().list(&CatalogQuery::default()).await.unwrap();
    assert!(records.iter().all(|r| r.status != BackupStatus::Succeeded));
    assert!(repo.verify(Default::default()).await.unwrap().is_ok());
    assert!(!packs_of(faulty.inner()).await.is_empty());

    let next = repo
        .backup(
            &MemorySource::new("s").file("f", data.clone()),
            Default::default(),
        )
        .await
        .unwrap();
    assert!(
        next.record.new_bytes < data.len() as u64,
        "no reuse: {}",
        next.record.new_bytes
    );
    assert!(restore_all(&repo, "latest").await.content("f").unwrap() == data);
    assert!(repo
        .verify(VerifyOptions { full: true })
        .await
        .unwrap()
        .is_ok());
}

#[tokio::test]
async fn a_running_record_left_by_a_dead_process_is_marked_failed() {
    let mem: Arc<dyn Sink> = Arc::new(MemorySink::new());
    let repo = new_repo(mem).await;
    let now = chrono::Utc::now();
    let mut stale = resilience_core::catalog::BackupRecord {
        id: "20200101T000000Z-dead".into(),
        revision: 1,
        source: resilience_core::source::SourceDescriptor {
            id: "s".into(),
            kind: "memory".into(),
        },
        kind: resilience_core::catalog::BackupKind::Full,
        status: BackupStatus::Running,
        error: None,
        started_at: now,
        finished_at: None,
        logical_bytes: 0,
        stored_bytes: 0,
        new_bytes: 0,
        entries: 0,
        manifest_checksum: None,
        tier: Default::default(),
        labels: Default::default(),
        legal_hold: false,
        verifications: vec![],
        source_metadata: Default::default(),
        parent: None,
        host: "h".into(),
        updated_at: now,
        salvage: None,
    };
    repo.catalog().put(&stale).await.unwrap();
    repo.backup(
        &MemorySource::new("s").file("f", b"x".to_vec()),
        Default::default(),
    )
    .await
    .unwrap();
    stale = repo.catalog().get(&stale.id).await.unwrap().unwrap();
    assert_eq!(stale.status, BackupStatus::Failed);
    assert!(stale.error.unwrap().contains("interrupted"));
}

#[tokio::test]
async fn concurrent_backups_both_succeed_and_verify() {
    let mem: Arc<dyn Sink> = Arc::new(MemorySink::new());
    let repo = new_repo(mem).await;
    let shared = pseudo_random(8 << 20, 3);
    let a = MemorySource::new("a")
        .file("shared", shared.clone())
        .file("own", pseudo_random(5 << 20, 4));
    let b = MemorySource::new("b")
        .file("shared", shared.clone())
        .file("own", pseudo_random(5 << 20, 5));
    let (ra, rb) = tokio::join!(
        repo.backup(&a, Default::default()),
        repo.backup(&b, Default::default())
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_ne!(ra.record.id, rb.record.id);
    assert!(repo
        .verify(VerifyOptions { full: true })
        .await
        .unwrap()
        .is_ok());
    assert!(
        restore_all(&repo, &ra.record.id)
            .await
            .content("own")
            .unwrap()
            == pseudo_random(5 << 20, 4)
    );
    assert!(
        restore_all(&repo, &rb.record.id)
            .await
            .content("shared")
            .unwrap()
            == shared
    );
}

#[tokio::test]
async fn wrong_passphrase_and_missing_repository_are_clear_errors() {
    let mem: Arc<dyn Sink> = Arc::new(MemorySink::new());
    let fast = KdfParams {
        memory_kib: 256,
        iterations: 1,
        parallelism: 1,
    };
    let err = Repository::open(mem.clone(), &PassphraseProvider::new("x"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::RepositoryNotFound { .. }), "{err}");
    Repository::init(
        mem.clone(),
        &PassphraseProvider::new("right").with_params(fast),
        InitOptions::default(),
    )
    .await
    .unwrap();
    let err = Repository::open(mem.clone(), &PassphraseProvider::new("wrong"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("wrong passphrase"), "{err}");
    assert!(
        Repository::open(mem.clone(), &PassphraseProvider::new("right"))
            .await
            .is_ok()
    );
    let err = Repository::init(
        mem,
        &PassphraseProvider::new("right").with_params(fast),
        InitOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::AlreadyInitialized { .. }));
}

#[tokio::test]
async fn a_failing_source_leaves_a_failed_record_and_nothing_succeeded() {
    struct Broken;
    #[async_trait::async_trait]
    impl resilience_core::source::Source for Broken {
        fn descriptor(&self) -> resilience_core::source::SourceDescriptor {
            resilience_core::source::SourceDescriptor {
                id: "broken".into(),
                kind: "memory".into(),
            }
        }
        async fn start(
            &self,
        ) -> Result<
            Box<dyn resilience_core::source::SourceSession>,
            resilience_core::source::AdapterError,
        > {
            Err(resilience_core::source::AdapterError::msg(
                "open",
                "/nope",
                "does not exist",
            ))
        }
    }
    let mem: Arc<dyn Sink> = Arc::new(MemorySink::new());
    let repo = new_repo(mem).await;
    let err = repo.backup(&Broken, Default::default()).await.unwrap_err();
    assert!(err.to_string().contains("/nope"));
    let all = repo.catalog().list(&CatalogQuery::default()).await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].status, BackupStatus::Failed);
    assert!(all[0].error.as_deref().unwrap().contains("/nope"));
    assert!(matches!(
        repo.resolve_snapshot("latest", None).await,
        Err(Error::SnapshotNotFound { .. })
    ));
}

#[tokio::test]
async fn latest_is_the_last_started_even_within_one_second() {
    let mem: Arc<dyn Sink> = Arc::new(MemorySink::new());
    let repo = new_repo(mem).await;
    // Two backups started in the same second: their ids share the second, and the random
    // suffix of the later one sorts first.
    let first = repo
        .backup(
            &MemorySource::new("s").file("f", b"1".to_vec()),
            Default::default(),
        )
        .await
        .unwrap()
        .record;
    let mut later = first.clone();
    later.id = format!("{}-0000000a", &first.id[..16]);
    later.started_at = first.started_at + chrono::Duration::milliseconds(5);
    let mut earlier = first.clone();
    earlier.id = format!("{}-fffffff0", &first.id[..16]);
    earlier.started_at = first.started_at - chrono::Duration::milliseconds(5);
    repo.catalog().put(&later).await.unwrap();
    repo.catalog().put(&earlier).await.unwrap();
    let latest = repo.resolve_snapshot("latest", None).await.unwrap();
    assert_eq!(latest.id, later.id);
}

/// A source whose walk is followed by a closing entry, as Postgres' `backup_label` follows
/// `pg_backup_stop`; it records how many of its content readers were still open when asked for
/// it.
struct ClosingSource {
    files: Vec<(String, Vec<u8>)>,
    open_at_close: Arc<std::sync::Mutex<Vec<usize>>>,
}

struct ClosingSession {
    files: std::vec::IntoIter<(String, Vec<u8>)>,
    open: Arc<std::sync::atomic::AtomicUsize>,
    open_at_close: Arc<std::sync::Mutex<Vec<usize>>>,
}

/// Counts itself among the open readers until dropped; reads slowly, so the walk ends long
/// before its content is read.
struct CountedSlowReader {
    inner: std::io::Cursor<Vec<u8>>,
    open: Arc<std::sync::atomic::AtomicUsize>,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl Drop for CountedSlowReader {
    fn drop(&mut self) {
        self.open.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl tokio::io::AsyncRead for CountedSlowReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let sleep = self.sleep.get_or_insert_with(|| {
            Box::pin(tokio::time::sleep(std::time::Duration::from_millis(2)))
        });
        std::task::ready!(sleep.as_mut().poll(cx));
        self.sleep = None;
        let this = &mut *self;
        std::pin::Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

use std::future::Future;

#[async_trait::async_trait]
impl resilience_core::source::Source for ClosingSource {
    fn descriptor(&self) -> resilience_core::source::SourceDescriptor {
        resilience_core::source::SourceDescriptor {
            id: "closing".into(),
            kind: "memory".into(),
        }
    }
    async fn start(&self) -> Result<Box<dyn resilience_core::source::SourceSession>, AdapterError> {
        Ok(Box::new(ClosingSession {
            files: self.files.clone().into_iter(),
            open: Arc::default(),
            open_at_close: self.open_at_close.clone(),
        }))
    }
}

#[async_trait::async_trait]
impl resilience_core::source::SourceSession for ClosingSession {
    async fn next_entry(
        &mut self,
    ) -> Result<Option<resilience_core::source::SourceEntry>, AdapterError> {
        let Some((name, content)) = self.files.next() else {
            return Ok(None);
        };
        self.open.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Some(resilience_core::source::SourceEntry {
            meta: EntryMeta::file(name.as_str(), content.len() as u64),
            content: Some(Box::pin(CountedSlowReader {
                inner: std::io::Cursor::new(content),
                open: self.open.clone(),
                sleep: None,
            })),
        }))
    }

    async fn closing_entries(
        &mut self,
    ) -> Result<Vec<resilience_core::source::SourceEntry>, AdapterError> {
        let open = self.open.load(std::sync::atomic::Ordering::SeqCst);
        self.open_at_close.lock().unwrap().push(open);
        let label = b"STOP".to_vec();
        Ok(vec![resilience_core::source::SourceEntry {
            meta: EntryMeta::file("zz_label", label.len() as u64),
            content: Some(Box::pin(std::io::Cursor::new(label))),
        }])
    }

    async fn finish(&mut self) -> Result<resilience_core::source::SourceMetadata, AdapterError> {
        Ok(Default::default())
    }
}

#[tokio::test]
async fn closing_entries_are_asked_for_only_after_every_file_was_read() {
    let repo = new_repo(Arc::new(MemorySink::new())).await;
    // Large files are read by the backup loop well after the walk ended; small ones ahead.
    let files: Vec<(String, Vec<u8>)> = (0..24)
        .map(|i| {
            let len = if i % 3 == 0 { 3 << 20 } else { 4096 };
            (format!("f{i:02}"), pseudo_random(len, i))
        })
        .collect();
    let open_at_close = Arc::new(std::sync::Mutex::new(Vec::new()));
    let source = ClosingSource {
        files: files.clone(),
        open_at_close: open_at_close.clone(),
    };
    let report = repo
        .backup(&source, BackupOptions::default())
        .await
        .unwrap();
    assert_eq!(report.record.entries, 25);
    assert_eq!(
        *open_at_close.lock().unwrap(),
        vec![0],
        "the closing entries were asked for once, with no file still being read"
    );
    let target = restore_all(&repo, "latest").await;
    assert_eq!(target.content("zz_label").unwrap(), b"STOP");
    for (name, content) in &files {
        assert_eq!(&target.content(name).unwrap(), content, "{name}");
    }
}

/// Any memory budget gives the same snapshot back: the smallest (a byte: every stage at its
/// minimum, a blob larger than the restore's budget read alone) and a large one.
#[tokio::test]
async fn the_memory_budget_changes_how_much_is_in_flight_never_the_result() {
    let big = pseudo_random(40 << 20, 9);
    let source = MemorySource::new("mem:budget")
        .file("big", big.clone())
        .file("small", b"x".repeat(10_000))
        .file("zeros", vec![0u8; 9 << 20]);
    for memory in [1, resilience_core::ops::memory::DEFAULT_MEMORY, 1 << 30] {
        let repo = new_repo(Arc::new(MemorySink::new())).await;
        let report = repo
            .backup(
                &source,
                BackupOptions {
                    memory,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(report.record.entries, 3);
        let target = MemoryTarget::new();
        repo.restore(
            "latest",
            &target,
            resilience_core::ops::restore::RestoreOptions {
                memory,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(target.content("big").unwrap(), big, "memory {memory}");
        assert_eq!(target.content("small").unwrap(), b"x".repeat(10_000));
        assert_eq!(target.content("zeros").unwrap(), vec![0u8; 9 << 20]);
    }
}

/// Small files' chunks go to the CPU threads in batches, a file read ahead whole is its own
/// chunk: each file still gets its own content, in order, whatever the window, and a chunk
/// met twice (in one batch or across two) is stored once.
#[tokio::test]
async fn small_files_sealed_in_batches_keep_their_content_and_are_stored_once() {
    const DISTINCT: usize = 150;
    let content = |i: usize| pseudo_random(4100 + i % DISTINCT, (i % DISTINCT) as u64);
    let mut source = MemorySource::new("mem:batches");
    for i in 0..3 * DISTINCT {
        source = source.file(&format!("f{i:04}"), content(i));
        if i % 10 == 0 {
            // The same chunk again at once: in the same batch.
            source = source.file(&format!("f{i:04}-again"), content(i));
        }
        if i == DISTINCT / 2 {
            source = source
                .file(&format!("f{i:04}-big"), pseudo_random(3 << 20, 77))
                // Read ahead whole, yet longer than the smallest chunk: cut by the chunker.
                .file(&format!("f{i:04}-mid"), pseudo_random(700 << 10, 78))
                .file(&format!("f{i:04}-tiny"), b"inline".to_vec());
        }
    }
    let distinct_bytes: u64 = (0..DISTINCT).map(|i| content(i).len() as u64).sum();
    for chunk_concurrency in [1, 4] {
        let repo = new_repo(Arc::new(MemorySink::new())).await;
        let report = repo
            .backup(
                &source,
                BackupOptions {
                    chunk_concurrency,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(report.record.entries, 3 * DISTINCT as u64 + 45 + 3);
        assert_eq!(
            report.record.new_bytes,
            distinct_bytes + (3 << 20) + (700 << 10),
            "window {chunk_concurrency}: every distinct chunk once"
        );
        let target = restore_all(&repo, "latest").await;
        for i in 0..3 * DISTINCT {
            assert_eq!(
                target.content(&format!("f{i:04}")).unwrap(),
                content(i),
                "window {chunk_concurrency}, file {i}"
            );
        }
        assert_eq!(target.content("f0140-again").unwrap(), content(140));
        let big = format!("f{:04}-big", DISTINCT / 2);
        assert_eq!(target.content(&big).unwrap(), pseudo_random(3 << 20, 77));
        let mid = format!("f{:04}-mid", DISTINCT / 2);
        assert_eq!(target.content(&mid).unwrap(), pseudo_random(700 << 10, 78));
        let v = repo.verify(VerifyOptions { full: true }).await.unwrap();
        assert!(v.is_ok(), "{v:?}");
    }
}

/// A pack is sealed before a blob would take it past the repository's pack size: packs of
/// incompressible chunks stay within `pack_size` plus their table (the buffer a pack is built
/// in never grows past what it was allocated at).
#[tokio::test]
async fn packs_stay_within_the_pack_size() {
    use futures::TryStreamExt;
    let mem = Arc::new(MemorySink::new());
    // Above the largest chunk (8 MiB), so that no single blob is larger than a pack.
    let pack_size = 10 << 20;
    let repo = Repository::init(
        mem.clone(),
        &key(),
        InitOptions {
            pack_size,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let source = MemorySource::new("mem:packs").file("random", pseudo_random(40 << 20, 3));
    repo.backup(&source, BackupOptions::default())
        .await
        .unwrap();
    let packs: Vec<_> = mem.list("data/").try_collect().await.unwrap();
    assert!(packs.len() >= 4, "{} packs", packs.len());
    for p in &packs {
        assert!(
            p.size <= pack_size as u64 + 4096,
            "{} is {} bytes, over {pack_size}",
            p.key,
            p.size
        );
    }
}

/// A chunk met again after the pack holding its first copy was indexed (the backup indexes its
/// packs every 16 and then forgets their blobs' ids, finding them in the index instead) is
/// stored once, within one backup, and both entries restore.
#[tokio::test]
async fn a_chunk_met_again_after_its_pack_was_indexed_is_stored_once() {
    use futures::TryStreamExt;
    let mem = Arc::new(MemorySink::new());
    let repo = Repository::init(
        mem.clone(),
        &key(),
        InitOptions {
            chunker: resilience_core::repo::ChunkerParams {
                min_size: 2048,
                avg_size: 4096,
                max_size: 8192,
            },
            // Small packs: the first copy alone fills dozens, indexed several times over.
            pack_size: 16 << 10,
            inline_limit: 1024,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let data = pseudo_random(2 << 20, 11);
    let source = MemorySource::new("mem:twice")
        .file("a", data.clone())
        .file("b", data.clone());
    let report = repo
        .backup(&source, BackupOptions::default())
        .await
        .unwrap();
    assert_eq!(
        report.record.new_bytes,
        data.len() as u64,
        "the second copy is deduplicated"
    );
    let packs: Vec<_> = mem.list("data/").try_collect().await.unwrap();
    let packed: u64 = packs.iter().map(|p| p.size).sum();
    assert!(
        packs.len() > 16 * 3,
        "{} packs: not indexed several times",
        packs.len()
    );
    assert!(
        packed < data.len() as u64 * 11 / 10,
        "{packed} bytes of packs for {} bytes of data stored twice",
        data.len()
    );
    let target = restore_all(&repo, &report.record.id).await;
    assert!(target.content("a").unwrap() == data);
    assert!(target.content("b").unwrap() == data);
    let v = repo.verify(VerifyOptions { full: true }).await.unwrap();
    assert!(v.is_ok(), "{v:?}");
}
