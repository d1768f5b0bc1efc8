//! Build state changes published on [`crate::keys::EVENTS_CHANNEL`] for live views.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::build::BuildStatus;
use crate::names::{BuildNumber, JobName, Name};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildEventKind {
    Queued,
    Started,
    Requeued,
    Finished,
    CancelRequested,
}

/// A past-tense fact about one build. Pub/sub only: a consumer that must not miss one reads
/// the durable `kiln:finished:<consumer>` list instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildEvent {
    pub kind: BuildEventKind,
    pub job: JobName,
    pub number: BuildNumber,
    pub status: BuildStatus,
    #[serde(default)]
    pub folder: Option<Name>,
    pub at: DateTime<Utc>,
}
