//! Kiln's REST api: folders, jobs, builds, logs, nodes, queues and raw keys, all read from
//! and written to Redis through `kiln-store`.

mod app;
mod config;
mod downstream;
mod expiry;
mod notify;
mod openapi;
mod orphans;
mod retention;
mod routes;
pub mod scheduler;
mod scope;
mod settle;
mod storage;

pub use app::{Application, BuildError};
pub use config::ApiConfig;
