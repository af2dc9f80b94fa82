//! The commands: each parses its arguments, calls the library, and prints text or JSON
//! ([`crate::output`]).

mod backup;
mod forget;
mod hold;
mod init;
mod prune;
mod restore;
mod snapshots;
mod verify;

use crate::cli::{Cli, Command};
use crate::CliError;

/// Runs the command `cli` names.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    let g = &cli.global;
    match &cli.command {
        Command::Init => init::run(g).await,
        Command::Backup { source } => backup::run(g, source).await,
        Command::Snapshots => snapshots::run(g).await,
        Command::Restore { snapshot, target } => restore::run(g, snapshot, target).await,
        Command::Verify { full } => verify::run(g, *full).await,
        Command::Forget(args) => forget::run(g, args).await,
        Command::Prune { dry_run, grace } => prune::run(g, *dry_run, grace).await,
        Command::Hold { snapshot, release } => hold::run(g, snapshot, *release).await,
    }
}
