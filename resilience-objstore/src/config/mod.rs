//! Repository and bucket URLs, and the stores they name: [`open_store`] and the sinks over it.
//! The URL grammar is `store_url`, the HTTP client settings (retries, plain http only to
//! loopback, extra CA certificates) are `client`.

mod client;
mod store_url;

use std::sync::Arc;

use object_store::ObjectStore;
use resilience_core::sink::Sink;

use self::client::{check_http, client_options, extra_roots, retry};
use self::store_url::redact;
pub(crate) use client::{extra_reqwest_roots, is_loopback, REQUEST_TIMEOUT};
pub use store_url::{StoreConfigError, StoreUrl};

use crate::sink::ObjectStoreSink;
use crate::streaming_put::StreamingPut;

/// A store a URL names, and where inside it.
pub struct OpenedStore {
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// The key prefix the URL names inside it (no leading or trailing `/`).
    pub prefix: String,
    /// The URL, for messages (without credentials).
    pub location: String,
    /// For a local directory, its path.
    pub local_root: Option<std::path::PathBuf>,
    /// Attributes every write through the sink carries (the storage class of a cold tier).
    pub put_attributes: object_store::Attributes,
}

/// The S3 client settings an `s3://` URL names: the `AWS_*` environment, overridden by the
/// URL's `endpoint` and `region`; and whether plain http is allowed (loopback endpoints only).
pub(crate) fn s3_settings(
    text: &str,
    url: &StoreUrl,
) -> Result<(object_store::aws::AmazonS3Builder, bool), StoreConfigError> {
    let StoreUrl::S3 {
        bucket,
        endpoint,
        region,
        ca_file,
        ..
    } = url
    else {
        return Err(StoreConfigError::Invalid {
            url: redact(text),
            reason: "not an s3:// URL".into(),
        });
    };
    let mut b = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_retry(retry());
    // Request signatures cover the headers but not a SHA-256 of each body (`UNSIGNED-PAYLOAD`,
    // as rclone and the AWS SDKs send over TLS): bodies travel over TLS, or over plain http only
    // to a loopback endpoint (nothing else is accepted), and every repository object carries its
    // own checksum, which verify and replication check. Hashing every body twice (here and in
    // the server) would cost CPU and protect nothing more. `AWS_UNSIGNED_PAYLOAD=false` signs
    // them anyway.
    if std::env::var_os("AWS_UNSIGNED_PAYLOAD").is_none() {
        b = b.with_unsigned_payload(true);
    }
    let endpoint = endpoint
        .clone()
        .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
    // CA certificates matter only for https; reading a bundle costs wal-push time.
    let plain = endpoint
        .as_deref()
        .is_some_and(|e| e.starts_with("http://"));
    let roots = if plain {
        Vec::new()
    } else {
        extra_roots(text, ca_file.as_deref(), true)?
    };
    b = b.with_client_options(client_options(roots, "AWS_", |k| match k {
        object_store::aws::AmazonS3ConfigKey::Client(c) => Some(c),
        _ => None,
    }));
    let mut http = false;
    if let Some(ep) = &endpoint {
        http = check_http(text, ep)?;
        b = b
            .with_endpoint(ep)
            .with_virtual_hosted_style_request(false)
            .with_allow_http(http);
    }
    if let Some(r) = region.clone().or_else(|| std::env::var("AWS_REGION").ok()) {
        b = b.with_region(r);
    }
    Ok((b, http))
}

/// Where requests `object_store` does not make itself are sent, as it addresses the bucket:
/// the region and the endpoint (`https://s3.{region}.amazonaws.com` unless one is configured).
pub(crate) fn s3_region_and_endpoint(
    builder: &object_store::aws::AmazonS3Builder,
) -> (String, String) {
    use object_store::aws::AmazonS3ConfigKey;
    let region = builder
        .get_config_value(&AmazonS3ConfigKey::Region)
        .unwrap_or_else(|| "us-east-1".into());
    let endpoint = builder
        .get_config_value(&AmazonS3ConfigKey::Endpoint)
        .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
    (region, endpoint)
}

/// The environment variables that name GCS credentials, as `object_store` reads them: a
/// service account's key file or key, or application default credentials.
const GCS_CREDENTIAL_VARIABLES: [&str; 5] = [
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GOOGLE_SERVICE_ACCOUNT",
    "GOOGLE_SERVICE_ACCOUNT_PATH",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
    "SERVICE_ACCOUNT",
];

/// Whether any of [`GCS_CREDENTIAL_VARIABLES`] is set.
fn gcs_credentials_given() -> bool {
    GCS_CREDENTIAL_VARIABLES
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()))
}

/// The GCS client a `gs://` URL names.
///
/// Without `endpoint`, Google Cloud Storage itself, with the credentials `object_store` finds:
/// `GOOGLE_SERVICE_ACCOUNT` (a key file) or `GOOGLE_SERVICE_ACCOUNT_KEY`, else application
/// default credentials (`GOOGLE_APPLICATION_CREDENTIALS`, gcloud's file), else the metadata
/// server of a Google Cloud machine.
///
/// With `endpoint`, the same storage API at that base URL, with the same credentials; plain
/// http only to loopback. An endpoint on loopback with none of [`GCS_CREDENTIAL_VARIABLES`] set
/// is reached anonymously: requests carry no token, and no token is fetched (nor is a metadata
/// server asked for one).
///
/// `as_stored`: every request asks for objects as stored ([`open_bucket_store`]).
fn gcs_store(
    text: &str,
    bucket: &str,
    endpoint: Option<&str>,
    ca_file: Option<&std::path::Path>,
    as_stored: bool,
) -> Result<object_store::gcp::GoogleCloudStorage, StoreConfigError> {
    use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
    let client = |source| StoreConfigError::Client {
        url: redact(text),
        source,
    };
    // A credentials file that cannot be read is named with the variable that names it
    // (object_store would call any of them a "service account file").
    for var in [
        "GOOGLE_APPLICATION_CREDENTIALS",
        "GOOGLE_SERVICE_ACCOUNT",
        "GOOGLE_SERVICE_ACCOUNT_PATH",
        "SERVICE_ACCOUNT",
    ] {
        if let Some(path) = std::env::var_os(var).filter(|p| !p.is_empty()) {
            if let Err(e) = std::fs::metadata(&path) {
                return Err(StoreConfigError::Invalid {
                    url: redact(text),
                    reason: format!(
                        "cannot read the GCS credentials file {} named by {var}: {e}",
                        std::path::Path::new(&path).display()
                    ),
                });
            }
        }
    }
    let plain = match endpoint {
        Some(ep) => check_http(text, ep)?,
        None => false,
    };
    let roots = if plain {
        Vec::new()
    } else {
        extra_roots(text, ca_file, false)?
    };
    let mut options = client_options(roots, "GOOGLE_", |k| match k {
        GoogleConfigKey::Client(c) => Some(c),
        _ => None,
    })
    .with_allow_http(plain);
    if as_stored {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::ACCEPT_ENCODING,
            http::HeaderValue::from_static("gzip"),
        );
        options = options.with_default_headers(headers);
    }
    let from_env = || {
        GoogleCloudStorageBuilder::from_env()
            .with_bucket_name(bucket)
            .with_retry(retry())
            .with_client_options(options.clone())
    };
    let Some(endpoint) = endpoint else {
        return from_env().build().map_err(client);
    };
    // object_store takes a base URL only from a service account key (`gcs_base_url`), where
    // `disable_oauth` also stops it fetching tokens: such a key names the endpoint, and the
    // credentials, if any, are those the environment gives, as without an endpoint.
    let key = serde_json::json!({
        "gcs_base_url": endpoint,
        "disable_oauth": true,
        "client_email": "",
        "private_key": "",
        "private_key_id": "",
    })
    .to_string();
    let at_endpoint = GoogleCloudStorageBuilder::new()
        .with_bucket_name(bucket)
        .with_retry(retry())
        .with_client_options(options.clone())
        .with_service_account_key(key);
    if is_loopback(endpoint) && !gcs_credentials_given() {
        return at_endpoint
            .with_skip_signature(true)
            .build()
            .map_err(client);
    }
    let credentials = from_env().build().map_err(client)?.credentials().clone();
    at_endpoint
        .with_credentials(credentials)
        .build()
        .map_err(client)
}

/// What a request to a GCS bucket by exact name needs ([`crate::gcs_exact`]), as
/// [`gcs_store`] configures its client for the same URL.
pub(crate) struct GcsExactSettings {
    /// The storage API's base URL.
    pub(crate) base: String,
    /// Extra CA certificates to trust (`ca_file=`).
    pub(crate) roots: Vec<reqwest::Certificate>,
    /// `None`: anonymous (an endpoint on loopback without credentials).
    pub(crate) credentials: Option<object_store::gcp::GcpCredentialProvider>,
}

/// The settings of requests by exact name to the GCS bucket `bucket` of the URL `text`.
pub(crate) fn gcs_exact_settings(
    text: &str,
    bucket: &str,
    endpoint: Option<&str>,
    ca_file: Option<&std::path::Path>,
) -> Result<GcsExactSettings, StoreConfigError> {
    let plain = endpoint.map(|ep| check_http(text, ep)).transpose()? == Some(true);
    let roots = match plain {
        true => Vec::new(),
        false => extra_reqwest_roots(text, ca_file)?,
    };
    let anonymous = endpoint.is_some_and(is_loopback) && !gcs_credentials_given();
    let credentials = if anonymous {
        None
    } else {
        Some(
            gcs_store(text, bucket, None, ca_file, true)?
                .credentials()
                .clone(),
        )
    };
    Ok(GcsExactSettings {
        base: endpoint
            .unwrap_or("https://storage.googleapis.com")
            .to_owned(),
        roots,
        credentials,
    })
}

/// Opens the store a URL names (creating a local directory if `create`).
pub fn open_store(text: &str, create: bool) -> Result<OpenedStore, StoreConfigError> {
    open(text, create, false)
}

/// Opens the store a bucket URL names for a bucket backup or restore: as [`open_store`], except
/// that a GCS client asks for every object as it is stored (`Accept-Encoding: gzip`). Without
/// it, GCS serves an object stored gzip-compressed with `Content-Encoding: gzip` decompressed
/// ("decompressive transcoding"), without its `Content-Encoding`, and ignores a `Range`: a
/// backup would keep other bytes and lose the attribute. Nothing decompresses the answer here
/// (the HTTP client has no gzip decoding), so the bytes read are the stored ones.
pub fn open_bucket_store(text: &str, create: bool) -> Result<OpenedStore, StoreConfigError> {
    open(text, create, true)
}

fn open(text: &str, create: bool, as_stored: bool) -> Result<OpenedStore, StoreConfigError> {
    let client = |source| StoreConfigError::Client {
        url: redact(text),
        source,
    };
    Ok(match StoreUrl::parse(text)? {
        StoreUrl::Memory => OpenedStore {
            store: Arc::new(object_store::memory::InMemory::new()),
            prefix: String::new(),
            location: "memory://".into(),
            local_root: None,
            put_attributes: Default::default(),
        },
        StoreUrl::Local(path) => {
            if !path.exists() {
                if !create {
                    return Err(StoreConfigError::MissingDirectory {
                        path: path.display().to_string(),
                    });
                }
                std::fs::create_dir_all(&path).map_err(|e| StoreConfigError::Invalid {
                    url: text.to_owned(),
                    reason: format!("cannot create directory: {e}"),
                })?;
            }
            let root = std::fs::canonicalize(&path).map_err(|e| StoreConfigError::Invalid {
                url: text.to_owned(),
                reason: e.to_string(),
            })?;
            if !root.is_dir() {
                return Err(StoreConfigError::Invalid {
                    url: text.to_owned(),
                    reason: "not a directory".into(),
                });
            }
            let store =
                object_store::local::LocalFileSystem::new_with_prefix(&root).map_err(client)?;
            OpenedStore {
                store: Arc::new(store),
                prefix: String::new(),
                location: root.display().to_string(),
                local_root: Some(root),
                put_attributes: Default::default(),
            }
        }
        parsed @ StoreUrl::S3 { .. } => {
            let (b, _) = s3_settings(text, &parsed)?;
            let StoreUrl::S3 {
                bucket,
                prefix,
                storage_class,
                ..
            } = parsed
            else {
                unreachable!("matched above")
            };
            let store = b.build().map_err(client)?;
            let mut put_attributes = object_store::Attributes::new();
            if let Some(class) = storage_class {
                put_attributes.insert(object_store::Attribute::StorageClass, class.into());
            }
            OpenedStore {
                store: Arc::new(store),
                location: format!("s3://{bucket}/{prefix}"),
                prefix,
                local_root: None,
                put_attributes,
            }
        }
        StoreUrl::Gcs {
            bucket,
            prefix,
            endpoint,
            ca_file,
        } => OpenedStore {
            store: Arc::new(gcs_store(
                text,
                &bucket,
                endpoint.as_deref(),
                ca_file.as_deref(),
                as_stored,
            )?),
            location: format!("gs://{bucket}/{prefix}"),
            prefix,
            local_root: None,
            put_attributes: Default::default(),
        },
        StoreUrl::Azure {
            container,
            prefix,
            ca_file,
        } => {
            let mut b = object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_container_name(&container)
                .with_retry(retry());
            let roots = extra_roots(text, ca_file.as_deref(), false)?;
            b = b.with_client_options(client_options(roots, "AZURE_", |k| match k {
                object_store::azure::AzureConfigKey::Client(c) => Some(c),
                _ => None,
            }));
            let store = b.build().map_err(client)?;
            OpenedStore {
                store: Arc::new(store),
                location: format!("az://{container}/{prefix}"),
                prefix,
                local_root: None,
                put_attributes: Default::default(),
            }
        }
    })
}

fn build(text: &str, create: bool) -> Result<Arc<dyn Sink>, StoreConfigError> {
    let opened = open_store(text, create)?;
    let mut sink = ObjectStoreSink::new(opened.store, &opened.prefix, &opened.location)
        .with_put_attributes(opened.put_attributes);
    if let Some(put) = StreamingPut::for_url(text)? {
        sink = sink.with_streaming_put(put);
    }
    Ok(Arc::new(match opened.local_root {
        Some(root) => sink.with_local_root(root),
        None => sink,
    }))
}

/// Opens the store a URL names. A local directory must exist.
pub fn open_sink(url: &str) -> Result<Arc<dyn Sink>, StoreConfigError> {
    build(url, false)
}

/// Opens the store a URL names, creating a local directory if it is missing (for `init`).
pub fn open_sink_or_create(url: &str) -> Result<Arc<dyn Sink>, StoreConfigError> {
    build(url, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_write_carries_the_put_attributes() {
        use object_store::{Attribute, Attributes, ObjectStore};
        use resilience_core::sink::{PutMode, Sink};
        let store = Arc::new(object_store::memory::InMemory::new());
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::StorageClass, "STANDARD_IA".into());
        let sink =
            ObjectStoreSink::new(store.clone(), "p", "memory://").with_put_attributes(attributes);
        sink.put("small", bytes::Bytes::from_static(b"x"), PutMode::Create)
            .await
            .unwrap();
        sink.put("large", vec![7u8; 9 << 20].into(), PutMode::Overwrite)
            .await
            .unwrap();
        for key in ["p/small", "p/large"] {
            let got = store
                .get(&object_store::path::Path::from(key))
                .await
                .unwrap();
            assert_eq!(
                got.attributes
                    .get(&Attribute::StorageClass)
                    .map(|v| v.as_ref()),
                Some("STANDARD_IA"),
                "{key}"
            );
        }
    }
    #[test]
    fn a_missing_local_directory_is_named() {
        let err = open_sink("/nonexistent/resilience/repo").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/resilience/repo"));
    }
}
