//! Build notifications through the real api, worker and redis-server to a real HTTP
//! receiver standing in for a chat webhook: who gets which message, signed, retried, only
//! on a change of status when asked, and what a target that refuses leaves behind.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use reqwest::Method;
use serde_json::{json, Value};
use support::{job, Cluster, WorkerOpts};

const T: Duration = Duration::from_secs(30);

/// One message as the receiver got it.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    delivery: String,
    signature: Option<String>,
    body: Vec<u8>,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

type Log = Arc<Mutex<Vec<Received>>>;

/// How long `/slow` takes to answer (less than the notifier's 10 s timeout).
const SLOW: Duration = Duration::from_secs(8);

/// A receiver on a free port: `/hook/*` answers 200, `/flaky` 503 to its first message
/// then 200, `/gone` 410, `/slow` 200 after [`SLOW`]. Returns its base URL and what it
/// received.
async fn receiver() -> (String, Log) {
    let log: Log = Log::default();
    let seen = log.clone();
    let server = HttpServer::new(move || {
        let seen = seen.clone();
        App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
            let seen = seen.clone();
            async move {
                let header = |n: &str| {
                    req.headers()
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                let path = req.path().to_owned();
                let earlier = {
                    let mut log = seen.lock().unwrap();
                    let earlier = log.iter().filter(|r| r.path == path).count();
                    log.push(Received {
                        path: path.clone(),
                        delivery: header("x-kiln-delivery").unwrap_or_default(),
                        signature: header("x-kiln-signature-256"),
                        body: body.to_vec(),
                    });
                    earlier
                };
                match path.as_str() {
                    "/flaky" if earlier == 0 => HttpResponse::ServiceUnavailable().finish(),
                    "/gone" => HttpResponse::Gone().finish(),
                    "/slow" => {
                        tokio::time::sleep(SLOW).await;
                        HttpResponse::Ok().finish()
                    }
                    _ => HttpResponse::Ok().finish(),
                }
            }
        }))
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let addr = server.addrs()[0];
    tokio::spawn(server.run());
    (format!("http://{addr}"), log)
}

fn messages(log: &Log, path: &str) -> Vec<Received> {
    log.lock()
        .unwrap()
        .iter()
        .filter(|r| r.path == path)
        .cloned()
        .collect()
}

#[tokio::test]
async fn an_ended_build_notifies_the_targets_its_status_names() {
    let mut c = Cluster::start().await;
    c.restart_api_with(&[("KILN_API__PUBLIC_URL", "https://ci.example/".into())])
        .await;
    let (base, log) = receiver().await;
    for (name, value) in [
        ("HOOK_URL", format!("{base}/hook/secret-token-in-the-path")),
        ("SIGNING_KEY", "sign-me-0123".to_owned()),
    ] {
        let r = c
            .call(
                Method::PUT,
                &format!("/api/v1/secrets/{name}"),
                Some(json!({ "value": value })),
            )
            .await;
        assert!(r.status().is_success(), "{name}");
    }
    let mut def = job(&["test \"$FAIL\" != 1"]);
    def["parameters"] = json!([{"name": "FAIL", "default": "0"}]);
    def["notify"] = json!([
        {"url": format!("{base}/hook/plain"), "on": ["success", "failure"]},
        {"url_secret": "HOOK_URL", "signing_secret": "SIGNING_KEY"},
        {"url": format!("{base}/flaky"), "on": ["failure"]},
        {"url": format!("{base}/gone"), "on": ["failure"]},
        {"url": format!("{base}/hook/changes"), "on": ["success", "failure"], "only_on_change": true}
    ]);
    c.apply("app", def).await;
    let _w = c.worker(WorkerOpts::new("w1")).await;

    let ok = c.trigger("app").await;
    c.wait_status("app", ok, "success", T).await;
    let plain = kiln_testkit::wait_for("the success message", T, || async {
        let m = messages(&log, "/hook/plain");
        (!m.is_empty()).then_some(m)
    })
    .await;
    let first = plain[0].json();
    assert_eq!(first["status"], "success", "{first}");
    assert_eq!(first["event"], "build.finished");
    assert_eq!(
        first["url"],
        format!("https://ci.example/api/v1/jobs/app/builds/{ok}")
    );

    let failed = c
        .trigger_with("app", json!({"parameters": {"FAIL": "1"}}))
        .await;
    c.wait_status("app", failed, "failure", T).await;
    let letters = kiln_testkit::wait_for("the refused target's dead letter", T, || async {
        let d = c.get_json("/api/v1/dead-letters/notify").await;
        (d["dead_letters"].as_array()?.len() == 1).then_some(d)
    })
    .await;
    let letter = &letters["dead_letters"][0];
    assert_eq!(letter["entry"], format!("job_app_{failed}"));
    let reason = letter["reason"].as_str().unwrap();
    assert!(
        reason.contains("notify[3]") && reason.contains("410"),
        "{reason}"
    );
    assert!(
        !reason.contains("/gone"),
        "a URL's path is never shown: {reason}"
    );

    // Success went to the one target that asked for it; the failure to all four.
    assert_eq!(messages(&log, "/hook/plain").len(), 2);
    let secret = messages(&log, "/hook/secret-token-in-the-path");
    assert_eq!(secret.len(), 1, "the default `on` leaves successes out");
    let m = secret[0].json();
    assert_eq!(m["number"], failed);
    assert!(
        m["text"]
            .as_str()
            .unwrap()
            .starts_with(&format!("app #{failed} failure")),
        "{m}"
    );
    assert_eq!(
        secret[0].signature.as_deref(),
        Some(kiln_github_ingest::sign(b"sign-me-0123", &secret[0].body).as_str()),
        "signed over the exact body"
    );
    let flaky = messages(&log, "/flaky");
    assert_eq!(flaky.len(), 2, "a 503 is tried again");
    assert_eq!(
        flaky[0].delivery, flaky[1].delivery,
        "one delivery id per message"
    );
    assert_eq!(messages(&log, "/gone").len(), 1, "a 410 is not");
    assert_eq!(
        flaky[1].delivery, secret[0].delivery,
        "every target gets the same id for one build"
    );

    // `only_on_change`: a second failure in a row says nothing; the fix does.
    let again = c
        .trigger_with("app", json!({"parameters": {"FAIL": "1"}}))
        .await;
    c.wait_status("app", again, "failure", T).await;
    let fixed = c.trigger("app").await;
    c.wait_status("app", fixed, "success", T).await;
    // Each build's targets are sent in turn and its dead letter written last: once the
    // repeated failure's letter is there and three change messages came, all are in.
    kiln_testkit::wait_for(
        "the repeated failure handled and the fix's message",
        T,
        || async {
            let d = c.get_json("/api/v1/dead-letters/notify").await;
            let letters = d["dead_letters"].as_array().map_or(0, Vec::len);
            (letters == 2 && messages(&log, "/hook/changes").len() >= 3).then_some(())
        },
    )
    .await;
    assert_eq!(messages(&log, "/hook/plain").len(), 4);
    let numbers: Vec<Value> = messages(&log, "/hook/changes")
        .iter()
        .map(|m| m.json()["number"].clone())
        .collect();
    assert_eq!(numbers, [json!(ok), json!(failed), json!(fixed)]);

    // Neither a secret's URL nor its value reaches the api's log.
    let logs = c.logs_of("kiln-api");
    assert!(!logs.contains("secret-token-in-the-path") && !logs.contains("sign-me-0123"));
}

#[tokio::test]
async fn a_slow_target_holds_up_only_its_own_builds_message() {
    let c = Cluster::start().await;
    let (base, log) = receiver().await;
    for (name, path) in [("slow", "/slow"), ("quick", "/hook/quick")] {
        let mut def = job(&["true"]);
        def["notify"] = json!([{"url": format!("{base}{path}"), "on": ["success"]}]);
        c.apply(name, def).await;
    }
    let _w = c.worker(WorkerOpts::new("w1")).await;
    let slow = c.trigger("slow").await;
    c.wait_status("slow", slow, "success", T).await;
    kiln_testkit::wait_for("the slow target to be asked", T, || async {
        (!messages(&log, "/slow").is_empty()).then_some(())
    })
    .await;
    let asked = std::time::Instant::now();
    let quick = c.trigger("quick").await;
    c.wait_status("quick", quick, "success", T).await;
    kiln_testkit::wait_for("the quick target's message", T, || async {
        (!messages(&log, "/hook/quick").is_empty()).then_some(())
    })
    .await;
    // Well before the slow target answers (the build's own run takes a fraction of it).
    assert!(
        asked.elapsed() < SLOW / 2,
        "the quick message waited for the slow target: {:?}",
        asked.elapsed()
    );
}

#[tokio::test]
async fn a_matrix_notifies_once_with_the_whole_matrixs_status() {
    let c = Cluster::start().await;
    let (base, log) = receiver().await;
    let mut w = WorkerOpts::new("w");
    w.concurrency = 3;
    let _w = c.worker(w).await;
    let mut def = job(&["[ \"$OS\" != mac ]"]);
    def["matrix"] = json!({"axes": {"OS": ["linux", "mac", "windows"]}});
    def["notify"] = json!([{"url": format!("{base}/hook/matrix")}]);
    c.apply("app", def).await;
    let mut marker = job(&["false"]);
    marker["notify"] = json!([{"url": format!("{base}/hook/marker")}]);
    c.apply("marker", marker).await;

    let n = c.trigger("app").await;
    c.wait_status("app", n, "success", T).await;
    c.wait_status("app", n + 1, "failure", T).await;
    c.wait_status("app", n + 2, "success", T).await;
    let got = kiln_testkit::wait_for("the matrix's message", T, || async {
        messages(&log, "/hook/matrix").pop()
    })
    .await;
    let m = got.json();
    assert_eq!(
        m["number"], n,
        "the matrix is named by its first build: {m}"
    );
    assert_eq!(m["status"], "failure");
    assert_eq!(m["matrix"], json!({"group": n, "size": 3}));
    let text = m["text"].as_str().unwrap();
    assert!(
        text.contains(&format!(
            "1 of the matrix's 3 builds did not succeed: #{} (OS=mac) failure",
            n + 1
        )),
        "{text}"
    );

    // The marker's end is handed to the notifier after every cell's end: once its message
    // is in, a second message of the matrix would have been sent too.
    c.trigger("marker").await;
    kiln_testkit::wait_for("the marker's message", T, || async {
        messages(&log, "/hook/marker").pop()
    })
    .await;
    let all: Vec<String> = messages(&log, "/hook/matrix")
        .iter()
        .map(|r| format!("{} {}", r.delivery, r.json()["text"]))
        .collect();
    assert_eq!(all.len(), 1, "{all:#?}");
}
