//! The AWS KMS key provider against moto's KMS (`RESILIENCE_TEST_MOTO_ENDPOINT`, started by
//! `scripts/test`; these tests fail, not skip, without it): a repository protected by KMS
//! opens with one KMS call per run however many blobs a backup writes, another key does not
//! open it, and a damaged KMS ciphertext is refused naming the key copy.

use std::process::Command;
use std::sync::Arc;

use resilience_core::keys::KeyProvider;
use resilience_core::repo::{InitOptions, Repository};
use resilience_core::sink::{MemorySink, PutMode, Sink};
use resilience_core::testing::{pseudo_random, MemorySource, MemoryTarget};
use resilience_core::Error;
use resilience_objstore::keys::kms::{KmsConfig, KmsProvider};
use resilience_objstore::AwsCredentials;
use zeroize::Zeroizing;

fn moto() -> String {
    std::env::var("RESILIENCE_TEST_MOTO_ENDPOINT").expect(
        "RESILIENCE_TEST_MOTO_ENDPOINT is not set: run the tests through scripts/test, or \
         start moto with scripts/moto.sh start DIR and source DIR/env",
    )
}

/// Creates a KMS key at moto (boto3, which moto installs) and returns its id.
fn create_key() -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import boto3,sys; c=boto3.client('kms', endpoint_url=sys.argv[1], \
             region_name='us-east-1', aws_access_key_id='moto', aws_secret_access_key='moto'); \
             print(c.create_key(Description='resilience test')['KeyMetadata']['KeyId'])",
            &moto(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "CreateKey failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn provider(key_id: &str) -> KmsProvider {
    KmsProvider::new(KmsConfig {
        key_id: key_id.to_owned(),
        endpoint: moto(),
        region: "us-east-1".into(),
        credentials: AwsCredentials {
            access_key_id: "moto".into(),
            secret_access_key: Zeroizing::new("moto".into()),
            session_token: None,
        },
    })
    .unwrap()
}

fn source() -> MemorySource {
    let mut src = MemorySource::new("many-blobs");
    for i in 0..300u64 {
        src = src.file(&format!("f{i}.bin"), pseudo_random(20_000, i));
    }
    src.file("big.bin", pseudo_random(6 << 20, 999))
}

#[tokio::test]
async fn one_kms_call_per_run_not_per_blob() {
    let key = create_key();
    let sink = Arc::new(MemorySink::new());
    let init = provider(&key);
    let opts = InitOptions {
        pack_size: 1 << 20,
        chunker: resilience_core::internals::chunker::ChunkerParams {
            min_size: 64 * 1024,
            avg_size: 256 * 1024,
            max_size: 1 << 20,
        },
        ..Default::default()
    };
    Repository::init(sink.clone(), &init, opts).await.unwrap();
    assert_eq!(init.calls(), 1, "init: one GenerateDataKey");

    // A new run: open, back up hundreds of blobs in several packs, restore, verify.
    let run = provider(&key);
    let repo = Repository::open(sink.clone(), &run).await.unwrap();
    let report = repo.backup(&source(), Default::default()).await.unwrap();
    let target = MemoryTarget::new();
    repo.restore(&report.record.id, &target, Default::default())
        .await
        .unwrap();
    assert_eq!(target.content("f7.bin").unwrap(), pseudo_random(20_000, 7));
    assert_eq!(
        target.content("big.bin").unwrap(),
        pseudo_random(6 << 20, 999)
    );
    let packs = sink.list_keys("data/").await.len();
    assert!(packs >= 4, "the backup wrote {packs} packs");
    assert_eq!(
        run.calls(),
        1,
        "KMS calls for open + backup of 300 files in {packs} packs + restore"
    );
    println!("KMS calls per run (open, backup, restore): {}", run.calls());

    // Another KMS key does not open it (and costs no call: the copy names its key).
    let other = provider(&create_key());
    let err = Repository::open(sink.clone(), &other).await.unwrap_err();
    assert!(matches!(err, Error::WrongKey { .. }), "{err}");
    assert_eq!(other.calls(), 0);
}

#[tokio::test]
async fn a_damaged_kms_ciphertext_is_refused_naming_the_copy() {
    let key = create_key();
    let sink = Arc::new(MemorySink::new());
    let p = provider(&key);
    let repo = Repository::init(sink.clone(), &p, InitOptions::default())
        .await
        .unwrap();
    let copy = repo.key_ring().await.unwrap().copies[0].clone();
    assert_eq!(copy.provider, p.name());
    assert!(copy.params["key_arn"].as_str().unwrap().contains(&key));
    // Rewrite the copy with a damaged encrypted KEK (checksum recomputed, as by hand).
    let mut edited = copy.clone();
    let blob = edited.params["encrypted_kek"].as_str().unwrap().to_owned();
    let mut raw = blob.into_bytes();
    let mid = raw.len() / 2;
    raw[mid] = if raw[mid] == b'A' { b'B' } else { b'A' };
    edited.params["encrypted_kek"] = serde_json::json!(String::from_utf8(raw).unwrap());
    let mut body = serde_json::to_vec(&edited).unwrap();
    resilience_core::internals::object::append_checksum(&mut body);
    let name = copy.object_name();
    sink.put(&name, body.into(), PutMode::Overwrite)
        .await
        .unwrap();
    let err = Repository::open(sink.clone(), &provider(&key))
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&name), "{err}");
}

trait ListKeys {
    async fn list_keys(&self, prefix: &str) -> Vec<String>;
}

impl ListKeys for MemorySink {
    async fn list_keys(&self, prefix: &str) -> Vec<String> {
        use futures::TryStreamExt;
        self.list(prefix)
            .map_ok(|m| m.key)
            .try_collect()
            .await
            .unwrap()
    }
}
