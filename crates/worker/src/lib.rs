//! Kiln's worker: claims queued builds under a lease, runs their steps as child processes,
//! streams every output line live and into file storage, and records the result, fenced by
//! its lease token so a worker that lost its lease can never overwrite a newer run.

mod app;
mod claim;
mod config;
mod execute;
mod fail_fast;
mod heartbeat;
mod http;
mod local_fs;
mod output;
mod process;
mod prune;
mod reaper;
mod run;
mod spares;
mod start;
mod state;
mod workspace;

pub use app::{Application, BuildError};
pub use config::{WorkerConfig, WorkerSettings};
