//! Kiln's GitHub integration: a webhook endpoint that turns pull requests and branch pushes
//! into their own jobs (copies of a linked job) and builds, a reporter that posts commit
//! statuses back, a reconcile scan that catches up with webhooks GitHub never delivered, and
//! a cleanup task for jobs of closed pull requests and deleted branches.

mod app;
mod cleanup;
mod client;
mod config;
mod derive;
mod payload;
mod reconcile;
mod reporter;
mod webhook;

pub use app::{Application, BuildError};
pub use config::{GithubSettings, IngestConfig};
pub use kiln_service_kit::signature::sign;
