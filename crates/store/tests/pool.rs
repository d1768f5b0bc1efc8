//! The connection pool against a real redis-server: an operation costs its own round
//! trips only, also after a quiet spell; operations in flight together share one
//! connection; a connection that failed is not used again, a Redis restart costs at most
//! one failed operation, and operations waiting on a hung Redis fail together.

use std::time::{Duration, Instant};

use deadpool_redis::redis;
use kiln_model::Name;
use kiln_store::{Store, StoreOptions};
use kiln_testkit::RedisServer;

/// The number after `prefix` on a line of `INFO <section>`, read on the test's own
/// connection (0 when absent).
async fn info(redis: &RedisServer, section: &str, prefix: &str) -> u64 {
    let mut c = redis.pool().get().await.expect("connection");
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query_async(&mut c)
        .await
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|rest| rest.split([',', '\r']).next()?.trim().parse().ok())
        .unwrap_or(0)
}

/// How many times Redis ran `command`.
async fn stat(redis: &RedisServer, command: &str) -> u64 {
    info(redis, "commandstats", &format!("cmdstat_{command}:calls=")).await
}

/// A service under load opens one connection per pool, not one per request in flight: the
/// requests share it (pipelined), which is what lets Redis answer many in one read and one
/// write.
#[tokio::test]
async fn operations_in_flight_together_share_one_connection() {
    let redis = RedisServer::start();
    let store = Store::new(&StoreOptions::new(redis.url())).expect("store");
    let before = info(&redis, "clients", "connected_clients:").await;
    for _ in 0..3 {
        let all = futures::future::join_all((0..64).map(|_| store.health())).await;
        assert!(all.iter().all(|h| h.reachable));
    }
    assert_eq!(
        info(&redis, "clients", "connected_clients:").await,
        before + 1,
        "64 operations at once opened more than one connection"
    );
}

/// A connection whose reply did not come in time may still deliver it later: it is
/// replaced, not handed to the next operation, even though other operations shared it.
#[tokio::test]
async fn a_connection_that_timed_out_is_replaced() {
    let redis = RedisServer::start();
    let mut c = redis.pool().get().await.expect("connection");
    let mut client = async |args: &[&str]| -> String {
        let mut cmd = redis::cmd("CLIENT");
        for a in args {
            cmd.arg(*a);
        }
        let v: redis::Value = cmd.query_async(&mut c).await.expect("CLIENT");
        redis::from_redis_value::<String>(v.clone())
            .or_else(|_| redis::from_redis_value::<i64>(v).map(|n| n.to_string()))
            .expect("a reply")
    };
    let own = client(&["ID"]).await;
    let mut options = StoreOptions::new(redis.url());
    options.response_timeout = Duration::from_millis(200);
    let store = Store::new(&options).expect("store");
    let consumer: Name = "es".parse().expect("name");
    let write = || store.register_consumer(&consumer);
    let deadline = Instant::now() + Duration::from_secs(10);
    // A first write through the store, on a connection of its own to compare with later;
    // on a busy machine even this one may outlast the short timeout.
    while write().await.is_err() {
        assert!(Instant::now() < deadline, "the store cannot write");
    }
    // The ids of the store's connections, from the test's own.
    let others = |list: String| -> Vec<String> {
        list.lines()
            .filter_map(|l| l.strip_prefix("id=")?.split(' ').next())
            .filter(|id| *id != own)
            .map(str::to_owned)
            .collect()
    };
    // A connection dropped by the store leaves Redis's list a moment later.
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        let now = others(client(&["LIST"]).await);
        if now.len() == 1 {
            break now;
        }
        assert!(Instant::now() < deadline, "the store holds {now:?}");
    };
    client(&["PAUSE", "10000", "WRITE"]).await;
    assert!(
        write().await.is_err(),
        "a write outlasting the response timeout must fail"
    );
    client(&["UNPAUSE"]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while write().await.is_err() {
        assert!(Instant::now() < deadline, "the store did not recover");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = others(client(&["LIST"]).await);
        if now.len() == 1 && now != first {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the connection that timed out was used again: {now:?}, first {first:?}"
        );
    }
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

/// A Redis that accepts connections but never answers (a hung server, a black hole): every
/// operation fails after about one connection timeout, however many wait together; they
/// must not queue behind each other's attempts to connect.
#[tokio::test]
async fn operations_waiting_on_a_hung_redis_fail_together() {
    let hung = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let url = format!("redis://{}", hung.local_addr().expect("address"));
    let store = Store::new(&StoreOptions::new(url)).expect("store");
    let started = Instant::now();
    let all = futures::future::join_all((0..8).map(|_| store.health())).await;
    assert!(all.iter().all(|h| !h.reachable));
    // One attempt takes the connection timeout (2 s); eight in a row would take 16 s.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "eight operations took {:?} to fail",
        started.elapsed()
    );
}
