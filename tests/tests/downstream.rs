//! Downstream jobs (`"downstream"` in a job definition) with the real api and worker
//! binaries and a real redis-server.

mod support;

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use support::{job, Cluster, WorkerOpts};

const T: Duration = Duration::from_secs(30);

async fn total_builds(c: &Cluster, job: &str) -> u64 {
    c.get_json(&format!("/api/v1/jobs/{job}/builds")).await["total"]
        .as_u64()
        .unwrap()
}

/// Polls the api's dead letters of the downstream consumer until one names `needle`.
async fn wait_dead_letter(c: &Cluster, needle: &str) -> Value {
    kiln_testkit::wait_for(&format!("a dead letter naming {needle:?}"), T, || async {
        let v = c.get_json("/api/v1/dead-letters/downstream").await;
        v["dead_letters"]
            .as_array()?
            .iter()
            .find(|l| l["reason"].as_str().is_some_and(|r| r.contains(needle)))
            .cloned()
    })
    .await
}

#[tokio::test]
async fn a_build_that_ends_queues_the_downstream_jobs_its_status_names() {
    let c = Cluster::start().await;
    let _w = c.worker(WorkerOpts::new("w")).await;
    let mut deploy = job(&[
        "echo \"after $KILN_UPSTREAM_JOB #$KILN_UPSTREAM_BUILD_NUMBER $KILN_UPSTREAM_STATUS to $TARGET at $KILN_GIT_SHA\"",
        "echo \"shipping $(cat $KILN_UPSTREAM_ARTIFACTS/dist/app.txt)\"",
    ]);
    deploy["parameters"] = json!([{"name": "TARGET", "default": "production"}]);
    c.apply("deploy", deploy).await;
    c.apply("notify", job(&["echo notified"])).await;

    // A job may not name itself: 400 naming the entry, and nothing is written.
    let mut app = job(&[
        "mkdir -p dist && echo app-build-$KILN_BUILD_NUMBER > dist/app.txt; [ \"$FAIL\" != 1 ]",
    ]);
    app["parameters"] = json!([{"name": "FAIL", "default": "0"}]);
    app["artifacts"] = json!(["dist/*.txt"]);
    app["downstream"] = json!([{"job": "app"}]);
    let r = c
        .call(Method::PUT, "/api/v1/jobs/app", Some(app.clone()))
        .await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["field"], "downstream[0].job", "{e}");
    let r = c.call(Method::GET, "/api/v1/jobs/app", None).await;
    assert_eq!(r.status(), 404);

    app["downstream"] = json!([
        {"job": "deploy", "parameters": {"TARGET": "staging"}},
        {"job": "notify", "on": ["failure", "timed_out"]}
    ]);
    c.apply("app", app).await;
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let one = c.trigger_with("app", json!({"sha": sha})).await;
    c.wait_status("app", one, "success", T).await;
    let d = c.wait_status("deploy", 1, "success", T).await;
    assert_eq!(
        d["trigger"],
        json!({"kind": "upstream", "by": "tests", "sha": sha,
            "upstream": {"job": "app", "number": one, "status": "success", "depth": 1}})
    );
    assert_eq!(d["parameters"], json!({"TARGET": "staging"}));
    let log = c.log("deploy", 1).await;
    assert!(
        log.contains(&format!("after app #{one} success to staging at {sha}")),
        "{log}"
    );
    // The upstream build's archived files are at hand.
    assert!(log.contains(&format!("shipping app-build-{one}")), "{log}");
    // And the upstream build lists what it started.
    downstream_of(&c, one, json!([{"job": "deploy", "number": 1}])).await;

    // A failure builds only the job that asked for failures. Both are decided from the
    // same hand-off, deploy first: once notify's build exists, deploy's decision is made.
    let two = c
        .trigger_with("app", json!({"parameters": {"FAIL": "1"}}))
        .await;
    c.wait_status("app", two, "failure", T).await;
    let n = c.wait_status("notify", 1, "success", T).await;
    assert_eq!(n["trigger"]["upstream"]["status"], "failure");
    assert_eq!(total_builds(&c, "deploy").await, 1);
    assert_eq!(total_builds(&c, "notify").await, 1);
    downstream_of(&c, two, json!([{"job": "notify", "number": 1}])).await;
}

/// Waits until build `n` of `app` lists `expected` as the builds its end queued (recorded
/// right after they are queued).
async fn downstream_of(c: &Cluster, n: u64, expected: Value) {
    kiln_testkit::wait_for(&format!("app #{n} to list {expected}"), T, || async {
        (c.build("app", n).await["downstream_builds"] == expected).then_some(())
    })
    .await;
}

#[tokio::test]
async fn downstream_builds_that_cannot_be_queued_are_dead_letters_and_cycles_stop() {
    let c = Cluster::start().await;
    let _w = c.worker(WorkerOpts::new("w")).await;

    let mut off = job(&["true"]);
    off["disabled"] = json!(true);
    c.apply("off", off).await;
    let mut lonely = job(&["true"]);
    lonely["downstream"] = json!([{"job": "ghost"}, {"job": "off"}]);
    c.apply("lonely", lonely).await;
    let n = c.trigger("lonely").await;
    let letter = wait_dead_letter(&c, "ghost").await;
    assert_eq!(letter["entry"], format!("job_lonely_{n}"));
    let reason = letter["reason"].as_str().unwrap();
    assert!(
        reason.contains("job ghost not found") && reason.contains("off: not queued"),
        "{reason}"
    );

    // Two jobs that name each other build back and forth until the chain is 16 long.
    let mut ping = job(&["true"]);
    ping["downstream"] = json!([{"job": "pong"}]);
    let mut pong = job(&["true"]);
    pong["downstream"] = json!([{"job": "ping"}]);
    c.apply("pong", pong).await;
    c.apply("ping", ping).await;
    c.trigger("ping").await;
    let letter = wait_dead_letter(&c, "chain of 16").await;
    assert_eq!(letter["entry"], "job_ping_9");
    let last = c.wait_status("ping", 9, "success", T).await;
    assert_eq!(last["trigger"]["upstream"]["depth"], 16);
    assert_eq!(total_builds(&c, "ping").await, 9);
    assert_eq!(total_builds(&c, "pong").await, 8);
}

/// The end of a build is handed to the downstream trigger in the same atomic step that
/// records it: a build that ends while no api runs still starts its downstream job once
/// an api is back.
#[tokio::test]
async fn a_build_that_ends_while_no_api_runs_still_starts_its_downstream_job() {
    let mut c = Cluster::start().await;
    let _w = c.worker(WorkerOpts::new("w")).await;
    let gate = c.work.path().join("gate");
    let mut app = job(&[&format!(
        "while [ ! -e {g} ]; do sleep 0.02; done",
        g = gate.display()
    )]);
    app["downstream"] = json!([{"job": "deploy"}]);
    c.apply("app", app).await;
    c.apply("deploy", job(&["echo deployed"])).await;
    let one = c.trigger("app").await;
    c.wait_status("app", one, "running", T).await;

    c.api.kill();
    std::fs::write(&gate, "").unwrap();
    let pool = c.redis.pool();
    kiln_testkit::wait_for(
        "the ended build handed to the downstream list",
        T,
        || async {
            let mut conn = pool.get().await.ok()?;
            let queued: Vec<String> = deadpool_redis::redis::cmd("LRANGE")
                .arg("kiln:finished:downstream")
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await
                .ok()?;
            (queued == [format!("job_app_{one}")]).then_some(())
        },
    )
    .await;

    c.restart_api().await;
    let d = c.wait_status("deploy", 1, "success", T).await;
    assert_eq!(d["trigger"]["upstream"]["number"], one);
    assert_eq!(c.build("app", one).await["status"], "success");
}
