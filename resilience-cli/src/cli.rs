//! The command line, as clap sees it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The environment and exit statuses, shown after the top-level help.
const ENVIRONMENT: &str = "\
Environment:
  RESILIENCE_REPOSITORY  the repository, when --repo is not given
  RESILIENCE_PASSWORD    the passphrase, unless --password-file or --key-file is given
  RESILIENCE_KEY         a 64-hex-digit key (the `env` provider), unless another is given
  AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_ENDPOINT_URL_KMS
                         AWS KMS (--kms-key-id); RESILIENCE_KMS_* of the same names override them
  VAULT_ADDR, VAULT_TOKEN (or VAULT_ROLE_ID and VAULT_SECRET_ID for AppRole), VAULT_NAMESPACE
                         Vault's transit engine (--vault-transit-key)
  RESILIENCE_LOG         log filter for stderr (default: warn), e.g. info or resilience_core=debug
  RESILIENCE_PG_DSN      the Postgres connection, when --dsn is not given (keeps a password
                         out of the process list); sslmode, sslrootcert, sslcert, sslkey as libpq
  RESILIENCE_REDIS_URL   the Redis URL, when --url is not given
  AWS_CA_BUNDLE          extra CA certificates for https S3 endpoints (or ?ca_file= in the URL)

Exit status: 0 success, 1 failure, 2 usage error, 3 verify or pg check found damage or gaps;
wal-fetch: 1 when the file is not archived (the end of WAL, for Postgres), 126 when the
archive cannot be read (Postgres then stops recovery rather than ending it early).";

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
/// The command line of the two commands Postgres starts once per WAL file: [`Cli`]'s own
/// options and theirs, parsed without building every other command's. Building the whole
/// command tree was an eighth of a served `wal-fetch`'s instructions.
#[derive(Debug, Parser)]
#[command(name = "resilience")]
struct WalCli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: WalCommand,
}

#[derive(Debug, Subcommand)]
enum WalCommand {
    WalPush(WalPushArgs),
    WalFetch(WalFetchArgs),
}

impl Cli {
    /// Parses the process's arguments ([`Cli::parse_args_from`]).
    pub fn parse_args() -> Cli {
        Cli::parse_args_from(std::env::args_os().collect())
    }

    /// Parses `args`: a `wal-push` or `wal-fetch` by [`WalCli`] alone when it accepts them,
    /// anything else (other commands, help, errors) by the whole command line, exiting with
    /// clap's message and status where it fails.
    pub fn parse_args_from(args: Vec<std::ffi::OsString>) -> Cli {
        if args.iter().any(|a| a == "wal-push" || a == "wal-fetch") {
            if let Ok(wal) = WalCli::try_parse_from(&args) {
                let command = match wal.command {
                    WalCommand::WalPush(a) => Command::WalPush(a),
                    WalCommand::WalFetch(a) => Command::WalFetch(a),
                };
                return Cli {
                    global: wal.global,
                    command,
                };
            }
        }
        Cli::parse_from(args)
    }
}

#[derive(Clone, Debug, Default, Args)]
#[command(next_help_heading = "Global options")]
pub struct Global {
    /// Repository: a local path, file:///path, s3://BUCKET/PREFIX[?endpoint=URL&region=R],
    /// gs://BUCKET/PREFIX[?endpoint=URL], az://CONTAINER/PREFIX.
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
    /// Open (or, with init, protect) the repository with this AWS KMS key: id, ARN or alias/NAME.
    #[arg(long, global = true, value_name = "ID")]
    pub kms_key_id: Option<String>,
    /// Open (or, with init, protect) the repository with this Vault transit key.
    #[arg(long, global = true, value_name = "NAME")]
    pub vault_transit_key: Option<String>,
    /// Print one JSON document on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Refuse every delete and overwrite (for backup hosts; forget and prune run elsewhere).
    #[arg(long, global = true)]
    pub append_only: bool,
    /// The cold tier of the repository (another bucket or storage class).
    #[arg(long, global = true, value_name = "URL")]
    pub cold_repo: Option<String>,
    /// Memory a backup or restore may hold at its peak (its buffers — read-ahead, chunks,
    /// packs in flight — and a reserve for the binary, runtime and allocator), whatever the
    /// size of the data: bytes, or with a unit (KiB, MiB, GiB).
    #[arg(long, global = true, value_name = "SIZE", default_value = "64MiB", value_parser = parse_memory)]
    pub memory: usize,
}

/// A size in bytes: `N`, or `N` with `K`/`KB`/`KiB`, `M`/`MB`/`MiB` or `G`/`GB`/`GiB` (all
/// powers of 1024).
pub fn parse_memory(s: &str) -> Result<usize, String> {
    let text = s.trim();
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let n: usize = digits
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size: expected N, or N with KiB, MiB or GiB"))?;
    let scale: usize = match text[digits.len()..].to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        unit => return Err(format!("{s:?}: unknown unit {unit:?} (KiB, MiB or GiB)")),
    };
    n.checked_mul(scale)
        .filter(|b| *b > 0)
        .ok_or_else(|| format!("{s:?} is not a usable size"))
}

/// `init`'s options.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Write every object the repository cannot lose (packs, manifests, keys, config, WAL)
    /// under S3 Object Lock for this long after it is written, extended by prune while live
    /// snapshots need it: days (`30`) or a duration (`30d`, `12h`). The bucket must have been
    /// created with Object Lock enabled, and no default retention rule.
    #[arg(long, value_name = "DAYS")]
    pub object_lock: Option<String>,
    /// Governance (a break-glass credential allowed to bypass governance retention can still
    /// delete) or compliance (nobody can, the root user included).
    #[arg(long, value_parser = ["governance", "compliance"], default_value = "governance", requires = "object_lock")]
    pub object_lock_mode: String,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a repository.
    Init(InitArgs),
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
        /// Directory to restore into (created; must be empty unless --resume).
        #[arg(long)]
        target: PathBuf,
        /// Complete an interrupted restore into the same directory: files whose content
        /// already matches are kept (not read again), everything else is written again.
        #[arg(long)]
        resume: bool,
        /// Exit without waiting for the disk: the restored tree may still be only in the
        /// page cache, and a crash of the machine can lose part of it. By default the command
        /// exits 0 only once everything it restored is on disk.
        #[arg(long)]
        no_sync: bool,
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
    /// Rebuild derived state (index files); find the snapshots that lost data and salvage what
    /// is still restorable.
    Repair {
        /// What to rebuild.
        #[command(subcommand)]
        what: RepairCommand,
    },
    /// Postgres: base backups, point-in-time recovery, archive checks.
    Pg {
        /// What to do.
        #[command(subcommand)]
        command: PgCommand,
    },
    /// Redis: keyspace backups (SCAN/DUMP), restores (RESTORE ABSTTL), comparisons.
    Redis {
        /// What to do.
        #[command(subcommand)]
        command: RedisCommand,
    },
    /// Buckets: back up the objects under a URL, restore them into a bucket.
    Bucket {
        /// What to do.
        #[command(subcommand)]
        command: BucketCommand,
    },
    /// AWS RDS and Aurora: snapshots recorded in the catalog, restores into new instances.
    Rds {
        /// What to do.
        #[command(subcommand)]
        command: RdsCommand,
    },
    /// Run the backups and jobs of a config file on their schedules; serve /metrics and /health.
    Daemon {
        /// The TOML configuration (see the README's "Running it as a service").
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Move the service to another region of the config's `[[region]]` tables: fence the old primary
    /// where it answers, promote the standby (or recover the newest base backup), restore
    /// Redis, switch Kubernetes traffic, check; each step timed, the failover journaled in the
    /// region's repository with its RTO and RPO. Run again after a failed step, it resumes.
    Failover {
        /// The daemon's TOML configuration, with `[[region]]` tables.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The region to move to.
        #[arg(long, value_name = "REGION")]
        to: String,
        /// Print the plan (and what an unfinished earlier run did), do nothing.
        #[arg(long, conflicts_with = "drill")]
        dry_run: bool,
        /// A drill instead: every Postgres and Redis source restored from the region's
        /// repository into scratch copies and checked, the Kubernetes objects read; production
        /// untouched. Journaled as a drill.
        #[arg(long)]
        drill: bool,
    },
    /// List the failovers journaled in the repository (the region failed over to), newest
    /// last, with their steps, RTO and RPO.
    Failovers,
    /// Restore a source's newest backup into a scratch place, check it, measure RTO and RPO.
    Drill {
        /// The TOML configuration that names the repository and the source.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The source to drill.
        #[arg(long)]
        source: String,
        /// The snapshot to restore (default: the source's newest succeeded backup).
        #[arg(long)]
        snapshot: Option<String>,
    },
    /// Manage the repository's key copies, and rotate its data key.
    Key {
        /// What to do.
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Archive one WAL file (Postgres' archive_command: `wal-push %p`, or `wal-push --async %p`).
    WalPush(WalPushArgs),
    /// Fetch one archived WAL file (Postgres' restore_command: `wal-fetch %f %p`, or
    /// `wal-fetch --prefetch 8 %f %p`).
    WalFetch(WalFetchArgs),
    /// Copy every object the replica lacks (another bucket, another region), proving each copy;
    /// report the lag. Needs no key: objects are copied sealed.
    Replicate {
        /// The replica repository's URL (created for a local path).
        #[arg(long, value_name = "URL")]
        to: String,
        /// Read and write at most this many bytes per second.
        #[arg(long)]
        max_rate: Option<u64>,
        /// Objects copied at once.
        #[arg(long, default_value = "8")]
        concurrency: usize,
        /// Only report the lag.
        #[arg(long)]
        dry_run: bool,
        /// Also read every copy back in full and check its checksum (by default a copy is
        /// proven by the digest the replica's store computed of what it received).
        #[arg(long)]
        verify_read_back: bool,
        /// Keep copying new objects as they appear (WAL first), a pass every --interval, until
        /// SIGINT or SIGTERM; a failed pass is reported and retried. With --json, one line per
        /// pass that copied something or failed, and a summary at the end.
        #[arg(long, conflicts_with = "dry_run")]
        follow: bool,
        /// With --follow: from the start of one pass to the next (`2s`, `1m`).
        #[arg(long, default_value = "2s", requires = "follow")]
        interval: String,
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

/// `resilience repair …`.
#[derive(Debug, Subcommand)]
pub enum RepairCommand {
    /// Rebuild the index files from the packs' own tables (a damaged index file costs readers
    /// a listing of data/ until then; prune refuses to run). Takes the maintenance lock; new
    /// files are written before old ones are deleted. With --append-only, old files cannot be
    /// removed: they are named, and a run with maintenance credentials removes them.
    Index {
        /// Report what would be done; write and delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Give each catalog record whose current revision does not read back a new revision
    /// saying what the damaged one said (verify names such revisions). A damaged `succeeded`
    /// revision is rebuilt from the snapshot's manifest, when that reads back and agrees with
    /// the record. Takes the catalog lock; records it cannot rebuild are named.
    Catalog {
        /// Report what would be done; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Name the snapshots that lost data and the files lost; with --salvage, keep the rest.
    ///
    /// Finds lost or damaged packs, lost tree blobs and damaged manifests and, for each
    /// affected snapshot, the files lost (wholly or partly) and any lost part of its tree.
    /// With --salvage, write for each damaged snapshot a new snapshot holding everything
    /// still restorable (reusing its blobs; files with lost content are left out and named,
    /// never kept truncated), recorded as salvaged from it; the original stays as it is. A
    /// snapshot already salvaged is not salvaged again. Exit 0 means every salvage snapshot
    /// is durable and visible.
    Snapshots {
        /// Report what would be done; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Write a salvage snapshot for each damaged snapshot (takes the maintenance lock).
        #[arg(long)]
        salvage: bool,
        /// Also read every pack the snapshots use and authenticate each blob (slower; finds
        /// damage inside packs, as verify --full does).
        #[arg(long)]
        read_data: bool,
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

/// Postgres commands.
#[derive(Debug, Subcommand)]
pub enum PgCommand {
    /// Physical base backup of a cluster on this host (pg_backup_start … pg_backup_stop).
    Backup {
        /// The cluster's data directory.
        #[arg(long)]
        pgdata: PathBuf,
        /// Connection to it, as a superuser or a role allowed pg_backup_start
        /// (`host=/run/postgresql user=postgres` or a postgres:// URL).
        #[arg(long, env = "RESILIENCE_PG_DSN", hide_env_values = true)]
        dsn: String,
        /// Source and WAL archive name (one per cluster).
        #[arg(long, default_value = "postgres")]
        source: String,
        /// Labels recorded with the backup.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Let the starting checkpoint spread over checkpoint_completion_target instead of
        /// running at once.
        #[arg(long)]
        spread_checkpoint: bool,
        /// Refuse the backup (exit 1, recorded failed) when pages with wrong checksums are
        /// found. Without it such a backup is kept, the pages listed in a warning and in the
        /// catalog. Pages are validated when the cluster has data checksums on.
        #[arg(long)]
        fail_on_corrupt_page: bool,
    },
    /// Restore a base backup into a new data directory and recover to a target.
    Restore(Box<PgRestoreArgs>),
    /// Make a warm standby from the repository (in another region: the replica that
    /// `replicate --follow` feeds): restore the newest base backup, fetch WAL from the
    /// repository as it arrives, start it, and return once it is replaying.
    Standby(Box<PgStandbyArgs>),
    /// Promote a standby made by `pg standby`: it replays what the repository still holds, then
    /// accepts writes; reports the last commit replayed and the LSN. Promoting a promoted
    /// cluster does nothing and says so.
    Promote {
        /// The standby's data directory.
        #[arg(long)]
        pgdata: PathBuf,
        /// The user to connect as (default: the data directory's owner).
        #[arg(long)]
        user: Option<String>,
        /// Directory of pg_ctl (default: PG_BIN, pg_config --bindir, or /usr/lib/postgresql/N/bin).
        #[arg(long)]
        pg_bin: Option<PathBuf>,
        /// Seconds the promotion may take.
        #[arg(long, default_value = "300")]
        timeout: u64,
    },
    /// Logical backup of selected tables (COPY in one repeatable-read snapshot).
    TableBackup {
        /// Connection to the database.
        #[arg(long, env = "RESILIENCE_PG_DSN", hide_env_values = true)]
        dsn: String,
        /// Tables: `schema.table`, `schema.*`, `*.table` or `table`; repeatable.
        #[arg(long = "table", required = true, value_name = "PATTERN")]
        tables: Vec<String>,
        /// Source id.
        #[arg(long, default_value = "postgres-tables")]
        source: String,
        /// Labels recorded with the backup.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// Restore tables from a table backup into a database (created where missing).
    TableRestore {
        /// Snapshot id, unique prefix, or `latest` (of --source).
        snapshot: String,
        /// Connection to the database to restore into.
        #[arg(long, env = "RESILIENCE_PG_DSN", hide_env_values = true)]
        dsn: String,
        /// Source id, for `latest`.
        #[arg(long, default_value = "postgres-tables")]
        source: String,
        /// Only these tables (patterns as for table-backup); all when not given.
        #[arg(long = "table", value_name = "PATTERN")]
        tables: Vec<String>,
        /// Restore into this schema instead of the original.
        #[arg(long)]
        into_schema: Option<String>,
        /// Keep only rows matching this SQL condition (e.g. "tenant_id = 42").
        #[arg(long = "where", value_name = "CONDITION")]
        row_filter: Option<String>,
    },
    /// Copy the repository's catalog into a Postgres schema, for compliance queries in SQL.
    CatalogSync {
        /// Connection to the database that holds the catalog copy.
        #[arg(long, env = "RESILIENCE_PG_DSN", hide_env_values = true)]
        dsn: String,
        /// Its schema (created if missing).
        #[arg(long, default_value = "resilience")]
        schema: String,
    },
    /// Delete archived WAL older than the start of every kept base backup.
    ExpireWal {
        /// The WAL archive.
        #[arg(long, default_value = "postgres")]
        source: String,
        /// List what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check the WAL archive against the base backups: gaps, and the PITR window per timeline.
    Check {
        /// The WAL archive.
        #[arg(long, default_value = "postgres")]
        source: String,
    },
}

/// Arguments of `pg restore`.
#[derive(Debug, Args)]
pub struct PgRestoreArgs {
    /// The new data directory (created; must be empty unless --resume).
    #[arg(long)]
    pub pgdata: PathBuf,
    /// Complete an interrupted restore into --pgdata: files already written are kept when their
    /// bytes match, the rest is restored. Postgres cannot start on an interrupted restore (its
    /// global/pg_control is put in place last).
    #[arg(long)]
    pub resume: bool,
    /// Source and WAL archive name.
    #[arg(long, default_value = "postgres")]
    pub source: String,
    /// Recover to this time (RFC 3339, or `YYYY-MM-DD HH:MM:SS[.ffffff][+HH]`; UTC if no zone).
    #[arg(long, group = "target_kind")]
    pub target_time: Option<String>,
    /// Recover to this WAL position (X/Y).
    #[arg(long, group = "target_kind")]
    pub target_lsn: Option<String>,
    /// Recover to the commit of this transaction (as txid_current() returned it).
    #[arg(long, group = "target_kind")]
    pub target_xid: Option<u64>,
    /// Recover to this named restore point (pg_create_restore_point).
    #[arg(long, group = "target_kind")]
    pub target_name: Option<String>,
    /// `immediate`: stop as soon as the backup is consistent.
    #[arg(long, group = "target_kind", value_parser = ["immediate"])]
    pub target: Option<String>,
    /// What the server does at the target.
    #[arg(long, value_parser = ["promote", "pause"], default_value = "promote")]
    pub target_action: String,
    /// recovery_target_timeline: a number, `current` or `latest` (default: `latest` without a
    /// target, the backup's own timeline with one).
    #[arg(long)]
    pub target_timeline: Option<String>,
    /// Start the cluster, wait for recovery to finish and report the point reached.
    #[arg(long)]
    pub start: bool,
    /// Port of the restored cluster (written to its settings).
    #[arg(long)]
    pub port: Option<u16>,
    /// The user to connect as while watching recovery (default: the data directory's owner).
    #[arg(long)]
    pub user: Option<String>,
    /// Directory of pg_ctl (default: PG_BIN, pg_config --bindir, or /usr/lib/postgresql/N/bin).
    #[arg(long)]
    pub pg_bin: Option<PathBuf>,
    /// Restore at most this many bytes per second (e.g. 50000000).
    #[arg(long)]
    pub max_rate: Option<u64>,
    /// Turn archiving off in the restored cluster (drills: never push into the production archive).
    #[arg(long)]
    pub no_archive: bool,
    /// Restore tablespace OID into DIR (default: `<pgdata>.tablespaces/<oid>`).
    #[arg(long = "tablespace", value_name = "OID=DIR")]
    pub tablespaces: Vec<String>,
    /// Seconds recovery may take with --start.
    #[arg(long, default_value = "3600")]
    pub timeout: u64,
}

/// Arguments of `pg standby`.
#[derive(Debug, Args)]
pub struct PgStandbyArgs {
    /// The standby's data directory (created; must be empty unless --resume).
    #[arg(long)]
    pub pgdata: PathBuf,
    /// Complete an interrupted restore into --pgdata.
    #[arg(long)]
    pub resume: bool,
    /// Source and WAL archive name.
    #[arg(long, default_value = "postgres")]
    pub source: String,
    /// Port of the standby (written to its settings).
    #[arg(long)]
    pub port: u16,
    /// The user to connect as while it starts (default: the data directory's owner).
    #[arg(long)]
    pub user: Option<String>,
    /// Directory of pg_ctl (default: PG_BIN, pg_config --bindir, or /usr/lib/postgresql/N/bin).
    #[arg(long)]
    pub pg_bin: Option<PathBuf>,
    /// Restore at most this many bytes per second.
    #[arg(long)]
    pub max_rate: Option<u64>,
    /// Once promoted, do not archive. By default a promoted standby archives its WAL into this
    /// repository (its own region's), not into the old primary's.
    #[arg(long)]
    pub no_archive: bool,
    /// Restore tablespace OID into DIR (default: `<pgdata>.tablespaces/<oid>`).
    #[arg(long = "tablespace", value_name = "OID=DIR")]
    pub tablespaces: Vec<String>,
    /// Seconds the restore and start may take until it is replaying.
    #[arg(long, default_value = "3600")]
    pub timeout: u64,
}

/// Where a Redis command connects.
#[derive(Debug, Args)]
pub struct RedisConnectArgs {
    /// `redis://[user:password@]host:port[/db]`, `rediss://…[?ca_file=F&cert_file=F&key_file=F]`,
    /// or `redis-sentinel://host:port/db?sentinelServiceName=NAME` (a URL with a password is
    /// better given in RESILIENCE_REDIS_URL: the command line is visible to other users).
    #[arg(long, env = "RESILIENCE_REDIS_URL", hide_env_values = true)]
    pub url: String,
    /// The URL is one node of a Redis Cluster: use every primary.
    #[arg(long)]
    pub cluster: bool,
}

/// Redis commands.
#[derive(Debug, Subcommand)]
pub enum RedisCommand {
    /// Back up the keyspace (every primary of a cluster) with SCAN + DUMP + PEXPIRETIME.
    Backup {
        /// Where to connect.
        #[command(flatten)]
        connect: RedisConnectArgs,
        /// Only keys matching this glob pattern.
        #[arg(long = "match", value_name = "PATTERN")]
        pattern: Option<String>,
        /// Keys per SCAN call (and per pipelined round of DUMPs); lower it to spare a busy server.
        #[arg(long, default_value = "1000")]
        scan_count: u32,
        /// Source id (default: redis: and the URL without its password).
        #[arg(long)]
        source: Option<String>,
        /// Labels recorded with the backup.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// Back up an RDB file (BGSAVE's dump.rdb) as one entry.
    BackupRdb {
        /// The RDB file.
        file: PathBuf,
        /// Source id (default: redis-rdb: and the path).
        #[arg(long)]
        source: Option<String>,
    },
    /// Restore a keyspace backup with RESTORE … ABSTTL, pipelined, throttled.
    Restore {
        /// Snapshot id, unique prefix, or `latest`.
        snapshot: String,
        /// Where to connect.
        #[command(flatten)]
        connect: RedisConnectArgs,
        /// Overwrite existing keys (else an existing key is refused and reported).
        #[arg(long)]
        replace: bool,
        /// Only keys matching this glob pattern.
        #[arg(long = "match", value_name = "PATTERN")]
        pattern: Option<String>,
        /// At most N keys per second, or bytes per second with a unit: 50MB, 512KB.
        #[arg(long)]
        max_rate: Option<String>,
        /// RESTOREs in flight at once.
        #[arg(long, default_value = "512")]
        pipeline: usize,
    },
    /// Compare a keyspace backup with a server: key count, and each (or each n-th) key's
    /// value and expiry. Exit 3 on a difference.
    Compare {
        /// Snapshot id, unique prefix, or `latest`.
        snapshot: String,
        /// Where to connect.
        #[command(flatten)]
        connect: RedisConnectArgs,
        /// Check every n-th key (1: all).
        #[arg(long, default_value = "1")]
        sample_every: u64,
        /// Only keys matching this glob pattern.
        #[arg(long = "match", value_name = "PATTERN")]
        pattern: Option<String>,
    },
}

/// Bucket commands.
#[derive(Debug, Subcommand)]
pub enum BucketCommand {
    /// Back up every object under a URL (s3://BUCKET/PREFIX, gs://, az://, a directory).
    Backup {
        /// The bucket (and prefix).
        source_url: String,
        /// Labels recorded with the backup.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Source id (default: bucket: and the URL).
        #[arg(long)]
        source: Option<String>,
        /// Also back up non-current versions and delete markers (an S3 bucket with versioning
        /// enabled; anything else is an error), so that `restore --as-of` can bring an
        /// overwritten or deleted object back as it was.
        #[arg(long)]
        versions: bool,
    },
    /// Restore a bucket backup into a bucket (and prefix), with content types and metadata.
    Restore {
        /// Snapshot id, unique prefix, or `latest`.
        snapshot: String,
        /// Where to write the objects.
        target_url: String,
        /// Only objects whose key starts with this.
        #[arg(long)]
        prefix: Option<String>,
        /// Replace existing objects that differ (else they are refused and named).
        #[arg(long)]
        overwrite: bool,
        /// Read at most this many bytes per second from the repository.
        #[arg(long)]
        max_rate: Option<u64>,
        /// Restore each object as it was at this time (RFC 3339, or `YYYY-MM-DD HH:MM:SS[+HH]`,
        /// UTC without a zone): its newest version not after it; objects deleted or not yet
        /// written then are left out and reported. Needs a backup taken with `--versions`.
        #[arg(long, value_name = "TIME")]
        as_of: Option<String>,
    },
}

/// `resilience rds …`.
#[derive(Debug, Subcommand)]
pub enum RdsCommand {
    /// Take a manual snapshot of an instance or cluster (or pick its newest automated one),
    /// wait until it is available, optionally copy it to another region, and record it in the
    /// catalog (source `rds:<id>`, kind `rds`), where `forget` expires it like any backup.
    Snapshot(RdsSnapshotArgs),
    /// Restore an RDS backup into a new instance (or cluster, for a cluster snapshot).
    Restore(RdsRestoreArgs),
}

/// `resilience rds snapshot`.
#[derive(Debug, clap::Args)]
pub struct RdsSnapshotArgs {
    /// The DB instance.
    #[arg(
        long,
        value_name = "ID",
        required_unless_present = "cluster",
        conflicts_with = "cluster"
    )]
    pub instance: Option<String>,
    /// The Aurora (or Multi-AZ) DB cluster.
    #[arg(long, value_name = "ID")]
    pub cluster: Option<String>,
    /// Record the newest available automated snapshot instead of taking a manual one (AWS
    /// expires automated snapshots itself; a copy made with --copy-to-region is resilience's).
    #[arg(long)]
    pub automated: bool,
    /// The region of the instance or cluster (default: RESILIENCE_RDS_REGION, AWS_REGION).
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    /// Copy the snapshot to this region and wait for the copy.
    #[arg(long, value_name = "REGION")]
    pub copy_to_region: Option<String>,
    /// The KMS key of the copy's region that encrypts the copy (`--kms-key-id` is the
    /// repository's own key, a global option).
    #[arg(long, value_name = "KEY", requires = "copy_to_region")]
    pub copy_kms_key_id: Option<String>,
    /// Source id in the catalog (default: `rds:` followed by the instance or cluster id).
    #[arg(long)]
    pub source: Option<String>,
    /// Labels recorded with the backup.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Seconds between two status polls while waiting.
    #[arg(long, value_name = "SECONDS", default_value_t = 15)]
    pub poll: u64,
    /// Give up waiting after this many seconds (the backup is then recorded failed, naming
    /// the snapshot).
    #[arg(long, value_name = "SECONDS", default_value_t = 4 * 3600)]
    pub timeout: u64,
}

/// `resilience rds restore`.
#[derive(Debug, clap::Args)]
pub struct RdsRestoreArgs {
    /// Snapshot (backup) id, unique prefix, or `latest`.
    pub snapshot: String,
    /// The new instance's identifier (for an instance snapshot).
    #[arg(
        long,
        value_name = "NEW",
        required_unless_present = "cluster",
        conflicts_with = "cluster"
    )]
    pub instance: Option<String>,
    /// The new cluster's identifier (for a cluster snapshot).
    #[arg(long, value_name = "NEW")]
    pub cluster: Option<String>,
    /// Restore the copy in this region (default: the snapshot in its own region).
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    /// Return once RDS accepted the restore, without waiting until it is available.
    #[arg(long)]
    pub no_wait: bool,
    /// Seconds between two status polls while waiting.
    #[arg(long, value_name = "SECONDS", default_value_t = 15)]
    pub poll: u64,
    /// Give up waiting after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 4 * 3600)]
    pub timeout: u64,
}

/// `resilience key …`.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// List the key copies (with --json: an array of {id, provider, created_at, state}).
    List,
    /// Add a copy of the keys for another provider (the repository is opened with the global
    /// credentials).
    Add(KeyAddArgs),
    /// Remove a key copy (refused when it is the last one that opens the repository).
    Remove {
        /// The copy's id (from `key list`).
        key_id: String,
    },
    /// Rotate: a new data key for everything written from now on, old data keys kept for
    /// reading, the key set re-sealed to every copy.
    Rotate {
        /// Also re-encrypt existing data with the new key and then drop the old data keys (for
        /// a leaked data key). Resumable: run it again after an interruption.
        #[arg(long)]
        rewrite: bool,
        /// Read and write at most this many bytes per second.
        #[arg(long)]
        max_rate: Option<u64>,
    },
}

/// `key add`: exactly one new provider.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct KeyAddArgs {
    /// A passphrase, read from this file (its first line).
    #[arg(long, value_name = "FILE")]
    pub new_password_file: Option<PathBuf>,
    /// A key file (64 hex digits; generated with mode 0600 when it does not exist).
    #[arg(long, value_name = "FILE")]
    pub new_key_file: Option<PathBuf>,
    /// A 64-hex-digit key in this environment variable (the `env` provider).
    #[arg(long, value_name = "VAR")]
    pub new_key_env: Option<String>,
    /// An AWS KMS key: id, ARN or alias/NAME.
    #[arg(long, value_name = "ID")]
    pub new_kms_key_id: Option<String>,
    /// A Vault transit key.
    #[arg(long, value_name = "NAME")]
    pub new_vault_transit_key: Option<String>,
}

/// `wal-push`'s options.
#[derive(Debug, Args)]
pub struct WalPushArgs {
    /// The file, as Postgres gives it (%p, relative to the data directory).
    pub path: PathBuf,
    /// The WAL archive (one per cluster).
    #[arg(long, default_value = "postgres")]
    pub source: String,
    /// Push through a background pusher that archives every WAL file Postgres has marked
    /// ready (archive_status/*.ready), --parallel at a time, oldest first; this call exits 0
    /// only once its own file is durable in the repository (never before), and non-zero with
    /// the pusher's error or after --timeout, so Postgres retries. A file Postgres has not
    /// marked ready is pushed synchronously.
    #[arg(long = "async")]
    pub async_push: bool,
    /// The spool of --async: the pusher's lock, log and markers (default: .resilience-push
    /// beside the WAL file, in pg_wal).
    #[arg(long, value_name = "DIR")]
    pub spool: Option<PathBuf>,
    /// Pushes the background pusher runs at once (--async).
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: u16,
    /// Seconds a --async call waits for its file before failing (Postgres then retries).
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub timeout: u64,
    /// Run as the background pusher (started by a --async call; not for direct use).
    #[arg(long, hide = true)]
    pub async_worker: bool,
}

/// `wal-fetch`'s options.
#[derive(Debug, Args)]
pub struct WalFetchArgs {
    /// The WAL file's name (%f).
    pub name: String,
    /// Where to write it (%p).
    pub dest: PathBuf,
    /// The WAL archive (one per cluster).
    #[arg(long, default_value = "postgres")]
    pub source: String,
    /// Fetch the N segments after this one in the background into the spool, verified as
    /// any fetch is, so the next calls are served from there at once (0: no prefetch).
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=256))]
    pub prefetch: u16,
    /// The spool of --prefetch (default: .resilience-prefetch beside %p, in pg_wal).
    #[arg(long, value_name = "DIR")]
    pub spool: Option<PathBuf>,
    /// Run as the background prefetcher (started by a --prefetch call; not for direct use).
    #[arg(long, hide = true)]
    pub prefetch_worker: bool,
}

#[cfg(test)]
mod tests {
    use super::{parse_memory, Cli, WalCli};
    use clap::Parser;

    #[test]
    fn wal_commands_parse_as_the_whole_command_line_parses_them() {
        let lines = [
            "resilience --repo /r --key-file /k wal-fetch --prefetch 8 --source main 000000010000000000000001 pg_wal/RECOVERYXLOG",
            "resilience wal-fetch 000000010000000000000001 x --repo /r --password-file /p --memory 8MiB",
            "resilience wal-fetch --prefetch-worker --spool /s 000000010000000000000001 x",
            "resilience --repo s3://b/p wal-push --async --parallel 4 --source main pg_wal/000000010000000000000001",
            "resilience wal-push pg_wal/00000002.history --json",
            "resilience --repo wal-fetch snapshots",
        ];
        for (i, line) in lines.iter().enumerate() {
            let args: Vec<std::ffi::OsString> = line.split(' ').map(Into::into).collect();
            // The short path takes the WAL commands (and only them).
            assert_eq!(WalCli::try_parse_from(&args).is_ok(), i < 5, "{line}");
            assert_eq!(
                format!("{:?}", Cli::parse_args_from(args.clone())),
                format!("{:?}", Cli::parse_from(args)),
                "{line}"
            );
        }
    }

    #[test]
    fn memory_sizes_parse_with_and_without_units() {
        assert_eq!(parse_memory("64MiB"), Ok(64 << 20));
        assert_eq!(parse_memory("64m"), Ok(64 << 20));
        assert_eq!(parse_memory("2 GiB"), Ok(2 << 30));
        assert_eq!(parse_memory("512KB"), Ok(512 << 10));
        assert_eq!(parse_memory("1000"), Ok(1000));
        for bad in ["", "MiB", "12 parsecs", "0", "-5M", "99999999999999999999G"] {
            assert!(parse_memory(bad).is_err(), "{bad}");
        }
    }
}
