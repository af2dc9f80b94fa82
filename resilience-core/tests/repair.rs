//! Derived state is a cache: a damaged, truncated or lost index file never stops a backup or a
//! restore (its packs are found from their own tables), verify names it and the repair that
//! fixes it, prune refuses to decide from it, and `repair index` rebuilds it. Lost data is named
//! snapshot by snapshot and file by file by `repair snapshots`, which salvages what is left.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use resilience_core::catalog::{BackupStatus, Catalog};
use resilience_core::keys::KeyFileProvider;
use resilience_core::ops::prune::PruneOptions;
use resilience_core::ops::repair::{
    Loss, RepairCatalogOptions, RepairIndexOptions, RepairSnapshotsOptions, SalvageAction,
};
use resilience_core::ops::verify::{VerifyOptions, LOST_INDEX, REPAIR_INDEX, REPAIR_SNAPSHOTS};
use resilience_core::repo::lock::LockSettings;
use resilience_core::repo::{InitOptions, Repository};
use resilience_core::sink::{AppendOnlySink, MemorySink, Sink};
use resilience_core::testing::{pseudo_random as data, FaultySink, MemorySource, MemoryTarget};

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
    assert_eq!(d.repair.as_deref(), Some(REPAIR_SNAPSHOTS));
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

// ---- repair snapshots: lost data named file by file, and salvaged ----

/// The files of snapshot `id` with blobs in `pack`: (path, blobs there, blobs in all), in tree
/// order, found from the index and the tree (independently of `repair snapshots`).
async fn files_using_pack(repo: &Repository, id: &str, pack: &str) -> Vec<(String, usize, usize)> {
    let index = repo.load_index().await.unwrap();
    let record = repo.catalog().get(id).await.unwrap().unwrap();
    let mut tree = repo.tree_reader(&record, &index).await.unwrap();
    let mut out = Vec::new();
    while let Some(rec) = tree.next().await.unwrap() {
        let blobs = rec.content.blobs();
        let there = blobs
            .iter()
            .filter(|b| {
                resilience_core::internals::pack::pack_key(&index.lookup(&b.id).unwrap().pack)
                    == pack
            })
            .count();
        if there > 0 {
            out.push((rec.meta.path.to_string(), there, blobs.len()));
        }
    }
    out
}

/// Every object but locks, by name.
async fn names(sink: &dyn Sink) -> Vec<String> {
    keys(sink, "")
        .await
        .into_iter()
        .filter(|k| !k.starts_with("locks/"))
        .collect()
}

fn salvage(dry_run: bool) -> RepairSnapshotsOptions {
    RepairSnapshotsOptions {
        dry_run,
        salvage: true,
        read_data: false,
    }
}

#[tokio::test]
async fn a_lost_pack_names_its_snapshot_and_files_and_salvage_keeps_everything_else() {
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
        &[
            ("docs/keep", data(2 << 20, 1)),
            ("docs/lost", data(4 << 20, 9)),
            ("docs/small", b"tiny".to_vec()),
            ("z-last", data(2 << 20, 2)),
        ],
    )
    .await;
    let second = backup(
        &repo,
        &[("docs/keep", data(2 << 20, 1)), ("other", data(3 << 20, 3))],
    )
    .await;

    // A pack holding data of docs/lost, and of no tree and no file of the second snapshot.
    let index = repo.load_index().await.unwrap();
    let lost_file = files_using_pack_candidates(&repo, &first.id, "docs/lost").await;
    let mut chosen = None;
    for pack in lost_file {
        let packed = repo
            .read_pack_table(&pack, mem.head(&pack).await.unwrap().size)
            .await
            .unwrap();
        let tree = packed
            .blobs
            .iter()
            .any(|b| b.kind == resilience_core::internals::blob::BlobKind::Tree);
        if !tree && files_using_pack(&repo, &second.id, &pack).await.is_empty() {
            chosen = Some(pack);
            break;
        }
    }
    drop(index);
    let pack = chosen.expect("a pack with only first-snapshot data of docs/lost");
    let expected = files_using_pack(&repo, &first.id, &pack).await;
    assert!(
        expected.iter().any(|(p, _, _)| p == "docs/lost"),
        "{expected:?}"
    );
    mem.delete(&pack).await.unwrap();

    // Report only: the snapshot, the files, the pack; nothing written.
    let before = contents(mem.as_ref()).await;
    let all_before = keys(mem.as_ref(), "").await;
    let report = repo
        .repair_snapshots(RepairSnapshotsOptions::default())
        .await
        .unwrap();
    assert!(!report.is_sound());
    assert_eq!(report.snapshots_checked, 2);
    assert_eq!(report.damaged.len(), 1, "{report:#?}");
    let d = &report.damaged[0];
    assert_eq!(d.snapshot, first.id);
    assert_eq!(d.salvage, SalvageAction::NotRequested);
    assert!(d.manifest.is_none() && d.tree.is_none(), "{d:#?}");
    let named: Vec<(String, usize, usize)> = d
        .files
        .iter()
        .map(|f| (f.path.clone(), f.blobs_lost, f.blobs))
        .collect();
    assert_eq!(named, expected);
    for f in &d.files {
        let whole = f.blobs_lost == f.blobs;
        assert_eq!(
            f.loss,
            if whole { Loss::Whole } else { Loss::Partial },
            "{f:?}"
        );
    }
    assert_eq!(d.lost_objects.len(), 1, "{:?}", d.lost_objects);
    assert_eq!(d.lost_objects[0].object, pack);
    assert_eq!(d.lost_objects[0].problem, "missing");
    let files_total = first.files.len() as u64;
    assert_eq!(d.entries_kept, files_total - expected.len() as u64);

    // A dry run of the salvage: what it would do, and nothing written (not even a lock).
    let dry = repo.repair_snapshots(salvage(true)).await.unwrap();
    assert_eq!(dry.damaged.len(), 1);
    assert_eq!(dry.damaged[0].salvage, SalvageAction::WouldWrite);
    assert!(dry.salvaged.is_empty());
    assert_eq!(contents(mem.as_ref()).await, before);
    assert_eq!(keys(mem.as_ref(), "").await, all_before);

    // The salvage: a new snapshot of everything else, reusing the blobs.
    let done = repo.repair_snapshots(salvage(false)).await.unwrap();
    assert_eq!(done.salvaged.len(), 1, "{done:#?}");
    let salvaged = done.salvaged[0].clone();
    assert_eq!(
        done.damaged[0].salvage,
        SalvageAction::Written {
            snapshot: salvaged.clone()
        }
    );
    let original = repo.catalog().get(&first.id).await.unwrap().unwrap();
    let record = repo.catalog().get(&salvaged).await.unwrap().unwrap();
    assert_eq!(record.status, BackupStatus::Succeeded);
    assert_eq!(record.started_at, original.started_at);
    assert_eq!(record.finished_at, original.finished_at);
    assert_eq!(record.source, original.source);
    assert_eq!(record.new_bytes, 0);
    assert_eq!(record.entries, files_total - expected.len() as u64);
    let s = record.salvage.as_ref().expect("recorded as salvaged");
    assert_eq!(s.from, first.id);
    assert_eq!(s.files_left_out, expected.len() as u64);
    let left_out: Vec<String> = expected.iter().map(|(p, _, _)| p.clone()).collect();
    assert_eq!(s.paths_left_out, left_out);
    assert_eq!(s.entries_unreadable, 0);
    // The original is left as it was.
    assert_eq!(original.revision, 2);
    assert!(original.salvage.is_none());

    // No data was uploaded again: every new pack holds tree blobs only.
    for k in keys(mem.as_ref(), "data/").await {
        if !before.contains_key(&k) {
            let size = mem.head(&k).await.unwrap().size;
            let table = repo.read_pack_table(&k, size).await.unwrap();
            assert!(
                table
                    .blobs
                    .iter()
                    .all(|b| b.kind == resilience_core::internals::blob::BlobKind::Tree),
                "{k} holds data"
            );
        }
    }

    // It restores byte-identical, without the lost files; the second snapshot still restores.
    let target = MemoryTarget::new();
    repo.restore(&salvaged, &target, Default::default())
        .await
        .unwrap();
    for (path, content) in &first.files {
        if left_out.contains(path) {
            assert_eq!(target.content(path), None, "{path} is left out");
        } else {
            assert!(
                target.content(path).as_deref() == Some(content.as_slice()),
                "{path} restores differently"
            );
        }
    }
    assert_restores(&repo, &[second]).await;

    // Verify names the pack, the original only, and the salvage as the way to keep the rest.
    let v = repo.verify(VerifyOptions::default()).await.unwrap();
    assert_eq!(v.damaged.len(), 1, "{:?}", v.damaged);
    assert_eq!(v.damaged[0].object, pack);
    assert_eq!(v.damaged[0].affected_snapshots, vec![first.id.clone()]);
    assert_eq!(v.damaged[0].repair.as_deref(), Some(REPAIR_SNAPSHOTS));

    // Idempotent: a second salvage writes nothing and names the first.
    let after = contents(mem.as_ref()).await;
    let again = repo.repair_snapshots(salvage(false)).await.unwrap();
    assert!(again.salvaged.is_empty());
    assert_eq!(again.damaged.len(), 1, "{again:#?}");
    assert_eq!(
        again.damaged[0].salvage,
        SalvageAction::AlreadySalvaged {
            snapshot: salvaged.clone()
        }
    );
    assert_eq!(contents(mem.as_ref()).await, after);
    assert_eq!(
        names(mem.as_ref()).await,
        after.keys().cloned().collect::<Vec<_>>()
    );
}

/// The packs holding blobs of `path` in snapshot `id`.
async fn files_using_pack_candidates(repo: &Repository, id: &str, path: &str) -> Vec<String> {
    let index = repo.load_index().await.unwrap();
    let record = repo.catalog().get(id).await.unwrap().unwrap();
    let mut tree = repo.tree_reader(&record, &index).await.unwrap();
    let mut out = Vec::new();
    while let Some(rec) = tree.next().await.unwrap() {
        if rec.meta.path.to_string() == path {
            for b in rec.content.blobs() {
                let k =
                    resilience_core::internals::pack::pack_key(&index.lookup(&b.id).unwrap().pack);
                if !out.contains(&k) {
                    out.push(k);
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn a_damaged_tree_blob_loses_the_entries_after_it_and_salvage_keeps_those_before() {
    let mem = Arc::new(MemorySink::new());
    let options = InitOptions {
        pack_size: 1 << 20,
        chunker: resilience_core::internals::chunker::ChunkerParams {
            min_size: 16 << 10,
            avg_size: 32 << 10,
            max_size: 64 << 10,
        },
        ..Default::default()
    };
    let repo = Repository::init(mem.clone(), &key(), options)
        .await
        .unwrap()
        .with_lock_settings(settings());
    // Small files (stored inside the tree) make a tree of many blobs.
    let files: Vec<(String, Vec<u8>)> = (0..240)
        .map(|i| (format!("d{:02}/f{i:03}", i / 20), data(3000, i as u64)))
        .collect();
    let borrowed: Vec<(&str, Vec<u8>)> =
        files.iter().map(|(p, c)| (p.as_str(), c.clone())).collect();
    let taken = backup(&repo, &borrowed).await;
    let record = repo.catalog().get(&taken.id).await.unwrap().unwrap();
    let manifest = repo.load_manifest(&record).await.unwrap();
    assert!(
        manifest.tree.len() >= 3,
        "{} tree blobs",
        manifest.tree.len()
    );

    // Flip bytes inside one tree blob in the middle (its pack keeps its size and table).
    let cut = manifest.tree.len() / 2;
    let index = repo.load_index().await.unwrap();
    let loc = index.lookup(&manifest.tree[cut].id).unwrap();
    let pack = resilience_core::internals::pack::pack_key(&loc.pack);
    let mut bytes = mem.get(&pack).await.unwrap().to_vec();
    let at = loc.offset as usize + loc.length as usize / 2;
    bytes[at..at + 3].iter_mut().for_each(|b| *b ^= 0x5a);
    mem.tamper(&pack, bytes.into());

    // What is readable: the records wholly inside the tree blobs before the damaged one.
    let mut decoder = resilience_core::internals::snapshot::TreeDecoder::new();
    let mut readable = Vec::new();
    for r in &manifest.tree[..cut] {
        let at = index.lookup(&r.id).unwrap();
        let piece = resilience_core::ops::restore::read_blob(&repo, r.id, at)
            .await
            .unwrap();
        decoder.feed(&piece);
        while let Some(rec) = decoder.next_record("tree").unwrap() {
            readable.push(rec.meta.path.to_string());
        }
    }
    assert!(!readable.is_empty() && readable.len() < files.len());

    let report = repo
        .repair_snapshots(RepairSnapshotsOptions::default())
        .await
        .unwrap();
    assert_eq!(report.damaged.len(), 1, "{report:#?}");
    let d = &report.damaged[0];
    assert_eq!(d.snapshot, taken.id);
    assert!(d.files.is_empty(), "{:?}", d.files);
    let tree = d.tree.as_ref().expect("a lost part of the tree");
    assert_eq!(tree.after.as_deref(), readable.last().map(String::as_str));
    assert_eq!(
        tree.entries_unreadable,
        (files.len() - readable.len()) as u64
    );
    assert_eq!(
        tree.lost.object,
        format!("{pack} (blob {})", manifest.tree[cut].id)
    );
    assert_eq!(d.entries_kept, readable.len() as u64);

    // The salvage keeps exactly the readable entries, byte-identical.
    let done = repo.repair_snapshots(salvage(false)).await.unwrap();
    let salvaged = done.salvaged.first().expect("salvaged").clone();
    let record = repo.catalog().get(&salvaged).await.unwrap().unwrap();
    let s = record.salvage.unwrap();
    assert_eq!(
        s.tree_lost_after.as_deref(),
        readable.last().map(String::as_str)
    );
    assert_eq!(s.entries_unreadable, (files.len() - readable.len()) as u64);
    assert_eq!(s.files_left_out, 0);
    let target = MemoryTarget::new();
    repo.restore(&salvaged, &target, Default::default())
        .await
        .unwrap();
    for (path, content) in &files {
        if readable.contains(path) {
            assert!(
                target.content(path).as_deref() == Some(content.as_slice()),
                "{path}"
            );
        } else {
            assert_eq!(target.content(path), None, "{path} is after the loss");
        }
    }
    // The salvage itself is sound.
    let v = repo.verify(VerifyOptions { full: true }).await.unwrap();
    assert!(
        v.damaged
            .iter()
            .all(|d| !d.affected_snapshots.contains(&salvaged)),
        "{:?}",
        v.damaged
    );
}

#[tokio::test]
async fn damage_inside_a_pack_is_found_by_reading_data() {
    let (mem, repo, taken, _file) = repository().await;
    // A byte flipped in the middle of the data of `c` (third snapshot only).
    let c = files_using_pack_candidates(&repo, &taken[2].id, "c").await;
    let pack = c[0].clone();
    let index = repo.load_index().await.unwrap();
    let record = repo.catalog().get(&taken[2].id).await.unwrap().unwrap();
    let mut tree = repo.tree_reader(&record, &index).await.unwrap();
    let mut target_blob = None;
    while let Some(rec) = tree.next().await.unwrap() {
        for b in rec.content.blobs() {
            let loc = index.lookup(&b.id).unwrap();
            if resilience_core::internals::pack::pack_key(&loc.pack) == pack
                && target_blob.is_none()
            {
                target_blob = Some(loc);
            }
        }
    }
    let loc = target_blob.unwrap();
    let mut bytes = mem.get(&pack).await.unwrap().to_vec();
    bytes[loc.offset as usize + loc.length as usize / 2] ^= 1;
    mem.tamper(&pack, bytes.into());

    // Tables and sizes are intact: only reading the blobs finds it.
    let quick = repo
        .repair_snapshots(RepairSnapshotsOptions::default())
        .await
        .unwrap();
    assert!(quick.is_sound(), "{quick:#?}");
    let full = repo
        .repair_snapshots(RepairSnapshotsOptions {
            read_data: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let damaged: Vec<&str> = full.damaged.iter().map(|d| d.snapshot.as_str()).collect();
    let users: Vec<&str> = {
        let mut u = Vec::new();
        for t in &taken {
            if !files_using_pack(&repo, &t.id, &pack).await.is_empty() {
                u.push(t.id.as_str());
            }
        }
        u
    };
    assert_eq!(damaged, users);
    let d = full
        .damaged
        .iter()
        .find(|d| d.snapshot == taken[2].id)
        .unwrap();
    assert_eq!(d.files.len(), 1);
    assert_eq!(d.files[0].path, "c");
    assert_eq!(d.files[0].blobs_lost, 1);
    let whole = d.files[0].blobs == 1;
    assert_eq!(
        d.files[0].loss,
        if whole { Loss::Whole } else { Loss::Partial }
    );
    assert_eq!(d.lost_objects[0].object, pack);
    assert!(
        d.lost_objects[0].problem.contains("fail authentication"),
        "{:?}",
        d.lost_objects
    );
}

#[tokio::test]
async fn a_damaged_manifest_is_named_and_cannot_be_salvaged() {
    let (mem, repo, taken, _file) = repository().await;
    let manifest = format!("snapshots/{}", taken[1].id);
    let bytes = mem.get(&manifest).await.unwrap();
    mem.tamper(&manifest, bytes.slice(..bytes.len() - 1));
    let report = repo.repair_snapshots(salvage(false)).await.unwrap();
    assert_eq!(report.damaged.len(), 1, "{report:#?}");
    let d = &report.damaged[0];
    assert_eq!(d.snapshot, taken[1].id);
    assert_eq!(d.manifest.as_ref().unwrap().object, manifest);
    assert!(
        matches!(d.salvage, SalvageAction::Impossible { .. }),
        "{d:?}"
    );
    assert!(report.salvaged.is_empty());
}

#[tokio::test]
async fn a_sound_repository_reports_nothing_and_salvage_writes_nothing() {
    let (mem, repo, _taken, _file) = repository().await;
    let before = contents(mem.as_ref()).await;
    for read_data in [false, true] {
        let report = repo
            .repair_snapshots(RepairSnapshotsOptions {
                dry_run: false,
                salvage: true,
                read_data,
            })
            .await
            .unwrap();
        assert!(report.is_sound(), "{report:#?}");
        assert_eq!(report.snapshots_checked, 3);
        assert!(report.packs_checked > 0);
        assert!(report.salvaged.is_empty());
    }
    assert_eq!(contents(mem.as_ref()).await, before);
}

/// The current revision of `id`'s record, as its object name says.
async fn current_revision(sink: &dyn Sink, id: &str) -> String {
    keys(sink, &format!("catalog/{id}/"))
        .await
        .pop()
        .expect("a revision")
}

/// A backup's `succeeded` revision that does not read back (rotted, or cut short as it was
/// written) leaves a record that reads as `running`: verify names the revision and the
/// snapshot, and `repair catalog` rebuilds it from the manifest, after which the snapshot is
/// listed succeeded again, verifies and restores. Where the manifest is damaged too, the record
/// is left and named.
#[tokio::test]
async fn repair_catalog_rebuilds_a_damaged_succeeded_revision_from_the_manifest() {
    let (mem, repo, taken, _) = repository().await;
    let victim = &taken[1];
    let revision = current_revision(mem.as_ref(), &victim.id).await;
    assert!(revision.ends_with("-succeeded"), "{revision}");
    let original = mem.get(&revision).await.unwrap();
    harm(&mem, &revision, Harm::Truncate, original);
    let report = repo.verify(VerifyOptions { full: true }).await.unwrap();
    let named: Vec<&str> = report.damaged.iter().map(|d| d.object.as_str()).collect();
    assert_eq!(named, [revision.as_str()], "{:?}", report.damaged);
    assert!(
        report.damaged[0].problem.contains("repair catalog"),
        "{}",
        report.damaged[0].problem
    );
    assert_eq!(
        report.damaged[0].repair.as_deref(),
        Some(resilience_core::ops::verify::REPAIR_CATALOG)
    );
    let listed = repo.catalog().get(&victim.id).await.unwrap().unwrap();
    assert_eq!(listed.status, BackupStatus::Running);

    let dry = repo
        .repair_catalog(RepairCatalogOptions { dry_run: true })
        .await
        .unwrap();
    assert_eq!(dry.rewritten.len(), 1, "{dry:?}");
    assert_eq!(current_revision(mem.as_ref(), &victim.id).await, revision);

    let done = repo
        .repair_catalog(RepairCatalogOptions::default())
        .await
        .unwrap();
    assert_eq!(done.records_checked, 3);
    assert_eq!(done.rewritten.len(), 1, "{done:?}");
    assert_eq!(done.rewritten[0].damaged, revision);
    assert_eq!(done.rewritten[0].status, BackupStatus::Succeeded);
    assert!(done.left.is_empty(), "{done:?}");
    let record = repo.catalog().get(&victim.id).await.unwrap().unwrap();
    assert_eq!(record.status, BackupStatus::Succeeded);
    assert!(record.manifest_checksum.is_some() && record.finished_at.is_some());
    assert!(repo
        .verify(VerifyOptions { full: true })
        .await
        .unwrap()
        .is_ok());
    assert_restores(&repo, &taken).await;
    // Run again: nothing more to do.
    let again = repo
        .repair_catalog(RepairCatalogOptions::default())
        .await
        .unwrap();
    assert!(
        again.rewritten.is_empty() && again.left.is_empty(),
        "{again:?}"
    );

    // The third snapshot: its succeeded revision and its manifest both damaged.
    let third = &taken[2];
    let revision = current_revision(mem.as_ref(), &third.id).await;
    let manifest = format!("snapshots/{}", third.id);
    for key in [&revision, &manifest] {
        let bytes = mem.get(key).await.unwrap();
        harm(&mem, key, Harm::Flip, bytes);
    }
    let left = repo
        .repair_catalog(RepairCatalogOptions::default())
        .await
        .unwrap();
    assert!(left.rewritten.is_empty(), "{left:?}");
    assert_eq!(left.left.len(), 1, "{left:?}");
    assert_eq!(left.left[0].object, revision);
    assert!(
        left.left[0].reason.contains("manifest does not read back"),
        "{}",
        left.left[0].reason
    );
    assert_eq!(current_revision(mem.as_ref(), &third.id).await, revision);
}
