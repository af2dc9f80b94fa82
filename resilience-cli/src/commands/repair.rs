//! `repair index [--dry-run]`: rebuild derived state from the data it was derived from.
//! `repair snapshots [--dry-run] [--salvage] [--read-data]`: name the snapshots that lost data
//! and salvage what is still restorable.
//! `repair catalog [--dry-run]`: supersede damaged catalog revisions.

use resilience_core::ops::repair::{
    Loss, RepairCatalogOptions, RepairCatalogReport, RepairIndexOptions, RepairIndexReport,
    RepairSnapshotsOptions, RepairSnapshotsReport, SalvageAction,
};

use crate::access;
use crate::cli::{Global, RepairCommand};
use crate::output::outln;
use crate::output::{bytes, print_json};
use crate::CliError;

/// Runs a repair. Exit 0 means the new index files (or salvage snapshots) are durable, or, with
/// `--dry-run`, that they were computed; old files an append-only sink refused to delete are
/// named. Finding damaged snapshots without `--salvage` also exits 0: the report is the result
/// (`verify` is the check that exits 3).
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
        RepairCommand::Catalog { dry_run } => {
            let repo = access::open(g).await?;
            let report = repo
                .repair_catalog(RepairCatalogOptions { dry_run: *dry_run })
                .await?;
            if g.json {
                print_json(&serde_json::to_value(&report).expect("the report serializes"));
            } else {
                print_catalog(&report);
            }
            Ok(())
        }
        RepairCommand::Snapshots {
            dry_run,
            salvage,
            read_data,
        } => {
            let repo = access::open(g).await?;
            let report = repo
                .repair_snapshots(RepairSnapshotsOptions {
                    dry_run: *dry_run,
                    salvage: *salvage,
                    read_data: *read_data,
                })
                .await?;
            if g.json {
                print_json(&serde_json::to_value(&report).expect("the report serializes"));
            } else {
                print_snapshots(&report);
            }
            Ok(())
        }
    }
}

fn print_catalog(r: &RepairCatalogReport) {
    let verb = if r.dry_run { "would write" } else { "wrote" };
    for w in &r.rewritten {
        outln!(
            "{}: {verb} a {} revision superseding {} (from {})",
            w.id,
            w.status,
            w.damaged,
            w.from
        );
    }
    for l in &r.left {
        outln!("LEFT {}: {}", l.object, l.reason);
    }
    outln!(
        "{} record(s) checked, {} superseded, {} left",
        r.records_checked,
        r.rewritten.len(),
        r.left.len()
    );
}

fn print_snapshots(r: &RepairSnapshotsReport) {
    for f in &r.damaged_index_files {
        outln!("damaged index file (run `resilience repair index`): {f}");
    }
    for d in &r.damaged {
        outln!("DAMAGED snapshot {} (source {})", d.snapshot, d.source);
        if let Some(m) = &d.manifest {
            outln!(
                "  manifest {}: {}: nothing of it can be read",
                m.object,
                m.problem
            );
        }
        for o in &d.lost_objects {
            outln!("  lost: {}: {}", o.object, o.problem);
        }
        for f in &d.files {
            let how = match f.loss {
                Loss::Whole => "wholly lost".to_owned(),
                Loss::Partial => format!(
                    "partly lost: {} of {} blob(s), {}",
                    f.blobs_lost,
                    f.blobs,
                    bytes(f.bytes_lost)
                ),
            };
            outln!("  file {} ({}): {how}", f.path, bytes(f.size));
        }
        if let Some(t) = &d.tree {
            let after = match &t.after {
                Some(path) => format!("every entry after {path}"),
                None => "every entry".to_owned(),
            };
            outln!(
                "  tree: {after} ({} entries) cannot be read: {}: {}",
                t.entries_unreadable,
                t.lost.object,
                t.lost.problem
            );
        }
        let kept = format!("{} entries, {}", d.entries_kept, bytes(d.bytes_kept));
        match &d.salvage {
            SalvageAction::NotRequested => outln!(
                "  still restorable: {kept} (run `resilience repair snapshots --salvage` to keep them in a new snapshot)"
            ),
            SalvageAction::WouldWrite => {
                outln!("  dry run: would write a salvage snapshot of {kept}")
            }
            SalvageAction::Written { snapshot } => {
                outln!("  salvaged as {snapshot}: {kept}; the files above are left out")
            }
            SalvageAction::AlreadySalvaged { snapshot } => {
                outln!("  already salvaged as {snapshot}")
            }
            SalvageAction::Impossible { reason } => outln!("  cannot be salvaged: {reason}"),
        }
    }
    if r.damaged.is_empty() {
        outln!(
            "no snapshot lost data: {} snapshot(s) checked, {} pack(s) looked at{}",
            r.snapshots_checked,
            r.packs_checked,
            if r.read_data {
                ", every blob authenticated"
            } else {
                ""
            }
        );
    } else {
        outln!(
            "{} of {} snapshot(s) lost data; {}",
            r.damaged.len(),
            r.snapshots_checked,
            match (r.salvage, r.dry_run) {
                (false, _) => "nothing written".to_owned(),
                (true, true) => "dry run: nothing written".to_owned(),
                (true, false) => format!("{} salvage snapshot(s) written", r.salvaged.len()),
            }
        );
    }
}

fn print_index(r: &RepairIndexReport) {
    let (would, written) = if r.dry_run {
        ("dry run: would write", "would remove")
    } else {
        ("wrote", "removed")
    };
    for f in &r.damaged_index_files {
        outln!("damaged index file: {f}");
    }
    for p in &r.unreadable_packs {
        outln!(
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
        outln!("missing pack (kept in the index so verify names the loss): {p}");
    }
    outln!(
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
        outln!("not removed (append-only: run `resilience repair index` with maintenance credentials): {f}");
    }
}
