//! The reliable queue: claim under a lease, fenced writes, heartbeat, finish, hand-back and
//! the reaper. `docs/architecture.md` walks through the protocol step by step.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_redis::redis::{self, AsyncCommands};
use kiln_model::job::AFTER_BUILD_MARKS;
use kiln_model::{
    keys, BuildDocument, BuildEvent, BuildEventKind, BuildRef, BuildStatus, Name, NodeInfo,
    OutputMessage,
};

use crate::builds::now_rfc3339;
use crate::connect::{BlockingStore, Store};
use crate::error::StoreError;
use crate::job_cache::{JobCache, StoredJob};
use crate::scripts;
use crate::tree::{parse, script_error};

/// A worker's hold on one build. The token is random per claim, so a claim that Redis lost
/// (failover) can never be confused with a later one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub build: BuildRef,
    pub worker: Name,
    pub token: String,
    /// The queue the build was claimed from.
    pub queue: Name,
}

impl Lease {
    fn owner(&self) -> String {
        owner(&self.worker, &self.token, &self.queue)
    }
}

/// How a lease's holder reads in `kiln:lease-owners`.
fn owner(worker: &Name, token: &str, queue: &Name) -> String {
    format!("{worker} {token} {queue}")
}

/// A build just taken from a queue, with its document as it was queued and its job's
/// definition as it is now (`None`: the job is gone), shared with the builds of the same
/// job claimed before while it stays unchanged.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub lease: Lease,
    pub doc: BuildDocument,
    pub job: Option<Arc<StoredJob>>,
}

/// What a claim returns: the build's key, its document and its job's definition.
type ClaimReply = (String, String, Option<String>);

/// What finishing returns: the oldest build number kept, then a claim's reply or nothing.
type FinishReply = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// The lease a claim asks for, before Redis has picked the build.
struct NextLease {
    queue: Name,
    worker: Name,
    token: String,
}

impl NextLease {
    fn new(queue: &Name, worker: &Name) -> Self {
        Self {
            queue: queue.clone(),
            worker: worker.clone(),
            // 128 random bits from the thread's CSPRNG (seeded by the OS): no system call
            // per claim, as a v4 UUID from the OS's generator made.
            token: format!("{:032x}", rand::random::<u128>()),
        }
    }

    fn owner(&self) -> String {
        owner(&self.worker, &self.token, &self.queue)
    }

    fn claimed(self, (key, raw, def): ClaimReply, jobs: &JobCache) -> Result<Claimed, StoreError> {
        let build =
            BuildRef::from_key(&key).map_err(|e| StoreError::Conflict(format!("{key}: {e}")))?;
        let job = def.map(|d| jobs.resolve(&build.job, d)).transpose()?;
        Ok(Claimed {
            job,
            doc: parse(&key, &raw)?,
            lease: Lease {
                build,
                worker: self.worker,
                token: self.token,
                queue: self.queue,
            },
        })
    }
}

/// A finished build's recording: the oldest build number its job keeps (storage below it
/// can go) and, when asked for, the next build of the same queue, already claimed. A next
/// build that cannot be read (a corrupt document) is an error of its own: the finish was
/// recorded all the same, and the unreadable build's lease runs out for the reaper.
#[derive(Debug)]
pub struct Finished {
    pub oldest_kept: Option<u64>,
    pub next: Result<Option<Claimed>, StoreError>,
}

/// The reply to a heartbeat: build keys whose lease the worker no longer holds (it must
/// kill them and discard their results) and those whose cancellation was requested.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Heartbeat {
    pub stale: Vec<String>,
    pub cancelled: Vec<String>,
    /// An operator paused the worker: it takes no new build until resumed.
    pub paused: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReapOutcome {
    pub requeued: u64,
    pub lost: u64,
}

fn event(kind: BuildEventKind, doc: &BuildDocument) -> String {
    event_as(kind, doc, doc.status, Utc::now())
}

/// An event of `doc`'s build reading `status`, that happened `at` (a start announced with
/// the build's finish reads `running`, at the time the build started).
fn event_as(
    kind: BuildEventKind,
    doc: &BuildDocument,
    status: BuildStatus,
    at: DateTime<Utc>,
) -> String {
    let e = BuildEvent {
        kind,
        job: doc.job.clone(),
        number: doc.number,
        status,
        folder: doc.folder.clone(),
        at,
    };
    serde_json::to_string(&e).unwrap_or_default()
}

fn to_json(doc: &BuildDocument) -> Result<String, StoreError> {
    serde_json::to_string(doc).map_err(|e| StoreError::corrupt(&doc.build_ref().key(), e))
}

fn fenced(e: redis::RedisError, lease: &Lease) -> StoreError {
    script_error(e, &format!("build {}", lease.build))
        .unwrap_or_else(|| StoreError::Stale(lease.build.to_string()))
}

impl Store {
    /// Takes the oldest build of `queue`, if any, under a new lease of `lease` length, with
    /// its job's definition: the worker starts the first step without waiting for
    /// [`Store::start_build`].
    pub async fn claim(
        &self,
        queue: &Name,
        worker: &Name,
        lease: Duration,
    ) -> Result<Option<Claimed>, StoreError> {
        let next = NextLease::new(queue, worker);
        let mut c = self.conn().await?;
        let r: Option<ClaimReply> = scripts::CLAIM
            .key(keys::queue(queue))
            .key(keys::queue_marker(queue))
            .key(keys::inflight(worker))
            .key(keys::LEASES)
            .key(keys::LEASE_OWNERS)
            .key(keys::running(queue))
            .arg(next.owner())
            .arg(lease.as_millis() as u64)
            .arg(keys::prefix::JOB)
            .invoke_async(&mut c)
            .await?;
        r.map(|reply| next.claimed(reply, &self.jobs)).transpose()
    }

    /// Marks a claimed build running (fenced by its lease), tells the events channel, and
    /// publishes `first_lines`, the log's first batch, on the build's output channel.
    pub async fn start_build(
        &self,
        lease: &Lease,
        doc: &BuildDocument,
        first_lines: Option<&OutputMessage>,
    ) -> Result<(), StoreError> {
        let event = event(BuildEventKind::Started, doc);
        self.write_fenced(lease, doc, &event, first_lines).await
    }

    /// Records progress (step results) of a running build, fenced by its lease.
    pub async fn update_build(&self, lease: &Lease, doc: &BuildDocument) -> Result<(), StoreError> {
        self.write_fenced(lease, doc, "", None).await
    }

    /// Writes `doc` unless the lease was lost, then publishes `event` (`""`: none) and
    /// `lines` on the build's output channel.
    async fn write_fenced(
        &self,
        lease: &Lease,
        doc: &BuildDocument,
        event: &str,
        lines: Option<&OutputMessage>,
    ) -> Result<(), StoreError> {
        let lines = crate::pubsub::encode_optional(lines)?;
        let mut c = self.conn().await?;
        scripts::WRITE
            .key(lease.build.key())
            .key(keys::LEASE_OWNERS)
            .arg(lease.owner())
            .arg(to_json(doc)?)
            .arg(keys::EVENTS_CHANNEL)
            .arg(event)
            .arg(keys::output_channel(&lease.build))
            .arg(lines)
            .invoke_async::<Option<String>>(&mut c)
            .await
            .map_err(|e| fenced(e, lease))?;
        Ok(())
    }

    /// Records the final state, drops the lease, hands the build to every durable consumer
    /// and publishes `last_lines` (the log's last batch, when the worker held it back) then
    /// `end` on its output channel, in one step. With `claim_next` (a lease length) it also
    /// claims the next build of the lease's queue for the same worker, as
    /// [`Store::claim`] would, in the same round trip: a busy worker's slot goes from one
    /// build to the next without a claim of its own. With `announce_start` (a build whose
    /// start was never written: it ended first) the `started` event goes out before the
    /// `finished` one.
    pub async fn finish_build(
        &self,
        lease: &Lease,
        doc: &BuildDocument,
        last_lines: Option<&OutputMessage>,
        end: &OutputMessage,
        claim_next: Option<Duration>,
        announce_start: bool,
    ) -> Result<Finished, StoreError> {
        let last_lines = crate::pubsub::encode_optional(last_lines)?;
        let end = crate::pubsub::encode_output(end)?;
        let next = claim_next.map(|_| NextLease::new(&lease.queue, &lease.worker));
        let (slots, waiting) = keys::slot_keys(&lease.build.job, doc.concurrency_group.as_ref());
        let mut c = self.conn().await?;
        let (oldest, key, raw, def): FinishReply = scripts::FINISH
            .key(lease.build.key())
            .key(keys::LEASE_OWNERS)
            .key(keys::LEASES)
            .key(keys::inflight(&lease.worker))
            .key(keys::FINISHED_CONSUMERS)
            .key(keys::running(&lease.queue))
            .key(keys::job_recent(&lease.build.job))
            .key(keys::queue(&lease.queue))
            .key(keys::queue_marker(&lease.queue))
            .key(slots)
            .key(waiting)
            .key(keys::job(&lease.build.job))
            .key(keys::downstream_finished())
            .arg(lease.owner())
            .arg(to_json(doc)?)
            .arg(keys::prefix::FINISHED)
            .arg(keys::EVENTS_CHANNEL)
            .arg(event(BuildEventKind::Finished, doc))
            .arg(keys::output_channel(&lease.build))
            .arg(end)
            .arg(last_lines)
            .arg(next.as_ref().map(NextLease::owner).unwrap_or_default())
            .arg(claim_next.map_or(0, |l| l.as_millis() as u64))
            .arg(keys::prefix::JOB)
            .arg(if announce_start {
                let at = doc.started_at.unwrap_or_else(Utc::now);
                event_as(BuildEventKind::Started, doc, BuildStatus::Running, at)
            } else {
                String::new()
            })
            .arg(keys::prefix::QUEUE)
            .arg(keys::prefix::QUEUE_MARKER)
            .arg(AFTER_BUILD_MARKS)
            .invoke_async(&mut c)
            .await
            .map_err(|e| fenced(e, lease))?;
        let next = match (next, key, raw) {
            (Some(n), Some(key), Some(raw)) => n.claimed((key, raw, def), &self.jobs).map(Some),
            _ => Ok(None),
        };
        Ok(Finished {
            oldest_kept: oldest.and_then(|n| n.parse().ok()),
            next,
        })
    }

    /// Puts a build back at the head of its queue without counting the attempt (graceful
    /// shutdown). `doc` is the document as it should read while queued again.
    pub async fn release_build(
        &self,
        lease: &Lease,
        doc: &BuildDocument,
    ) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        scripts::RELEASE
            .key(lease.build.key())
            .key(keys::LEASE_OWNERS)
            .key(keys::LEASES)
            .key(keys::inflight(&lease.worker))
            .key(keys::queue(&doc.queue))
            .key(keys::queue_marker(&doc.queue))
            .key(keys::running(&lease.queue))
            .arg(lease.owner())
            .arg(to_json(doc)?)
            .arg(keys::EVENTS_CHANNEL)
            .arg(event(BuildEventKind::Requeued, doc))
            .invoke_async::<i64>(&mut c)
            .await
            .map_err(|e| fenced(e, lease))?;
        Ok(())
    }

    /// Renews the worker's leases, records it as alive and publishes its heartbeat, in one
    /// round trip.
    pub async fn heartbeat(
        &self,
        node: &NodeInfo,
        node_ttl: Duration,
        lease: Duration,
        leases: &[Lease],
    ) -> Result<Heartbeat, StoreError> {
        let json = serde_json::to_string(node).map_err(|e| StoreError::corrupt("node", e))?;
        let mut inv = scripts::HEARTBEAT.prepare_invoke();
        inv.key(keys::WORKERS)
            .key(keys::queue_workers(&node.queue))
            .key(keys::node(&node.id))
            .key(keys::LEASES)
            .key(keys::LEASE_OWNERS)
            .key(keys::PAUSED_WORKERS)
            .arg(node.id.as_str())
            .arg(json)
            .arg(node_ttl.as_millis() as u64)
            .arg(lease.as_millis() as u64)
            .arg(keys::NODES_CHANNEL);
        for l in leases {
            inv.arg(l.build.key()).arg(l.owner());
        }
        let mut c = self.conn().await?;
        let (stale, cancelled, paused): (Vec<String>, Vec<String>, bool) =
            inv.invoke_async(&mut c).await?;
        Ok(Heartbeat {
            stale,
            cancelled,
            paused,
        })
    }

    /// Requeues or ends (as `lost`) up to `limit` builds whose lease expired.
    pub async fn reap(&self, limit: usize) -> Result<ReapOutcome, StoreError> {
        let mut c = self.conn().await?;
        let (requeued, lost): (u64, u64) = scripts::REAP
            .key(keys::LEASES)
            .key(keys::LEASE_OWNERS)
            .key(keys::FINISHED_CONSUMERS)
            .key(keys::downstream_finished())
            .arg(now_rfc3339())
            .arg(keys::prefix::JOB)
            .arg(keys::prefix::QUEUE)
            .arg(keys::prefix::QUEUE_MARKER)
            .arg(keys::prefix::INFLIGHT)
            .arg(keys::prefix::FINISHED)
            .arg(keys::EVENTS_CHANNEL)
            .arg(limit)
            .arg(keys::prefix::RUNNING)
            .arg(keys::prefix::JOB_SLOTS)
            .arg(keys::prefix::JOB_WAITING)
            .arg(AFTER_BUILD_MARKS)
            .arg(keys::prefix::GROUP_SLOTS)
            .arg(keys::prefix::GROUP_WAITING)
            .invoke_async(&mut c)
            .await?;
        Ok(ReapOutcome { requeued, lost })
    }

    /// Registers a durable consumer of finished builds (`kiln:finished:<consumer>`); from
    /// then on every finished build is pushed to its list until it is unregistered.
    /// Pauses (`true`) or resumes a worker by id: its next heartbeat tells it.
    pub async fn set_worker_paused(&self, worker: &Name, paused: bool) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let _: i64 = if paused {
            c.sadd(keys::PAUSED_WORKERS, worker.as_str()).await?
        } else {
            c.srem(keys::PAUSED_WORKERS, worker.as_str()).await?
        };
        Ok(())
    }

    pub async fn register_consumer(&self, consumer: &Name) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let _: i64 = c.sadd(keys::FINISHED_CONSUMERS, consumer.as_str()).await?;
        Ok(())
    }
}

impl BlockingStore {
    /// Blocks until `queue` may hold work or `timeout` passes; `true` means "try to claim
    /// now".
    pub async fn wait_for_work(&self, queue: &Name, timeout: Duration) -> Result<bool, StoreError> {
        let mut c = self.0.conn().await?;
        let r: Option<(String, String, f64)> = redis::cmd("BZPOPMIN")
            .arg(keys::queue_marker(queue))
            .arg(timeout.as_secs_f64())
            .query_async(&mut c)
            .await?;
        Ok(r.is_some())
    }
}
