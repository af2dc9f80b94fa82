//! The damage sweep: every kind of object in a repository, damaged every way (bytes flipped,
//! truncated, deleted), one case at a time on a fresh small repository. For each case:
//!
//! - `verify` (full) names the damaged object (or, for a deletion, the missing object) and
//!   exactly the snapshots it makes unrestorable, with the repair that fixes it where one
//!   exists;
//! - derived state (index files) is rebuilt by `repair index`, after which verify is clean;
//! - a restore of every snapshot either gives back every file byte for byte, or fails with an
//!   error naming the damaged object: never wrong bytes;
//! - the repository still opens (a damaged key copy: with the other copy, while the damaged
//!   one's credentials get an error naming it; a damaged key-set generation: opening fails
//!   naming it, and a process that already holds the keys still verifies and restores);
//! - a damaged catalog revision: the record falls back to the newest intact revision, with a
//!   warning naming the damaged one.
//!
//! Which byte is flipped and where an object is cut come from a seeded RNG
//! (`RESILIENCE_DAMAGE_SEED`, default below), printed with every case, so a failure is
//! reproduced by running again with the same seed. `RESILIENCE_DAMAGE_CASE=<substring>` runs
//! only the cases whose name contains it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use resilience_core::catalog::{BackupStatus, Catalog};
use resilience_core::internals::blob::BlobId;
use resilience_core::internals::chunker::ChunkerParams;
use resilience_core::internals::index::{BlobLocation, Index};
use resilience_core::internals::pack;
use resilience_core::keys::KeyFileProvider;
use resilience_core::ops::repair::RepairIndexOptions;
use resilience_core::ops::restore::TreeReader;
use resilience_core::ops::verify::{
    DamagedObject, VerifyOptions, VerifyReport, LOST_INDEX, LOST_KEY_SET, REPAIR_INDEX,
    REPAIR_SNAPSHOTS,
};
use resilience_core::repo::lock::LockSettings;
use resilience_core::repo::{InitOptions, Repository};
use resilience_core::sink::{MemorySink, Sink};
use resilience_core::testing::{pseudo_random as data, MemorySource, MemoryTarget};
use tracing::instrument::WithSubscriber;

/// The seed of the default run.
const DEFAULT_SEED: u64 = 0x5eed_da3a;

/// The key of the copy that is damaged in the key-copy cases.
const KEY_A: [u8; 32] = [11; 32];
/// The key of the second copy, which must still open the repository.
const KEY_B: [u8; 32] = [12; 32];

/// What is damaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A whole pack (`data/…`), at a random place.
    Pack,
    /// The sealed blob table inside a pack.
    PackTable,
    /// An index file (`index/…`): derived state.
    IndexFile,
    /// A snapshot manifest (`snapshots/…`).
    Manifest,
    /// A snapshot's tree blob, inside its pack.
    Tree,
    /// The current revision of a catalog record (`catalog/…`).
    CatalogRevision,
    /// One of two key copies (`keys/<id>`).
    KeyCopy,
    /// The key-set generation in force (`keys/keyset-…`).
    KeySetGeneration,
}

const KINDS: [Kind; 8] = [
    Kind::Pack,
    Kind::PackTable,
    Kind::IndexFile,
    Kind::Manifest,
    Kind::Tree,
    Kind::CatalogRevision,
    Kind::KeyCopy,
    Kind::KeySetGeneration,
];

/// How it is damaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Damage {
    /// One byte XORed with a random non-zero value.
    Flipped,
    /// Cut at a random length (within the region, for a part of a pack).
    Truncated,
    /// The object deleted (for a part of a pack: its bytes cut out of the pack).
    Deleted,
}

const DAMAGES: [Damage; 3] = [Damage::Flipped, Damage::Truncated, Damage::Deleted];

fn case_name(kind: Kind, damage: Damage) -> String {
    format!("{kind:?} {damage:?}").to_lowercase()
}

fn settings() -> LockSettings {
    LockSettings {
        settle: Duration::from_millis(1),
        ..Default::default()
    }
}

/// One snapshot and what it holds.
struct Taken {
    id: String,
    files: Vec<(String, Vec<u8>)>,
}

/// A fresh repository of two snapshots, its key copies and what each snapshot uses.
struct Fixture {
    mem: Arc<MemorySink>,
    /// Opened before any damage (as a daemon holds it).
    held: Repository,
    taken: Vec<Taken>,
    /// The index as it was intact.
    index: Index,
    /// Every blob each snapshot needs (tree and content), by snapshot id.
    uses: BTreeMap<String, BTreeSet<BlobId>>,
    /// Each snapshot's tree blobs.
    trees: BTreeMap<String, Vec<BlobId>>,
    /// The object of the copy for [`KEY_A`].
    copy_a: String,
}

async fn backup(repo: &Repository, files: Vec<(String, Vec<u8>)>) -> Taken {
    let source = files
        .iter()
        .fold(MemorySource::new("s"), |s, (p, c)| s.file(p, c.clone()));
    let report = repo.backup(&source, Default::default()).await.unwrap();
    Taken {
        id: report.record.id,
        files,
    }
}

async fn keys_under(sink: &dyn Sink, prefix: &str) -> Vec<String> {
    let mut k: Vec<String> = sink
        .list(prefix)
        .map_ok(|m| m.key)
        .try_collect()
        .await
        .unwrap();
    k.sort();
    k
}

async fn fixture() -> Fixture {
    let mem = Arc::new(MemorySink::new());
    let options = InitOptions {
        chunker: ChunkerParams {
            min_size: 2048,
            avg_size: 4096,
            max_size: 8192,
        },
        pack_size: 16 << 10,
        inline_limit: 1024,
        ..Default::default()
    };
    let held = Repository::init(mem.clone(), &KeyFileProvider::from_key(KEY_A), options)
        .await
        .unwrap()
        .with_lock_settings(settings());
    let copy_a = keys_under(mem.as_ref(), "keys/")
        .await
        .into_iter()
        .find(|k| !k.starts_with("keys/keyset-"))
        .unwrap();
    held.add_key(&KeyFileProvider::from_key(KEY_B))
        .await
        .unwrap();
    let first: Vec<(String, Vec<u8>)> = vec![
        ("f0".into(), data(20 << 10, 1)),
        ("f1".into(), data(14 << 10, 2)),
        ("dir/f2".into(), data(9 << 10, 3)),
        ("small".into(), b"tiny".to_vec()),
    ];
    let mut second = first.clone();
    second[1].1 = data(17 << 10, 4);
    second.push(("dir/f3".into(), data(12 << 10, 5)));
    let taken = vec![backup(&held, first).await, backup(&held, second).await];
    // A verification recorded, as a daemon does: every record has two succeeded revisions.
    let report = held.verify(VerifyOptions { full: true }).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.damaged);
    held.record_verification(&report).await.unwrap();

    let index = held.load_index().await.unwrap();
    let mut uses = BTreeMap::new();
    let mut trees = BTreeMap::new();
    for t in &taken {
        let record = held.catalog().get(&t.id).await.unwrap().unwrap();
        let manifest = held.load_manifest(&record).await.unwrap();
        let mut blobs: BTreeSet<BlobId> = manifest.tree.iter().map(|r| r.id).collect();
        trees.insert(t.id.clone(), manifest.tree.iter().map(|r| r.id).collect());
        let mut reader = TreeReader::new(held.clone(), &index, &manifest.tree);
        while let Some(rec) = reader.next().await.unwrap() {
            blobs.extend(rec.content.blobs().iter().map(|b| b.id));
        }
        uses.insert(t.id.clone(), blobs);
    }
    assert!(keys_under(mem.as_ref(), "data/").await.len() >= 4);
    assert!(keys_under(mem.as_ref(), "index/").await.len() >= 2);
    Fixture {
        mem,
        held,
        taken,
        index,
        uses,
        trees,
        copy_a,
    }
}

/// The damage done: which object, and its bytes before and after (`None`: deleted).
struct Done {
    object: String,
    before: Bytes,
    after: Option<Bytes>,
}

/// Damages the region `range` of `object` (the whole object when `None`).
async fn harm(
    mem: &MemorySink,
    object: &str,
    range: Option<std::ops::Range<usize>>,
    damage: Damage,
    rng: &mut StdRng,
) -> Done {
    let before = mem.get(object).await.unwrap();
    let whole = range.is_none();
    let range = range.unwrap_or(0..before.len());
    assert!(!range.is_empty(), "{object}: nothing to damage");
    let after = match damage {
        Damage::Flipped => {
            let mut b = before.to_vec();
            let at = rng.gen_range(range.clone());
            b[at] ^= rng.gen_range(1..=255u8);
            Some(Bytes::from(b))
        }
        Damage::Truncated => Some(before.slice(..rng.gen_range(range.clone()))),
        Damage::Deleted if whole => None,
        Damage::Deleted => {
            let mut b = before[..range.start].to_vec();
            b.extend_from_slice(&before[range.end..]);
            Some(Bytes::from(b))
        }
    };
    match &after {
        Some(b) => mem.tamper(object, b.clone()),
        None => mem.delete(object).await.unwrap(),
    }
    Done {
        object: object.to_owned(),
        before,
        after,
    }
}

/// What verify must report for one case.
struct Expected {
    /// The object named, with the snapshots it affects and the repair it suggests; `None` when
    /// the damage cannot be seen (it is then asserted harmless).
    damaged: Option<(String, BTreeSet<String>, Option<String>)>,
    /// Names a failing restore may give: the damaged object, or the pack that holds it.
    restore_names: Vec<String>,
}

impl Fixture {
    fn location(&self, id: &BlobId) -> BlobLocation {
        self.index
            .lookup(id)
            .expect("the fixture's blobs are indexed")
    }

    /// Every blob of `pack` that any snapshot uses, with its location.
    fn blobs_in(&self, pack: &str) -> Vec<(BlobId, BlobLocation)> {
        let all: BTreeSet<BlobId> = self.uses.values().flatten().copied().collect();
        all.into_iter()
            .map(|id| (id, self.location(&id)))
            .filter(|(_, loc)| pack::pack_key(&loc.pack) == pack)
            .collect()
    }

    /// The snapshots a damaged pack makes unrestorable, as verify judges it: those that use a
    /// blob whose bytes changed or are gone, or, when every blob still reads, every snapshot
    /// that uses the pack (it must be repaired).
    fn affected_by_pack(&self, done: &Done) -> BTreeSet<String> {
        let blobs = self.blobs_in(&done.object);
        let intact = |loc: &BlobLocation| {
            let (start, end) = (loc.offset as usize, (loc.offset + loc.length) as usize);
            done.after
                .as_ref()
                .is_some_and(|b| b.len() >= end && b[start..end] == done.before[start..end])
        };
        let mut broken: BTreeSet<BlobId> = blobs
            .iter()
            .filter(|(_, loc)| !intact(loc))
            .map(|(id, _)| *id)
            .collect();
        if broken.is_empty() {
            broken = blobs.iter().map(|(id, _)| *id).collect();
        }
        self.uses
            .iter()
            .filter(|(_, used)| !used.is_disjoint(&broken))
            .map(|(id, _)| id.clone())
            .collect()
    }
}

/// Records everything logged while a case runs, to find the catalog fallback's warning.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

async fn open(mem: &Arc<MemorySink>, key: [u8; 32]) -> resilience_core::Result<Repository> {
    Repository::open(mem.clone(), &KeyFileProvider::from_key(key))
        .await
        .map(|r| r.with_lock_settings(settings()))
}

/// Restores every snapshot: each gives back every file byte for byte, or fails naming one of
/// `names`. Returns how many restored.
async fn restore_all(case: &str, repo: &Repository, taken: &[Taken], names: &[String]) -> usize {
    let mut restored = 0;
    for t in taken {
        let target = MemoryTarget::new();
        match repo.restore(&t.id, &target, Default::default()).await {
            Ok(_) => {
                for (path, content) in &t.files {
                    assert!(
                        target.content(path).as_deref() == Some(content.as_slice()),
                        "{case}: WRONG BYTES: restore of {} returned Ok with {path} different",
                        t.id
                    );
                }
                restored += 1;
            }
            Err(e) => {
                let text = e.to_string();
                assert!(
                    names.iter().any(|n| text.contains(n.as_str())),
                    "{case}: restore of {} failed without naming the damaged object \
                     (one of {names:?}): {text}",
                    t.id
                );
            }
        }
    }
    restored
}

fn show(report: &VerifyReport) -> Vec<(String, String, Vec<String>, Option<String>)> {
    report
        .damaged
        .iter()
        .map(|d| {
            (
                d.object.clone(),
                d.problem.clone(),
                d.affected_snapshots.clone(),
                d.repair.clone(),
            )
        })
        .collect()
}

/// Asserts that verify reports exactly what `expected` says.
fn assert_verify(case: &str, report: &VerifyReport, expected: &Expected) {
    match &expected.damaged {
        None => assert!(
            report.is_ok(),
            "{case}: verify reports damage where none can be seen: {:?}",
            show(report)
        ),
        Some((object, affected, repair)) => {
            assert_eq!(
                report.damaged.len(),
                1,
                "{case}: verify must report exactly {object}: {:?}",
                show(report)
            );
            let d: &DamagedObject = &report.damaged[0];
            assert_eq!(&d.object, object, "{case}: {:?}", show(report));
            let got: BTreeSet<String> = d.affected_snapshots.iter().cloned().collect();
            assert_eq!(
                &got, affected,
                "{case}: affected snapshots of {object}: {d:?}"
            );
            assert_eq!(&d.repair, repair, "{case}: the repair of {object}: {d:?}");
            assert!(!d.problem.is_empty(), "{case}: {d:?}");
        }
    }
}

/// Runs one case. Returns a line describing its outcome.
async fn run_case(kind: Kind, damage: Damage, seed: u64) -> String {
    let case = format!("{} (seed {seed:#x})", case_name(kind, damage));
    let fx = fixture().await;
    let mem = &fx.mem;
    let mut rng = StdRng::seed_from_u64(seed ^ (kind as u64) << 8 ^ damage as u64);
    let all: BTreeSet<String> = fx.taken.iter().map(|t| t.id.clone()).collect();
    let pick = |rng: &mut StdRng, n: usize| rng.gen_range(0..n);

    // Choose the object and damage it.
    let (done, expected) = match kind {
        Kind::Pack | Kind::PackTable | Kind::Tree => {
            let (pack, range) = match kind {
                Kind::Pack => {
                    let packs = keys_under(mem.as_ref(), "data/").await;
                    (packs[pick(&mut rng, packs.len())].clone(), None)
                }
                Kind::PackTable => {
                    let packs = keys_under(mem.as_ref(), "data/").await;
                    let pack = packs[pick(&mut rng, packs.len())].clone();
                    let bytes = mem.get(&pack).await.unwrap();
                    let end = bytes.len() - pack::TAIL_LEN;
                    let len = u32::from_le_bytes(bytes[end..end + 4].try_into().unwrap());
                    (pack, Some(end - len as usize..end))
                }
                _ => {
                    let t = &fx.taken[pick(&mut rng, fx.taken.len())];
                    let tree = fx.trees[&t.id][0];
                    let loc = fx.location(&tree);
                    let start = loc.offset as usize;
                    (
                        pack::pack_key(&loc.pack),
                        Some(start..start + loc.length as usize),
                    )
                }
            };
            let done = harm(mem, &pack, range, damage, &mut rng).await;
            let affected = fx.affected_by_pack(&done);
            assert!(!affected.is_empty(), "{case}: the fixture uses {pack}");
            let expected = Expected {
                damaged: Some((pack.clone(), affected, Some(REPAIR_SNAPSHOTS.to_owned()))),
                restore_names: vec![pack],
            };
            (done, expected)
        }
        Kind::IndexFile => {
            let files = keys_under(mem.as_ref(), "index/").await;
            let file = files[pick(&mut rng, files.len())].clone();
            let done = harm(mem, &file, None, damage, &mut rng).await;
            // Derived state: no snapshot is lost, whether the file is damaged or gone.
            let object = if damage == Damage::Deleted {
                LOST_INDEX.to_owned()
            } else {
                file.clone()
            };
            let expected = Expected {
                damaged: Some((object, BTreeSet::new(), Some(REPAIR_INDEX.to_owned()))),
                restore_names: vec![file],
            };
            (done, expected)
        }
        Kind::Manifest => {
            let t = &fx.taken[pick(&mut rng, fx.taken.len())];
            let object = format!("snapshots/{}", t.id);
            let done = harm(mem, &object, None, damage, &mut rng).await;
            let expected = Expected {
                damaged: Some((object.clone(), BTreeSet::from([t.id.clone()]), None)),
                restore_names: vec![object],
            };
            (done, expected)
        }
        Kind::CatalogRevision => {
            let t = &fx.taken[pick(&mut rng, fx.taken.len())];
            let current = fx.held.catalog().refs(Some(&t.id)).await.unwrap()[0]
                .key
                .clone();
            let done = harm(mem, &current, None, damage, &mut rng).await;
            // A deleted newest revision leaves a record exactly as it was before that revision
            // was written: nothing can tell, and nothing is lost (asserted below).
            let damaged = (damage != Damage::Deleted).then(|| {
                (
                    current.clone(),
                    BTreeSet::new(),
                    Some(resilience_core::ops::verify::REPAIR_CATALOG.to_owned()),
                )
            });
            let expected = Expected {
                damaged,
                restore_names: vec![current],
            };
            (done, expected)
        }
        Kind::KeyCopy => {
            let object = fx.copy_a.clone();
            let done = harm(mem, &object, None, damage, &mut rng).await;
            let copy_id = object.trim_start_matches("keys/").to_owned();
            let expected = Expected {
                damaged: Some((
                    object.clone(),
                    BTreeSet::new(),
                    Some(resilience_core::ops::verify::repair_key_copy(&copy_id)),
                )),
                restore_names: vec![object],
            };
            (done, expected)
        }
        Kind::KeySetGeneration => {
            let generation = keys_under(mem.as_ref(), "keys/keyset-").await;
            assert_eq!(generation.len(), 1, "{case}: {generation:?}");
            let object = generation[0].clone();
            let done = harm(mem, &object, None, damage, &mut rng).await;
            // A deleted generation's number is known to nothing: it is named by its prefix.
            let object = if damage == Damage::Deleted {
                LOST_KEY_SET.to_owned()
            } else {
                object
            };
            // Nothing opens the repository any more: every snapshot is unrestorable for a new
            // process, though one that holds the keys still reads everything.
            let expected = Expected {
                damaged: Some((object.clone(), all.clone(), None)),
                restore_names: vec![object],
            };
            (done, expected)
        }
    };
    let what = match &done.after {
        Some(b) => format!(
            "{} ({} -> {} bytes)",
            done.object,
            done.before.len(),
            b.len()
        ),
        None => format!("{} (deleted)", done.object),
    };

    // The repository still opens.
    let repo = match kind {
        Kind::KeyCopy => {
            let err = open(mem, KEY_A).await.map(|_| ()).unwrap_err().to_string();
            assert!(
                err.contains(&fx.copy_a),
                "{case}: opening with the damaged copy's key must name {}: {err}",
                fx.copy_a
            );
            open(mem, KEY_B)
                .await
                .unwrap_or_else(|e| panic!("{case}: the other copy must still open: {e}"))
        }
        Kind::KeySetGeneration => {
            let named = &expected.restore_names[0];
            for key in [KEY_A, KEY_B] {
                let err = open(mem, key).await.map(|_| ()).unwrap_err().to_string();
                assert!(
                    err.contains(named.as_str()),
                    "{case}: opening must fail naming {named}: {err}"
                );
            }
            // A process that opened the repository before the damage still holds the keys.
            fx.held.clone()
        }
        _ => open(mem, KEY_A)
            .await
            .unwrap_or_else(|e| panic!("{case}: the repository must still open: {e}")),
    };

    // The catalog falls back to the newest intact revision, with a warning naming the damaged
    // one.
    let log = Log::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let log = log.clone();
            move || log.clone()
        })
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    if kind == Kind::CatalogRevision {
        let id = done.object.split('/').nth(1).unwrap();
        let record = repo
            .catalog()
            .get(id)
            .with_subscriber(subscriber)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.status, BackupStatus::Succeeded, "{case}: {record:?}");
        let damaged_revision: u32 = done.object.rsplit('/').next().unwrap()[..10]
            .parse()
            .unwrap();
        // What the revision before says (it precedes the recorded verification)…
        assert!(record.verifications.is_empty(), "{case}: {record:?}");
        if damage == Damage::Deleted {
            assert_eq!(record.revision, damaged_revision - 1, "{case}: {record:?}");
        } else {
            // …numbered as the damaged revision, so that the next one written comes after it.
            assert_eq!(record.revision, damaged_revision, "{case}: {record:?}");
            let used = format!("catalog/{id}/{:010}-succeeded", damaged_revision - 1);
            let text = log.text();
            assert!(
                text.contains("WARN") && text.contains(&done.object) && text.contains(&used),
                "{case}: no warning names {} and {used}: {text}",
                done.object
            );
        }
    }

    // Verify names the object, the snapshots it affects and the repair.
    let report = repo.verify(VerifyOptions { full: true }).await.unwrap();
    assert_verify(&case, &report, &expected);

    // Restore never returns wrong bytes.
    let restored = restore_all(&case, &repo, &fx.taken, &expected.restore_names).await;
    let lost: BTreeSet<String> = expected
        .damaged
        .as_ref()
        .map(|(_, a, _)| a.clone())
        .unwrap_or_default();
    if kind != Kind::KeySetGeneration {
        // What verify calls restorable restores.
        assert!(
            restored >= fx.taken.len() - lost.len(),
            "{case}: {restored} restored, verify said {} of {} are affected",
            lost.len(),
            fx.taken.len()
        );
    }

    // Repairs.
    let mut outcome =
        format!(
        "{case}: {what}; verify names {}; {restored}/{} snapshots restore identical, the others \
         fail naming it",
        expected
            .damaged
            .as_ref()
            .map_or("nothing (undetectable, harmless)".to_owned(), |d| d.0.clone()),
        fx.taken.len()
    );
    match kind {
        Kind::IndexFile => {
            repo.repair_index(RepairIndexOptions::default())
                .await
                .unwrap();
            let report = repo.verify(VerifyOptions { full: true }).await.unwrap();
            assert!(
                report.is_ok(),
                "{case}: after repair index: {:?}",
                show(&report)
            );
            let restored = restore_all(&case, &repo, &fx.taken, &[]).await;
            assert_eq!(restored, fx.taken.len(), "{case}");
            outcome.push_str("; repair index makes verify clean");
        }
        Kind::CatalogRevision => {
            // The repair verify names writes a revision past the damaged one, saying what it
            // said; so does a verification recorded (as the daemon does). After either, the
            // record reads without falling back.
            let repaired = repo
                .repair_catalog(Default::default())
                .await
                .unwrap_or_else(|e| panic!("{case}: repair catalog: {e}"));
            // A deleted revision leaves nothing to supersede.
            let superseded = usize::from(!report.is_ok());
            assert!(
                repaired.rewritten.len() == superseded && repaired.left.is_empty(),
                "{case}: {repaired:?}"
            );
            let again = repo.verify(VerifyOptions::default()).await.unwrap();
            assert!(
                again.is_ok(),
                "{case}: after repair catalog: {:?}",
                show(&again)
            );
            repo.record_verification(&report)
                .await
                .unwrap_or_else(|e| panic!("{case}: recording a verification: {e}"));
            let again = repo.verify(VerifyOptions::default()).await.unwrap();
            assert!(
                again.is_ok(),
                "{case}: after a new revision: {:?}",
                show(&again)
            );
            outcome.push_str("; repair catalog supersedes it, and so does a recorded verification");
        }
        Kind::KeyCopy => {
            // The repair verify suggests: a new copy for the lost one's provider.
            repo.add_key(&KeyFileProvider::from_key(KEY_A))
                .await
                .unwrap_or_else(|e| panic!("{case}: key add: {e}"));
            let again = repo.verify(VerifyOptions::default()).await.unwrap();
            assert!(again.is_ok(), "{case}: after key add: {:?}", show(&again));
            open(mem, KEY_A)
                .await
                .unwrap_or_else(|e| panic!("{case}: the new copy must open: {e}"));
            outcome.push_str("; key add makes verify clean and the key opens again");
        }
        _ => {}
    }
    outcome
}

#[tokio::test]
async fn every_object_kind_damaged_every_way() {
    let seed = std::env::var("RESILIENCE_DAMAGE_SEED")
        .ok()
        .map(|s| {
            let s = s.trim_start_matches("0x");
            u64::from_str_radix(s, 16).expect("RESILIENCE_DAMAGE_SEED is hex")
        })
        .unwrap_or(DEFAULT_SEED);
    let only = std::env::var("RESILIENCE_DAMAGE_CASE").ok();
    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    let mut ran = 0;
    for kind in KINDS {
        for damage in DAMAGES {
            let name = case_name(kind, damage);
            if only.as_ref().is_some_and(|o| !name.contains(o.as_str())) {
                continue;
            }
            ran += 1;
            // Each case in its own task, so a failure (a panic) is reported by name and the
            // other cases still run.
            match tokio::spawn(run_case(kind, damage, seed)).await {
                Ok(line) => outcomes.push(line),
                Err(e) => {
                    let message = e
                        .try_into_panic()
                        .ok()
                        .and_then(|p| {
                            p.downcast_ref::<String>()
                                .cloned()
                                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        })
                        .unwrap_or_else(|| "cancelled".into());
                    failures.push(format!("{name}: {message}"));
                }
            }
        }
    }
    for line in &outcomes {
        println!("ok   {line}");
    }
    for line in &failures {
        println!("FAIL {line}");
    }
    assert!(
        failures.is_empty(),
        "{} of {ran} damage cases failed (seed {seed:#x}):\n{}",
        failures.len(),
        failures.join("\n")
    );
    if only.is_none() {
        assert_eq!(ran, KINDS.len() * DAMAGES.len());
    }
}
