//! `wal-push` and `wal-fetch`: Postgres' archive_command and restore_command. Postgres starts
//! one process per file, so both open the repository without loading its index and do one
//! write or one read of the archive.
//!
//! `wal-push --async` opens no repository at all: it waits for the marker of the background
//! pusher ([`resilience_pg::archive::async_push`]), starting one (this binary again, with
//! `--async-worker`) when none runs. `wal-fetch --prefetch N` serves segments a background
//! prefetcher ([`resilience_pg::archive::prefetch`], `--prefetch-worker`) fetched ahead.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use resilience_pg::archive::async_push::{
    self, PushMarker, PusherOptions, WaitOptions, PUSHER_LOCK,
};
use resilience_pg::archive::prefetch::{self, PrefetchOptions, PrefetchRequest, PREFETCHER_LOCK};
use resilience_pg::archive::spool::Spool;
use resilience_pg::archive::{FetchTarget, PushOutcome, WalArchive};
use resilience_pg::lsn::{self, WalFileKind};
use resilience_pg::PgError;

use crate::access;
use crate::cli::{Global, WalFetchArgs, WalPushArgs};
use crate::CliError;

/// Exit status of `wal-fetch` when the archive cannot be read: above 125, so Postgres stops
/// recovery instead of taking the failure for the end of the WAL.
const FETCH_FAILED: u8 = 126;
/// How long a prefetch of the segment asked for may stand still (its file not growing) before
/// the call stops waiting for it and fetches the segment itself.
const PREFETCH_STALL: Duration = Duration::from_millis(500);

/// The directory of a WAL file given as %p (`pg_wal`, relative to the data directory).
fn wal_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn file_name(path: &Path) -> Result<String, CliError> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| CliError::Usage(format!("{} has no file name", path.display())))
}

/// Starts this very command again in the background with `flag` added (the pusher or the
/// prefetcher of `spool`), detached: its own process group, no terminal, its errors appended
/// to `<spool>/<log>`. Not waited for.
fn spawn_worker(spool: &Spool, flag: &str, log: &str) -> Result<(), PgError> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().map_err(PgError::io("locate", "this program"))?;
    let log_path = spool.path(log);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(PgError::io("open", log_path.display()))?;
    std::process::Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .arg(flag)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
        .map_err(PgError::io("start", exe.display()))?;
    Ok(())
}

/// Archives the WAL file at `args.path` (relative to the working directory, as `%p` is).
pub async fn push(g: &Global, args: &WalPushArgs) -> Result<(), CliError> {
    let name = file_name(&args.path)?;
    let wal_dir = wal_dir(&args.path);
    if args.async_push || args.async_worker {
        let spool_dir = args
            .spool
            .clone()
            .unwrap_or_else(|| wal_dir.join(".resilience-push"));
        let spool = Spool::open(&spool_dir)?;
        if args.async_worker {
            return run_pusher(g, args, &wal_dir, &spool).await;
        }
        if async_push::is_ready(&wal_dir, &name) {
            let options = WaitOptions {
                timeout: Duration::from_secs(args.timeout),
                ..WaitOptions::default()
            };
            let ensure = || spawn_worker(&spool, "--async-worker", "pusher.log");
            return Ok(async_push::await_archived(&spool, &args.path, ensure, &options).await?);
        }
        tracing::info!(name, "not marked ready by Postgres: pushed synchronously");
    }
    let repo = access::open(g).await?;
    let wal = WalArchive::new(&repo, &args.source)?;
    match wal.push_file(&name, &args.path).await?.outcome {
        PushOutcome::Stored => tracing::info!(name, "archived"),
        PushOutcome::AlreadyArchived => {
            tracing::info!(name, "already archived with the same content")
        }
    }
    Ok(())
}

/// The background pusher: archives what is ready until idle. A repository that does not open
/// fails every waiting file with that error (its marker), so no caller waits for nothing.
async fn run_pusher(
    g: &Global,
    args: &WalPushArgs,
    wal_dir: &Path,
    spool: &Spool,
) -> Result<(), CliError> {
    let Some(_lock) = spool.try_lock(PUSHER_LOCK)? else {
        return Ok(()); // another pusher runs
    };
    let opened = match access::open(g).await {
        Ok(repo) => WalArchive::new(&repo, &args.source).map_err(CliError::from),
        Err(e) => Err(e),
    };
    let wal = match opened {
        Ok(wal) => wal,
        Err(e) => {
            let failed = PushMarker::failed(&format!("the pusher cannot open the repository: {e}"));
            for name in async_push::ready_files(wal_dir)? {
                if spool.read_marker(&name).ok().flatten().is_none() {
                    spool.write_marker(&name, &failed)?;
                }
            }
            return Err(e);
        }
    };
    let options = PusherOptions {
        parallel: usize::from(args.parallel),
        ..PusherOptions::default()
    };
    let report = async_push::run_pusher(&wal, wal_dir, spool, &options).await?;
    tracing::info!(
        archived = report.archived,
        failed = report.failed,
        "pusher idle, exiting"
    );
    Ok(())
}

/// Writes the archived WAL file `args.name` to `args.dest`; exit 1 quietly if it is not
/// archived.
pub async fn fetch(g: &Global, args: &WalFetchArgs) -> Result<(), CliError> {
    let name = args.name.as_str();
    let failed = |e: CliError| CliError::WithStatus {
        message: format!("wal-fetch {name}: {e}"),
        status: FETCH_FAILED,
    };
    let is_segment = lsn::classify(name) == Some(WalFileKind::Segment);
    let spool = if (args.prefetch > 0 || args.prefetch_worker) && is_segment {
        let dir = args
            .spool
            .clone()
            .unwrap_or_else(|| wal_dir(&args.dest).join(".resilience-prefetch"));
        match Spool::open(&dir) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "no prefetch");
                None
            }
        }
    } else {
        None
    };
    if args.prefetch_worker {
        let Some(spool) = spool else {
            return Ok(());
        };
        return run_prefetcher(g, args, &spool).await.map_err(failed);
    }
    if let Some(spool) = &spool {
        match serve_prefetched(spool, name, &args.dest) {
            Ok(Some(len)) => {
                prefetch_after(spool, name, len);
                return Ok(());
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "fetching it from the repository instead"),
        }
    }
    let repo = access::open(g).await.map_err(failed)?;
    let wal = WalArchive::new(&repo, &args.source).map_err(|e| failed(e.into()))?;
    let target = FetchTarget {
        dest: args.dest.clone(),
        tmp: args.dest.with_extension("resilience-partial"),
        durable: false,
        crc32c_in_name: false,
    };
    // The prefetcher is asked for the next segments as soon as this one's header is read,
    // so that it starts while this segment is being written, not after.
    let owned = name.to_owned();
    let fetched = wal
        .fetch_to_file(name, move |header| {
            if let Some(spool) = &spool {
                prefetch_after(spool, &owned, header.size);
            }
            Ok(target)
        })
        .await;
    if fetched.map_err(|e| failed(e.into()))?.is_none() {
        return Err(CliError::Quiet(1));
    }
    Ok(())
}

/// Serves segment `name` from the spool: at once if it is prefetched, after the prefetcher
/// finished it if it is writing it now (stalled for [`PREFETCH_STALL`]: not waited for);
/// `None` if it is neither.
fn serve_prefetched(spool: &Spool, name: &str, dest: &Path) -> Result<Option<u64>, PgError> {
    if let Some(len) = spool.take_prefetched(name, dest)? {
        return Ok(Some(len));
    }
    if spool.wait_for_prefetch(name, PREFETCH_STALL)? {
        return spool.take_prefetched(name, dest);
    }
    Ok(None)
}

/// After segment `name` (of `len` bytes) was served: stale prefetched segments go, the
/// prefetcher is asked for the ones after it (and started if none runs). Best effort: a
/// failure here costs speed, never the fetch.
fn prefetch_after(spool: &Spool, name: &str, len: u64) {
    let request = PrefetchRequest {
        name: name.to_owned(),
        segment_size: len,
    };
    let done = spool
        .remove_stale_prefetched(&request)
        .and_then(|()| spool.request_prefetch(&request))
        .and_then(|()| spool.locked(PREFETCHER_LOCK))
        .and_then(|running| match running {
            true => Ok(()),
            false => spawn_worker(spool, "--prefetch-worker", "prefetcher.log"),
        });
    if let Err(e) = done {
        tracing::warn!(error = %e, "cannot prefetch the next segments");
    }
}

/// The background prefetcher: fetches ahead of the latest request until idle.
async fn run_prefetcher(g: &Global, args: &WalFetchArgs, spool: &Spool) -> Result<(), CliError> {
    let Some(_lock) = spool.try_lock(PREFETCHER_LOCK)? else {
        return Ok(()); // another prefetcher runs
    };
    let repo = access::open(g).await?;
    let wal = WalArchive::new(&repo, &args.source)?;
    let options = PrefetchOptions {
        count: usize::from(args.prefetch.max(1)),
        ..PrefetchOptions::default()
    };
    let fetched = prefetch::run_prefetcher(&wal, spool, &options).await?;
    tracing::info!(fetched, "prefetcher idle, exiting");
    Ok(())
}
