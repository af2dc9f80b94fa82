//! `wal-push` and `wal-fetch`: Postgres' archive_command and restore_command. Postgres starts
//! one process per file, so both open the repository without loading its index and do one
//! write or one read of the archive.

use std::path::Path;

use bytes::Bytes;
use resilience_pg::archive::{PushOutcome, WalArchive};

use crate::access;
use crate::cli::Global;
use crate::CliError;

/// Exit status of `wal-fetch` when the archive cannot be read: above 125, so Postgres stops
/// recovery instead of taking the failure for the end of the WAL.
const FETCH_FAILED: u8 = 126;

/// Archives the WAL file at `path` (relative to the working directory, as `%p` is).
pub async fn push(g: &Global, path: &Path, source: &str) -> Result<(), CliError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| CliError::Usage(format!("{} has no file name", path.display())))?
        .to_owned();
    let content = tokio::fs::read(path)
        .await
        .map_err(|e| CliError::Usage(format!("cannot read WAL file {}: {e}", path.display())))?;
    let repo = access::open(g).await?;
    let wal = WalArchive::new(&repo, source)?;
    match wal.push(&name, Bytes::from(content)).await? {
        PushOutcome::Stored => tracing::info!(name, "archived"),
        PushOutcome::AlreadyArchived => {
            tracing::info!(name, "already archived with the same content")
        }
    }
    Ok(())
}

/// Writes the archived WAL file `name` to `dest`; exit 1 quietly if it is not archived.
pub async fn fetch(g: &Global, name: &str, dest: &Path, source: &str) -> Result<(), CliError> {
    let failed = |e: CliError| CliError::WithStatus {
        message: format!("wal-fetch {name}: {e}"),
        status: FETCH_FAILED,
    };
    let repo = access::open(g).await.map_err(failed)?;
    let wal = WalArchive::new(&repo, source).map_err(|e| failed(e.into()))?;
    let Some((_, content)) = wal.fetch(name).await.map_err(|e| failed(e.into()))? else {
        return Err(CliError::Quiet(1));
    };
    let tmp = dest.with_extension("resilience-partial");
    let write = async {
        tokio::fs::write(&tmp, &content).await?;
        tokio::fs::rename(&tmp, dest).await
    };
    write.await.map_err(|e| CliError::WithStatus {
        message: format!("wal-fetch {name}: cannot write {}: {e}", dest.display()),
        status: FETCH_FAILED,
    })
}
