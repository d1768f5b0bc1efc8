//! What every service's `Application::build` shares: binding its HTTP port (port 0 picks a
//! free one, and the real address is reported), and the error start-up fails with.

use std::net::{SocketAddr, TcpListener};

use kiln_store::StoreError;

use crate::config::{ConfigError, HttpSettings};

/// Why a service could not start; each variant names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A dependency other than Redis could not be set up (GitHub or Elasticsearch client,
    /// the Redis subscriber).
    #[error("{0}")]
    Dependency(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

impl StartError {
    pub fn bind(addr: impl ToString, source: std::io::Error) -> Self {
        Self::Bind {
            addr: addr.to_string(),
            source,
        }
    }
}

/// Binds `http.bind` and returns the listener with the address actually bound.
pub fn bind(http: &HttpSettings) -> Result<(TcpListener, SocketAddr), StartError> {
    let addr = http.addr()?;
    let listener = TcpListener::bind(addr).map_err(|e| StartError::bind(addr, e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| StartError::bind(addr, e))?;
    Ok((listener, bound))
}
