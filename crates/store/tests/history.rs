//! A job's history page against a real redis-server: newest first, with how many builds the
//! job keeps; a listed build whose document is gone (deleted between the list's read and
//! the documents') is left out, not an error.

use deadpool_redis::redis::AsyncCommands;
use kiln_model::JobName;

mod common;
use common::{def, queued, redis_and_store};

#[tokio::test]
async fn a_history_page_is_newest_first_and_leaves_out_documents_gone() {
    let (redis, store) = redis_and_store();
    let job = JobName::parse("app").expect("name");
    store
        .put_job(&job, &def("true"), "tests")
        .await
        .expect("put");
    for _ in 0..4 {
        queued(&store, &job).await;
    }
    // Deleted behind Kiln's back while `job_app_recent` still names it.
    let mut conn = redis.pool().get().await.expect("connection");
    let _: () = conn.del("job_app_3").await.expect("del");

    let numbers = |docs: &[kiln_model::BuildDocument]| -> Vec<u64> {
        docs.iter().map(|d| d.number.0).collect()
    };
    let (docs, total) = store.list_builds(&job, 0, 50).await.expect("page");
    assert_eq!(
        numbers(&docs),
        [4, 2, 1],
        "newest first, the gone one left out"
    );
    assert_eq!(total, 4, "the list's length, as the job keeps it");

    let (raw, total) = store.list_builds_raw(&job, 0, 50).await.expect("raw page");
    let raw_numbers: Vec<u64> = raw
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_str(r.get()).expect("json");
            v["number"].as_u64().expect("number")
        })
        .collect();
    assert_eq!(raw_numbers, [4, 2, 1]);
    assert_eq!(total, 4);

    let (docs, _) = store.list_builds(&job, 1, 2).await.expect("page");
    assert_eq!(numbers(&docs), [2], "offset and limit count listed builds");
    let (docs, total) = store.list_builds(&job, 10, 5).await.expect("past the end");
    assert!(docs.is_empty());
    assert_eq!(total, 4);

    let other = JobName::parse("nothing-yet").expect("name");
    let (docs, total) = store.list_builds_raw(&other, 0, 50).await.expect("empty");
    assert!(docs.is_empty());
    assert_eq!(total, 0);
}
