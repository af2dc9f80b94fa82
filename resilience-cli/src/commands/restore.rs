//! `restore SNAPSHOT --target DIR [--resume] [--no-sync]`: a snapshot into a new (or empty)
//! directory, or the rest of it into a directory an interrupted restore left; on disk (not
//! only in the page cache) when the command exits 0, unless `--no-sync`.

use std::path::Path;
use std::sync::Arc;

use resilience_core::ops::progress::Progress;
use resilience_core::ops::restore::RestoreOptions;
use resilience_core::source::fs::DirTarget;

use crate::access;
use crate::cli::Global;
use crate::output::{bytes, print_json, restore_json};
use crate::progress::Bar;
use crate::CliError;

/// Restores the snapshot `snapshot` names (an id, a unique prefix, or `latest`) into `target`;
/// durably unless `no_sync`.
pub async fn run(
    g: &Global,
    snapshot: &str,
    target: &Path,
    resume: bool,
    no_sync: bool,
) -> Result<(), CliError> {
    let repo = access::open(g).await?;
    let record = repo.resolve_snapshot(snapshot, None).await?;
    let bar = Bar::new(g.json, "restore", Some(record.logical_bytes));
    let options = RestoreOptions {
        progress: bar.clone().map(|b| b as Arc<dyn Progress>),
        memory: g.memory,
        ..Default::default()
    };
    let report = repo
        .restore(
            &record.id,
            &DirTarget::new(target).resume(resume).durable(!no_sync),
            options,
        )
        .await;
    if let Some(b) = &bar {
        b.finish();
    }
    let report = report?;
    if g.json {
        print_json(&restore_json(&report));
    } else {
        eprintln!(
            "restored {} ({} entries, {}) into {} in {:.1?}",
            report.snapshot,
            report.entries,
            bytes(report.bytes),
            target.display(),
            report.duration
        );
    }
    Ok(())
}
