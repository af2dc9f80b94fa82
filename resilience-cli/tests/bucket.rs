//! Bucket backups against Garage and fake-gcs-server (started by `scripts/test`): objects of many
//! sizes (empty, tiny, 100 MiB, two thousand small ones), odd keys, content types and user
//! metadata come back byte-identical into another place; an unchanged bucket is not read again;
//! a restore never silently replaces a different object, and resumes.

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

/// An object a test writes: its key, bytes, and attributes besides the user metadata.
type TestObject = (&'static str, Bytes, Vec<(Attribute, &'static str)>);

/// Every attribute of `a`, by name, to compare whole.
fn attribute_map(a: &Attributes) -> std::collections::BTreeMap<String, String> {
    a.iter()
        .map(|(k, v)| (format!("{k:?}"), v.as_ref().to_owned()))
        .collect()
}

/// The same through Google Cloud Storage (fake-gcs-server, started by `scripts/test`): objects
/// empty, small and in parts (20 MiB), odd names, content type, encoding, cache control and user
/// metadata, and an object stored gzip-compressed with `Content-Encoding: gzip` (which GCS
/// serves decompressed unless asked for it as stored), come back exactly; a second backup reads
/// nothing again; a second restore writes nothing; a different object in the way is refused;
/// versions are refused by name; a missing bucket and a dead endpoint are named.
#[tokio::test(flavor = "multi_thread")]
async fn a_gcs_bucket_comes_back_exactly_through_the_cli() {
    let bucket = env("RESILIENCE_TEST_GCS_BUCKET");
    let endpoint = env("RESILIENCE_TEST_GCS_ENDPOINT");
    let run_id = format!("gcs-bucket-test-{}", std::process::id());
    let url = |p: &str| format!("gs://{bucket}/{run_id}/{p}?endpoint={endpoint}");
    let opened =
        resilience_objstore::open_store(&format!("gs://{bucket}?endpoint={endpoint}"), false)
            .unwrap();
    let store = opened.store.as_ref();
    let src = format!("{run_id}/src");
    let dst = format!("{run_id}/dst");

    let text = b"a line of text, compressible, a line of text\n".repeat(40);
    let objects: Vec<TestObject> = vec![
        ("empty", Bytes::new(), vec![]),
        ("tiny.txt", Bytes::from_static(b"hi"), vec![]),
        ("big/blob.bin", bytes_of(20 << 20, 3), vec![]),
        (
            "with space/ünïcødé/50%/a?b#c+d=e&f.json",
            Bytes::from_static(b"{\"odd\": true}"),
            vec![
                (Attribute::ContentType, "application/json"),
                (Attribute::CacheControl, "max-age=60, public"),
            ],
        ),
        (
            "logs/app.log.gz",
            resilience_core::testing::gzip_stored(&text).into(),
            vec![
                (Attribute::ContentType, "text/plain; charset=utf-8"),
                (Attribute::ContentEncoding, "gzip"),
                (Attribute::CacheControl, "no-cache"),
            ],
        ),
    ];
    for (key, body, attrs) in &objects {
        let mut attributes = Attributes::new();
        for (k, v) in attrs {
            attributes.insert(k.clone(), v.to_string().into());
        }
        attributes.insert(Attribute::Metadata("owner".into()), "billing".into());
        attributes.insert(Attribute::Metadata("tier".into()), "gold".into());
        store
            .put_opts(
                &Path::from_iter(src.split('/').chain(key.split('/'))),
                body.clone().into(),
                PutOptions {
                    attributes,
                    ..Default::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{key}: {e}"));
    }
    // Every object with its bytes and attributes as stored: read as a bucket backup reads them
    // (on GCS, not decompressed).
    let stored = |prefix: String| {
        let url = format!("gs://{bucket}/{prefix}?endpoint={endpoint}");
        let objects = &objects;
        async move {
            let opened = resilience_objstore::open_bucket_store(&url, false).unwrap();
            let mut out = std::collections::BTreeMap::new();
            for (key, _, _) in objects {
                let r = opened
                    .store
                    .get_opts(
                        &Path::from_iter(opened.prefix.split('/').chain(key.split('/'))),
                        GetOptions::default(),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{key}: {e}"));
                let attrs = attribute_map(&r.attributes);
                out.insert(key.to_string(), (attrs, r.bytes().await.unwrap()));
            }
            out
        }
    };

    let lab = Lab {
        dir: tempfile::tempdir().unwrap(),
    };
    let init = lab.run(&[
        "init",
        "--key-file",
        lab.dir.path().join("key").to_str().unwrap(),
    ]);
    assert!(init.status.success());
    let first = lab.json(&["bucket", "backup", &url("src")]);
    assert_eq!(first["objects"], objects.len(), "{first}");
    let second = lab.json(&["bucket", "backup", &url("src")]);
    assert_eq!(second["objects_reused"], objects.len(), "{second}");

    let id = first["id"].as_str().unwrap();
    let done = lab.json(&["bucket", "restore", id, &url("dst")]);
    assert_eq!(done["written"], objects.len(), "{done}");
    let original = stored(src.clone()).await;
    let restored = stored(dst.clone()).await;
    for (key, body, attrs) in &objects {
        let (original_attrs, original_bytes) = &original[*key];
        assert_eq!(original_bytes, body, "{key}: kept as written");
        for (k, v) in attrs {
            assert_eq!(
                original_attrs.get(&format!("{k:?}")).map(String::as_str),
                Some(*v),
                "{key}: {original_attrs:?}"
            );
        }
        assert_eq!(&restored[*key], &original[*key], "{key}");
    }
    // What the backup had to avoid: a plain read of the gzip-compressed object is decompressed
    // by GCS (and fake-gcs-server), without its Content-Encoding.
    let plain = store
        .get(&Path::from_iter(
            dst.split('/').chain(["logs", "app.log.gz"]),
        ))
        .await
        .unwrap();
    assert!(
        plain.attributes.get(&Attribute::ContentEncoding).is_none(),
        "{:?}",
        plain.attributes
    );
    assert_eq!(plain.bytes().await.unwrap().as_ref(), text.as_slice());

    // Again: everything is already there.
    let again = lab.json(&["bucket", "restore", id, &url("dst")]);
    assert_eq!(
        (again["written"].as_u64(), again["skipped"].as_u64()),
        (Some(0), Some(objects.len() as u64)),
        "{again}"
    );
    // A different object in the way: refused and named without --overwrite, replaced with it.
    store
        .put(
            &Path::from_iter(dst.split('/').chain(["tiny.txt"])),
            Bytes::from_static(b"someone else's").into(),
        )
        .await
        .unwrap();
    let out = lab.run(&["bucket", "restore", id, &url("dst"), "--prefix", "tiny"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("tiny.txt"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let forced = lab.json(&[
        "bucket",
        "restore",
        id,
        &url("dst"),
        "--prefix",
        "tiny",
        "--overwrite",
    ]);
    assert_eq!(forced["written"], 1);
    assert_eq!(
        read(store, &dst, "tiny.txt").await.0,
        Bytes::from_static(b"hi")
    );

    // Versions are S3's: refused, naming the bucket.
    let out = lab.run(&["bucket", "backup", "--versions", &url("src")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not keep object versions") && err.contains(&bucket),
        "{err}"
    );
    // A bucket that does not exist, and an endpoint that is down: clear errors naming them.
    let out = lab.run(&[
        "bucket",
        "backup",
        &format!("gs://no-such-bucket-here/x?endpoint={endpoint}"),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-bucket-here"), "{err}");
    let out = lab.run(&[
        "bucket",
        "backup",
        &format!("gs://{bucket}/x?endpoint=http://127.0.0.1:9"),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&bucket) && err.contains("127.0.0.1:9"),
        "{err}"
    );
}
