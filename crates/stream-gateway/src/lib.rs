//! Kiln's stream gateway: WebSocket relay of live build output (bridged with the log file
//! by sequence number, so a late or resuming watcher gets every line exactly once), build
//! events and node heartbeats. One Redis subscription per channel however many watch it.

mod app;
mod build_stream;
mod config;
mod hub;
mod live_streams;
mod log_cursor;
mod session;

pub use app::{Application, BuildError};
pub use config::{GatewayConfig, GatewaySettings};
