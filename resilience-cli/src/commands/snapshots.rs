//! `snapshots`: the backup catalog, as a table or a JSON array.

use resilience_core::catalog::{BackupRecord, Catalog, CatalogQuery};
use serde_json::Value;

use crate::access;
use crate::cli::Global;
use crate::output::outln;
use crate::output::{bytes, print_json, record_json};
use crate::CliError;

/// Lists every record of the catalog, oldest first.
pub async fn run(g: &Global) -> Result<(), CliError> {
    let repo = access::open(g).await?;
    let records = repo.catalog().list(&CatalogQuery::default()).await?;
    if g.json {
        print_json(&Value::Array(records.iter().map(record_json).collect()));
    } else {
        print_table(&records);
    }
    Ok(())
}

fn print_table(records: &[BackupRecord]) {
    outln!(
        "{:<26} {:<10} {:<20} {:>10} {:>10}  {:<4} source [labels]",
        "id",
        "status",
        "started (UTC)",
        "size",
        "stored",
        "tier"
    );
    for r in records {
        let labels: Vec<String> = r.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        outln!(
            "{:<26} {:<10} {:<20} {:>10} {:>10}  {:<4} {}{}{}",
            r.id,
            r.status.to_string(),
            r.started_at.format("%Y-%m-%d %H:%M:%S"),
            bytes(r.logical_bytes),
            bytes(r.stored_bytes),
            format!("{:?}", r.tier).to_lowercase(),
            r.source.id,
            if labels.is_empty() {
                String::new()
            } else {
                format!(" [{}]", labels.join(", "))
            },
            if r.legal_hold { " HOLD" } else { "" },
        );
        if let Some(s) = &r.salvage {
            outln!(
                "{:<26} salvaged from {}: {} file(s) left out{}",
                "",
                s.from,
                s.files_left_out,
                match s.entries_unreadable {
                    0 => String::new(),
                    n => format!(", {n} unreadable entries"),
                }
            );
        }
    }
}
