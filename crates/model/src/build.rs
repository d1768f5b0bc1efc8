//! The build document stored at `job_<name>_<n>`: one build's whole recorded life.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};

use crate::names::{BuildNumber, JobName, Name};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildStatus {
    Queued,
    Running,
    Success,
    Failure,
    Cancelled,
    TimedOut,
    /// The worker running it vanished more often than the job's `lost_retries` allow.
    Lost,
    /// Kiln itself could not run it (checkout failed, workspace not writable...).
    Error,
}

impl BuildStatus {
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Cancelled => "cancelled",
            Self::TimedOut => "timed_out",
            Self::Lost => "lost",
            Self::Error => "error",
        }
    }
}

impl std::fmt::Display for BuildStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerKind {
    /// Through the REST api (or the CLI).
    Api,
    GithubPullRequest,
    GithubPush,
    /// At a minute the job's `schedule` names.
    Schedule,
    /// A build of a job whose `downstream` names this one ended ([`Trigger::upstream`]).
    Upstream,
}

/// Who or what started the build, and the code it builds when known.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trigger {
    pub kind: TriggerKind,
    /// The token name or GitHub login that asked for the build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha: Option<String>,
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    /// The build this one runs again (`POST .../builds/{n}/rebuild`), with its parameters
    /// and revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuild_of: Option<BuildNumber>,
    /// The build whose end queued this one, through its job's `downstream`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Upstream>,
}

/// The upstream build of a downstream one: which build ended how, and how far down a chain
/// of downstream builds this one is (1 for a build queued by one someone asked for), so a
/// cycle of jobs naming each other stops at [`crate::job::MAX_DOWNSTREAM_DEPTH`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Upstream {
    pub job: JobName,
    pub number: BuildNumber,
    pub status: BuildStatus,
    pub depth: u32,
}

impl Trigger {
    /// A trigger with nothing but its kind and who asked.
    pub fn new(kind: TriggerKind, by: Option<String>) -> Self {
        Self {
            kind,
            by,
            sha: None,
            git_ref: None,
            rebuild_of: None,
            upstream: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepResult {
    pub name: String,
    pub status: BuildStatus,
    #[serde(default)]
    pub exit_code: Option<i32>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_ms: u64,
    /// How many times the step ran (its `retries` ran it again after a failure); the
    /// status and exit code are the last run's, the times span them all.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub attempts: u32,
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

/// A build document. Written whole by the store's atomic scripts; fields a Lua script
/// edits (`status`, `attempt`, `reason`, `node`) are plain scalars so that the script's JSON
/// round trip keeps the document readable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildDocument {
    #[serde(default = "crate::schema_version")]
    pub schema_version: u32,
    pub job: JobName,
    pub number: BuildNumber,
    #[serde(default)]
    pub folder: Option<Name>,
    pub status: BuildStatus,
    pub trigger: Trigger,
    #[serde(default, deserialize_with = "map_or_empty")]
    pub parameters: BTreeMap<String, String>,
    pub queue: Name,
    pub queued_at: DateTime<Utc>,
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default, deserialize_with = "vec_or_empty")]
    pub steps: Vec<StepResult>,
    /// The worker running or last running it.
    #[serde(default)]
    pub node: Option<String>,
    /// 1 for the first run; +1 each time a lost worker's build is requeued.
    pub attempt: u32,
    /// Where its log, step results and artifacts live, relative to the storage root:
    /// `jobs/<folder>/.../<job>/<n>`.
    pub storage_path: String,
    /// Why it waits, why it was lost, or what went wrong, in words for people.
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub cancel_requested: bool,
    /// The `concurrency_group` whose slots it takes, as its job named when it was
    /// triggered: the scripts that end it free the slot there even if the job has moved
    /// to another group since. `None`: its job's own slots, if it has a limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_group: Option<Name>,
    /// Set while the build is pinned (`PUT .../keep`): retention, by count or by age, never
    /// removes it, so a release build outlives the history around it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<Keep>,
    /// The builds its end queued through its job's `downstream` (each one's
    /// `trigger.upstream` names this build): the way down a chain, as `upstream` is the way up.
    #[serde(
        default,
        deserialize_with = "vec_or_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub downstream_builds: Vec<BuildLink>,
    /// When the files it archived were removed under its job's `retention.artifacts_days`
    /// (the build, its log and steps stay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts_expired_at: Option<DateTime<Utc>>,
    /// Its cell, for a build of a job with a `matrix`: the trigger queued the whole group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matrix: Option<crate::MatrixCell>,
}

/// A build named by its job and number, as documents link to each other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildLink {
    pub job: JobName,
    pub number: BuildNumber,
}

/// Who pinned a build, when and why: a pinned build stays until someone unpins it or its
/// job is deleted, so the next person to wonder why it is still there can ask.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Keep {
    pub by: String,
    pub at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Lua's cjson writes an empty array as `{}`; accept both so a script's round trip of a
/// document with no steps yet stays readable.
fn vec_or_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either<T> {
        List(Vec<T>),
        Empty(BTreeMap<String, serde_json::Value>),
    }
    match Option::<Either<T>>::deserialize(d)? {
        Some(Either::List(v)) => Ok(v),
        Some(Either::Empty(m)) if m.is_empty() => Ok(Vec::new()),
        Some(Either::Empty(_)) => Err(serde::de::Error::custom("expected a list")),
        None => Ok(Vec::new()),
    }
}

/// The same tolerance for maps, which cjson may write as `[]` when empty.
fn map_or_empty<'de, D>(d: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Map(BTreeMap<String, String>),
        Empty(Vec<serde_json::Value>),
    }
    match Option::<Either>::deserialize(d)? {
        Some(Either::Map(m)) => Ok(m),
        Some(Either::Empty(v)) if v.is_empty() => Ok(BTreeMap::new()),
        Some(Either::Empty(_)) => Err(serde::de::Error::custom("expected an object")),
        None => Ok(BTreeMap::new()),
    }
}

impl BuildDocument {
    pub fn build_ref(&self) -> crate::BuildRef {
        crate::BuildRef::new(self.job.clone(), self.number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_lower_case_in_json() {
        let all = [
            BuildStatus::Queued,
            BuildStatus::Running,
            BuildStatus::Success,
            BuildStatus::Failure,
            BuildStatus::Cancelled,
            BuildStatus::TimedOut,
            BuildStatus::Lost,
            BuildStatus::Error,
        ];
        for s in all {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert!(!BuildStatus::Running.is_final());
        assert!(BuildStatus::Lost.is_final());
    }

    #[test]
    fn a_document_round_tripped_through_lua_cjson_still_reads() {
        let raw = r#"{"job":"app","number":3,"status":"queued","trigger":{"kind":"api"},
            "parameters":[],"queue":"default","queued_at":"2026-11-30T00:00:00Z",
            "steps":{},"attempt":1,"storage_path":"jobs/app/3","started_at":null}"#;
        let d: BuildDocument = serde_json::from_str(raw).unwrap();
        assert!(d.steps.is_empty() && d.parameters.is_empty());
        assert_eq!(d.schema_version, crate::SCHEMA_VERSION);
    }
}
