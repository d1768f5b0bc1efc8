//! What can go wrong talking to the store, split so the api maps each to a status code.

use deadpool_redis::redis::RedisError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A request that is well-formed but cannot apply (a disabled job, an unknown parent).
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// The caller's lease on a build is gone; its write was refused.
    #[error("lease lost: {0}")]
    Stale(String),
    #[error("document at {key} is unreadable: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot reach Redis: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    #[error("cannot reach Redis: {0}")]
    Unavailable(String),
    #[error("Redis command failed: {0}")]
    Redis(#[from] RedisError),
    #[error("invalid Redis URL: {0}")]
    Url(String),
}

impl StoreError {
    pub(crate) fn corrupt(key: &str, source: serde_json::Error) -> Self {
        Self::Corrupt {
            key: key.to_owned(),
            source,
        }
    }

    /// True when the error says Redis is unreachable or failing, not that the request was
    /// wrong: callers retry these.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Pool(_) | Self::Unavailable(_) | Self::Redis(_))
    }
}

/// The first word of a script's error reply, which our scripts use as an error code.
pub(crate) fn script_code(e: &RedisError) -> Option<(&str, String)> {
    let code = e.code()?;
    let detail = e.detail().unwrap_or_default().to_owned();
    Some((code, detail))
}
