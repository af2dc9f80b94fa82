//! The RDS adapter's error: what failed, on which snapshot, instance or cluster, in which
//! region, with AWS' own error code when AWS answered one.

/// An RDS call or snapshot that failed.
#[derive(Debug, thiserror::Error)]
pub enum RdsError {
    /// The configuration (endpoint, region, credentials) is incomplete or refused.
    #[error("RDS configuration: {0}")]
    Config(String),
    /// The request did not reach RDS or its answer could not be read.
    #[error("RDS {action} on {object} at {endpoint} failed")]
    Request {
        /// The API action (`CreateDBSnapshot`, …).
        action: &'static str,
        /// The snapshot, instance or cluster concerned.
        object: String,
        /// Where the request went.
        endpoint: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// AWS answered with an error.
    #[error("RDS {action} on {object} in {region} failed: {code}: {message} (HTTP {status})")]
    Aws {
        /// The API action.
        action: &'static str,
        /// The snapshot, instance or cluster concerned.
        object: String,
        /// The region asked.
        region: String,
        /// HTTP status.
        status: u16,
        /// AWS' error code (`DBInstanceNotFound`, `InvalidDBSnapshotState`, …).
        code: String,
        /// AWS' message.
        message: String,
    },
    /// An answer that is not what the API documents.
    #[error("RDS {action} on {object}: unexpected answer: {message}")]
    Answer {
        /// The API action.
        action: &'static str,
        /// The snapshot, instance or cluster concerned.
        object: String,
        /// What is wrong with it.
        message: String,
    },
    /// A snapshot or server went into a state it does not come back from.
    #[error("{object} in {region} is {status}: {expected}")]
    BadState {
        /// The snapshot, instance or cluster.
        object: String,
        /// Its region.
        region: String,
        /// Its status.
        status: String,
        /// What was awaited.
        expected: String,
    },
    /// Waiting for a snapshot or server ran past its deadline.
    #[error("{object} in {region} is still {status} after {waited_seconds} s (waiting until it is {wanted})")]
    Timeout {
        /// The snapshot, instance or cluster.
        object: String,
        /// Its region.
        region: String,
        /// Its last status.
        status: String,
        /// The status awaited.
        wanted: String,
        /// How long it was awaited.
        waited_seconds: u64,
    },
    /// `--automated` found no available automated snapshot.
    #[error("{resource} in {region} has no available automated snapshot (is its backup retention period above 0?)")]
    NoAutomatedSnapshot {
        /// The instance or cluster.
        resource: String,
        /// Its region.
        region: String,
    },
    /// A catalog record that is not an RDS snapshot's, or whose metadata is unreadable.
    #[error("backup {backup}: {message}")]
    Record {
        /// The backup id.
        backup: String,
        /// What is wrong.
        message: String,
    },
    /// The repository or its catalog failed.
    #[error(transparent)]
    Core(#[from] resilience_core::Error),
}

impl RdsError {
    /// AWS' error code, when AWS answered one.
    pub fn code(&self) -> Option<&str> {
        match self {
            RdsError::Aws { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether AWS said the snapshot, instance or cluster does not exist.
    pub fn is_not_found(&self) -> bool {
        self.code()
            .is_some_and(|c| c.ends_with("NotFound") || c.ends_with("NotFoundFault"))
    }
}
