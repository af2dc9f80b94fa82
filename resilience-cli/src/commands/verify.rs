//! `verify [--full]`: is every snapshot restorable? Exit status 3 names every damaged object
//! and the snapshots it affects.

use resilience_core::ops::verify::{VerifyOptions, VerifyReport, REPAIR_SNAPSHOTS};

use crate::access;
use crate::cli::Global;
use crate::output::outln;
use crate::output::{bytes, print_json};
use crate::CliError;

/// Verifies the repository; damage is [`CliError::Damaged`] (exit status 3).
pub async fn run(g: &Global, full: bool) -> Result<(), CliError> {
    let repo = access::open(g).await?;
    let report = repo.verify(VerifyOptions { full }).await?;
    if g.json {
        print_json(&serde_json::to_value(&report).expect("the report serializes"));
    } else {
        print_text(&report);
    }
    if report.is_ok() {
        Ok(())
    } else {
        Err(CliError::Damaged(report.damaged.len()))
    }
}

/// One `DAMAGED <object>: <problem> (affects: id1, id2)` line per damaged object, each followed
/// by the repair that fixes it (`  fix: run \`resilience repair index\``), then a summary.
fn print_text(report: &VerifyReport) {
    for d in &report.damaged {
        let affects = if d.affected_snapshots.is_empty() {
            "no snapshot".to_owned()
        } else {
            d.affected_snapshots.join(", ")
        };
        outln!("DAMAGED {}: {} (affects: {affects})", d.object, d.problem);
        match &d.repair {
            Some(repair) if repair == REPAIR_SNAPSHOTS => outln!(
                "  keep what is restorable: run `{repair}` (the lost data itself is only in a replica)"
            ),
            Some(repair) => outln!("  fix: run `{repair}`"),
            None => outln!("  fix: none rebuilds it; restore the object from a replica"),
        }
    }
    for id in &report.expiring {
        outln!(
            "EXPIRING {id}: an expiry was interrupted after it deleted the manifest\n  fix: run `resilience forget` again to finish it"
        );
    }
    let unindexed = match report.unindexed_packs {
        0 => String::new(),
        n => format!(", {n} unindexed pack(s) left by interrupted backups"),
    };
    outln!(
        "{} verification: {} snapshots, {} packs, {} read, {} blobs re-hashed{unindexed}: {}",
        report.mode,
        report.snapshots_checked,
        report.packs_checked,
        bytes(report.bytes_read),
        report.blobs_checked,
        if report.is_ok() { "sound" } else { "DAMAGED" }
    );
}
