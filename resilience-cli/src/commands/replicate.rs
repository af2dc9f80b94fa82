//! `replicate --to URL`: the repository's objects into a replica, proven, with the lag.

use resilience_core::ops::replicate::{replicate, ReplicateOptions};
use resilience_core::sink::throttle::share_budget;
use resilience_core::sink::Sink;
use serde_json::json;

use crate::access;
use crate::cli::Global;
use crate::output::{bytes, print_json};
use crate::CliError;

/// Replicates the repository to `to`.
pub async fn run(
    g: &Global,
    to: &str,
    max_rate: Option<u64>,
    options: &ReplicateOptions,
) -> Result<(), CliError> {
    let dry_run = options.dry_run;
    let mut source = access::sink(g, access::repo_url(g)?, false)?;
    let mut replica = resilience_objstore::open_sink_or_create(to)?;
    if let Some(rate) = max_rate {
        // One budget for both directions: reads of the source and writes to the replica.
        (source, replica) = share_budget(source, replica, rate);
    }
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
