//! The claim against a real redis-server: a claimed build comes with its job's definition as
//! it is now, however the build's document was written, so a worker can start the first
//! step before its start is recorded; a busy worker's finish claims its next build.

use std::time::Duration;

use kiln_model::{keys, BuildStatus, JobName, Name, OutputMessage};
use kiln_store::Store;

mod common;
use common::{def, queued, redis_and_store};

const LEASE: Duration = Duration::from_secs(30);

/// The job, queue and worker every test here uses.
fn names() -> (JobName, Name, Name) {
    (
        JobName::parse("app").expect("name"),
        Name::parse("default").expect("queue"),
        Name::parse("w1").expect("worker"),
    )
}

#[tokio::test]
async fn a_claimed_build_comes_with_its_jobs_current_definition() {
    let (redis, store) = redis_and_store();
    let (job, queue, worker) = names();
    store
        .put_job(&job, &def("echo one"), "tests")
        .await
        .expect("put");
    let first = queued(&store, &job).await;
    let second = queued(&store, &job).await;
    // Changed after the builds were queued: a claim gets the definition of now.
    store
        .put_job(&job, &def("echo two"), "tests")
        .await
        .expect("put");

    let claimed = store.claim(&queue, &worker, LEASE).await.expect("claim");
    let claimed = claimed.expect("a build");
    assert_eq!(claimed.lease.build.key(), first);
    assert_eq!(
        claimed.job.expect("definition").def.steps[0].run,
        "echo two"
    );

    // A document written by another tool, `job` not where Kiln writes it: still found.
    let mut c = redis.pool().get().await.expect("connection");
    let raw: String = deadpool_redis::redis::cmd("GET")
        .arg(&second)
        .query_async(&mut c)
        .await
        .expect("GET");
    let mut doc: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&raw).expect("document");
    let job_field = doc.remove("job").expect("job field");
    doc.insert("job".into(), job_field);
    let reordered = serde_json::to_string(&doc).expect("json");
    assert!(!reordered.starts_with(r#"{"schema_version":1,"job""#));
    let _: () = deadpool_redis::redis::cmd("SET")
        .arg(&second)
        .arg(&reordered)
        .query_async(&mut c)
        .await
        .expect("SET");
    let claimed = store.claim(&queue, &worker, LEASE).await.expect("claim");
    let claimed = claimed.expect("a build");
    assert_eq!(claimed.lease.build.key(), second);
    assert_eq!(
        claimed.job.expect("definition").def.steps[0].run,
        "echo two"
    );

    // The job is gone but its build's document is still there: claimed, without one.
    let third = queued(&store, &job).await;
    let _: () = deadpool_redis::redis::cmd("DEL")
        .arg(keys::job(&job))
        .query_async(&mut c)
        .await
        .expect("DEL");
    let claimed = store.claim(&queue, &worker, LEASE).await.expect("claim");
    let claimed = claimed.expect("a build");
    assert_eq!(claimed.lease.build.key(), third);
    assert!(claimed.job.is_none());
    assert!(store
        .claim(&queue, &worker, LEASE)
        .await
        .expect("claim")
        .is_none());
}

/// Records `claimed` as a success; with `claim_next`, the finish claims the next build.
async fn finish(
    store: &Store,
    claimed: kiln_store::Claimed,
    claim_next: Option<Duration>,
) -> kiln_store::Finished {
    let mut doc = claimed.doc;
    doc.status = BuildStatus::Success;
    let end = OutputMessage::End {
        status: doc.status,
        last_seq: 0,
        attempt: doc.attempt,
    };
    store
        .finish_build(&claimed.lease, &doc, None, &end, claim_next, false)
        .await
        .expect("finish")
}

#[tokio::test]
async fn a_finish_can_claim_the_queues_next_build_in_the_same_step() {
    let (redis, store) = redis_and_store();
    let (job, queue, worker) = names();
    store
        .put_job(&job, &def("true"), "tests")
        .await
        .expect("put");
    let mut keys = Vec::new();
    for _ in 0..3 {
        keys.push(queued(&store, &job).await);
    }
    let mut c = redis.pool().get().await.expect("connection");
    let owner = |key: &str| {
        deadpool_redis::redis::cmd("HGET")
            .arg(keys::LEASE_OWNERS)
            .arg(key)
            .clone()
    };

    let first = store.claim(&queue, &worker, LEASE).await.expect("claim");
    let first = first.expect("a build");
    let finished = finish(&store, first, None).await;
    assert!(
        finished.next.expect("next").is_none(),
        "not asked: nothing claimed"
    );
    let status = |doc: Option<kiln_model::BuildDocument>| doc.expect("document").status;
    let second_ref = kiln_model::BuildRef::from_key(&keys[1]).expect("key");
    assert_eq!(
        status(store.get_build(&second_ref).await.expect("get")),
        BuildStatus::Queued
    );

    let second = store.claim(&queue, &worker, LEASE).await.expect("claim");
    let second = second.expect("a build");
    let second_lease = second.lease.clone();
    let finished = finish(&store, second, Some(LEASE)).await;
    let third = finished
        .next
        .expect("next")
        .expect("the next build, claimed");
    assert_eq!(third.lease.build.key(), keys[2]);
    assert_eq!(
        third.job.as_ref().expect("definition").def.steps[0].run,
        "true"
    );
    assert_ne!(third.lease.token, second_lease.token, "a lease of its own");
    let held: Option<String> = owner(&keys[2]).query_async(&mut c).await.expect("HGET");
    assert_eq!(
        held.as_deref(),
        Some(format!("w1 {} default", third.lease.token).as_str())
    );
    let gone: Option<String> = owner(&keys[1]).query_async(&mut c).await.expect("HGET");
    assert!(gone.is_none(), "the finished build's lease is dropped");
    assert_eq!(
        status(store.get_build(&second_ref).await.expect("get")),
        BuildStatus::Success
    );

    let finished = finish(&store, third, Some(LEASE)).await;
    assert!(finished.next.expect("next").is_none(), "the queue is empty");
    let inflight: Vec<String> = deadpool_redis::redis::cmd("LRANGE")
        .arg(keys::inflight(&worker))
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await
        .expect("LRANGE");
    assert!(inflight.is_empty(), "{inflight:?}");
}
