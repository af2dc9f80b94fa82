//! The errors of the Redis adapter.

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// Connecting failed.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The URL, without its password.
        url: String,
        /// The client's error.
        #[source]
        source: fred::error::Error,
    },
    /// The server or cluster is not usable as asked.
    #[error("{0}")]
    Setup(String),
}

impl RedisError {
    pub(crate) fn connect(url: &str, source: fred::error::Error) -> Self {
        RedisError::Connect {
            url: crate::source::redact(url),
            source,
        }
    }
}
