//! The scratch cluster of a Postgres drill: settings that keep it to itself, the connection
//! that checks it, and its tear-down.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use resilience_core::drill::{DrillCheck, ScratchCopy};
use tokio_postgres::{Client, NoTls};

use crate::cluster;
use crate::error::PgError;

/// The scratch cluster listens on loopback only, without a Unix socket (the original's socket
/// directory may be in use), and the scratch directory lets its owner reach the data
/// directory.
pub(super) fn scratch_settings(scratch: &Path, pgdata: &Path) -> Result<(), PgError> {
    let conf = pgdata.join("postgresql.auto.conf");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&conf)
        .map_err(PgError::io("open", conf.display()))?;
    writeln!(
        f,
        "# resilience drill: a scratch copy\nlisten_addresses = '127.0.0.1'\n\
         unix_socket_directories = ''"
    )
    .map_err(PgError::io("write", conf.display()))?;
    cluster::chown_like(scratch, pgdata)
}

/// The name of the user owning `dir` (the restored data directory's owner is its bootstrap
/// superuser, unless the DSN says otherwise).
pub(super) fn owner_name(dir: &Path) -> Result<String, PgError> {
    let uid = std::fs::metadata(dir)
        .map_err(PgError::io("stat", dir.display()))?
        .uid();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_owned())
        })
        .ok_or_else(|| {
            PgError::Setup(format!(
                "no user name for uid {uid}, the owner of {}: give the drill a DSN naming the user",
                dir.display()
            ))
        })
}

async fn connect(config: &tokio_postgres::Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "drill connection ended");
        }
    });
    Ok(client)
}

/// Connects to the copy on `port` as `user`, into the original DSN's database with its
/// password; checks it is out of recovery and returns the client and the last commit replayed.
pub(super) async fn connect_to_copy(
    original: Option<&tokio_postgres::Config>,
    port: u16,
    user: &str,
    checks: &mut Vec<DrillCheck>,
) -> Option<(Client, Option<DateTime<Utc>>)> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .dbname(original.and_then(|c| c.get_dbname()).unwrap_or("postgres"))
        .connect_timeout(Duration::from_secs(10));
    if let Some(p) = original.and_then(|c| c.get_password()) {
        config.password(p);
    }
    let client = match connect(&config).await {
        Ok(c) => c,
        Err(e) => {
            checks.push(DrillCheck::fail(
                "connect",
                format!(
                    "the copy on 127.0.0.1:{port} refuses connections: {}",
                    crate::describe(&e)
                ),
            ));
            return None;
        }
    };
    let newest = match client
        .query_one(
            "SELECT pg_is_in_recovery(), pg_last_xact_replay_timestamp()",
            &[],
        )
        .await
    {
        Ok(row) if !row.get::<_, bool>(0) => {
            checks.push(DrillCheck::pass(
                "connect",
                format!("accepts connections on 127.0.0.1:{port}, out of recovery (read-write)"),
            ));
            row.get(1)
        }
        Ok(_) => {
            checks.push(DrillCheck::fail(
                "connect",
                "the copy is still in recovery (not promoted)",
            ));
            None
        }
        Err(e) => {
            checks.push(DrillCheck::fail(
                "connect",
                format!("query failed: {}", crate::describe(&e)),
            ));
            None
        }
    };
    Some((client, newest))
}

/// The scratch cluster, stopped (`pg_ctl stop -m immediate`: nothing of it is kept) when the
/// drill is measured.
pub(super) struct ScratchCluster {
    pub pgdata: PathBuf,
    pub bindir: PathBuf,
}

#[async_trait]
impl ScratchCopy for ScratchCluster {
    async fn tear_down(self: Box<Self>) {
        if !self.pgdata.join("postmaster.pid").exists() {
            return;
        }
        let stopped = match cluster::command_as_owner(&self.bindir, "pg_ctl", &self.pgdata) {
            Ok(mut cmd) => {
                cmd.arg("stop")
                    .arg("-D")
                    .arg(&self.pgdata)
                    .args(["-m", "immediate", "-w"]);
                cluster::run(cmd, "pg_ctl stop").await.map(|_| ())
            }
            Err(e) => Err(e),
        };
        if let Err(e) = stopped {
            tracing::error!(pgdata = %self.pgdata.display(), error = %e, "cannot stop the drill's scratch cluster");
        }
    }
}
