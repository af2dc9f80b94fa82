//! `resilience`: the reference backup binary, built only from the public API of
//! `resilience-core` and `resilience-objstore`.

mod access;
mod cli;
mod commands;
mod config;
mod daemon;
mod drill;
mod output;
mod progress;
mod signals;
mod wal_fetch;

use std::process::ExitCode;

/// A failure of a command, with the exit status it deserves.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The engine failed.
    #[error(transparent)]
    Core(#[from] resilience_core::Error),
    /// A store URL cannot be used.
    #[error(transparent)]
    Store(#[from] resilience_objstore::StoreConfigError),
    /// The Postgres adapter failed.
    #[error(transparent)]
    Pg(#[from] resilience_pg::PgError),
    /// An RDS call or snapshot failed.
    #[error(transparent)]
    Rds(#[from] resilience_objstore::rds::RdsError),
    /// `pg check` found gaps (exit status 3).
    #[error("the WAL archive cannot recover every backup: {0} problem(s)")]
    WalGaps(usize),
    /// Exit with this status and print nothing (wal-fetch of a file that is not archived).
    #[error("")]
    Quiet(u8),
    /// Exit with this status after printing the error (wal-fetch that must stop recovery).
    #[error("{message}")]
    WithStatus {
        /// The error.
        message: String,
        /// The exit status.
        status: u8,
    },
    /// The arguments are wrong.
    #[error("{0}")]
    Usage(String),
    /// Verification found damage (exit status 3).
    #[error("the repository is damaged: {0} damaged object(s)")]
    Damaged(usize),
}

impl From<resilience_objstore::OpenError> for CliError {
    fn from(e: resilience_objstore::OpenError) -> Self {
        match e {
            resilience_objstore::OpenError::Usage(message) => CliError::Usage(message),
            resilience_objstore::OpenError::Store(e) => CliError::Store(e),
            resilience_objstore::OpenError::Core(e) => CliError::Core(e),
        }
    }
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Damaged(_) | CliError::WalGaps(_) => 3,
            CliError::Quiet(status) => *status,
            CliError::WithStatus { status, .. } => *status,
            CliError::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// Tunes glibc's malloc for buffers of a chunk's size, allocated and freed thousands of times.
///
/// - One arena. glibc otherwise keeps one per thread that allocates (up to eight per core),
///   and the blocking pool's threads each hold freed chunk and pack buffers in their own: a
///   1 GiB backup peaked at 286 MiB with the default, 191 MiB with one arena
///   (benches/compare-restic.sh), for the same work. With two, a Postgres base backup at
///   pgbench scale 100 (`--memory 64MiB`) peaked at 58.2–62.8 MiB, once 66 MiB in the bench;
///   with one at 57.8–58.3 MiB, and neither it nor a directory backup of 1 GiB or of 100,000
///   small files got slower (2026-12-06, alternating runs).
/// - Buffers below 8 MiB (chunks of up to 4 MiB and their sealed or decoded forms) come from
///   the arenas, and up to 32 MiB freed at an arena's top stays there. By default glibc gives
///   such memory back to the system as soon as it is freed and takes it again for the next
///   chunk: a restore of a 4.7 GB Postgres cluster took 600,000 page faults and 4.0 s of system
///   time, 6,000 and 2.6 s with these settings (peak RSS 38 → 44 MiB; a base backup's
///   unchanged). The budget bounds what is in use at once, so what stays is what the peak used.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets tunables of the allocator; called before any other thread.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 8 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20);
    }
}

/// How much lower the prefetcher's CPU priority is than recovery's (a nice value).
const PREFETCHER_NICENESS: libc::c_int = 10;

/// Lowers this process's CPU priority (before its runtime's threads start, which inherit it):
/// the prefetcher works for recovery, whose replay and restore_command calls then go first
/// when they share a core with it (on two cores, 32 segments fetched as recovery does took
/// 519–577 ms against 549–606).
fn yield_to_recovery() {
    // SAFETY: nice only changes this thread's scheduling priority.
    let failed = unsafe {
        *libc::__errno_location() = 0;
        libc::nice(PREFETCHER_NICENESS) == -1 && *libc::__errno_location() != 0
    };
    if failed {
        tracing::debug!("cannot lower the prefetcher's priority");
    }
}

fn main() -> ExitCode {
    tune_malloc();
    let cli = cli::Cli::parse_args();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RESILIENCE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    // Postgres starts wal-push and wal-fetch once per file: one thread does for them (their
    // CPU work runs on the blocking pool); the background pusher and prefetcher, and every
    // other command, get the multi-threaded runtime.
    let one_shot = match &cli.command {
        cli::Command::WalPush(a) => !a.async_worker,
        cli::Command::WalFetch(a) => !a.prefetch_worker,
        _ => false,
    };
    if matches!(&cli.command, cli::Command::WalFetch(a) if a.prefetch_worker) {
        yield_to_recovery();
    }
    let mut builder = if one_shot {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Quiet(status)) => ExitCode::from(status),
        Err(e) => {
            report(&e);
            ExitCode::from(e.exit_code())
        }
    }
}

/// Prints `error: <message>` and every cause not already part of the message to stderr.
fn report(e: &CliError) {
    let message = e.to_string();
    eprintln!("error: {message}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !message.contains(&text) {
            eprintln!("caused by: {text}");
        }
        source = s.source();
    }
}
