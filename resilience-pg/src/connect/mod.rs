//! Connecting to Postgres, with TLS as libpq does it.
//!
//! Every connection of this crate goes through [`connect`]. A DSN (`host=… port=… user=…` or a
//! `postgres://` URL) may carry libpq's TLS parameters:
//!
//! | parameter     | meaning |
//! |---------------|---------|
//! | `sslmode`     | `disable`; `prefer` (the default: TLS when the server offers it, certificate not checked); `require` (TLS or fail; the certificate is checked against `sslrootcert` when one is given, as libpq does); `verify-ca` (TLS, the server's certificate chains to `sslrootcert`); `verify-full` (as `verify-ca`, and the certificate names the host) |
//! | `sslrootcert` | PEM file of the CA(s) to trust; for `verify-*` it defaults to `~/.postgresql/root.crt`; `system` trusts the operating system's CAs |
//! | `sslcert`, `sslkey` | PEM client certificate (chain) and its private key, for `cert` authentication or `clientcert=verify-*` in `pg_hba.conf` |
//!
//! A connection to a host other than loopback that ends up without TLS logs a warning naming
//! the host. TLS is never attempted over a Unix socket (libpq ignores `sslmode` there too).
//!
//! ```no_run
//! # async fn demo() -> Result<(), resilience_pg::connect::ConnectError> {
//! let client = resilience_pg::connect::connect(
//!     "host=db.internal user=backup sslmode=verify-full sslrootcert=/etc/resilience/pg-ca.pem",
//! )
//! .await?;
//! # Ok(()) }
//! ```

mod dsn;
mod tls;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use resilience_core::net::is_loopback_host;
use tokio_postgres::config::{Host, SslMode as PgSslMode};
use tokio_postgres::{Client, Config};

pub use self::dsn::redact;
pub(crate) use self::dsn::Dsn;
use self::dsn::{strip_tls, TlsParams};
pub use self::tls::SslMode;

/// A connection that could not be made, naming the host (never the password).
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to Postgres at {host}: {reason}")]
pub struct ConnectError {
    /// The host(s) and port(s), or the socket directory; `?` when the DSN did not parse.
    pub host: String,
    /// What went wrong, and what to do about it when known.
    pub reason: String,
    /// The driver's error.
    #[source]
    pub source: Option<tokio_postgres::Error>,
}

/// A parsed DSN: the driver's settings plus the TLS ones the driver does not know.
#[derive(Clone)]
pub struct ConnectConfig {
    config: Config,
    ssl_mode: SslMode,
    root_cert: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    host: String,
}

impl std::fmt::Debug for ConnectConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectConfig")
            .field("host", &self.host)
            .field("user", &self.config.get_user())
            .field("dbname", &self.config.get_dbname())
            .field("ssl_mode", &self.ssl_mode)
            .field("root_cert", &self.root_cert)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .finish_non_exhaustive()
    }
}

fn expand_home(path: &str) -> PathBuf {
    match path.strip_prefix("~/") {
        Some(rest) => std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(rest))
            .unwrap_or_else(|| PathBuf::from(path)),
        None => PathBuf::from(path),
    }
}

impl ConnectConfig {
    /// Parses a key=value DSN or a `postgres://` URL with libpq's TLS parameters.
    pub fn parse(dsn: &str) -> Result<Self, ConnectError> {
        let invalid = |reason: String| ConnectError {
            host: "?".into(),
            reason: format!("invalid connection string: {reason}"),
            source: None,
        };
        let mut tls = TlsParams::default();
        let rest = strip_tls(dsn, &mut tls).map_err(invalid)?;
        let mut config: Config = rest
            .parse()
            .map_err(|e: tokio_postgres::Error| invalid(crate::error::describe(&e)))?;
        let ssl_mode = match tls.mode.as_deref() {
            None => SslMode::Prefer,
            Some(m) => SslMode::parse(m).ok_or_else(|| {
                invalid(format!(
                    "sslmode={m:?} is not supported (disable, prefer, require, verify-ca, verify-full)"
                ))
            })?,
        };
        let host = describe_hosts(&config);
        let mut root_cert = tls.root_cert.map(|p| expand_home(&p));
        if root_cert.is_none() && matches!(ssl_mode, SslMode::VerifyCa | SslMode::VerifyFull) {
            root_cert = Some(expand_home("~/.postgresql/root.crt"));
        }
        let (client_cert, client_key) = match (tls.cert, tls.key) {
            (Some(c), Some(k)) => (Some(expand_home(&c)), Some(expand_home(&k))),
            (None, None) => (None, None),
            _ => {
                return Err(ConnectError {
                    host,
                    reason: tls::CLIENT_CERT.unpaired(),
                    source: None,
                })
            }
        };
        let all_unix = !config.get_hosts().is_empty()
            && config.get_hostaddrs().is_empty()
            && config
                .get_hosts()
                .iter()
                .all(|h| !matches!(h, Host::Tcp(_)));
        config.ssl_mode(match ssl_mode {
            // libpq ignores sslmode on Unix sockets; the driver would fail `require` there.
            _ if all_unix => PgSslMode::Disable,
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
        });
        Ok(ConnectConfig {
            config,
            ssl_mode,
            root_cert,
            client_cert,
            client_key,
            host,
        })
    }

    /// The host(s) and port(s) (or socket directory) this connects to, for messages.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The TLS mode.
    pub fn ssl_mode(&self) -> SslMode {
        self.ssl_mode
    }

    /// The driver's configuration (TLS settings aside); its `Debug` hides the password.
    pub fn driver_config(&self) -> &Config {
        &self.config
    }

    /// The peers this connects to over TCP that are not loopback: a connection to them without
    /// TLS is warned about. The address connected to is `hostaddr` when given, else `host`.
    pub fn remote_peers(&self) -> Vec<String> {
        let hosts = self.config.get_hosts();
        let addrs = self.config.get_hostaddrs();
        (0..hosts.len().max(addrs.len()))
            .filter_map(|i| match (addrs.get(i), hosts.get(i)) {
                (Some(ip), _) => (!ip.is_loopback()).then(|| ip.to_string()),
                (None, Some(Host::Tcp(name))) => (!is_loopback_host(name)).then(|| name.clone()),
                _ => None,
            })
            .collect()
    }

    fn fail(&self, reason: impl Into<String>) -> ConnectError {
        ConnectError {
            host: self.host.clone(),
            reason: reason.into(),
            source: None,
        }
    }

    /// Connects, and drives the connection on the runtime.
    pub async fn connect(&self) -> Result<Client, ConnectError> {
        let used_tls = Arc::new(AtomicBool::new(false));
        let result = if self.ssl_mode == SslMode::Disable {
            self.config
                .connect(tokio_postgres::NoTls)
                .await
                .map(|(c, conn)| (c, drive(conn)))
        } else {
            let tls = self.tls_connector(used_tls.clone())?;
            self.config
                .connect(tls)
                .await
                .map(|(c, conn)| (c, drive(conn)))
        };
        let (client, ()) = result.map_err(|e| self.explain(e))?;
        if !used_tls.load(Ordering::Relaxed) {
            let remote = self.remote_peers();
            if !remote.is_empty() {
                tracing::warn!(
                    host = %remote.join(","),
                    sslmode = self.ssl_mode.as_str(),
                    "Postgres connection to {} is NOT encrypted: passwords and backup data cross \
                     the network in clear; set sslmode=verify-full and sslrootcert",
                    remote.join(",")
                );
            }
        }
        Ok(client)
    }

    /// The driver's error in words, with what to do for the usual TLS mistakes.
    fn explain(&self, e: tokio_postgres::Error) -> ConnectError {
        let text = crate::error::describe(&e);
        let root = self
            .root_cert
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let hint = if text.contains("UnknownIssuer")
            || text.contains("BadSignature")
            || text.contains("unknown issuer")
        {
            format!(
                " — the server's certificate is not signed by a CA in sslrootcert {root}: \
                 give the CA that signed it"
            )
        } else if text.contains("NotValidForName") || text.contains("not valid for name") {
            format!(
                " — the server's certificate does not name the host {} (sslmode=verify-full): \
                 connect by a name the certificate holds, or use sslmode=verify-ca",
                self.host
            )
        } else if text.contains("Expired") {
            " — the server's certificate has expired".into()
        } else if text.contains("server does not support TLS") {
            format!(
                " — the server has ssl = off but sslmode={} needs TLS",
                self.ssl_mode.as_str()
            )
        } else {
            String::new()
        };
        ConnectError {
            host: self.host.clone(),
            reason: format!("{text}{hint}"),
            source: Some(e),
        }
    }
}

fn drive<S, T>(conn: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %crate::error::describe(&e), "postgres connection ended");
        }
    });
}

fn describe_hosts(config: &Config) -> String {
    let ports = config.get_ports();
    let port = |i: usize| ports.get(i).or(ports.first()).copied().unwrap_or(5432);
    let hosts: Vec<String> = if config.get_hosts().is_empty() {
        config
            .get_hostaddrs()
            .iter()
            .enumerate()
            .map(|(i, ip)| format!("{ip}:{}", port(i)))
            .collect()
    } else {
        config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, h)| match h {
                Host::Tcp(name) => format!("{name}:{}", port(i)),
                Host::Unix(dir) => format!("{}/.s.PGSQL.{}", dir.display(), port(i)),
            })
            .collect()
    };
    if hosts.is_empty() {
        "localhost (default)".into()
    } else {
        hosts.join(",")
    }
}

/// Connects to the database a DSN names (see the module documentation for the TLS parameters)
/// and drives the connection on the runtime.
pub async fn connect(dsn: &str) -> Result<Client, ConnectError> {
    ConnectConfig::parse(dsn)?.connect().await
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn parsed(dsn: &str) -> ConnectConfig {
        ConnectConfig::parse(dsn).unwrap_or_else(|e| panic!("{dsn}: {e}"))
    }

    #[test]
    fn key_value_dsns_carry_the_tls_parameters() {
        let c = parsed(
            "host=db.example port=5433 user=backup password=secret sslmode=verify-full \
             sslrootcert=/etc/ca.pem sslcert=/c.pem sslkey=/k.pem",
        );
        assert_eq!(c.ssl_mode(), SslMode::VerifyFull);
        assert_eq!(c.root_cert.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert_eq!(c.client_cert.as_deref(), Some(Path::new("/c.pem")));
        assert_eq!(c.client_key.as_deref(), Some(Path::new("/k.pem")));
        assert_eq!(c.host(), "db.example:5433");
        assert_eq!(c.driver_config().get_ssl_mode(), PgSslMode::Require);
        assert_eq!(c.driver_config().get_user(), Some("backup"));
    }

    #[test]
    fn quoted_values_survive() {
        let c = parsed(
            r"host=h user=u password='a b\'c' dbname=x sslmode=verify-ca sslrootcert='/my dir/ca.pem'",
        );
        assert_eq!(c.driver_config().get_password(), Some(&b"a b'c"[..]));
        assert_eq!(c.root_cert.as_deref(), Some(Path::new("/my dir/ca.pem")));
        assert_eq!(c.ssl_mode(), SslMode::VerifyCa);
    }

    #[test]
    fn urls_carry_the_tls_parameters() {
        let c = parsed(
            "postgres://backup:s%40cret@db.example:5433/app?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x",
        );
        assert_eq!(c.ssl_mode(), SslMode::VerifyFull);
        assert_eq!(c.root_cert.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert_eq!(c.driver_config().get_password(), Some(&b"s@cret"[..]));
        assert_eq!(c.driver_config().get_application_name(), Some("x"));
        assert_eq!(c.host(), "db.example:5433");
    }

    #[test]
    fn defaults_and_refusals() {
        assert_eq!(parsed("host=h").ssl_mode(), SslMode::Prefer);
        assert!(ConnectConfig::parse("host=h sslmode=allow").is_err());
        assert!(ConnectConfig::parse("host=h sslcert=/c.pem").is_err());
        // Unix sockets: sslmode is ignored, as libpq does.
        let c = parsed("host=/run/postgresql sslmode=require");
        assert_eq!(c.driver_config().get_ssl_mode(), PgSslMode::Disable);
    }

    #[test]
    fn errors_never_show_the_password() {
        let err = ConnectConfig::parse("host=h password=hunter2 bogus=1").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = ConnectConfig::parse("postgres://u:hunter2@h/db?sslmode=nope").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let c = parsed("host=h password=hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn plain_connections_to_remote_peers_are_the_ones_warned_about() {
        assert!(parsed("host=127.0.0.1 port=5432").remote_peers().is_empty());
        assert!(parsed("host=localhost").remote_peers().is_empty());
        assert!(parsed("host=/run/postgresql").remote_peers().is_empty());
        assert!(parsed("host=db.example hostaddr=127.0.0.1")
            .remote_peers()
            .is_empty());
        assert_eq!(
            parsed("host=db.example,localhost").remote_peers(),
            vec!["db.example".to_owned()]
        );
        assert_eq!(
            parsed("postgres://u@10.1.2.3:5433/db").remote_peers(),
            vec!["10.1.2.3".to_owned()]
        );
    }
}
