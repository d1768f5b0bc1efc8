//! A matrix job's trigger against a real redis-server: every cell queued at once under
//! numbers in a row, in cell order (also when going next, and under a concurrency limit),
//! once per delivery; and one claim of a whole matrix's end.

use deadpool_redis::redis::AsyncCommands;
use kiln_model::{keys, BuildRef, JobDefinition, JobName, Name, Trigger, TriggerKind};
use kiln_store::TriggerRequest;

mod common;
use common::{def, queued, redis_and_store};

/// A job of one step on three cells: OS linux, mac and windows.
fn matrix_def(concurrency: Option<u32>) -> JobDefinition {
    let mut d = def("true");
    d.matrix = Some(
        serde_json::from_value(serde_json::json!({"axes": {"OS": ["linux", "mac", "windows"]}}))
            .expect("matrix"),
    );
    d.concurrency = concurrency;
    d
}

fn request(job: &JobName, next: bool, dedup: Option<&str>) -> TriggerRequest {
    TriggerRequest {
        job: job.clone(),
        parameters: Default::default(),
        trigger: Trigger::new(TriggerKind::Api, None),
        dedup: dedup.map(|d| (d.to_owned(), 60)),
        next,
        cells: None,
    }
}

#[tokio::test]
async fn a_trigger_queues_every_cell_in_order_and_once_per_delivery() {
    let (redis, store) = redis_and_store();
    let job = JobName::parse("app").expect("name");
    store
        .put_job(&job, &matrix_def(None), "tests")
        .await
        .expect("put");

    let t = store
        .trigger(&request(&job, false, Some("delivery-1")))
        .await
        .expect("trigger");
    let numbers: Vec<u64> = t.builds().map(|b| b.number.0).collect();
    assert_eq!(numbers, [1, 2, 3]);
    let cells: Vec<String> = t
        .builds()
        .map(|b| b.matrix.as_ref().expect("a cell").label())
        .collect();
    assert_eq!(cells, ["OS=linux", "OS=mac", "OS=windows"]);
    assert!(t.builds().all(|b| b.matrix.as_ref().unwrap().size == 3));

    // The same delivery again queues nothing and names the matrix's first build.
    let again = store
        .trigger(&request(&job, false, Some("delivery-1")))
        .await
        .expect("trigger");
    assert!(again.deduplicated && again.matrix_builds.is_empty());
    assert_eq!(again.build.number.0, 1);

    // Going next, the new matrix is claimed before the old one, its first cell first.
    store
        .trigger(&request(&job, true, None))
        .await
        .expect("trigger");
    let queue = keys::queue(&Name::parse("default").expect("name"));
    let mut c = redis.pool().get().await.expect("connection");
    let mut claim_order: Vec<String> = c.lrange(&queue, 0, -1).await.expect("lrange");
    claim_order.reverse();
    assert_eq!(
        claim_order,
        [
            "job_app_4",
            "job_app_5",
            "job_app_6",
            "job_app_1",
            "job_app_2",
            "job_app_3"
        ]
    );

    // Only some cells, each still one of the matrix's.
    let mut only = request(&job, false, None);
    only.cells = Some(vec![[("OS".to_owned(), "mac".to_owned())].into()]);
    let t = store.trigger(&only).await.expect("trigger");
    assert_eq!(t.build.number.0, 7);
    assert_eq!(
        t.build.matrix.as_ref().map(|m| (m.size, m.label())),
        Some((1, "OS=mac".into()))
    );
    only.cells = Some(vec![[("OS".to_owned(), "bsd".to_owned())].into()]);
    match store.trigger(&only).await {
        Err(kiln_store::StoreError::Invalid { field, message }) => {
            assert_eq!(field, "matrix");
            assert!(message.contains("OS=bsd is no longer a cell"), "{message}");
        }
        other => panic!("expected a refusal naming the matrix, got {other:?}"),
    }

    // No cell has ended: the matrix has no end yet.
    let one = store
        .get_build(&t.build.build_ref())
        .await
        .expect("read")
        .expect("build");
    assert!(store.ended_as_a_whole(one).await.expect("read").is_none());
}

#[tokio::test]
async fn cells_over_a_concurrency_limit_wait_in_cell_order() {
    let (redis, store) = redis_and_store();
    let job = JobName::parse("app").expect("name");
    store
        .put_job(&job, &matrix_def(Some(1)), "tests")
        .await
        .expect("put");
    let t = store
        .trigger(&request(&job, false, None))
        .await
        .expect("trigger");
    let waiting: Vec<bool> = t
        .builds()
        .map(|b| {
            b.reason
                .as_deref()
                .is_some_and(|r| r.starts_with("waiting for a slot"))
        })
        .collect();
    assert_eq!(waiting, [false, true, true], "the reply says which wait");
    let (_, waiting_key) = keys::slot_keys(&job, None);
    let mut c = redis.pool().get().await.expect("connection");
    let list: Vec<String> = c.lrange(&waiting_key, 0, -1).await.expect("lrange");
    assert_eq!(list, ["job_app_2", "job_app_3"]);
}

#[tokio::test]
async fn a_matrix_end_is_claimed_by_one_entry() {
    let (_redis, store) = redis_and_store();
    let job = JobName::parse("app").expect("name");
    store
        .put_job(&job, &matrix_def(None), "tests")
        .await
        .expect("put");
    let first = BuildRef::from_key(&queued(&store, &job).await).expect("key");
    let whole = store.get_build(&first).await.expect("read").expect("build");
    let claim = |entry: &'static str| store.claim_matrix_end(&whole, entry, 60);
    assert!(claim("job_app_3").await.expect("claim"), "the first to ask");
    assert!(
        !claim("job_app_2").await.expect("claim"),
        "another cell's end"
    );
    assert!(
        claim("job_app_3").await.expect("claim"),
        "the same entry handled again carries on"
    );
}
