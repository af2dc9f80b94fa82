//! The `Sink` conformance suite against every store this crate opens: memory, local disk, a
//! real S3 server (Garage), Azure Blob Storage (Azurite) and Google Cloud Storage
//! (fake-gcs-server), all started by `scripts/test`.

mod common;

use resilience_core::sink::conformance::{self, Capabilities};
use resilience_objstore::{open_sink, open_sink_or_create};

#[tokio::test]
async fn memory_store_conforms() {
    let sink = open_sink("memory://").unwrap();
    conformance::run_all(sink.as_ref(), "", Capabilities::default()).await;
}

#[tokio::test]
async fn local_filesystem_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let sink = open_sink_or_create(dir.path().join("repo").to_str().unwrap()).unwrap();
    conformance::run_all(sink.as_ref(), "", Capabilities::default()).await;
    let url = format!("file://{}", dir.path().join("repo").display());
    let again = open_sink(&url).unwrap();
    assert_eq!(again.get("basic/empty").await.unwrap().len(), 0);
}

#[tokio::test]
async fn garage_s3_conforms() {
    let url = common::garage_url("conformance");
    let sink = open_sink(&url).unwrap();
    // Garage ignores If-None-Match: create-only is not enforced there.
    conformance::run_all(
        sink.as_ref(),
        "",
        Capabilities {
            enforces_create: false,
            listing_size: 1100,
        },
    )
    .await;
}

#[tokio::test]
async fn azure_blob_through_azurite_conforms() {
    let sink = open_sink(&common::azurite_url("conformance")).unwrap();
    conformance::run_all(
        sink.as_ref(),
        "",
        Capabilities {
            enforces_create: true,
            listing_size: 1100,
        },
    )
    .await;
}

#[tokio::test]
async fn google_cloud_storage_through_fake_gcs_server_conforms() {
    let sink = open_sink(&common::gcs_url("conformance")).unwrap();
    // fake-gcs-server checks `ifGenerationMatch=0`: create-only is enforced.
    conformance::run_all(
        sink.as_ref(),
        "",
        Capabilities {
            enforces_create: true,
            listing_size: 1100,
        },
    )
    .await;
}

#[tokio::test]
async fn a_gs_endpoint_is_reached_anonymously_on_loopback_and_a_dead_one_is_a_named_error() {
    use resilience_core::sink::{PutMode, SinkError};
    let (bucket, endpoint) = common::gcs();
    let url = common::gcs_url("endpoint");
    let sink = open_sink(&url).unwrap();
    sink.put("x", "1".into(), PutMode::Create).await.unwrap();
    assert!(matches!(
        sink.put("x", "2".into(), PutMode::Create).await,
        Err(SinkError::AlreadyExists { .. })
    ));
    assert_eq!(sink.get("x").await.unwrap(), "1");
    // A bucket that is not there: an error naming the object and the bucket.
    let missing = open_sink(&format!("gs://no-such-bucket/p?endpoint={endpoint}")).unwrap();
    let err = missing
        .put("y", "1".into(), PutMode::Overwrite)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no-such-bucket"), "{err}");
    let dead = open_sink(&format!("gs://{bucket}/p?endpoint=http://127.0.0.1:9")).unwrap();
    let started = std::time::Instant::now();
    let err = dead.get("x").await.unwrap_err().to_string();
    assert!(err.contains("x") && err.contains(&bucket), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(150));
    let err = open_sink(&format!("gs://{bucket}/p?endpoint=http://192.0.2.1:4443"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("plain http"), "{err}");
}

/// Credentials from the environment are used with an endpoint too: a service account key file
/// (here one with `disable_oauth`, as emulators take) is read, and the URL's endpoint wins over
/// the key's own `gcs_base_url`; a credentials file that cannot be read is an error naming the
/// URL, never a silent fall-back to anonymous access. (Each test runs in a process of its own
/// under nextest, so the environment set here is this test's alone.)
#[tokio::test]
async fn a_gs_endpoint_takes_the_environments_credentials() {
    use resilience_core::sink::PutMode;
    let url = common::gcs_url("credentials");
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.json");
    std::fs::write(
        &key,
        r#"{"gcs_base_url": "http://127.0.0.1:9", "disable_oauth": true, "client_email": "", "private_key": "", "private_key_id": ""}"#,
    )
    .unwrap();
    std::env::set_var("GOOGLE_SERVICE_ACCOUNT", &key);
    let sink = open_sink(&url).unwrap();
    sink.put("k", "v".into(), PutMode::Create).await.unwrap();
    assert_eq!(sink.get("k").await.unwrap(), "v");
    std::env::remove_var("GOOGLE_SERVICE_ACCOUNT");

    let missing = dir.path().join("no-such-credentials.json");
    std::env::set_var("GOOGLE_APPLICATION_CREDENTIALS", &missing);
    let err = match open_sink(&url) {
        Ok(_) => panic!("opened {url} with unreadable credentials"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("gs://")
            && err.contains("GOOGLE_APPLICATION_CREDENTIALS")
            && err.contains("no-such-credentials.json"),
        "{err}"
    );
    // Without the variable, the same loopback endpoint is reached anonymously.
    std::env::remove_var("GOOGLE_APPLICATION_CREDENTIALS");
    assert_eq!(open_sink(&url).unwrap().get("k").await.unwrap(), "v");
}

#[tokio::test]
async fn a_url_endpoint_overrides_the_environment_and_a_dead_endpoint_is_a_named_error() {
    let url = common::garage_url("override");
    let good = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let sink = open_sink(&format!("{url}?endpoint={good}")).unwrap();
    sink.put("x", "1".into(), resilience_core::sink::PutMode::Overwrite)
        .await
        .unwrap();
    let dead = open_sink(&format!("{url}?endpoint=http://127.0.0.1:9")).unwrap();
    let started = std::time::Instant::now();
    let err = dead.get("x").await.unwrap_err();
    assert!(err.to_string().contains("x"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(150));
    assert!(open_sink(&format!("{url}?endpoint=http://192.0.2.1:3900"))
        .unwrap_err()
        .to_string()
        .contains("plain http"));
}
