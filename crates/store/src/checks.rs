//! When a pooled connection is checked before use. deadpool-redis sends `UNWATCH` + `PING`
//! every time a connection leaves the pool, and the Sentinel manager a `ROLE`: one extra
//! round trip per operation, which doubled the round trips of every service (measured in
//! `make bench`, see docs/performance.md). Instead a connection is checked only when it may
//! be bad: after sitting unused for half a minute, or when another connection of the same
//! pool failed since it was last taken (Redis restarted, a failover). A connection that fails
//! is dropped rather than handed out again (see `connect::Conn`). Pools hand out the
//! connection released last (LIFO), and operations share it (see `connect::Store`), so a
//! service's steady trickle of operations (a worker's heartbeat, say) keeps it from ever
//! going idle.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use deadpool::managed::Metrics;

/// A connection unused for this long is checked before it is handed out again. It was one
/// second, and CI builds arrive in ones and twos: a build triggered after a quiet second paid
/// a `PING` round trip in the api and another in the worker's claim before its first step
/// (seen with `MONITOR`). What the check guards against takes longer than this: a
/// middlebox dropping an idle flow (minutes) or a server `timeout` (off by default). A
/// restart or failover is caught by the first operation that fails (see `failed`).
const IDLE_CHECK: Duration = Duration::from_secs(30);

/// What one pool knows about its connections' health.
pub(crate) struct Checks {
    base: Instant,
    /// When a connection of the pool last failed: nanoseconds since `base`, plus one
    /// (0: never).
    failed_at: AtomicU64,
}

impl Default for Checks {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            failed_at: AtomicU64::new(0),
        }
    }
}

impl Checks {
    /// Whether the connection with these metrics must be checked before use.
    pub(crate) fn needed(&self, metrics: &Metrics) -> bool {
        let unused_for = metrics.last_used();
        if unused_for >= IDLE_CHECK {
            return true;
        }
        match self.failed_at.load(Ordering::Relaxed) {
            0 => false,
            at => {
                let since_failure = self
                    .base
                    .elapsed()
                    .saturating_sub(Duration::from_nanos(at - 1));
                since_failure <= unused_for
            }
        }
    }

    /// A connection of the pool failed: every other one is checked on its next use.
    pub(crate) fn failed(&self) {
        let now = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        self.failed_at.store(now + 1, Ordering::Relaxed);
    }
}

/// Whether an error means the connection itself is unusable (as opposed to a command the
/// server refused): it is then dropped instead of going back to the pool.
pub(crate) fn breaks_connection(e: &redis::RedisError) -> bool {
    e.is_unrecoverable_error()
        || e.is_timeout()
        || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn used(ago: Duration) -> Metrics {
        Metrics {
            recycled: Instant::now().checked_sub(ago),
            ..Metrics::default()
        }
    }

    #[test]
    fn a_busy_connection_is_not_checked_until_a_connection_of_its_pool_fails() {
        let checks = Checks::default();
        let busy = used(Duration::from_millis(5));
        assert!(!checks.needed(&busy));
        assert!(
            !checks.needed(&used(Duration::from_secs(2))),
            "nor one unused for a few seconds"
        );
        assert!(
            checks.needed(&used(IDLE_CHECK + Duration::from_secs(1))),
            "idle ones are"
        );
        checks.failed();
        assert!(checks.needed(&busy), "taken before the failure");
        std::thread::sleep(Duration::from_millis(2));
        assert!(
            !checks.needed(&used(Duration::from_millis(1))),
            "taken after the failure"
        );
    }
}
