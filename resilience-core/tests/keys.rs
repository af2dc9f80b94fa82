//! Key copies, rotation and rewrite on an in-memory repository: several providers open one
//! repository, a rotation re-seals the keys for every copy without their credentials, a
//! removed copy no longer opens it, interrupted changes of keys leave it openable, a rewrite
//! re-encrypts everything and drops the old data key, and hand-edited key objects, packs and
//! manifests are refused by name.

use std::sync::Arc;

use futures::TryStreamExt;
use resilience_core::keys::ring::{CopyState, KeyRing, KEYSET_PREFIX};
use resilience_core::keys::{EnvKeyProvider, KdfParams, KeyFileProvider, PassphraseProvider};
use resilience_core::ops::verify::VerifyOptions;
use resilience_core::repo::{InitOptions, Repository};
use resilience_core::sink::{MemorySink, PutMode, Sink};
use resilience_core::testing::{pseudo_random, FaultySink, MemorySource, MemoryTarget};
use resilience_core::Error;

fn passphrase(p: &str) -> PassphraseProvider {
    PassphraseProvider::new(p).with_params(KdfParams {
        memory_kib: 256,
        iterations: 1,
        parallelism: 1,
    })
}

fn small() -> InitOptions {
    InitOptions {
        pack_size: 64 * 1024,
        ..Default::default()
    }
}

fn source(seed: u64) -> MemorySource {
    MemorySource::new("app")
        .file("a.bin", pseudo_random(300_000, seed))
        .file("b.txt", format!("hello {seed}\n").repeat(5000))
}

async fn restore_matches(repo: &Repository, id: &str, seed: u64) {
    let target = MemoryTarget::new();
    repo.restore(id, &target, Default::default()).await.unwrap();
    assert_eq!(
        target.content("a.bin").unwrap(),
        pseudo_random(300_000, seed)
    );
    assert_eq!(
        target.content("b.txt").unwrap(),
        format!("hello {seed}\n").repeat(5000).into_bytes()
    );
}

async fn verify_full(repo: &Repository) {
    let report = repo.verify(VerifyOptions { full: true }).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
}

/// Every pack's header names `key` (packs are sealed with one data key).
async fn pack_keys(sink: &dyn Sink) -> Vec<u32> {
    let metas: Vec<_> = sink.list("data/").try_collect().await.unwrap();
    let mut out = Vec::new();
    for m in metas {
        let h = sink.get_range(&m.key, 0..9).await.unwrap();
        out.push(u32::from_le_bytes(h[5..9].try_into().unwrap()));
    }
    out
}

#[tokio::test]
async fn rotation_keeps_old_data_readable_and_reseals_for_every_copy() {
    let sink = Arc::new(MemorySink::new());
    let service = KeyFileProvider::from_key([3; 32]);
    let repo = Repository::init(sink.clone(), &service, small())
        .await
        .unwrap();
    let before = repo.backup(&source(1), Default::default()).await.unwrap();
    let operator = passphrase("offline operator passphrase");
    let leaked = passphrase("leaked passphrase");
    repo.add_key(&operator).await.unwrap();
    let leaked_copy = repo.add_key(&leaked).await.unwrap();
    // The leaked passphrase's copy is removed, then the data key rotated: the rotation needs
    // no passphrase, yet the operator's still opens afterwards.
    let repo = Repository::open(sink.clone(), &service).await.unwrap();
    repo.remove_key(&leaked_copy.id).await.unwrap();
    let (repo, rotation) = repo.rotate_keys().await.unwrap();
    assert_eq!(rotation.data_key, 2);
    assert_eq!(rotation.data_keys, vec![1, 2]);
    assert_eq!(rotation.copies.len(), 2);
    let after = repo.backup(&source(2), Default::default()).await.unwrap();
    assert!(pack_keys(sink.as_ref()).await.contains(&2));
    for provider in [
        &service as &dyn resilience_core::keys::KeyProvider,
        &operator,
    ] {
        let r = Repository::open(sink.clone(), provider).await.unwrap();
        assert_eq!(r.keys().current_key_id(), 2);
        restore_matches(&r, &before.record.id, 1).await;
        restore_matches(&r, &after.record.id, 2).await;
    }
    let err = Repository::open(sink.clone(), &leaked).await.unwrap_err();
    assert!(matches!(err, Error::WrongKey { tried: 1, .. }), "{err}");
    // Only one key-set generation remains.
    let gens: Vec<_> = sink.list(KEYSET_PREFIX).try_collect().await.unwrap();
    assert_eq!(gens.len(), 1, "{gens:?}");
}

/// A long-running service's handle, opened before an operator rotated (and then rewrote) the
/// keys from another process: its verify sees no false damage, its long-lived catalog lists
/// the new records, and its next backup seals with the key in force, never with a retired one.
#[tokio::test]
async fn a_handle_opened_before_a_change_of_keys_reads_and_writes_with_the_new_ones() {
    let sink = Arc::new(MemorySink::new());
    let service = KeyFileProvider::from_key([3; 32]);
    let daemon = Repository::init(sink.clone(), &service, small())
        .await
        .unwrap();
    let first = daemon.backup(&source(1), Default::default()).await.unwrap();
    let catalog = daemon.catalog();

    // Another process (the CLI) rotates and backs up with data key 2.
    let operator = Repository::open(sink.clone(), &service).await.unwrap();
    let (operator, _) = operator.rotate_keys().await.unwrap();
    let second = operator
        .backup(&source(2), Default::default())
        .await
        .unwrap();
    assert_eq!(daemon.keys().current_key_id(), 1, "not re-read yet");

    // The old catalog lists the record sealed with key 2; verify reads it all.
    use resilience_core::catalog::Catalog;
    let listed = catalog.list(&Default::default()).await.unwrap();
    assert!(
        listed.iter().any(|r| r.id == second.record.id),
        "{listed:?}"
    );
    verify_full(&daemon).await;
    assert_eq!(daemon.keys().current_key_id(), 2);
    restore_matches(&daemon, &second.record.id, 2).await;

    // The operator rewrites everything under a new key 3 and retires keys 1 and 2; the
    // daemon's next backup, through a clone made before all this, seals with key 3.
    let rewritten = operator.rewrite_data().await.unwrap();
    assert_eq!(rewritten.retired_keys, vec![1, 2], "{rewritten:?}");
    assert!(pack_keys(sink.as_ref()).await.iter().all(|k| *k == 3));
    let third = daemon
        .clone()
        .backup(&source(3), Default::default())
        .await
        .unwrap();
    assert!(
        pack_keys(sink.as_ref()).await.iter().all(|k| *k == 3),
        "a pack sealed with a retired key: {:?}",
        pack_keys(sink.as_ref()).await
    );
    let fresh = Repository::open(sink.clone(), &service).await.unwrap();
    assert_eq!(fresh.keys().data_key_ids(), vec![3]);
    verify_full(&fresh).await;
    for (record, seed) in [(&first, 1), (&second, 2), (&third, 3)] {
        restore_matches(&fresh, &record.record.id, seed).await;
    }
}

#[tokio::test]
async fn the_last_copy_cannot_be_removed_and_env_keys_open() {
    let sink = Arc::new(MemorySink::new());
    let env = EnvKeyProvider::from_key([5; 32]);
    let repo = Repository::init(sink.clone(), &env, small()).await.unwrap();
    let ring = repo.key_ring().await.unwrap();
    assert_eq!(ring.copies.len(), 1);
    assert_eq!(ring.copies[0].provider, "env");
    let err = repo.remove_key(&ring.copies[0].id).await.unwrap_err();
    assert!(err.to_string().contains("last key copy"), "{err}");
    assert!(Repository::open(sink.clone(), &env).await.is_ok());
    // Nothing secret in the copy or its Debug output.
    let text = format!("{:?}", ring.copies[0]);
    assert!(!text.contains(&hex::encode([5u8; 32])));
}

/// A change of keys that dies after any number of writes leaves a repository that opens with
/// every copy and reads everything (the old generation or the new one is in force).
#[tokio::test]
async fn an_interrupted_rotation_never_locks_anyone_out() {
    for budget in 0..3 {
        let mem = Arc::new(MemorySink::new());
        let a = KeyFileProvider::from_key([1; 32]);
        let b = passphrase("second");
        let repo = Repository::init(mem.clone(), &a, small()).await.unwrap();
        let snap = repo.backup(&source(7), Default::default()).await.unwrap();
        repo.add_key(&b).await.unwrap();
        let faulty = Arc::new(FaultySink::new(mem.clone(), budget));
        let r = Repository::open(faulty.clone(), &a).await.unwrap();
        let result = r.rotate_keys().await;
        for p in [&a as &dyn resilience_core::keys::KeyProvider, &b] {
            let opened = Repository::open(mem.clone(), p).await.unwrap();
            restore_matches(&opened, &snap.record.id, 7).await;
        }
        if result.is_err() {
            // Running it again completes it.
            let r = Repository::open(mem.clone(), &a).await.unwrap();
            r.rotate_keys().await.unwrap();
            let opened = Repository::open(mem.clone(), &b).await.unwrap();
            restore_matches(&opened, &snap.record.id, 7).await;
        }
    }
}

#[tokio::test]
async fn rewrite_reencrypts_everything_and_retires_the_old_key() {
    let sink = Arc::new(MemorySink::new());
    let key = KeyFileProvider::from_key([9; 32]);
    let repo = Repository::init(sink.clone(), &key, small()).await.unwrap();
    let s1 = repo.backup(&source(11), Default::default()).await.unwrap();
    let s2 = repo.backup(&source(12), Default::default()).await.unwrap();
    assert!(pack_keys(sink.as_ref()).await.iter().all(|k| *k == 1));
    let report = repo.rewrite_data().await.unwrap();
    assert_eq!(report.data_key, 2);
    assert_eq!(report.retired_keys, vec![1]);
    assert!(
        report.packs_rewritten > 0 && report.objects_resealed > 0,
        "{report:?}"
    );
    let repo = Repository::open(sink.clone(), &key).await.unwrap();
    assert_eq!(repo.keys().data_key_ids(), vec![2]);
    assert!(!repo.keys().rewriting());
    assert!(pack_keys(sink.as_ref()).await.iter().all(|k| *k == 2));
    verify_full(&repo).await;
    restore_matches(&repo, &s1.record.id, 11).await;
    restore_matches(&repo, &s2.record.id, 12).await;
}

/// A rewrite that dies after any number of writes leaves a repository that opens, verifies in
/// full and restores; running it again finishes it.
#[tokio::test]
async fn an_interrupted_rewrite_verifies_and_resumes() {
    let mut budget = 0;
    loop {
        let mem = Arc::new(MemorySink::new());
        let key = KeyFileProvider::from_key([4; 32]);
        let repo = Repository::init(mem.clone(), &key, small()).await.unwrap();
        let s1 = repo.backup(&source(21), Default::default()).await.unwrap();
        let faulty = Arc::new(FaultySink::new(mem.clone(), budget));
        let r = Repository::open(faulty, &key).await.unwrap();
        let finished = r.rewrite_data().await.is_ok();
        let opened = Repository::open(mem.clone(), &key).await.unwrap();
        verify_full(&opened).await;
        restore_matches(&opened, &s1.record.id, 21).await;
        if finished {
            assert!(budget > 3, "the rewrite wrote almost nothing");
            break;
        }
        let report = opened.rewrite_data().await.unwrap();
        assert_eq!(report.retired_keys, vec![1], "budget {budget}: {report:?}");
        let done = Repository::open(mem.clone(), &key).await.unwrap();
        assert_eq!(done.keys().data_key_ids(), vec![2]);
        verify_full(&done).await;
        restore_matches(&done, &s1.record.id, 21).await;
        budget += 2;
    }
}

async fn edit(sink: &MemorySink, key: &str, f: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = sink.get(key).await.unwrap().to_vec();
    f(&mut bytes);
    sink.put(key, bytes.into(), PutMode::Overwrite)
        .await
        .unwrap();
}

fn fix_checksum(bytes: &mut Vec<u8>) {
    bytes.truncate(bytes.len() - 32);
    resilience_core::internals::object::append_checksum(bytes);
}

#[tokio::test]
async fn hand_edited_key_objects_are_refused_by_name() {
    let sink = Arc::new(MemorySink::new());
    let key = KeyFileProvider::from_key([8; 32]);
    let repo = Repository::init(sink.clone(), &key, small()).await.unwrap();
    let ring = repo.key_ring().await.unwrap();
    let copy = format!("keys/{}", ring.copies[0].id);
    let generation = format!("{KEYSET_PREFIX}{:010}", ring.latest_generation());

    // An edited copy (checksum not updated) is named.
    let original = sink.get(&copy).await.unwrap();
    edit(&sink, &copy, |b| b[20] ^= 1).await;
    let err = Repository::open(sink.clone(), &key).await.unwrap_err();
    assert!(err.to_string().contains(&copy), "{err}");
    sink.put(&copy, original, PutMode::Overwrite).await.unwrap();

    // An edited recipient with a recomputed checksum: the identity no longer matches it.
    let original = sink.get(&copy).await.unwrap();
    edit(&sink, &copy, |b| {
        let text = String::from_utf8(b[..b.len() - 32].to_vec()).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["recipient"] = serde_json::json!(hex::encode([1u8; 32]));
        *b = serde_json::to_vec(&v).unwrap();
        b.extend_from_slice(&[0; 32]);
        fix_checksum(b);
    })
    .await;
    let err = Repository::open(sink.clone(), &key).await.unwrap_err();
    assert!(err.to_string().contains(&copy), "{err}");
    sink.put(&copy, original, PutMode::Overwrite).await.unwrap();

    // The key-set generation edited, checksum recomputed: its seal fails, named.
    edit(&sink, &generation, |b| {
        let text = String::from_utf8(b[..b.len() - 32].to_vec()).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let sealed = v["sealed"].as_object_mut().unwrap();
        for (_, s) in sealed.iter_mut() {
            let mut h = s.as_str().unwrap().to_owned();
            let last = if h.ends_with('0') { "1" } else { "0" };
            h.replace_range(h.len() - 1.., last);
            *s = serde_json::json!(h);
        }
        *b = serde_json::to_vec(&v).unwrap();
        b.extend_from_slice(&[0; 32]);
        fix_checksum(b);
    })
    .await;
    let err = Repository::open(sink.clone(), &key).await.unwrap_err();
    assert!(err.to_string().contains(&generation), "{err}");
}

#[tokio::test]
async fn hand_edited_packs_and_manifests_are_refused_by_name() {
    let sink = Arc::new(MemorySink::new());
    let key = KeyFileProvider::from_key([6; 32]);
    let repo = Repository::init(sink.clone(), &key, small()).await.unwrap();
    let snap = repo.backup(&source(31), Default::default()).await.unwrap();
    let packs: Vec<_> = sink.list("data/").try_collect().await.unwrap();
    let pack = packs[0].key.clone();
    // The header's data key id changed: the checksum (and with it the pack's name) no longer
    // match.
    edit(&sink, &pack, |b| b[5] ^= 1).await;
    let report = repo.verify(VerifyOptions { full: false }).await.unwrap();
    assert!(
        report.damaged.iter().any(|d| d.object == pack),
        "{report:?}"
    );
    edit(&sink, &pack, |b| b[5] ^= 1).await;
    verify_full(&repo).await;

    let manifest = format!("snapshots/{}", snap.record.id);
    edit(&sink, &manifest, |b| {
        let n = b.len();
        b[n - 50] ^= 1;
        fix_checksum(b);
    })
    .await;
    let err = repo
        .restore(&snap.record.id, &MemoryTarget::new(), Default::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&manifest), "{err}");
}

#[tokio::test]
async fn key_ring_reports_states() {
    let sink = Arc::new(MemorySink::new());
    let a = KeyFileProvider::from_key([2; 32]);
    let repo = Repository::init(sink.clone(), &a, small()).await.unwrap();
    repo.add_key(&passphrase("x")).await.unwrap();
    let ring = KeyRing::load(sink.as_ref()).await.unwrap();
    assert_eq!(ring.copies.len(), 2);
    assert!(ring
        .copies
        .iter()
        .all(|c| ring.state(c) == CopyState::Active));
    assert!(ring.damaged.is_empty());
}
