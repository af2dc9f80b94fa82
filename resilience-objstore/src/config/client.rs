//! How the stores' HTTP clients are set up: retries, the rule that plain http goes only to a
//! loopback endpoint, and the extra CA certificates (`ca_file=`, `AWS_CA_BUNDLE`) they trust.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use object_store::{BackoffConfig, Certificate, ClientOptions, RetryConfig};
use url::Url;

use super::store_url::redact;
use super::StoreConfigError;

/// The retries of every store client: up to five, backing off from 100 ms to 5 s, within two
/// minutes.
pub(super) fn retry() -> RetryConfig {
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

/// Whether a store may be reached over plain http at `endpoint` (only on loopback); an error
/// naming `text` for plain http elsewhere.
pub(super) fn check_http(text: &str, endpoint: &str) -> Result<bool, StoreConfigError> {
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
pub(super) fn extra_roots(
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
pub(super) fn client_options<K>(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_loopback() {
        assert!(check_http("s3://b", "http://127.0.0.1:3900").unwrap());
        assert!(check_http("s3://b", "http://localhost:3900").unwrap());
        assert!(check_http("s3://b", "http://[::1]:3900").unwrap());
        assert!(check_http("s3://b", "http://10.0.0.5:3900").is_err());
        assert!(!check_http("s3://b", "https://s3.example.com").unwrap());
    }
}
