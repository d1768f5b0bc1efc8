//! Connecting to Redis, and checking that the Redis we got is safe to keep builds in.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool::managed::{Metrics, Object, RecycleError, RecycleResult};
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

/// A handle on Kiln's Redis. Cheap to clone.
///
/// Operations running at the same time share one connection of the pool (redis-rs
/// multiplexes them): requests that are ready together leave in one write and their replies
/// come back in one read, so neither Redis nor the service pays a system call per command.
/// Against a connection each, the api served about 45 % more single-build reads and 20 %
/// more history pages per second on the same two cores (docs/performance-history.md, session 12).
/// Every command Kiln sends is safe to share: state lives in keys, transactions go out as
/// one `MULTI`…`EXEC` pipeline, and the one blocking command has a store of its own
/// ([`Store::blocking`]).
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    /// How `backend` was built, for [`Store::for_this_thread`].
    pool: (String, usize, Option<Duration>),
    /// Whether operations share a connection (all but the blocking store's).
    shared: bool,
    /// Held while a shared store takes its connection from the pool: operations starting
    /// together wait for the one connection being opened or checked instead of each
    /// opening another.
    taking: Arc<tokio::sync::Mutex<LastTake>>,
    pub(crate) jobs: std::sync::Arc<crate::job_cache::JobCache>,
}

/// How the last attempt to take a shared connection went, for the operations that waited
/// for it.
#[derive(Default)]
struct LastTake {
    /// When it failed, and why (`None`: it succeeded).
    failed: Option<(Instant, String)>,
}

/// A store whose connection blocks in a wait for work (see [`Store::blocking`]): a type of
/// its own, so that a blocking command can never stall the operations of a shared one.
pub struct BlockingStore(pub(crate) Store);

/// A single Redis (`redis://`, `rediss://`, `unix://`) or Redis behind Sentinel.
#[derive(Clone)]
enum Backend {
    Direct(Pool),
    Sentinel(SentinelPool),
}

/// A pooled connection, with what its users need to report it failed: a shared
/// connection stays in the pool while operations use it, so a failure cannot take it out
/// at once; the flag has the pool drop it the next time it is handed out.
#[derive(Clone)]
pub(crate) struct Shareable {
    conn: MultiplexedConnection,
    failed: Arc<AtomicBool>,
    checks: Arc<Checks>,
}

impl Shareable {
    pub(crate) fn new(conn: MultiplexedConnection, checks: &Arc<Checks>) -> Self {
        Self {
            conn,
            failed: Arc::default(),
            checks: checks.clone(),
        }
    }

    pub(crate) fn conn(&mut self) -> &mut MultiplexedConnection {
        &mut self.conn
    }

    /// Refuses a connection an operation saw fail, before any other check.
    pub(crate) fn check_failed(&self) -> RecycleResult<RedisError> {
        if self.failed.load(Ordering::Relaxed) {
            return Err(RecycleError::message("the connection failed while in use"));
        }
        Ok(())
    }

    /// Marks the connection failed, and has its pool check the others before their next
    /// use.
    fn fail(&self) {
        self.failed.store(true, Ordering::Relaxed);
        self.checks.failed();
    }
}

/// Connections to one Redis, made by deadpool-redis and checked as `checks` says.
pub(crate) struct DirectManager {
    connections: deadpool_redis::Manager,
    checks: Arc<Checks>,
}

type Pool = deadpool::managed::Pool<DirectManager>;

impl deadpool::managed::Manager for DirectManager {
    type Type = Shareable;
    type Error = RedisError;

    async fn create(&self) -> Result<Shareable, RedisError> {
        Ok(Shareable::new(
            self.connections.create().await?,
            &self.checks,
        ))
    }

    async fn recycle(&self, conn: &mut Shareable, metrics: &Metrics) -> RecycleResult<RedisError> {
        conn.check_failed()?;
        if !self.checks.needed(metrics) {
            return Ok(());
        }
        self.connections.recycle(conn.conn(), metrics).await
    }
}

/// A connection for one operation; it speaks the redis-rs protocol, so commands, pipelines
/// and scripts take it as they are. A failed one is dropped from its pool (at once when
/// the operation had it to itself, on its next hand-out when shared), and its pool checks
/// its other connections before their next use.
pub(crate) struct Conn {
    lease: Option<Lease>,
    broken: bool,
}

enum Lease {
    /// A clone of a connection that stays in the pool for other operations meanwhile.
    Shared(Shareable),
    Direct(Object<DirectManager>),
    Sentinel(Object<SentinelManager>),
}

impl Conn {
    fn new(lease: Lease) -> Self {
        Self {
            lease: Some(lease),
            broken: false,
        }
    }

    fn inner(&mut self) -> Option<&mut MultiplexedConnection> {
        match self.lease.as_mut()? {
            Lease::Shared(c) => Some(c.conn()),
            Lease::Direct(c) => Some(c.conn()),
            Lease::Sentinel(c) => Some(c.conn()),
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
        match self.lease.take() {
            Some(Lease::Shared(c)) => c.fail(),
            Some(Lease::Direct(c)) => discard(c),
            Some(Lease::Sentinel(c)) => discard(c),
            None => {}
        }
    }
}

/// Drops a failed connection instead of returning it, and has its pool check the others.
fn discard<M: deadpool::managed::Manager<Type = Shareable>>(c: Object<M>) {
    c.checks.failed();
    drop(Object::take(c));
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
        match &self.lease {
            Some(Lease::Shared(c)) => c.conn.get_db(),
            Some(Lease::Direct(c)) => c.conn.get_db(),
            Some(Lease::Sentinel(c)) => c.conn.get_db(),
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
        checks: Arc::default(),
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
        Self::build(
            (
                options.url.clone(),
                options.pool_size,
                Some(options.response_timeout),
            ),
            true,
        )
    }

    fn build(pool: (String, usize, Option<Duration>), shared: bool) -> Result<Self, StoreError> {
        Ok(Self {
            backend: backend(&pool.0, pool.1, pool.2)?,
            pool,
            shared,
            taking: Arc::default(),
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
                shared: self.shared,
                taking: Arc::default(),
                jobs: self.jobs.clone(),
            },
            Err(_) => self.clone(),
        }
    }

    /// A connection for one operation: a clone of the pool's connection handed out last,
    /// which goes straight back to the pool (LIFO), so the operations running at the same
    /// time share it; the blocking store's operation has its connection to itself.
    ///
    /// Operations that waited while another one tried to open (or check) the connection
    /// share its failure too: against a Redis that does not answer they all fail after one
    /// connection timeout, instead of trying one after the other.
    pub(crate) async fn conn(&self) -> Result<Conn, StoreError> {
        if !self.shared {
            let lease = match &self.backend {
                Backend::Direct(p) => Lease::Direct(p.get().await?),
                Backend::Sentinel(p) => Lease::Sentinel(
                    p.get()
                        .await
                        .map_err(|e| StoreError::Unavailable(e.to_string()))?,
                ),
            };
            return Ok(Conn::new(lease));
        }
        let asked = Instant::now();
        let mut last = self.taking.lock().await;
        if let Some((at, why)) = &last.failed {
            if *at >= asked {
                return Err(StoreError::Unavailable(why.clone()));
            }
        }
        let taken = match &self.backend {
            Backend::Direct(p) => p.get().await.map(|c| c.clone()).map_err(|e| e.to_string()),
            Backend::Sentinel(p) => p.get().await.map(|c| c.clone()).map_err(|e| e.to_string()),
        };
        last.failed = match &taken {
            Ok(_) => None,
            Err(e) => Some((Instant::now(), e.clone())),
        };
        Ok(Conn::new(Lease::Shared(
            taken.map_err(StoreError::Unavailable)?,
        )))
    }

    /// A store of one connection for blocking pops, whose response timeout exceeds the
    /// longest block (`block_for` + margin), so a dead connection is noticed and rebuilt
    /// rather than waited on forever.
    pub fn blocking(url: &str, block_for: Duration) -> Result<BlockingStore, StoreError> {
        Self::build(
            (url.to_owned(), 1, Some(block_for + Duration::from_secs(2))),
            false,
        )
        .map(BlockingStore)
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
