//! A custom backup binary for one Postgres cluster: a base backup, a check that every kept
//! backup can be recovered (no WAL gap), and WAL expiry — what a service runs nightly beside
//! `archive_command = 'resilience … wal-push %p'`.
//!
//! ```sh
//! cargo run -p resilience-examples --example pg_nightly -- \
//!     /var/backups/pg /etc/resilience/pg.key /var/lib/postgresql/15/main 'host=/run/postgresql user=postgres'
//! ```

use std::error::Error;

use resilience_core::keys::KeyFileProvider;
use resilience_core::ops::backup::BackupOptions;
use resilience_core::repo::Repository;
use resilience_pg::archive::WalArchive;
use resilience_pg::base::{BaseBackupInfo, PgBaseSource};
use resilience_pg::check;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [repo_url, key_file, pgdata, dsn] = args.as_slice() else {
        return Err("usage: pg_nightly REPO KEY_FILE PGDATA DSN".into());
    };
    let sink = resilience_objstore::open_sink(repo_url)?;
    let repo = Repository::open(sink, &KeyFileProvider::from_file(key_file.as_ref())?).await?;

    let mut options = BackupOptions::default();
    options.labels.insert("schedule".into(), "nightly".into());
    let report = repo
        .backup(&PgBaseSource::new(pgdata, dsn), options)
        .await?;
    let info = BaseBackupInfo::from_metadata(&report.record.source_metadata)
        .ok_or("a Postgres base backup records its LSNs")?;
    println!(
        "base backup {}: LSN {} to {} on timeline {}, {} new bytes",
        report.record.id, info.start_lsn, info.stop_lsn, info.timeline, report.record.new_bytes
    );

    let wal = WalArchive::new(&repo, "postgres")?;
    let health = check::check(&repo, &wal).await?;
    for t in &health.timelines {
        println!(
            "timeline {}: recoverable from {:?} to {:?}",
            t.timeline, t.earliest, t.latest
        );
    }
    if !health.is_ok() {
        return Err(format!("WAL archive problems: {:?}", health.problems).into());
    }
    let expired = check::expire_wal(&repo, &wal, false).await?;
    println!("expired {} WAL files", expired.deleted.len());
    Ok(())
}
