//! Why a drill could not begin ([`DrillError`]). A drill that began reports its failures as
//! failed checks instead.

use std::path::PathBuf;

/// A drill that could not begin: no snapshot to drill, or no scratch directory to drill in.
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    /// The catalog holds no succeeded backup of the source (or none matching the snapshot asked
    /// for).
    #[error(
        "drill of {source_id}: no succeeded backup {} of this source in the catalog",
        snapshot.as_deref().unwrap_or("(latest)")
    )]
    NoSnapshot {
        /// The source drilled.
        source_id: String,
        /// The snapshot asked for (`None`: the newest).
        snapshot: Option<String>,
    },
    /// The snapshot is a backup of another kind than the drill restores.
    #[error(
        "drill of {source_id}: snapshot {snapshot} is a {found} backup, but this drill restores \
         {expected} backups"
    )]
    WrongKind {
        /// The source drilled.
        source_id: String,
        /// The snapshot.
        snapshot: String,
        /// The kind of its backup.
        found: String,
        /// The kind the drill restores.
        expected: String,
    },
    /// The scratch directory is there already: another drill of the source runs, or one was
    /// killed.
    #[error(
        "scratch directory {} already exists (another drill of {source_id} is running, or one \
         was killed: remove it)",
        path.display()
    )]
    ScratchExists {
        /// The directory.
        path: PathBuf,
        /// The source drilled.
        source_id: String,
    },
    /// The scratch directory could not be made ready.
    #[error("cannot {operation} the drill's scratch directory {}: {source}", path.display())]
    Scratch {
        /// What was done (`create`, `chmod`).
        operation: &'static str,
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The catalog could not be read.
    #[error(transparent)]
    Core(#[from] crate::Error),
}
