//! The jobs a daemon runs: a backup per source, and the `[[job]]`s (verify, prune, replicate,
//! drill). Each returns a one-line summary or the error, which the scheduler puts on its board.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use resilience_core::catalog::{Catalog, CatalogQuery};
use resilience_core::health::ReplicationHealth;
use resilience_core::ops::backup::BackupOptions;
use resilience_core::ops::prune::PruneOptions;
use resilience_core::ops::replicate::{replicate, ReplicateOptions};
use resilience_core::ops::verify::VerifyOptions;
use resilience_core::repo::Repository;
use resilience_core::retention::{self, StandardPolicy};
use resilience_core::sink::throttle::share_budget;
use resilience_core::source::fs::DirSource;
use resilience_core::source::Source;
use resilience_core::time::scheduler::{JobOutcome, ScheduledJob};
use resilience_core::time::stop::StopSignal;
use resilience_objstore::bucket::BucketSource;
use resilience_pg::base::PgBaseSource;
use resilience_redis::connect::RedisEndpoint;
use resilience_redis::source::RedisSource;

use crate::config::{DaemonConfig, JobConfig, JobKind, SourceConfig, SourceKind};
use crate::drill;
use crate::CliError;

/// What every job of one daemon shares.
pub struct Shared {
    /// The repository, opened once.
    pub repo: Repository,
    /// The configuration.
    pub config: DaemonConfig,
    /// The last lag each replicate job measured.
    pub replication: Mutex<BTreeMap<String, ReplicationHealth>>,
}

/// The source a `[[source]]` describes, named by its `name`.
pub fn build_source(s: &SourceConfig) -> Result<Box<dyn Source>, CliError> {
    let missing = |key: &str| CliError::Usage(format!("source {}: `{key}` is missing", s.name));
    Ok(match s.kind {
        SourceKind::Dir => Box::new(
            DirSource::new(s.path.as_ref().ok_or_else(|| missing("path"))?).with_id(&s.name),
        ),
        SourceKind::Postgres => Box::new(
            PgBaseSource::new(
                s.pgdata.as_ref().ok_or_else(|| missing("pgdata"))?,
                s.dsn.as_deref().ok_or_else(|| missing("dsn"))?,
            )
            .with_id(&s.name),
        ),
        SourceKind::Redis => Box::new(
            RedisSource::new(RedisEndpoint {
                url: s.url.clone().ok_or_else(|| missing("url"))?,
                cluster: s.cluster,
            })
            .with_id(&s.name),
        ),
        SourceKind::Bucket => Box::new(
            BucketSource::new(s.url.as_deref().ok_or_else(|| missing("url"))?).with_id(&s.name),
        ),
    })
}

/// Backs up one source, with its labels and the drill figures taken at backup time.
pub async fn back_up_source(
    repo: &Repository,
    s: &SourceConfig,
    stop: Option<StopSignal>,
) -> Result<resilience_core::ops::backup::BackupReport, CliError> {
    let source = build_source(s)?;
    let mut labels = s.labels.clone();
    labels.extend(drill::backup_figures(s).await?);
    let options = BackupOptions {
        labels,
        stop,
        ..Default::default()
    };
    let repo = match s.max_rate {
        Some(rate) => repo.throttled(rate),
        None => repo.clone(),
    };
    Ok(repo.backup(source.as_ref(), options).await?)
}

/// A source's scheduled backup.
pub struct BackupJob {
    /// Shared state.
    pub shared: Arc<Shared>,
    /// The source.
    pub source: SourceConfig,
}

#[async_trait]
impl ScheduledJob for BackupJob {
    async fn run(&self, stop: StopSignal) -> JobOutcome {
        let report = back_up_source(&self.shared.repo, &self.source, Some(stop)).await?;
        let r = &report.record;
        Ok(format!(
            "snapshot {}: {} entries, {} bytes read, {} new, {} stored",
            r.id, r.entries, r.logical_bytes, r.new_bytes, r.stored_bytes
        ))
    }
}

/// A `[[job]]`.
pub struct ConfiguredJob {
    /// Shared state.
    pub shared: Arc<Shared>,
    /// The job.
    pub job: JobConfig,
}

#[async_trait]
impl ScheduledJob for ConfiguredJob {
    async fn run(&self, stop: StopSignal) -> JobOutcome {
        let work = async {
            match self.job.kind {
                JobKind::Verify => self.verify().await,
                JobKind::Prune => self.prune().await,
                JobKind::Replicate => self.replicate().await,
                JobKind::Drill => self.drill().await,
            }
        };
        tokio::select! {
            r = work => r.map_err(Into::into),
            _ = stop.stopped() => Err(format!("{} interrupted: {}", self.job.job_name(), stop.reason()).into()),
        }
    }
}

impl ConfiguredJob {
    async fn verify(&self) -> Result<String, CliError> {
        let repo = &self.shared.repo;
        let report = repo
            .verify(VerifyOptions {
                full: self.job.full,
            })
            .await?;
        repo.record_verification(&report).await?;
        if report.is_ok() {
            Ok(format!(
                "{} verification of {} snapshot(s): sound",
                report.mode, report.snapshots_checked
            ))
        } else {
            let damaged: Vec<String> = report
                .damaged
                .iter()
                .map(|d| format!("{}: {}", d.object, d.problem))
                .collect();
            Err(CliError::WithStatus {
                message: format!(
                    "{} verification found {} damaged object(s): {}",
                    report.mode,
                    report.damaged.len(),
                    damaged.join("; ")
                ),
                status: 3,
            })
        }
    }

    async fn prune(&self) -> Result<String, CliError> {
        let repo = &self.shared.repo;
        let records = repo.catalog().list(&CatalogQuery::default()).await?;
        let now = repo.clock().now();
        let mut expired = 0;
        for s in &self.shared.config.sources {
            let Some(rules) = &s.retention else { continue };
            let policy = StandardPolicy {
                default: rules.clone(),
                ..Default::default()
            };
            let mine: Vec<_> = records
                .iter()
                .filter(|r| r.source.id == s.name)
                .cloned()
                .collect();
            let plan = retention::plan(&policy, &mine, now);
            expired += repo.forget(&plan).await?.expired.len();
        }
        let report = repo.prune(PruneOptions::default()).await?;
        Ok(format!(
            "expired {expired} backup(s); pruned {} pack(s), {} bytes freed",
            report.deleted_packs, report.freed_bytes
        ))
    }

    async fn replicate(&self) -> Result<String, CliError> {
        let to = self
            .job
            .to
            .as_deref()
            .expect("validated: replicate has `to`");
        let mut source = self.shared.repo.sink().clone();
        let mut replica = resilience_objstore::open_sink_or_create(to)?;
        if let Some(rate) = self.job.max_rate {
            (source, replica) = share_budget(source, replica, rate);
        }
        let report = replicate(
            source.as_ref(),
            replica.as_ref(),
            &ReplicateOptions::default(),
        )
        .await?;
        let lag = &report.lag_after;
        self.shared
            .replication
            .lock()
            .expect("lock poisoned")
            .insert(
                to.to_owned(),
                ReplicationHealth {
                    target: replica.location(),
                    at: self.shared.repo.clock().now(),
                    lag_snapshots: lag.snapshots,
                    lag_bytes: lag.bytes,
                    lag_seconds: lag.seconds as f64,
                },
            );
        Ok(format!(
            "copied {} object(s), {} bytes; lag {} snapshot(s)",
            report.copied_objects, report.copied_bytes, lag.snapshots
        ))
    }

    async fn drill(&self) -> Result<String, CliError> {
        let config = &self.shared.config;
        let sources: Vec<&SourceConfig> = match &self.job.source {
            Some(name) => vec![config.source(name).map_err(CliError::Usage)?],
            None => config.sources.iter().collect(),
        };
        let options = super::repository_options(config, false);
        let mut lines = Vec::new();
        let mut failed = Vec::new();
        for s in sources {
            let report = drill::run(&self.shared.repo, &options, s, None).await?;
            let line = format!(
                "{}: snapshot {} rto {:.1}s rpo {:.1}s",
                s.name, report.snapshot, report.rto_seconds, report.rpo_seconds
            );
            if report.ok {
                lines.push(line);
            } else {
                failed.push(format!("{line}: {}", report.failures().join("; ")));
            }
        }
        if failed.is_empty() {
            Ok(lines.join(", "))
        } else {
            Err(CliError::Usage(format!(
                "drill failed: {}",
                failed.join(", ")
            )))
        }
    }
}
