//! How the stores' HTTP clients are set up: retries, the rule that plain http goes only to a
//! loopback endpoint, and the extra CA certificates (`ca_file=`, `AWS_CA_BUNDLE`) they trust.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use object_store::{BackoffConfig, Certificate, ClientOptions, RetryConfig};
use url::Url;

use super::store_url::redact;
use super::StoreConfigError;

/// How long one request of a store client may take, from connecting until the last byte of its
/// response body (`AWS_TIMEOUT`, `GOOGLE_TIMEOUT`, `AZURE_TIMEOUT` override it, e.g. `2m`): a
/// server that stops answering, before the response or in the middle of its body, is cut here,
/// and the request is retried as [`retry`] says. A single `PUT` (up to 32 MiB) or a part (8 MiB)
/// must go out within it: 30 s needs about 9 Mbit/s for the largest single `PUT`.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long connecting may take (within [`REQUEST_TIMEOUT`]; `*_CONNECT_TIMEOUT` overrides it).
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The retries of every store client, and how long a request can take in all.
///
/// A request is retried on a `5xx`, `429` or `408` answer (S3's `500 InternalError` and
/// `503 SlowDown` included) and on a connection refused or closed before the answer; after a
/// timeout or a connection reset only if `object_store` holds it idempotent (`GET`, `HEAD`, a
/// listing, an overwriting `PUT`, a multipart part): a `DELETE`, a create-only `PUT`, a
/// multipart create or complete then fail at once, naming the object (running the command
/// again finishes its work). A `GET` whose body fails part way is resumed from where it
/// stopped (same ETag), counting against the same retries. At most 5 retries, backing off 100 ms,
/// then at random up to twice the previous wait (at most 0.1 + 0.2 + 0.4 + 0.8 + 1.6 = 3.1 s
/// in all), and none is started after 120 s. Each attempt ends within [`REQUEST_TIMEOUT`], so
/// one request of the store client returns, answered or failed, within
/// min(6 × 30 s + 3.1 s, 120 s + 1.6 s + 30 s) ≈ 152 s (with `*_TIMEOUT=T`:
/// min(6·T + 3.1 s, 121.6 s + T)). An operation makes many requests, each bounded so.
///
/// Not retried by `object_store`, so bounded elsewhere or failing at once: a listing page whose
/// answer breaks off mid-body (the sink resumes the listing, at most 3 times, each resumption
/// a request bounded as above: `sink::LIST_RESUMES`); an error answer (`404`…) whose body breaks off (the request fails,
/// naming the object); a streamed copy's `PUT` (`streaming_put`: cut after the request timeout
/// without progress, tried 3 times in all by replication). The README's "Retries and timeouts"
/// has the table; `tests/faults.rs` checks it through a fault-injecting proxy.
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

/// Client options with the request and connect timeouts ([`REQUEST_TIMEOUT`],
/// [`CONNECT_TIMEOUT`]), trusting `roots` besides the system's CAs, with the client settings the
/// environment gives (`{prefix}*` variables that parse as `K`'s client keys, `AWS_TIMEOUT`…),
/// as `from_env` would have set them, over those.
pub(super) fn client_options<K>(
    roots: Vec<Certificate>,
    env_prefix: &str,
    client_key: fn(K) -> Option<object_store::ClientConfigKey>,
) -> ClientOptions
where
    K: std::str::FromStr,
{
    let mut options = ClientOptions::new()
        .with_timeout(REQUEST_TIMEOUT)
        .with_connect_timeout(CONNECT_TIMEOUT);
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
