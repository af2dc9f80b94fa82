//! `bucket backup` and `bucket restore`.

use resilience_core::restore::RestoreOptions;
use resilience_objstore::bucket::{BucketRestoreOptions, BucketSource, BucketTarget};
use serde_json::json;

use crate::access;
use crate::cli::{BucketCommand, Global};
use crate::commands::backup::{back_up, parse_labels, print_report};
use crate::output::{bytes, print_json};
use crate::CliError;

/// Runs a `bucket` command.
pub async fn run(g: &Global, command: &BucketCommand) -> Result<(), CliError> {
    match command {
        BucketCommand::Backup {
            source_url,
            labels,
            source,
        } => {
            let labels = parse_labels(labels)?;
            let repo = access::open(g).await?;
            let mut src = BucketSource::new(source_url);
            if let Some(id) = source {
                src = src.with_id(id);
            }
            let report = back_up(g, &repo, &src, labels).await?;
            let mut extra = serde_json::Map::new();
            extra.insert(
                "objects".into(),
                report
                    .record
                    .source_metadata
                    .get("objects")
                    .cloned()
                    .unwrap_or_default(),
            );
            extra.insert("objects_reused".into(), report.reused_entries.into());
            print_report(g, &report, extra);
            Ok(())
        }
        BucketCommand::Restore {
            snapshot,
            target_url,
            prefix,
            overwrite,
            max_rate,
        } => {
            let repo = access::open_throttled(g, *max_rate).await?;
            let record = repo.resolve_snapshot(snapshot, None).await?;
            if record.source.kind != "bucket" {
                return Err(CliError::Usage(format!(
                    "snapshot {} is a {} backup, not a bucket backup",
                    record.id, record.source.kind
                )));
            }
            let target = BucketTarget::new(
                target_url,
                BucketRestoreOptions {
                    overwrite: *overwrite,
                    prefix: prefix.clone(),
                },
            )?;
            let result = repo
                .restore(&record.id, &target, RestoreOptions::default())
                .await;
            let t = target.tally();
            if g.json {
                print_json(&json!({
                    "snapshot": record.id,
                    "ok": result.is_ok(),
                    "written": t.written,
                    "written_bytes": t.written_bytes,
                    "skipped": t.skipped,
                    "filtered": t.filtered,
                    "refused": t.refused,
                }));
            } else {
                eprintln!(
                    "{} objects written ({}), {} already identical, {} filtered out, {} refused",
                    t.written,
                    bytes(t.written_bytes),
                    t.skipped,
                    t.filtered,
                    t.refused.len()
                );
            }
            result.map(|_| ()).map_err(CliError::from)
        }
    }
}
