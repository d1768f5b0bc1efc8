//! es-indexer against a real OpenSearch-compatible server (osmem-server), with the real
//! worker producing builds.

mod support;

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use support::{job, Cluster, SearchServer, WorkerOpts};

const T: Duration = Duration::from_secs(60);

async fn search(url: &str, body: Value) -> Value {
    let c = reqwest::Client::new();
    let _ = c.post(format!("{url}/kiln-builds/_refresh")).send().await;
    c.post(format!("{url}/kiln-builds/_search"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn count(url: &str) -> u64 {
    let v = search(url, json!({"size": 0, "track_total_hits": true})).await;
    v["hits"]["total"]["value"].as_u64().unwrap_or(0)
}

async fn wait_count(url: &str, n: u64) {
    kiln_testkit::wait_for(&format!("{n} documents in the index"), T, || async {
        let c = count(url).await;
        assert!(c <= n, "more documents than builds: {c} > {n}");
        (c == n).then_some(())
    })
    .await;
}

async fn run_builds(c: &Cluster, job_name: &str, n: usize) -> Vec<u64> {
    let mut numbers = Vec::new();
    for _ in 0..n {
        numbers.push(c.trigger(job_name).await);
    }
    numbers
}

async fn wait_finished(c: &Cluster, job_name: &str, numbers: &[u64]) {
    for n in numbers {
        kiln_testkit::wait_for("the build to finish", T, || async {
            let b = c.build(job_name, *n).await;
            let s = b["status"].as_str().unwrap_or("").to_owned();
            (s != "queued" && s != "running").then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn finished_builds_become_searchable_documents_with_typed_fields() {
    let c = Cluster::start().await;
    let es = SearchServer::start();
    let _i = c.indexer(&es.url).await;
    let mut opts = WorkerOpts::new("w1");
    opts.concurrency = 2;
    let _w = c.worker(opts).await;
    c.apply("ok", job(&["echo fine"])).await;
    c.apply("bad", job(&["exit 3"])).await;
    let ok = run_builds(&c, "ok", 2).await;
    let bad = run_builds(&c, "bad", 1).await;
    wait_finished(&c, "ok", &ok).await;
    wait_finished(&c, "bad", &bad).await;
    wait_count(&es.url, 3).await;

    let failures = search(&es.url, json!({"query": {"term": {"status": "failure"}}})).await;
    assert_eq!(failures["hits"]["total"]["value"], 1);
    let hit = &failures["hits"]["hits"][0];
    assert_eq!(hit["_id"], "job_bad_1");
    assert_eq!(hit["_source"]["exit_code"], 3);
    assert_eq!(hit["_source"]["node"], "w1");
    assert!(hit["_source"]["queue_wait_ms"].as_i64().unwrap() >= 0);
    let ranged = search(
        &es.url,
        json!({"query": {"range": {"duration_ms": {"gte": 0}}}}),
    )
    .await;
    assert_eq!(ranged["hits"]["total"]["value"], 3);
    let agg = search(
        &es.url,
        json!({"size": 0, "aggs": {"by_job": {"terms": {"field": "job"}}}}),
    )
    .await;
    let buckets: Vec<(String, u64)> = agg["aggregations"]["by_job"]["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["key"].as_str().unwrap().to_owned(),
                b["doc_count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(buckets, [("ok".to_owned(), 2), ("bad".to_owned(), 1)]);
    let mapping: Value = reqwest::get(format!("{}/kiln-builds/_mapping", es.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let props = &mapping["kiln-builds"]["mappings"]["properties"];
    assert_eq!(props["status"]["type"], "keyword");
    assert_eq!(props["duration_ms"]["type"], "long");
    assert_eq!(props["queued_at"]["type"], "date");
    assert_eq!(props["trigger"]["properties"]["kind"]["type"], "keyword");
}

#[tokio::test]
async fn builds_finished_while_the_indexer_was_down_are_all_indexed_once() {
    let c = Cluster::start().await;
    let es = SearchServer::start();
    let mut i = c.indexer(&es.url).await;
    i.kill();
    let mut opts = WorkerOpts::new("w1");
    opts.concurrency = 4;
    let _w = c.worker(opts).await;
    let mut def = job(&["true"]);
    def["retention"] = json!({"builds": 500});
    c.apply("many", def).await;
    let numbers = run_builds(&c, "many", 200).await;
    wait_finished(&c, "many", &numbers).await;
    assert_eq!(count(&es.url).await, 0);
    let _i = c.indexer(&es.url).await;
    wait_count(&es.url, 200).await;
}

#[tokio::test]
async fn nothing_is_lost_when_the_search_server_goes_away_or_the_indexer_is_killed() {
    let c = Cluster::start().await;
    let mut es = SearchServer::start();
    let port = es.port();
    let mut i = c.indexer(&es.url).await;
    let _w = c.worker(WorkerOpts::new("w1")).await;
    c.apply("steady", job(&["true"])).await;
    let first = run_builds(&c, "steady", 5).await;
    wait_finished(&c, "steady", &first).await;
    wait_count(&es.url, 5).await;
    // The server can hold a document a moment before the indexer acknowledges it; one
    // still unacknowledged when the server goes would rightly be sent again after the
    // restart, and this test is about the outage's builds only.
    let pool = c.redis.pool();
    let processing = |want_empty: bool| {
        let pool = pool.clone();
        async move {
            let mut conn = pool.get().await.ok()?;
            let n: u64 = deadpool_redis::redis::cmd("LLEN")
                .arg("kiln:processing:es")
                .query_async(&mut conn)
                .await
                .ok()?;
            ((n == 0) == want_empty).then_some(())
        }
    };
    kiln_testkit::wait_for("the indexer to acknowledge the first builds", T, || {
        processing(true)
    })
    .await;

    // The search server disappears (taking its in-memory index along) while builds finish.
    es.stop();
    let second = run_builds(&c, "steady", 5).await;
    wait_finished(&c, "steady", &second).await;
    // The indexer claimed them and keeps retrying; kill it between send and acknowledgement.
    kiln_testkit::wait_for("entries in the indexer's processing list", T, || {
        processing(false)
    })
    .await;
    i.kill();
    let es = SearchServer::start_on(port);
    let _i = c.indexer(&es.url).await;
    // The new server is empty: the five builds of the outage arrive, each once.
    wait_count(&es.url, 5).await;
    let ids = search(&es.url, json!({"size": 20, "query": {"match_all": {}}})).await;
    let mut ids: Vec<String> = ids["hits"]["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    let mut expected: Vec<String> = second.iter().map(|n| format!("job_steady_{n}")).collect();
    expected.sort();
    assert_eq!(ids, expected);
}

#[tokio::test]
async fn a_document_the_server_rejects_is_dead_lettered_and_the_rest_go_through() {
    let c = Cluster::start().await;
    let es = SearchServer::start();
    let _i = c.indexer(&es.url).await;
    // An operator mapped a parameter as a number; a build with a word there is refused.
    let client = reqwest::Client::new();
    let r = client
        .put(format!("{}/kiln-builds", es.url))
        .json(&json!({"mappings": {"properties": {"parameters": {"properties": {"COUNT": {"type": "long"}}}}}}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let _w = c.worker(WorkerOpts::new("w1")).await;
    let mut def = job(&["true"]);
    def["parameters"] = json!([{"name": "COUNT", "default": "5"}]);
    c.apply("p", def).await;
    let good = c.trigger("p").await;
    let bad = c
        .trigger_with("p", json!({"parameters": {"COUNT": "many"}}))
        .await;
    let good2 = c.trigger("p").await;
    wait_finished(&c, "p", &[good, bad, good2]).await;
    wait_count(&es.url, 2).await;
    let letters: Value = kiln_testkit::wait_for("a dead letter", T, || async {
        let v: Value = c
            .call(Method::GET, "/api/v1/dead-letters/es", None)
            .await
            .json()
            .await
            .ok()?;
        (!v["dead_letters"].as_array()?.is_empty()).then_some(v)
    })
    .await;
    assert_eq!(letters["dead_letters"][0]["entry"], format!("job_p_{bad}"));
    assert!(
        letters["dead_letters"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("COUNT"),
        "{letters}"
    );
}

#[tokio::test]
async fn backfill_indexes_builds_that_finished_before_any_indexer_existed() {
    let c = Cluster::start().await;
    let es = SearchServer::start();
    let _w = c.worker(WorkerOpts::new("w1")).await;
    c.apply("old", job(&["true"])).await;
    let numbers = run_builds(&c, "old", 3).await;
    wait_finished(&c, "old", &numbers).await;
    let out = std::process::Command::new(support::bin("kiln-es-indexer"))
        .arg("backfill")
        .env("KILN_REDIS__URL", c.redis_url())
        .env("KILN_ELASTICSEARCH__URL", &es.url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("queued 3"));
    let _i = c.indexer(&es.url).await;
    wait_count(&es.url, 3).await;
}
