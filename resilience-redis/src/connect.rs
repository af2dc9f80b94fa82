//! Connecting to a standalone server, a cluster or through Sentinel, and finding the primaries.
//!
//! TLS: a `rediss://` URL (`rediss-cluster://`, `rediss-sentinel://` likewise) connects with TLS
//! and checks the server's certificate and name against the system's CAs, or only against the
//! CAs of a `ca_file=` query parameter. `cert_file=` and `key_file=` give a client certificate
//! and key (for `tls-auth-clients yes`). These three parameters are taken out of the URL before
//! it reaches the client, and out of the source id. A plain `redis://` connection to a host
//! other than loopback logs a warning naming the host.

use std::path::PathBuf;

use fred::prelude::*;
use fred::types::config::{Config, ServerConfig, TlsConnector};
use resilience_core::net::is_loopback_host;
use resilience_core::net::tls::{self, ClientCertNames};

use crate::error::RedisError;

/// How long to wait for a server that is loading its dataset.
const LOADING_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// How to reach Redis. Its `Debug` hides the password.
#[derive(Clone)]
pub struct RedisEndpoint {
    /// `redis://[user:password@]host:port[/db]`, `rediss://…`, or for Sentinel
    /// `redis-sentinel://host:port/db?sentinelServiceName=mymaster`.
    pub url: String,
    /// Treat the URL as one node of a cluster (discover the others).
    pub cluster: bool,
}

/// A connected client and what it talks to.
pub struct Connection {
    /// The client (cluster-aware when the endpoint is a cluster: commands go to the key's node).
    pub client: Client,
    /// The primaries: one for a standalone server or Sentinel, every primary of a cluster.
    pub primaries: Vec<fred::types::config::Server>,
    /// Whether it is a cluster.
    pub cluster: bool,
    /// `redis_version` of the server (the first primary's).
    pub version: String,
    /// The database selected (always 0 in a cluster).
    pub db: u8,
}

impl std::fmt::Debug for RedisEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEndpoint")
            .field("url", &crate::source::redact(&self.url))
            .field("cluster", &self.cluster)
            .finish()
    }
}

/// The TLS files a URL names (`ca_file`, `cert_file`, `key_file`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM CA certificates to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub key_file: Option<PathBuf>,
}

/// Splits a URL into the URL the client sees (without the TLS file parameters) and those files.
pub fn split_tls_params(url: &str) -> (String, TlsFiles) {
    let mut files = TlsFiles::default();
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), files);
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let value = || {
            Some(PathBuf::from(
                percent_encoding::percent_decode_str(v)
                    .decode_utf8_lossy()
                    .into_owned(),
            ))
        };
        match k {
            "ca_file" => files.ca_file = value(),
            "cert_file" => files.cert_file = value(),
            "key_file" => files.key_file = value(),
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (url, files)
}

/// The rustls client configuration for `rediss://`: the CAs of `ca_file` (else the system's),
/// the client certificate when given.
fn tls_config(files: &TlsFiles) -> Result<rustls::ClientConfig, String> {
    let roots = match &files.ca_file {
        Some(path) => {
            let certs = tls::read_certs(path).map_err(|e| format!("ca_file: {e}"))?;
            tls::root_store(certs).map_err(|e| format!("ca_file {}: {e}", path.display()))?
        }
        None => tls::native_roots(),
    };
    let builder = tls::client_config(tls::crypto_provider())
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    tls::with_client_cert(
        builder,
        files.cert_file.as_deref(),
        files.key_file.as_deref(),
        CLIENT_CERT,
    )
}

/// The URL parameters of the client certificate and its key.
const CLIENT_CERT: ClientCertNames = ClientCertNames {
    cert: "cert_file",
    key: "key_file",
};

/// The hosts of a configuration that are not loopback (a plain connection to them is warned
/// about).
fn remote_hosts(config: &Config) -> Vec<String> {
    config
        .server
        .hosts()
        .iter()
        .filter(|s| !is_loopback_host(&s.host))
        .map(|s| format!("{}:{}", s.host, s.port))
        .collect()
}

/// Adds what a TLS failure usually means.
fn tls_hint(e: &fred::error::Error, files: &TlsFiles) -> String {
    let details = e.details();
    let ca = files
        .ca_file
        .as_ref()
        .map(|p| format!("ca_file {}", p.display()))
        .unwrap_or_else(|| "the system's CAs".into());
    if details.contains("UnknownIssuer")
        || details.contains("BadSignature")
        || details.contains("unknown issuer")
    {
        format!(" (the server's certificate is not signed by a CA in {ca}: give the CA that signed it with ca_file=)")
    } else if details.contains("NotValidForName") || details.contains("not valid for name") {
        " (the server's certificate does not name the host in the URL: connect by a name the certificate holds)".into()
    } else if details.contains("CertificateRequired") || details.contains("certificate required") {
        " (the server wants a client certificate: give cert_file= and key_file=)".into()
    } else {
        String::new()
    }
}

impl RedisEndpoint {
    /// Connects.
    pub async fn connect(&self) -> Result<Connection, RedisError> {
        let (url, files) = split_tls_params(&self.url);
        let tls_files = &files;
        let err = |e: fred::error::Error| {
            let hint = tls_hint(&e, tls_files);
            RedisError::connect(&self.url, e).with_hint(hint)
        };
        let mut config = if self.cluster {
            let url = url.replacen("redis://", "redis-cluster://", 1).replacen(
                "rediss://",
                "rediss-cluster://",
                1,
            );
            Config::from_url(&url).map_err(err)?
        } else {
            Config::from_url(&url).map_err(err)?
        };
        let wants_files = files != TlsFiles::default();
        if config.tls.is_some() {
            let tls = tls_config(&files).map_err(|reason| {
                RedisError::Setup(format!(
                    "{}: TLS setup: {reason}",
                    crate::source::redact(&self.url)
                ))
            })?;
            config.tls = Some(TlsConnector::from(tls).into());
        } else {
            if wants_files {
                return Err(RedisError::Setup(format!(
                    "{}: ca_file, cert_file and key_file need a rediss:// URL (TLS)",
                    crate::source::redact(&self.url)
                )));
            }
            let remote = remote_hosts(&config);
            if !remote.is_empty() {
                tracing::warn!(
                    host = %remote.join(","),
                    "Redis connection to {} is NOT encrypted: the password and every key cross \
                     the network in clear; use a rediss:// URL",
                    remote.join(",")
                );
            }
        }
        let db = match &config.server {
            ServerConfig::Clustered { .. } => 0,
            _ => config.database.unwrap_or(0),
        };
        let cluster = config.server.is_clustered();
        // Concurrent commands are pipelined on each connection (fred's default).
        let client = Builder::from_config(config).build().map_err(err)?;
        // A server that is loading its dataset refuses commands for a while: wait for it.
        let deadline = std::time::Instant::now() + LOADING_WAIT;
        loop {
            match client.init().await {
                Ok(_) => break,
                Err(e)
                    if e.details().contains("LOADING") && std::time::Instant::now() < deadline =>
                {
                    tracing::info!(url = %crate::source::redact(&self.url), "server is loading its dataset; waiting");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                Err(e) => return Err(err(e)),
            }
        }
        let primaries = if cluster {
            client
                .cached_cluster_state()
                .map(|s| s.unique_primary_nodes())
                .unwrap_or_default()
        } else {
            client.active_connections()
        };
        if primaries.is_empty() {
            return Err(RedisError::Setup(format!(
                "{}: no primary found{}",
                crate::source::redact(&self.url),
                if cluster { " in the cluster" } else { "" }
            )));
        }
        let info: String = client
            .with_cluster_node(primaries[0].clone())
            .info(Some(fred::types::InfoKind::Server))
            .await
            .map_err(err)?;
        let version = info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("unknown")
            .trim()
            .to_owned();
        Ok(Connection {
            client,
            primaries,
            cluster,
            version,
            db,
        })
    }
}

impl Connection {
    /// Whether the server answers `PEXPIRETIME` (Redis 7 and later): a key's expiry as an
    /// instant, not only as the time left.
    pub fn has_pexpiretime(&self) -> bool {
        self.version
            .split('.')
            .next()
            .and_then(|m| m.parse::<u32>().ok())
            .is_some_and(|major| major >= 7)
    }
}

/// The newest RDB format a server version reads (`RESTORE` refuses newer payloads).
pub fn max_rdb_version(server_version: &str) -> Option<u16> {
    let mut parts = server_version.split('.').map(|p| p.parse::<u32>().ok());
    let (major, minor) = (parts.next()??, parts.next().flatten().unwrap_or(0));
    Some(match (major, minor) {
        (0..=3, _) => 7,
        (4, _) => 8,
        (5 | 6, _) => 9,
        (7, 0) => 10,
        (7, 1..=3) => 11,
        (7, _) => 12,
        _ => 12,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn tls_files_come_out_of_the_url() {
        let (url, files) = split_tls_params(
            "rediss://:pw@cache:6380/2?ca_file=%2Fetc%2Fca.pem&cert_file=/c.pem&key_file=/k.pem",
        );
        assert_eq!(url, "rediss://:pw@cache:6380/2");
        assert_eq!(files.ca_file.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert_eq!(files.cert_file.as_deref(), Some(Path::new("/c.pem")));
        assert_eq!(files.key_file.as_deref(), Some(Path::new("/k.pem")));
        let (url, files) =
            split_tls_params("redis-sentinel://h:26379/0?sentinelServiceName=m&ca_file=/ca");
        assert_eq!(url, "redis-sentinel://h:26379/0?sentinelServiceName=m");
        assert_eq!(files.ca_file.as_deref(), Some(Path::new("/ca")));
    }

    #[test]
    fn plain_connections_to_remote_hosts_are_the_ones_warned_about() {
        let hosts = |url: &str| remote_hosts(&Config::from_url(url).unwrap());
        assert!(hosts("redis://127.0.0.1:6379").is_empty());
        assert!(hosts("redis://:pw@localhost:6379/2").is_empty());
        assert_eq!(
            hosts("redis://cache.example:6380"),
            vec!["cache.example:6380"]
        );
        assert_eq!(
            hosts("redis-cluster://127.0.0.1:7000?node=10.0.0.7:7001"),
            vec!["10.0.0.7:7001"]
        );
    }

    #[test]
    fn debug_hides_the_password() {
        let e = RedisEndpoint {
            url: "redis://:hunter2@cache:6379".into(),
            cluster: false,
        };
        assert!(!format!("{e:?}").contains("hunter2"));
    }

    #[tokio::test]
    async fn tls_files_need_rediss() {
        let e = RedisEndpoint {
            url: "redis://127.0.0.1:1?ca_file=/ca.pem".into(),
            cluster: false,
        };
        let err = e.connect().await.err().unwrap().to_string();
        assert!(err.contains("rediss://"), "{err}");
    }

    #[test]
    fn rdb_versions_by_server() {
        assert_eq!(max_rdb_version("6.2.14"), Some(9));
        assert_eq!(max_rdb_version("7.0.15"), Some(10));
        assert_eq!(max_rdb_version("7.2.4"), Some(11));
        assert_eq!(max_rdb_version("nonsense"), None);
    }
}
