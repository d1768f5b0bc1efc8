//! What every Kiln binary needs, written once: layered configuration, telemetry, the
//! shutdown signal, bearer-token auth, the JSON error shape (for bad query strings and
//! oversized bodies too), HMAC signatures, and the `/healthz`, `/readyz` and `/metrics`
//! endpoints.

pub mod auth;
pub mod body;
pub mod config;
pub mod error;
pub mod health;
pub mod query;
pub mod server;
pub mod shutdown;
pub mod signature;
pub mod telemetry;

pub use auth::{Principal, Role};
pub use config::{Common, ConfigError};
pub use error::{ApiError, ErrorBody};
pub use server::StartError;
