//! The error type of resilience-core: what failed, on which object, and what to do.

use crate::sink::SinkError;
use crate::source::AdapterError;

/// What went wrong, for callers that decide by kind.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A sink operation failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// A source or target failed.
    #[error(transparent)]
    Adapter(#[from] AdapterError),
    /// There is no repository at the location.
    #[error("no repository at {location}: run `resilience init` first, or check the URL")]
    RepositoryNotFound {
        /// Where one was looked for.
        location: String,
    },
    /// `init` found a repository already there.
    #[error("a repository already exists at {location}")]
    AlreadyInitialized {
        /// The location.
        location: String,
    },
    /// No wrapped key in the repository opens with the given credentials.
    #[error("wrong passphrase or key: none of the {tried} key(s) in {location} opens with it")]
    WrongKey {
        /// The repository.
        location: String,
        /// How many wrapped keys were tried.
        tried: usize,
    },
    /// An object's bytes are damaged, truncated, or were not written by this repository's keys.
    #[error("object {object} is damaged: {reason}")]
    Corrupt {
        /// The object's key in the sink (and a blob id where one is concerned).
        object: String,
        /// What check failed.
        reason: String,
    },
    /// A blob that a snapshot references is in no index.
    #[error("blob {blob} is missing from the repository (its pack or index is lost)")]
    BlobMissing {
        /// The blob's id.
        blob: String,
    },
    /// No snapshot matches.
    #[error("snapshot {id} not found")]
    SnapshotNotFound {
        /// What was asked for.
        id: String,
    },
    /// A snapshot id prefix matches several snapshots.
    #[error("snapshot id {id} is ambiguous: it matches {matches} snapshots")]
    AmbiguousSnapshot {
        /// The prefix.
        id: String,
        /// How many it matched.
        matches: usize,
    },
    /// This process's own lock lapsed (a pause, or a store too slow to refresh it), so other
    /// processes may already treat it as gone: the work that relied on it is not committed.
    #[error("our lock {lock} on {location} lapsed: {detail}")]
    LockLapsed {
        /// The repository.
        location: String,
        /// The lock object.
        lock: String,
        /// How long since it was last refreshed, and what that means.
        detail: String,
    },
    /// The repository is locked by another process in a conflicting way.
    #[error("repository {location} is locked: {holder}")]
    Locked {
        /// The repository.
        location: String,
        /// Who holds the conflicting lock.
        holder: String,
    },
    /// An object was written by a newer (or unknown) format version.
    #[error("object {object} has format version {found}, this build reads up to {supported}")]
    UnsupportedFormat {
        /// The object.
        object: String,
        /// Its version.
        found: u32,
        /// The newest this build reads.
        supported: u32,
    },
    /// A key provider failed (a KMS unreachable, a key file unreadable…).
    #[error("key provider {provider}: {message}")]
    KeyProvider {
        /// The provider ("passphrase", "key-file", …).
        provider: String,
        /// What went wrong.
        message: String,
    },
    /// The caller asked for something invalid.
    #[error("{0}")]
    Invalid(String),
    /// A run was told to stop before it finished (shutdown, end of its backup window).
    #[error("{operation} interrupted: {reason}")]
    Interrupted {
        /// What was running (`backup 20261125-…`).
        operation: String,
        /// Why it stopped.
        reason: String,
    },
}

impl Error {
    /// Whether this says an object is damaged, missing or of an unknown format (as opposed to
    /// a store that cannot be reached or a refused operation): another copy may do.
    pub fn is_damage(&self) -> bool {
        match self {
            Error::Corrupt { .. } | Error::UnsupportedFormat { .. } | Error::BlobMissing { .. } => {
                true
            }
            Error::Sink(s) => s.is_not_found(),
            _ => false,
        }
    }

    pub(crate) fn corrupt(object: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            object: object.into(),
            reason: reason.into(),
        }
    }
}

/// Results of resilience-core.
pub type Result<T, E = Error> = std::result::Result<T, E>;
