//! Triggering, reading and cancelling builds (`job_<name>_recent`, `job_<name>_<n>`).

use std::collections::BTreeMap;

use chrono::{SecondsFormat, Utc};
use deadpool_redis::redis::{self, AsyncCommands};
use kiln_model::job::AFTER_BUILD_MARKS;
use kiln_model::{
    keys, BuildDocument, BuildEvent, BuildEventKind, BuildLink, BuildNumber, BuildRef, BuildStatus,
    JobName, Keep, Name, Trigger as BuildTrigger,
};

use crate::connect::Store;
use crate::error::StoreError;
use crate::job_cache::CachedJob;
use crate::scripts;
use crate::tree::{parse, script_error};

/// How recently a worker must have heartbeated to count as serving its queue.
pub const WORKER_LIVENESS_MS: u64 = 30_000;

/// A request to run a job.
#[derive(Debug, Clone)]
pub struct Trigger {
    pub job: JobName,
    pub parameters: BTreeMap<String, String>,
    pub trigger: BuildTrigger,
    /// A delivery key (`keys::github_delivery`) and its TTL: when the key exists the event
    /// was handled already and no build is queued; otherwise it is set in the same step.
    pub dedup: Option<(String, u64)>,
    /// Ahead of every build already queued (a hotfix): it goes to the claim end of its
    /// queue, or to the head of its concurrency slots' waiting list.
    pub next: bool,
    /// Only these cells of the job's matrix (running a matrix's failed cells again), each
    /// still one of its cells; `None`: every cell.
    pub cells: Option<Vec<BTreeMap<String, String>>>,
}

/// What a trigger wrote. The storage folders of builds that fell out of retention are left
/// to the workers, which reuse them (see the worker's `spares`).
#[derive(Debug, Clone)]
pub struct TriggeredBuild {
    pub build: BuildDocument,
    /// True when the delivery had been handled before: `build` is the build it queued then.
    pub deduplicated: bool,
    /// A matrix job's other builds, queued with `build` (its first cell) by the same
    /// trigger; empty for a job without a matrix, or a delivery handled before.
    pub matrix_builds: Vec<BuildDocument>,
}

impl CancelOutcome {
    /// As the api says it: `cancelled` at once, or `requested` of its worker.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cancelled => "cancelled",
            Self::Requested => "requested",
        }
    }
}

impl TriggeredBuild {
    /// Every build the trigger queued: `build`, then a matrix's other builds.
    pub fn builds(&self) -> impl Iterator<Item = &BuildDocument> {
        std::iter::once(&self.build).chain(&self.matrix_builds)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It was queued and is now `cancelled`.
    Cancelled,
    /// It is running; its worker was told and will end it as `cancelled`.
    Requested,
}

/// Why a build of a job with a `concurrency` limit waits: every slot of its job, or of its
/// concurrency group, is taken (and, when known, how many builds wait before it).
fn slot_wait_reason(
    job: &JobName,
    group: Option<&Name>,
    limit: u32,
    ahead: Option<usize>,
) -> String {
    let s = if limit == 1 { "" } else { "s" };
    let mut r = match group {
        Some(g) => format!(
            "waiting for a slot: the jobs of group '{g}' run at most {limit} build{s} at once (concurrency_group, job '{job}')"
        ),
        None => format!(
            "waiting for a slot: job '{job}' runs at most {limit} build{s} at once (concurrency)"
        ),
    };
    if let Some(a) = ahead {
        let whose = if group.is_some() {
            "the group's"
        } else {
            "its"
        };
        r.push_str(&format!("; {a} of {whose} builds wait before this one"));
    }
    r
}

/// Where a build waiting for a concurrency slot (its job's or its group's) stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotWait {
    /// Its job's limit now.
    pub limit: u32,
    /// How many builds wait before it.
    pub ahead: usize,
    /// The concurrency group it waits in, if any.
    pub group: Option<Name>,
}

impl SlotWait {
    /// What a queued build's `reason` says while it waits.
    pub fn reason(&self, job: &JobName) -> String {
        slot_wait_reason(job, self.group.as_ref(), self.limit, Some(self.ahead))
    }
}

/// The oldest `finished_at` a build may have under `retention.days`, as the scripts compare
/// it (RFC 3339, UTC, to the millisecond); `None` without an age limit.
fn retention_cutoff(days: Option<u32>) -> Option<String> {
    days.map(|d| {
        (Utc::now() - chrono::Duration::days(i64::from(d)))
            .to_rfc3339_opts(SecondsFormat::Millis, true)
    })
}

/// The cells a trigger queues builds of: the job's matrix's every cell, or those `only`
/// names when each is still one of them; none for a job without a matrix.
fn matrix_cells(
    def: &kiln_model::JobDefinition,
    only: Option<&[BTreeMap<String, String>]>,
) -> Result<Vec<BTreeMap<String, String>>, StoreError> {
    let refused = |message: String| StoreError::Invalid {
        field: "matrix".into(),
        message,
    };
    match (&def.matrix, only) {
        (None, None) => Ok(Vec::new()),
        (None, Some(_)) => Err(refused("the job has no matrix any more".into())),
        (Some(m), None) => Ok(m.cells()),
        (Some(_), Some([])) => Err(refused("no cell to build".into())),
        (Some(m), Some(only)) => {
            let all = m.cells();
            match only.iter().find(|c| !all.contains(c)) {
                Some(gone) => Err(refused(format!(
                    "{} is no longer a cell of the job's matrix",
                    kiln_model::matrix::label(gone)
                ))),
                None => Ok(only.to_vec()),
            }
        }
    }
}

pub(crate) fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// How one attempt to queue a build against a given job definition ended.
enum Attempt {
    Queued(Box<TriggeredBuild>),
    /// The stored definition is no longer the one the attempt was made with.
    Changed,
    /// Refused before anything was written (disabled, bad parameters, job gone...).
    Refused(StoreError),
}

impl Store {
    /// Takes the next build number and queues the build, atomically (see `trigger.lua`).
    /// The job's definition comes from this process's cache when it has one (see
    /// `job_cache`).
    pub async fn trigger(&self, req: &Trigger) -> Result<TriggeredBuild, StoreError> {
        let what = format!("job {}", req.job);
        let mut cached = self.jobs.get(&req.job);
        for _ in 0..5 {
            let from_cache = cached.is_some();
            let job = match cached.take() {
                Some(job) => job,
                None => {
                    let raw = self
                        .job_json(&req.job)
                        .await?
                        .ok_or_else(|| StoreError::NotFound(what.clone()))?;
                    self.jobs.resolve(&req.job, raw)?
                }
            };
            match self.trigger_with(req, &job, &what).await? {
                Attempt::Queued(t) => return Ok(*t),
                Attempt::Changed => self.jobs.forget(&req.job),
                // A refusal made from a cached definition is asked again of Redis.
                Attempt::Refused(_) if from_cache => self.jobs.forget(&req.job),
                Attempt::Refused(e) => return Err(e),
            }
        }
        Err(StoreError::Conflict(format!(
            "{what} is changing; try again"
        )))
    }

    /// One attempt of [`Store::trigger`] against the definition `job` (and its stored
    /// JSON). Errors are those after which the build may have been queued (a lost reply),
    /// never to be retried.
    async fn trigger_with(
        &self,
        req: &Trigger,
        job: &CachedJob,
        what: &str,
    ) -> Result<Attempt, StoreError> {
        let (raw_def, def) = (job.raw.as_str(), &job.def);
        let group = def.slot_group();
        if def.disabled {
            return Ok(Attempt::Refused(StoreError::Conflict(format!(
                "{what} is disabled and accepts no new builds"
            ))));
        }
        let parameters = match def.resolve_parameters(&req.parameters) {
            Ok(p) => p,
            Err(e) => {
                return Ok(Attempt::Refused(StoreError::Invalid {
                    field: e.field,
                    message: e.message,
                }))
            }
        };
        let chain = match self.folder_chain(def.folder.as_ref()).await {
            Err(e @ StoreError::NotFound(_)) => return Ok(Attempt::Refused(e)),
            chain => chain?,
        };
        let mut path = String::from("jobs");
        for f in chain {
            path.push('/');
            path.push_str(f.as_str());
        }
        path.push('/');
        path.push_str(req.job.as_str());

        let template = BuildDocument {
            schema_version: kiln_model::SCHEMA_VERSION,
            job: req.job.clone(),
            number: BuildNumber(1),
            folder: def.folder.clone(),
            status: BuildStatus::Queued,
            trigger: req.trigger.clone(),
            parameters,
            queue: def.queue.clone(),
            queued_at: Utc::now(),
            started_at: None,
            finished_at: None,
            duration_ms: None,
            exit_code: None,
            steps: Vec::new(),
            node: None,
            attempt: 1,
            storage_path: String::new(),
            reason: None,
            cancel_requested: false,
            concurrency_group: group.cloned(),
            keep: None,
            downstream_builds: Vec::new(),
            artifacts_expired_at: None,
            matrix: None,
        };
        let mut v = serde_json::to_value(&template).map_err(|e| StoreError::corrupt("build", e))?;
        if let Some(o) = v.as_object_mut() {
            for k in ["number", "storage_path", "reason"] {
                o.remove(k);
            }
        }
        let rest = v.to_string();
        let rest = rest.strip_prefix('{').unwrap_or(&rest);
        // The queued event with number 0: the script puts in the number it takes.
        let queued_event = serde_json::to_string(&BuildEvent {
            kind: BuildEventKind::Queued,
            job: req.job.clone(),
            number: BuildNumber(0),
            status: BuildStatus::Queued,
            folder: def.folder.clone(),
            at: Utc::now(),
        })
        .map_err(|e| StoreError::corrupt("event", e))?;
        let no_worker = serde_json::Value::from(format!(
            "no live worker serves queue '{}'; the build waits until one starts",
            def.queue
        ))
        .to_string();

        let cells = match matrix_cells(def, req.cells.as_deref()) {
            Ok(cells) => cells
                .iter()
                .map(serde_json::to_string)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StoreError::corrupt("matrix cell", e))?,
            Err(refused) => return Ok(Attempt::Refused(refused)),
        };
        let (slots, waiting) = keys::slot_keys(&req.job, group);
        let mut c = self.conn().await?;
        let r = scripts::TRIGGER
            .key(keys::job(&req.job))
            .key(keys::job_recent(&req.job))
            .key(keys::BUILD_COUNTERS)
            .key(keys::queue(&def.queue))
            .key(keys::queue_marker(&def.queue))
            .key(keys::QUEUES)
            .key(keys::queue_workers(&def.queue))
            .key(slots)
            .key(waiting)
            .key(keys::QUEUE_DEADLINES)
            .key(keys::STORAGE_ORPHANS)
            .arg(req.job.as_str())
            .arg(rest)
            .arg(&path)
            .arg(def.retention.builds)
            .arg(def.queue.as_str())
            .arg(keys::build_prefix(&req.job))
            .arg(&queued_event)
            .arg(WORKER_LIVENESS_MS)
            .arg(keys::EVENTS_CHANNEL)
            .arg(&no_worker)
            .arg(raw_def)
            .arg(req.dedup.as_ref().map_or("", |(k, _)| k.as_str()))
            .arg(req.dedup.as_ref().map_or(0, |(_, ttl)| *ttl))
            .arg(def.concurrency.map(|c| c.to_string()).unwrap_or_default())
            .arg(
                def.concurrency
                    .map(|c| serde_json::Value::from(slot_wait_reason(&req.job, group, c, None)))
                    .map(|reason| reason.to_string())
                    .unwrap_or_default(),
            )
            .arg(
                def.queue_timeout_secs
                    .map(|s| (s * 1000).to_string())
                    .unwrap_or_default(),
            )
            .arg(if req.next { "1" } else { "" })
            .arg(retention_cutoff(def.retention.days).unwrap_or_default())
            .arg(&cells)
            .invoke_async::<(u64, Vec<String>)>(&mut c)
            .await;
        match r {
            Ok((0, existing)) => {
                drop(c);
                let existing = existing.concat();
                let build = BuildRef::from_key(&existing)
                    .map_err(|e| StoreError::Conflict(format!("{existing}: {e}")))?;
                let doc = self
                    .get_build(&build)
                    .await?
                    .ok_or_else(|| StoreError::NotFound(format!("build {build}")))?;
                Ok(Attempt::Queued(Box::new(TriggeredBuild {
                    build: doc,
                    deduplicated: true,
                    matrix_builds: Vec::new(),
                })))
            }
            Ok((first, docs)) => {
                let mut builds = (first..)
                    .zip(&docs)
                    .map(|(n, doc)| {
                        parse(&BuildRef::new(req.job.clone(), BuildNumber(n)).key(), doc)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if builds.is_empty() {
                    return Err(StoreError::Unavailable(
                        "the trigger's reply held no build".into(),
                    ));
                }
                let build = builds.remove(0);
                Ok(Attempt::Queued(Box::new(TriggeredBuild {
                    build,
                    deduplicated: false,
                    matrix_builds: builds,
                })))
            }
            Err(e) => match script_error(e, what) {
                None => Ok(Attempt::Changed),
                Some(StoreError::Redis(e)) => Err(StoreError::Redis(e)),
                Some(refused) => Ok(Attempt::Refused(refused)),
            },
        }
    }

    pub async fn get_build(&self, build: &BuildRef) -> Result<Option<BuildDocument>, StoreError> {
        let key = build.key();
        let mut c = self.conn().await?;
        let raw: Option<String> = c.get(&key).await?;
        raw.map(|r| parse(&key, &r)).transpose()
    }

    /// Reads several build documents in one round trip; missing ones are left out.
    pub async fn get_builds(&self, keys: &[String]) -> Result<Vec<BuildDocument>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = self.conn().await?;
        let raws: Vec<Option<String>> = redis::cmd("MGET").arg(keys).query_async(&mut c).await?;
        keys.iter()
            .zip(raws)
            .filter_map(|(k, r)| r.map(|r| parse(k, &r)))
            .collect()
    }

    /// The stored JSON of several build keys, in order (`None` where a key is gone), for
    /// consumers that must tell an unreadable document from a missing one.
    pub async fn get_raw(&self, keys: &[String]) -> Result<Vec<Option<String>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = self.conn().await?;
        Ok(redis::cmd("MGET").arg(keys).query_async(&mut c).await?)
    }

    /// A page of the job's recent builds, newest first, and how many it keeps in all.
    pub async fn list_builds(
        &self,
        job: &JobName,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<BuildDocument>, usize), StoreError> {
        let (keys, total) = self.page_keys(job, offset, limit).await?;
        Ok((self.get_builds(&keys).await?, total))
    }

    /// The build keys of a page of `job_<name>_recent` (newest first), and its length.
    async fn page_keys(
        &self,
        job: &JobName,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<String>, usize), StoreError> {
        let mut c = self.conn().await?;
        let recent = keys::job_recent(job);
        let (numbers, total): (Vec<u64>, usize) = redis::pipe()
            .lrange(&recent, offset as isize, (offset + limit) as isize - 1)
            .llen(&recent)
            .query_async(&mut c)
            .await?;
        let keys = numbers
            .into_iter()
            .filter(|n| *n > 0)
            .map(|n| BuildRef::new(job.clone(), BuildNumber(n)).key())
            .collect();
        Ok((keys, total))
    }

    /// A page of the job's recent builds as stored (each validated as JSON, not decoded),
    /// newest first, and how many it keeps: the api serves these without re-encoding.
    pub async fn list_builds_raw(
        &self,
        job: &JobName,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<Box<serde_json::value::RawValue>>, usize), StoreError> {
        let (keys, total) = self.page_keys(job, offset, limit).await?;
        let raws = self.get_raw(&keys).await?;
        keys.iter()
            .zip(raws)
            .filter_map(|(k, r)| {
                r.map(|r| {
                    serde_json::value::RawValue::from_string(r)
                        .map_err(|e| StoreError::corrupt(k, e))
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|docs| (docs, total))
    }

    /// The build numbers `job_<name>_recent` still holds.
    pub async fn recent_numbers(&self, job: &JobName) -> Result<Vec<u64>, StoreError> {
        let mut c = self.conn().await?;
        Ok(c.lrange(keys::job_recent(job), 0, -1).await?)
    }

    /// Cancels every queued or running build of `job` among its recent ones (a new head
    /// supersedes them, or the pull request closed). Returns how many were cancelled.
    pub async fn cancel_active(&self, job: &JobName, reason: &str) -> Result<usize, StoreError> {
        let (builds, _) = self.list_builds(job, 0, 200).await?;
        let mut n = 0;
        for b in builds.iter().filter(|b| !b.status.is_final()) {
            match self.cancel(&b.build_ref(), reason).await {
                Ok(_) => n += 1,
                Err(StoreError::Conflict(_) | StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    /// Records a delivery id as handled for `ttl_secs`; false if it had been already.
    pub async fn mark_delivery(&self, key: &str, ttl_secs: u64) -> Result<bool, StoreError> {
        let mut c = self.conn().await?;
        let set: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg("-")
            .arg("NX")
            .arg("EX")
            .arg(ttl_secs)
            .query_async(&mut c)
            .await?;
        Ok(set.is_some())
    }

    /// Whether a queued build (of `group`, as its document says) waits for a concurrency
    /// slot (it is then in no queue), and behind how many others.
    pub async fn slot_wait(
        &self,
        build: &BuildRef,
        group: Option<&Name>,
    ) -> Result<Option<SlotWait>, StoreError> {
        let (_, waiting) = keys::slot_keys(&build.job, group);
        let mut c = self.conn().await?;
        let (pos, def): (Option<usize>, Option<String>) = redis::pipe()
            .cmd("LPOS")
            .arg(waiting)
            .arg(build.key())
            .get(keys::job(&build.job))
            .query_async(&mut c)
            .await?;
        let limit = def
            .and_then(|d| serde_json::from_str::<serde_json::Value>(&d).ok())
            .and_then(|d| d.get("concurrency")?.as_u64())
            .and_then(|l| u32::try_from(l).ok());
        Ok(pos.zip(limit).map(|(ahead, limit)| SlotWait {
            limit,
            ahead,
            group: group.cloned(),
        }))
    }

    /// Cancels up to `limit` builds whose job's `queue_timeout_secs` ran out before they
    /// first started (see `expire.lua`). Returns how many it cancelled and how many
    /// deadlines it went through (`limit` means more may be due).
    pub async fn expire_queued(&self, limit: usize) -> Result<(u64, usize), StoreError> {
        let mut c = self.conn().await?;
        Ok(scripts::EXPIRE
            .key(keys::QUEUE_DEADLINES)
            .key(keys::FINISHED_CONSUMERS)
            .key(keys::downstream_finished())
            .arg(now_rfc3339())
            .arg(limit)
            .arg(keys::prefix::JOB)
            .arg(keys::prefix::QUEUE)
            .arg(keys::prefix::QUEUE_MARKER)
            .arg(keys::prefix::JOB_SLOTS)
            .arg(keys::prefix::JOB_WAITING)
            .arg(keys::prefix::FINISHED)
            .arg(keys::EVENTS_CHANNEL)
            .arg(AFTER_BUILD_MARKS)
            .arg(keys::prefix::GROUP_SLOTS)
            .arg(keys::prefix::GROUP_WAITING)
            .invoke_async(&mut c)
            .await?)
    }

    /// Pins an ended build (`Some`) so retention never removes it, or unpins it (`None`);
    /// the search index gets the changed document. Returns it.
    pub async fn set_keep(
        &self,
        build: &BuildRef,
        keep: Option<&Keep>,
    ) -> Result<BuildDocument, StoreError> {
        match keep {
            Some(k) => self.amend(build, "keep", "set", k).await,
            None => self.amend(build, "keep", "unset", &()).await,
        }
    }

    /// Records that an ended build's archived files were removed (`retention.artifacts_days`).
    pub async fn set_artifacts_expired(
        &self,
        build: &BuildRef,
        at: chrono::DateTime<Utc>,
    ) -> Result<BuildDocument, StoreError> {
        self.amend(build, "artifacts_expired_at", "set", &at).await
    }

    /// Records on an ended build a downstream build its end queued (once however often
    /// it is called), so the upstream build lists what it started.
    pub async fn add_downstream_build(
        &self,
        upstream: &BuildRef,
        downstream: &BuildRef,
    ) -> Result<BuildDocument, StoreError> {
        let link = BuildLink {
            job: downstream.job.clone(),
            number: downstream.number,
        };
        self.amend(upstream, "downstream_builds", "add_build", &link)
            .await
    }

    /// Changes one field of an ended build's document (`amend.lua`).
    async fn amend(
        &self,
        build: &BuildRef,
        field: &str,
        op: &str,
        value: &impl serde::Serialize,
    ) -> Result<BuildDocument, StoreError> {
        let key = build.key();
        let value = if op == "unset" {
            String::new()
        } else {
            serde_json::to_string(value).map_err(|e| StoreError::corrupt(&key, e))?
        };
        let mut c = self.conn().await?;
        let r: Result<String, _> = scripts::AMEND
            .key(&key)
            .key(keys::FINISHED_CONSUMERS)
            .key(keys::es_finished())
            .arg(field)
            .arg(op)
            .arg(value)
            .arg(keys::ES_CONSUMER)
            .invoke_async(&mut c)
            .await;
        match r {
            Ok(doc) => parse(&key, &doc),
            Err(e) => Err(script_error(e, &format!("build {build}"))
                .unwrap_or_else(|| StoreError::Conflict(format!("build {build} changed")))),
        }
    }

    /// Trims `job`'s builds past its retention now, as its next trigger would (`trim.lua`):
    /// the sweep for jobs nobody triggers. Their folders go onto the storage orphans list.
    /// Returns how many builds went (at most 100 per call).
    pub async fn sweep_retention(
        &self,
        job: &JobName,
        def: &kiln_model::JobDefinition,
    ) -> Result<u64, StoreError> {
        let mut c = self.conn().await?;
        Ok(scripts::TRIM
            .key(keys::job_recent(job))
            .key(keys::STORAGE_ORPHANS)
            .arg(keys::build_prefix(job))
            .arg(def.retention.builds)
            .arg(retention_cutoff(def.retention.days).unwrap_or_default())
            .invoke_async(&mut c)
            .await?)
    }

    /// Takes up to `max` storage paths of builds retention removed from behind a pinned
    /// one (`keys::STORAGE_ORPHANS`), for the caller to remove their folders; they stay on
    /// `keys::STORAGE_ORPHANS_TAKEN` until [`Store::storage_orphans_removed`], so a replica
    /// that dies meanwhile leaves them for the next start.
    pub async fn take_storage_orphans(&self, max: usize) -> Result<Vec<String>, StoreError> {
        self.take_into(keys::STORAGE_ORPHANS, keys::STORAGE_ORPHANS_TAKEN, max)
            .await
    }

    /// Storage paths taken but not removed when their replica stopped, to remove again.
    pub async fn taken_storage_orphans(&self) -> Result<Vec<String>, StoreError> {
        self.oldest_first(keys::STORAGE_ORPHANS_TAKEN).await
    }

    /// Records taken storage paths as dealt with.
    pub async fn storage_orphans_removed(&self, paths: &[String]) -> Result<(), StoreError> {
        self.remove_from(keys::STORAGE_ORPHANS_TAKEN, paths).await
    }

    /// Cancels a queued build at once, or asks the worker running it to stop.
    pub async fn cancel(&self, build: &BuildRef, by: &str) -> Result<CancelOutcome, StoreError> {
        let doc = self
            .get_build(build)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("build {build}")))?;
        let (slots, waiting) = keys::slot_keys(&build.job, doc.concurrency_group.as_ref());
        let mut c = self.conn().await?;
        let r: String = scripts::CANCEL
            .key(build.key())
            .key(keys::queue(&doc.queue))
            .key(keys::FINISHED_CONSUMERS)
            .key(slots)
            .key(waiting)
            .key(keys::job(&build.job))
            .key(keys::downstream_finished())
            .arg(now_rfc3339())
            .arg(keys::prefix::FINISHED)
            .arg(keys::EVENTS_CHANNEL)
            .arg(keys::CANCEL_CHANNEL)
            .arg(format!("cancelled by {by} before it started"))
            .arg(keys::prefix::QUEUE)
            .arg(keys::prefix::QUEUE_MARKER)
            .arg(AFTER_BUILD_MARKS)
            .arg(keys::prefix::JOB)
            .invoke_async(&mut c)
            .await?;
        match r.as_str() {
            "cancelled" => Ok(CancelOutcome::Cancelled),
            "requested" => Ok(CancelOutcome::Requested),
            "missing" => Err(StoreError::NotFound(format!("build {build}"))),
            _ => Err(StoreError::Conflict(format!(
                "build {build} has already finished ({})",
                doc.status
            ))),
        }
    }
}
