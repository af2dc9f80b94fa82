//! Drill of a Redis keyspace backup: a scratch `redis-server` on a free loopback port (no
//! persistence, its directory in the scratch directory), the snapshot restored into it, the
//! key count compared with the snapshot's, and every `sample_every`-th key's payload and
//! expiry compared with the snapshot ([`CompareTarget`]). The server is killed afterwards.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use resilience_core::catalog::BackupRecord;
use resilience_core::drill::DrillCheck;
use resilience_core::ops::restore::RestoreOptions;
use resilience_core::repo::Repository;
use resilience_redis::connect::{Connection, RedisEndpoint};
use resilience_redis::target::{RedisTarget, RestoreSettings};
use resilience_redis::verify::CompareTarget;
use tokio::process::{Child, Command};

use super::{chain, free_port, restore_check, Drilled};
use crate::config::SourceConfig;

/// `RESTORE`s in flight at once into the scratch server.
const PIPELINE: usize = 64;

/// How long the scratch server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A scratch server, killed when dropped.
struct ScratchServer {
    child: Child,
    url: String,
}

impl ScratchServer {
    /// Kills the server and waits until it is gone.
    async fn stop(mut self) {
        if let Err(e) = self.child.kill().await {
            tracing::warn!(url = %self.url, error = %e, "cannot kill the scratch redis-server");
        }
    }
}

impl Drop for ScratchServer {
    fn drop(&mut self) {
        // kill_on_drop reaps it; start_kill makes the intent explicit and immediate.
        let _ = self.child.start_kill();
    }
}

async fn start_server(scratch: &Path, db: u64) -> Result<ScratchServer, String> {
    let dir = scratch.join("redis");
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let port = free_port().map_err(|e| e.to_string())?;
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            format!("cannot start redis-server (is it installed and on the PATH?): {e}")
        })?;
    let deadline = Instant::now() + START_TIMEOUT;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "the scratch redis-server on port {port} exited ({status}) before accepting connections"
            ));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the scratch redis-server on port {port} did not accept connections within {START_TIMEOUT:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(ScratchServer {
        child,
        url: format!("redis://127.0.0.1:{port}/{db}"),
    })
}

async fn connect(url: &str) -> Result<Connection, String> {
    RedisEndpoint {
        url: url.to_owned(),
        cluster: false,
    }
    .connect()
    .await
    .map_err(|e| chain(&e))
}

/// Restores `record` into a scratch server and checks it.
pub(crate) async fn drill(
    repo: &Repository,
    source: &SourceConfig,
    record: &BackupRecord,
    scratch: &Path,
) -> Drilled {
    let db = record
        .source_metadata
        .get("db")
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    let server = match start_server(scratch, db).await {
        Ok(s) => s,
        Err(e) => return Drilled::new(vec![DrillCheck::fail("scratch-server", e)], None),
    };
    let mut checks = vec![DrillCheck::pass(
        "scratch-server",
        format!(
            "redis-server started on {}",
            server.url.trim_start_matches("redis://")
        ),
    )];
    checks.extend(check(repo, source, record, &server.url).await);
    let drilled = Drilled::new(checks, None);
    server.stop().await;
    drilled
}

async fn check(
    repo: &Repository,
    source: &SourceConfig,
    record: &BackupRecord,
    url: &str,
) -> Vec<DrillCheck> {
    let conn = match connect(url).await {
        Ok(c) => c,
        Err(e) => return vec![DrillCheck::fail("scratch-server", e)],
    };
    let target = RedisTarget::new(
        conn,
        RestoreSettings {
            pipeline: PIPELINE,
            ..Default::default()
        },
    );
    let result = repo
        .restore(&record.id, &target, RestoreOptions::default())
        .await;
    let tally = target.tally();
    let mut checks = vec![restore_check(&result)];
    if result.is_err() {
        return checks;
    }
    if tally.refused_count > 0 {
        let named: Vec<String> = tally
            .refused
            .iter()
            .take(5)
            .map(|r| format!("{}: {}", r.key, r.reason))
            .collect();
        checks.push(DrillCheck::fail(
            "keys-restored",
            format!(
                "{} key(s) refused by the scratch server: {}",
                tally.refused_count,
                named.join("; ")
            ),
        ));
    } else {
        checks.push(DrillCheck::pass(
            "keys-restored",
            format!(
                "{} keys restored, {} expired since the backup (not restored)",
                tally.restored, tally.expired
            ),
        ));
    }
    let conn = match connect(url).await {
        Ok(c) => c,
        Err(e) => {
            checks.push(DrillCheck::fail("key-count", e));
            return checks;
        }
    };
    let sample_every = source.drill.sample_every.unwrap_or(1);
    let compare = CompareTarget::new(conn, sample_every, None);
    if let Err(e) = repo
        .restore(&record.id, &compare, RestoreOptions::default())
        .await
    {
        checks.push(DrillCheck::fail("payloads", chain(&e)));
        return checks;
    }
    let c = compare.result();
    let backed_up = record
        .source_metadata
        .get("keys")
        .and_then(|v| v.as_u64())
        .map(|k| format!(" ({k} at backup time)"))
        .unwrap_or_default();
    let detail = format!(
        "the scratch server holds {} keys, the snapshot {} unexpired{backed_up}",
        c.server_keys, c.snapshot_keys
    );
    checks.push(if c.server_keys == c.snapshot_keys {
        DrillCheck::pass("key-count", detail)
    } else {
        DrillCheck::fail("key-count", detail)
    });
    let every = match sample_every {
        1 => "every key".to_owned(),
        n => format!("1 key in {n}"),
    };
    let detail = format!(
        "{} keys checked ({every}): {} missing, {} differing, {} with another expiry",
        c.checked,
        c.missing.len(),
        c.differing.len(),
        c.expiry_differs.len()
    );
    checks.push(if c.is_ok() && (c.checked > 0 || c.snapshot_keys == 0) {
        DrillCheck::pass("payloads", detail)
    } else {
        let named: Vec<&String> = c
            .missing
            .iter()
            .chain(&c.differing)
            .chain(&c.expiry_differs)
            .take(5)
            .collect();
        DrillCheck::fail("payloads", format!("{detail}; first: {named:?}"))
    });
    checks
}
