//! The commands: each parses its arguments, calls the library, and prints text or JSON
//! ([`crate::output`]).

mod backup;
mod bucket;
mod drill;
pub(crate) mod failover;
mod forget;
mod hold;
mod init;
mod key;
mod pg;
mod pg_standby;
mod prune;
pub(crate) mod rds;
mod redis;
mod repair;
mod replicate;
mod restore;
mod snapshots;
mod verify;
mod wal;

use crate::cli::{Cli, Command};
use crate::CliError;

/// Runs the command `cli` names.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    let g = &cli.global;
    match &cli.command {
        Command::Init(args) => init::run(g, args).await,
        Command::Backup { source } => backup::run(g, source).await,
        Command::Snapshots => snapshots::run(g).await,
        Command::Restore {
            snapshot,
            target,
            resume,
            no_sync,
        } => restore::run(g, snapshot, target, *resume, *no_sync).await,
        Command::Verify { full } => verify::run(g, *full).await,
        Command::Forget(args) => forget::run(g, args).await,
        Command::Prune { dry_run, grace } => prune::run(g, *dry_run, grace).await,
        Command::Repair { what } => repair::run(g, what).await,
        Command::Hold { snapshot, release } => hold::run(g, snapshot, *release).await,
        Command::Pg { command } => pg::run(g, command).await,
        Command::Redis { command } => redis::run(g, command).await,
        Command::Bucket { command } => bucket::run(g, command).await,
        Command::Rds { command } => rds::run(g, command).await,
        Command::Replicate {
            to,
            max_rate,
            concurrency,
            dry_run,
            verify_read_back,
            follow,
            interval,
        } => {
            let options = resilience_core::ops::replicate::ReplicateOptions {
                concurrency: *concurrency,
                dry_run: *dry_run,
                verify_read_back: *verify_read_back,
            };
            if *follow {
                replicate::follow(g, to, *max_rate, &options, interval).await
            } else {
                replicate::run(g, to, *max_rate, &options).await
            }
        }
        Command::Daemon { config } => crate::daemon::run(config).await,
        Command::Failover {
            config,
            to,
            dry_run,
            drill,
        } => failover::run(g, config, to, *dry_run, *drill).await,
        Command::Failovers => failover::list(g).await,
        Command::Drill {
            config,
            source,
            snapshot,
        } => drill::run(g, config, source, snapshot.as_deref()).await,
        Command::Key { command } => key::run(g, command).await,
        Command::WalPush(args) => wal::push(g, args).await,
        Command::WalFetch(args) => wal::fetch(g, args).await,
    }
}
