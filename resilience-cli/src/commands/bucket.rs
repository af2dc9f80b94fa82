//! `bucket backup` and `bucket restore`.

use resilience_core::ops::restore::RestoreOptions;
use std::sync::Arc;

use resilience_objstore::bucket::{plan_as_of, BucketRestoreOptions, BucketSource, BucketTarget};
use serde_json::json;

use crate::access;
use crate::cli::{BucketCommand, Global};
use crate::commands::backup::{back_up, parse_labels, print_report};
use crate::commands::pg::parse_time_flag;
use crate::output::{bytes, print_json};
use crate::CliError;

/// Runs a `bucket` command.
pub async fn run(g: &Global, command: &BucketCommand) -> Result<(), CliError> {
    match command {
        BucketCommand::Backup {
            source_url,
            labels,
            source,
            versions,
        } => {
            let labels = parse_labels(labels)?;
            let repo = access::open(g).await?;
            let mut src = BucketSource::new(source_url).with_versions(*versions);
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
            if *versions {
                extra.insert(
                    "other_versions".into(),
                    report
                        .record
                        .source_metadata
                        .get("other_versions")
                        .cloned()
                        .unwrap_or_default(),
                );
            }
            print_report(g, &report, extra);
            Ok(())
        }
        BucketCommand::Restore {
            snapshot,
            target_url,
            prefix,
            overwrite,
            max_rate,
            as_of,
        } => {
            let as_of = as_of
                .as_deref()
                .map(|t| parse_time_flag("--as-of", t))
                .transpose()?;
            let repo = access::open_throttled(g, *max_rate).await?;
            let record = repo.resolve_snapshot(snapshot, None).await?;
            if record.source.kind != "bucket" {
                return Err(CliError::Usage(format!(
                    "snapshot {} is a {} backup, not a bucket backup",
                    record.id, record.source.kind
                )));
            }
            let plan = match as_of {
                Some(t) => {
                    let versioned = record
                        .source_metadata
                        .get("versions")
                        .and_then(|v| v.as_bool())
                        == Some(true);
                    if !versioned {
                        return Err(CliError::Usage(format!(
                            "--as-of: snapshot {} was taken without --versions, so it holds only the objects current at {}; back up with `bucket backup --versions` to restore as of a time",
                            record.id, record.started_at.to_rfc3339()
                        )));
                    }
                    Some(Arc::new(plan_as_of(&repo, &record, t).await?))
                }
                None => None,
            };
            let target = BucketTarget::new(
                target_url,
                BucketRestoreOptions {
                    overwrite: *overwrite,
                    prefix: prefix.clone(),
                    as_of: plan.clone(),
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
                    "as_of": plan.as_ref().map(|p| p.as_of.to_rfc3339()),
                    "other_versions": t.other_versions,
                    "deleted": t.deleted,
                    "not_yet_created": t.not_yet_created,
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
                if let Some(p) = &plan {
                    eprintln!(
                        "as of {}: {} object(s) deleted then, not restored{}; {} not yet written then",
                        p.as_of.to_rfc3339(),
                        t.deleted.len(),
                        if t.deleted.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", t.deleted.join(", "))
                        },
                        t.not_yet_created
                    );
                }
            }
            result.map(|_| ()).map_err(CliError::from)
        }
    }
}
