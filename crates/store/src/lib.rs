//! The Redis contract in code: every read and atomic write Kiln's services perform on its
//! keys. Services never format a key or send a multi-key write themselves; they call this
//! crate, so the api, the worker and github-ingest cannot drift apart.

mod builds;
mod checks;
mod connect;
mod error;
mod finished;
mod job_cache;
mod links;
mod matrix;
mod nodes;
mod pubsub;
mod queue;
mod raw;
mod scripts;
mod seal;
mod secrets;
mod sentinel;
mod tree;

pub use builds::{
    CancelOutcome, SlotWait, Trigger as TriggerRequest, TriggeredBuild, WORKER_LIVENESS_MS,
};
pub use connect::{redact, BlockingStore, RedisHealth, Store, StoreOptions};
pub use error::StoreError;
pub use finished::DeadLetter;
pub use job_cache::StoredJob;
pub use links::{valid_repo_part, Link};
pub use nodes::QueueStats;
pub use queue::{Claimed, Finished, Heartbeat, Lease, ReapOutcome};
pub use raw::{is_layout_key, RawValue};
pub use seal::{SealError, SealKey};
pub use tree::PutOutcome;

/// Re-exported so services can build pools and commands without naming the crate twice.
pub use deadpool_redis::redis;
