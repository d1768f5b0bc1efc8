//! Redis behind Sentinel (automatic failover). Addresses use fred's URL form, so the
//! subscribers (fred) and the command pools (redis-rs) read the same setting:
//! `redis-sentinel://[user:password@]sentinel:26379[/db]?sentinelServiceName=mymaster&node=sentinel2:26379`
//! (`rediss-sentinel://` for TLS to the Redis nodes).

use std::sync::Arc;
use std::time::Duration;

use deadpool::managed::{Metrics, RecycleError, RecycleResult};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{AsyncConnectionConfig, RedisConnectionInfo, RedisError, TlsMode, Value};

use crate::checks::Checks;
use crate::connect::{redact, Shareable};
use crate::error::StoreError;

/// Whether a URL names Redis behind Sentinel.
pub(crate) fn is_sentinel_url(url: &str) -> bool {
    url.starts_with("redis-sentinel://") || url.starts_with("rediss-sentinel://")
}

/// Creates connections to the master the sentinels name, with Kiln's response timeout; a
/// pooled connection to a node that is no longer the master (after a failover) is dropped
/// on its next use, so commands follow the new master.
pub(crate) struct SentinelManager {
    client: tokio::sync::Mutex<SentinelClient>,
    config: AsyncConnectionConfig,
    checks: Arc<Checks>,
}

pub(crate) type SentinelPool = deadpool::managed::Pool<SentinelManager>;

impl deadpool::managed::Manager for SentinelManager {
    type Type = Shareable;
    type Error = RedisError;

    async fn create(&self) -> Result<Shareable, RedisError> {
        let client = self.client.lock().await.async_get_client().await?;
        let conn = client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        Ok(Shareable::new(conn, &self.checks))
    }

    async fn recycle(&self, conn: &mut Shareable, metrics: &Metrics) -> RecycleResult<RedisError> {
        // A busy connection to a node demoted by a failover fails its next write
        // (READONLY), is flagged, and is refused here on its next hand-out; see `checks`.
        conn.check_failed()?;
        if !self.checks.needed(metrics) {
            return Ok(());
        }
        let role: Vec<Value> = redis::cmd("ROLE").query_async(conn.conn()).await?;
        match role.first() {
            Some(Value::BulkString(b)) if b.as_slice() == b"master" => Ok(()),
            _ => Err(RecycleError::message("the node is no longer the master")),
        }
    }
}

/// Parses a Sentinel URL and builds a pool of `size` connections to the current master.
pub(crate) fn pool(
    url: &str,
    size: usize,
    response_timeout: Option<Duration>,
) -> Result<SentinelPool, StoreError> {
    let bad = |why: &str| StoreError::Url(format!("{}: {why}", redact(url)));
    let (tls, rest) = match url.split_once("://") {
        Some(("redis-sentinel", r)) => (false, r),
        Some(("rediss-sentinel", r)) => (true, r),
        _ => return Err(bad("not a Sentinel URL")),
    };
    let (authority_path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (userinfo, host_path) = match authority_path.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority_path),
    };
    let (host, db) = match host_path.split_once('/') {
        Some((h, d)) if !d.is_empty() => (
            h,
            d.parse::<i64>()
                .map_err(|_| bad("the database must be a number"))?,
        ),
        Some((h, _)) => (h, 0),
        None => (host_path, 0),
    };
    let mut sentinels = vec![host.to_owned()];
    let mut service = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sentinelServiceName", v)) => service = Some(v.to_owned()),
            Some(("node", v)) => sentinels.push(v.to_owned()),
            _ => {
                return Err(bad(
                    "only sentinelServiceName and node parameters are understood",
                ))
            }
        }
    }
    let service = service.ok_or_else(|| bad("sentinelServiceName is required"))?;
    if sentinels.iter().any(|s| s.is_empty() || !s.contains(':')) {
        return Err(bad("every sentinel must be host:port"));
    }
    let mut info = RedisConnectionInfo::default().set_db(db);
    if let Some(u) = userinfo {
        let (user, password) = u.split_once(':').unwrap_or(("", u));
        if !user.is_empty() {
            info = info.set_username(user);
        }
        if !password.is_empty() {
            info = info.set_password(password);
        }
    }
    let mut node = SentinelNodeConnectionInfo::default().set_redis_connection_info(info);
    if tls {
        node = node.set_tls_mode(TlsMode::Secure);
    }
    let addrs: Vec<String> = sentinels.iter().map(|s| format!("redis://{s}")).collect();
    let client = SentinelClient::build(addrs, service, Some(node), SentinelServerType::Master)
        .map_err(|e| bad(&e.to_string()))?;
    let manager = SentinelManager {
        client: tokio::sync::Mutex::new(client),
        config: AsyncConnectionConfig::new()
            .set_response_timeout(response_timeout)
            .set_connection_timeout(Some(Duration::from_secs(2))),
        checks: Arc::default(),
    };
    deadpool::managed::Pool::builder(manager)
        .max_size(size)
        .queue_mode(deadpool::managed::QueueMode::Lifo)
        .runtime(deadpool::Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(3)))
        .recycle_timeout(Some(Duration::from_secs(2)))
        .build()
        .map_err(|e| bad(&e.to_string()))
}
