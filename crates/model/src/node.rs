//! What a worker says about itself, at `kiln:node:<id>` and on the nodes channel.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::names::Name;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: Name,
    pub queue: Name,
    pub concurrency: u32,
    /// Build keys it runs now; empty when idle.
    pub builds: Vec<String>,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// `idle`, `busy` or `draining` (stopping, claims nothing new).
    pub state: String,
}
