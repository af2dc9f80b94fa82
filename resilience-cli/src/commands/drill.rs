//! `drill --config FILE --source NAME`: restore, check, measure, record; exit 1 on a failed check.

use std::path::Path;

use crate::config::DaemonConfig;
use crate::output::outln;
use crate::output::print_json;
use crate::{access, daemon, drill, CliError};

/// Drills one source of the config.
pub async fn run(
    g: &crate::cli::Global,
    config: &Path,
    source: &str,
    snapshot: Option<&str>,
) -> Result<(), CliError> {
    let config = DaemonConfig::load(config).map_err(CliError::Usage)?;
    let s = config.source(source).map_err(CliError::Usage)?;
    let options = daemon::repository_options(&config, g.json);
    let repo = access::open(&options).await?;
    let report = drill::run(&repo, &options, s, snapshot).await?;
    if g.json {
        print_json(&serde_json::json!({
            "source": report.source,
            "snapshot": report.snapshot,
            "ok": report.ok,
            "rto_seconds": report.rto_seconds,
            "rpo_seconds": report.rpo_seconds,
            "checks": report.checks,
        }));
    } else {
        for c in &report.checks {
            outln!(
                "{} {}: {}",
                if c.ok { "ok  " } else { "FAIL" },
                c.name,
                c.detail
            );
        }
        outln!(
            "drill of {} (snapshot {}): {}; RTO {:.1} s, RPO {:.1} s",
            report.source,
            report.snapshot,
            if report.ok { "passed" } else { "FAILED" },
            report.rto_seconds,
            report.rpo_seconds
        );
    }
    if report.ok {
        Ok(())
    } else {
        Err(CliError::WithStatus {
            message: format!("drill failed: {}", report.failures().join("; ")),
            status: 1,
        })
    }
}
