//! Restore drills (`resilience drill`, and the daemon's drill jobs): restore the newest backup
//! of a source into a scratch place, check it, measure RTO and RPO, record the result in the
//! catalog, tear the scratch copy down.

use std::collections::BTreeMap;

use resilience_core::drill::DrillReport;
use resilience_core::repo::Repository;

use crate::config::{DaemonConfig, SourceConfig};
use crate::CliError;

/// Figures a drill later compares with the restored copy, taken at backup time and recorded
/// as the backup's labels (`drill.query.<name>` for Postgres queries).
pub async fn backup_figures(source: &SourceConfig) -> Result<BTreeMap<String, String>, CliError> {
    let _ = source;
    Ok(BTreeMap::new())
}

/// Drills `source`: restores `snapshot` (default: its newest succeeded backup), checks it,
/// records the report in the catalog and returns it.
pub async fn run(
    repo: &Repository,
    config: &DaemonConfig,
    source: &SourceConfig,
    snapshot: Option<&str>,
) -> Result<DrillReport, CliError> {
    let _ = (repo, config, snapshot);
    Err(CliError::Usage(format!(
        "drills of {} sources are not built yet",
        source.kind.as_str()
    )))
}
