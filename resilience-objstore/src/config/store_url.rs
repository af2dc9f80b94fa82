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
        /// The storage API's base URL (`?endpoint=`), instead of `https://storage.googleapis.com`:
        /// a GCS-compatible server, or an emulator on loopback.
        endpoint: Option<String>,
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

/// `url` without the user name and password it may carry, for messages: its own, and those of
/// a URL in one of its parameters (`?endpoint=https://user:password@host`).
pub(super) fn redact(url: &str) -> String {
    fn strip(u: &mut Url) -> bool {
        let had = !u.username().is_empty() || u.password().is_some();
        if had {
            let _ = u.set_username("");
            let _ = u.set_password(None);
        }
        had
    }
    let Ok(mut u) = Url::parse(url) else {
        return url.to_owned();
    };
    let mut changed = strip(&mut u);
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .map(|(k, v)| {
            let v = match Url::parse(&v) {
                Ok(mut inner) => {
                    if strip(&mut inner) {
                        changed = true;
                        inner.to_string()
                    } else {
                        v.into_owned()
                    }
                }
                Err(_) => v.into_owned(),
            };
            (k.into_owned(), v)
        })
        .collect();
    if !changed {
        return url.to_owned();
    }
    if !pairs.is_empty() {
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.to_string()
}

/// A GCS `endpoint=` value as the storage API's base URL (no trailing `/`), or why it cannot be
/// one: an `http://` or `https://` URL with a host, and no query or fragment.
fn gcs_endpoint(value: &str) -> Result<String, String> {
    let parsed = Url::parse(value).map_err(|e| format!("endpoint {value:?}: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "endpoint {value:?}: not an http:// or https:// URL"
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("endpoint {value:?}: no host"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!(
            "endpoint {value:?}: a base URL has no query or fragment (percent-encode a `?` or `&` in a URL's parameter)"
        ));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("endpoint: credentials do not go in the URL (use GOOGLE_APPLICATION_CREDENTIALS or GOOGLE_SERVICE_ACCOUNT)".into());
    }
    Ok(value.trim_end_matches('/').to_owned())
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
            "gs" => {
                let mut endpoint = None;
                let mut ca_file = None;
                for (k, v) in url.query_pairs() {
                    match k.as_ref() {
                        "endpoint" => endpoint = Some(gcs_endpoint(&v).map_err(|r| invalid(&r))?),
                        "ca_file" => ca_file = Some(PathBuf::from(v.into_owned())),
                        other => {
                            return Err(invalid(&format!(
                                "unknown parameter {other:?} (endpoint, ca_file)"
                            )))
                        }
                    }
                }
                Ok(StoreUrl::Gcs {
                    bucket: bucket()?,
                    prefix,
                    endpoint,
                    ca_file,
                })
            }
            "az" | "azure" => {
                let mut ca_file = None;
                for (k, v) in url.query_pairs() {
                    match k.as_ref() {
                        "ca_file" => ca_file = Some(PathBuf::from(v.into_owned())),
                        other => {
                            return Err(invalid(&format!("unknown parameter {other:?} (ca_file)")))
                        }
                    }
                }
                Ok(StoreUrl::Azure {
                    container: bucket()?,
                    prefix,
                    ca_file,
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
        assert_eq!(
            StoreUrl::parse("gs://b/p/q").unwrap(),
            StoreUrl::Gcs {
                bucket: "b".into(),
                prefix: "p/q".into(),
                endpoint: None,
                ca_file: None,
            }
        );
        assert!(StoreUrl::parse("gs://b/p?nope=1").is_err());
        assert!(StoreUrl::parse("s3://b/p?bogus=1").is_err());
        assert!(StoreUrl::parse("ftp://x/y").is_err());
        assert!(StoreUrl::parse("s3:///p").is_err());
    }

    #[test]
    fn a_gs_url_may_name_an_endpoint() {
        assert_eq!(
            StoreUrl::parse("gs://b/backups/x?endpoint=http://127.0.0.1:4443/&ca_file=/ca.pem")
                .unwrap(),
            StoreUrl::Gcs {
                bucket: "b".into(),
                prefix: "backups/x".into(),
                endpoint: Some("http://127.0.0.1:4443".into()),
                ca_file: Some("/ca.pem".into()),
            }
        );
        // A base URL with a path keeps it.
        match StoreUrl::parse("gs://b?endpoint=https://gcs.example.com/storage").unwrap() {
            StoreUrl::Gcs {
                endpoint, prefix, ..
            } => {
                assert_eq!(endpoint.as_deref(), Some("https://gcs.example.com/storage"));
                assert_eq!(prefix, "");
            }
            other => panic!("{other:?}"),
        }
        // An endpoint that is not a base URL is refused, naming it; the URL shown has no
        // credentials.
        for (bad, says) in [
            ("gs://b/p?endpoint=ftp://h", "not an http"),
            ("gs://b/p?endpoint=nonsense", "nonsense"),
            ("gs://b/p?endpoint=http://h%3Fx%3D1", "no query"),
            (
                "gs://b/p?endpoint=http://u:secret@h",
                "credentials do not go",
            ),
        ] {
            let err = StoreUrl::parse(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
            assert!(!err.contains("secret@"), "{err}");
        }
        // Unknown parameters are named with the known ones.
        let err = StoreUrl::parse("gs://b/p?region=x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("endpoint, ca_file"), "{err}");
    }
}
