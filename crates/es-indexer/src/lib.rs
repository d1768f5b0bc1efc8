//! Kiln's Elasticsearch indexer: consumes the durable list of finished builds, indexes each
//! build's document with the `_bulk` API under the build's key (so a retry overwrites
//! instead of duplicating), and acknowledges an entry only after the cluster did.

mod app;
mod client;
mod config;
mod document;
mod indexer;

pub use app::{backfill, Application, BuildError};
pub use config::{ElasticsearchSettings, IndexerConfig};
