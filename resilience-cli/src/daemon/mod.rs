//! `resilience daemon --config FILE`: the reference service. It runs every source's backups
//! and the configured jobs on their schedules, serves `/metrics` (Prometheus text) and
//! `/health` (JSON; 503 naming each breach) on a loopback address, posts alerts to a webhook,
//! and on SIGTERM or SIGINT stops the running jobs, so that an interrupted backup is recorded
//! failed, never succeeded.

mod jobs;
mod server;
mod standby;
mod webhook;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use resilience_core::catalog::{BackupStatus, Catalog, CatalogQuery};
use resilience_core::health::{AlertTracker, Monitor, ReplicationBoard, SourcePolicy};
use resilience_core::time::scheduler::Scheduler;
use resilience_core::time::stop::StopSignal;

use crate::cli::Global;
use crate::config::DaemonConfig;
use crate::CliError;

/// The global options that open the repository the config names.
pub fn repository_options(config: &DaemonConfig, json: bool) -> Global {
    let r = &config.repository;
    Global {
        repo: Some(r.url.clone()),
        password_file: r.password_file.clone(),
        key_file: r.key_file.clone(),
        json,
        kms_key_id: r.kms_key_id.clone(),
        vault_transit_key: r.vault_transit_key.clone(),
        append_only: r.append_only,
        cold_repo: r.cold_url.clone(),
        memory: resilience_core::ops::memory::DEFAULT_MEMORY,
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config_path: &Path) -> Result<(), CliError> {
    let config = DaemonConfig::load(config_path).map_err(CliError::Usage)?;
    let repo = config.repository.options().open().await?;
    let clock = repo.clock().clone();
    let started_at = clock.now();

    let replication = Arc::new(ReplicationBoard::default());
    let mut scheduler = Scheduler::new(clock.clone());
    for s in &config.sources {
        let schedule = s.timing().job_schedule(&s.name).map_err(CliError::Usage)?;
        scheduler = scheduler.job(schedule, jobs::backup_job(&repo, s)?);
    }
    for j in &config.jobs {
        let schedule = j
            .timing()
            .job_schedule(&j.job_name())
            .map_err(CliError::Usage)?;
        scheduler = scheduler.job(
            schedule,
            jobs::configured_job(&repo, &config, j, &replication)?,
        );
    }
    // Runs missed while the daemon was down: the last backup of each source, from the catalog.
    let records = repo.catalog().list(&CatalogQuery::default()).await?;
    let mut last_runs = HashMap::new();
    for r in records.iter().filter(|r| r.status != BackupStatus::Running) {
        let e = last_runs.entry(r.source.id.clone()).or_insert(r.started_at);
        *e = (*e).max(r.started_at);
    }
    let scheduler = scheduler.last_runs(last_runs);

    let policies: Vec<SourcePolicy> = config
        .sources
        .iter()
        .map(|s| SourcePolicy {
            source: s.name.clone(),
            rpo: s.rpo.to_chrono(),
        })
        .collect();
    let tracker = Arc::new(AlertTracker::default());
    let mut monitor = Monitor::new(
        Arc::new(repo.catalog()),
        clock.clone(),
        policies,
        scheduler.board(),
    )
    .with_replication(replication)
    .with_failovers(Arc::new(repo.failovers()))
    .since(started_at);
    if config.server.webhook.is_some() {
        monitor = monitor.with_observer(tracker.clone());
    }
    let monitor = Arc::new(monitor);

    let shutdown = StopSignal::new();
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| CliError::Usage(format!("cannot listen on {}: {e}", config.server.listen)))?;
    let address = listener
        .local_addr()
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let server = tokio::spawn(server::serve(listener, monitor.clone(), shutdown.clone()));
    let alerts = config.server.webhook.clone().map(|url| {
        tokio::spawn(webhook::watch(
            url,
            config.server.webhook_format,
            monitor.clone(),
            tracker.clone(),
            shutdown.clone(),
        ))
    });
    tracing::info!(%address, sources = config.sources.len(), jobs = config.jobs.len(), "daemon started");
    eprintln!(
        "resilience daemon: {} source(s), {} job(s); /metrics and /health on http://{address}",
        config.sources.len(),
        config.jobs.len()
    );
    let watchers: Vec<_> = config
        .standbys
        .iter()
        .map(|s| tokio::spawn(standby::watch(s.clone(), shutdown.clone())))
        .collect();
    let signals = tokio::spawn(crate::signals::stop_on_signal(shutdown.clone(), |name| {
        tracing::info!(signal = name, "shutting down");
        format!("daemon shutting down ({name})")
    }));
    scheduler.run(shutdown.clone()).await;
    signals.abort();
    if let Some(a) = alerts {
        let _ = a.await;
    }
    for w in watchers {
        let _ = w.await;
    }
    let _ = server.await;
    eprintln!("resilience daemon: stopped ({})", shutdown.reason());
    Ok(())
}
