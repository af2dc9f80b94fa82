//! The errors of the Postgres adapter: what failed, on which object (segment, table, file).

use resilience_core::sink::SinkError;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The repository engine failed.
    #[error(transparent)]
    Core(#[from] resilience_core::Error),
    /// A sink operation failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// A query or connection to Postgres failed.
    #[error("postgres: {context}: {}", describe(source))]
    Postgres {
        /// What was being done.
        context: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// Connecting to Postgres failed.
    #[error(transparent)]
    Connect(#[from] crate::connect::ConnectError),
    /// A local file operation failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Different bytes were pushed under the name of an archived WAL file; the stored one is kept.
    #[error("WAL file {name} is already archived with different content ({object}); the archived copy is kept. Two clusters may be archiving into the same source: give each its own --source")]
    WalConflict {
        /// The WAL file's name.
        name: String,
        /// The object holding the archived copy.
        object: String,
    },
    /// Another push of different bytes under the same WAL file name is under way; this one
    /// backed off without writing anything (the archive is unchanged; Postgres retries).
    #[error("WAL file {name}: another push of different bytes is under way ({claim}); nothing was written. Two clusters may be archiving into the same source: give each its own --source")]
    WalPushContended {
        /// The WAL file's name.
        name: String,
        /// The other push's claim.
        claim: String,
    },
    /// A WAL file's bytes changed between the two reads of a push (its summary and digest, then
    /// its sealing): nothing was written, and Postgres retries.
    #[error("WAL file {name} ({path}) changed while it was being archived; nothing was written")]
    WalChanged {
        /// The WAL file's name.
        name: String,
        /// Where it was read.
        path: String,
    },
    /// The background pusher of `wal-push --async` could not archive a WAL file (its error
    /// marker, reported to the caller: Postgres retries, and the pusher tries again).
    #[error("WAL file {name} was not archived: {message}")]
    WalAsyncPush {
        /// The WAL file's name.
        name: String,
        /// The pusher's error.
        message: String,
    },
    /// A spool file is damaged (a marker that does not decode, a prefetched segment whose
    /// bytes do not match their recorded BLAKE3).
    #[error("spool file {path} is damaged: {reason}")]
    SpoolDamaged {
        /// The file.
        path: String,
        /// What check failed.
        reason: String,
    },
    /// An archived object is damaged.
    #[error("object {object} is damaged: {reason}")]
    Corrupt {
        /// The object.
        object: String,
        /// What check failed.
        reason: String,
    },
    /// The WAL needed to reach a recovery target is not all archived.
    #[error("WAL gap: {0}")]
    WalGap(String),
    /// Recovery did not reach its target, or the cluster did not start.
    #[error("recovery failed: {0}")]
    Recovery(String),
    /// The cluster is not set up for what was asked (archive_mode off, wrong data directory…).
    #[error("{0}")]
    Setup(String),
    /// The caller asked for something invalid.
    #[error("{0}")]
    Invalid(String),
}

/// A driver error in words, with the server's message and detail when it has them (the
/// driver's own `Display` says only "db error").
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{}: {}", db.severity(), db.message());
            if let Some(d) = db.detail() {
                s.push_str(&format!(" ({d})"));
            }
            s
        }
        None => {
            // The driver's own text is only the kind ("error performing TLS handshake"): add
            // the causes, which say what went wrong.
            let mut s = e.to_string();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                let text = c.to_string();
                if !s.contains(&text) {
                    s.push_str(": ");
                    s.push_str(&text);
                }
                cause = c.source();
            }
            s
        }
    }
}

impl PgError {
    pub(crate) fn corrupt(object: &str, reason: impl Into<String>) -> Self {
        PgError::Corrupt {
            object: object.to_owned(),
            reason: reason.into(),
        }
    }

    pub(crate) fn pg(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Self {
        let context = context.into();
        move |source| PgError::Postgres { context, source }
    }

    /// A mapper of an I/O error into [`PgError::Io`] naming the operation and the file.
    pub fn io(
        operation: &'static str,
        path: impl std::fmt::Display,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_string();
        move |source| PgError::Io {
            operation,
            path,
            source,
        }
    }
}
