//! Throw-away PostgreSQL clusters for tests: initdb on a free loopback port, as the `postgres`
//! user when the tests run as root, archiving into a repository with the built
//! `resilience wal-push`. A missing Postgres installation fails the test, loudly.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_postgres::Client;

pub const BIN: &str = env!("CARGO_BIN_EXE_resilience");

/// The uid and gid that run Postgres: ours, or `postgres` when we are root.
pub fn pg_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .expect("running as root, the tests need a `postgres` user to run Postgres as");
    let f: Vec<&str> = line.split(':').collect();
    Some((f[2].parse().unwrap(), f[3].parse().unwrap()))
}

pub fn bindir() -> PathBuf {
    let dir = resilience_pg::cluster::find_bindir(None);
    assert!(
        dir.join("initdb").exists(),
        "no initdb in {} (install postgresql-15, or set PG_BIN)",
        dir.display()
    );
    dir
}

/// Runs a Postgres program as the Postgres user.
pub fn pg_command(program: &str) -> Command {
    let path = bindir().join(program);
    match pg_user() {
        Some((uid, gid)) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg("--")
                .arg(path);
            c
        }
        None => Command::new(path),
    }
}

pub fn chown(path: &Path) {
    if let Some((uid, gid)) = pg_user() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn must(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

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
        format!(
            "{BIN} --repo {} --key-file {} wal-push --source {} %p",
            self.repo().display(),
            self.key_file().display(),
            self.source
        )
    }

    /// A new cluster (1 MiB WAL segments, archiving into the lab), started.
    pub async fn cluster(&self, name: &str) -> Cluster {
        self.cluster_with(name, None, false).await
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

    async fn cluster_with(
        &self,
        name: &str,
        pki: Option<&crate::tls_support::Pki>,
        data_checksums: bool,
    ) -> Cluster {
        let pgdata = self.path(name);
        let port = free_port();
        must(
            pg_command("initdb")
                .arg("-D")
                .arg(&pgdata)
                .args([
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--wal-segsize=1",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ])
                .args(data_checksums.then_some("--data-checksums"))
                .output()
                .unwrap(),
            "initdb",
        );
        let conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             archive_mode = on\narchive_command = '{}'\nwal_level = replica\nfsync = off\n\
             max_wal_size = 64MB\nshared_buffers = 32MB\n\
             autovacuum = off\n",
            self.dir.path().display(),
            self.archive_command()
        );
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(pgdata.join("postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(&mut f, conf.as_bytes()).unwrap();
        let mut dsn_params = String::new();
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
            std::io::Write::write_all(
                &mut f,
                b"ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n\
                  ssl_ca_file = 'root.crt'\n",
            )
            .unwrap();
            std::fs::write(
                pgdata.join("pg_hba.conf"),
                "local all all trust\n\
                 hostssl all tlsuser 127.0.0.1/32 cert\n\
                 hostssl all all 127.0.0.1/32 trust\n\
                 hostnossl all all 0.0.0.0/0 reject\n",
            )
            .unwrap();
            dsn_params = format!(" sslmode=verify-full sslrootcert={}", pki.ca().display());
        }
        let cluster = Cluster {
            pgdata,
            port,
            dsn_params,
            host: "127.0.0.1".into(),
        };
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

pub fn chown_tree(p: &Path) {
    chown(p);
    if p.is_dir() {
        for e in std::fs::read_dir(p).unwrap() {
            chown_tree(&e.unwrap().path());
        }
    }
}

/// A running (or stopped) cluster.
pub struct Cluster {
    pub pgdata: PathBuf,
    pub port: u16,
    /// Appended to `dsn()` (the TLS parameters of a TLS cluster).
    pub dsn_params: String,
    /// The host name `dsn()` connects to (`127.0.0.1`; `localhost` for verify-full).
    pub host: String,
}

impl Cluster {
    pub fn dsn(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres{}",
            self.host, self.port, self.dsn_params
        )
    }

    pub fn start(&self) {
        let log = self.pgdata.with_extension("log");
        must(
            pg_command("pg_ctl")
                .arg("-D")
                .arg(&self.pgdata)
                .arg("-l")
                .arg(&log)
                .args(["-w", "start"])
                .output()
                .unwrap(),
            &format!("pg_ctl start (log: {})", log.display()),
        );
    }

    pub fn stop(&self) {
        let _ = pg_command("pg_ctl")
            .arg("-D")
            .arg(&self.pgdata)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }

    pub async fn client(&self) -> Client {
        resilience_pg::connect::connect(&self.dsn())
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.dsn()))
    }

    /// Switches to a new WAL segment and waits until the old one is archived.
    pub async fn archive_now(&self) -> String {
        let c = self.client().await;
        let row = c
            .query_one(
                "SELECT pg_walfile_name(pg_current_wal_lsn()) FROM pg_switch_wal()",
                &[],
            )
            .await
            .unwrap();
        let wanted: String = row.get(0);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let row = c
                .query_one(
                    "SELECT coalesce(last_archived_wal, ''), failed_count, coalesce(last_failed_wal, '') FROM pg_stat_archiver",
                    &[],
                )
                .await
                .unwrap();
            let last: String = row.get(0);
            if last.len() >= 24 && last[..24] >= wanted[..] {
                return wanted;
            }
            let failed: i64 = row.get(1);
            assert!(
                Instant::now() < deadline,
                "segment {wanted} not archived within 60 s (last {last}, {failed} failures, last failed {}); see {}",
                row.get::<_, String>(2),
                self.pgdata.with_extension("log").display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
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
