//! Workers and queues as operators and autoscalers see them.

use chrono::{DateTime, Utc};
use deadpool_redis::redis::{self, AsyncCommands};
use kiln_model::{keys, BuildDocument, Name, NodeInfo};
use serde::Serialize;

use crate::connect::Store;
use crate::error::StoreError;

/// The autoscaling signal of one queue.
#[derive(Debug, Clone, Serialize)]
pub struct QueueStats {
    pub queue: Name,
    /// Builds waiting.
    pub depth: u64,
    /// Builds of this queue that workers hold now.
    pub running: u64,
    pub oldest_queued_at: Option<DateTime<Utc>>,
    /// Seconds the oldest waiting build has waited.
    pub oldest_age_secs: Option<f64>,
    /// Workers that heartbeated recently and serve this queue.
    pub live_workers: u64,
}

/// Most entries one listing returns; queues are drained by workers, so a longer one is
/// paged by its callers.
const MAX_LISTED: isize = 1000;

impl Store {
    /// Every worker alive now (its node key has not expired).
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        let mut c = self.conn().await?;
        let ids: Vec<String> = c.zrange(keys::WORKERS, 0, -1).await?;
        let names: Vec<Name> = ids.iter().filter_map(|i| Name::parse(i).ok()).collect();
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let node_keys: Vec<String> = names.iter().map(keys::node).collect();
        let raws: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&node_keys)
            .query_async(&mut c)
            .await?;
        Ok(raws
            .into_iter()
            .flatten()
            .filter_map(|r| serde_json::from_str(&r).ok())
            .collect())
    }

    /// Every queue that has ever held a build.
    pub async fn queue_names(&self) -> Result<Vec<Name>, StoreError> {
        let mut c = self.conn().await?;
        let names: Vec<String> = c.smembers(keys::QUEUES).await?;
        let mut names: Vec<Name> = names.iter().filter_map(|n| Name::parse(n).ok()).collect();
        names.sort();
        Ok(names)
    }

    pub async fn queue_stats(&self, queue: &Name) -> Result<QueueStats, StoreError> {
        let mut c = self.conn().await?;
        let now_ms = Utc::now().timestamp_millis();
        let (depth, running, oldest, live): (u64, u64, Option<String>, u64) = redis::pipe()
            .llen(keys::queue(queue))
            .llen(keys::running(queue))
            .lindex(keys::queue(queue), -1)
            .zcount(
                keys::queue_workers(queue),
                now_ms - crate::builds::WORKER_LIVENESS_MS as i64,
                "+inf",
            )
            .query_async(&mut c)
            .await?;
        drop(c);
        let oldest_queued_at = match oldest {
            Some(k) => self.get_builds(&[k]).await?.first().map(|d| d.queued_at),
            None => None,
        };
        Ok(QueueStats {
            queue: queue.clone(),
            depth,
            running,
            oldest_age_secs: oldest_queued_at
                .map(|t| (Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0),
            oldest_queued_at,
            live_workers: live,
        })
    }

    /// The builds waiting on `queue`, next to run first.
    pub async fn queued_builds(&self, queue: &Name) -> Result<Vec<BuildDocument>, StoreError> {
        let mut c = self.conn().await?;
        let mut keys: Vec<String> = c.lrange(keys::queue(queue), -MAX_LISTED, -1).await?;
        drop(c);
        keys.reverse();
        self.get_builds(&keys).await
    }

    /// How many builds are leased to workers now (running or being started).
    pub async fn inflight_count(&self) -> Result<u64, StoreError> {
        let mut c = self.conn().await?;
        Ok(c.zcard(keys::LEASES).await?)
    }
}

impl Store {
    /// Forgets a worker that is stopping cleanly, so listings drop it at once instead of
    /// when its node key expires.
    pub async fn remove_node(&self, node: &NodeInfo) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let _: () = redis::pipe()
            .del(keys::node(&node.id))
            .zrem(keys::WORKERS, node.id.as_str())
            .zrem(keys::queue_workers(&node.queue), node.id.as_str())
            .query_async(&mut c)
            .await?;
        Ok(())
    }
}
