//! Throw-away PostgreSQL clusters for tests: initdb on a free loopback port, as the `postgres`
//! user when the tests run as root (from `resilience-cli/tests/pg_support`, without the
//! repository and archiving). A missing Postgres installation fails the test, loudly.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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

/// The directory of the Postgres programs.
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

/// Gives `path` to the Postgres user.
pub fn chown(path: &Path) {
    if let Some((uid, gid)) = pg_user() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    }
}

/// A loopback port nobody listens on.
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

/// A running cluster in a directory of its own, stopped and removed when dropped.
pub struct Cluster {
    /// The directory holding the data directory, its log and socket.
    pub dir: tempfile::TempDir,
    /// The data directory.
    pub pgdata: PathBuf,
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
}

impl Cluster {
    /// A new cluster, started.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new().prefix("rpg").tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        chown(dir.path());
        let pgdata = dir.path().join("pgdata");
        let port = free_port();
        must(
            pg_command("initdb")
                .arg("-D")
                .arg(&pgdata)
                .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"])
                .output()
                .unwrap(),
            "initdb",
        );
        let conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = off\nshared_buffers = 32MB\nautovacuum = off\n",
            dir.path().display(),
        );
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(pgdata.join("postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(&mut f, conf.as_bytes()).unwrap();
        let log = dir.path().join("pgdata.log");
        must(
            pg_command("pg_ctl")
                .arg("-D")
                .arg(&pgdata)
                .arg("-l")
                .arg(&log)
                .args(["-w", "start"])
                .output()
                .unwrap(),
            &format!("pg_ctl start (log: {})", log.display()),
        );
        Cluster { dir, pgdata, port }
    }

    /// A DSN of the `postgres` database as the `postgres` role.
    pub fn dsn(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = pg_command("pg_ctl")
            .arg("-D")
            .arg(&self.pgdata)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}
