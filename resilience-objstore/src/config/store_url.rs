//! The store URLs a repository or bucket is named by: their grammar ([`StoreUrl`]) and the
//! error that names a URL that cannot be used ([`StoreConfigError`]), never with credentials.

use std::path::PathBuf;

use url::Url;

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

/// `url` without the user name and password it may carry, for messages.
pub(super) fn redact(url: &str) -> String {
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
}
