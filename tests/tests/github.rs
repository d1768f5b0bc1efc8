//! github-ingest with real GitHub payloads (signed as GitHub signs them), a real
//! redis-server, the real worker, and a wiremock fake of GitHub's statuses endpoint.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use support::{git, job, Cluster, WorkerOpts, WEBHOOK_SECRET};
use wiremock::matchers::{header, method, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

const T: Duration = Duration::from_secs(30);

/// The shared fixtures beside the checkout, or `None` (the test then says why it skips).
fn fixtures() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/github");
    if p.is_dir() {
        Some(p)
    } else {
        eprintln!(
            "SKIPPED: {} is absent; GitHub fixtures are needed for this test",
            p.display()
        );
        None
    }
}

fn payload(dir: &Path, name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join(name)).unwrap()).unwrap()
}

struct Hook {
    url: String,
    client: reqwest::Client,
}

impl Hook {
    async fn send_bytes(
        &self,
        event: &str,
        delivery: &str,
        body: Vec<u8>,
        signature: Option<String>,
        ct: &str,
    ) -> reqwest::Response {
        let mut r = self
            .client
            .post(format!("{}/webhook", self.url))
            .header("X-GitHub-Event", event)
            .header("X-GitHub-Delivery", delivery)
            .header("Content-Type", ct)
            .body(body);
        if let Some(s) = signature {
            r = r.header("X-Hub-Signature-256", s);
        }
        r.send().await.unwrap()
    }

    /// Sends `body` as GitHub does: signed over the exact bytes.
    async fn send(&self, event: &str, delivery: &str, body: &Value) -> (u16, Value) {
        let bytes = serde_json::to_vec(body).unwrap();
        let sig = kiln_github_ingest::sign(WEBHOOK_SECRET.as_bytes(), &bytes);
        let r = self
            .send_bytes(event, delivery, bytes, Some(sig), "application/json")
            .await;
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

/// A local repository with one commit per content; returns (file:// URL, shas).
fn repository(dir: &Path, contents: &[&str]) -> (String, Vec<String>) {
    git(dir, &["init", "-q", "-b", "main"]);
    let mut shas = Vec::new();
    for c in contents {
        std::fs::write(dir.join("message.txt"), c).unwrap();
        git(dir, &["add", "."]);
        git(dir, &["commit", "-q", "-m", c]);
        shas.push(git(dir, &["rev-parse", "HEAD"]));
    }
    (format!("file://{}", dir.display()), shas)
}

async fn github_fake() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/repos/[^/]+/[^/]+/statuses/[0-9a-f]{40}$"))
        .respond_with(
            ResponseTemplate::new(201).set_body_json(json!({"id": 1, "state": "success"})),
        )
        .mount(&server)
        .await;
    server
}

/// The states posted to the fake GitHub so far, in order.
async fn posted_states(server: &MockServer) -> Vec<String> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
        .map(|v| v["state"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn link(c: &Cluster, kind: &str, job_name: &str) {
    let r = c
        .call(
            Method::PUT,
            &format!("/api/v1/github/Codertocat/Hello-World/{kind}"),
            Some(json!({"job": job_name})),
        )
        .await;
    assert_eq!(r.status(), 200);
}

/// The common arrangement: a cluster (no worker), a fake GitHub, github-ingest, and the job
/// `app` (running `true`) linked for `kind` events of Codertocat/Hello-World.
async fn linked(kind: &str) -> (Cluster, MockServer, Hook, support::Proc) {
    let c = Cluster::start().await;
    let gh = github_fake().await;
    let (ingest, url) = c.ingest(&gh.uri(), &[]).await;
    let hook = Hook {
        url,
        client: reqwest::Client::new(),
    };
    c.apply("app", job(&["true"])).await;
    link(&c, kind, "app").await;
    (c, gh, hook, ingest)
}

#[tokio::test]
async fn a_pull_request_gets_its_own_job_builds_its_head_and_reports_statuses() {
    let Some(fx) = fixtures() else { return };
    let c = Cluster::start().await;
    let _w = c.worker(WorkerOpts::new("w1")).await;
    let gh = github_fake().await;
    let (_i, url) = c.ingest(&gh.uri(), &[]).await;
    let hook = Hook {
        url,
        client: reqwest::Client::new(),
    };
    let repo_dir = tempfile::tempdir().unwrap();
    let (clone_url, shas) = repository(repo_dir.path(), &["first", "second"]);
    c.call(
        Method::POST,
        "/api/v1/folders",
        Some(json!({"name": "team"})),
    )
    .await;
    let mut def = job(&["sleep 1; echo message=$(cat message.txt) sha=$KILN_GIT_SHA"]);
    def["folder"] = json!("team");
    def["schedule"] = json!("0 3 * * *");
    def["secrets"] = json!(["APP_TOKEN"]);
    def["downstream"] = json!([{"job": "deploy"}]);
    let r = c
        .call(
            Method::PUT,
            "/api/v1/secrets/APP_TOKEN",
            Some(json!({"value": "token-of-the-app"})),
        )
        .await;
    assert_eq!(r.status(), 201);
    c.apply("app", def).await;
    link(&c, "pullrequest", "app").await;

    let mut opened = payload(&fx, "pull_request/opened.payload.json");
    opened["pull_request"]["head"]["sha"] = json!(shas[0]);
    opened["pull_request"]["head"]["repo"]["clone_url"] = json!(clone_url);
    let (status, body) = hook.send("pull_request", "d-1", &opened).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        body,
        json!({"outcome": "queued", "job": "app_pr2", "number": 1, "superseded": 0})
    );

    let def = c.get_json("/api/v1/jobs/app_pr2").await;
    let d = &def["definition"];
    assert_eq!(d["folder"], "team", "placed beside its base");
    assert_eq!(d["github"]["number"], 2);
    assert_eq!(d["github"]["head_sha"], shas[0]);
    assert_eq!(d["github"]["author"], "Codertocat");
    assert_eq!(
        d["github"]["title"],
        "Update the README with new information."
    );
    assert_eq!(d["repository"]["url"], clone_url);
    assert_eq!(
        d.get("schedule"),
        None,
        "the base job's schedule stays with the base job"
    );
    assert_eq!(
        d.get("downstream"),
        None,
        "a pull request's builds start none of the base job's downstream jobs"
    );
    assert_eq!(
        d["secrets"],
        json!(["APP_TOKEN"]),
        "a pull request from the repository itself gets the secrets"
    );
    let team = c.get_json("/api/v1/folders/team").await;
    assert_eq!(team["entries"][1]["key"], "job_app_pr2");

    let b = c.wait_status("app_pr2", 1, "success", T).await;
    assert_eq!(b["trigger"]["kind"], "github_pull_request");
    assert!(c
        .log("app_pr2", 1)
        .await
        .contains(&format!("message=first sha={}", shas[0])));
    let states = kiln_testkit::wait_for("the success status on GitHub", T, || async {
        let s = posted_states(&gh).await;
        (s.last().map(String::as_str) == Some("success")).then_some(s)
    })
    .await;
    assert_eq!(states, ["pending", "success"]);
    let first = &gh.received_requests().await.unwrap()[0];
    assert_eq!(
        first.url.path(),
        format!("/repos/Codertocat/Hello-World/statuses/{}", shas[0])
    );
    assert_eq!(
        first.headers.get("authorization").unwrap(),
        "Bearer ghp_test_token"
    );
    let body: Value = serde_json::from_slice(&first.body).unwrap();
    assert_eq!(body["context"], "kiln");
    assert!(body["target_url"]
        .as_str()
        .unwrap()
        .ends_with("/api/v1/jobs/app_pr2/builds/1/log"));

    // A new head: a second build of the same job.
    let mut sync = payload(&fx, "pull_request/synchronize.payload.json");
    sync["pull_request"]["head"]["sha"] = json!(shas[1]);
    sync["pull_request"]["head"]["repo"]["clone_url"] = json!(clone_url);
    let (status, body) = hook.send("pull_request", "d-2", &sync).await;
    assert_eq!((status, body["number"].as_u64()), (202, Some(2)), "{body}");
    c.wait_status("app_pr2", 2, "success", T).await;
    assert!(c.log("app_pr2", 2).await.contains("message=second"));
}

#[tokio::test]
async fn closing_a_pull_request_disables_its_job_and_cancels_queued_builds() {
    let Some(fx) = fixtures() else { return };
    let (c, gh, hook, _i) = linked("pullrequest").await;
    let (status, _) = hook
        .send(
            "pull_request",
            "o-1",
            &payload(&fx, "pull_request/opened.payload.json"),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(
        c.build("app_pr2", 1).await["status"],
        "queued",
        "no worker runs it"
    );
    let (status, body) = hook
        .send(
            "pull_request",
            "c-1",
            &payload(&fx, "pull_request/closed.payload.json"),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        body,
        json!({"outcome": "disabled", "job": "app_pr2", "cancelled": 1})
    );
    assert_eq!(c.build("app_pr2", 1).await["status"], "cancelled");
    let def = c.get_json("/api/v1/jobs/app_pr2").await;
    assert_eq!(def["definition"]["disabled"], true);
    assert!(def["definition"]["github"]["closed_at"].is_string());
    let r = c
        .call(Method::POST, "/api/v1/jobs/app_pr2/builds", None)
        .await;
    assert_eq!(r.status(), 409, "a disabled job accepts no new builds");
    // `pending` is skipped when the build already ended by the time it is reported.
    let states = kiln_testkit::wait_for("the error status on GitHub", T, || async {
        let s = posted_states(&gh).await;
        (s.last().map(String::as_str) == Some("error")).then_some(s)
    })
    .await;
    assert!(
        states == ["pending", "error"] || states == ["error"],
        "{states:?}"
    );
}

#[tokio::test]
async fn branch_pushes_get_collision_free_jobs_and_deleted_branches_are_disabled() {
    let Some(fx) = fixtures() else { return };
    let (c, _gh, hook, _i) = linked("branch").await;
    let base = payload(&fx, "push/with-new-branch.payload.json");
    let mut jobs = Vec::new();
    for (i, branch) in ["feature/x", "feature-x", "feature_x", "fix/ünïcode"]
        .iter()
        .enumerate()
    {
        let mut p = base.clone();
        p["ref"] = json!(format!("refs/heads/{branch}"));
        let (status, body) = hook.send("push", &format!("p-{i}"), &p).await;
        assert_eq!(status, 202, "{body}");
        jobs.push(body["job"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        jobs,
        [
            "app_branch-feature--x",
            "app_branch-feature-dx",
            "app_branch-feature-ux",
            "app_branch-fix---xc3-xbcn-xc3-xafcode"
        ]
    );
    for j in &jobs {
        assert_eq!(c.build(j, 1).await["trigger"]["kind"], "github_push");
    }
    let mut deleted = base.clone();
    deleted["ref"] = json!("refs/heads/feature/x");
    deleted["deleted"] = json!(true);
    let (status, body) = hook.send("push", "p-del", &deleted).await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (202, Some("disabled")),
        "{body}"
    );
    let mut del = payload(&fx, "delete/payload.json");
    del["ref"] = json!("feature-x");
    del["ref_type"] = json!("branch");
    let (status, body) = hook.send("delete", "del-1", &del).await;
    assert_eq!(
        (status, body["job"].as_str()),
        (202, Some("app_branch-feature-dx")),
        "{body}"
    );
    for j in &jobs[..2] {
        let def = c.get_json(&format!("/api/v1/jobs/{j}")).await;
        assert_eq!(def["definition"]["disabled"], true, "{j}");
    }
    let (status, body) = hook
        .send("push", "tag-1", &payload(&fx, "push/payload.json"))
        .await;
    assert_eq!(status, 202);
    assert_eq!(
        body["outcome"], "ignored",
        "tag pushes are not built: {body}"
    );
}

/// GitHub's answers to the reconcile scan: the open pull requests and the branches of
/// Codertocat/Hello-World (its link keys are lower-cased; GitHub's paths are not
/// case-sensitive), each with an `ETag`, and 304 with no body when asked with it.
async fn mount_lists(gh: &MockServer, pulls: Value, branches: Value) {
    for (list, items) in [("pulls", pulls), ("branches", branches)] {
        let path = format!(r"(?i)^/repos/codertocat/hello-world/{list}$");
        let etag = format!("\"{list}-v1\"");
        Mock::given(method("GET"))
            .and(path_regex(path.as_str()))
            .and(header("if-none-match", etag.as_str()))
            .respond_with(ResponseTemplate::new(304).insert_header("ETag", etag.as_str()))
            .with_priority(1)
            .mount(gh)
            .await;
        Mock::given(method("GET"))
            .and(path_regex(path.as_str()))
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header("ETag", etag.as_str())
                    .insert_header("X-RateLimit-Remaining", "4999")
                    .set_body_json(items),
            )
            .mount(gh)
            .await;
    }
}

async fn scans(gh: &MockServer) -> usize {
    gh.received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.url.path().ends_with("/pulls"))
        .count()
}

#[tokio::test]
async fn the_reconcile_scan_does_what_missed_webhooks_would_have_done() {
    let Some(fx) = fixtures() else { return };
    let c = Cluster::start().await;
    let gh = github_fake().await;
    let opened = payload(&fx, "pull_request/opened.payload.json");
    let head = opened["pull_request"]["head"]["sha"]
        .as_str()
        .unwrap()
        .to_owned();
    let moved = "b".repeat(40);
    // Pull request 2 is open, though its webhook never arrived; 7 was closed meanwhile;
    // `main` moved on; `old` was deleted.
    mount_lists(
        &gh,
        json!([opened["pull_request"]]),
        json!([{"name": "main", "commit": {"sha": moved}}, {"name": "other", "commit": {"sha": "c".repeat(40)}}]),
    )
    .await;
    c.apply("app", job(&["true"])).await;
    link(&c, "pullrequest", "app").await;
    link(&c, "branch", "app").await;
    let (_ingest, url) = c
        .ingest(&gh.uri(), &[("KILN_GITHUB__RECONCILE_INTERVAL_SECS", "1")])
        .await;
    let hook = Hook {
        url,
        client: reqwest::Client::new(),
    };
    let mut seven = opened.clone();
    seven["number"] = json!(7);
    seven["pull_request"]["number"] = json!(7);
    assert_eq!(hook.send("pull_request", "pr-7", &seven).await.0, 202);
    let push = payload(&fx, "push/with-new-branch.payload.json");
    for branch in ["main", "old"] {
        let mut p = push.clone();
        p["ref"] = json!(format!("refs/heads/{branch}"));
        assert_eq!(
            hook.send("push", &format!("push-{branch}"), &p).await.0,
            202
        );
    }

    // No worker runs: the builds the scan queued wait.
    let pr = c.wait_status("app_pr2", 1, "queued", T).await;
    assert_eq!(pr["trigger"]["kind"], "github_pull_request", "{pr}");
    assert_eq!(pr["trigger"]["sha"], json!(head), "{pr}");
    let main = c.wait_status("app_branch-main", 2, "queued", T).await;
    assert_eq!(main["trigger"]["sha"], json!(moved), "{main}");
    assert_eq!(
        c.build("app_branch-main", 1).await["status"],
        "cancelled",
        "the new head supersedes the old one"
    );
    for (j, why) in [
        ("app_pr7", "pull request closed"),
        ("app_branch-old", "branch deleted"),
    ] {
        // Closing disables the job, then cancels its builds: both are waited for.
        let what = format!("the scan to disable {j} and cancel its build");
        kiln_testkit::wait_for(&what, T, || async {
            let def = c.get_json(&format!("/api/v1/jobs/{j}")).await;
            let build = c.build(j, 1).await;
            let cancelled = build["status"] == "cancelled"
                && build["reason"].as_str().is_some_and(|r| r.contains(why));
            (def["definition"]["disabled"] == true && cancelled).then_some(())
        })
        .await;
    }

    // Scans that find nothing new queue nothing; `other` never had a job and gets none.
    let seen = scans(&gh).await;
    kiln_testkit::wait_for("two more scans", T, || async {
        (scans(&gh).await >= seen + 2).then_some(())
    })
    .await;
    for (j, total) in [("app_pr2", 1), ("app_branch-main", 2)] {
        let page = c.get_json(&format!("/api/v1/jobs/{j}/builds")).await;
        assert_eq!(page["total"], total, "{j}: {page}");
        // Those scans were answered 304 (unchanged): the lists kept from before stand in.
        let def = c.get_json(&format!("/api/v1/jobs/{j}")).await;
        assert_eq!(def["definition"]["disabled"], false, "{j}");
    }
    let conditional = gh
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.headers.contains_key("if-none-match"))
        .count();
    assert!(conditional >= 2, "later scans ask with the ETag");
    let r = c
        .call(Method::GET, "/api/v1/jobs/app_branch-other", None)
        .await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn bad_deliveries_are_refused_and_change_nothing() {
    let Some(fx) = fixtures() else { return };
    let (c, gh, hook, _i) = linked("pullrequest").await;
    let pool = c.redis.pool();
    let before = kiln_testkit::snapshot(&pool).await;
    let body = std::fs::read(fx.join("pull_request/opened.payload.json")).unwrap();
    let good = kiln_github_ingest::sign(WEBHOOK_SECRET.as_bytes(), &body);
    let bad = kiln_github_ingest::sign(b"wrong secret", &body);
    let truncated = body[..body.len() / 2].to_vec();
    let truncated_sig = kiln_github_ingest::sign(WEBHOOK_SECRET.as_bytes(), &truncated);
    let cases = [
        (
            body.clone(),
            Some(bad),
            "application/json",
            "pull_request",
            401,
        ),
        (body.clone(), None, "application/json", "pull_request", 401),
        (
            body.clone(),
            Some(good.clone()),
            "application/x-www-form-urlencoded",
            "pull_request",
            415,
        ),
        (
            truncated,
            Some(truncated_sig),
            "application/json",
            "pull_request",
            400,
        ),
        (
            body.clone(),
            Some(good.clone()),
            "application/json",
            "made_up_event",
            202,
        ),
    ];
    for (i, (b, sig, ct, event, expected)) in cases.into_iter().enumerate() {
        let r = hook
            .send_bytes(event, &format!("bad-{i}"), b, sig, ct)
            .await;
        assert_eq!(r.status().as_u16(), expected, "case {i}");
        let v: Value = r.json().await.unwrap();
        assert!(
            v["error"]["code"].is_string() || v["outcome"] == "ignored",
            "case {i}: {v}"
        );
    }
    let mut other = payload(&fx, "pull_request/opened.payload.json");
    other["repository"]["full_name"] = json!("someone/else");
    let (status, body) = hook.send("pull_request", "unlinked", &other).await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (202, Some("ignored")),
        "{body}"
    );
    let huge = vec![b' '; 6 * 1024 * 1024];
    let sig = kiln_github_ingest::sign(WEBHOOK_SECRET.as_bytes(), &huge);
    assert_eq!(
        hook.send_bytes("push", "huge", huge, Some(sig), "application/json")
            .await
            .status(),
        413
    );
    assert_eq!(
        kiln_testkit::snapshot(&pool).await,
        before,
        "refused deliveries wrote nothing"
    );
    assert!(posted_states(&gh).await.is_empty());
}

#[tokio::test]
async fn a_redelivered_event_queues_one_build() {
    let Some(fx) = fixtures() else { return };
    let (c, _gh, hook, _i) = linked("pullrequest").await;
    let opened = payload(&fx, "pull_request/opened.payload.json");
    let (s1, b1) = hook.send("pull_request", "same", &opened).await;
    let (s2, b2) = hook.send("pull_request", "same", &opened).await;
    assert_eq!((s1, s2), (202, 200));
    assert_eq!(
        b2,
        json!({"outcome": "duplicate", "job": "app_pr2", "number": 1}),
        "{b1}"
    );
    let list = c.get_json("/api/v1/jobs/app_pr2/builds").await;
    assert_eq!(list["total"], 1);
    assert_eq!(
        list["builds"][0]["status"], "queued",
        "the redelivery did not cancel it"
    );
}

#[tokio::test]
async fn a_failing_github_api_is_retried_until_the_status_arrives() {
    let Some(fx) = fixtures() else { return };
    let c = Cluster::start().await;
    let gh = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&gh)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"state": "pending"})))
        .with_priority(2)
        .mount(&gh)
        .await;
    let (_i, url) = c.ingest(&gh.uri(), &[]).await;
    let hook = Hook {
        url,
        client: reqwest::Client::new(),
    };
    c.apply("app", job(&["true"])).await;
    link(&c, "pullrequest", "app").await;
    let (status, _) = hook
        .send(
            "pull_request",
            "r-1",
            &payload(&fx, "pull_request/opened.payload.json"),
        )
        .await;
    assert_eq!(status, 202);
    kiln_testkit::wait_for("the pending status after a 500", T, || async {
        (posted_states(&gh).await == ["pending", "pending"]).then_some(())
    })
    .await;
}

#[tokio::test]
async fn fork_pull_requests_are_not_built_by_default() {
    let Some(fx) = fixtures() else { return };
    let (c, _gh, hook, _i) = linked("pullrequest").await;
    let mut fork = payload(&fx, "pull_request/opened.payload.json");
    fork["pull_request"]["head"]["repo"]["full_name"] = json!("mallory/Hello-World");
    let (status, body) = hook.send("pull_request", "f-1", &fork).await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (202, Some("ignored")),
        "{body}"
    );
    assert!(body["reason"].as_str().unwrap().contains("fork"));
    let r = c.call(Method::GET, "/api/v1/jobs/app_pr2", None).await;
    assert_eq!(r.status(), 404);
}

/// A cluster whose github-ingest has `setting` on, the job `app` (with a secret) linked for
/// pull requests, and an `opened` delivery of a pull request from mallory's fork.
async fn forked(fx: &Path, setting: &str) -> (Cluster, Hook, support::Proc, Value) {
    let c = Cluster::start().await;
    let gh = github_fake().await;
    let (ingest, url) = c.ingest(&gh.uri(), &[(setting, "true")]).await;
    let hook = Hook {
        url,
        client: reqwest::Client::new(),
    };
    let mut def = job(&["true"]);
    def["secrets"] = json!(["DEPLOY_TOKEN"]);
    c.apply("app", def).await;
    link(&c, "pullrequest", "app").await;
    let mut fork = payload(fx, "pull_request/opened.payload.json");
    fork["pull_request"]["head"]["repo"]["full_name"] = json!("mallory/Hello-World");
    (c, hook, ingest, fork)
}

#[tokio::test]
async fn fork_pull_requests_built_when_allowed_get_none_of_the_secrets() {
    let Some(fx) = fixtures() else { return };
    let (c, hook, _i, fork) = forked(&fx, "KILN_GITHUB__ALLOW_FORK_PRS").await;
    let (status, body) = hook.send("pull_request", "f-1", &fork).await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (202, Some("queued")),
        "{body}"
    );
    let def: Value = c.get_json("/api/v1/jobs/app_pr2").await;
    assert_eq!(def["definition"].get("secrets"), None, "{def}");
}

#[tokio::test]
async fn a_pull_request_from_a_fork_waits_for_someone_to_approve_each_head() {
    let Some(fx) = fixtures() else { return };
    let (c, hook, _i, fork) = forked(&fx, "KILN_GITHUB__FORK_PR_APPROVAL").await;
    let head = fork["pull_request"]["head"]["sha"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = hook.send("pull_request", "f-1", &fork).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        body,
        json!({"outcome": "awaiting_approval", "job": "app_pr2", "sha": head})
    );
    let def = c.get_json("/api/v1/jobs/app_pr2").await;
    assert_eq!(
        def["definition"]["github"]["awaiting_approval"],
        json!(head)
    );
    assert_eq!(def["definition"].get("secrets"), None, "{def}");
    let page = c.get_json("/api/v1/jobs/app_pr2/builds").await;
    assert_eq!(page["total"], 0, "nothing runs before approval");

    let approve = "/api/v1/jobs/app_pr2/approve";
    let r = c
        .client
        .post(c.url(approve))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "approving needs a token");
    let r = c
        .call(
            Method::POST,
            approve,
            Some(json!({"sha": "0123456789abcdef"})),
        )
        .await;
    assert_eq!(r.status(), 400, "not the head that waits");
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["field"], "sha", "{e}");
    let r = c
        .call(Method::POST, approve, Some(json!({"sha": &head[..12]})))
        .await;
    assert_eq!(r.status(), 201);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["trigger"]["sha"], json!(head), "{b}");
    assert_eq!(b["trigger"]["by"], "tests", "the approver asked for it");
    let def = c.get_json("/api/v1/jobs/app_pr2").await;
    assert_eq!(def["definition"]["github"].get("awaiting_approval"), None);
    let r = c.call(Method::POST, approve, None).await;
    assert_eq!(r.status(), 409, "approved already");

    // A new head waits again; the approved one's build is superseded.
    let mut sync = payload(&fx, "pull_request/synchronize.payload.json");
    sync["pull_request"]["head"]["repo"]["full_name"] = json!("mallory/Hello-World");
    sync["number"] = json!(2);
    let moved = "d".repeat(40);
    sync["pull_request"]["head"]["sha"] = json!(moved);
    let (status, body) = hook.send("pull_request", "f-2", &sync).await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (202, Some("awaiting_approval")),
        "{body}"
    );
    let page = c.get_json("/api/v1/jobs/app_pr2/builds").await;
    assert_eq!(page["total"], 1, "{page}");
    assert_eq!(page["builds"][0]["status"], "cancelled");
    let def = c.get_json("/api/v1/jobs/app_pr2").await;
    assert_eq!(
        def["definition"]["github"]["awaiting_approval"],
        json!(moved)
    );
}

#[tokio::test]
async fn closed_pull_request_jobs_are_deleted_after_their_retention() {
    let Some(fx) = fixtures() else { return };
    let c = Cluster::start().await;
    let gh = github_fake().await;
    let (_i, url) = c
        .ingest(
            &gh.uri(),
            &[
                ("KILN_GITHUB__CLOSED_RETENTION_DAYS", "0"),
                ("KILN_GITHUB__CLEANUP_INTERVAL_SECS", "1"),
            ],
        )
        .await;
    let hook = Hook {
        url,
        client: reqwest::Client::new(),
    };
    c.apply("app", job(&["true"])).await;
    link(&c, "pullrequest", "app").await;
    hook.send(
        "pull_request",
        "o-1",
        &payload(&fx, "pull_request/opened.payload.json"),
    )
    .await;
    assert_eq!(
        c.call(Method::GET, "/api/v1/jobs/app_pr2", None)
            .await
            .status(),
        200
    );
    hook.send(
        "pull_request",
        "c-1",
        &payload(&fx, "pull_request/closed.payload.json"),
    )
    .await;
    kiln_testkit::wait_for("the closed PR's job to be deleted", T, || async {
        (c.call(Method::GET, "/api/v1/jobs/app_pr2", None)
            .await
            .status()
            == 404)
            .then_some(())
    })
    .await;
    assert_eq!(
        c.call(Method::GET, "/api/v1/jobs/app", None).await.status(),
        200,
        "the base stays"
    );
}

#[tokio::test]
async fn the_webhook_asked_with_another_method_says_which_one_works() {
    let c = Cluster::start().await;
    let gh = github_fake().await;
    let (_i, base) = c.ingest(&gh.uri(), &[]).await;
    let r = reqwest::get(format!("{base}/webhook")).await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
    let r = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn each_cell_of_a_matrix_reports_a_status_of_its_own() {
    let Some(fx) = fixtures() else { return };
    let (c, gh, hook, _i) = linked("pullrequest").await;
    let mut def = job(&["echo on $OS"]);
    def["matrix"] = json!({"axes": {"OS": ["linux", "mac"]}});
    c.apply("app", def).await;
    let repo_dir = tempfile::tempdir().unwrap();
    let (clone_url, shas) = repository(repo_dir.path(), &["first"]);
    let mut opened = payload(&fx, "pull_request/opened.payload.json");
    opened["pull_request"]["head"]["sha"] = json!(shas[0]);
    opened["pull_request"]["head"]["repo"]["clone_url"] = json!(clone_url);
    let (status, body) = hook.send("pull_request", "m-1", &opened).await;
    assert_eq!(status, 202, "{body}");
    // Both cells wait for a worker until both are `pending` on GitHub.
    kiln_testkit::wait_for("both cells' pending statuses", T, || async {
        (posted_states(&gh).await == ["pending", "pending"]).then_some(())
    })
    .await;
    let _w = c.worker(WorkerOpts::new("w1")).await;
    for n in [1, 2] {
        c.wait_status("app_pr2", n, "success", T).await;
    }
    // Per context, in the order posted: pending, then success.
    let posted = kiln_testkit::wait_for("both cells' success statuses", T, || async {
        let mut by_context = std::collections::BTreeMap::<String, Vec<String>>::new();
        for r in gh.received_requests().await.unwrap_or_default() {
            let v: Value = serde_json::from_slice(&r.body).ok()?;
            by_context
                .entry(v["context"].as_str()?.to_owned())
                .or_default()
                .push(v["state"].as_str()?.to_owned());
        }
        let done = by_context.len() == 2
            && by_context
                .values()
                .all(|s| s.last().map(String::as_str) == Some("success"));
        done.then_some(by_context)
    })
    .await;
    let expected = vec!["pending".to_owned(), "success".to_owned()];
    assert_eq!(
        posted,
        [
            ("kiln (OS=linux)".to_owned(), expected.clone()),
            ("kiln (OS=mac)".to_owned(), expected)
        ]
        .into_iter()
        .collect()
    );
}
