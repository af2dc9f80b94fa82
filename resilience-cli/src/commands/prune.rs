//! `prune`: remove data no snapshot needs, in two phases separated by a grace period.

use std::time::Duration;

use resilience_core::ops::prune::PruneOptions;
use resilience_core::retention::RetentionDuration;

use crate::access;
use crate::cli::Global;
use crate::output::outln;
use crate::output::{bytes, print_json};
use crate::CliError;

/// Condemns unreferenced packs, and deletes those an earlier run condemned at least `grace` ago.
pub async fn run(g: &Global, dry_run: bool, grace: &str) -> Result<(), CliError> {
    let grace: RetentionDuration = grace
        .parse()
        .map_err(|e| CliError::Usage(format!("--grace: {e}")))?;
    let repo = access::open(g).await?;
    let options = PruneOptions {
        dry_run,
        grace: Duration::from_secs(
            u64::try_from(grace.as_secs())
                .map_err(|_| CliError::Usage("--grace must not be negative".into()))?,
        ),
        ..Default::default()
    };
    let report = repo.prune(options).await?;
    if g.json {
        print_json(&serde_json::to_value(&report).expect("the report serializes"));
    } else {
        outln!(
            "{}condemned {} pack(s) ({}), repacked {}, deleted {} ({} freed), resurrected {}",
            if dry_run { "dry run: " } else { "" },
            report.condemned_packs,
            bytes(report.condemned_bytes),
            report.repacked_packs,
            report.deleted_packs,
            bytes(report.freed_bytes),
            report.resurrected_packs
        );
        for w in &report.waiting_plans {
            outln!("waiting: {w}");
        }
        if let Some(r) = &report.retention {
            outln!(
                "object lock: {} object(s) live snapshots need, {} extended a full period, {} locked again",
                r.needed, r.extended, r.relocked
            );
        }
        for d in &report.deferred {
            outln!("deferred: {} is under object lock until {}", d.key, d.until);
        }
        if report.discarded_uploads > 0 {
            outln!(
                "{} {} unfinished upload(s) left by interrupted writers",
                if dry_run {
                    "would discard"
                } else {
                    "discarded"
                },
                report.discarded_uploads
            );
        }
        for w in &report.waiting_uploads {
            outln!("waiting: {w}");
        }
        for w in &report.upload_warnings {
            eprintln!("warning: {w}");
        }
    }
    Ok(())
}
