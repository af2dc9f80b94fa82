//! `replicate --to URL [--follow]`: the repository's objects into a replica, proven, with the
//! lag; once, or pass after pass until stopped.

use std::sync::Arc;
use std::time::Duration;

use resilience_core::ops::follow::{FollowOptions, FollowPass};
use resilience_core::ops::replicate::{replicate, ReplicateOptions};
use resilience_core::retention::RetentionDuration;
use resilience_core::sink::throttle::share_budget;
use resilience_core::sink::Sink;
use resilience_core::time::stop::StopSignal;
use serde_json::json;

use crate::access;
use crate::cli::Global;
use crate::output::{bytes, print_json, print_json_line};
use crate::CliError;

/// The repository and its replica.
type SourceAndReplica = (Arc<dyn Sink>, Arc<dyn Sink>);

/// The repository and the replica, sharing one rate budget when `max_rate` is given.
fn sinks(g: &Global, to: &str, max_rate: Option<u64>) -> Result<SourceAndReplica, CliError> {
    let source = access::sink(g, access::repo_url(g)?, false)?;
    let replica = resilience_objstore::open_sink_or_create(to)?;
    Ok(match max_rate {
        // One budget for both directions: reads of the source and writes to the replica.
        Some(rate) => share_budget(source, replica, rate),
        None => (source, replica),
    })
}

/// Replicates the repository to `to`.
pub async fn run(
    g: &Global,
    to: &str,
    max_rate: Option<u64>,
    options: &ReplicateOptions,
) -> Result<(), CliError> {
    let dry_run = options.dry_run;
    let (source, replica) = sinks(g, to, max_rate)?;
    let report = replicate(source.as_ref(), replica.as_ref() as &dyn Sink, options).await?;
    let lag = &report.lag_after;
    if g.json {
        print_json(&json!({
            "copied_objects": report.copied_objects,
            "copied_bytes": report.copied_bytes,
            "read_back_objects": report.read_back_objects,
            "present_objects": report.present_objects,
            "lag_snapshots": lag.snapshots,
            "lag_bytes": lag.bytes,
            "lag_objects": lag.objects,
            "lag_seconds": lag.seconds,
            "duration_ms": report.duration.as_millis() as u64,
            "dry_run": dry_run,
        }));
    } else {
        eprintln!(
            "{} objects ({}) copied and proven in {:.1?} ({} read back); {} already there. Lag: {} snapshot(s), {} in {} object(s), oldest {} s",
            report.copied_objects,
            bytes(report.copied_bytes),
            report.duration,
            report.read_back_objects,
            report.present_objects,
            lag.snapshots,
            bytes(lag.bytes),
            lag.objects,
            lag.seconds
        );
    }
    Ok(())
}

/// Follows the repository into `to` until SIGINT or SIGTERM.
pub async fn follow(
    g: &Global,
    to: &str,
    max_rate: Option<u64>,
    options: &ReplicateOptions,
    interval: &str,
) -> Result<(), CliError> {
    let interval: RetentionDuration = interval
        .parse()
        .map_err(|e| CliError::Usage(format!("--interval: {e}")))?;
    let interval = u64::try_from(interval.as_secs())
        .ok()
        .filter(|s| *s > 0)
        .ok_or_else(|| CliError::Usage("--interval must be at least 1s".into()))?;
    let (source, replica) = sinks(g, to, max_rate)?;
    let stop = StopSignal::new();
    tokio::spawn(crate::signals::stop_on_signal(stop.clone(), |name| {
        name.to_owned()
    }));
    let follow_options = FollowOptions {
        interval: Duration::from_secs(interval),
        ..Default::default()
    };
    let json_lines = g.json;
    let mut on_pass = move |pass: &FollowPass<'_>| match pass.outcome {
        Ok(r) if r.copied_objects == 0 => {}
        Ok(r) => {
            if json_lines {
                print_json_line(&json!({
                    "pass": pass.number,
                    "ok": true,
                    "copied_objects": r.copied_objects,
                    "copied_bytes": r.copied_bytes,
                    "lag_objects": r.lag_after.objects,
                    "caught_up_to": pass.caught_up_to.map(|t| t.to_rfc3339()),
                    "duration_ms": r.duration.as_millis() as u64,
                }));
            } else {
                eprintln!(
                    "pass {}: {} object(s) ({}) copied and proven in {:.1?}",
                    pass.number,
                    r.copied_objects,
                    bytes(r.copied_bytes),
                    r.duration
                );
            }
        }
        Err(e) => {
            if json_lines {
                print_json_line(&json!({"pass": pass.number, "ok": false, "error": e.to_string()}));
            } else {
                eprintln!("pass {} failed, trying again: {e}", pass.number);
            }
        }
    };
    let summary = resilience_core::ops::follow::follow(
        source.as_ref(),
        replica.as_ref(),
        options,
        &follow_options,
        &stop,
        &mut on_pass,
    )
    .await?;
    if g.json {
        let mut doc = serde_json::to_value(&summary).expect("the summary serializes");
        doc["stopped"] = json!(stop.reason());
        print_json_line(&doc);
    } else {
        eprintln!(
            "stopped ({}) after {} pass(es), {} failed: {} object(s) ({}) copied; the replica holds everything the repository held at {}",
            stop.reason(),
            summary.passes,
            summary.failed_passes,
            summary.copied_objects,
            bytes(summary.copied_bytes),
            summary
                .caught_up_to
                .map(|t| t.to_rfc3339())
                .unwrap_or_else(|| "no moment yet".into())
        );
    }
    Ok(())
}
