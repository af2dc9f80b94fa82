//! The errors of the Redis adapter.

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// Connecting failed.
    #[error("cannot connect to {url}: {source}{hint}")]
    Connect {
        /// The URL, without its password.
        url: String,
        /// What the failure usually means (may be empty).
        hint: String,
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
            hint: String::new(),
            source,
        }
    }

    pub(crate) fn with_hint(mut self, text: String) -> Self {
        if let RedisError::Connect { hint, .. } = &mut self {
            *hint = text;
        }
        self
    }
}
