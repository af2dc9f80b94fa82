//! Repository and bucket URLs, and the stores they name.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::{BackoffConfig, Certificate, ClientOptions, ObjectStore, RetryConfig};
use resilience_core::sink::Sink;
use url::Url;

use crate::sink::ObjectStoreSink;
use crate::streaming_put::StreamingPut;

/// A store URL that cannot be used, naming it (never with credentials).
#[derive(Debug, thiserror::Error)]
pub enum StoreConfigError {
    /// The URL does not parse or has an unknown scheme.
    #[error("cannot use {url:?} as a store: {reason}")]
    Invalid {
        /// The URL, as given (credentials removed).
        url: String,
        /// Why.
        reason: String,
    },
    /// A local repository directory does not exist.
    #[error("no repository at {path}: the directory does not exist (run `resilience init` first, or check the path)")]
    MissingDirectory {
        /// The directory.
        path: String,
    },
    /// A CA file (`ca_file=`, `AWS_CA_BUNDLE`) cannot be read or holds no certificate.
    #[error("cannot use the CA file {path} ({origin}) for {url}: {reason}")]
    CaFile {
        /// The URL (credentials removed).
        url: String,
        /// The file.
        path: String,
        /// Where the file was named (`ca_file=` or `AWS_CA_BUNDLE`).
        origin: &'static str,
        /// Why.
        reason: String,
    },
    /// The store client refused the configuration.
    #[error("cannot configure the store for {url}: {source}")]
    Client {
        /// The URL.
        url: String,
        /// The client's error.
        #[source]
        source: object_store::Error,
    },
}

/// A parsed store URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreUrl {
    /// A local directory.
    Local(PathBuf),
    /// A fresh in-memory store.
    Memory,
    /// S3 or an S3-compatible store.
    S3 {
        /// Bucket.
        bucket: String,
        /// Key prefix.
        prefix: String,
        /// Endpoint override (`?endpoint=`), else `AWS_ENDPOINT_URL`.
        endpoint: Option<String>,
        /// Region override (`?region=`), else `AWS_REGION`.
        region: Option<String>,
        /// Storage class for what this store writes (`STANDARD_IA`, `GLACIER_IR`…): a cheaper
        /// class for a cold tier.
        storage_class: Option<String>,
        /// PEM file of CA certificates to trust besides the system's (`?ca_file=`), for an
        /// https endpoint with a private CA; `AWS_CA_BUNDLE` is honoured too.
        ca_file: Option<PathBuf>,
    },
    /// Google Cloud Storage.
    Gcs {
        /// Bucket.
        bucket: String,
        /// Key prefix.
        prefix: String,
        /// PEM file of CA certificates to trust besides the system's (`?ca_file=`).
        ca_file: Option<PathBuf>,
    },
    /// Azure Blob Storage.
    Azure {
        /// Container.
        container: String,
        /// Key prefix.
        prefix: String,
        /// PEM file of CA certificates to trust besides the system's (`?ca_file=`).
        ca_file: Option<PathBuf>,
    },
}

fn redact(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

impl StoreUrl {
    /// Parses a URL or a plain local path.
    pub fn parse(text: &str) -> Result<Self, StoreConfigError> {
        let invalid = |reason: &str| StoreConfigError::Invalid {
            url: redact(text),
            reason: reason.to_owned(),
        };
        if !text.contains("://") {
            if text.is_empty() {
                return Err(invalid("empty location"));
            }
            return Ok(StoreUrl::Local(PathBuf::from(text)));
        }
        let url = Url::parse(text).map_err(|e| invalid(&e.to_string()))?;
        let bucket = || {
            url.host_str()
                .map(str::to_owned)
                .filter(|b| !b.is_empty())
                .ok_or_else(|| invalid("missing bucket name"))
        };
        let prefix = url.path().trim_matches('/').to_owned();
        match url.scheme() {
            "file" => Ok(StoreUrl::Local(
                url.to_file_path()
                    .map_err(|_| invalid("not an absolute file path"))?,
            )),
            "memory" => Ok(StoreUrl::Memory),
            "s3" | "s3a" => {
                let mut endpoint = None;
                let mut region = None;
                let mut storage_class = None;
                let mut ca_file = None;
                for (k, v) in url.query_pairs() {
                    match k.as_ref() {
                        "endpoint" => endpoint = Some(v.into_owned()),
                        "region" => region = Some(v.into_owned()),
                        "storage_class" => storage_class = Some(v.into_owned()),
                        "ca_file" => ca_file = Some(PathBuf::from(v.into_owned())),
                        other => {
                            return Err(invalid(&format!(
                                "unknown parameter {other:?} (endpoint, region, storage_class, ca_file)"
                            )))
                        }
                    }
                }
                Ok(StoreUrl::S3 {
                    bucket: bucket()?,
                    prefix,
                    endpoint,
                    region,
                    storage_class,
                    ca_file,
                })
            }
            "gs" | "az" | "azure" => {
                let mut ca_file = None;
                for (k, v) in url.query_pairs() {
                    match k.as_ref() {
                        "ca_file" => ca_file = Some(PathBuf::from(v.into_owned())),
                        other => {
                            return Err(invalid(&format!("unknown parameter {other:?} (ca_file)")))
                        }
                    }
                }
                Ok(if url.scheme() == "gs" {
                    StoreUrl::Gcs {
                        bucket: bucket()?,
                        prefix,
                        ca_file,
                    }
                } else {
                    StoreUrl::Azure {
                        container: bucket()?,
                        prefix,
                        ca_file,
                    }
                })
            }
            other => Err(invalid(&format!(
                "unknown scheme {other:?} (use a path, file://, s3://, gs://, az:// or memory://)"
            ))),
        }
    }
}

fn retry() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            base: 2.0,
        },
        max_retries: 5,
        retry_timeout: Duration::from_secs(120),
    }
}

/// Whether an endpoint URL points at this machine.
pub(crate) fn is_loopback(endpoint: &str) -> bool {
    let Ok(url) = Url::parse(endpoint) else {
        return false;
    };
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

fn check_http(text: &str, endpoint: &str) -> Result<bool, StoreConfigError> {
    if endpoint.starts_with("http://") {
        if is_loopback(endpoint) {
            return Ok(true);
        }
        return Err(StoreConfigError::Invalid {
            url: redact(text),
            reason: format!(
                "plain http to {endpoint} is refused: use https, or a loopback endpoint"
            ),
        });
    }
    Ok(false)
}

/// The CA certificates named by `ca_file=` and (for S3) `AWS_CA_BUNDLE`, if any.
fn extra_roots(
    text: &str,
    ca_file: Option<&std::path::Path>,
    aws: bool,
) -> Result<Vec<Certificate>, StoreConfigError> {
    read_roots(text, ca_file, aws, |pem| {
        Certificate::from_pem_bundle(pem).map_err(|e| e.to_string())
    })
}

/// The same certificates as [`extra_roots`], for a `reqwest` client of our own.
pub(crate) fn extra_reqwest_roots(
    text: &str,
    ca_file: Option<&std::path::Path>,
) -> Result<Vec<reqwest::Certificate>, StoreConfigError> {
    read_roots(text, ca_file, true, |pem| {
        reqwest::Certificate::from_pem_bundle(pem).map_err(|e| e.to_string())
    })
}

/// Reads and parses the CA files `ca_file=` and (if `aws`) `AWS_CA_BUNDLE` name.
fn read_roots<C>(
    text: &str,
    ca_file: Option<&std::path::Path>,
    aws: bool,
    parse: impl Fn(&[u8]) -> Result<Vec<C>, String>,
) -> Result<Vec<C>, StoreConfigError> {
    let mut files: Vec<(PathBuf, &'static str)> = Vec::new();
    if let Some(path) = ca_file {
        files.push((path.to_owned(), "ca_file="));
    }
    if aws {
        if let Some(path) = std::env::var_os("AWS_CA_BUNDLE").filter(|p| !p.is_empty()) {
            files.push((PathBuf::from(path), "AWS_CA_BUNDLE"));
        }
    }
    let mut roots = Vec::new();
    for (path, origin) in files {
        let fail = |reason: String| StoreConfigError::CaFile {
            url: redact(text),
            path: path.display().to_string(),
            origin,
            reason,
        };
        let pem = std::fs::read(&path).map_err(|e| fail(e.to_string()))?;
        let certs = parse(&pem).map_err(fail)?;
        if certs.is_empty() {
            return Err(fail("no PEM certificate in it".into()));
        }
        roots.extend(certs);
    }
    Ok(roots)
}

/// Client options trusting `roots` besides the system's CAs, with the client settings the
/// environment gives (`{prefix}*` variables that parse as `K`'s client keys), as `from_env`
/// would have set them.
fn client_options<K>(
    roots: Vec<Certificate>,
    env_prefix: &str,
    client_key: fn(K) -> Option<object_store::ClientConfigKey>,
) -> ClientOptions
where
    K: std::str::FromStr,
{
    let mut options = ClientOptions::new();
    for (key, value) in std::env::vars() {
        if key.starts_with(env_prefix) {
            if let Some(k) = key
                .to_ascii_lowercase()
                .parse::<K>()
                .ok()
                .and_then(client_key)
            {
                options = options.with_config(k, value);
            }
        }
    }
    for root in roots {
        options = options.with_root_certificate(root);
    }
    options
}

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
    if !plain {
        let roots = extra_roots(text, ca_file.as_deref(), true)?;
        if !roots.is_empty() {
            b = b.with_client_options(client_options(roots, "AWS_", |k| match k {
                object_store::aws::AmazonS3ConfigKey::Client(c) => Some(c),
                _ => None,
            }));
        }
    }
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

/// Opens the store a URL names (creating a local directory if `create`).
pub fn open_store(text: &str, create: bool) -> Result<OpenedStore, StoreConfigError> {
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
            ca_file,
        } => {
            let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(&bucket)
                .with_retry(retry());
            let roots = extra_roots(text, ca_file.as_deref(), false)?;
            if !roots.is_empty() {
                b = b.with_client_options(client_options(roots, "GOOGLE_", |k| match k {
                    object_store::gcp::GoogleConfigKey::Client(c) => Some(c),
                    _ => None,
                }));
            }
            let store = b.build().map_err(client)?;
            OpenedStore {
                store: Arc::new(store),
                location: format!("gs://{bucket}/{prefix}"),
                prefix,
                local_root: None,
                put_attributes: Default::default(),
            }
        }
        StoreUrl::Azure {
            container,
            prefix,
            ca_file,
        } => {
            let mut b = object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_container_name(&container)
                .with_retry(retry());
            let roots = extra_roots(text, ca_file.as_deref(), false)?;
            if !roots.is_empty() {
                b = b.with_client_options(client_options(roots, "AZURE_", |k| match k {
                    object_store::azure::AzureConfigKey::Client(c) => Some(c),
                    _ => None,
                }));
            }
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

    #[test]
    fn an_s3_url_may_name_a_storage_class() {
        match StoreUrl::parse("s3://cold/billing?storage_class=GLACIER_IR&region=eu").unwrap() {
            StoreUrl::S3 { storage_class, .. } => {
                assert_eq!(storage_class.as_deref(), Some("GLACIER_IR"))
            }
            other => panic!("{other:?}"),
        }
        assert!(StoreUrl::parse("s3://b/p?class=x").is_err());
    }

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
    fn parses_every_form() {
        assert_eq!(
            StoreUrl::parse("/tmp/r").unwrap(),
            StoreUrl::Local("/tmp/r".into())
        );
        assert_eq!(
            StoreUrl::parse("file:///tmp/r").unwrap(),
            StoreUrl::Local("/tmp/r".into())
        );
        assert_eq!(StoreUrl::parse("memory://").unwrap(), StoreUrl::Memory);
        assert_eq!(
            StoreUrl::parse("s3://b/p/q?endpoint=http://127.0.0.1:3900&region=dc-b").unwrap(),
            StoreUrl::S3 {
                bucket: "b".into(),
                prefix: "p/q".into(),
                endpoint: Some("http://127.0.0.1:3900".into()),
                region: Some("dc-b".into()),
                storage_class: None,
                ca_file: None,
            }
        );
        assert_eq!(
            StoreUrl::parse("az://c/p?ca_file=/etc/ca.pem").unwrap(),
            StoreUrl::Azure {
                container: "c".into(),
                prefix: "p".into(),
                ca_file: Some("/etc/ca.pem".into()),
            }
        );
        assert!(StoreUrl::parse("gs://b/p?nope=1").is_err());
        assert!(StoreUrl::parse("s3://b/p?bogus=1").is_err());
        assert!(StoreUrl::parse("ftp://x/y").is_err());
        assert!(StoreUrl::parse("s3:///p").is_err());
    }

    #[test]
    fn plain_http_only_to_loopback() {
        assert!(check_http("s3://b", "http://127.0.0.1:3900").unwrap());
        assert!(check_http("s3://b", "http://localhost:3900").unwrap());
        assert!(check_http("s3://b", "http://[::1]:3900").unwrap());
        assert!(check_http("s3://b", "http://10.0.0.5:3900").is_err());
        assert!(!check_http("s3://b", "https://s3.example.com").unwrap());
    }

    #[test]
    fn a_missing_local_directory_is_named() {
        let err = open_sink("/nonexistent/resilience/repo").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/resilience/repo"));
    }
}
