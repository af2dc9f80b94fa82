//! The daemon's config mapped onto the library's ready-made jobs ([`resilience_core::jobs`]):
//! a backup per `[[source]]`, and the `[[job]]`s (verify, prune, replicate, drill).

use std::sync::Arc;

use resilience_core::drill::DrillOptions;
use resilience_core::health::ReplicationBoard;
use resilience_core::jobs::{BackupJob, DrillJob, PruneJob, ReplicateJob, VerifyJob};
use resilience_core::ops::follow::FollowOptions;
use resilience_core::repo::Repository;
use resilience_core::retention::StandardPolicy;
use resilience_core::source::fs::DirSource;
use resilience_core::source::Source;
use resilience_core::time::scheduler::ScheduledJob;
use resilience_objstore::bucket::BucketSource;
use resilience_objstore::rds::{
    delete_expired_snapshots, pending_deletions, rds_record, take_snapshot, RdsClient, RdsResource,
    RdsSource, SnapshotOptions,
};
use resilience_pg::base::PgBaseSource;
use resilience_redis::connect::RedisEndpoint;
use resilience_redis::source::RedisSource;

use crate::config::{DaemonConfig, JobConfig, JobKind, SourceConfig, SourceKind};
use crate::drill;
use crate::CliError;

/// The source a `[[source]]` describes, named by its `name`.
pub fn build_source(s: &SourceConfig) -> Result<Arc<dyn Source>, CliError> {
    let missing = |key: &str| CliError::Usage(format!("source {}: `{key}` is missing", s.name));
    Ok(match s.kind {
        SourceKind::Dir => Arc::new(
            DirSource::new(s.path.as_ref().ok_or_else(|| missing("path"))?).with_id(&s.name),
        ),
        SourceKind::Postgres => Arc::new(
            PgBaseSource::new(
                s.pgdata.as_ref().ok_or_else(|| missing("pgdata"))?,
                s.dsn.as_deref().ok_or_else(|| missing("dsn"))?,
            )
            .with_id(&s.name),
        ),
        SourceKind::Redis => Arc::new(
            RedisSource::new(RedisEndpoint {
                url: s.url.clone().ok_or_else(|| missing("url"))?,
                cluster: s.cluster,
            })
            .with_id(&s.name),
        ),
        SourceKind::Bucket => Arc::new(
            BucketSource::new(s.url.as_deref().ok_or_else(|| missing("url"))?).with_id(&s.name),
        ),
        SourceKind::Rds => Arc::new(rds_source(s)?),
    })
}

/// The RDS source a `[[source]] kind = "rds"` describes.
pub fn rds_source(s: &SourceConfig) -> Result<RdsSource, CliError> {
    let resource = match (&s.instance, &s.db_cluster) {
        (Some(i), None) => RdsResource::Instance(i.clone()),
        (None, Some(c)) => RdsResource::Cluster(c.clone()),
        _ => {
            return Err(CliError::Usage(format!(
                "source {}: kind rds needs `instance` or `db_cluster` (one of them)",
                s.name
            )))
        }
    };
    let client = RdsClient::from_env(s.region.as_deref())?;
    Ok(RdsSource::new(
        client,
        resource,
        SnapshotOptions {
            automated: s.automated,
            copy_to_region: s.copy_to_region.clone(),
            kms_key_id: s.kms_key_id.clone(),
            ..Default::default()
        },
    )
    .with_id(&s.name))
}

/// The scheduled snapshot of an RDS source ([`take_snapshot`]: a run that fails after AWS made
/// a snapshot records it in the failed backup).
struct RdsSnapshotJob {
    repo: Repository,
    source: RdsSource,
    labels: std::collections::BTreeMap<String, String>,
}

#[async_trait::async_trait]
impl ScheduledJob for RdsSnapshotJob {
    async fn run(
        &self,
        stop: resilience_core::time::stop::StopSignal,
    ) -> resilience_core::time::scheduler::JobOutcome {
        let report = take_snapshot(&self.repo, &self.source, self.labels.clone(), Some(stop))
            .await
            .map_err(resilience_core::sink::BoxError::from)?;
        let rds = rds_record(&report.record).map_err(resilience_core::sink::BoxError::from)?;
        Ok(format!(
            "snapshot {}: {}",
            report.record.id,
            crate::commands::rds::summary(&rds)
        ))
    }
}

/// A source's scheduled backup: its labels, its rate limit and the figures its drill checks.
pub fn backup_job(repo: &Repository, s: &SourceConfig) -> Result<Arc<dyn ScheduledJob>, CliError> {
    if s.kind == SourceKind::Rds {
        return Ok(Arc::new(RdsSnapshotJob {
            repo: repo.clone(),
            source: rds_source(s)?,
            labels: s.labels.clone(),
        }));
    }
    let mut job = BackupJob::new(repo.clone(), build_source(s)?).with_labels(s.labels.clone());
    if let Some(rate) = s.max_rate {
        job = job.with_max_rate(rate);
    }
    if let Some(figures) = drill::backup_figures(s)? {
        job = job.with_figures(figures);
    }
    Ok(Arc::new(job))
}

/// A `[[job]]`; replicate jobs post their lag to `replication`.
pub fn configured_job(
    repo: &Repository,
    config: &DaemonConfig,
    job: &JobConfig,
    replication: &Arc<ReplicationBoard>,
) -> Result<Arc<dyn ScheduledJob>, CliError> {
    Ok(match job.kind {
        JobKind::Verify => Arc::new(VerifyJob::new(repo.clone()).full(job.full)),
        JobKind::Prune => {
            let mut prune = PruneJob::new(repo.clone());
            for s in &config.sources {
                if let Some(rules) = &s.retention {
                    let policy = StandardPolicy {
                        default: rules.clone(),
                        ..Default::default()
                    };
                    prune = prune.with_policy(&s.name, Arc::new(policy));
                }
            }
            // The AWS snapshots of RDS backups the prune's retention expired go after it.
            if config.sources.iter().any(|s| s.kind == SourceKind::Rds) {
                Arc::new(PruneWithRds {
                    prune,
                    repo: repo.clone(),
                })
            } else {
                Arc::new(prune)
            }
        }
        JobKind::Replicate => {
            let to = job.to.as_deref().expect("validated: replicate has `to`");
            let replica = resilience_objstore::open_sink_or_create(to)?;
            let mut replicate =
                ReplicateJob::new(repo.clone(), replica).with_board(replication.clone());
            if let Some(rate) = job.max_rate {
                replicate = replicate.with_max_rate(rate);
            }
            if job.follow {
                let interval = job.interval.map_or(2, |i| i.as_secs().max(1) as u64);
                replicate = replicate.following(FollowOptions {
                    interval: std::time::Duration::from_secs(interval),
                    ..Default::default()
                });
            }
            Arc::new(replicate)
        }
        JobKind::Failover => Arc::new(FailoverDrillJob {
            config: config.clone(),
            region: job
                .region
                .clone()
                .expect("validated: failover has `region`"),
        }),
        JobKind::Drill => {
            let sources: Vec<&SourceConfig> = match &job.source {
                Some(name) => vec![config.source(name).map_err(CliError::Usage)?],
                None => config.sources.iter().collect(),
            };
            let global = super::repository_options(config, false);
            let mut drills = DrillJob::new(repo.clone());
            for s in sources {
                let options = DrillOptions {
                    scratch_dir: s.drill.scratch_dir.clone(),
                };
                drills = drills.with_drill(drill::library_drill(&global, s)?.into(), options);
            }
            Arc::new(drills)
        }
    })
}

/// A prune job followed by the deletion of the AWS snapshots of the RDS backups it expired
/// (and of any an earlier run left).
struct PruneWithRds {
    prune: PruneJob,
    repo: Repository,
}

#[async_trait::async_trait]
impl ScheduledJob for PruneWithRds {
    async fn run(
        &self,
        stop: resilience_core::time::stop::StopSignal,
    ) -> resilience_core::time::scheduler::JobOutcome {
        let line = self.prune.run(stop).await?;
        let pending = pending_deletions(&self.repo).await?;
        let Some((_, first)) = pending.first() else {
            return Ok(line);
        };
        let client = RdsClient::from_env(Some(&first.snapshot.region))?;
        let aws = delete_expired_snapshots(&self.repo, &client).await?;
        let line = format!(
            "{line}; RDS: {} snapshot(s) of expired backups deleted, {} already gone",
            aws.deleted.len(),
            aws.already_gone.len()
        );
        if aws.failed.is_empty() {
            Ok(line)
        } else {
            Err(format!(
                "{line}; {} not deleted: {}",
                aws.failed.len(),
                aws.failed
                    .iter()
                    .map(|(s, e)| format!("{} in {}: {e}", s.snapshot, s.region))
                    .collect::<Vec<_>>()
                    .join("; ")
            )
            .into())
        }
    }
}

/// A `[[job]] kind = "failover"`: the failover drill of a region
/// ([`crate::commands::failover::drill`]).
struct FailoverDrillJob {
    config: DaemonConfig,
    region: String,
}

#[async_trait::async_trait]
impl ScheduledJob for FailoverDrillJob {
    async fn run(
        &self,
        stop: resilience_core::time::stop::StopSignal,
    ) -> resilience_core::time::scheduler::JobOutcome {
        let region = self
            .config
            .regions
            .iter()
            .find(|r| r.name == self.region)
            .expect("validated: the region exists");
        let record = tokio::select! {
            r = crate::commands::failover::drill(&self.config, region, false) => r.map_err(|e| resilience_core::jobs::JobError::DrillFailed(e.to_string()))?,
            _ = stop.stopped() => return Err(resilience_core::jobs::JobError::Interrupted { job: "failover drill".into(), reason: stop.reason() }.into()),
        };
        let line = record.summary();
        if record.ok {
            Ok(line)
        } else {
            Err(resilience_core::jobs::JobError::DrillFailed(format!(
                "{line}; failed: {}",
                record.left.join(", ")
            ))
            .into())
        }
    }
}
