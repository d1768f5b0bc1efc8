//! Build output: numbered lines in the log file and on the build's output channel.
//!
//! The log file (`<storage_path>/log.jsonl`) holds one [`LogLine`] JSON per line; the
//! channel carries [`OutputMessage`]s. Both use the same sequence numbers, so a late
//! listener reads the file up to some `seq` and continues live from `seq + 1` with no gap
//! and no duplicate.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::build::BuildStatus;

/// Name of the log file inside a build's storage folder.
pub const LOG_FILE: &str = "log.jsonl";
/// Folder holding a build's artifacts inside its storage folder.
pub const ARTIFACTS_DIR: &str = "artifacts";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
    /// Lines Kiln itself writes (step headers, checkout, result).
    System,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// 1-based, gapless within an attempt.
    pub seq: u64,
    pub ts: DateTime<Utc>,
    pub stream: Stream,
    /// Which run of the build wrote it; lines of an abandoned attempt are superseded.
    pub attempt: u32,
    pub line: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputMessage {
    /// A batch of consecutive lines, already appended to the log file.
    Lines { lines: Vec<LogLine> },
    /// The build ended; `last_seq` is the last line of the log.
    End {
        status: BuildStatus,
        last_seq: u64,
        attempt: u32,
    },
}
