//! Why a ready-made job failed, beyond the errors of the operation it runs.

/// A job's own failures: the operation ran, and what it found is a failure.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Verification found damaged objects.
    #[error("{mode} verification found {count} damaged object(s): {objects}")]
    Damaged {
        /// `quick` or `full`.
        mode: String,
        /// How many objects are damaged.
        count: usize,
        /// Each damaged object and its problem, `; `-separated.
        objects: String,
    },
    /// One or more drills ran and failed a check.
    #[error("drill failed: {0}")]
    DrillFailed(String),
    /// The job was told to stop before it finished.
    #[error("{job} interrupted: {reason}")]
    Interrupted {
        /// The job.
        job: String,
        /// Why it was stopped.
        reason: String,
    },
}
