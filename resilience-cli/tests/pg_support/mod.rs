//! Throw-away PostgreSQL clusters for tests: initdb on a free loopback port, as the `postgres`
//! user when the tests run as root, archiving into a repository with the built
//! `resilience wal-push`. A missing Postgres installation fails the test, loudly.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;
use tokio_postgres::Client;

pub const BIN: &str = env!("CARGO_BIN_EXE_resilience");

pub use resilience_pg::testing::{
    chown, chown_tree, free_port, must, ClusterOptions, TestCluster as Cluster,
};

/// A test's directory: the repository, its key file and clusters, owned by the Postgres user.
pub struct Lab {
    pub dir: tempfile::TempDir,
    pub source: String,
}

impl Lab {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("rpg").tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        chown(dir.path());
        let lab = Lab {
            dir,
            source: "main".into(),
        };
        lab.ok(&["init", "--key-file", lab.key_file().to_str().unwrap()]);
        for p in [lab.key_file(), lab.repo()] {
            chown_tree(&p);
        }
        lab
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn repo(&self) -> PathBuf {
        self.path("repo")
    }

    pub fn key_file(&self) -> PathBuf {
        self.path("repo.key")
    }

    /// The CLI with this lab's repository and key file.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--repo")
            .arg(self.repo())
            .arg("--key-file")
            .arg(self.key_file())
            .args(args)
            .env_remove("RESILIENCE_REPOSITORY")
            .env_remove("RESILIENCE_PASSWORD");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = must(self.run(args), &format!("resilience {args:?}"));
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    /// The archive_command for clusters of this lab.
    pub fn archive_command(&self) -> String {
        self.archive_command_with("")
    }

    /// The archive_command for clusters of this lab, with `flags` after `wal-push`.
    pub fn archive_command_with(&self, flags: &str) -> String {
        format!(
            "{BIN} --repo {} --key-file {} wal-push {flags} --source {} %p",
            self.repo().display(),
            self.key_file().display(),
            self.source
        )
    }

    /// A new cluster (1 MiB WAL segments, archiving into the lab), started.
    pub async fn cluster(&self, name: &str) -> Cluster {
        self.cluster_with(name, None, false).await
    }

    /// A new cluster like [`Lab::cluster`], whose archive_command is `archive_command`.
    pub async fn cluster_archiving(&self, name: &str, archive_command: String) -> Cluster {
        let cluster = Cluster::init(&self.path(name), &self.options(archive_command, false));
        cluster.start();
        cluster
    }

    /// A new cluster like [`Lab::cluster`], made by `initdb --data-checksums`.
    pub async fn checksummed_cluster(&self, name: &str) -> Cluster {
        self.cluster_with(name, None, true).await
    }

    /// A new cluster that accepts only TLS on its TCP listener (`ssl = on`, the server
    /// certificate of `pki`, `hostnossl … reject`): the `postgres` role by `trust`, the role
    /// `tlsuser` only by a client certificate (`cert` authentication); its `dsn()` connects with
    /// `sslmode=verify-full` and the PKI's CA.
    pub async fn tls_cluster(&self, name: &str, pki: &crate::tls_support::Pki) -> Cluster {
        self.cluster_with(name, Some(pki), false).await
    }

    fn options(&self, archive_command: String, data_checksums: bool) -> ClusterOptions {
        ClusterOptions {
            archive_command: Some(archive_command),
            data_checksums,
            socket_dir: Some(self.dir.path().to_owned()),
        }
    }

    async fn cluster_with(
        &self,
        name: &str,
        pki: Option<&crate::tls_support::Pki>,
        data_checksums: bool,
    ) -> Cluster {
        let options = self.options(self.archive_command(), data_checksums);
        let mut cluster = Cluster::init(&self.path(name), &options);
        let pgdata = cluster.pgdata.clone();
        if let Some(pki) = pki {
            // In the data directory, so that a restored copy has them too.
            for (from, to) in [
                (pki.server_cert(), "server.crt"),
                (pki.server_key(), "server.key"),
                (pki.ca(), "root.crt"),
            ] {
                let dest = pgdata.join(to);
                std::fs::copy(from, &dest).unwrap();
                std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600)).unwrap();
                chown(&dest);
            }
            cluster.configure(
                "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n\
                 ssl_ca_file = 'root.crt'",
            );
            std::fs::write(
                pgdata.join("pg_hba.conf"),
                "local all all trust\n\
                 hostssl all tlsuser 127.0.0.1/32 cert\n\
                 hostssl all all 127.0.0.1/32 trust\n\
                 hostnossl all all 0.0.0.0/0 reject\n",
            )
            .unwrap();
            cluster.dsn_params = format!(" sslmode=verify-full sslrootcert={}", pki.ca().display());
        }
        cluster.start();
        cluster
    }

    /// `pg restore` into a new directory, started on a new port; returns the cluster and the
    /// command's JSON.
    pub fn restore(&self, name: &str, target: &[&str]) -> (Cluster, Value) {
        self.restore_with(name, target, true)
    }

    /// `pg restore … --start`, as a drill (`--no-archive`) or as a real recovery that keeps
    /// archiving into the lab's repository.
    pub fn restore_with(&self, name: &str, target: &[&str], drill: bool) -> (Cluster, Value) {
        let pgdata = self.path(name);
        let port = free_port();
        let mut args = vec![
            "pg",
            "restore",
            "--source",
            &self.source,
            "--pgdata",
            pgdata.to_str().unwrap(),
            "--start",
            "--timeout",
            "120",
        ];
        let port_s = port.to_string();
        args.extend_from_slice(&["--port", &port_s]);
        args.extend_from_slice(target);
        if drill {
            args.push("--no-archive");
        }
        let doc = self.json(&args);
        (
            Cluster {
                pgdata,
                port,
                dsn_params: String::new(),
                host: "127.0.0.1".into(),
            },
            doc,
        )
    }

    pub fn base_backup(&self, cluster: &Cluster) -> Value {
        self.json(&[
            "pg",
            "backup",
            "--source",
            &self.source,
            "--pgdata",
            cluster.pgdata.to_str().unwrap(),
            "--dsn",
            &cluster.dsn(),
        ])
    }

    /// The object holding an archived WAL file.
    pub fn wal_object(&self, name: &str) -> PathBuf {
        self.repo().join("wal").join(&self.source).join(name)
    }
}

/// A checksum of a table's rows, in key order (NULL when the table does not exist).
pub async fn table_sum(c: &Client, table: &str) -> Option<String> {
    let exists: bool = c
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .unwrap()
        .get(0);
    if !exists {
        return None;
    }
    let row = c
        .query_one(
            &format!("SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY id), '')) || ':' || count(*) FROM {table} t"),
            &[],
        )
        .await
        .unwrap();
    Some(row.get(0))
}
