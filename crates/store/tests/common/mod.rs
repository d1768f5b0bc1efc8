//! What the store's tests share: a private redis-server with a store on it, a one-step job
//! definition, and a build queued through the api's own trigger.

use kiln_model::{JobDefinition, JobName, Trigger, TriggerKind};
use kiln_store::{Store, StoreOptions, TriggerRequest};
use kiln_testkit::RedisServer;

/// A job definition of one step running `step`.
pub(crate) fn def(step: &str) -> JobDefinition {
    serde_json::from_value(serde_json::json!({"steps": [{"name": "s", "run": step}]}))
        .expect("definition")
}

/// Triggers a build of `job` as the api would; returns its key.
pub(crate) async fn queued(store: &Store, job: &JobName) -> String {
    let req = TriggerRequest {
        job: job.clone(),
        parameters: Default::default(),
        trigger: Trigger::new(TriggerKind::Api, None),
        dedup: None,
        next: false,
        cells: None,
    };
    let t = store.trigger(&req).await.expect("trigger");
    t.build.build_ref().key()
}

/// A private redis-server (stopped when dropped) and a store connected to it.
pub(crate) fn redis_and_store() -> (RedisServer, Store) {
    let redis = RedisServer::start();
    let store = Store::new(&StoreOptions::new(redis.url())).expect("store");
    (redis, store)
}
