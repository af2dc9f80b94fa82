//! `repair index [--dry-run]`: rebuild derived state from the data it was derived from.

use resilience_core::repair::{RepairIndexOptions, RepairIndexReport};

use crate::access;
use crate::cli::{Global, RepairCommand};
use crate::output::print_json;
use crate::CliError;

/// Runs a repair. Exit 0 means the new index files are durable (or, with `--dry-run`, that
/// they were computed); old files an append-only sink refused to delete are named.
pub async fn run(g: &Global, what: &RepairCommand) -> Result<(), CliError> {
    match what {
        RepairCommand::Index { dry_run } => {
            let repo = access::open(g).await?;
            let report = repo
                .repair_index(RepairIndexOptions { dry_run: *dry_run })
                .await?;
            if g.json {
                print_json(&serde_json::to_value(&report).expect("the report serializes"));
            } else {
                print_index(&report);
            }
            Ok(())
        }
    }
}

fn print_index(r: &RepairIndexReport) {
    let (would, written) = if r.dry_run {
        ("dry run: would write", "would remove")
    } else {
        ("wrote", "removed")
    };
    for f in &r.damaged_index_files {
        println!("damaged index file: {f}");
    }
    for p in &r.unreadable_packs {
        println!(
            "unreadable pack: {}: {}{}",
            p.pack,
            p.problem,
            if p.kept_from_index {
                " (kept as an intact index file lists it; verify names what it affects)"
            } else {
                " (left unindexed)"
            }
        );
    }
    for p in &r.missing_packs {
        println!("missing pack (kept in the index so verify names the loss): {p}");
    }
    println!(
        "{would} {} index file(s) listing {} pack(s), {} blob(s); {written} {} damaged and {} \
         other old index file(s){}",
        r.new_index_files,
        r.packs_indexed,
        r.blobs,
        r.damaged_removed.len(),
        r.old_removed,
        match r.condemned_skipped {
            0 => String::new(),
            n => format!("; {n} pack(s) condemned by prune plans left to prune"),
        }
    );
    for f in &r.not_removed {
        println!("not removed (append-only: run `resilience repair index` with maintenance credentials): {f}");
    }
}
