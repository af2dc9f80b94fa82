//! Throw-away PostgreSQL clusters for tests (feature `testing`): `initdb` on a free loopback
//! port, run as the `postgres` user when the tests run as root (Postgres refuses to run as root:
//! the server programs then run through `setpriv`). A missing Postgres installation fails the
//! test, loudly. For this crate's tests, the CLI's, and a service's own integration tests.
//!
//! ```no_run
//! use resilience_pg::testing::{ClusterOptions, TestCluster};
//! # async fn demo(dir: &std::path::Path) {
//! let cluster = TestCluster::init(&dir.join("pg"), &ClusterOptions::default());
//! cluster.start();
//! let client = cluster.client().await;
//! client.batch_execute("CREATE TABLE jobs (id int)").await.unwrap();
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    resilience_core::drill::free_loopback_port().expect("a free loopback port")
}

/// The uid and gid that run Postgres: `None` (ours) unless we are root, then the `postgres`
/// user's.
///
/// # Panics
/// When running as root on a machine without a `postgres` user.
pub fn pg_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .expect("running as root, the tests need a `postgres` user to run Postgres as");
    let f: Vec<&str> = line.split(':').collect();
    Some((
        f[2].parse().expect("uid in /etc/passwd"),
        f[3].parse().expect("gid in /etc/passwd"),
    ))
}

/// The directory of the server programs ([`crate::cluster::find_bindir`]).
///
/// # Panics
/// When it holds no `initdb`.
pub fn bindir() -> PathBuf {
    let dir = crate::cluster::find_bindir(None);
    assert!(
        dir.join("initdb").exists(),
        "no initdb in {} (install postgresql-15, or set PG_BIN)",
        dir.display()
    );
    dir
}

/// A command running the server program `program` as the Postgres user.
pub fn pg_command(program: &str) -> Command {
    as_pg_user(bindir().join(program))
}

/// A command running `program` as the Postgres user (through `setpriv` when running as root),
/// so that what it creates belongs to that user.
pub fn as_pg_user(program: impl AsRef<std::ffi::OsStr>) -> Command {
    match pg_user() {
        Some((uid, gid)) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg("--")
                .arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Gives `path` to the Postgres user (when running as root).
pub fn chown(path: &Path) {
    if let Some((uid, gid)) = pg_user() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

/// Gives `path` and everything under it to the Postgres user (when running as root).
pub fn chown_tree(path: &Path) {
    chown(path);
    if path.is_dir() {
        for e in std::fs::read_dir(path).expect("read_dir") {
            chown_tree(&e.expect("dir entry").path());
        }
    }
}

/// Asserts that `out` is a success, quoting its output otherwise.
pub fn must(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// How [`TestCluster::init`] makes a cluster.
#[derive(Clone, Debug, Default)]
pub struct ClusterOptions {
    /// `archive_command` (archiving is off without one).
    pub archive_command: Option<String>,
    /// `initdb --data-checksums`.
    pub data_checksums: bool,
    /// Where the server's Unix socket goes (default: the data directory's parent).
    pub socket_dir: Option<PathBuf>,
}

/// A cluster for a test: 1 MiB WAL segments, `trust` authentication for the `postgres` role,
/// `wal_level = replica`, `fsync = off`, listening on 127.0.0.1; stopped (immediate) when
/// dropped.
#[derive(Debug)]
pub struct TestCluster {
    /// The data directory.
    pub pgdata: PathBuf,
    /// The TCP port.
    pub port: u16,
    /// Appended to [`TestCluster::dsn`] (TLS parameters, say).
    pub dsn_params: String,
    /// The host [`TestCluster::dsn`] connects to (`127.0.0.1`).
    pub host: String,
}

impl TestCluster {
    /// Runs `initdb` in `pgdata` (which must not exist; its parent must be reachable by the
    /// Postgres user) and writes the settings; the cluster is not started.
    pub fn init(pgdata: &Path, options: &ClusterOptions) -> TestCluster {
        let port = free_port();
        must(
            pg_command("initdb")
                .arg("-D")
                .arg(pgdata)
                .args([
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--wal-segsize=1",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ])
                .args(options.data_checksums.then_some("--data-checksums"))
                .output()
                .expect("run initdb"),
            "initdb",
        );
        let socket_dir = options
            .socket_dir
            .clone()
            .unwrap_or_else(|| pgdata.parent().unwrap_or(Path::new("/tmp")).to_owned());
        let archive = match &options.archive_command {
            Some(command) => format!("archive_mode = on\narchive_command = '{command}'\n"),
            None => String::new(),
        };
        let conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             {archive}wal_level = replica\nfsync = off\nmax_wal_size = 64MB\n\
             shared_buffers = 32MB\nautovacuum = off\n",
            socket_dir.display(),
        );
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(pgdata.join("postgresql.conf"))
            .expect("open postgresql.conf");
        std::io::Write::write_all(&mut f, conf.as_bytes()).expect("write postgresql.conf");
        TestCluster {
            pgdata: pgdata.to_owned(),
            port,
            dsn_params: String::new(),
            host: "127.0.0.1".into(),
        }
    }

    /// Appends `settings` to `postgresql.conf` (before [`TestCluster::start`]).
    pub fn configure(&self, settings: &str) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.pgdata.join("postgresql.conf"))
            .expect("open postgresql.conf");
        std::io::Write::write_all(&mut f, format!("\n{settings}\n").as_bytes())
            .expect("write postgresql.conf");
    }

    /// A libpq key/value DSN for the `postgres` role and database.
    pub fn dsn(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres{}",
            self.host, self.port, self.dsn_params
        )
    }

    /// Where the server logs (beside the data directory).
    pub fn log_path(&self) -> PathBuf {
        self.pgdata.with_extension("log")
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&self) {
        let log = self.log_path();
        must(
            pg_command("pg_ctl")
                .arg("-D")
                .arg(&self.pgdata)
                .arg("-l")
                .arg(&log)
                .args(["-w", "start"])
                .output()
                .expect("run pg_ctl"),
            &format!("pg_ctl start (log: {})", log.display()),
        );
    }

    /// Stops the server (immediate shutdown), if it runs.
    pub fn stop(&self) {
        let _ = pg_command("pg_ctl")
            .arg("-D")
            .arg(&self.pgdata)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }

    /// A connection ([`crate::connect::connect`]).
    pub async fn client(&self) -> Client {
        crate::connect::connect(&self.dsn())
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.dsn()))
    }

    /// Switches to a new WAL segment and waits (up to 60 s) until the old one is archived;
    /// returns its name.
    pub async fn archive_now(&self) -> String {
        let c = self.client().await;
        let row = c
            .query_one(
                "SELECT pg_walfile_name(pg_current_wal_lsn()) FROM pg_switch_wal()",
                &[],
            )
            .await
            .expect("pg_switch_wal");
        let wanted: String = row.get(0);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let row = c
                .query_one(
                    "SELECT coalesce(last_archived_wal, ''), failed_count, \
                     coalesce(last_failed_wal, '') FROM pg_stat_archiver",
                    &[],
                )
                .await
                .expect("read pg_stat_archiver");
            let last: String = row.get(0);
            if last.len() >= 24 && last[..24] >= wanted[..] {
                return wanted;
            }
            let failed: i64 = row.get(1);
            assert!(
                Instant::now() < deadline,
                "segment {wanted} not archived within 60 s (last {last}, {failed} failures, last \
                 failed {}); see {}",
                row.get::<_, String>(2),
                self.log_path().display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.stop();
    }
}
