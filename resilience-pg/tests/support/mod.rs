//! Throw-away PostgreSQL clusters for the adapter's tests: initdb on a free loopback port, as
//! the `postgres` user when the tests run as root (Postgres refuses to run as root: the
//! programs run through `setpriv`), archiving WAL into a spool directory from which
//! [`Lab::push_wal`] pushes it into the lab's in-memory repository. A missing Postgres
//! installation fails the test, loudly.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use resilience_core::keys::KeyFileProvider;
use resilience_core::repo::{InitOptions, Repository};
use resilience_core::sink::MemorySink;
use resilience_pg::archive::WalArchive;
use tokio_postgres::Client;

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

pub fn chown_tree(p: &Path) {
    chown(p);
    if p.is_dir() {
        for e in std::fs::read_dir(p).unwrap() {
            chown_tree(&e.unwrap().path());
        }
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

/// A test's directory (owned by the Postgres user), an in-memory repository, and the spool
/// directory the clusters archive into.
pub struct Lab {
    pub dir: tempfile::TempDir,
    pub repo: Repository,
    /// The WAL source name.
    pub source: String,
}

impl Lab {
    pub async fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("rpgd").tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        chown(dir.path());
        let repo = Repository::init(
            Arc::new(MemorySink::new()),
            &KeyFileProvider::from_key([9; 32]),
            InitOptions::default(),
        )
        .await
        .unwrap();
        let lab = Lab {
            dir,
            repo,
            source: "main".into(),
        };
        std::fs::create_dir(lab.spool()).unwrap();
        chown(&lab.spool());
        lab
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Where clusters archive WAL (`archive_command` copies there).
    pub fn spool(&self) -> PathBuf {
        self.path("spool")
    }

    /// A directory the Postgres user can reach (scratch directories of drills).
    pub fn pg_dir(&self, name: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::create_dir(&p).unwrap();
        chown(&p);
        p
    }

    /// Pushes every spooled WAL file into the repository's archive; returns how many.
    pub async fn push_wal(&self) -> usize {
        let archive = WalArchive::new(&self.repo, &self.source).unwrap();
        let mut n = 0;
        let mut names: Vec<_> = std::fs::read_dir(self.spool())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        for name in names {
            let content = std::fs::read(self.spool().join(&name)).unwrap();
            archive
                .push(&name, content.into())
                .await
                .unwrap_or_else(|e| panic!("push {name}: {e}"));
            n += 1;
        }
        n
    }

    /// A new cluster (1 MiB WAL segments, archiving into the spool), started.
    pub async fn cluster(&self, name: &str) -> Cluster {
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
                .output()
                .unwrap(),
            "initdb",
        );
        let conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             archive_mode = on\narchive_command = 'test ! -f {spool}/%f && cp %p {spool}/%f'\n\
             wal_level = replica\nfsync = off\nmax_wal_size = 64MB\nshared_buffers = 32MB\n\
             autovacuum = off\n",
            self.dir.path().display(),
            spool = self.spool().display()
        );
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(pgdata.join("postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(&mut f, conf.as_bytes()).unwrap();
        let cluster = Cluster { pgdata, port };
        cluster.start();
        cluster
    }
}

/// A running (or stopped) cluster, stopped when dropped.
pub struct Cluster {
    pub pgdata: PathBuf,
    pub port: u16,
}

impl Cluster {
    pub fn dsn(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
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

    /// Switches to a new WAL segment and waits until the old one is archived into the spool.
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
                    "SELECT coalesce(last_archived_wal, ''), failed_count FROM pg_stat_archiver",
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
                "segment {wanted} not archived within 60 s (last {last}, {failed} failures); see {}",
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
