//! Matrix builds (`"matrix"` in a job definition) with the real api and worker binaries and
//! a real redis-server: one build per cell, each with its values, and the whole matrix as
//! one build to its downstream jobs, its status and cancelling.

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

/// A job running `step` on every cell of OS × RUST but mac with 1.80.
fn matrix_job(step: &str) -> Value {
    let mut def = job(&[step]);
    def["matrix"] = json!({
        "axes": {"OS": ["linux", "mac"], "RUST": ["stable", "1.80"]},
        "exclude": [{"OS": "mac", "RUST": "1.80"}]
    });
    def
}

#[tokio::test]
async fn a_matrix_job_builds_each_cell_and_ends_as_a_whole() {
    let c = Cluster::start().await;
    let mut w = WorkerOpts::new("w");
    w.concurrency = 3;
    let _w = c.worker(w).await;
    c.apply(
        "deploy",
        job(&[
            "echo deploying after #$KILN_UPSTREAM_BUILD_NUMBER",
            "for d in $(echo \"$KILN_UPSTREAM_MATRIX_ARTIFACTS\" | tr : ' '); do cat $d/dist/*.txt; done",
        ]),
    )
    .await;
    c.apply("report", job(&["echo reporting"])).await;

    // Refused with the field named, and nothing written: an axis that is also a parameter,
    // a retention that cannot keep one whole matrix.
    let mut bad = matrix_job("true");
    bad["parameters"] = json!([{"name": "OS", "default": "linux"}]);
    let mut small = matrix_job("true");
    small["retention"] = json!({"builds": 2});
    for (def, field) in [(bad, "matrix.axes.OS"), (small, "retention.builds")] {
        let r = c.call(Method::PUT, "/api/v1/jobs/app", Some(def)).await;
        assert_eq!(r.status(), 400);
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["field"], field, "{e}");
    }
    assert_eq!(
        c.call(Method::GET, "/api/v1/jobs/app", None).await.status(),
        404
    );

    let mut app = matrix_job(
        "echo \"cell $OS/$RUST ($KILN_MATRIX)\"; mkdir -p dist; echo built-$OS-$RUST > dist/out.txt; [ \"$OS/$RUST/$FAIL\" != mac/stable/1 ]",
    );
    app["artifacts"] = json!(["dist/*.txt"]);
    app["parameters"] = json!([{"name": "FAIL", "default": "0"}]);
    app["downstream"] = json!([
        {"job": "deploy"},
        {"job": "report", "on": ["failure"]}
    ]);
    c.apply("app", app).await;

    let r = c
        .call(Method::POST, "/api/v1/jobs/app/builds", Some(json!({})))
        .await;
    assert_eq!(r.status(), 201);
    let first: Value = r.json().await.unwrap();
    assert_eq!(
        first["matrix"],
        json!({"group": 1, "index": 0, "size": 3, "cell": {"OS": "linux", "RUST": "stable"}})
    );
    for (n, cell) in [
        (1, "linux/stable (OS=linux, RUST=stable)"),
        (2, "linux/1.80 (OS=linux, RUST=1.80)"),
        (3, "mac/stable (OS=mac, RUST=stable)"),
    ] {
        let b = c.wait_status("app", n, "success", T).await;
        assert_eq!(b["matrix"]["group"], 1);
        let log = c.log("app", n).await;
        assert!(log.contains(&format!("cell {cell}")), "#{n}: {log}");
    }
    let m = c.get_json("/api/v1/jobs/app/builds/2/matrix").await;
    assert_eq!(m["status"], "success", "{m}");
    assert_eq!(m["builds"].as_array().unwrap().len(), 3);
    assert_eq!(
        m["builds"][2]["cell"],
        json!({"OS": "mac", "RUST": "stable"})
    );

    // The whole matrix is one upstream build: deploy runs once, after build 1's group.
    let d = c.wait_status("deploy", 1, "success", T).await;
    assert_eq!(
        d["trigger"]["upstream"],
        json!({"job": "app", "number": 1, "status": "success", "depth": 1})
    );
    // With every cell's archived files at hand, in cell order.
    let log = c.log("deploy", 1).await;
    assert!(
        log.contains("built-linux-stable\nbuilt-linux-1.80\nbuilt-mac-stable\n"),
        "{log}"
    );

    // One failing cell fails the matrix: report runs, with the matrix's status.
    let second = c
        .trigger_with("app", json!({"parameters": {"FAIL": "1"}}))
        .await;
    assert_eq!(second, 4);
    c.wait_status("app", 6, "failure", T).await;
    let r = c.wait_status("report", 1, "success", T).await;
    assert_eq!(
        r["trigger"]["upstream"],
        json!({"job": "app", "number": 4, "status": "failure", "depth": 1})
    );
    let m = c.get_json("/api/v1/jobs/app/builds/4/matrix").await;
    assert_eq!(m["status"], "failure", "{m}");
    // The consumer takes ends in turn: with report's build there, every cell's end of both
    // matrices was handled, and each matrix started its downstream jobs once.
    assert_eq!(total_builds(&c, "deploy").await, 1);
    assert_eq!(total_builds(&c, "report").await, 1);
    let up = c.build("app", 4).await;
    assert_eq!(
        up["downstream_builds"],
        json!([{"job": "report", "number": 1}])
    );

    // A build of no matrix has none.
    let r = c
        .call(Method::GET, "/api/v1/jobs/deploy/builds/1/matrix", None)
        .await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn cancelling_a_matrix_cancels_every_cell_still_queued_or_running() {
    let c = Cluster::start().await;
    let _w = c.worker(WorkerOpts::new("w")).await;
    c.apply("slow", matrix_job("echo started; sleep 30")).await;
    c.trigger("slow").await;
    // One slot: the first cell runs, the others wait in the queue.
    c.wait_log_contains("slow", 1, "started", T).await;
    let r = c
        .call(
            Method::POST,
            "/api/v1/jobs/slow/builds/2/matrix/cancel",
            None,
        )
        .await;
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["cancelled"],
        json!([
            {"number": 1, "outcome": "requested"},
            {"number": 2, "outcome": "cancelled"},
            {"number": 3, "outcome": "cancelled"}
        ])
    );
    for n in 1..=3 {
        c.wait_status("slow", n, "cancelled", T).await;
    }
    let m = c.get_json("/api/v1/jobs/slow/builds/1/matrix").await;
    assert_eq!(m["status"], "cancelled", "{m}");
}

#[tokio::test]
async fn with_fail_fast_a_failing_cell_cancels_the_rest_of_its_matrix() {
    let c = Cluster::start().await;
    let mut w = WorkerOpts::new("w");
    w.concurrency = 2;
    let _w = c.worker(w).await;
    let mut def = job(&["if [ $OS = linux ]; then exit 3; fi; echo started; sleep 60"]);
    def["matrix"] = json!({"axes": {"OS": ["linux", "mac", "windows"]}, "fail_fast": true});
    c.apply("app", def).await;
    c.trigger("app").await;
    let failed = c.wait_status("app", 1, "failure", T).await;
    assert_eq!(failed["exit_code"], 3);
    for n in [2, 3] {
        c.wait_status("app", n, "cancelled", T).await;
    }
    let m = c.get_json("/api/v1/jobs/app/builds/1/matrix").await;
    assert_eq!(m["status"], "failure", "{m}");
}

#[tokio::test]
async fn a_matrix_runs_again_only_its_cells_that_did_not_succeed() {
    let c = Cluster::start().await;
    let mut w = WorkerOpts::new("w");
    w.concurrency = 3;
    let _w = c.worker(w).await;
    c.apply("deploy", job(&["echo deploying"])).await;
    let marks = tempfile::tempdir().unwrap();
    // The mac cell fails the first time only, as a flaky test would.
    let mut def = job(&[&format!(
        "if [ $OS = mac ] && [ ! -e {0}/again ]; then touch {0}/again; exit 1; fi; echo ok-$OS",
        marks.path().display()
    )]);
    def["matrix"] = json!({"axes": {"OS": ["linux", "mac", "windows"]}});
    def["downstream"] = json!([{"job": "deploy"}]);
    c.apply("app", def).await;
    c.trigger("app").await;
    c.wait_status("app", 2, "failure", T).await;
    for n in [1, 3] {
        c.wait_status("app", n, "success", T).await;
    }

    let r = c
        .call(
            Method::POST,
            "/api/v1/jobs/app/builds/3/rebuild",
            Some(json!({"failed_cells": true})),
        )
        .await;
    assert_eq!(r.status(), 201);
    let again: Value = r.json().await.unwrap();
    assert_eq!(
        again["matrix"],
        json!({"group": 4, "index": 0, "size": 1, "cell": {"OS": "mac"}})
    );
    assert_eq!(
        again["trigger"]["rebuild_of"], 1,
        "the matrix it runs again"
    );
    c.wait_status("app", 4, "success", T).await;
    assert_eq!(
        total_builds(&c, "app").await,
        4,
        "only the failed cell ran again"
    );
    let d = c.wait_status("deploy", 1, "success", T).await;
    assert_eq!(
        d["trigger"]["upstream"],
        json!({"job": "app", "number": 4, "status": "success", "depth": 1})
    );

    for (n, job) in [(4, "app"), (1, "deploy")] {
        let r = c
            .call(
                Method::POST,
                &format!("/api/v1/jobs/{job}/builds/{n}/rebuild"),
                Some(json!({"failed_cells": true})),
            )
            .await;
        assert_eq!(r.status(), 409, "{job} #{n}");
    }
}
