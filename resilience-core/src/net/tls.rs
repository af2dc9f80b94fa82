//! The TLS client plumbing of the adapters, on rustls with the ring provider (as object_store's
//! reqwest uses): PEM certificates and keys read from files, trust stores, and a client
//! configuration finished with or without a client certificate. The adapters choose the
//! verifier; the errors here name the file, and the caller adds the name of its setting.
//!
//! ```no_run
//! use std::path::Path;
//! use resilience_core::net::tls::{self, ClientCertNames};
//!
//! # fn demo() -> Result<(), String> {
//! let roots = tls::root_store(tls::read_certs(Path::new("/etc/ca.pem"))?)
//!     .map_err(|e| e.to_string())?;
//! let builder = tls::client_config(tls::crypto_provider())
//!     .map_err(|e| e.to_string())?
//!     .with_root_certificates(roots);
//! let names = ClientCertNames { cert: "cert_file", key: "key_file" };
//! let (cert, key) = (Path::new("/etc/c.pem"), Path::new("/etc/k.pem"));
//! let config = tls::with_client_cert(builder, Some(cert), Some(key), names)?;
//! # drop(config);
//! # Ok(()) }
//! ```

use std::path::Path;
use std::sync::Arc;

use rustls::client::WantsClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, ConfigBuilder, RootCertStore, WantsVerifier};

/// The crypto provider of every TLS connection the adapters make: ring.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration on `provider` with its safe default protocol versions, waiting for
/// its certificate verifier (or root certificates).
pub fn client_config(
    provider: Arc<CryptoProvider>,
) -> Result<ConfigBuilder<ClientConfig, WantsVerifier>, rustls::Error> {
    ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions()
}

/// Every PEM certificate of a file, in order; an error naming the file when it cannot be read
/// or holds none.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no PEM certificate in {}", path.display()));
    }
    Ok(certs)
}

/// The PEM private key of a file; an error naming the file when there is none.
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("cannot read a private key from {}: {e}", path.display()))
}

/// A trust store of `certs` (the CA certificates of [`read_certs`]); fails on the first one
/// rustls refuses.
pub fn root_store(certs: Vec<CertificateDer<'static>>) -> Result<RootCertStore, rustls::Error> {
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// A trust store of the operating system's CA certificates; those it cannot load or rustls
/// refuses are left out, so it may be empty.
pub fn native_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    roots
}

/// What a store's configuration calls a client certificate and its key (`sslcert` and
/// `sslkey`, `cert_file` and `key_file`, …), for messages.
#[derive(Clone, Copy, Debug)]
pub struct ClientCertNames {
    /// The setting of the PEM client certificate (chain).
    pub cert: &'static str,
    /// The setting of its PEM private key.
    pub key: &'static str,
}

impl ClientCertNames {
    /// The complaint about a certificate given without its key, or a key without its
    /// certificate.
    pub fn unpaired(&self) -> String {
        format!(
            "{} and {} go together: give both or neither",
            self.cert, self.key
        )
    }
}

/// Finishes a configuration: with the client certificate (chain) and private key of two PEM
/// files when both are given, without client authentication when neither is. An error names
/// the setting and the file.
pub fn with_client_cert(
    builder: ConfigBuilder<ClientConfig, WantsClientCert>,
    cert: Option<&Path>,
    key: Option<&Path>,
    names: ClientCertNames,
) -> Result<ClientConfig, String> {
    match (cert, key) {
        (Some(cert), Some(key)) => {
            let certs = read_certs(cert).map_err(|e| format!("{}: {e}", names.cert))?;
            let key = read_private_key(key).map_err(|e| format!("{}: {e}", names.key))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("{}/{}: {e}", names.cert, names.key))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err(names.unpaired()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: ClientCertNames = ClientCertNames {
        cert: "cert_file",
        key: "key_file",
    };

    fn builder() -> ConfigBuilder<ClientConfig, WantsClientCert> {
        client_config(crypto_provider())
            .unwrap()
            .with_root_certificates(RootCertStore::empty())
    }

    #[test]
    fn files_that_are_missing_or_hold_no_certificate_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = read_certs(&missing).unwrap_err();
        assert!(
            err.starts_with(&format!("cannot read {}: ", missing.display())),
            "{err}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        assert_eq!(
            read_certs(&empty).unwrap_err(),
            format!("no PEM certificate in {}", empty.display())
        );
        let err = read_private_key(&empty).unwrap_err();
        assert!(
            err.starts_with(&format!(
                "cannot read a private key from {}: ",
                empty.display()
            )),
            "{err}"
        );
    }

    #[test]
    fn client_certificates_come_in_pairs() {
        assert!(with_client_cert(builder(), None, None, NAMES).is_ok());
        let err = with_client_cert(builder(), Some(Path::new("/c.pem")), None, NAMES).unwrap_err();
        assert_eq!(
            err,
            "cert_file and key_file go together: give both or neither"
        );
        let err = with_client_cert(
            builder(),
            Some(Path::new("/nonexistent/c.pem")),
            Some(Path::new("/nonexistent/k.pem")),
            NAMES,
        )
        .unwrap_err();
        assert!(
            err.starts_with("cert_file: cannot read /nonexistent/c.pem: "),
            "{err}"
        );
    }
}
