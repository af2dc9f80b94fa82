//! Prune at scale: a synthetic repository of many snapshots and blobs, built directly with the
//! repository format's public API (real backups of a million tiny chunks would take hours),
//! then half the snapshots forgotten and prune timed in its own process for its peak memory.
//!
//! `prune-bench build DIR [SNAPSHOTS] [BLOBS_PER_SNAPSHOT]` (defaults 10000 × 100 = 1M blobs)
//! `prune-bench forget DIR` (expires every other snapshot)
//! `prune-bench prune DIR` (phase 1, then phase 2 with no grace; prints the reports as JSON)

use std::sync::Arc;
use std::time::{Duration, Instant};

use resilience_benches::Xorshift;
use resilience_core::catalog::{BackupKind, BackupRecord, BackupStatus, Catalog, CatalogQuery};
use resilience_core::internals::blob::{self, BlobKind};
use resilience_core::internals::chunker::ChunkerParams;
use resilience_core::internals::index::PackRecord;
use resilience_core::internals::object::{self, ObjectKind};
use resilience_core::internals::pack::{self, PackBuilder};
use resilience_core::internals::snapshot::{self, BlobRef, Content, Manifest, TreeRecord};
use resilience_core::keys::KeyFileProvider;
use resilience_core::ops::prune::PruneOptions;
use resilience_core::repo::{InitOptions, Repository};
use resilience_core::retention::{Action, Decision, RetentionPlan};
use resilience_core::sink::PutMode;
use resilience_core::source::SourceDescriptor;

const KEY: [u8; 32] = [9; 32];

async fn open(dir: &str) -> Repository {
    let sink = resilience_objstore::open_sink(dir).expect("repository directory");
    Repository::open(sink, &KeyFileProvider::from_key(KEY))
        .await
        .expect("opens")
}

async fn build(dir: &str, snapshots: usize, per: usize) {
    let sink = resilience_objstore::open_sink_or_create(dir).unwrap();
    let opts = InitOptions {
        chunker: ChunkerParams {
            min_size: 64,
            avg_size: 256,
            max_size: 1024,
        },
        inline_limit: 0,
        ..Default::default()
    };
    let repo = Repository::init(sink.clone(), &KeyFileProvider::from_key(KEY), opts)
        .await
        .unwrap();
    let keys = repo.keys().clone();
    let mut rng = Xorshift::new(1);
    let mut builder = PackBuilder::new(keys.current_key_id(), 17 << 20);
    let mut pending: Vec<PackRecord> = Vec::new();
    let started = Instant::now();
    let base = chrono::Utc::now() - chrono::Duration::days(snapshots as i64 / 24 + 1);
    for s in 0..snapshots {
        let mut refs = Vec::with_capacity(per);
        for _ in 0..per {
            let mut plain = vec![0u8; 200];
            rng.fill(&mut plain);
            let id = keys.blob_id(&plain);
            let mut stored = Vec::new();
            blob::encode_blob(
                &keys.current_key(),
                BlobKind::Data,
                &id,
                &plain,
                1,
                &mut stored,
            );
            builder.add(id, BlobKind::Data, 200, &stored);
            refs.push(BlobRef { id, len: 200 });
        }
        let at = base + chrono::Duration::hours(s as i64);
        let sid = format!("{}-{s:08x}", at.format("%Y%m%dT%H%M%SZ"));
        let mut tree = Vec::new();
        snapshot::encode_record(
            &TreeRecord {
                meta: resilience_core::source::entry::EntryMeta::file("data", (per * 200) as u64),
                content: Content::Blobs(refs),
            },
            &mut tree,
        );
        let tree_id = keys.blob_id(&tree);
        let mut stored = Vec::new();
        blob::encode_blob(
            &keys.current_key(),
            BlobKind::Tree,
            &tree_id,
            &tree,
            1,
            &mut stored,
        );
        builder.add(tree_id, BlobKind::Tree, tree.len() as u32, &stored);
        if builder.len() > 16 << 20 || s + 1 == snapshots {
            let full = std::mem::replace(
                &mut builder,
                PackBuilder::new(keys.current_key_id(), 17 << 20),
            );
            let (id, bytes, blobs) = full.finish(&keys);
            let size = bytes.len() as u64;
            sink.put(&pack::pack_key(&id), bytes, PutMode::Create)
                .await
                .unwrap();
            pending.push(PackRecord {
                id,
                size,
                key_id: keys.current_key_id(),
                blobs,
            });
            repo.write_index(&std::mem::take(&mut pending))
                .await
                .unwrap();
        }
        let source = SourceDescriptor {
            id: "bench".into(),
            kind: "memory".into(),
        };
        let manifest = Manifest {
            format: snapshot::SNAPSHOT_FORMAT,
            id: sid.clone(),
            source: source.clone(),
            started_at: at,
            finished_at: at,
            entries: 1,
            logical_bytes: (per * 200) as u64,
            tree: vec![BlobRef {
                id: tree_id,
                len: tree.len() as u32,
            }],
            source_metadata: Default::default(),
            labels: Default::default(),
            parent: None,
        };
        let key = snapshot::manifest_key(&sid);
        let sealed = object::seal_object(
            &keys,
            ObjectKind::Snapshot,
            &key,
            &serde_json_vec(&manifest),
        );
        let checksum = object::stored_checksum(&sealed);
        sink.put(&key, sealed.into(), PutMode::Create)
            .await
            .unwrap();
        let record = BackupRecord {
            id: sid,
            revision: 1,
            source,
            kind: BackupKind::Full,
            status: BackupStatus::Succeeded,
            error: None,
            started_at: at,
            finished_at: Some(at),
            logical_bytes: (per * 200) as u64,
            stored_bytes: 0,
            new_bytes: 0,
            entries: 1,
            manifest_checksum: checksum,
            tier: Default::default(),
            labels: Default::default(),
            legal_hold: false,
            verifications: vec![],
            source_metadata: Default::default(),
            parent: None,
            host: "bench".into(),
            updated_at: at,
            salvage: None,
        };
        repo.catalog().put(&record).await.unwrap();
    }
    eprintln!(
        "built {snapshots} snapshots, {} blobs in {:?}",
        snapshots * (per + 1),
        started.elapsed()
    );
}

fn serde_json_vec(m: &Manifest) -> Vec<u8> {
    serde_json::to_vec(m).expect("manifests serialize")
}

async fn forget(dir: &str) {
    let repo = open(dir).await;
    let records = repo.catalog().list(&CatalogQuery::default()).await.unwrap();
    let decisions = records
        .iter()
        .enumerate()
        .map(|(i, r)| Decision {
            id: r.id.clone(),
            source: r.source.id.clone(),
            action: if i % 2 == 0 && i + 1 < records.len() {
                Action::Delete
            } else {
                Action::Keep
            },
            reasons: vec!["bench".into()],
        })
        .collect();
    let started = Instant::now();
    let report = repo.forget(&RetentionPlan { decisions }).await.unwrap();
    eprintln!(
        "forgot {} snapshots in {:?}",
        report.expired.len(),
        started.elapsed()
    );
}

async fn prune(dir: &str) {
    let repo = Arc::new(open(dir).await);
    let options = PruneOptions {
        grace: Duration::ZERO,
        ..Default::default()
    };
    for phase in ["phase 1 (condemn, repack)", "phase 2 (delete)"] {
        let started = Instant::now();
        let report = repo.prune(options).await.unwrap();
        eprintln!("{phase}: {:?}", started.elapsed());
        println!("{}", serde_json_report(&report));
    }
}

fn serde_json_report(r: &resilience_core::ops::prune::PruneReport) -> String {
    serde_json::to_string(r).expect("reports serialize")
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: prune-bench build|forget|prune DIR [SNAPSHOTS] [BLOBS_PER_SNAPSHOT]";
    let dir = args.get(2).expect(usage);
    match args.get(1).map(String::as_str) {
        Some("build") => {
            let n = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(10_000);
            let per = args.get(4).map(|s| s.parse().unwrap()).unwrap_or(100);
            build(dir, n, per).await
        }
        Some("forget") => forget(dir).await,
        Some("prune") => prune(dir).await,
        _ => panic!("{usage}"),
    }
}
