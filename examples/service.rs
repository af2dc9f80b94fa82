//! A service that embeds resilience, with no `resilience` binary on the host: its own tokio
//! runtime runs the library's scheduler with ready-made jobs — a Postgres base backup, the
//! push of the WAL its cluster archives, a Redis backup, a verification and a Postgres restore
//! drill — and serves the health report on its own `/health` endpoint. On SIGTERM or Ctrl-C
//! the running jobs are told to stop, and an interrupted backup is recorded failed.
//!
//! ```text
//! cargo run -p resilience-examples --example service
//! ```
//!
//! Configured from the environment; with none of it set, it backs up a demo directory into a
//! temporary repository:
//! - `SERVICE_REPOSITORY` (a path or `s3://…` URL; created if missing) and `SERVICE_KEY_FILE`
//!   (generated with the repository when it does not exist).
//! - `SERVICE_PG_DSN`, `SERVICE_PGDATA` and `SERVICE_WAL_SPOOL`: the Postgres cluster to back
//!   up and drill. Its `archive_command` must put each WAL file into the spool directory
//!   completely before the file appears under its name (copy to `%f.part`, sync, rename); the
//!   service pushes every spooled file into the repository and then removes it.
//!   `SERVICE_DRILL_DIR` is where the drill's scratch copy goes (default: the temporary
//!   directory; the database user must be able to reach it).
//! - `SERVICE_REDIS_URL`: the Redis server to back up.
//! - `SERVICE_EVERY`: the backups' schedule (cron with seconds; default every 5 s, for the demo:
//!   a real service backs up nightly, `0 30 2 * * *`, and pushes WAL every few seconds).
//! - `SERVICE_LISTEN`: where `/health` is served (default `127.0.0.1:8087`).
//! - `SERVICE_RUN_FOR`: seconds to run before stopping by itself (default: until a signal).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use resilience_core::drill::DrillOptions;
use resilience_core::health::{Monitor, SourcePolicy};
use resilience_core::jobs::{BackupJob, DrillJob, VerifyJob};
use resilience_core::keys::KeyFileProvider;
use resilience_core::sink::BoxError;
use resilience_core::time::schedule::JobSchedule;
use resilience_core::time::scheduler::{JobOutcome, ScheduledJob, Scheduler};
use resilience_core::time::stop::StopSignal;
use resilience_core::{DirSource, InitOptions, Repository};
use resilience_objstore::{KeyOptions, RepositoryOptions};
use resilience_pg::archive::WalArchive;
use resilience_pg::base::PgBaseSource;
use resilience_pg::drill::{DrillQuery, PgDrill, QueryFigures, WalFetch};
use resilience_redis::connect::RedisEndpoint;
use resilience_redis::source::RedisSource;

/// The time zone the schedules are read in.
const ZONE: &str = "UTC";

/// How many seconds of backups a source may miss before `/health` reports it.
const RPO_SECONDS: i64 = 300;

/// The checks a drill of the Postgres copy compares with the figures taken at backup time.
fn drill_queries() -> Vec<DrillQuery> {
    vec![DrillQuery::at_least(
        "tables",
        "select count(*) from pg_catalog.pg_class where relkind = 'r'",
    )]
}

/// Pushes the WAL files the cluster's `archive_command` left in a spool directory into the
/// repository's WAL archive, oldest first, removing each once the repository holds it.
struct PushSpooledWal {
    archive: WalArchive,
    spool: PathBuf,
}

#[async_trait]
impl ScheduledJob for PushSpooledWal {
    async fn run(&self, _stop: StopSignal) -> JobOutcome {
        let mut names: Vec<String> = std::fs::read_dir(&self.spool)?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| !name.ends_with(".part"))
            .collect();
        names.sort();
        for name in &names {
            let path = self.spool.join(name);
            let content = std::fs::read(&path)?;
            self.archive.push(name, content.into()).await?;
            std::fs::remove_file(&path)?;
        }
        Ok(format!("{} WAL file(s) pushed", names.len()))
    }
}

/// The repository: opened when it exists, created (with a new key file) when it does not.
async fn repository(location: &str, key_file: &Path) -> Result<Repository, BoxError> {
    let options = RepositoryOptions {
        key: KeyOptions {
            key_file: Some(key_file.to_owned()),
            ..Default::default()
        },
        ..RepositoryOptions::new(location)
    };
    if key_file.exists() {
        return Ok(options.open().await?);
    }
    KeyFileProvider::generate(key_file)?;
    Ok(options.init(InitOptions::default()).await?)
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let demo = tempfile::tempdir()?;
    let (location, key_file) = match env("SERVICE_REPOSITORY") {
        Some(location) => {
            let key = env("SERVICE_KEY_FILE").ok_or("SERVICE_KEY_FILE is not set")?;
            (location, PathBuf::from(key))
        }
        None => (
            demo.path().join("repo").display().to_string(),
            demo.path().join("repo.key"),
        ),
    };
    let repo = repository(&location, &key_file).await?;
    let every = env("SERVICE_EVERY").unwrap_or_else(|| "*/5 * * * * *".into());

    let mut scheduler = Scheduler::new(repo.clock().clone());
    let mut backups: Vec<(&str, BackupJob)> = Vec::new();

    if let (Some(dsn), Some(pgdata), Some(spool)) = (
        env("SERVICE_PG_DSN"),
        env("SERVICE_PGDATA"),
        env("SERVICE_WAL_SPOOL"),
    ) {
        let source = Arc::new(PgBaseSource::new(&pgdata, &dsn).with_id("postgres"));
        let figures = Arc::new(QueryFigures::new(&dsn, drill_queries()));
        let job = BackupJob::new(repo.clone(), source).with_figures(figures);
        backups.push(("postgres", job));
        let push = PushSpooledWal {
            archive: WalArchive::new(&repo, "postgres")?,
            spool: spool.into(),
        };
        scheduler = scheduler.job(
            JobSchedule::new("wal", "* * * * * *", ZONE)?,
            Arc::new(push),
        );
        // The copy fetches its WAL through the library: no `restore_command` binary needed.
        let drill = PgDrill::new("postgres", WalFetch::Prefetch)
            .with_dsn(&dsn)
            .with_queries(drill_queries());
        let options = DrillOptions {
            scratch_dir: env("SERVICE_DRILL_DIR").map(PathBuf::from),
        };
        let drills = DrillJob::new(repo.clone()).with_drill(Arc::new(drill), options);
        scheduler = scheduler.job(
            JobSchedule::new("drill", "*/15 * * * * *", ZONE)?,
            Arc::new(drills),
        );
    }
    if let Some(url) = env("SERVICE_REDIS_URL") {
        let endpoint = RedisEndpoint {
            url,
            cluster: false,
        };
        let source = Arc::new(RedisSource::new(endpoint).with_id("redis"));
        backups.push(("redis", BackupJob::new(repo.clone(), source)));
    }
    if backups.is_empty() {
        let exports = demo.path().join("exports");
        std::fs::create_dir_all(&exports)?;
        std::fs::write(
            exports.join("jobs.json"),
            br#"[{"id": 1, "state": "done"}]"#,
        )?;
        let source = Arc::new(DirSource::new(&exports).with_id("exports"));
        backups.push(("exports", BackupJob::new(repo.clone(), source)));
    }
    let mut policies = Vec::new();
    for (name, job) in backups {
        policies.push(SourcePolicy {
            source: name.into(),
            rpo: chrono::Duration::seconds(RPO_SECONDS),
        });
        scheduler = scheduler.job(JobSchedule::new(name, &every, ZONE)?, Arc::new(job));
    }
    scheduler = scheduler.job(
        JobSchedule::new("verify", "*/7 * * * * *", ZONE)?,
        Arc::new(VerifyJob::new(repo.clone())),
    );

    let monitor = Monitor::new(
        Arc::new(repo.catalog()),
        repo.clock().clone(),
        policies,
        scheduler.board(),
    )
    .since(repo.clock().now());
    let shutdown = StopSignal::new();
    let listen = env("SERVICE_LISTEN").unwrap_or_else(|| "127.0.0.1:8087".into());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    let app = Router::new()
        .route("/health", get(health))
        .with_state(Arc::new(monitor));
    let stop = shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.stopped().await })
            .await
    });
    println!("serving /health on http://{listen}");

    let running = tokio::spawn(scheduler.run(shutdown.clone()));
    let run_for = env("SERVICE_RUN_FOR")
        .map(|s| s.parse::<u64>())
        .transpose()?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = sigterm() => {}
        _ = tokio::time::sleep(Duration::from_secs(run_for.unwrap_or(u64::MAX / 4))) => {}
    }
    shutdown.stop("service shutting down");
    running.await?;
    server.await??;
    println!("stopped");
    Ok(())
}

/// `/health`: 200 with the report when every source is healthy, 503 otherwise.
async fn health(State(monitor): State<Arc<Monitor>>) -> (StatusCode, Json<serde_json::Value>) {
    let (ok, body) = monitor.health_document().await;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

async fn sigterm() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            term.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}
