//! The command line, as clap sees it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The environment and exit statuses, shown after the top-level help.
const ENVIRONMENT: &str = "\
Environment:
  RESILIENCE_REPOSITORY  the repository, when --repo is not given
  RESILIENCE_PASSWORD    the passphrase, unless --password-file or --key-file is given
  RESILIENCE_LOG         log filter for stderr (default: warn), e.g. info or resilience_core=debug

Exit status: 0 success, 1 failure, 2 usage error, 3 verify found damage.";

/// Encrypted, deduplicated, verified backups that services embed.
#[derive(Debug, Parser)]
#[command(name = "resilience", version, long_about = None, after_help = ENVIRONMENT)]
pub struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: Global,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes, before or after its name.
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct Global {
    /// Repository: a local path, file:///path, s3://BUCKET/PREFIX[?endpoint=URL&region=R], gs://, az://.
    #[arg(
        long,
        global = true,
        env = "RESILIENCE_REPOSITORY",
        hide_env_values = true
    )]
    pub repo: Option<String>,
    /// File holding the passphrase (else RESILIENCE_PASSWORD).
    #[arg(long, global = true, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Key file (64 hex digits): unlocks without the slow passphrase derivation.
    #[arg(long, global = true, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Print one JSON document on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Refuse every delete and overwrite (for backup hosts; forget and prune run elsewhere).
    #[arg(long, global = true)]
    pub append_only: bool,
    /// The cold tier of the repository (another bucket or storage class).
    #[arg(long, global = true, value_name = "URL")]
    pub cold_repo: Option<String>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a repository.
    Init,
    /// Back up a source.
    Backup {
        /// What to back up.
        #[command(subcommand)]
        source: BackupSource,
    },
    /// List the backup catalog.
    Snapshots,
    /// Restore a snapshot into a directory.
    Restore {
        /// Snapshot id, unique id prefix, or `latest`.
        snapshot: String,
        /// Directory to restore into (created; must be empty).
        #[arg(long)]
        target: PathBuf,
    },
    /// Check that every snapshot is restorable; exit 3 naming every damaged object.
    Verify {
        /// Also decrypt and re-hash every blob.
        #[arg(long)]
        full: bool,
    },
    /// Apply a retention policy: expire backups (and move old ones to the cold tier).
    Forget(ForgetArgs),
    /// Remove data no snapshot needs (two-phase: a later run deletes what this one condemns).
    Prune {
        /// Report only.
        #[arg(long)]
        dry_run: bool,
        /// How old a prune plan must be before its packs are deleted (e.g. 24h, 0s).
        #[arg(long, default_value = "24h")]
        grace: String,
    },
    /// Place (or release) a legal hold on a backup.
    Hold {
        /// Snapshot id or unique prefix.
        snapshot: String,
        /// Release the hold.
        #[arg(long)]
        release: bool,
    },
}

/// Sources for `backup`.
#[derive(Debug, Subcommand)]
pub enum BackupSource {
    /// A directory tree.
    Dir {
        /// The directory.
        path: PathBuf,
        /// Labels recorded with the backup.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Source id (default: `dir:` and the absolute path).
        #[arg(long)]
        source_id: Option<String>,
    },
}

/// Retention rules for `forget`.
#[derive(Debug, Args)]
pub struct ForgetArgs {
    /// Keep the newest N.
    #[arg(long)]
    pub keep_last: Option<u32>,
    /// Keep the newest of each of the last N hours with a backup.
    #[arg(long)]
    pub keep_hourly: Option<u32>,
    /// … days.
    #[arg(long)]
    pub keep_daily: Option<u32>,
    /// … ISO weeks.
    #[arg(long)]
    pub keep_weekly: Option<u32>,
    /// … months.
    #[arg(long)]
    pub keep_monthly: Option<u32>,
    /// … years.
    #[arg(long)]
    pub keep_yearly: Option<u32>,
    /// Keep everything younger than this (e.g. 90d).
    #[arg(long)]
    pub keep_within: Option<String>,
    /// Move kept backups older than this to the cold tier.
    #[arg(long)]
    pub hot: Option<String>,
    /// Keep backups younger than this (cold once older than --hot).
    #[arg(long)]
    pub cold: Option<String>,
    /// Time zone of the buckets (IANA name, default UTC).
    #[arg(long)]
    pub tz: Option<String>,
    /// A policy document (TOML or JSON) instead of the flags.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Show the plan, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}
