//! Derived state is a cache: a damaged, truncated or lost index file never stops a backup or a
//! restore (its packs are found from their own tables), verify names it and the repair that
//! fixes it, prune refuses to decide from it, and `repair index` rebuilds it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use resilience_core::keys::KeyFileProvider;
use resilience_core::lock::LockSettings;
use resilience_core::prune::PruneOptions;
use resilience_core::repair::RepairIndexOptions;
use resilience_core::repo::{InitOptions, Repository};
use resilience_core::sink::{AppendOnlySink, MemorySink, Sink};
use resilience_core::testing::{pseudo_random as data, FaultySink, MemorySource, MemoryTarget};
use resilience_core::verify::{VerifyOptions, LOST_INDEX, REPAIR_INDEX};

/// How one index file is harmed.
#[derive(Clone, Copy, Debug)]
enum Harm {
    /// Three bytes in the middle flipped.
    Flip,
    /// Cut to half its length.
    Truncate,
    /// Deleted.
    Delete,
}

fn settings() -> LockSettings {
    LockSettings {
        settle: Duration::from_millis(1),
        ..Default::default()
    }
}

fn key() -> KeyFileProvider {
    KeyFileProvider::from_key([7; 32])
}

async fn open(sink: Arc<dyn Sink>) -> Repository {
    Repository::open(sink, &key())
        .await
        .unwrap()
        .with_lock_settings(settings())
}

/// A snapshot and what it holds.
struct Taken {
    id: String,
    files: Vec<(String, Vec<u8>)>,
}

async fn backup(repo: &Repository, files: &[(&str, Vec<u8>)]) -> Taken {
    let mut source = MemorySource::new("s");
    for (path, content) in files {
        source = source.file(path, content.clone());
    }
    let report = repo.backup(&source, Default::default()).await.unwrap();
    Taken {
        id: report.record.id,
        files: files
            .iter()
            .map(|(p, c)| (p.to_string(), c.clone()))
            .collect(),
    }
}

async fn keys(sink: &dyn Sink, prefix: &str) -> Vec<String> {
    let mut k: Vec<String> = sink
        .list(prefix)
        .map_ok(|m| m.key)
        .try_collect()
        .await
        .unwrap();
    k.sort();
    k
}

/// Every object but locks, with its bytes.
async fn contents(sink: &dyn Sink) -> BTreeMap<String, Bytes> {
    let mut out = BTreeMap::new();
    for k in keys(sink, "").await {
        if !k.starts_with("locks/") {
            let bytes = sink.get(&k).await.unwrap();
            out.insert(k, bytes);
        }
    }
    out
}

async fn assert_restores(repo: &Repository, taken: &[Taken]) {
    for t in taken {
        let target = MemoryTarget::new();
        repo.restore(&t.id, &target, Default::default())
            .await
            .unwrap_or_else(|e| panic!("restoring {}: {e}", t.id));
        for (path, content) in &t.files {
            assert!(
                target.content(path).as_deref() == Some(content.as_slice()),
                "{path} of {} restores differently",
                t.id
            );
        }
    }
}

/// A repository of three snapshots (1 MiB packs: several packs and one index file per backup),
/// and the index file that the first backup wrote.
async fn repository() -> (Arc<MemorySink>, Repository, Vec<Taken>, String) {
    let mem = Arc::new(MemorySink::new());
    let options = InitOptions {
        pack_size: 1 << 20,
        ..Default::default()
    };
    let repo = Repository::init(mem.clone(), &key(), options)
        .await
        .unwrap()
        .with_lock_settings(settings());
    let first = backup(
        &repo,
        &[("a", data(3 << 20, 1)), ("small", b"tiny".to_vec())],
    )
    .await;
    let first_index = keys(mem.as_ref(), "index/").await;
    assert_eq!(first_index.len(), 1);
    let second = backup(&repo, &[("a", data(3 << 20, 1)), ("b", data(3 << 20, 2))]).await;
    let third = backup(&repo, &[("c", data(2 << 20, 3))]).await;
    assert!(keys(mem.as_ref(), "data/").await.len() >= 4);
    assert!(keys(mem.as_ref(), "index/").await.len() >= 3);
    let first_index = first_index.into_iter().next().unwrap();
    (mem, repo, vec![first, second, third], first_index)
}

fn harm(mem: &MemorySink, file: &str, how: Harm, bytes: Bytes) {
    match how {
        Harm::Flip => {
            let mut b = bytes.to_vec();
            let mid = b.len() / 2;
            for byte in &mut b[mid..mid + 3] {
                *byte ^= 0x5a;
            }
            mem.tamper(file, b.into());
        }
        Harm::Truncate => mem.tamper(file, bytes.slice(..bytes.len() / 2)),
        Harm::Delete => {}
    }
}

async fn damaged_index_file_costs_time_never_data(how: Harm) {
    let (mem, repo, mut taken, file) = repository().await;
    let original = mem.get(&file).await.unwrap();
    match how {
        Harm::Delete => mem.delete(&file).await.unwrap(),
        _ => harm(&mem, &file, how, original),
    }
    let repo = open(mem.clone()).await.with_clock(repo.clock().clone());

    // Readers: the index loads, naming the damaged file; every snapshot restores.
    let loaded = repo.load_index_report().await.unwrap();
    match how {
        Harm::Delete => assert!(loaded.damaged.is_empty()),
        _ => {
            assert_eq!(loaded.damaged, vec![file.clone()]);
            assert_restores(&repo, &taken).await;
        }
    }

    // Verify names the file and the repair; no snapshot is lost.
    let report = repo.verify(VerifyOptions::default()).await.unwrap();
    assert!(!report.is_ok());
    assert_eq!(report.damaged.len(), 1, "{:?}", report.damaged);
    let d = &report.damaged[0];
    assert_eq!(d.repair.as_deref(), Some(REPAIR_INDEX));
    assert!(REPAIR_INDEX.ends_with("repair index"));
    match how {
        Harm::Delete => assert_eq!(d.object, LOST_INDEX),
        _ => {
            assert_eq!(d.object, file);
            assert!(d.affected_snapshots.is_empty(), "{d:?}");
        }
    }

    // Prune refuses to decide from an incomplete index, and deletes nothing.
    if !matches!(how, Harm::Delete) {
        let before = contents(mem.as_ref()).await;
        let err = repo
            .prune(PruneOptions {
                grace: Duration::ZERO,
                ..Default::default()
            })
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(&file), "{err}");
        assert!(err.contains("run `resilience repair index` first"), "{err}");
        assert_eq!(contents(mem.as_ref()).await, before);
    }

    // A backup still succeeds (and adopts the packs no intact index file lists).
    taken.push(backup(&repo, &[("d", data(2 << 20, 4)), ("a", data(3 << 20, 1))]).await);
    assert_restores(&repo, &taken).await;

    // A dry run changes nothing.
    let before = contents(mem.as_ref()).await;
    let dry = repo
        .repair_index(RepairIndexOptions { dry_run: true })
        .await
        .unwrap();
    assert!(dry.dry_run);
    assert_eq!(contents(mem.as_ref()).await, before);
    let packs = keys(mem.as_ref(), "data/").await.len();
    assert_eq!(dry.packs_indexed, packs);
    match how {
        Harm::Delete => assert!(dry.damaged_index_files.is_empty()),
        _ => assert_eq!(dry.damaged_index_files, vec![file.clone()]),
    }

    // The repair rebuilds the index from the packs.
    let old_files = keys(mem.as_ref(), "index/").await;
    let fixed = repo
        .repair_index(RepairIndexOptions::default())
        .await
        .unwrap();
    assert!(!fixed.dry_run);
    assert_eq!(fixed.packs_indexed, packs);
    assert!(fixed.unreadable_packs.is_empty() && fixed.missing_packs.is_empty());
    assert!(fixed.not_removed.is_empty());
    assert_eq!(fixed.damaged_removed, fixed.damaged_index_files);
    assert_eq!(fixed.new_index_files, fixed.index_files_written.len());
    let new_files = keys(mem.as_ref(), "index/").await;
    let mut written = fixed.index_files_written.clone();
    written.sort();
    assert_eq!(new_files, written);
    assert!(new_files.iter().all(|f| !old_files.contains(f)));
    assert!(repo.load_index_report().await.unwrap().damaged.is_empty());
    let report = repo.verify(VerifyOptions { full: true }).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.damaged);
    assert_eq!(report.unindexed_packs, 0);
    assert_restores(&repo, &taken).await;

    // Idempotent.
    let again = repo
        .repair_index(RepairIndexOptions::default())
        .await
        .unwrap();
    assert!(again.was_sound());
    assert_eq!(again.packs_indexed, packs);
    assert_eq!(again.old_removed, new_files.len());

    // Prune works again, and what it keeps restores.
    repo.prune(PruneOptions {
        grace: Duration::ZERO,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_restores(&repo, &taken).await;
    assert!(repo.verify(VerifyOptions::default()).await.unwrap().is_ok());
}

#[tokio::test]
async fn an_index_file_with_three_flipped_bytes_costs_time_never_data() {
    damaged_index_file_costs_time_never_data(Harm::Flip).await;
}

#[tokio::test]
async fn an_index_file_truncated_to_half_costs_time_never_data() {
    damaged_index_file_costs_time_never_data(Harm::Truncate).await;
}

#[tokio::test]
async fn a_deleted_index_file_costs_time_never_data() {
    damaged_index_file_costs_time_never_data(Harm::Delete).await;
}

#[tokio::test]
async fn an_intact_index_is_loaded_without_reading_pack_tables() {
    let (mem, _repo, _taken, file) = repository().await;
    let counting = Arc::new(FaultySink::new(mem.clone(), -1));
    let repo = open(counting.clone()).await;
    let loaded = repo.load_index_report().await.unwrap();
    assert!(loaded.damaged.is_empty());
    assert_eq!(counting.range_bytes_read(), 0);

    let original = mem.get(&file).await.unwrap();
    harm(&mem, &file, Harm::Flip, original);
    let loaded = repo.load_index_report().await.unwrap();
    assert_eq!(loaded.damaged, vec![file]);
    assert!(counting.range_bytes_read() > 0);
}

#[tokio::test]
async fn repair_in_append_only_mode_writes_the_new_index_and_names_what_it_could_not_remove() {
    let (mem, repo, taken, file) = repository().await;
    let original = mem.get(&file).await.unwrap();
    harm(&mem, &file, Harm::Truncate, original);
    let writer = open(Arc::new(AppendOnlySink::new(mem.clone())))
        .await
        .with_clock(repo.clock().clone());
    let report = writer
        .repair_index(RepairIndexOptions::default())
        .await
        .unwrap();
    assert_eq!(report.damaged_index_files, vec![file.clone()]);
    assert!(report.damaged_removed.is_empty());
    assert!(report.not_removed.contains(&file));
    assert!(!report.index_files_written.is_empty());
    assert_restores(&writer, &taken).await;

    // With maintenance credentials, a second run removes what is left.
    let maintenance = open(mem.clone()).await;
    let report = maintenance
        .repair_index(RepairIndexOptions::default())
        .await
        .unwrap();
    assert_eq!(report.damaged_removed, vec![file]);
    assert!(maintenance
        .verify(Default::default())
        .await
        .unwrap()
        .is_ok());
    assert_restores(&maintenance, &taken).await;
}

#[tokio::test]
async fn repair_names_a_damaged_pack_and_keeps_what_an_intact_index_knows_of_it() {
    let (mem, repo, _taken, _file) = repository().await;
    let pack = keys(mem.as_ref(), "data/").await.remove(0);
    let bytes = mem.get(&pack).await.unwrap();
    // The table's length and the checksum at the end.
    mem.tamper(&pack, bytes.slice(..bytes.len() - 10));
    let before = repo.load_index().await.unwrap();
    let report = repo
        .repair_index(RepairIndexOptions::default())
        .await
        .unwrap();
    assert_eq!(report.unreadable_packs.len(), 1);
    assert_eq!(report.unreadable_packs[0].pack, pack);
    assert!(report.unreadable_packs[0].kept_from_index);
    let after = repo.load_index().await.unwrap();
    assert_eq!(after.packs().len(), before.packs().len());
    assert_eq!(after.blob_count(), before.blob_count());
    // Verify still names the pack (nothing rebuilds it).
    let v = repo.verify(Default::default()).await.unwrap();
    let d = v.damaged.iter().find(|d| d.object == pack).unwrap();
    assert_eq!(d.repair, None);
    assert!(!d.affected_snapshots.is_empty());
}

#[tokio::test]
async fn key_rewrite_refuses_a_damaged_index_and_completes_after_repair() {
    let (mem, repo, taken, file) = repository().await;
    let original = mem.get(&file).await.unwrap();
    harm(&mem, &file, Harm::Flip, original);
    let err = repo.rewrite_data().await.unwrap_err().to_string();
    assert!(err.contains(&file), "{err}");
    assert!(err.contains("run `resilience repair index` first"), "{err}");
    let repo = open(mem.clone()).await;
    assert_restores(&repo, &taken).await;
    repo.repair_index(RepairIndexOptions::default())
        .await
        .unwrap();
    let report = repo.rewrite_data().await.unwrap();
    assert!(!report.retired_keys.is_empty(), "{report:?}");
    let repo = open(mem.clone()).await;
    assert_eq!(repo.keys().data_key_ids().len(), 1);
    assert!(repo
        .verify(VerifyOptions { full: true })
        .await
        .unwrap()
        .is_ok());
    assert_restores(&repo, &taken).await;
}
