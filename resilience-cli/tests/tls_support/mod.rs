//! A throw-away PKI for TLS tests, made with the `openssl` command: a CA, a server certificate
//! for `localhost` and 127.0.0.1, client certificates, and an unrelated CA (the "wrong CA").
//! A missing `openssl` fails the test, loudly (`scripts/test` installs it).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The files of a test PKI, in one directory.
pub struct Pki {
    dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("the `openssl` command must be installed (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const EC: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];

impl Pki {
    /// Makes the CA, the server certificate (`localhost`, 127.0.0.1) and the wrong CA in `dir`.
    pub fn new(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let pki = Pki {
            dir: dir.to_owned(),
        };
        for ca in ["ca", "wrong-ca"] {
            let mut args = vec!["req", "-x509", "-nodes"];
            args.extend(EC);
            let subj = format!("/CN=resilience test {ca}");
            let key = format!("{ca}.key");
            let crt = format!("{ca}.crt");
            args.extend(["-keyout", &key, "-out", &crt, "-days", "3", "-subj", &subj]);
            openssl(dir, &args);
        }
        pki.issue(
            "server",
            "localhost",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        );
        pki
    }

    /// Issues a certificate signed by the CA: `NAME.crt` and `NAME.key`.
    fn issue(&self, name: &str, common_name: &str, extensions: &str) {
        let ext = format!("{name}.ext");
        std::fs::write(
            self.dir.join(&ext),
            format!("basicConstraints=CA:FALSE\n{extensions}"),
        )
        .unwrap();
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let crt = format!("{name}.crt");
        let subj = format!("/CN={common_name}");
        let mut args = vec!["req", "-new", "-nodes"];
        args.extend(EC);
        args.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(&self.dir, &args);
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "3",
                "-extfile",
                &ext,
            ],
        );
    }

    /// Issues a client certificate whose common name is `user` (Postgres `cert` authentication
    /// maps it to the role of that name); returns (certificate, key).
    pub fn client(&self, user: &str) -> (PathBuf, PathBuf) {
        let name = format!("client-{user}");
        self.issue(&name, user, "extendedKeyUsage=clientAuth\n");
        (
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
        )
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// A CA that signed nothing here.
    pub fn wrong_ca(&self) -> PathBuf {
        self.dir.join("wrong-ca.crt")
    }

    /// The server certificate.
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.crt")
    }

    /// The server certificate's key.
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
}
