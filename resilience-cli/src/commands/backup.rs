//! `backup <source>`: one snapshot of a source; prints its id (or the report as JSON).

use std::collections::BTreeMap;
use std::sync::Arc;

use resilience_core::ops::backup::{BackupOptions, BackupReport};
use resilience_core::ops::progress::Progress;
use resilience_core::repo::Repository;
use resilience_core::source::fs::DirSource;
use resilience_core::source::Source;
use serde_json::json;

use crate::access;
use crate::cli::{BackupSource, Global};
use crate::output::outln;
use crate::output::{bytes, print_json};
use crate::progress::Bar;
use crate::CliError;

/// Backs up the source `source` names.
pub async fn run(g: &Global, source: &BackupSource) -> Result<(), CliError> {
    match source {
        BackupSource::Dir {
            path,
            labels,
            source_id,
        } => {
            let labels = parse_labels(labels)?;
            let repo = access::open(g).await?;
            let mut dir = DirSource::new(path);
            if let Some(id) = source_id {
                dir = dir.with_id(id);
            }
            let report = back_up(g, &repo, &dir, labels).await?;
            print_report(g, &report, serde_json::Map::new());
            Ok(())
        }
    }
}

/// `KEY=VALUE` pairs as a map; a pair without `=` or with an empty key is a usage error.
pub(crate) fn parse_labels(labels: &[String]) -> Result<BTreeMap<String, String>, CliError> {
    labels
        .iter()
        .map(|l| {
            l.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| CliError::Usage(format!("label {l:?} must be KEY=VALUE")))
        })
        .collect()
}

/// Runs the backup with a progress bar when one is wanted.
pub(crate) async fn back_up(
    g: &Global,
    repo: &Repository,
    source: &dyn Source,
    labels: BTreeMap<String, String>,
) -> Result<BackupReport, CliError> {
    let bar = Bar::new(g.json, "backup", None);
    let options = BackupOptions {
        labels,
        progress: bar.clone().map(|b| b as Arc<dyn Progress>),
        memory: g.memory,
        ..Default::default()
    };
    let report = repo.backup(source, options).await;
    if let Some(b) = &bar {
        b.finish();
    }
    Ok(report?)
}

/// Prints the snapshot id on stdout (a summary on stderr), or the report as one JSON object
/// with `extra` fields added.
pub(crate) fn print_report(
    g: &Global,
    report: &BackupReport,
    extra: serde_json::Map<String, serde_json::Value>,
) {
    let r = &report.record;
    if g.json {
        let mut doc = json!({
            "id": r.id,
            "source": r.source.id,
            "status": r.status,
            "entries": r.entries,
            "logical_bytes": r.logical_bytes,
            "new_bytes": r.new_bytes,
            "stored_bytes": r.stored_bytes,
            "reused_entries": report.reused_entries,
            "duration_ms": report.duration.as_millis() as u64,
        });
        doc.as_object_mut().expect("an object").extend(extra);
        print_json(&doc);
    } else {
        outln!("{}", r.id);
        eprintln!(
            "{} entries ({} unchanged), {} read, {} new, {} stored in {:.1?}",
            r.entries,
            report.reused_entries,
            bytes(r.logical_bytes),
            bytes(r.new_bytes),
            bytes(r.stored_bytes),
            report.duration
        );
    }
}

#[cfg(test)]
mod tests {
    use super::parse_labels;

    #[test]
    fn labels_are_key_value_pairs() {
        let m = parse_labels(&["env=prod".into(), "note=a=b".into(), "empty=".into()]).unwrap();
        assert_eq!(m["env"], "prod");
        assert_eq!(m["note"], "a=b");
        assert_eq!(m["empty"], "");
        assert!(parse_labels(&["novalue".into()]).is_err());
        assert!(parse_labels(&["=v".into()]).is_err());
    }
}
