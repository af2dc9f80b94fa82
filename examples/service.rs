//! Embedding resilience in a service: the service's own tokio runtime runs a scheduler with a
//! backup job (every 2 seconds here; `0 30 2 * * *` in a real one) and a verify job, and asks
//! the library for the health report it would serve on its own `/health` endpoint. On shutdown
//! the running jobs are told to stop, and an interrupted backup is recorded failed.
//!
//! `cargo run -p resilience-examples --example service`

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use resilience_core::health::{self, HealthContext, SourcePolicy};
use resilience_core::keys::KeyFileProvider;
use resilience_core::ops::backup::BackupOptions;
use resilience_core::ops::verify::VerifyOptions;
use resilience_core::repo::{InitOptions, Repository};
use resilience_core::source::fs::DirSource;
use resilience_core::time::schedule::JobSchedule;
use resilience_core::time::scheduler::{JobOutcome, ScheduledJob, Scheduler};
use resilience_core::time::stop::StopSignal;

/// Backs up the service's export directory.
struct Backup {
    repo: Repository,
    dir: std::path::PathBuf,
}

#[async_trait]
impl ScheduledJob for Backup {
    async fn run(&self, stop: StopSignal) -> JobOutcome {
        let options = BackupOptions {
            stop: Some(stop),
            ..Default::default()
        };
        let source = DirSource::new(&self.dir).with_id("exports");
        let report = self.repo.backup(&source, options).await?;
        Ok(format!("snapshot {}", report.record.id))
    }
}

/// Verifies the repository and records the result in the catalog.
struct Verify {
    repo: Repository,
}

#[async_trait]
impl ScheduledJob for Verify {
    async fn run(&self, _stop: StopSignal) -> JobOutcome {
        let report = self.repo.verify(VerifyOptions::default()).await?;
        self.repo.record_verification(&report).await?;
        if report.is_ok() {
            Ok("sound".into())
        } else {
            Err(format!("{} damaged object(s)", report.damaged.len()).into())
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let work = tempfile::tempdir()?;
    let exports = work.path().join("exports");
    std::fs::create_dir_all(&exports)?;
    std::fs::write(
        exports.join("jobs.json"),
        br#"[{"id": 1, "state": "done"}]"#,
    )?;
    let key = KeyFileProvider::generate(&work.path().join("repo.key"))?;
    let sink = resilience_objstore::open_sink_or_create(
        work.path().join("repo").to_str().expect("utf-8 path"),
    )?;
    let repo = Repository::init(sink, &key, InitOptions::default()).await?;

    let clock = repo.clock().clone();
    let scheduler = Scheduler::new(clock.clone())
        .job(
            JobSchedule::new("exports", "*/2 * * * * *", "Europe/Berlin")?,
            Arc::new(Backup {
                repo: repo.clone(),
                dir: exports.clone(),
            }),
        )
        .job(
            JobSchedule::new("verify", "*/3 * * * * *", "Europe/Berlin")?,
            Arc::new(Verify { repo: repo.clone() }),
        );
    let board = scheduler.board();
    let shutdown = StopSignal::new();
    let running = tokio::spawn(scheduler.run(shutdown.clone()));

    // The service's own work goes on; here it only waits for a few runs.
    tokio::time::sleep(Duration::from_secs(7)).await;

    let policies = [SourcePolicy {
        source: "exports".into(),
        rpo: chrono::Duration::minutes(5),
    }];
    let context = HealthContext {
        jobs: board.snapshot(),
        ..Default::default()
    };
    let report = health::report(&repo.catalog(), &policies, &context, clock.now()).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);

    shutdown.stop("service shutting down");
    running.await?;
    for (job, status) in board.snapshot() {
        println!(
            "{job}: {} succeeded, {} failed",
            status.successes, status.failures
        );
    }
    assert!(report.ok, "unhealthy: {:?}", report.breaches);
    Ok(())
}
