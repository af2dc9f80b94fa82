//! The error type of resilience-core: what failed, on which object, and what to do.

use crate::catalog::{BackupStatus, Tier};
use crate::format::chunker::InvalidChunkerParams;
use crate::keys::ring::KeyRingError;
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
    /// The key copies or key sets refuse an operation (a stale copy, the last copy, …).
    #[error(transparent)]
    KeyRing(#[from] KeyRingError),
    /// Chunker parameters that FastCDC does not accept.
    #[error(transparent)]
    Chunker(#[from] InvalidChunkerParams),
    /// A backup's status does not allow the operation.
    #[error("backup {backup} is {status}: {refused}")]
    BackupStatus {
        /// What is refused (`refusing to expire it`, `only succeeded backups move between
        /// tiers`, …).
        refused: &'static str,
        /// The backup.
        backup: String,
        /// Its status.
        status: BackupStatus,
    },
    /// A backup lives in a tier whose store is not attached.
    #[error("backup {backup} is in the {tier:?} tier: attach that store to {operation} it (--cold-repo)")]
    TierNotAttached {
        /// What was asked (`restore`, `expire`).
        operation: &'static str,
        /// The backup.
        backup: String,
        /// Its tier.
        tier: Tier,
    },
    /// A tier operation without a cold tier attached.
    #[error("no cold tier attached (--cold-repo)")]
    NoColdTier,
    /// The store attached as the cold tier holds another repository.
    #[error("{location} holds repository {found}, not {expected}: it is not this repository's cold tier")]
    NotColdTier {
        /// The store.
        location: String,
        /// The repository id it holds.
        found: String,
        /// This repository's id.
        expected: String,
    },
    /// Prune cannot read a snapshot's manifest, so it cannot know what is referenced.
    #[error("prune stopped: manifest {manifest} cannot be read, so the blobs it references are unknown; nothing was deleted")]
    PruneManifestUnreadable {
        /// The manifest object.
        manifest: String,
        /// Why it cannot be read.
        #[source]
        source: Box<Error>,
    },
    /// A hold's release was written but a revision placing the hold could not be deleted.
    #[error("the release of the legal hold on backup {backup} is written, but {revision}, which places the hold, could not be deleted: releasing a hold needs the maintenance credential; the hold stays in force")]
    HoldNotReleased {
        /// The backup.
        backup: String,
        /// The catalog revision that places the hold.
        revision: String,
        /// Why it could not be deleted.
        #[source]
        source: Box<Error>,
    },
    /// A replica keeps a superseded key set because it cannot be deleted there.
    #[error("cannot remove the superseded key-set generation {generation} from the replica {replica}: until it goes, the replica's key set stays at that generation; the replication credential needs delete permission on keys/keyset-*")]
    ReplicaKeySetNotRemoved {
        /// The superseded generation's object.
        generation: String,
        /// The replica.
        replica: String,
        /// The store's refusal.
        #[source]
        source: Box<SinkError>,
    },
    /// A task an operation runs in the background panicked or was cancelled.
    #[error("{task} task failed")]
    Task {
        /// Which task (`pack upload`, `verification`, …).
        task: &'static str,
        /// How it ended.
        #[source]
        source: tokio::task::JoinError,
    },
    /// An invariant of the engine broke: a bug in resilience or in a source or target adapter.
    #[error("{operation}: {detail} (a bug: please report it)")]
    Internal {
        /// The operation (`backup`, `restore`).
        operation: &'static str,
        /// What broke.
        detail: &'static str,
    },
    /// A source ended before it finished its snapshot (it gave no closing metadata).
    #[error("source {source_id} stopped before finishing its snapshot")]
    SourceUnfinished {
        /// The source.
        source_id: String,
    },
    /// An error already reported for one object, repeated for another by its text (errors do
    /// not clone).
    #[error("{0}")]
    Repeated(String),
    /// The caller asked for something that cannot be done with these arguments.
    #[error("{0}")]
    Usage(String),
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

    /// A failed background task of `task`.
    pub(crate) fn task(task: &'static str) -> impl FnOnce(tokio::task::JoinError) -> Self {
        move |source| Error::Task { task, source }
    }

    pub(crate) fn corrupt(object: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            object: object.into(),
            reason: reason.into(),
        }
    }
}

/// An error's text followed by each cause's that it does not already contain, joined by `: `
/// (a restore error names the damaged object; its cause says what was wrong with it).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    text
}

/// Results of resilience-core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every wrapper's text leaves its source's to the chain, so each appears once.
    #[test]
    fn a_wrapper_does_not_repeat_its_source() {
        let corrupt = || Box::new(Error::corrupt("snapshots/x", "authentication failed"));
        let wrappers: Vec<Box<dyn std::error::Error>> = vec![
            Box::new(Error::PruneManifestUnreadable {
                manifest: "snapshots/x".into(),
                source: corrupt(),
            }),
            Box::new(Error::HoldNotReleased {
                backup: "b".into(),
                revision: "catalog/b/0000000003-succeeded".into(),
                source: corrupt(),
            }),
            Box::new(Error::ReplicaKeySetNotRemoved {
                generation: "keys/keyset-0000000002".into(),
                replica: "memory://".into(),
                source: Box::new(SinkError::Refused {
                    operation: "delete",
                    key: "keys/keyset-0000000002".into(),
                    reason: "append-only".into(),
                }),
            }),
            Box::new(crate::retention::StandardPolicy::from_toml("keep_dayly = 1").unwrap_err()),
            Box::new(crate::time::schedule::JobSchedule::new("j", "not cron", "UTC").unwrap_err()),
        ];
        for e in wrappers {
            let source = e.source().expect("a source").to_string();
            assert!(!e.to_string().contains(&source), "{e} repeats {source}");
            let chain = error_chain(e.as_ref());
            assert_eq!(chain.matches(&source).count(), 1, "{chain}");
        }
    }
}
