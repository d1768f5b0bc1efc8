//! The job definition stored at `job_<name>`: what a build of the job runs, and where.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::build::BuildStatus;
use crate::names::{JobName, Name};

/// Longest a build may be allowed to run (one week).
pub const MAX_TIMEOUT_SECS: u64 = 7 * 24 * 3600;
/// Most builds a job may keep in Redis.
pub const MAX_RETENTION: u32 = 10_000;
/// Longest `retention.days` (ten years).
pub const MAX_RETENTION_DAYS: u32 = 3_650;
/// Highest `concurrency` a job may name (a higher one would be no limit at all).
pub const MAX_CONCURRENCY: u32 = 1_000;
/// Most `choices` a parameter may list.
pub const MAX_CHOICES: usize = 100;
/// Most times a step's `retries` may run it again.
pub const MAX_STEP_RETRIES: u32 = 10;
/// Most jobs one job's `downstream` may name.
pub const MAX_DOWNSTREAM: usize = 20;
/// Longest chain of downstream builds (a build someone asked for is not counted): jobs that
/// name each other in a cycle build this many times around, then stop with a dead letter.
pub const MAX_DOWNSTREAM_DEPTH: u32 = 16;
/// What a stored definition holds exactly when it names downstream jobs: the scripts that
/// end a build look for it, rather than decode the definition, to decide whether the api's
/// downstream consumer must hear of the end.
pub const DOWNSTREAM_MARK: &str = "\"downstream\":[";

/// What a stored definition holds exactly when it names notification targets.
pub const NOTIFY_MARK: &str = "\"notify\":[";

/// The marks the scripts that end a build look for, one per line: a definition holding any
/// of them sends the ended build to the api (`keys::downstream_finished`), which queues its
/// downstream builds and hands it to the notifier.
pub const AFTER_BUILD_MARKS: &str = "\"downstream\":[\n\"notify\":[";

/// Most notification targets one job may name.
pub const MAX_NOTIFY: usize = 10;

/// A job definition, as users `PUT` it and as it is stored. Unknown fields are refused, so
/// a typo (`"step"`) is an error rather than a silently ignored setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobDefinition {
    #[serde(default = "crate::schema_version")]
    pub schema_version: u32,
    /// The folder holding the job; `None` is the root `jobs` list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<Name>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub steps: Vec<Step>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Names of secrets (`/secrets`) the steps get as environment variables of the same
    /// name; their values are masked in the log.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    #[serde(default)]
    pub parameters: Vec<Parameter>,
    /// Each trigger queues one build per combination of these values (see
    /// [`crate::matrix`]); the steps get the cell's values as environment variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matrix: Option<crate::Matrix>,
    #[serde(default = "default_queue")]
    pub queue: Name,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// How long a build may wait to start (for a worker, or for a concurrency slot) before
    /// it ends `cancelled`, so a build on a queue nobody serves does not wait for ever.
    /// `None`: it waits as long as it takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timeout_secs: Option<u64>,
    #[serde(default)]
    pub retention: Retention,
    #[serde(default)]
    pub artifacts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<Repository>,
    /// How often a build whose worker vanished is retried before it ends as `lost`.
    #[serde(default = "default_lost_retries")]
    pub lost_retries: u32,
    #[serde(default)]
    pub disabled: bool,
    /// Anyone may fetch the job's status badge (`/jobs/{name}/badge.svg`) without a token:
    /// it shows only the newest ended build's status.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub public_badge: bool,
    /// A cron schedule (`"0 3 * * *"`, UTC; [`crate::Schedule`]): the api queues a build at
    /// each minute it names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// The IANA time zone the `schedule` is read in (`Europe/Berlin`); UTC when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_timezone: Option<String>,
    /// At most this many builds of the job are queued for a worker or running at once; the
    /// others wait, in trigger order, outside every queue (so they neither take a worker
    /// nor count as work to scale for) until one of those ends. A deploy job says `1`.
    /// `None`: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Jobs naming the same group share their slots: at most `concurrency` builds of all
    /// of them at once (each build waits for its own job's limit, so the jobs of a group
    /// should name the same one), the others waiting in trigger order across the jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_group: Option<Name>,
    /// Jobs to build when a build of this one ends with one of the statuses each names.
    /// Left out of the stored JSON when empty (see [`DOWNSTREAM_MARK`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub downstream: Vec<Downstream>,
    /// Where to `POST` a JSON message when a build ends with one of the statuses each names
    /// (chat webhooks, paging, a dashboard). Left out of the stored JSON when empty (see
    /// [`NOTIFY_MARK`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<Notify>,
    /// Set on jobs github-ingest derived from a pull request or branch: where they came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github: Option<GithubSource>,
}

/// A job to build when a build of this one ends: with the statuses in `on` (default:
/// `success`), the parameters given here (the others take their defaults), and the upstream
/// build's `sha` and `ref` when both jobs build the same repository (or the downstream job
/// names none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Downstream {
    pub job: JobName,
    #[serde(default = "default_downstream_on")]
    pub on: Vec<BuildStatus>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, String>,
}

/// A notification target: an `http(s)` URL, given as is or as the name of a secret holding
/// it (a chat webhook's URL is its password), the statuses that send it (default: the
/// build did not succeed), optionally a secret whose value signs each message
/// (`X-Kiln-Signature-256: sha256=<HMAC-SHA256 of the body>`, as GitHub signs its webhooks),
/// and whether only a change of status is worth a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notify {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_secret: Option<String>,
    #[serde(default = "default_notify_on")]
    pub on: Vec<BuildStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_secret: Option<String>,
    /// Only when the status differs from the job's previous ended build's (or there is
    /// none): "broken" and "fixed" once each, not every failure of a red streak.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub only_on_change: bool,
}

fn default_notify_on() -> Vec<BuildStatus> {
    vec![
        BuildStatus::Failure,
        BuildStatus::TimedOut,
        BuildStatus::Lost,
        BuildStatus::Error,
    ]
}

/// A notification URL as Kiln accepts it: `http(s)://host...`, at most 2,048 bytes, no
/// spaces or control characters.
pub fn valid_notify_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    url.len() <= 2048
        && rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/'))
        && !url.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// An `on` list (of `downstream` or `notify`): at least one status, each one a build ends
/// with.
fn check_on(on: &[BuildStatus], field: &str) -> Result<(), InvalidField> {
    if on.is_empty() {
        return Err(InvalidField::new(field, "must name at least one status"));
    }
    match on.iter().position(|s| !s.is_final()) {
        Some(j) => Err(InvalidField::new(
            format!("{field}[{j}]"),
            "must be a status a build ends with: success, failure, cancelled, timed_out, lost or error",
        )),
        None => Ok(()),
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn default_downstream_on() -> Vec<BuildStatus> {
    vec![BuildStatus::Success]
}

/// The pull request or branch a derived job builds, recorded on every event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubSource {
    /// `pull_request` or `branch`.
    pub kind: String,
    /// `owner/name`, as GitHub spells it.
    pub repository: String,
    /// The user-chosen job this one copies.
    pub base_job: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    pub head_sha: String,
    pub head_ref: String,
    pub clone_url: String,
    /// When the pull request was closed or the branch deleted (the job was disabled); the
    /// cleanup task deletes the job a configured number of days later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The head sha of a pull request from a fork that waits for someone to approve it
    /// (`POST /jobs/{name}/approve`, with `github.fork_pr_approval`) before it is built:
    /// it runs code from outside the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub awaiting_approval: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub name: String,
    pub run: String,
    /// A step whose command fails (exits non-zero) does not fail the build: its result says
    /// `failure` and the next step runs. A step that times out, is cancelled or cannot
    /// start still ends the build.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_failure: bool,
    /// How many times a step whose command fails runs again before its failure counts: for
    /// a flaky test. A step that times out, is cancelled or cannot start is not run again.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: u32,
    /// The step's own time limit, within the build's `timeout_secs`: a step that hangs
    /// ends the build as `timed_out` without waiting for the whole build's deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Whether the step runs while the build is succeeding, only once a step has failed (a
    /// report, a notification), or either way (a cleanup).
    #[serde(default, skip_serializing_if = "StepWhen::is_default")]
    pub when: StepWhen,
}

/// When a step runs, given whether an earlier step of the build failed (a failure that
/// `allow_failure` let pass does not count). A step that times out, is cancelled or cannot
/// start ends the build at once: no step runs after it, whatever its `when`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepWhen {
    /// While no step has failed (the default).
    #[default]
    Success,
    /// Only after a step failed.
    Failure,
    /// Whether or not a step failed.
    Always,
}

impl StepWhen {
    fn is_default(&self) -> bool {
        *self == Self::Success
    }

    /// Whether a step with this `when` runs, given whether an earlier step failed.
    pub fn runs(self, failed: bool) -> bool {
        match self {
            Self::Success => !failed,
            Self::Failure => failed,
            Self::Always => true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parameter {
    pub name: String,
    #[serde(default)]
    pub default: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The only values a build may give it (its default among them), so a typo in a
    /// target environment is refused at the trigger rather than found by a failing step.
    /// Empty: any value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
}

impl Parameter {
    /// Whether a build may give the parameter this value.
    pub fn accepts(&self, value: &str) -> bool {
        self.choices.is_empty() || self.choices.iter().any(|c| c == value)
    }

    fn choices_text(&self) -> String {
        self.choices
            .iter()
            .map(|c| format!("'{c}'"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    pub builds: u32,
    /// Builds that ended longer ago than this many days go too, however few the job has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days: Option<u32>,
    /// The files builds archived go this many days after the build ended, while the build,
    /// its log and its steps stay: artifacts take the disk, history does not. Pinned builds
    /// keep theirs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts_days: Option<u32>,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            builds: 100,
            days: None,
            artifacts_days: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Repository {
    pub url: String,
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
}

fn default_queue() -> Name {
    Name::parse("default").expect("'default' is a valid name")
}
fn default_timeout() -> u64 {
    3600
}
fn default_lost_retries() -> u32 {
    2
}

/// A definition that parsed but breaks a rule; `field` is the JSON path users see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidField {
    pub field: String,
    pub message: String,
}

impl InvalidField {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// An environment variable or parameter name a POSIX shell accepts, not in Kiln's own
/// `KILN_` namespace.
pub fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with("KILN_")
}

impl JobDefinition {
    /// The concurrency group whose slots the job's builds take: its `concurrency_group`,
    /// which only counts under a `concurrency` limit (validation refuses one without).
    pub fn slot_group(&self) -> Option<&Name> {
        self.concurrency_group
            .as_ref()
            .filter(|_| self.concurrency.is_some())
    }

    /// The schedule the api's scheduler follows: an enabled job's `schedule`, parsed, in its
    /// `schedule_timezone`.
    pub fn active_schedule(&self) -> Option<crate::Schedule> {
        let text = self.schedule.as_deref().filter(|_| !self.disabled)?;
        let schedule = crate::Schedule::parse(text).ok()?;
        match &self.schedule_timezone {
            Some(name) => Some(schedule.in_zone(crate::schedule::parse_timezone(name).ok()?)),
            None => Some(schedule),
        }
    }

    /// Checks the rules serde cannot express. Returns the first broken one.
    pub fn validate(&self) -> Result<(), InvalidField> {
        if self.steps.is_empty() {
            return Err(InvalidField::new("steps", "at least one step is required"));
        }
        if let Some(s) = &self.schedule {
            crate::Schedule::parse(s).map_err(|e| InvalidField::new("schedule", e))?;
        }
        if let Some(tz) = &self.schedule_timezone {
            crate::schedule::parse_timezone(tz)
                .map_err(|e| InvalidField::new("schedule_timezone", e))?;
            if self.schedule.is_none() {
                return Err(InvalidField::new(
                    "schedule_timezone",
                    "needs a schedule to read in it",
                ));
            }
        }
        for (i, s) in self.steps.iter().enumerate() {
            if s.name.trim().is_empty() || s.name.len() > 200 {
                return Err(InvalidField::new(
                    format!("steps[{i}].name"),
                    "must be 1 to 200 characters",
                ));
            }
            if s.run.trim().is_empty() {
                return Err(InvalidField::new(
                    format!("steps[{i}].run"),
                    "must not be empty",
                ));
            }
            if s.retries > MAX_STEP_RETRIES {
                return Err(InvalidField::new(
                    format!("steps[{i}].retries"),
                    format!("must be at most {MAX_STEP_RETRIES}"),
                ));
            }
            if matches!(s.timeout_secs, Some(t) if t == 0 || t > MAX_TIMEOUT_SECS) {
                return Err(InvalidField::new(
                    format!("steps[{i}].timeout_secs"),
                    format!("must be between 1 and {MAX_TIMEOUT_SECS}"),
                ));
            }
            if i == 0 && s.when == StepWhen::Failure {
                return Err(InvalidField::new(
                    "steps[0].when",
                    "the first step has no step before it that could fail, so it would never run",
                ));
            }
        }
        for k in self.env.keys() {
            if !is_env_name(k) {
                return Err(InvalidField::new(
                    format!("env.{k}"),
                    "must match [A-Za-z_][A-Za-z0-9_]* and not start with KILN_",
                ));
            }
        }
        for (i, name) in self.secrets.iter().enumerate() {
            let field = || format!("secrets[{i}]");
            crate::secret::validate_name(name)
                .map_err(|e| InvalidField::new(field(), e.message))?;
            let clash = self.secrets[..i].contains(name)
                || self.env.contains_key(name)
                || self.parameters.iter().any(|p| &p.name == name);
            if clash {
                return Err(InvalidField::new(
                    field(),
                    "is named twice (a secret may not share its name with another secret, an env variable or a parameter)",
                ));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, p) in self.parameters.iter().enumerate() {
            if !is_env_name(&p.name) {
                return Err(InvalidField::new(
                    format!("parameters[{i}].name"),
                    "must match [A-Za-z_][A-Za-z0-9_]* and not start with KILN_",
                ));
            }
            if !seen.insert(&p.name) {
                return Err(InvalidField::new(
                    format!("parameters[{i}].name"),
                    "is declared twice",
                ));
            }
            if p.choices.len() > MAX_CHOICES {
                return Err(InvalidField::new(
                    format!("parameters[{i}].choices"),
                    format!("may list at most {MAX_CHOICES} values"),
                ));
            }
            if let Some(j) = (0..p.choices.len()).find(|&j| p.choices[..j].contains(&p.choices[j]))
            {
                return Err(InvalidField::new(
                    format!("parameters[{i}].choices[{j}]"),
                    "is listed twice",
                ));
            }
            if !p.accepts(&p.default) {
                return Err(InvalidField::new(
                    format!("parameters[{i}].default"),
                    format!("must be one of the choices: {}", p.choices_text()),
                ));
            }
        }
        if self.timeout_secs == 0 || self.timeout_secs > MAX_TIMEOUT_SECS {
            return Err(InvalidField::new(
                "timeout_secs",
                format!("must be between 1 and {MAX_TIMEOUT_SECS}"),
            ));
        }
        if matches!(self.retention.days, Some(d) if d == 0 || d > MAX_RETENTION_DAYS) {
            return Err(InvalidField::new(
                "retention.days",
                format!("must be between 1 and {MAX_RETENTION_DAYS} (leave it out to keep builds by count only)"),
            ));
        }
        if let Some(a) = self.retention.artifacts_days {
            if a == 0 || a > MAX_RETENTION_DAYS {
                return Err(InvalidField::new(
                    "retention.artifacts_days",
                    format!("must be between 1 and {MAX_RETENTION_DAYS}"),
                ));
            }
            if self.retention.days.is_some_and(|d| a >= d) {
                return Err(InvalidField::new(
                    "retention.artifacts_days",
                    "must be fewer than retention.days (the build and its files go together then)",
                ));
            }
        }
        if matches!(self.queue_timeout_secs, Some(t) if t == 0 || t > MAX_TIMEOUT_SECS) {
            return Err(InvalidField::new(
                "queue_timeout_secs",
                format!("must be between 1 and {MAX_TIMEOUT_SECS} (leave it out to wait as long as it takes)"),
            ));
        }
        if self.retention.builds == 0 || self.retention.builds > MAX_RETENTION {
            return Err(InvalidField::new(
                "retention.builds",
                format!("must be between 1 and {MAX_RETENTION}"),
            ));
        }
        for (i, a) in self.artifacts.iter().enumerate() {
            let escapes = a.starts_with('/') || a.split(['/', '\\']).any(|c| c == "..");
            if a.is_empty() || escapes {
                return Err(InvalidField::new(
                    format!("artifacts[{i}]"),
                    "must be a relative glob inside the workspace",
                ));
            }
        }
        if let Some(r) = &self.repository {
            let ok = ["https://", "http://", "ssh://", "git://", "file://", "git@"]
                .iter()
                .any(|p| r.url.starts_with(p));
            if !ok {
                return Err(InvalidField::new(
                    "repository.url",
                    "must be an https, http, ssh, git or file URL",
                ));
            }
            if let Some(g) = &r.git_ref {
                if g.is_empty() || g.starts_with('-') {
                    return Err(InvalidField::new(
                        "repository.ref",
                        "must be a branch, tag or sha",
                    ));
                }
            }
        }
        if self.lost_retries > 10 {
            return Err(InvalidField::new("lost_retries", "must be at most 10"));
        }
        if let Some(c) = self.concurrency {
            if c == 0 || c > MAX_CONCURRENCY {
                return Err(InvalidField::new(
                    "concurrency",
                    format!("must be between 1 and {MAX_CONCURRENCY} (leave it out for no limit)"),
                ));
            }
        }
        if self.concurrency_group.is_some() && self.concurrency.is_none() {
            return Err(InvalidField::new(
                "concurrency_group",
                "needs a concurrency limit: how many builds of the group's jobs run at once",
            ));
        }
        self.validate_matrix()?;
        self.validate_downstream()?;
        self.validate_notify()
    }

    /// How many builds one trigger queues: one per cell of its matrix, or one.
    pub fn builds_per_trigger(&self) -> usize {
        self.matrix.as_ref().map_or(1, |m| m.cells().len())
    }

    fn validate_matrix(&self) -> Result<(), InvalidField> {
        let Some(m) = &self.matrix else { return Ok(()) };
        m.validate(|name| {
            self.env.contains_key(name)
                || self.secrets.iter().any(|s| s == name)
                || self.parameters.iter().any(|p| p.name == name)
        })?;
        let cells = m.cells().len();
        if (self.retention.builds as usize) < cells {
            return Err(InvalidField::new(
                "retention.builds",
                format!("must keep at least one whole matrix ({cells} builds)"),
            ));
        }
        Ok(())
    }

    fn validate_notify(&self) -> Result<(), InvalidField> {
        if self.notify.len() > MAX_NOTIFY {
            return Err(InvalidField::new(
                "notify",
                format!("may name at most {MAX_NOTIFY} targets"),
            ));
        }
        for (i, n) in self.notify.iter().enumerate() {
            match (&n.url, &n.url_secret) {
                (Some(url), None) if valid_notify_url(url) => {}
                (Some(_), None) => {
                    return Err(InvalidField::new(
                        format!("notify[{i}].url"),
                        "must be an http:// or https:// URL of at most 2048 bytes",
                    ))
                }
                (None, Some(name)) if is_env_name(name) => {}
                (None, Some(_)) => {
                    return Err(InvalidField::new(
                        format!("notify[{i}].url_secret"),
                        "must be a secret's name: [A-Za-z_][A-Za-z0-9_]*, not starting with KILN_",
                    ))
                }
                _ => {
                    return Err(InvalidField::new(
                        format!("notify[{i}].url"),
                        "give either url or url_secret (the name of a secret holding the URL)",
                    ))
                }
            }
            if n.signing_secret.as_deref().is_some_and(|s| !is_env_name(s)) {
                return Err(InvalidField::new(
                    format!("notify[{i}].signing_secret"),
                    "must be a secret's name: [A-Za-z_][A-Za-z0-9_]*, not starting with KILN_",
                ));
            }
            check_on(&n.on, &format!("notify[{i}].on"))?;
        }
        Ok(())
    }

    /// [`JobDefinition::validate`], and the rules that need the job's own name: a job may
    /// not name itself downstream (every success would build it again).
    pub fn validate_as(&self, name: &JobName) -> Result<(), InvalidField> {
        self.validate()?;
        match self.downstream.iter().position(|d| &d.job == name) {
            Some(i) => Err(InvalidField::new(
                format!("downstream[{i}].job"),
                "is this job itself",
            )),
            None => Ok(()),
        }
    }

    fn validate_downstream(&self) -> Result<(), InvalidField> {
        if self.downstream.len() > MAX_DOWNSTREAM {
            return Err(InvalidField::new(
                "downstream",
                format!("may name at most {MAX_DOWNSTREAM} jobs"),
            ));
        }
        for (i, d) in self.downstream.iter().enumerate() {
            if self.downstream[..i].iter().any(|o| o.job == d.job) {
                return Err(InvalidField::new(
                    format!("downstream[{i}].job"),
                    "is named twice",
                ));
            }
            check_on(&d.on, &format!("downstream[{i}].on"))?;
            if let Some(k) = d.parameters.keys().find(|k| !is_env_name(k)) {
                return Err(InvalidField::new(
                    format!("downstream[{i}].parameters.{k}"),
                    "must match [A-Za-z_][A-Za-z0-9_]* and not start with KILN_",
                ));
            }
        }
        Ok(())
    }

    /// The parameters of a build: each declared parameter's default, overridden by the
    /// request. Undeclared parameters are refused so a typo is not silently dropped.
    pub fn resolve_parameters(
        &self,
        given: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, InvalidField> {
        if let Some(k) = given
            .keys()
            .find(|k| !self.parameters.iter().any(|p| &p.name == *k))
        {
            return Err(InvalidField::new(
                format!("parameters.{k}"),
                "is not a parameter of this job",
            ));
        }
        self.parameters
            .iter()
            .map(|p| {
                let v = given.get(&p.name).unwrap_or(&p.default);
                if !p.accepts(v) {
                    return Err(InvalidField::new(
                        format!("parameters.{}", p.name),
                        format!("must be one of {}", p.choices_text()),
                    ));
                }
                Ok((p.name.clone(), v.clone()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: serde_json::Value) -> Result<JobDefinition, serde_json::Error> {
        serde_json::from_value(v)
    }

    #[test]
    fn only_steps_is_required_and_defaults_apply() {
        let d = parse(serde_json::json!({"steps": [{"name": "b", "run": "make"}]})).unwrap();
        assert_eq!(d.queue.as_str(), "default");
        assert_eq!(d.timeout_secs, 3600);
        assert_eq!(d.retention.builds, 100);
        assert_eq!(d.lost_retries, 2);
        d.validate().unwrap();
    }

    #[test]
    fn the_spec_example_parses() {
        let d = parse(serde_json::json!({"folder": "team-a", "description": "...",
            "steps": [{"name": "build", "run": "make"}], "env": {"K": "V"},
            "parameters": [{"name": "TARGET", "default": "x", "description": "..."}],
            "queue": "default", "timeout_secs": 3600, "retention": {"builds": 100},
            "artifacts": ["dist/*.tar.gz"], "repository": {"url": "https://x/y.git", "ref": "main"},
            "disabled": false}))
        .unwrap();
        d.validate().unwrap();
        assert_eq!(d.repository.unwrap().git_ref.as_deref(), Some("main"));
    }

    /// The README's example definition, which shows the fields users set, is one Kiln accepts.
    #[test]
    fn the_readme_example_is_valid() {
        let readme = include_str!("../../../README.md");
        let example = readme
            .split("### Job definition")
            .nth(1)
            .and_then(|s| s.split("```json").nth(1))
            .and_then(|s| s.split("```").next())
            .expect("a json block under 'Job definition'");
        let d: JobDefinition = serde_json::from_str(example).unwrap();
        d.validate_as(&JobName::parse("app").unwrap()).unwrap();
        assert!(!d.downstream.is_empty() && d.concurrency_group.is_some());
    }

    #[test]
    fn unknown_fields_and_bad_names_are_refused() {
        assert!(parse(serde_json::json!({"steps": [], "step": 1})).is_err());
        assert!(parse(serde_json::json!({"steps": [], "folder": "a_b"})).is_err());
        assert!(parse(serde_json::json!({"steps": [{"name": "a", "run": "b", "x": 1}]})).is_err());
    }

    #[test]
    fn notification_targets_are_checked_and_marked_in_the_stored_json() {
        assert_eq!(
            AFTER_BUILD_MARKS,
            format!("{DOWNSTREAM_MARK}\n{NOTIFY_MARK}")
        );
        let d = parse(serde_json::json!({"steps": [{"name": "b", "run": "make"}],
            "notify": [{"url": "https://chat.example/hook"},
                {"url_secret": "SLACK_URL", "on": ["success"], "signing_secret": "SIGN",
                    "only_on_change": true}]}))
        .unwrap();
        d.validate().unwrap();
        assert_eq!(
            d.notify[0].on.len(),
            4,
            "default: every way of not succeeding"
        );
        assert!(!d.notify[0].only_on_change && d.notify[1].only_on_change);
        assert!(serde_json::to_string(&d).unwrap().contains(NOTIFY_MARK));
        let field = |d: &JobDefinition| d.validate().unwrap_err().field;
        for (url, secret, bad_field) in [
            (Some("ftp://x"), None, "notify[0].url"),
            (Some("https://"), None, "notify[0].url"),
            (Some("https://a b"), None, "notify[0].url"),
            (None, None, "notify[0].url"),
            (Some("https://x"), Some("S"), "notify[0].url"),
            (None, Some("no-dash"), "notify[0].url_secret"),
        ] {
            let mut bad = d.clone();
            bad.notify[0].url = url.map(str::to_owned);
            bad.notify[0].url_secret = secret.map(str::to_owned);
            assert_eq!(field(&bad), bad_field, "{url:?} {secret:?}");
        }
        let mut bad = d.clone();
        bad.notify[1].on = vec![BuildStatus::Queued];
        assert_eq!(field(&bad), "notify[1].on[0]");
        let mut bad = d.clone();
        bad.notify[1].signing_secret = Some("KILN_X".into());
        assert_eq!(field(&bad), "notify[1].signing_secret");
        let mut bad = d.clone();
        bad.notify = vec![d.notify[0].clone(); MAX_NOTIFY + 1];
        assert_eq!(field(&bad), "notify");
    }

    #[test]
    fn downstream_jobs_are_checked_and_marked_in_the_stored_json() {
        let mut d = parse(serde_json::json!({"steps": [{"name": "b", "run": "make"}],
            "downstream": [{"job": "deploy"}, {"job": "notify", "on": ["failure", "timed_out"],
                "parameters": {"TARGET": "staging"}}]}))
        .unwrap();
        assert_eq!(d.downstream[0].on, vec![BuildStatus::Success]);
        let own = JobName::parse("app").unwrap();
        d.validate_as(&own).unwrap();
        assert!(serde_json::to_string(&d).unwrap().contains(DOWNSTREAM_MARK));
        let field = |d: &JobDefinition| d.validate_as(&own).unwrap_err().field;
        let mut bad = d.clone();
        bad.downstream[1].job = own.clone();
        assert_eq!(field(&bad), "downstream[1].job");
        bad.downstream[1].job = JobName::parse("deploy").unwrap();
        assert_eq!(field(&bad), "downstream[1].job");
        let mut bad = d.clone();
        bad.downstream[1].on = vec![BuildStatus::Failure, BuildStatus::Running];
        assert_eq!(field(&bad), "downstream[1].on[1]");
        bad.downstream[1].on.clear();
        assert_eq!(field(&bad), "downstream[1].on");
        let mut bad = d.clone();
        bad.downstream[1]
            .parameters
            .insert("KILN_X".into(), "y".into());
        assert_eq!(field(&bad), "downstream[1].parameters.KILN_X");
        assert!(
            parse(serde_json::json!({"steps": [{"name": "b", "run": "make"}],
            "downstream": [{"job": "a/b"}]}))
            .is_err()
        );
        d.downstream.clear();
        let json = serde_json::to_string(&d).unwrap();
        assert!(!json.contains(DOWNSTREAM_MARK), "{json}");
        // A value that spells the mark is escaped in JSON, so it cannot be mistaken for it.
        d.steps[0].run = DOWNSTREAM_MARK.into();
        assert!(!serde_json::to_string(&d).unwrap().contains(DOWNSTREAM_MARK));
    }

    #[test]
    fn validation_names_the_field() {
        let mut d = parse(serde_json::json!({"steps": [{"name": "b", "run": "make"}]})).unwrap();
        d.artifacts = vec!["../etc/passwd".into()];
        assert_eq!(d.validate().unwrap_err().field, "artifacts[0]");
        d.artifacts.clear();
        d.env.insert("KILN_JOB".into(), "x".into());
        assert_eq!(d.validate().unwrap_err().field, "env.KILN_JOB");
        d.env.clear();
        for bad in [0, MAX_CONCURRENCY + 1] {
            d.concurrency = Some(bad);
            assert_eq!(d.validate().unwrap_err().field, "concurrency");
        }
        d.concurrency = None;
        d.schedule_timezone = Some("Europe/Berlin".into());
        assert_eq!(d.validate().unwrap_err().field, "schedule_timezone");
        d.schedule = Some("0 3 * * *".into());
        d.validate().unwrap();
        d.schedule_timezone = Some("Europe/Bxl".into());
        assert_eq!(d.validate().unwrap_err().field, "schedule_timezone");
        d.schedule_timezone = None;
        d.schedule = None;
        d.concurrency = None;
        d.concurrency_group = Some(Name::parse("prod").unwrap());
        assert_eq!(d.validate().unwrap_err().field, "concurrency_group");
        d.concurrency = Some(1);
        d.validate().unwrap();
        for bad in [0, MAX_TIMEOUT_SECS + 1] {
            d.queue_timeout_secs = Some(bad);
            assert_eq!(d.validate().unwrap_err().field, "queue_timeout_secs");
        }
        d.queue_timeout_secs = Some(60);
        d.validate().unwrap();
        d.retention.days = Some(0);
        assert_eq!(d.validate().unwrap_err().field, "retention.days");
        d.retention.days = Some(30);
        d.validate().unwrap();
        d.secrets = vec!["TOKEN".into(), "TOKEN".into()];
        assert_eq!(d.validate().unwrap_err().field, "secrets[1]");
        d.secrets = vec!["K".into()];
        d.env.insert("K".into(), "v".into());
        assert_eq!(d.validate().unwrap_err().field, "secrets[0]");
        d.env.clear();
        d.secrets = vec!["no-dash".into()];
        assert_eq!(d.validate().unwrap_err().field, "secrets[0]");
        d.secrets.clear();
        d.steps[0].when = StepWhen::Failure;
        assert_eq!(d.validate().unwrap_err().field, "steps[0].when");
        d.steps[0].when = StepWhen::Always;
        d.validate().unwrap();
        d.steps[0].retries = MAX_STEP_RETRIES + 1;
        assert_eq!(d.validate().unwrap_err().field, "steps[0].retries");
        d.steps[0].retries = MAX_STEP_RETRIES;
        d.validate().unwrap();
        d.steps[0].timeout_secs = Some(0);
        assert_eq!(d.validate().unwrap_err().field, "steps[0].timeout_secs");
        d.steps[0].timeout_secs = Some(1);
        d.validate().unwrap();
        d.steps.clear();
        assert_eq!(d.validate().unwrap_err().field, "steps");
    }

    #[test]
    fn parameters_resolve_to_defaults_and_refuse_unknown_ones() {
        let d = parse(serde_json::json!({"steps": [{"name": "b", "run": "make"}],
            "parameters": [{"name": "T", "default": "x"}, {"name": "U"}]}))
        .unwrap();
        let given = BTreeMap::from([("T".to_string(), "y".to_string())]);
        let got = d.resolve_parameters(&given).unwrap();
        assert_eq!(got["T"], "y");
        assert_eq!(got["U"], "");
        let bad = BTreeMap::from([("V".to_string(), "y".to_string())]);
        assert_eq!(
            d.resolve_parameters(&bad).unwrap_err().field,
            "parameters.V"
        );
    }

    #[test]
    fn a_parameter_with_choices_takes_only_those() {
        let mut d = parse(serde_json::json!({"steps": [{"name": "b", "run": "make"}],
            "parameters": [{"name": "ENV", "default": "staging", "choices": ["staging", "production"]}]}))
        .unwrap();
        d.validate().unwrap();
        let given = |v: &str| BTreeMap::from([("ENV".to_string(), v.to_string())]);
        assert_eq!(
            d.resolve_parameters(&given("production")).unwrap()["ENV"],
            "production"
        );
        let e = d.resolve_parameters(&given("prod")).unwrap_err();
        assert_eq!(e.field, "parameters.ENV");
        assert_eq!(e.message, "must be one of 'staging', 'production'");
        d.parameters[0].default = "qa".into();
        assert_eq!(d.validate().unwrap_err().field, "parameters[0].default");
        d.parameters[0].choices = vec!["qa".into(), "qa".into()];
        assert_eq!(d.validate().unwrap_err().field, "parameters[0].choices[1]");
    }
}
