//! Bucket backups against Garage (started by `scripts/test`): objects of many sizes (empty, tiny,
//! 100 MiB, two thousand small ones), odd keys,
//! content types and user metadata come back byte-identical into another place; an unchanged
//! bucket is not read again; a restore never silently replaces a different object, and resumes.

use std::process::{Command, Output};

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{Attribute, Attributes, GetOptions, ObjectStore, PutOptions};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_resilience");

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with scripts/test (it starts Garage)")
    })
}

struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    fn repo(&self) -> String {
        self.dir.path().join("repo").display().to_string()
    }
    fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(["--repo", &self.repo(), "--key-file"])
            .arg(self.dir.path().join("key"))
            .args(args)
            .output()
            .unwrap()
    }
    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

fn bytes_of(len: usize, seed: u64) -> Bytes {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v.into()
}

async fn put(
    store: &dyn ObjectStore,
    prefix: &str,
    key: &str,
    body: Bytes,
    ctype: Option<&str>,
    meta: &[(&str, &str)],
) {
    let mut attributes = Attributes::new();
    if let Some(c) = ctype {
        attributes.insert(Attribute::ContentType, c.to_owned().into());
    }
    for (k, v) in meta {
        attributes.insert(
            Attribute::Metadata(k.to_string().into()),
            v.to_string().into(),
        );
    }
    let path = Path::from_iter(prefix.split('/').chain(key.split('/')));
    store
        .put_opts(
            &path,
            body.into(),
            PutOptions {
                attributes,
                ..Default::default()
            },
        )
        .await
        .unwrap();
}

async fn read(store: &dyn ObjectStore, prefix: &str, key: &str) -> (Bytes, Attributes) {
    let path = Path::from_iter(prefix.split('/').chain(key.split('/')));
    let r = store.get_opts(&path, GetOptions::default()).await.unwrap();
    let attributes = r.attributes.clone();
    (r.bytes().await.unwrap(), attributes)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bucket_comes_back_byte_identical_with_its_metadata() {
    let bucket = env("RESILIENCE_TEST_S3_BUCKET");
    env("AWS_ENDPOINT_URL");
    let run_id = format!("bucket-test-{}", std::process::id());
    let source_url = format!("s3://{bucket}/{run_id}/src");
    let target_url = format!("s3://{bucket}/{run_id}/dst");
    let opened = resilience_objstore::open_store(&format!("s3://{bucket}"), false).unwrap();
    let store = opened.store.as_ref();
    let src = format!("{run_id}/src");
    let dst = format!("{run_id}/dst");

    let mut objects: Vec<(String, Bytes)> = vec![
        ("empty".into(), Bytes::new()),
        ("tiny.txt".into(), Bytes::from_static(b"hi")),
        ("big/blob.bin".into(), bytes_of(100 << 20, 1)),
        (
            "with space/ünïcødé/dëep/a/b/c/d.json".into(),
            Bytes::from_static(b"{\"odd\": true}"),
        ),
        // Listed before `many/` (byte order), walked after it: reuse must not lose its place.
        ("many-more.txt".into(), Bytes::from_static(b"more")),
        ("many.txt".into(), Bytes::from_static(b"many")),
    ];
    for i in 0..2000 {
        objects.push((
            format!("many/{:02}/{i:04}", i % 40),
            bytes_of(100 + (i * 37) % 9000, i as u64 + 10),
        ));
    }
    futures::stream::iter(&objects)
        .for_each_concurrent(16, |(key, body)| {
            let ctype = key.ends_with(".json").then_some("application/json");
            put(
                store,
                &src,
                key,
                body.clone(),
                ctype,
                &[("owner", "billing"), ("tier", "gold")],
            )
        })
        .await;

    let lab = Lab {
        dir: tempfile::tempdir().unwrap(),
    };
    let init = lab.run(&[
        "init",
        "--key-file",
        lab.dir.path().join("key").to_str().unwrap(),
    ]);
    assert!(init.status.success());
    let first = lab.json(&["bucket", "backup", &source_url]);
    assert_eq!(first["objects"], objects.len(), "{first}");
    assert_eq!(first["objects_reused"], 0);
    let second = lab.json(&["bucket", "backup", &source_url]);
    assert_eq!(
        second["objects_reused"],
        objects.len(),
        "an unchanged bucket is not read again: {second}"
    );
    assert!(second["new_bytes"].as_u64().unwrap() < 10_000, "{second}");

    // Later changes to the bucket do not touch the backup.
    put(
        store,
        &src,
        "tiny.txt",
        Bytes::from_static(b"overwritten"),
        None,
        &[],
    )
    .await;
    store
        .delete(&Path::from_iter(src.split('/').chain(["empty"])))
        .await
        .unwrap();

    let id = first["id"].as_str().unwrap();
    let done = lab.json(&["bucket", "restore", id, &target_url]);
    assert_eq!(done["written"], objects.len(), "{done}");
    let restored_into = dst.as_str();
    let restored: Vec<_> = futures::stream::iter(&objects)
        .map(|(key, body)| async move { (key, body, read(store, restored_into, key).await) })
        .buffer_unordered(16)
        .collect()
        .await;
    for (key, body, (got, attrs)) in restored {
        assert_eq!(got, *body, "{key}");
        assert_eq!(
            attrs
                .get(&Attribute::Metadata("owner".into()))
                .map(|v| v.as_ref()),
            Some("billing"),
            "{key}"
        );
        if key.ends_with(".json") {
            assert_eq!(
                attrs.get(&Attribute::ContentType).map(|v| v.as_ref()),
                Some("application/json")
            );
        }
    }

    // Again: everything is already there (a resumed restore skips it all).
    let again = lab.json(&["bucket", "restore", id, &target_url]);
    assert_eq!(
        (again["written"].as_u64(), again["skipped"].as_u64()),
        (Some(0), Some(objects.len() as u64)),
        "{again}"
    );

    // A different object in the way: refused and named without --overwrite, replaced with it.
    put(
        store,
        &dst,
        "tiny.txt",
        Bytes::from_static(b"someone else's"),
        None,
        &[],
    )
    .await;
    let out = lab.run(&[
        "--json",
        "bucket",
        "restore",
        id,
        &target_url,
        "--prefix",
        "tiny",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("tiny.txt"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        read(store, &dst, "tiny.txt").await.0,
        Bytes::from_static(b"someone else's")
    );
    let forced = lab.json(&[
        "bucket",
        "restore",
        id,
        &target_url,
        "--prefix",
        "tiny",
        "--overwrite",
    ]);
    assert_eq!(forced["written"], 1);
    assert_eq!(
        read(store, &dst, "tiny.txt").await.0,
        Bytes::from_static(b"hi")
    );

    // A bucket that does not exist: a clear error naming it, and nothing recorded as succeeded.
    let out = lab.run(&["bucket", "backup", "s3://no-such-bucket-here/x"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-such-bucket-here"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Wrong credentials, and an endpoint that is down: clear errors naming the bucket.
    let out = Command::new(BIN)
        .args(["--repo", &lab.repo(), "--key-file"])
        .arg(lab.dir.path().join("key"))
        .args(["bucket", "backup", &source_url])
        .env("AWS_SECRET_ACCESS_KEY", "0".repeat(64))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&bucket), "{err}");
    let down = format!("s3://{bucket}/x?endpoint=http://127.0.0.1:9&region=garage");
    let out = lab.run(&["bucket", "backup", &down]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&bucket) && err.contains("127.0.0.1:9"),
        "{err}"
    );
    let snaps = lab.json(&["snapshots"]);
    let ok = snaps
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] == "succeeded")
        .count();
    assert_eq!(ok, 2, "{snaps}");
}
