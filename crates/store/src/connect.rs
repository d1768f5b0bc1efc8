//! Connecting to Redis, and checking that the Redis we got is safe to keep builds in.

use std::time::Duration;

use deadpool::managed::{Metrics, Object, RecycleResult};
use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::redis::{self, AsyncConnectionConfig, RedisError};
use deadpool_redis::Runtime;

use crate::checks::{breaks_connection, Checks};
use crate::error::StoreError;
use crate::sentinel::{self, SentinelManager, SentinelPool};

/// How a [`Store`] connects.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// `redis://` or `rediss://` (TLS) URL.
    pub url: String,
    pub pool_size: usize,
    /// Longest any single command may take before the call fails. Blocking commands get
    /// their own connection with a longer limit (see [`Store::blocking`]).
    pub response_timeout: Duration,
}

impl StoreOptions {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            pool_size: 16,
            response_timeout: Duration::from_secs(5),
        }
    }
}

/// A handle on Kiln's Redis. Cheap to clone; every operation takes a pooled connection.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    /// How `backend` was built, for [`Store::for_this_thread`].
    pool: (String, usize, Option<Duration>),
    pub(crate) jobs: std::sync::Arc<crate::job_cache::JobCache>,
}

/// A single Redis (`redis://`, `rediss://`, `unix://`) or Redis behind Sentinel.
#[derive(Clone)]
enum Backend {
    Direct(Pool),
    Sentinel(SentinelPool),
}

/// Connections to one Redis, made by deadpool-redis and checked as `checks` says.
pub(crate) struct DirectManager {
    connections: deadpool_redis::Manager,
    checks: Checks,
}

type Pool = deadpool::managed::Pool<DirectManager>;

impl deadpool::managed::Manager for DirectManager {
    type Type = MultiplexedConnection;
    type Error = RedisError;

    async fn create(&self) -> Result<MultiplexedConnection, RedisError> {
        self.connections.create().await
    }

    async fn recycle(
        &self,
        conn: &mut MultiplexedConnection,
        metrics: &Metrics,
    ) -> RecycleResult<RedisError> {
        if !self.checks.needed(metrics) {
            return Ok(());
        }
        self.connections.recycle(conn, metrics).await
    }
}

/// A pooled connection of either kind; it speaks the redis-rs protocol, so commands,
/// pipelines and scripts take it as they are. One that failed is dropped on release, not
/// put back, and its pool checks its other connections before their next use.
pub(crate) struct Conn {
    pooled: Option<Pooled>,
    broken: bool,
}

enum Pooled {
    Direct(Object<DirectManager>),
    Sentinel(Object<SentinelManager>),
}

impl Conn {
    fn inner(&mut self) -> Option<&mut MultiplexedConnection> {
        match self.pooled.as_mut()? {
            Pooled::Direct(c) => Some(c),
            Pooled::Sentinel(c) => Some(c),
        }
    }

    fn note(&mut self, e: &RedisError) {
        if breaks_connection(e) {
            self.broken = true;
        }
    }
}

fn released() -> RedisError {
    RedisError::from(std::io::Error::other("connection already released"))
}

impl Drop for Conn {
    fn drop(&mut self) {
        if !self.broken {
            return;
        }
        match self.pooled.take() {
            Some(Pooled::Direct(c)) => discard(c),
            Some(Pooled::Sentinel(c)) => discard(c),
            None => {}
        }
    }
}

/// Drops a failed connection instead of returning it, and has its pool check the others.
fn discard<M: deadpool::managed::Manager + AsRef<Checks>>(c: Object<M>) {
    if let Some(pool) = Object::pool(&c) {
        pool.manager().as_ref().failed();
    }
    drop(Object::take(c));
}

impl AsRef<Checks> for DirectManager {
    fn as_ref(&self) -> &Checks {
        &self.checks
    }
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        Box::pin(async move {
            let r = match self.inner() {
                Some(c) => c.req_packed_command(cmd).await,
                None => Err(released()),
            };
            if let Err(e) = &r {
                self.note(e);
            }
            r
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        Box::pin(async move {
            let r = match self.inner() {
                Some(c) => c.req_packed_commands(cmd, offset, count).await,
                None => Err(released()),
            };
            if let Err(e) = &r {
                self.note(e);
            }
            r
        })
    }

    fn get_db(&self) -> i64 {
        match &self.pooled {
            Some(Pooled::Direct(c)) => c.get_db(),
            Some(Pooled::Sentinel(c)) => c.get_db(),
            None => 0,
        }
    }
}

/// Installs the TLS crypto provider (ring) once, before any `rediss://` connection.
fn tls_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn backend(
    url: &str,
    size: usize,
    response_timeout: Option<Duration>,
) -> Result<Backend, StoreError> {
    tls_provider();
    if sentinel::is_sentinel_url(url) {
        return Ok(Backend::Sentinel(sentinel::pool(
            url,
            size,
            response_timeout,
        )?));
    }
    Ok(Backend::Direct(pool(url, size, response_timeout)?))
}

/// What `/readyz` and the start-up check report about Redis.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RedisHealth {
    pub reachable: bool,
    pub maxmemory_policy: Option<String>,
    pub persistence: Option<bool>,
    /// Problems that can lose builds, in words for operators.
    pub warnings: Vec<String>,
}

pub(crate) fn pool(
    url: &str,
    size: usize,
    response_timeout: Option<Duration>,
) -> Result<Pool, StoreError> {
    if !(url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("unix://"))
    {
        return Err(StoreError::Url(format!(
            "{:?} must start with redis://, rediss://, unix:// or redis-sentinel://",
            redact(url)
        )));
    }
    let connections = deadpool_redis::Manager::new_with_config(
        url,
        AsyncConnectionConfig::new()
            .set_response_timeout(response_timeout)
            .set_connection_timeout(Some(Duration::from_secs(2))),
    )
    .map_err(|e| StoreError::Url(format!("{}: {e}", redact(url))))?;
    let manager = DirectManager {
        connections,
        checks: Checks::default(),
    };
    Pool::builder(manager)
        .max_size(size)
        .queue_mode(deadpool::managed::QueueMode::Lifo)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(3)))
        .recycle_timeout(Some(Duration::from_secs(2)))
        .build()
        .map_err(|e| StoreError::Url(e.to_string()))
}

/// The URL with any password replaced, for logs and error messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

impl Store {
    /// Builds the pool; no connection is made until the first command, so a service can
    /// start while Redis is still coming up and report it through `/readyz`.
    pub fn new(options: &StoreOptions) -> Result<Self, StoreError> {
        Self::build((
            options.url.clone(),
            options.pool_size,
            Some(options.response_timeout),
        ))
    }

    fn build(pool: (String, usize, Option<Duration>)) -> Result<Self, StoreError> {
        Ok(Self {
            backend: backend(&pool.0, pool.1, pool.2)?,
            pool,
            jobs: Default::default(),
        })
    }

    /// A pool of its own with the same settings (and the same job cache), for one http
    /// worker thread. A pooled connection is served by a task on the thread that opened it,
    /// so threads sharing one pool woke each other on every round trip (measured with
    /// `perf`, see docs/performance.md). Falls back to sharing this pool, which works, if a
    /// new one cannot be built (it was built once with the same settings).
    pub fn for_this_thread(&self) -> Store {
        match backend(&self.pool.0, self.pool.1, self.pool.2) {
            Ok(backend) => Self {
                backend,
                pool: self.pool.clone(),
                jobs: self.jobs.clone(),
            },
            Err(_) => self.clone(),
        }
    }

    pub(crate) async fn conn(&self) -> Result<Conn, StoreError> {
        match &self.backend {
            Backend::Direct(p) => Ok(Conn {
                pooled: Some(Pooled::Direct(p.get().await?)),
                broken: false,
            }),
            Backend::Sentinel(p) => p
                .get()
                .await
                .map(|c| Conn {
                    pooled: Some(Pooled::Sentinel(c)),
                    broken: false,
                })
                .map_err(|e| StoreError::Unavailable(e.to_string())),
        }
    }

    /// A store of one connection for blocking pops, whose response timeout exceeds the
    /// longest block (`block_for` + margin), so a dead connection is noticed and rebuilt
    /// rather than waited on forever.
    pub fn blocking(url: &str, block_for: Duration) -> Result<Self, StoreError> {
        Self::build((url.to_owned(), 1, Some(block_for + Duration::from_secs(2))))
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        redis::cmd("PING").query_async::<String>(&mut c).await?;
        Ok(())
    }

    /// Checks the settings that decide whether Redis can lose queued builds: an eviction
    /// policy other than `noeviction` drops keys under memory pressure, and a Redis without
    /// persistence forgets everything on restart.
    pub async fn health(&self) -> RedisHealth {
        let mut h = RedisHealth {
            reachable: false,
            maxmemory_policy: None,
            persistence: None,
            warnings: Vec::new(),
        };
        let Ok(mut c) = self.conn().await else {
            h.warnings.push("Redis is unreachable".into());
            return h;
        };
        let info: Result<String, _> = redis::cmd("INFO")
            .arg("memory")
            .arg("persistence")
            .query_async(&mut c)
            .await;
        let Ok(info) = info else {
            h.warnings.push("Redis is unreachable".into());
            return h;
        };
        h.reachable = true;
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(|v| v.trim().to_owned())
        };
        h.maxmemory_policy = field("maxmemory_policy");
        let aof = field("aof_enabled").map(|v| v == "1");
        let save: Option<Vec<String>> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("save")
            .query_async(&mut c)
            .await
            .ok();
        let rdb = save.and_then(|v| v.get(1).map(|s| !s.trim().is_empty()));
        h.persistence = match (aof, rdb) {
            (Some(true), _) | (_, Some(true)) => Some(true),
            (Some(false), Some(false)) => Some(false),
            _ => None,
        };
        if let Some(p) = &h.maxmemory_policy {
            if p != "noeviction" {
                h.warnings.push(format!(
                    "maxmemory-policy is {p}: Redis may evict queued builds; set it to noeviction"
                ));
            }
        }
        if h.persistence == Some(false) {
            h.warnings.push(
                "Redis persistence is off (no AOF, no RDB saves): a Redis restart loses every build"
                    .into(),
            );
        }
        h
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            super::redact("redis://:s3cret@h:6379/0"),
            "redis://***@h:6379/0"
        );
        assert_eq!(super::redact("redis://h:6379"), "redis://h:6379");
    }
}
