//! Shared by the integration tests: the servers the test script started (Garage, Azurite,
//! fake-gcs-server).

/// The S3 URL of a fresh prefix in the test bucket of the Garage server that `scripts/test`
/// started. Fails (never skips) when it is not running.
pub fn garage_url(name: &str) -> String {
    let vars = [
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "RESILIENCE_TEST_S3_BUCKET",
    ];
    for v in vars {
        assert!(
            std::env::var(v).is_ok(),
            "{v} is not set: these tests need the Garage S3 server that `scripts/test` starts (run the tests with scripts/test)"
        );
    }
    let bucket = std::env::var("RESILIENCE_TEST_S3_BUCKET").unwrap();
    let nonce: u64 = rand_nonce();
    format!("s3://{bucket}/{name}-{nonce:016x}")
}

fn rand_nonce() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    t ^ (std::process::id() as u64).rotate_left(32)
}

/// The `az://` URL of a fresh prefix in the test container of the Azurite server that
/// `scripts/test` started. Fails (never skips) when it is not running.
#[allow(dead_code)]
pub fn azurite_url(name: &str) -> String {
    for v in [
        "AZURE_STORAGE_USE_EMULATOR",
        "AZURITE_BLOB_STORAGE_URL",
        "RESILIENCE_TEST_AZURE_CONTAINER",
    ] {
        assert!(
            std::env::var(v).is_ok(),
            "{v} is not set: these tests need the Azurite server that `scripts/test` starts (run the tests with scripts/test)"
        );
    }
    let container = std::env::var("RESILIENCE_TEST_AZURE_CONTAINER").unwrap();
    format!("az://{container}/{name}-{:016x}", rand_nonce())
}

/// The `gs://` URL (with its `?endpoint=`) of a fresh prefix in the test bucket of the
/// fake-gcs-server that `scripts/test` started. Fails (never skips) when it is not running.
#[allow(dead_code)]
pub fn gcs_url(name: &str) -> String {
    let (bucket, endpoint) = gcs();
    format!(
        "gs://{bucket}/{name}-{:016x}?endpoint={endpoint}",
        rand_nonce()
    )
}

/// The test bucket of the fake-gcs-server that `scripts/test` started, and its endpoint.
#[allow(dead_code)]
pub fn gcs() -> (String, String) {
    let var = |v: &str| {
        std::env::var(v).unwrap_or_else(|_| {
            panic!("{v} is not set: these tests need the fake-gcs-server that `scripts/test` starts (run the tests with scripts/test)")
        })
    };
    (
        var("RESILIENCE_TEST_GCS_BUCKET"),
        var("RESILIENCE_TEST_GCS_ENDPOINT"),
    )
}
