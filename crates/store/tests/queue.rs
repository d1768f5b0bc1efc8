//! The claim against a real redis-server: a claimed build comes with its job's definition as
//! it is now, however the build's document was written, so a worker can start the first
//! step before its start is recorded.

use std::time::Duration;

use kiln_model::{keys, JobDefinition, JobName, Name, Trigger, TriggerKind};
use kiln_store::{Store, StoreOptions, TriggerRequest};
use kiln_testkit::RedisServer;

const LEASE: Duration = Duration::from_secs(30);

fn def(step: &str) -> JobDefinition {
    serde_json::from_value(serde_json::json!({"steps": [{"name": "s", "run": step}]}))
        .expect("definition")
}

async fn queued(store: &Store, job: &JobName) -> String {
    let req = TriggerRequest {
        job: job.clone(),
        parameters: Default::default(),
        trigger: Trigger {
            kind: TriggerKind::Api,
            by: None,
            sha: None,
            git_ref: None,
        },
        dedup: None,
    };
    let t = store.trigger(&req).await.expect("trigger");
    t.build.build_ref().key()
}

#[tokio::test]
async fn a_claimed_build_comes_with_its_jobs_current_definition() {
    let redis = RedisServer::start();
    let store = Store::new(&StoreOptions::new(redis.url())).expect("store");
    let job = JobName::parse("app").expect("name");
    let queue = Name::parse("default").expect("queue");
    let worker = Name::parse("w1").expect("worker");
    store.put_job(&job, &def("echo one")).await.expect("put");
    let first = queued(&store, &job).await;
    let second = queued(&store, &job).await;
    // Changed after the builds were queued: a claim gets the definition of now.
    store.put_job(&job, &def("echo two")).await.expect("put");

    let claimed = store.claim(&queue, &worker, LEASE).await.expect("claim");
    let claimed = claimed.expect("a build");
    assert_eq!(claimed.lease.build.key(), first);
    assert_eq!(claimed.def.expect("definition").steps[0].run, "echo two");

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
    assert_eq!(claimed.def.expect("definition").steps[0].run, "echo two");

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
    assert!(claimed.def.is_none());
    assert!(store
        .claim(&queue, &worker, LEASE)
        .await
        .expect("claim")
        .is_none());
}
