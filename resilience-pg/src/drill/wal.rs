//! How a drill's scratch cluster fetches archived WAL ([`WalFetch`]): by a command Postgres runs
//! for each file, or from copies the library fetched into the scratch directory beforehand.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use resilience_core::repo::Repository;

use crate::archive::WalArchive;
use crate::cluster;
use crate::error::PgError;
use crate::lsn::{SegmentName, WalFileKind};
use crate::recovery::RecoveryPlan;

/// Makes the `restore_command` for the WAL archive a backup names.
pub type RestoreCommandFn = dyn Fn(&str) -> Result<String, PgError> + Send + Sync;

/// How the scratch cluster of a drill fetches the archived WAL it replays.
#[derive(Clone)]
pub enum WalFetch {
    /// Before the cluster starts, the library fetches the archived WAL the recovery can replay
    /// (every timeline history, and the segments from the backup's start to the end of the
    /// archive) into `<scratch>/wal`, and Postgres copies them from there (`cp`): nothing but the
    /// library is needed on the host. The scratch directory must hold that WAL.
    Prefetch,
    /// Postgres runs a command for each file it needs (`restore_command`, with `%f` and `%p`),
    /// made by this function from the name of the backup's WAL archive: for instance
    /// `resilience --repo … --key-file … wal-fetch --source <archive> %f %p`.
    Command(Arc<RestoreCommandFn>),
}

impl WalFetch {
    /// The same `restore_command` whatever the archive.
    pub fn command(restore_command: impl Into<String>) -> Self {
        let command = restore_command.into();
        WalFetch::Command(Arc::new(move |_| Ok(command.clone())))
    }

    /// A `restore_command` made from the name of the backup's WAL archive.
    pub fn command_for_archive(
        make: impl Fn(&str) -> Result<String, PgError> + Send + Sync + 'static,
    ) -> Self {
        WalFetch::Command(Arc::new(make))
    }

    /// The `restore_command` for the WAL archive `wal_source`, in a scratch directory.
    pub(super) fn restore_command(
        &self,
        wal_source: &str,
        scratch: &Path,
    ) -> Result<String, PgError> {
        match self {
            WalFetch::Command(make) => make(wal_source),
            WalFetch::Prefetch => {
                let dir = prefetch_dir(scratch).display().to_string();
                Ok(format!("cp {}/%f %p", sh_quote(&dir)))
            }
        }
    }
}

impl std::fmt::Debug for WalFetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WalFetch::Prefetch => f.write_str("Prefetch"),
            WalFetch::Command(_) => f.write_str("Command(..)"),
        }
    }
}

/// Where [`WalFetch::Prefetch`] puts the WAL.
fn prefetch_dir(scratch: &Path) -> PathBuf {
    scratch.join("wal")
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// What [`prefetch`] fetched.
pub(super) struct Prefetched {
    /// Files written.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// Fetches the WAL `plan` can replay into `<scratch>/wal`, owned like `pgdata`: every history
/// file, and the segments of the backup's timeline and later ones from its start to the plan's
/// last segment.
pub(super) async fn prefetch(
    repo: &Repository,
    plan: &RecoveryPlan,
    scratch: &Path,
    pgdata: &Path,
) -> Result<Prefetched, PgError> {
    let info = &plan.backup.info;
    let size = info.wal_segment_size;
    let wal = WalArchive::new(repo, &info.wal_source)?;
    let start = SegmentName::containing(info.timeline, info.start_lsn, size);
    let last = plan
        .last_segment
        .as_deref()
        .and_then(|n| SegmentName::parse(n, size))
        .map_or(start.segno, |s| s.segno);
    let dir = prefetch_dir(scratch);
    std::fs::create_dir(&dir).map_err(PgError::io("create", dir.display()))?;
    cluster::chown_like(&dir, pgdata)?;
    let mut fetched = Prefetched { files: 0, bytes: 0 };
    for file in wal.list().await? {
        let wanted = match file.kind {
            WalFileKind::History { .. } => true,
            WalFileKind::Segment => SegmentName::parse(&file.name, size).is_some_and(|s| {
                s.timeline >= info.timeline && s.segno >= start.segno && s.segno <= last
            }),
            _ => false,
        };
        if !wanted {
            continue;
        }
        let Some((_, content)) = wal.fetch(&file.name).await? else {
            continue;
        };
        let path = dir.join(&file.name);
        tokio::fs::write(&path, &content)
            .await
            .map_err(PgError::io("write", path.display()))?;
        cluster::chown_like(&path, pgdata)?;
        fetched.files += 1;
        fetched.bytes += content.len() as u64;
    }
    Ok(fetched)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefetch_restore_command_copies_from_the_scratch_directory_quoted() {
        let cmd = WalFetch::Prefetch
            .restore_command("main", Path::new("/tmp/it's here"))
            .unwrap();
        assert_eq!(cmd, r"cp '/tmp/it'\''s here/wal'/%f %p");
        let fixed = WalFetch::command("fetch %f %p");
        assert_eq!(
            fixed.restore_command("x", Path::new("/")).unwrap(),
            "fetch %f %p"
        );
        let per = WalFetch::command_for_archive(|s| Ok(format!("fetch --source {s} %f %p")));
        assert_eq!(
            per.restore_command("main", Path::new("/")).unwrap(),
            "fetch --source main %f %p"
        );
    }
}
