//! Every Redis key and pub/sub channel Kiln uses, and nothing else formats one.
//!
//! The first group is the spec's public layout (`jobs`, `folder_<name>`, `job_<name>`,
//! `job_<name>_recent`, `job_<name>_<n>`, `github_<org>_<repo>_pullrequest|_branch`).
//! Everything Kiln adds lives under the `kiln:` prefix, which no spec key can take (spec keys
//! never contain `:`), so the two groups cannot collide. `docs/architecture.md` lists each
//! key with its type, writer, readers and lifetime.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::names::{BuildNumber, JobName, Name, NameError};

/// List of the root's entries (`job_<name>` / `folder_<name>`).
pub const ROOT: &str = "jobs";

/// Prefixes of the keys that Kiln's Lua scripts must form themselves (the build to requeue
/// is only known inside the script). Scripts receive them as arguments, so this module stays
/// the one place that spells a key.
pub mod prefix {
    pub const FOLDER: &str = "folder_";
    pub const JOB: &str = "job_";
    pub const QUEUE: &str = "kiln:queue:";
    pub const QUEUE_MARKER: &str = "kiln:queue-marker:";
    pub const QUEUE_WORKERS: &str = "kiln:queue-workers:";
    pub const INFLIGHT: &str = "kiln:inflight:";
    pub const RUNNING: &str = "kiln:running:";
    pub const NODE: &str = "kiln:node:";
    pub const FINISHED: &str = "kiln:finished:";
    pub const OUTPUT: &str = "kiln:output:";
    pub const PROCESSING: &str = "kiln:processing:";
    pub const DEAD_LETTER: &str = "kiln:dead-letter:";
    pub const JOB_SLOTS: &str = "kiln:job-slots:";
    pub const JOB_WAITING: &str = "kiln:job-waiting:";
    pub const JOB_REVISIONS: &str = "kiln:job-revisions:";
    pub const FOLDER_SECRETS: &str = "kiln:folder-secrets:";
    pub const GROUP_SLOTS: &str = "kiln:group-slots:";
    pub const GROUP_WAITING: &str = "kiln:group-waiting:";
}

/// `folder_<name>`: list of the folder's entries.
pub fn folder(name: &Name) -> String {
    format!("{}{name}", prefix::FOLDER)
}

/// The list holding a folder's entries: `folder_<name>`, or `jobs` for the root.
pub fn folder_list(name: Option<&Name>) -> String {
    name.map_or_else(|| ROOT.to_owned(), folder)
}

/// `job_<name>`: the job definition, JSON.
pub fn job(name: &JobName) -> String {
    format!("{}{name}", prefix::JOB)
}

/// `job_<name>_`: what every build key of the job starts with.
pub fn build_prefix(name: &JobName) -> String {
    format!("{}{name}_", prefix::JOB)
}

/// `job_<name>_recent`: build numbers, newest first, trimmed to the job's retention (ended
/// builds only: one still queued or running stays until it has ended).
pub fn job_recent(name: &JobName) -> String {
    format!("job_{name}_recent")
}

/// Which GitHub events a link routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GithubLinkKind {
    Pullrequest,
    Branch,
}

impl GithubLinkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pullrequest => "pullrequest",
            Self::Branch => "branch",
        }
    }
}

/// `github_<org>_<repo>_pullrequest|branch`: the key (`job_<name>`) of the linked job.
/// Org and repo are lower-cased, as GitHub treats them case-insensitively.
pub fn github_link(org: &str, repo: &str, kind: GithubLinkKind) -> String {
    format!(
        "github_{}_{}_{}",
        org.to_lowercase(),
        repo.to_lowercase(),
        kind.as_str()
    )
}

/// A link key's owner, repository and kind (`github_link` read back). GitHub owner names
/// hold no `_`, so the first one ends the owner; repository names may hold it.
pub fn parse_github_link(key: &str) -> Option<(String, String, GithubLinkKind)> {
    let rest = key.strip_prefix("github_")?;
    let (rest, kind) = if let Some(r) = rest.strip_suffix("_pullrequest") {
        (r, GithubLinkKind::Pullrequest)
    } else {
        (rest.strip_suffix("_branch")?, GithubLinkKind::Branch)
    };
    let (org, repo) = rest.split_once('_')?;
    Some((org.to_owned(), repo.to_owned(), kind))
}

/// Set of every `github_<org>_<repo>_<kind>` link key, so links can be listed without
/// scanning the keyspace.
pub const GITHUB_LINKS: &str = "kiln:github-links";

/// String with a one-day TTL: a GitHub delivery already handled (value: the build it queued,
/// or `-`), so a redelivered event never queues a second build.
pub fn github_delivery(delivery_id: &str) -> String {
    format!("kiln:github-delivery:{delivery_id}")
}

/// Hash job name -> when its current `schedule` was set or the job last enabled (seconds
/// since the epoch), for every enabled job that has one: what the api's scheduler reads,
/// and the start of the minutes it owes the job builds for (a schedule set at 03:30 owes
/// nothing for 03:00).
pub const SCHEDULES: &str = "kiln:schedules";

/// String with a two-day TTL: the scheduled build of `job` for the minute starting at
/// `slot` (seconds since the epoch) was queued (value: its build key), so several api
/// replicas queue it once.
pub fn schedule_fired(job: &JobName, slot: i64) -> String {
    format!("kiln:schedule-fired:{job}:{slot}")
}

/// The consumer name of the api's downstream trigger: `kiln:finished:downstream` gets the
/// key of every ended build whose job names downstream jobs, from the script that ended it
/// (not through [`FINISHED_CONSUMERS`]: only those builds, and whether or not an api runs).
pub const DOWNSTREAM_CONSUMER: &str = "downstream";

/// The es-indexer's consumer name (`kiln:finished:es`): named here because pinning a build
/// (`keep`) hands the changed document to the index again, and to no other consumer.
pub const ES_CONSUMER: &str = "es";

/// github-ingest's commit-status reporter's consumer name (`kiln:finished:github`).
pub const GITHUB_CONSUMER: &str = "github";

/// Prefix of the entries that ask the status reporter to post `pending` for a build just
/// queued (`pending:<build key>`); plain build keys ask for its final status.
pub const GITHUB_PENDING: &str = "pending:";

/// The status reporter's entry asking it to post `pending` for `build`.
pub fn github_pending(build: &BuildRef) -> String {
    format!("{GITHUB_PENDING}{}", build.key())
}

/// `kiln:finished:<ES_CONSUMER>`.
pub fn es_finished() -> String {
    format!("{}{ES_CONSUMER}", prefix::FINISHED)
}

/// The consumer name of the api's notifier: `kiln:finished:notify` gets, from the api's
/// after-build consumer, the key of every ended build whose job's `notify` names a target
/// for its status.
pub const NOTIFY_CONSUMER: &str = "notify";

/// `kiln:finished:<DOWNSTREAM_CONSUMER>`.
pub fn downstream_finished() -> String {
    format!("{}{DOWNSTREAM_CONSUMER}", prefix::FINISHED)
}

/// String with a one-week TTL: the downstream build of `target` that the end of `upstream`
/// (queued at `queued_at_ms`, which tells apart builds of a job deleted and made again)
/// queued (value: its build key), so an ended build handled twice queues it once.
pub fn downstream_fired(upstream: &BuildRef, queued_at_ms: i64, target: &JobName) -> String {
    format!(
        "kiln:downstream-fired:{}:{}:{queued_at_ms}:{target}",
        upstream.job, upstream.number
    )
}

/// String with a one-week TTL: which ended cell (value: its build key) of the matrix whose
/// first build is `group` (queued at `queued_at_ms`) handles the whole matrix's end for the
/// after-build consumer. Cells that end together may each find the group complete; the
/// first to set this acts, and sees its own key again if it handles its entry twice.
pub fn matrix_ended(group: &BuildRef, queued_at_ms: i64) -> String {
    format!(
        "kiln:matrix-ended:{}:{}:{queued_at_ms}",
        group.job, group.number
    )
}

/// Sorted set build key -> when it stops waiting (ms since the epoch, Redis clock), for
/// builds of jobs with a `queue_timeout_secs`, from their trigger. Members whose build
/// started or ended go when their time comes: only a build still waiting for its first
/// start is cancelled then.
pub const QUEUE_DEADLINES: &str = "kiln:queue-deadlines";

/// Set of the build keys holding one of the slots of a job with a `concurrency` limit:
/// queued for a worker or running. Exists only while the job has a limit.
pub fn job_slots(job: &JobName) -> String {
    format!("{}{job}", prefix::JOB_SLOTS)
}

/// List of the build keys of a job with a `concurrency` limit that wait for a slot, oldest
/// first: they are in no queue until one is free.
pub fn job_waiting(job: &JobName) -> String {
    format!("{}{job}", prefix::JOB_WAITING)
}

/// List of a job's definitions as they were put, newest first (the last
/// [`JOB_REVISIONS_KEPT`]): `{"revision", "by", "at", "definition"}`, written by the put-job
/// script whenever the stored definition changes, so who changed a job, when, and what it
/// looked like when a build ran can be answered. Deleted with the job.
pub fn job_revisions(job: &JobName) -> String {
    format!("{}{job}", prefix::JOB_REVISIONS)
}

/// How many of a job's definitions [`job_revisions`] keeps.
pub const JOB_REVISIONS_KEPT: usize = 50;

/// The slot set and waiting list a build of `job` uses: its `concurrency_group`'s when it
/// has one (`kiln:group-slots:<group>`, `kiln:group-waiting:<group>`, the same two kinds
/// of key as [`job_slots`] and [`job_waiting`], shared by the group's jobs), else its job's.
pub fn slot_keys(job: &JobName, group: Option<&Name>) -> (String, String) {
    match group {
        Some(g) => (
            format!("{}{g}", prefix::GROUP_SLOTS),
            format!("{}{g}", prefix::GROUP_WAITING),
        ),
        None => (job_slots(job), job_waiting(job)),
    }
}

/// Hash secret name -> [`crate::StoredSecret`] JSON. Only the api writes it and only workers
/// read values from it; the api's raw-key route refuses it.
pub const SECRETS: &str = "kiln:secrets";

/// Hash name -> stored secret, as [`SECRETS`], of the secrets set on one folder
/// (`PUT /folders/{name}/secrets/{secret}`): the jobs inside it, at any depth, get them
/// before a global secret or a farther folder's of the same name, so a team manages its
/// own. Deleted with the folder.
pub fn folder_secrets(folder: &Name) -> String {
    format!("{}{folder}", prefix::FOLDER_SECRETS)
}

/// Hash job name -> last build number handed out (HINCRBY), so numbers are never reused
/// while the job exists.
pub const BUILD_COUNTERS: &str = "kiln:build-counters";
/// Hash folder name -> parent folder name (`""` for the root). Lets storage paths and
/// deletes find a folder's place without scanning every folder list.
pub const FOLDER_PARENTS: &str = "kiln:folder-parents";
/// Set of queue names that have ever had a build queued, for queue listings.
pub const QUEUES: &str = "kiln:queues";
/// Sorted set build key -> lease deadline (ms since the epoch, Redis clock).
pub const LEASES: &str = "kiln:leases";
/// Hash build key -> `<worker> <token> <queue>`: who holds the build's lease, the fencing
/// token every worker write must present, and the queue it came from.
pub const LEASE_OWNERS: &str = "kiln:lease-owners";
/// Sorted set worker id -> last heartbeat (ms since the epoch).
pub const WORKERS: &str = "kiln:workers";
/// List of the storage paths (`jobs/<folder>/.../<job>/<n>`) of builds retention removed
/// from behind a pinned one, or at the api's retention sweep: the workers clear away the
/// folders below a job's oldest kept build when they finish one of its builds, which a
/// pinned build holds back and an idle job never does, so the api removes these instead.
pub const STORAGE_ORPHANS: &str = "kiln:storage-orphans";

/// List of the storage paths an api replica took from [`STORAGE_ORPHANS`] and has not yet
/// removed the folders of: a replica that starts removes these again (removing a folder
/// twice does no harm), so none is forgotten when one dies mid-way.
pub const STORAGE_ORPHANS_TAKEN: &str = "kiln:storage-orphans:taken";

/// Set of the ids of workers an operator paused (`POST /nodes/{id}/pause`): each reads it
/// with its heartbeat, takes no new build while in it, and finishes the ones it runs.
pub const PAUSED_WORKERS: &str = "kiln:paused-workers";

/// Set of consumers (`es`, `github`) that asked for a durable copy of every finished build.
pub const FINISHED_CONSUMERS: &str = "kiln:finished-consumers";
/// Pub/sub channel of build state changes ([`crate::BuildEvent`] JSON), live views only.
pub const EVENTS_CHANNEL: &str = "kiln:events";
/// Pub/sub channel of node heartbeats ([`crate::NodeInfo`] JSON), live views only.
pub const NODES_CHANNEL: &str = "kiln:nodes";
/// Pub/sub channel carrying the build key of a build whose cancellation was requested, or
/// whose job was deleted while it ran, so the worker running it reacts within a second
/// (the build document, or its absence, stays the truth).
pub const CANCEL_CHANNEL: &str = "kiln:cancel";

/// List of build keys waiting on `queue`; producers LPUSH, workers take from the right.
pub fn queue(queue: &Name) -> String {
    format!("{}{queue}", prefix::QUEUE)
}

/// Sorted set with the single member `0`, set whenever `queue` may hold work: idle workers
/// block on it with BZPOPMIN, so claiming stays an atomic script yet workers need not poll.
pub fn queue_marker(queue: &Name) -> String {
    format!("{}{queue}", prefix::QUEUE_MARKER)
}

/// Sorted set worker id -> last heartbeat, for the workers serving `queue`.
pub fn queue_workers(queue: &Name) -> String {
    format!("{}{queue}", prefix::QUEUE_WORKERS)
}

/// List of the build keys of `queue` that workers hold now. With the queue's length it is
/// the autoscaling signal (KEDA's Redis list scaler reads list lengths only): scaling on
/// both never takes a busy worker's capacity away.
pub fn running(queue: &Name) -> String {
    format!("{}{queue}", prefix::RUNNING)
}

/// List of the build keys a worker holds (claimed atomically out of the queue).
pub fn inflight(worker: &Name) -> String {
    format!("{}{worker}", prefix::INFLIGHT)
}

/// String with TTL: the worker's [`crate::NodeInfo`], gone when it stops heartbeating.
pub fn node(worker: &Name) -> String {
    format!("{}{worker}", prefix::NODE)
}

/// List of finished build keys, one list per registered consumer (durable hand-off).
pub fn finished(consumer: &Name) -> String {
    format!("{}{consumer}", prefix::FINISHED)
}

/// List of the entries a consumer took from `kiln:finished:<consumer>` and has not finished
/// handling; re-handled when the consumer starts, so a crash loses nothing.
pub fn processing(consumer: &Name) -> String {
    format!("{}{consumer}", prefix::PROCESSING)
}

/// List of entries a consumer gave up on for good (JSON with the reason), for operators.
pub fn dead_letter(consumer: &Name) -> String {
    format!("{}{consumer}", prefix::DEAD_LETTER)
}

/// Pub/sub channel of a build's output ([`crate::OutputMessage`] JSON).
pub fn output_channel(build: &BuildRef) -> String {
    format!("{}{}", prefix::OUTPUT, build.key())
}

/// An entry of `jobs` or `folder_<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Entry {
    Job(JobName),
    Folder(Name),
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entry::Job(n) => write!(f, "job_{n}"),
            Entry::Folder(n) => write!(f, "folder_{n}"),
        }
    }
}

impl FromStr for Entry {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(n) = s.strip_prefix("job_") {
            JobName::parse(n).map(Entry::Job)
        } else if let Some(n) = s.strip_prefix("folder_") {
            Name::parse(n).map(Entry::Folder)
        } else {
            Err(NameError::BadDerived)
        }
    }
}

/// One build: a job and a number. Its key `job_<name>_<n>` is also what queues and lists
/// carry, so any holder can read the document directly.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BuildRef {
    pub job: JobName,
    pub number: BuildNumber,
}

impl BuildRef {
    pub fn new(job: JobName, number: BuildNumber) -> Self {
        Self { job, number }
    }

    /// `job_<name>_<n>`: the build document.
    pub fn key(&self) -> String {
        format!("{}{}", build_prefix(&self.job), self.number)
    }

    /// Parses a build key; the number is after the last `_`, and job names never end in
    /// `_<digits>`, so this is the only reading.
    pub fn from_key(key: &str) -> Result<Self, NameError> {
        let rest = key.strip_prefix("job_").ok_or(NameError::BadDerived)?;
        let (job, n) = rest.rsplit_once('_').ok_or(NameError::BadNumber)?;
        Ok(Self {
            job: JobName::parse(job)?,
            number: n.parse()?,
        })
    }
}

impl fmt::Display for BuildRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.job, self.number)
    }
}

impl Serialize for BuildRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.key())
    }
}

impl<'de> Deserialize<'de> for BuildRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::from_key(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(s: &str) -> JobName {
        JobName::parse(s).unwrap()
    }

    #[test]
    fn spec_keys_are_exact() {
        let app = job("app");
        let team = Name::parse("team-a").unwrap();
        assert_eq!(ROOT, "jobs");
        assert_eq!(folder(&team), "folder_team-a");
        assert_eq!(super::job(&app), "job_app");
        assert_eq!(job_recent(&app), "job_app_recent");
        assert_eq!(BuildRef::new(app, BuildNumber(3)).key(), "job_app_3");
        assert_eq!(
            github_link("MyOrg", "Repo", GithubLinkKind::Pullrequest),
            "github_myorg_repo_pullrequest"
        );
    }

    #[test]
    fn link_keys_give_back_owner_repository_and_kind() {
        for (org, repo, kind) in [
            ("acme", "my_repo", GithubLinkKind::Pullrequest),
            ("acme-inc", "app", GithubLinkKind::Branch),
        ] {
            let key = github_link(org, repo, kind);
            assert_eq!(
                parse_github_link(&key),
                Some((org.to_owned(), repo.to_owned(), kind))
            );
        }
        assert!(parse_github_link("github_acme_app_tag").is_none());
        assert!(parse_github_link("job_app").is_none());
    }

    #[test]
    fn build_keys_round_trip_for_every_job_form() {
        for name in [
            "app",
            "app_pr25",
            "app_branch-feature--x",
            "a.b-c_branch-x.1",
        ] {
            let r = BuildRef::new(job(name), BuildNumber(12));
            assert_eq!(BuildRef::from_key(&r.key()).unwrap(), r);
        }
    }

    #[test]
    fn no_job_key_equals_another_jobs_build_or_recent_key() {
        // A job whose name would make `job_<name>` equal `job_<other>_<n>` or
        // `job_<other>_recent` must be unrepresentable.
        for name in ["app_1", "app_recent", "app_pr1_2", "app_branch-x_recent"] {
            assert!(JobName::parse(name).is_err(), "{name}");
        }
    }

    #[test]
    fn kiln_keys_cannot_collide_with_spec_keys() {
        let q = queue(&Name::parse("default").unwrap());
        assert!(q.contains(':'));
        assert!(Entry::from_str(&q).is_err());
    }

    #[test]
    fn entries_round_trip() {
        for e in ["job_app", "folder_team-a", "job_app_pr2"] {
            assert_eq!(Entry::from_str(e).unwrap().to_string(), e);
        }
        assert!(Entry::from_str("job_app_1").is_err());
        assert!(Entry::from_str("folder_a_b").is_err());
    }
}
