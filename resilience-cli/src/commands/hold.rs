//! `hold SNAPSHOT [--release]`: a legal hold keeps a backup from every retention rule.

use crate::access;
use crate::cli::Global;
use crate::output::outln;
use crate::output::{print_json, record_json};
use crate::CliError;

/// Places (or releases) the hold and prints the record.
pub async fn run(g: &Global, snapshot: &str, release: bool) -> Result<(), CliError> {
    let repo = access::open(g).await?;
    let record = repo.set_legal_hold(snapshot, !release).await?;
    if g.json {
        print_json(&record_json(&record));
    } else {
        outln!(
            "{} {}",
            record.id,
            if record.legal_hold {
                "is under legal hold"
            } else {
                "is no longer held"
            }
        );
    }
    Ok(())
}
