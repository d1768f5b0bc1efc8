//! The connection pool against a real redis-server: an operation costs its own round
//! trips only, also after a quiet spell, and a Redis restart costs at most one failed
//! operation.

use kiln_store::{Store, StoreOptions};
use kiln_testkit::RedisServer;

async fn stat(redis: &RedisServer, command: &str) -> u64 {
    let mut c = redis.pool().get().await.expect("connection");
    let info: String = deadpool_redis::redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_busy_pool_sends_no_health_checks() {
    let redis = RedisServer::start();
    let store = Store::new(&StoreOptions::new(redis.url())).expect("store");
    let before = stat(&redis, "ping").await;
    for _ in 0..50 {
        store.health().await;
    }
    assert!(store.health().await.reachable);
    assert_eq!(stat(&redis, "ping").await, before, "no PING per operation");
}

/// Builds come in ones and twos: the first operation after a few quiet seconds (a trigger,
/// a claim) must not wait for a health check's round trip.
#[tokio::test]
async fn a_connection_unused_for_a_few_seconds_is_not_checked_first() {
    let redis = RedisServer::start();
    let store = Store::new(&StoreOptions::new(redis.url())).expect("store");
    let warm = futures::future::join_all((0..4).map(|_| store.health())).await;
    assert!(warm.iter().all(|h| h.reachable));
    let before = stat(&redis, "ping").await;
    // The quiet spell is what is under test, not a wait for something to happen.
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    for _ in 0..4 {
        assert!(store.health().await.reachable);
    }
    assert_eq!(
        stat(&redis, "ping").await,
        before,
        "a PING before the first operation after the pause"
    );
}

#[tokio::test]
async fn after_a_redis_restart_at_most_one_operation_fails() {
    let mut redis = RedisServer::start();
    let store = Store::new(&StoreOptions::new(redis.url())).expect("store");
    let warm = futures::future::join_all((0..8).map(|_| store.health())).await;
    assert!(warm.iter().all(|h| h.reachable));
    redis.restart(&[]);
    let mut failed = 0;
    for _ in 0..20 {
        if !store.health().await.reachable {
            failed += 1;
        }
    }
    assert!(failed <= 1, "{failed} operations failed after the restart");
    assert!(store.health().await.reachable);
}
