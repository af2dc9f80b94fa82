//! The drill of a Redis keyspace backup ([`RedisDrill`]): a scratch `redis-server` on a free
//! loopback port (no persistence, its directory in the scratch directory), the snapshot
//! restored into it, the key count compared with the snapshot's, and every `sample_every`-th
//! key's payload and expiry compared with the snapshot ([`CompareTarget`]). The server is killed
//! once the drill is measured.
//!
//! ```no_run
//! use resilience_core::drill::{self, DrillOptions};
//! use resilience_redis::drill::RedisDrill;
//! # async fn demo(repo: resilience_core::repo::Repository) -> Result<(), resilience_core::drill::DrillError> {
//! let report = drill::run(&repo, &RedisDrill::new("cache").with_sample_every(10), None,
//!     &DrillOptions::default()).await?;
//! assert!(report.ok, "{:?}", report.failures());
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use resilience_core::catalog::BackupRecord;
use resilience_core::drill::{
    error_chain, free_loopback_port, restore_check, Drill, DrillCheck, Drilled, ScratchCopy,
};
use resilience_core::ops::restore::RestoreOptions;
use resilience_core::repo::Repository;
use tokio::process::{Child, Command};

use crate::connect::{Connection, RedisEndpoint};
use crate::target::{RedisTarget, RestoreSettings};
use crate::verify::CompareTarget;

/// `RESTORE`s in flight at once into the scratch server, unless told otherwise.
pub const DEFAULT_PIPELINE: usize = 64;

/// How long the scratch server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The drill of a Redis source's keyspace backups: restore into a scratch `redis-server`, then
/// compare its key count and (a sample of) its payloads and expiries with the snapshot.
#[derive(Clone, Debug)]
pub struct RedisDrill {
    source: String,
    sample_every: u64,
    server_program: PathBuf,
    pipeline: usize,
}

impl RedisDrill {
    /// The drill of the Redis source `source` (its id in the catalog): every key compared,
    /// `redis-server` from the `PATH`.
    pub fn new(source: impl Into<String>) -> Self {
        RedisDrill {
            source: source.into(),
            sample_every: 1,
            server_program: PathBuf::from("redis-server"),
            pipeline: DEFAULT_PIPELINE,
        }
    }

    /// Compares every `n`-th key's payload and expiry (1, the default: every key; 0 counts as
    /// 1).
    pub fn with_sample_every(mut self, n: u64) -> Self {
        self.sample_every = n.max(1);
        self
    }

    /// The `redis-server` program to start (default: `redis-server` from the `PATH`).
    pub fn with_server_program(mut self, program: impl Into<PathBuf>) -> Self {
        self.server_program = program.into();
        self
    }

    /// `RESTORE`s in flight at once into the scratch server (default [`DEFAULT_PIPELINE`]).
    pub fn with_pipeline(mut self, pipeline: usize) -> Self {
        self.pipeline = pipeline.max(1);
        self
    }

    async fn start_server(&self, scratch: &Path, db: u64) -> Result<ScratchServer, String> {
        let dir = scratch.join("redis");
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let port = free_loopback_port()
            .map_err(|e| format!("no free loopback port for the scratch copy: {e}"))?;
        let mut child = Command::new(&self.server_program)
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
                format!(
                    "cannot start {} (is it installed and on the PATH?): {e}",
                    self.server_program.display()
                )
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

    async fn check(&self, repo: &Repository, record: &BackupRecord, url: &str) -> Vec<DrillCheck> {
        let conn = match connect(url).await {
            Ok(c) => c,
            Err(e) => return vec![DrillCheck::fail("scratch-server", e)],
        };
        let target = RedisTarget::new(
            conn,
            RestoreSettings {
                pipeline: self.pipeline,
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
        let compare = CompareTarget::new(conn, self.sample_every, None);
        if let Err(e) = repo
            .restore(&record.id, &compare, RestoreOptions::default())
            .await
        {
            checks.push(DrillCheck::fail("payloads", error_chain(&e)));
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
        let every = match self.sample_every {
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
}

#[async_trait]
impl Drill for RedisDrill {
    fn source(&self) -> &str {
        &self.source
    }

    fn kind(&self) -> &str {
        "redis"
    }

    async fn restore_and_check(
        &self,
        repo: &Repository,
        record: &BackupRecord,
        scratch: &Path,
    ) -> Drilled {
        let db = record
            .source_metadata
            .get("db")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        let server = match self.start_server(scratch, db).await {
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
        checks.extend(self.check(repo, record, &server.url).await);
        Drilled::new(checks, None).with_running(Box::new(server))
    }
}

/// A scratch server, killed when torn down (or dropped).
struct ScratchServer {
    child: Child,
    url: String,
}

#[async_trait]
impl ScratchCopy for ScratchServer {
    async fn tear_down(mut self: Box<Self>) {
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

async fn connect(url: &str) -> Result<Connection, String> {
    RedisEndpoint {
        url: url.to_owned(),
        cluster: false,
    }
    .connect()
    .await
    .map_err(|e| error_chain(&e))
}
