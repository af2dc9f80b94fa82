//! `failover --config FILE --to REGION [--dry-run]`: the plan of a failover to a region of the
//! config, read first or run (journaled in the region's repository, resumed when run again).

use std::path::Path;
use std::time::Duration;

use resilience_core::failover::{FailoverJournal, FailoverRecord, Plan};
use resilience_core::ops::restore::RestoreOptions;
use resilience_k8s::{ClusterRef, TrafficSwitch};
use resilience_pg::cluster;
use resilience_pg::failover::{
    CheckPrimary, FenceOldPrimary, PromoteStandby, RecoverFromRepository,
};
use resilience_pg::recovery::{RecoveryOptions, RecoveryTarget, StartOptions};
use resilience_redis::connect::RedisEndpoint;
use resilience_redis::failover::RestoreNewest;
use serde_json::json;

use crate::access;
use crate::cli::Global;
use crate::commands::pg::owner_name;
use crate::config::{DaemonConfig, RegionConfig};
use crate::output::outln;
use crate::output::print_json;
use crate::{wal_fetch, CliError};

/// Runs (or, with `dry_run`, prints) the failover to `to`.
pub async fn run(
    g: &Global,
    config_path: &Path,
    to: &str,
    dry_run: bool,
    drill_only: bool,
) -> Result<(), CliError> {
    let config = DaemonConfig::load(config_path).map_err(CliError::Usage)?;
    let region = config
        .regions
        .iter()
        .find(|r| r.name == to)
        .ok_or_else(|| {
            let names: Vec<&str> = config.regions.iter().map(|r| r.name.as_str()).collect();
            CliError::Usage(format!(
                "no [[region]] named {to:?} in {} (regions: {})",
                config_path.display(),
                names.join(", ")
            ))
        })?;
    if drill_only {
        let record = drill(&config, region, g.json).await?;
        report(g, &record, false);
        return if record.ok {
            Ok(())
        } else {
            Err(CliError::WithStatus {
                message: format!(
                    "the failover drill to region {} failed: {}",
                    region.name,
                    record.left.join(", ")
                ),
                status: 1,
            })
        };
    }
    let region_global = region_global(&config, region, g.json);
    let repo = access::open(&region_global).await?;
    let plan = plan(&config, region, &region_global, &repo)?;
    let journal = repo.failovers();
    if dry_run {
        let earlier = journal.unfinished(&region.name).await?;
        let done = |name: &str| {
            earlier
                .as_ref()
                .is_some_and(|r| r.steps.iter().any(|s| s.name == name && s.ok))
        };
        let steps: Vec<_> = plan
            .describe()
            .into_iter()
            .map(|(name, does)| json!({"name": name, "does": does, "done_earlier": done(&name)}))
            .collect();
        if g.json {
            print_json(&json!({
                "region": region.name,
                "dry_run": true,
                "resumes": earlier.as_ref().map(|r| r.id.clone()),
                "steps": steps,
            }));
        } else {
            outln!("failover to region {}:", region.name);
            if let Some(r) = &earlier {
                outln!(
                    "  (resumes failover {}, started {})",
                    r.id,
                    r.started_at.to_rfc3339()
                );
            }
            for (i, s) in steps.iter().enumerate() {
                outln!(
                    "  {}. {}{}: {}",
                    i + 1,
                    s["name"].as_str().unwrap_or_default(),
                    if s["done_earlier"] == true {
                        " (done earlier)"
                    } else {
                        ""
                    },
                    s["does"].as_str().unwrap_or_default()
                );
            }
        }
        return Ok(());
    }
    if let Some(newest) = journal.list().await?.into_iter().rev().find(|r| !r.drill) {
        if newest.region == region.name && newest.ok {
            // Done: running the plan again would restore Redis over the writes since.
            if !g.json {
                eprintln!(
                    "region {} is already the one failed over to (failover {}, finished {}): nothing to do",
                    region.name,
                    newest.id,
                    newest
                        .finished_at
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_default()
                );
            }
            report(g, &newest, true);
            return Ok(());
        }
    }
    let record = plan.run(&journal).await?;
    report(g, &record, false);
    if record.ok {
        Ok(())
    } else {
        Err(CliError::WithStatus {
            message: format!(
                "failover to region {} stopped at a failed step; left to do: {}. Fix it and run \
                 the same command again: it resumes (failover {})",
                record.region,
                record.left.join(", "),
                record.id
            ),
            status: 1,
        })
    }
}

/// Lists the failovers journaled in the repository.
pub async fn list(g: &Global) -> Result<(), CliError> {
    let repo = access::open(g).await?;
    let records = repo.failovers().list().await?;
    if g.json {
        print_json(&serde_json::to_value(&records).expect("records serialize"));
    } else {
        for r in &records {
            outln!(
                "{}  to {}  {}  RTO {}  RPO {}  ({} step(s){})",
                r.id,
                r.region,
                if r.ok { "done" } else { "UNFINISHED" },
                r.rto_seconds
                    .map(|s| format!("{s:.1} s"))
                    .unwrap_or_else(|| "-".into()),
                r.rpo_seconds
                    .map(|s| format!("{s:.1} s"))
                    .unwrap_or_else(|| "-".into()),
                r.steps.len(),
                if r.left.is_empty() {
                    String::new()
                } else {
                    format!("; left: {}", r.left.join(", "))
                }
            );
        }
    }
    Ok(())
}

fn report(g: &Global, record: &FailoverRecord, already: bool) {
    if g.json {
        print_json(&json!({
            "already_done": already,
            "drill": record.drill,
            "id": record.id,
            "region": record.region,
            "ok": record.ok,
            "rto_seconds": record.rto_seconds,
            "rpo_seconds": record.rpo_seconds,
            "steps": record.steps.iter().map(|s| json!({
                "name": s.name,
                "ok": s.ok,
                "seconds": s.seconds,
                "detail": s.detail,
                "earlier": s.earlier,
            })).collect::<Vec<_>>(),
            "left": record.left,
        }));
        return;
    }
    for s in &record.steps {
        eprintln!(
            "{} {} ({:.1} s{}): {}",
            if s.ok { "ok  " } else { "FAIL" },
            s.name,
            s.seconds,
            if s.earlier { ", by an earlier run" } else { "" },
            s.detail
        );
    }
    if record.ok {
        eprintln!("{}: done", record.summary());
    }
}

/// The Kubernetes step of a failover to `region`: the other regions' clusters are the old ones.
fn traffic_switch(
    config: &DaemonConfig,
    region: &RegionConfig,
    k8s: &crate::config::RegionKubernetes,
) -> TrafficSwitch {
    TrafficSwitch {
        kubeconfig: k8s.kubeconfig.clone(),
        from: config
            .regions
            .iter()
            .filter(|r| r.name != region.name)
            .filter_map(|r| r.kubernetes.as_ref())
            .map(|k| ClusterRef {
                context: k.context.clone(),
                namespace: k.namespace.clone(),
            })
            .collect(),
        to: ClusterRef {
            context: k8s.context.clone(),
            namespace: k8s.namespace.clone(),
        },
        deployment: k8s
            .deployment
            .clone()
            .unwrap_or_else(|| k8s.service.clone()),
        replicas: k8s.replicas.unwrap_or(1),
        service: k8s.service.clone(),
        region: region.name.clone(),
        timeout: Duration::from_secs(10),
    }
}

/// The global options that open `region`'s repository with the config's key.
fn region_global(config: &DaemonConfig, region: &RegionConfig, json: bool) -> Global {
    let mut g = crate::daemon::repository_options(config, json);
    g.repo = Some(region.repository.clone());
    g.cold_repo = None;
    g.append_only = false;
    g
}

/// The steps of a failover to `region`, in order.
fn plan(
    config: &DaemonConfig,
    region: &RegionConfig,
    region_global: &Global,
    repo: &resilience_core::repo::Repository,
) -> Result<Plan, CliError> {
    let mut plan = Plan::new(region.name.clone());
    let others: Vec<&RegionConfig> = config
        .regions
        .iter()
        .filter(|r| r.name != region.name)
        .collect();
    for old in &others {
        if let Some(dsn) = old.postgres.as_ref().and_then(|p| p.dsn.clone()) {
            plan = plan.step(FenceOldPrimary {
                region: old.name.clone(),
                dsn,
            });
        }
    }
    // The check of the new primary runs last, after the traffic switch.
    let mut check = None;
    if let Some(pg) = &region.postgres {
        let user = match &pg.user {
            Some(u) => u.clone(),
            None if pg.pgdata.exists() => owner_name(&pg.pgdata)?,
            None => "postgres".to_owned(),
        };
        check = Some(CheckPrimary {
            dsn: format!(
                "host=127.0.0.1 port={} user={user} dbname=postgres connect_timeout=10",
                pg.port
            ),
            queries: pg
                .checks
                .iter()
                .map(|c| (c.name.clone(), c.sql.clone()))
                .collect(),
        });
        let start = StartOptions {
            bindir: cluster::find_bindir(pg.pg_bin.as_deref()),
            port: pg.port,
            user,
            timeout: Duration::from_secs(pg.timeout.unwrap_or(600)),
        };
        let source = pg.source.clone().unwrap_or_else(|| "postgres".into());
        if pg.pgdata.join("PG_VERSION").exists() {
            plan = plan.step(PromoteStandby {
                pgdata: pg.pgdata.clone(),
                start,
            });
        } else {
            let options = RecoveryOptions {
                target: RecoveryTarget::Latest,
                action: Default::default(),
                restore_command: wal_fetch::restore_command(region_global, &source)?,
                target_timeline: "latest".into(),
                port: Some(pg.port),
                archive: true,
                restore: RestoreOptions::default(),
                tablespaces: Default::default(),
                resume: false,
                archive_command: Some(wal_fetch::archive_command(region_global, &source)?),
            };
            plan = plan.step(RecoverFromRepository {
                repo: repo.clone(),
                source,
                pgdata: pg.pgdata.clone(),
                options,
                start,
            });
        }
    }
    if let Some(redis) = &region.redis {
        plan = plan.step(RestoreNewest {
            repo: repo.clone(),
            source: redis.source.clone(),
            endpoint: RedisEndpoint {
                url: redis.url.clone(),
                cluster: false,
            },
        });
    }
    if let Some(k8s) = &region.kubernetes {
        plan = plan.step(traffic_switch(config, region, k8s));
    }
    if let Some(check) = check {
        plan = plan.step(check);
    }
    Ok(plan)
}

/// A failover drill to `region`: every Postgres and Redis source of the config drilled from the
/// region's repository into scratch copies (the newest backup restored, Postgres recovered to
/// the end of the replica's WAL, the source's checks run, the copy torn down), and the
/// region's Kubernetes objects read, never changed; journaled in the region's repository as a
/// drill (`resilience failovers`), with the RTO the steps add up to and the worst RPO.
/// Production is not touched: no standby is promoted, no server written to.
pub async fn drill(
    config: &DaemonConfig,
    region: &RegionConfig,
    json: bool,
) -> Result<FailoverRecord, CliError> {
    use resilience_core::drill::DrillOptions;
    use resilience_core::failover::StepReport;
    let started_at = chrono::Utc::now();
    let region_global = region_global(config, region, json);
    let repo = access::open(&region_global).await?;
    let mut steps = Vec::new();
    let mut rpo: Option<f64> = None;
    for source in config.sources.iter().filter(|s| {
        matches!(
            s.kind,
            crate::config::SourceKind::Postgres | crate::config::SourceKind::Redis
        )
    }) {
        let drill = crate::drill::library_drill(&region_global, source)?;
        let options = DrillOptions {
            scratch_dir: source.drill.scratch_dir.clone(),
        };
        let name = format!("drill {} {}", source.kind.as_str(), source.name);
        match resilience_core::drill::run(&repo, drill.as_ref(), None, &options).await {
            Ok(report) => {
                rpo = Some(rpo.unwrap_or(0.0).max(report.rpo_seconds));
                let failures = report.failures();
                steps.push(StepReport {
                    name,
                    ok: report.ok,
                    seconds: report.rto_seconds,
                    detail: if failures.is_empty() {
                        format!(
                            "snapshot {}: {} check(s) passed, RPO {:.1} s",
                            report.snapshot,
                            report.checks.len(),
                            report.rpo_seconds
                        )
                    } else {
                        format!("snapshot {}: {}", report.snapshot, failures.join("; "))
                    },
                    earlier: false,
                    recovered_to: None,
                });
            }
            Err(e) => steps.push(StepReport {
                name,
                ok: false,
                seconds: 0.0,
                detail: resilience_core::drill::error_chain(&e),
                earlier: false,
                recovered_to: None,
            }),
        }
    }
    if let Some(k8s) = &region.kubernetes {
        let began = std::time::Instant::now();
        let switch = traffic_switch(config, region, k8s);
        let (ok, detail) = match switch.check().await {
            Ok(seen) => (true, format!("read only: {}", seen.join("; "))),
            Err(e) => (false, e.to_string()),
        };
        steps.push(StepReport {
            name: "check kubernetes traffic switch".into(),
            ok,
            seconds: began.elapsed().as_secs_f64(),
            detail,
            earlier: false,
            recovered_to: None,
        });
    }
    let ok = !steps.is_empty() && steps.iter().all(|s| s.ok);
    let record = FailoverRecord {
        id: format!(
            "{}-{}-drill",
            started_at.format("%Y%m%dT%H%M%S%.3fZ"),
            region.name.replace('/', "_")
        ),
        revision: 1,
        region: region.name.clone(),
        started_at,
        finished_at: Some(chrono::Utc::now()),
        ok,
        rto_seconds: Some(steps.iter().map(|s| s.seconds).sum()),
        rpo_seconds: rpo,
        left: steps
            .iter()
            .filter(|s| !s.ok)
            .map(|s| s.name.clone())
            .collect(),
        steps,
        drill: true,
    };
    repo.failovers().save(&record).await?;
    Ok(record)
}
