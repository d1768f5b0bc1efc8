//! The worker with real binaries, a real redis-server and real child processes.

mod support;

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use support::{alive, git, job, Cluster, WorkerOpts};

const T: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_triggered_build_runs_and_its_output_is_stored() {
    let c = Cluster::start().await;
    let _w = c.worker(WorkerOpts::new("w1")).await;
    c.apply("hello", job(&["echo hello from kiln", "echo second >&2"]))
        .await;
    let n = c.trigger("hello").await;
    let b = c.wait_status("hello", n, "success", T).await;
    assert_eq!(b["exit_code"], 0);
    assert_eq!(b["node"], "w1");
    assert_eq!(b["attempt"], 1);
    assert!(b["started_at"].is_string() && b["finished_at"].is_string());
    assert!(b["duration_ms"].as_u64().is_some());
    let steps = b["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    assert!(steps.iter().all(|s| s["status"] == "success"));
    let log = c.log("hello", n).await;
    assert!(
        log.contains("hello from kiln\n") && log.contains("second\n"),
        "{log}"
    );
    let file = std::fs::read_to_string(c.build_dir("hello", n).join("log.jsonl")).unwrap();
    assert!(file
        .lines()
        .any(|l| l.contains("\"stream\":\"stderr\"") && l.contains("second")));
    let recent = c
        .call(Method::GET, "/api/v1/redis/job_hello_recent", None)
        .await;
    let recent: serde_json::Value = recent.json().await.unwrap();
    assert_eq!(recent["value"], json!(["1"]));
}

/// The worker's `/healthz` is its own (it fails when the claim loop stops turning, which a
/// liveness probe must see), and its port answers anything else in the JSON error shape.
#[tokio::test]
async fn the_workers_http_port_reports_its_claim_loop_and_answers_the_rest_with_json_errors() {
    let c = Cluster::start().await;
    let w = c.worker(WorkerOpts::new("w1")).await;
    let base = format!("http://127.0.0.1:{}", w.port);
    let health: serde_json::Value = reqwest::get(format!("{base}/healthz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(health["claim_loop_idle_ms"].is_i64(), "{health}");
    assert_eq!(health["running"], 0, "{health}");
    let r = reqwest::get(format!("{base}/nope")).await.unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.expect("a JSON error body");
    assert_eq!(body["error"]["code"], "not_found", "{body}");
    let r = reqwest::Client::new()
        .post(format!("{base}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET");
}

/// What `/nodes` says of worker `id` (`Null` when it is not live).
async fn node(c: &Cluster, id: &str) -> serde_json::Value {
    let nodes = c.get_json("/api/v1/nodes").await;
    nodes["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["id"] == id).cloned())
        .unwrap_or_default()
}

/// An operator pauses a worker (maintenance of its machine): it takes nothing new until
/// resumed, and says so in `/nodes`.
#[tokio::test]
async fn a_paused_worker_takes_no_new_build_until_resumed() {
    let c = Cluster::start().await;
    let _w = c.worker(WorkerOpts::new("w1")).await;
    c.apply("app", job(&["true"])).await;
    let r = c
        .call(Method::POST, "/api/v1/nodes/nobody/pause", None)
        .await;
    assert_eq!(r.status(), 404);
    let r = c.call(Method::POST, "/api/v1/nodes/w1/pause", None).await;
    assert_eq!(r.status(), 200);
    kiln_testkit::wait_for("w1 to say it is paused", T, || async {
        (node(&c, "w1").await["state"] == "paused").then_some(())
    })
    .await;
    let n = c.trigger("app").await;
    // Two more heartbeats of the paused worker, and the build still waits.
    for _ in 0..2 {
        let seen = node(&c, "w1").await["last_seen"].clone();
        kiln_testkit::wait_for("another heartbeat", T, || async {
            (node(&c, "w1").await["last_seen"] != seen).then_some(())
        })
        .await;
    }
    assert_eq!(c.build("app", n).await["status"], "queued");
    let r = c.call(Method::POST, "/api/v1/nodes/w1/resume", None).await;
    assert_eq!(r.status(), 200);
    c.wait_status("app", n, "success", T).await;
}

/// Ephemeral workers, as a Kubernetes Job or KEDA ScaledJob runs them: one takes its
/// `max_builds` and exits once they have ended, leaving the rest queued; one that finds no
/// build for `idle_exit_secs` exits.
#[tokio::test]
async fn ephemeral_workers_exit_after_their_builds_or_when_idle() {
    let c = Cluster::start().await;
    c.apply("app", job(&["true"])).await;
    let numbers = [
        c.trigger("app").await,
        c.trigger("app").await,
        c.trigger("app").await,
    ];
    let mut opts = WorkerOpts::new("once");
    opts.env.push(("KILN_WORKER__MAX_BUILDS", "2".into()));
    let mut once = c.spawn_worker(opts);
    assert_eq!(
        once.wait_exit(T).await,
        Some(0),
        "it exits by itself, cleanly"
    );
    for n in &numbers[..2] {
        assert_eq!(c.build("app", *n).await["status"], "success");
    }
    assert_eq!(c.build("app", numbers[2]).await["status"], "queued");
    let nodes = c.get_json("/api/v1/nodes").await;
    assert!(
        !nodes.to_string().contains("\"once\""),
        "it left the nodes: {nodes}"
    );

    let mut opts = WorkerOpts::new("idler");
    opts.env.push(("KILN_WORKER__IDLE_EXIT_SECS", "1".into()));
    let mut idler = c.spawn_worker(opts);
    c.wait_status("app", numbers[2], "success", T).await;
    assert_eq!(idler.wait_exit(T).await, Some(0), "idle, it exits");
}

/// The value of the sample of `metric` whose labels include every one of `labels`.
fn sample(text: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn a_workers_metrics_tell_how_long_builds_waited_and_ran_per_queue_and_status() {
    let c = Cluster::start().await;
    let w = c.worker(WorkerOpts::new("w1")).await;
    let mut def = job(&["test \"$FAIL\" != 1"]);
    def["parameters"] = json!([{"name": "FAIL", "default": "0"}]);
    c.apply("app", def).await;
    let ok = c.trigger("app").await;
    c.wait_status("app", ok, "success", T).await;
    let failed = c
        .trigger_with("app", json!({"parameters": {"FAIL": "1"}}))
        .await;
    c.wait_status("app", failed, "failure", T).await;
    let url = format!("http://127.0.0.1:{}/metrics", w.port);
    let text = kiln_testkit::wait_for("both builds in the worker's metrics", T, || async {
        let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
        let done = ["success", "failure"].iter().all(|s| {
            let status = format!("status=\"{s}\"");
            sample(
                &text,
                "kiln_build_duration_seconds_count",
                &["queue=\"default\"", &status],
            ) == Some(1.0)
        });
        done.then_some(text)
    })
    .await;
    // Buckets (which add up across workers), not summaries.
    assert_eq!(
        sample(
            &text,
            "kiln_build_queue_wait_seconds_bucket",
            &["queue=\"default\"", "le=\"+Inf\""]
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "kiln_build_duration_seconds_bucket",
            &["status=\"success\"", "le=\"7200\""]
        ),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test]
async fn a_failing_step_fails_the_build_and_skips_the_rest() {
    let c = Cluster::start().await;
    let _w = c.worker(WorkerOpts::new("w1")).await;
    c.apply("app", job(&["true", "echo failing; exit 3", "echo never"]))
        .await;
    let n = c.trigger("app").await;
    let b = c.wait_status("app", n, "failure", T).await;
    assert_eq!(b["exit_code"], 3);
    assert_eq!(b["steps"].as_array().unwrap().len(), 2);
    assert!(b["reason"].as_str().unwrap().contains("step2"));
    assert!(!c.log("app", n).await.contains("never"));
}

#[tokio::test]
async fn a_subscriber_of_the_builds_channel_gets_every_line_then_the_end() {
    use futures::StreamExt;
    use kiln_model::{keys, BuildRef, OutputMessage};
    let c = Cluster::start().await;
    c.apply("live", job(&["echo one", "echo two; echo three"]))
        .await;
    let channel = keys::output_channel(&BuildRef::from_key("job_live_1").unwrap());
    let client = deadpool_redis::redis::Client::open(c.redis_url()).unwrap();
    let mut sub = client.get_async_pubsub().await.unwrap();
    sub.subscribe(&channel).await.unwrap();
    // Subscribed before any worker exists: every message of the build is on the channel.
    let _w = c.worker(WorkerOpts::new("w1")).await;
    assert_eq!(c.trigger("live").await, 1);
    let mut messages = sub.on_message();
    let mut lines = Vec::new();
    let last_seq = loop {
        let msg = tokio::time::timeout(T, messages.next())
            .await
            .expect("the build's end within the timeout")
            .expect("the subscription stays open");
        let payload: String = msg.get_payload().unwrap();
        match serde_json::from_str(&payload).unwrap() {
            OutputMessage::Lines { lines: batch } => lines.extend(batch),
            OutputMessage::End { last_seq, .. } => break last_seq,
        }
    };
    let seqs: Vec<u64> = lines.iter().map(|l| l.seq).collect();
    assert_eq!(
        seqs,
        (1..=last_seq).collect::<Vec<_>>(),
        "no line missing, none after the end"
    );
    let texts: Vec<&str> = lines.iter().map(|l| l.line.as_str()).collect();
    for want in ["one", "two", "three"] {
        assert!(texts.contains(&want), "{texts:?}");
    }
    assert!(texts.last().unwrap().starts_with('✔'), "{texts:?}");
}

/// On a worker busy with another build, a build that ends while its start lingers is
/// recorded by its finish alone, one write instead of two; its watchers still see it
/// start, every line in order, its end and its finish.
#[tokio::test]
async fn on_a_busy_worker_a_quick_builds_start_rides_with_its_finish() {
    use futures::StreamExt;
    use kiln_model::{keys, BuildRef, OutputMessage};
    let c = Cluster::start().await;
    let mut opts = WorkerOpts::new("w1");
    opts.concurrency = 2;
    // Far longer than the quick build takes, even on a loaded machine.
    opts.start_linger_ms = Some(1000);
    let _w = c.worker(opts).await;
    c.apply("long", job(&["sleep 60"])).await;
    c.apply("quick", job(&["echo one; echo two"])).await;
    let long = c.trigger("long").await;
    // Its worker had nothing else to do: it was started at once.
    c.wait_status("long", long, "running", T).await;

    let monitor = support::Monitor::start(&c.redis_url()).await;
    let client = deadpool_redis::redis::Client::open(c.redis_url()).unwrap();
    let mut sub = client.get_async_pubsub().await.unwrap();
    let output = keys::output_channel(&BuildRef::from_key("job_quick_1").unwrap());
    sub.subscribe(&output).await.unwrap();
    sub.subscribe(keys::EVENTS_CHANNEL).await.unwrap();
    assert_eq!(c.trigger("quick").await, 1);
    let mut messages = sub.on_message();
    let (mut events, mut lines, mut last_seq) = (Vec::new(), Vec::new(), None);
    let mut started_at = None;
    while last_seq.is_none() || events.last().map(String::as_str) != Some("finished #1 success") {
        let msg = tokio::time::timeout(T, messages.next())
            .await
            .expect("the build's end within the timeout")
            .expect("the subscription stays open");
        let payload: String = msg.get_payload().unwrap();
        if msg.get_channel_name() == keys::EVENTS_CHANNEL {
            let e: serde_json::Value = serde_json::from_str(&payload).unwrap();
            if e["job"] == "quick" {
                if e["kind"] == "started" {
                    started_at = e["at"].as_str().map(str::to_owned);
                }
                events.push(format!(
                    "{} #{} {}",
                    e["kind"].as_str().unwrap(),
                    e["number"],
                    e["status"].as_str().unwrap()
                ));
            }
            continue;
        }
        match serde_json::from_str(&payload).unwrap() {
            OutputMessage::Lines { lines: batch } => lines.extend(batch),
            OutputMessage::End { last_seq: last, .. } => last_seq = Some(last),
        }
    }
    assert_eq!(
        events,
        [
            "queued #1 queued",
            "started #1 running",
            "finished #1 success"
        ]
    );
    let seqs: Vec<u64> = lines.iter().map(|l| l.seq).collect();
    assert_eq!(
        seqs,
        (1..=last_seq.unwrap()).collect::<Vec<_>>(),
        "every line, in order"
    );
    let texts: Vec<&str> = lines.iter().map(|l| l.line.as_str()).collect();
    assert!(
        texts.contains(&"one") && texts.contains(&"two"),
        "{texts:?}"
    );
    let b = c.build("quick", 1).await;
    assert_eq!(b["status"], "success");
    assert_eq!(b["node"], "w1");
    assert_eq!(
        b["started_at"].as_str(),
        started_at.as_deref(),
        "the started event tells when the build started, not when it was recorded"
    );

    // Redis saw the build's finish (12 keys) and no start of its own (2 keys).
    let seen = monitor
        .wait_for(T, |l| l.contains(r#""13" "job_quick_1""#))
        .await;
    let starts = seen
        .iter()
        .filter(|l| l.contains(r#""2" "job_quick_1" "kiln:lease-owners""#))
        .count();
    assert_eq!(starts, 0, "the start rode with the finish");
}

#[tokio::test]
async fn a_build_whose_log_cannot_be_made_is_stopped_and_ends_in_error() {
    let c = Cluster::start().await;
    let _w = c.worker(WorkerOpts::new("w1")).await;
    c.apply("nolog", job(&["sleep 60"])).await;
    // The job's storage folder is a file: no build folder or log can be made under it.
    let job_dir = c.build_dir("nolog", 1).parent().unwrap().to_owned();
    std::fs::create_dir_all(job_dir.parent().unwrap()).unwrap();
    std::fs::write(&job_dir, "in the way").unwrap();
    let n = c.trigger("nolog").await;
    // Well before the step's 60 s: the step was stopped, not waited for.
    let b = c.wait_status("nolog", n, "error", T).await;
    let reason = b["reason"].as_str().unwrap();
    assert!(reason.contains("cannot create the build log"), "{reason}");
}

#[tokio::test]
async fn a_timeout_kills_the_whole_process_group() {
    let c = Cluster::start().await;
    let _w = c.worker(WorkerOpts::new("w1")).await;
    let pid_file = c.work.path().join("bg.pid");
    let mut def = job(&[&format!(
        "sleep 60 & echo $! > {}; sleep 60",
        pid_file.display()
    )]);
    def["timeout_secs"] = json!(1);
    c.apply("slow", def).await;
    let n = c.trigger("slow").await;
    let b = c.wait_status("slow", n, "timed_out", T).await;
    assert!(b["reason"].as_str().unwrap().contains("timed out"));
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    kiln_testkit::wait_for("the background sleep to be killed", T, || async {
        (!alive(pid)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn cancelling_a_running_build_stops_it_quickly() {
    let c = Cluster::start().await;
    let _w = c.worker(WorkerOpts::new("w1")).await;
    c.apply("long", job(&["echo started; sleep 60"])).await;
    let n = c.trigger("long").await;
    c.wait_log_contains("long", n, "started", T).await;
    let r = c.cancel("long", n).await;
    assert_eq!(r.status(), 202);
    let t0 = std::time::Instant::now();
    let b = c.wait_status("long", n, "cancelled", T).await;
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "cancel took {:?}",
        t0.elapsed()
    );
    assert_eq!(b["cancel_requested"], true);
}

#[tokio::test]
async fn deleting_a_job_stops_its_running_build_at_once_and_leaves_no_files() {
    let c = Cluster::start().await;
    // A lease long enough that the next renewal (a fifth of it) comes after the deadline
    // below: only the deletion itself can stop the build in time.
    let _w = c
        .worker(WorkerOpts {
            lease_ms: 60_000,
            ..WorkerOpts::new("w1")
        })
        .await;
    c.apply("doomed", job(&["echo pid=$$; exec sleep 60"]))
        .await;
    let n = c.trigger("doomed").await;
    c.wait_log_contains("doomed", n, "pid=", T).await;
    let log = c.log("doomed", n).await;
    let pid: u32 = log
        .split("pid=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {log}"));
    assert!(alive(pid));
    let r = c.call(Method::DELETE, "/api/v1/jobs/doomed", None).await;
    assert_eq!(r.status(), 204);
    kiln_testkit::wait_for(
        "the deleted job's step to be killed",
        Duration::from_secs(5),
        || async { (!alive(pid)).then_some(()) },
    )
    .await;
    let job_dir = c.build_dir("doomed", n).parent().unwrap().to_owned();
    assert!(!job_dir.exists(), "{} is left behind", job_dir.display());
    let r = c
        .call(Method::GET, "/api/v1/jobs/doomed/builds", None)
        .await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn parameters_and_kiln_variables_reach_the_steps_but_worker_secrets_do_not() {
    let c = Cluster::start().await;
    let _w = c.worker(WorkerOpts::new("w1")).await;
    let mut def = job(&[
        "echo target=$TARGET mode=$MODE job=$KILN_JOB n=$KILN_BUILD_NUMBER env=$GREETING",
        "env | grep -c '^KILN_REDIS\\|^KILN_AUTH' || true",
    ]);
    def["parameters"] =
        json!([{"name": "TARGET", "default": "x"}, {"name": "MODE", "default": "fast"}]);
    def["env"] = json!({"GREETING": "hi"});
    c.apply("params", def).await;
    let n = c
        .trigger_with("params", json!({"parameters": {"TARGET": "y"}}))
        .await;
    c.wait_status("params", n, "success", T).await;
    let log = c.log("params", n).await;
    assert!(
        log.contains("target=y mode=fast job=params n=1 env=hi"),
        "{log}"
    );
    assert!(
        log.contains("\n0\n"),
        "worker settings leaked into the build: {log}"
    );
}

#[tokio::test]
async fn artifacts_matching_the_globs_are_copied_to_storage() {
    let c = Cluster::start().await;
    let _w = c.worker(WorkerOpts::new("w1")).await;
    let mut def = job(&["mkdir -p dist && echo data > dist/app.tar.gz && echo no > other.txt && ln -s /etc/passwd dist/link.tar.gz"]);
    def["artifacts"] = json!(["dist/*.tar.gz"]);
    c.apply("art", def).await;
    let n = c.trigger("art").await;
    c.wait_status("art", n, "success", T).await;
    let dir = c.build_dir("art", n).join("artifacts");
    assert_eq!(
        std::fs::read_to_string(dir.join("dist/app.tar.gz")).unwrap(),
        "data\n"
    );
    assert!(!dir.join("other.txt").exists());
    assert!(
        !dir.join("dist/link.tar.gz").exists(),
        "symlinks are not followed"
    );
}

#[tokio::test]
async fn the_worker_checks_out_the_requested_sha() {
    let c = Cluster::start().await;
    let _w = c.worker(WorkerOpts::new("w1")).await;
    let repo = tempfile::tempdir().unwrap();
    git(repo.path(), &["init", "-q", "-b", "main"]);
    std::fs::write(repo.path().join("version.txt"), "one\n").unwrap();
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "one"]);
    let first = git(repo.path(), &["rev-parse", "HEAD"]);
    std::fs::write(repo.path().join("version.txt"), "two\n").unwrap();
    git(repo.path(), &["commit", "-q", "-am", "two"]);
    let mut def = job(&["echo version=$(cat version.txt) sha=$KILN_GIT_SHA"]);
    def["repository"] = json!({"url": format!("file://{}", repo.path().display()), "ref": "main"});
    c.apply("git", def).await;

    let n = c.trigger_with("git", json!({"sha": first})).await;
    c.wait_status("git", n, "success", T).await;
    assert!(c
        .log("git", n)
        .await
        .contains(&format!("version=one sha={first}")));
    let n = c.trigger("git").await;
    c.wait_status("git", n, "success", T).await;
    assert!(
        c.log("git", n).await.contains("version=two"),
        "the job's ref is the default"
    );
}

#[tokio::test]
async fn a_killed_workers_build_is_recovered_by_another_and_its_orphans_die() {
    let c = Cluster::start().await;
    let marks = c.work.path().join("marks");
    c.apply(
        "crash",
        job(&[&format!(
            "echo start $KILN_ATTEMPT >> {m}; [ $KILN_ATTEMPT = 1 ] && sleep 60 & echo $! > {m}.pid-$KILN_ATTEMPT; echo running; wait; echo end $KILN_ATTEMPT >> {m}",
            m = marks.display()
        )]),
    )
    .await;
    let mut a = c.worker(WorkerOpts::new("a")).await;
    let n = c.trigger("crash").await;
    c.wait_log_contains("crash", n, "running", T).await;
    let orphan: u32 = std::fs::read_to_string(format!("{}.pid-1", marks.display()))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    a.kill();
    // The step's processes die with their worker (they would otherwise write `end 1`).
    // Well before the 60 s sleep would end by itself.
    kiln_testkit::wait_for(
        "attempt 1's processes to die with the worker",
        Duration::from_secs(10),
        || async { (!alive(orphan)).then_some(()) },
    )
    .await;
    let _b = c.worker(WorkerOpts::new("b")).await;
    let b = c.wait_status("crash", n, "success", T).await;
    assert_eq!(b["attempt"], 2);
    assert_eq!(b["node"], "b");
    let m = std::fs::read_to_string(&marks).unwrap();
    assert_eq!(
        m, "start 1\nstart 2\nend 2\n",
        "attempt 1 must die with its worker"
    );
}

#[tokio::test]
async fn under_concurrency_and_crashes_no_build_is_lost_or_run_twice_at_once() {
    let c = Cluster::start().await;
    let marks = c.work.path().join("marks");
    c.apply(
        "many",
        job(&[&format!(
            "echo start $KILN_BUILD_NUMBER $KILN_ATTEMPT >> {m}; sleep 0.3; echo end $KILN_BUILD_NUMBER $KILN_ATTEMPT >> {m}",
            m = marks.display()
        )]),
    )
    .await;
    let mut opts = WorkerOpts::new("a");
    opts.concurrency = 2;
    let mut a = c.worker(opts).await;
    let mut opts = WorkerOpts::new("b");
    opts.concurrency = 2;
    let _b = c.worker(opts).await;
    let mut numbers = Vec::new();
    for _ in 0..16 {
        numbers.push(c.trigger("many").await);
    }
    kiln_testkit::wait_for("a few builds to start", T, || async {
        std::fs::read_to_string(&marks)
            .ok()
            .filter(|m| m.lines().count() >= 6)
            .map(|_| ())
    })
    .await;
    a.kill();
    let mut opts = WorkerOpts::new("a2");
    opts.concurrency = 2;
    let _a2 = c.worker(opts).await;
    for n in &numbers {
        c.wait_status("many", *n, "success", Duration::from_secs(60))
            .await;
    }
    let m = std::fs::read_to_string(&marks).unwrap();
    for n in &numbers {
        let lines: Vec<(String, u32)> = m
            .lines()
            .filter_map(|l| {
                let p: Vec<&str> = l.split(' ').collect();
                (p[1] == n.to_string()).then(|| (p[0].to_owned(), p[2].parse().unwrap()))
            })
            .collect();
        let ends = lines.iter().filter(|(k, _)| k == "end").count();
        assert!(ends >= 1, "build {n} never ended: {lines:?}");
        let mut newest = 0;
        for (kind, attempt) in &lines {
            assert!(
                *attempt >= newest,
                "build {n}: attempt {attempt} ran after attempt {newest} started: {lines:?}"
            );
            if kind == "start" {
                newest = *attempt;
            }
        }
    }
    // Nothing is left half-done: no lease, no in-flight or running entry, an empty queue.
    let pool = c.redis.pool();
    let mut conn = pool.get().await.unwrap();
    for key in [
        "kiln:leases",
        "kiln:lease-owners",
        "kiln:running:default",
        "kiln:queue:default",
        "kiln:inflight:a",
        "kiln:inflight:b",
        "kiln:inflight:a2",
    ] {
        let t: String = deadpool_redis::redis::cmd("TYPE")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(t, "none", "{key} still exists");
    }
}

#[tokio::test]
async fn sigterm_lets_a_running_build_finish() {
    let c = Cluster::start().await;
    let mut w = c.worker(WorkerOpts::new("w1")).await;
    c.apply("graceful", job(&["echo started; sleep 1; echo finished"]))
        .await;
    let n = c.trigger("graceful").await;
    c.wait_log_contains("graceful", n, "started", T).await;
    w.terminate();
    let b = c.wait_status("graceful", n, "success", T).await;
    assert_eq!(b["attempt"], 1);
    assert_eq!(w.wait_exit(T).await, Some(0));
    let nodes: serde_json::Value = c.get_json("/api/v1/nodes").await;
    assert_eq!(nodes["nodes"], json!([]), "a stopped worker deregisters");
}

#[tokio::test]
async fn sigterm_past_the_grace_period_hands_the_build_back() {
    let c = Cluster::start().await;
    let mut opts = WorkerOpts::new("w1");
    opts.grace_secs = 0;
    let mut w = c.worker(opts).await;
    let marks = c.work.path().join("marks");
    c.apply(
        "handback",
        job(&[&format!(
            "echo run $KILN_ATTEMPT >> {}; echo started; [ -e {}.2 ] || sleep 60",
            marks.display(),
            marks.display()
        )]),
    )
    .await;
    let n = c.trigger("handback").await;
    c.wait_log_contains("handback", n, "started", T).await;
    w.terminate();
    assert_eq!(w.wait_exit(T).await, Some(0));
    let b = c.wait_status("handback", n, "queued", T).await;
    assert_eq!(b["attempt"], 1, "a hand-back is not a lost attempt");
    assert!(b["reason"].as_str().unwrap().contains("handed back"));
    std::fs::write(format!("{}.2", marks.display()), "").unwrap();
    let _w2 = c.worker(WorkerOpts::new("w2")).await;
    let b = c.wait_status("handback", n, "success", T).await;
    assert_eq!(b["node"], "w2");
}

#[tokio::test]
async fn a_worker_survives_a_redis_restart_and_carries_on() {
    let mut c = Cluster::start().await;
    let mut w = c.worker(WorkerOpts::new("w1")).await;
    c.apply("x", job(&["echo before"])).await;
    let n = c.trigger("x").await;
    c.wait_status("x", n, "success", T).await;
    c.redis.restart(&[]);
    // The restarted server is empty (not persistent): apply again and build.
    kiln_testkit::wait_for("the api to reach the new Redis", T, || async {
        let r = c
            .call(Method::PUT, "/api/v1/jobs/x", Some(job(&["echo after"])))
            .await;
        r.status().is_success().then_some(())
    })
    .await;
    let n = c.trigger("x").await;
    c.wait_status("x", n, "success", T).await;
    assert!(c.log("x", n).await.contains("after"));
    assert!(w.is_running(), "no crash loop");
}

#[tokio::test]
async fn huge_output_arrives_complete_and_in_order() {
    let c = Cluster::start().await;
    let _w = c.worker(WorkerOpts::new("w1")).await;
    c.apply(
        "big",
        job(&["seq 1 100000", "head -c 5000000 /dev/zero | tr '\\0' a"]),
    )
    .await;
    let n = c.trigger("big").await;
    c.wait_status("big", n, "success", Duration::from_secs(120))
        .await;
    let file = std::fs::read_to_string(c.build_dir("big", n).join("log.jsonl")).unwrap();
    let mut numbers = Vec::new();
    let mut a_bytes = 0usize;
    let mut last_seq = 0u64;
    for l in file.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let seq = v["seq"].as_u64().unwrap();
        assert_eq!(seq, last_seq + 1, "sequence numbers are gapless");
        last_seq = seq;
        if v["stream"] != "stdout" {
            continue;
        }
        let line = v["line"].as_str().unwrap();
        if line.starts_with('a') {
            a_bytes += line.len();
        } else {
            numbers.push(line.parse::<u32>().unwrap());
        }
    }
    assert_eq!(numbers, (1..=100_000).collect::<Vec<_>>());
    assert_eq!(a_bytes, 5_000_000);
}

#[tokio::test]
async fn a_build_on_a_queue_nobody_serves_says_why_it_waits() {
    let c = Cluster::start().await;
    let _w = c.worker(WorkerOpts::new("w1")).await;
    let mut def = job(&["true"]);
    def["queue"] = json!("gpu");
    c.apply("gpu", def).await;
    let n = c.trigger("gpu").await;
    let b = c.build("gpu", n).await;
    assert!(
        b["reason"]
            .as_str()
            .unwrap()
            .contains("no live worker serves queue 'gpu'"),
        "{b}"
    );
    let mut opts = WorkerOpts::new("g1");
    opts.queue = "gpu".into();
    let _g = c.worker(opts).await;
    c.wait_status("gpu", n, "success", T).await;
}

#[tokio::test]
async fn services_reach_redis_through_sentinel() {
    let redis = kiln_testkit::RedisServer::start();
    let sentinel = kiln_testkit::SentinelServer::start(redis.port());
    let c = Cluster::start_with_url(redis, sentinel.url()).await;
    let _w = c.worker(WorkerOpts::new("w1")).await;
    c.apply("via-sentinel", job(&["echo through sentinel; sleep 30"]))
        .await;
    let n = c.trigger("via-sentinel").await;
    c.wait_log_contains("via-sentinel", n, "through sentinel", T)
        .await;
    // Cancelling travels over pub/sub (fred, through the sentinel too).
    let r = c.cancel("via-sentinel", n).await;
    assert_eq!(r.status(), 202);
    c.wait_status("via-sentinel", n, "cancelled", Duration::from_secs(5))
        .await;
}

#[tokio::test]
async fn a_build_whose_workers_keep_dying_ends_lost_with_a_reason() {
    let c = Cluster::start().await;
    let mut def = job(&["echo running; sleep 60"]);
    def["lost_retries"] = json!(0);
    c.apply("doomed", def).await;
    let mut a = c.worker(WorkerOpts::new("a")).await;
    let n = c.trigger("doomed").await;
    c.wait_log_contains("doomed", n, "running", T).await;
    a.kill();
    // Another worker's reaper judges the expired lease: no retry is left.
    let _b = c.worker(WorkerOpts::new("b")).await;
    let b = c.wait_status("doomed", n, "lost", T).await;
    assert_eq!(b["attempt"], 1);
    let reason = b["reason"].as_str().unwrap();
    assert!(
        reason.contains("worker a stopped renewing its lease"),
        "{reason}"
    );
    assert!(b["finished_at"].is_string());
}

#[tokio::test]
async fn a_worker_that_cannot_renew_kills_its_build_and_the_build_runs_again() {
    let mut c = Cluster::start_persistent().await;
    let marks = c.work.path().join("marks");
    c.apply(
        "fenced",
        job(&[&format!(
            "echo start $KILN_ATTEMPT >> {m}; [ $KILN_ATTEMPT = 1 ] && sleep 60 & echo $! > {m}.pid-$KILN_ATTEMPT; echo running; wait",
            m = marks.display()
        )]),
    )
    .await;
    let _w = c.worker(WorkerOpts::new("w1")).await;
    let n = c.trigger("fenced").await;
    c.wait_log_contains("fenced", n, "running", T).await;
    let pid: u32 = std::fs::read_to_string(format!("{}.pid-1", marks.display()))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Redis goes away: the worker cannot renew its 1.5 s lease and must stop the build
    // itself (another worker may be handed it once the lease expires).
    c.redis.stop();
    kiln_testkit::wait_for(
        "the worker to kill its build",
        Duration::from_secs(10),
        || async { (!alive(pid)).then_some(()) },
    )
    .await;
    c.redis.restart(support::PERSISTENT);
    let b = c.wait_status("fenced", n, "success", T).await;
    assert_eq!(
        b["attempt"], 2,
        "the fenced attempt was discarded and the build ran again"
    );
    let m = std::fs::read_to_string(&marks).unwrap();
    assert_eq!(m, "start 1\nstart 2\n");
}

#[tokio::test]
async fn the_worker_removes_folders_of_builds_that_left_retention() {
    let c = Cluster::start().await;
    let mut def = job(&["true"]);
    def["retention"] = json!({"builds": 2});
    c.apply("kept", def).await;
    let _w = c.worker(WorkerOpts::new("w1")).await;
    for n in 1..=2 {
        assert_eq!(c.trigger("kept").await, n);
        c.wait_status("kept", n, "success", T).await;
    }
    // Build 1 leaves retention at the third trigger, trimmed by the api, which does not
    // touch the storage: the worker that finishes a build of the job clears its folder away.
    let stale = c.build_dir("kept", 1);
    assert!(stale.exists());
    assert_eq!(c.trigger("kept").await, 3);
    c.wait_status("kept", 3, "success", T).await;
    // The worker prunes right after recording the result.
    kiln_testkit::wait_for("the worker to prune what retention dropped", T, || async {
        (!stale.exists()).then_some(())
    })
    .await;
    assert!(c.build_dir("kept", 2).exists() && c.build_dir("kept", 3).exists());
}

/// A build overtaken by as many newer ones as its job keeps is still running: retention must
/// not discard it (its result would be lost, and whatever waits on it, a commit status or
/// the indexer, would wait forever).
#[tokio::test]
async fn a_running_build_outlives_its_retention_and_its_result_is_recorded() {
    let c = Cluster::start().await;
    let release = c.storage.path().join("release-build-1");
    let mut def = job(&[&format!(
        "if [ $KILN_BUILD_NUMBER = 1 ]; then until [ -e {} ]; do sleep 0.05; done; fi",
        release.display()
    )]);
    def["retention"] = json!({"builds": 1});
    c.apply("long", def).await;
    let mut opts = WorkerOpts::new("w1");
    opts.concurrency = 2;
    let _w = c.worker(opts).await;
    assert_eq!(c.trigger("long").await, 1);
    c.wait_status("long", 1, "running", T).await;
    for n in 2..=3 {
        assert_eq!(c.trigger("long").await, n);
        c.wait_status("long", n, "success", T).await;
    }
    std::fs::write(&release, "").unwrap();
    c.wait_status("long", 1, "success", T).await;
    // Now that it has ended, the next trigger trims it and the builds it held back.
    assert_eq!(c.trigger("long").await, 4);
    c.wait_status("long", 4, "success", T).await;
    let r = c.call(Method::GET, "/api/v1/jobs/long/builds", None).await;
    let page: serde_json::Value = r.json().await.unwrap();
    let numbers: Vec<u64> = page["builds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [4], "{page}");
}

#[tokio::test]
async fn a_reused_build_folder_holds_only_its_new_builds_files() {
    use std::os::unix::fs::MetadataExt;
    let c = Cluster::start().await;
    let mut def =
        job(&["echo this is build $KILN_BUILD_NUMBER; echo x > out-$KILN_BUILD_NUMBER.txt"]);
    def["retention"] = json!({"builds": 2});
    def["artifacts"] = json!(["out-*.txt"]);
    c.apply("reuse", def).await;
    let _w = c.worker(WorkerOpts::new("w1")).await;
    let mut inodes = vec![0];
    for n in 1..=6 {
        assert_eq!(c.trigger("reuse").await, n);
        c.wait_status("reuse", n, "success", T).await;
        inodes.push(std::fs::metadata(c.build_dir("reuse", n)).unwrap().ino());
    }
    // Build 1 left retention at the third trigger, build 3 pruned it, build 4 reused it (the
    // worker has one slot, freed only once build 3's folders were cleared away).
    assert_eq!(
        inodes[4], inodes[1],
        "the folder of a build that left retention is reused, not removed and made again"
    );
    let mut left: Vec<String> = std::fs::read_dir(c.storage.path().join("jobs/reuse"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["5", "6"], "only the kept builds have folders");
    let log = c.log("reuse", 6).await;
    assert!(log.contains("this is build 6"), "{log}");
    for old in 1..=5 {
        assert!(!log.contains(&format!("this is build {old}")), "{log}");
    }
    let mut files: Vec<String> = Vec::new();
    for dir in [
        c.build_dir("reuse", 6),
        c.build_dir("reuse", 6).join("artifacts"),
    ] {
        for e in std::fs::read_dir(dir).unwrap() {
            files.push(e.unwrap().file_name().to_string_lossy().into_owned());
        }
    }
    files.sort();
    assert_eq!(files, ["artifacts", "log.jsonl", "out-6.txt"]);
}

/// A job whose builds each note that they started, then wait until the test opens their
/// gate (a file named after the build): the test decides when each one ends.
fn gated_job(gates: &std::path::Path) -> serde_json::Value {
    std::fs::create_dir_all(gates).unwrap();
    job(&[&format!(
        "echo $KILN_BUILD_NUMBER >> {g}/started; while [ ! -e {g}/go-$KILN_BUILD_NUMBER ]; do sleep 0.02; done",
        g = gates.display()
    )])
}

fn open_gate(gates: &std::path::Path, n: u64) {
    std::fs::write(gates.join(format!("go-{n}")), "").unwrap();
}

/// The builds that have started, in the order they started.
fn started(gates: &std::path::Path) -> Vec<u64> {
    std::fs::read_to_string(gates.join("started"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

async fn queue_depth(c: &Cluster, queue: &str) -> u64 {
    let v: serde_json::Value = c.get_json("/api/v1/queue").await;
    v["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["stats"]["queue"] == queue)
        .map_or(0, |q| q["stats"]["depth"].as_u64().unwrap())
}

async fn redis_type(c: &Cluster, key: &str) -> String {
    let mut conn = c.redis.pool().get().await.unwrap();
    deadpool_redis::redis::cmd("TYPE")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_jobs_concurrency_limit_holds_its_other_builds_back_in_trigger_order() {
    let c = Cluster::start().await;
    let gates = c.work.path().join("gates");
    let mut def = gated_job(&gates);
    def["concurrency"] = json!(1);
    c.apply("deploy", def.clone()).await;
    let mut opts = WorkerOpts::new("w");
    opts.concurrency = 4;
    let _w = c.worker(opts).await;

    let one = c.trigger("deploy").await;
    c.wait_status("deploy", one, "running", T).await;
    // The trigger's answer says at once why the second build waits.
    let r = c
        .call(Method::POST, "/api/v1/jobs/deploy/builds", Some(json!({})))
        .await;
    assert_eq!(r.status(), 201);
    let two: serde_json::Value = r.json().await.unwrap();
    assert_eq!(two["status"], "queued");
    let reason = two["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("job 'deploy' runs at most 1 build at once"),
        "{two}"
    );
    let two = two["number"].as_u64().unwrap();
    let three = c.trigger("deploy").await;
    // Waiting builds are in no queue: the worker's three free slots cannot take them, and
    // they are no work for an autoscaler.
    assert_eq!(queue_depth(&c, "default").await, 0);
    for (n, ahead) in [(two, 0), (three, 1)] {
        let b = c.build("deploy", n).await;
        assert_eq!(b["status"], "queued");
        let reason = b["reason"].as_str().unwrap();
        assert!(
            reason.contains(&format!("{ahead} of its builds wait before this one")),
            "#{n}: {reason}"
        );
    }
    // A waiting build cancelled ends at once and never runs.
    let r = c.cancel("deploy", three).await;
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["outcome"], "cancelled", "{v}");
    let four = c.trigger("deploy").await;

    // The running build ends: the oldest waiting one takes its slot, the next still waits.
    open_gate(&gates, one);
    c.wait_status("deploy", one, "success", T).await;
    c.wait_status("deploy", two, "running", T).await;
    assert_eq!(c.build("deploy", four).await["status"], "queued");

    // A higher limit admits the waiting build while the running one goes on.
    def["concurrency"] = json!(2);
    c.apply("deploy", def.clone()).await;
    c.wait_status("deploy", four, "running", T).await;
    let five = c.trigger("deploy").await;
    let six = c.trigger("deploy").await;
    assert!(c.build("deploy", five).await["reason"]
        .as_str()
        .unwrap()
        .contains("runs at most 2 builds at once"));
    // No limit: every waiting build goes at once.
    def.as_object_mut().unwrap().remove("concurrency");
    c.apply("deploy", def).await;
    c.wait_status("deploy", five, "running", T).await;
    c.wait_status("deploy", six, "running", T).await;
    assert_eq!(c.build("deploy", two).await["status"], "running");

    for n in [two, four, five, six] {
        open_gate(&gates, n);
    }
    for n in [two, four, five, six] {
        c.wait_status("deploy", n, "success", T).await;
    }
    assert_eq!(c.build("deploy", three).await["status"], "cancelled");
    let order = started(&gates);
    assert_eq!(order[..3], [one, two, four], "{order:?}");
    assert!(!order.contains(&three), "{order:?}");
    for key in ["kiln:job-slots:deploy", "kiln:job-waiting:deploy"] {
        assert_eq!(redis_type(&c, key).await, "none", "{key} still exists");
    }
}

#[tokio::test]
async fn a_limit_set_while_builds_run_counts_them() {
    let c = Cluster::start().await;
    let gates = c.work.path().join("gates");
    let mut def = gated_job(&gates);
    c.apply("serial", def.clone()).await;
    let mut opts = WorkerOpts::new("w");
    opts.concurrency = 4;
    let _w = c.worker(opts).await;
    let one = c.trigger("serial").await;
    let two = c.trigger("serial").await;
    c.wait_status("serial", one, "running", T).await;
    c.wait_status("serial", two, "running", T).await;

    def["concurrency"] = json!(1);
    c.apply("serial", def).await;
    let three = c.trigger("serial").await;
    open_gate(&gates, one);
    c.wait_status("serial", one, "success", T).await;
    // Build two still holds the one slot.
    let b = c.build("serial", three).await;
    assert_eq!(b["status"], "queued", "{b}");
    assert!(b["reason"].as_str().unwrap().contains("waiting for a slot"));
    open_gate(&gates, two);
    c.wait_status("serial", three, "running", T).await;
    open_gate(&gates, three);
    c.wait_status("serial", three, "success", T).await;
}

#[tokio::test]
async fn a_build_lost_with_its_worker_passes_its_slot_on() {
    let c = Cluster::start().await;
    let mut def = job(&["[ $KILN_BUILD_NUMBER = 1 ] && { echo running; sleep 60; }; echo done"]);
    def["concurrency"] = json!(1);
    def["lost_retries"] = json!(0);
    c.apply("deploy", def).await;
    let mut a = c.worker(WorkerOpts::new("a")).await;
    let one = c.trigger("deploy").await;
    c.wait_log_contains("deploy", one, "running", T).await;
    let two = c.trigger("deploy").await;
    a.kill();
    // Another worker's reaper ends the first build as lost; the second then runs.
    let _b = c.worker(WorkerOpts::new("b")).await;
    c.wait_status("deploy", one, "lost", T).await;
    c.wait_status("deploy", two, "success", T).await;
    assert_eq!(redis_type(&c, "kiln:job-waiting:deploy").await, "none");
}

#[tokio::test]
async fn deleting_a_job_with_waiting_builds_leaves_no_slot_keys() {
    let c = Cluster::start().await;
    let mut def = job(&["sleep 60"]);
    def["concurrency"] = json!(1);
    c.apply("deploy", def).await;
    let _w = c.worker(WorkerOpts::new("w")).await;
    let one = c.trigger("deploy").await;
    c.wait_status("deploy", one, "running", T).await;
    c.trigger("deploy").await;
    assert_eq!(redis_type(&c, "kiln:job-waiting:deploy").await, "list");
    let r = c.call(Method::DELETE, "/api/v1/jobs/deploy", None).await;
    assert!(r.status().is_success());
    for key in ["kiln:job-slots:deploy", "kiln:job-waiting:deploy"] {
        assert_eq!(redis_type(&c, key).await, "none", "{key} still exists");
    }
}

#[tokio::test]
async fn secrets_reach_the_steps_and_never_the_log_the_watchers_or_the_api() {
    use futures::StreamExt;
    use kiln_model::{keys, BuildRef, OutputMessage};
    let c = Cluster::start().await;
    let token = "tok-7f3a9c-very-secret";
    let key_line = "MIIEowIBAAKCAQEA-line-two";
    let pem = format!("-----BEGIN KEY-----\n{key_line}\n-----END KEY-----");
    for (name, value) in [("DEPLOY_TOKEN", token), ("SSH_KEY", pem.as_str())] {
        let r = c
            .call(
                Method::PUT,
                &format!("/api/v1/secrets/{name}"),
                Some(json!({ "value": value })),
            )
            .await;
        assert_eq!(r.status(), 201);
        assert!(!r.text().await.unwrap().contains(value));
    }
    let mut def = job(&[
        "echo token=$DEPLOY_TOKEN; printf '%s\\n' \"$SSH_KEY\" >&2",
        &format!(
            "[ ${{#DEPLOY_TOKEN}} = {} ] && echo the step saw the value",
            token.len()
        ),
    ]);
    def["secrets"] = json!(["DEPLOY_TOKEN", "SSH_KEY"]);
    c.apply("deploy", def).await;
    let client = deadpool_redis::redis::Client::open(c.redis_url()).unwrap();
    let mut sub = client.get_async_pubsub().await.unwrap();
    sub.subscribe(keys::output_channel(
        &BuildRef::from_key("job_deploy_1").unwrap(),
    ))
    .await
    .unwrap();
    let _w = c.worker(WorkerOpts::new("w")).await;
    assert_eq!(c.trigger("deploy").await, 1);
    let mut messages = sub.on_message();
    let mut live = Vec::new();
    loop {
        let msg = tokio::time::timeout(T, messages.next())
            .await
            .expect("the build's end within the timeout")
            .expect("the subscription stays open");
        let payload: String = msg.get_payload().unwrap();
        match serde_json::from_str(&payload).unwrap() {
            OutputMessage::Lines { lines } => live.extend(lines.into_iter().map(|l| l.line)),
            OutputMessage::End { .. } => break,
        }
    }
    let b = c.wait_status("deploy", 1, "success", T).await;

    let log = c.log("deploy", 1).await;
    let stored = std::fs::read_to_string(c.build_dir("deploy", 1).join("log.jsonl")).unwrap();
    let live = live.join("\n");
    for (what, text) in [("log", &log), ("log file", &stored), ("live output", &live)] {
        assert!(text.contains("token=***"), "{what}: {text}");
        assert!(text.contains("the step saw the value"), "{what}: {text}");
        assert!(
            !text.contains(token) && !text.contains(key_line),
            "{what} shows a secret: {text}"
        );
    }
    let shown = [
        b.to_string(),
        c.call(Method::GET, "/api/v1/jobs/deploy", None)
            .await
            .text()
            .await
            .unwrap(),
        c.call(Method::GET, "/api/v1/secrets", None)
            .await
            .text()
            .await
            .unwrap(),
    ];
    for s in &shown {
        assert!(!s.contains(token) && !s.contains(key_line), "{s}");
    }
    assert!(shown[2].contains("DEPLOY_TOKEN") && shown[2].contains("SSH_KEY"));
    let raw = c
        .call(Method::GET, "/api/v1/redis/kiln:secrets", None)
        .await;
    assert_eq!(raw.status(), 403);

    // A job naming a secret nobody set fails before its first step runs.
    let marker = c.work.path().join("ran");
    let mut def = job(&[&format!("touch {}", marker.display())]);
    def["secrets"] = json!(["NOT_SET_ANYWHERE"]);
    c.apply("unset", def).await;
    let n = c.trigger("unset").await;
    let b = c.wait_status("unset", n, "error", T).await;
    assert!(
        b["reason"]
            .as_str()
            .unwrap()
            .contains("secret 'NOT_SET_ANYWHERE' is not defined"),
        "{b}"
    );
    assert!(!marker.exists(), "no step ran");
}

#[tokio::test]
async fn a_step_allowed_to_fail_is_recorded_as_failed_and_the_build_goes_on() {
    let c = Cluster::start().await;
    c.apply(
        "lint",
        json!({"steps": [
            {"name": "lint", "run": "echo linting; exit 3", "allow_failure": true},
            {"name": "build", "run": "echo built"},
        ]}),
    )
    .await;
    c.apply(
        "slow-lint",
        json!({"timeout_secs": 1, "steps": [
            {"name": "lint", "run": "sleep 30", "allow_failure": true},
            {"name": "build", "run": "echo built"},
        ]}),
    )
    .await;
    let _w = c.worker(WorkerOpts::new("w")).await;
    let n = c.trigger("lint").await;
    let b = c.wait_status("lint", n, "success", T).await;
    assert_eq!(b["steps"][0]["status"], "failure", "{b}");
    assert_eq!(b["steps"][0]["exit_code"], 3, "{b}");
    assert_eq!(b["steps"][1]["status"], "success", "{b}");
    assert_eq!(
        b["exit_code"], 0,
        "the build's code is its last counted step's"
    );
    let log = c.log("lint", n).await;
    assert!(log.contains("built"), "{log}");
    assert!(log.contains("lint may fail (allow_failure)"), "{log}");
    // Only a failing command is allowed: a step that runs out of time still ends the build.
    let n = c.trigger("slow-lint").await;
    let b = c.wait_status("slow-lint", n, "timed_out", T).await;
    assert_eq!(b["steps"].as_array().unwrap().len(), 1, "{b}");
}

#[tokio::test]
async fn steps_that_run_on_failure_or_always_report_and_clean_up() {
    let c = Cluster::start().await;
    c.apply(
        "app",
        json!({"parameters": [{"name": "FAIL", "default": "0"}, {"name": "CLEAN", "default": "ok"}],
            "steps": [
            {"name": "build", "run": "echo built"},
            {"name": "test", "run": "echo testing; [ \"$FAIL\" != 1 ] || exit 3"},
            {"name": "package", "run": "echo packaged"},
            {"name": "report", "run": "echo reported", "when": "failure"},
            {"name": "cleanup", "run": "echo cleaned; [ \"$CLEAN\" = ok ] || exit 4", "when": "always"},
        ]}),
    )
    .await;
    let _w = c.worker(WorkerOpts::new("w")).await;
    let names = |b: &serde_json::Value| -> Vec<(String, String)> {
        b["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let f = |k: &str| s[k].as_str().unwrap().to_owned();
                (f("name"), f("status"))
            })
            .collect()
    };
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };

    // A failing step: the steps after it that run only while the build succeeds are
    // skipped, the failure and always steps run, and the build reports the first failure.
    let n = c
        .trigger_with("app", json!({"parameters": {"FAIL": "1"}}))
        .await;
    let b = c.wait_status("app", n, "failure", T).await;
    assert_eq!(
        names(&b),
        pairs(&[
            ("build", "success"),
            ("test", "failure"),
            ("report", "success"),
            ("cleanup", "success")
        ])
    );
    assert_eq!(b["exit_code"], 3, "{b}");
    assert_eq!(b["reason"], "step 'test' failed with exit code 3", "{b}");
    let log = c.log("app", n).await;
    assert!(log.contains("reported") && log.contains("cleaned"), "{log}");
    assert!(!log.contains("packaged"), "{log}");

    // A succeeding build skips the failure step; an always step runs last.
    let n = c.trigger("app").await;
    let b = c.wait_status("app", n, "success", T).await;
    assert_eq!(
        names(&b),
        pairs(&[
            ("build", "success"),
            ("test", "success"),
            ("package", "success"),
            ("cleanup", "success")
        ])
    );
    assert!(!c.log("app", n).await.contains("reported"));

    // An always step that fails fails a build that was succeeding.
    let n = c
        .trigger_with("app", json!({"parameters": {"CLEAN": "broken"}}))
        .await;
    let b = c.wait_status("app", n, "failure", T).await;
    assert_eq!(b["reason"], "step 'cleanup' failed with exit code 4", "{b}");

    // A step that only runs after a failure cannot come first.
    let r = c
        .call(
            Method::PUT,
            "/api/v1/jobs/odd",
            Some(json!({"steps": [{"name": "x", "run": "true", "when": "failure"}]})),
        )
        .await;
    assert_eq!(r.status(), 400);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["error"]["field"], "steps[0].when", "{e}");
}

#[tokio::test]
async fn a_flaky_step_runs_again_up_to_its_retries() {
    let c = Cluster::start().await;
    let counts = c.work.path().join("counts");
    std::fs::create_dir_all(&counts).unwrap();
    // The step fails until its third run in the build.
    let flaky = format!(
        "f={d}/$KILN_JOB-$KILN_BUILD_NUMBER; n=$(( $(cat $f 2>/dev/null || echo 0) + 1 )); echo $n > $f; echo run $n; [ $n -ge 3 ] || exit 7",
        d = counts.display()
    );
    c.apply(
        "enough",
        json!({"steps": [{"name": "test", "run": flaky, "retries": 2}, {"name": "after", "run": "echo after"}]}),
    )
    .await;
    c.apply(
        "too-few",
        json!({"steps": [{"name": "test", "run": flaky, "retries": 1}, {"name": "after", "run": "echo after"}]}),
    )
    .await;
    let _w = c.worker(WorkerOpts::new("w")).await;

    let n = c.trigger("enough").await;
    let b = c.wait_status("enough", n, "success", T).await;
    assert_eq!(b["steps"][0]["attempts"], 3, "{b}");
    assert_eq!(b["steps"][0]["status"], "success", "{b}");
    assert_eq!(
        b["steps"][1].get("attempts"),
        None,
        "one run is not counted: {b}"
    );
    let log = c.log("enough", n).await;
    assert!(
        log.contains("test failed with exit code 7; running it again (attempt 3 of 3)"),
        "{log}"
    );
    assert!(log.contains("run 3") && log.contains("after"), "{log}");

    let n = c.trigger("too-few").await;
    let b = c.wait_status("too-few", n, "failure", T).await;
    assert_eq!(b["steps"][0]["attempts"], 2, "{b}");
    assert_eq!(b["exit_code"], 7, "{b}");
    assert_eq!(b["steps"].as_array().unwrap().len(), 1, "{b}");
}

#[tokio::test]
async fn a_build_that_cannot_start_within_its_queue_timeout_is_cancelled_saying_why() {
    let c = Cluster::start().await;
    // Nobody serves the queue.
    let mut gpu = job(&["true"]);
    gpu["queue"] = json!("gpu");
    gpu["queue_timeout_secs"] = json!(1);
    c.apply("train", gpu).await;
    // One build at a time: the second waits for the first's slot.
    let gates = c.work.path().join("gates");
    let mut deploy = gated_job(&gates);
    deploy["concurrency"] = json!(1);
    deploy["queue_timeout_secs"] = json!(1);
    c.apply("deploy", deploy).await;
    let _w = c.worker(WorkerOpts::new("w")).await;

    let t = c.trigger("train").await;
    let one = c.trigger("deploy").await;
    c.wait_status("deploy", one, "running", T).await;
    let two = c.trigger("deploy").await;

    let b = c.wait_status("train", t, "cancelled", T).await;
    let reason = b["reason"].as_str().unwrap();
    assert!(
        reason.contains("not started within its job's queue timeout 1 s")
            && reason.contains("no live worker serves queue 'gpu'"),
        "{reason}"
    );
    assert_eq!(queue_depth(&c, "gpu").await, 0);
    let b = c.wait_status("deploy", two, "cancelled", T).await;
    assert!(
        b["reason"].as_str().unwrap().contains("queue timeout"),
        "{b}"
    );

    // The build that started in time runs on past its queue timeout.
    let pool = c.redis.pool();
    kiln_testkit::wait_for("every queue deadline handled", T, || async {
        let mut conn = pool.get().await.ok()?;
        let n: u64 = deadpool_redis::redis::cmd("ZCARD")
            .arg("kiln:queue-deadlines")
            .query_async(&mut conn)
            .await
            .ok()?;
        (n == 0).then_some(())
    })
    .await;
    assert_eq!(c.build("deploy", one).await["status"], "running");
    open_gate(&gates, one);
    c.wait_status("deploy", one, "success", T).await;
    assert_eq!(started(&gates), [one]);
    for key in ["kiln:job-slots:deploy", "kiln:job-waiting:deploy"] {
        assert_eq!(redis_type(&c, key).await, "none", "{key} still exists");
    }
}

#[tokio::test]
async fn a_log_past_the_workers_limit_is_cut_and_the_build_goes_on() {
    let c = Cluster::start().await;
    const LIMIT: u64 = 1 << 20;
    c.apply(
        "chatty",
        job(&[
            "yes 'a line of output that repeats' | head -n 100000",
            "echo second step ran",
        ]),
    )
    .await;
    let mut opts = WorkerOpts::new("w");
    opts.max_log_bytes = Some(LIMIT);
    let _w = c.worker(opts).await;
    let n = c.trigger("chatty").await;
    let b = c.wait_status("chatty", n, "success", T).await;
    assert_eq!(b["steps"].as_array().unwrap().len(), 2, "{b}");
    let file = c.build_dir("chatty", n).join("log.jsonl");
    let size = std::fs::metadata(&file).unwrap().len();
    assert!(size <= LIMIT + 1024, "the log holds {size} bytes");
    let log = std::fs::read_to_string(&file).unwrap();
    let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert_eq!(last["stream"], "system", "{last}");
    assert!(
        last["line"]
            .as_str()
            .unwrap()
            .starts_with("the log reached its limit of 1048576 bytes (worker.max_log_bytes)"),
        "{last}"
    );
    assert!(!log.contains("second step ran"));
}

#[tokio::test]
async fn a_step_past_its_own_timeout_ends_the_build_long_before_the_builds() {
    let c = Cluster::start().await;
    c.apply(
        "hangs",
        json!({"timeout_secs": 3600, "steps": [
            {"name": "quick", "run": "echo quick", "timeout_secs": 60},
            {"name": "hang", "run": "echo hanging; sleep 300", "timeout_secs": 1},
            {"name": "cleanup", "run": "echo cleaned", "when": "always"},
        ]}),
    )
    .await;
    let _w = c.worker(WorkerOpts::new("w")).await;
    let n = c.trigger("hangs").await;
    let b = c.wait_status("hangs", n, "timed_out", T).await;
    assert_eq!(
        b["reason"],
        "step 'hang' timed out after its timeout_secs of 1 s; its processes were killed",
        "{b}"
    );
    let steps = b["steps"].as_array().unwrap();
    assert_eq!(
        steps.len(),
        2,
        "a timed-out step ends the build at once: {b}"
    );
    assert_eq!(steps[1]["status"], "timed_out", "{b}");
    assert!(steps[1]["duration_ms"].as_u64().unwrap() < 10_000, "{b}");
}

#[tokio::test]
async fn jobs_of_a_concurrency_group_share_its_slots_in_trigger_order() {
    let c = Cluster::start().await;
    let (api_gates, web_gates) = (c.work.path().join("api"), c.work.path().join("web"));
    for (name, gates) in [("deploy-api", &api_gates), ("deploy-web", &web_gates)] {
        let mut def = gated_job(gates);
        def["concurrency"] = json!(1);
        def["concurrency_group"] = json!("prod");
        c.apply(name, def).await;
    }
    let mut opts = WorkerOpts::new("w");
    opts.concurrency = 4;
    let _w = c.worker(opts).await;

    let api1 = c.trigger("deploy-api").await;
    c.wait_status("deploy-api", api1, "running", T).await;
    let web1 = c.trigger("deploy-web").await;
    let api2 = c.trigger("deploy-api").await;
    let b = c.build("deploy-web", web1).await;
    let reason = b["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("the jobs of group 'prod' run at most 1 build at once")
            && reason.contains("0 of the group's builds wait before this one"),
        "{b}"
    );
    assert!(c.build("deploy-api", api2).await["reason"]
        .as_str()
        .unwrap()
        .contains("1 of the group's builds wait before this one"));
    assert_eq!(queue_depth(&c, "default").await, 0);

    // The slot passes to the other job's build, which was triggered first.
    open_gate(&api_gates, api1);
    c.wait_status("deploy-api", api1, "success", T).await;
    c.wait_status("deploy-web", web1, "running", T).await;
    assert_eq!(c.build("deploy-api", api2).await["status"], "queued");
    let r = c.cancel("deploy-api", api2).await;
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["outcome"], "cancelled", "{v}");
    let api3 = c.trigger("deploy-api").await;

    // Deleting a job frees the slots its builds held in the group.
    let r = c
        .call(Method::DELETE, "/api/v1/jobs/deploy-web", None)
        .await;
    assert_eq!(r.status(), 204);
    c.wait_status("deploy-api", api3, "running", T).await;
    open_gate(&api_gates, api3);
    c.wait_status("deploy-api", api3, "success", T).await;
    assert_eq!(started(&api_gates), [api1, api3]);
    for key in ["kiln:group-slots:prod", "kiln:group-waiting:prod"] {
        assert_eq!(redis_type(&c, key).await, "none", "{key} still exists");
    }
}

/// A build frees the slot of the group it was triggered in, even after its job moved to
/// another group: no slot is stranded, and the new group counts only new builds.
#[tokio::test]
async fn a_job_that_changes_group_frees_its_running_builds_slot_in_the_old_one() {
    let c = Cluster::start().await;
    let (a_gates, b_gates) = (c.work.path().join("a"), c.work.path().join("b"));
    let grouped = |gates: &std::path::Path, group: &str| {
        let mut def = gated_job(gates);
        def["concurrency"] = json!(1);
        def["concurrency_group"] = json!(group);
        def
    };
    c.apply("a", grouped(&a_gates, "one")).await;
    c.apply("b", grouped(&b_gates, "one")).await;
    let mut opts = WorkerOpts::new("w");
    opts.concurrency = 4;
    let _w = c.worker(opts).await;

    let a1 = c.trigger("a").await;
    c.wait_status("a", a1, "running", T).await;
    c.apply("a", grouped(&a_gates, "two")).await;
    let b1 = c.trigger("b").await;
    let a2 = c.trigger("a").await;
    // a's new build takes group two's free slot; b's waits for the one a's first build
    // still holds in group one.
    c.wait_status("a", a2, "running", T).await;
    assert_eq!(c.build("b", b1).await["status"], "queued");
    open_gate(&a_gates, a1);
    c.wait_status("a", a1, "success", T).await;
    c.wait_status("b", b1, "running", T).await;
    open_gate(&a_gates, a2);
    open_gate(&b_gates, b1);
    c.wait_status("a", a2, "success", T).await;
    c.wait_status("b", b1, "success", T).await;
    for key in [
        "kiln:group-slots:one",
        "kiln:group-waiting:one",
        "kiln:group-slots:two",
        "kiln:group-waiting:two",
        "kiln:job-slots:a",
    ] {
        assert_eq!(redis_type(&c, key).await, "none", "{key} still exists");
    }
}

#[tokio::test]
async fn a_build_triggered_next_runs_before_those_already_waiting() {
    let c = Cluster::start().await;
    // Queued while no worker runs: the hotfix goes first once one starts.
    let order = c.work.path().join("order");
    c.apply(
        "app",
        job(&[&format!("echo $KILN_BUILD_NUMBER >> {}", order.display())]),
    )
    .await;
    for _ in 0..3 {
        c.trigger("app").await;
    }
    let hotfix = c.trigger_with("app", json!({"next": true})).await;
    // Waiting for a concurrency slot: the hotfix waits at the head of the line.
    let gates = c.work.path().join("gates");
    let mut serial = gated_job(&gates);
    serial["concurrency"] = json!(1);
    c.apply("serial", serial).await;
    let _w = c.worker(WorkerOpts::new("w")).await;
    for n in 1..=4 {
        c.wait_status("app", n, "success", T).await;
    }
    let ran: Vec<u64> = std::fs::read_to_string(&order)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(ran, [hotfix, 1, 2, 3]);

    let one = c.trigger("serial").await;
    c.wait_status("serial", one, "running", T).await;
    let (two, three) = (c.trigger("serial").await, c.trigger("serial").await);
    let fix = c.trigger_with("serial", json!({"next": true})).await;
    for n in [one, fix, two, three] {
        c.wait_status("serial", n, "running", T).await;
        open_gate(&gates, n);
        c.wait_status("serial", n, "success", T).await;
    }
    assert_eq!(started(&gates), [one, fix, two, three]);
}

#[tokio::test]
async fn secrets_are_sealed_at_rest_when_the_api_and_the_workers_share_a_key() {
    const KEY: &str = "8f2d4c6e0a1b3c5d7e9f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f";
    const VALUE: &str = "s3cret-value-42";
    let mut c = Cluster::start().await;
    c.restart_api_with(&[("KILN_SECRETS__KEY", KEY.to_owned())])
        .await;
    let r = c
        .call(
            Method::PUT,
            "/api/v1/secrets/DEPLOY_TOKEN",
            Some(json!({ "value": VALUE })),
        )
        .await;
    assert_eq!(r.status(), 201);
    // What Redis holds (a dump, a replica, MONITOR) does not give the value away.
    let mut conn = c.redis.pool().get().await.unwrap();
    let stored: String = deadpool_redis::redis::cmd("HGET")
        .arg("kiln:secrets")
        .arg("DEPLOY_TOKEN")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        !stored.contains(VALUE) && stored.contains("\"sealed\""),
        "{stored}"
    );

    let mut def = job(&[&format!(
        "[ \"$DEPLOY_TOKEN\" = {VALUE} ] && echo token=$DEPLOY_TOKEN"
    )]);
    def["secrets"] = json!(["DEPLOY_TOKEN"]);
    c.apply("deploy", def).await;
    let mut opts = WorkerOpts::new("keyed");
    opts.env.push(("KILN_SECRETS__KEY", KEY.to_owned()));
    let mut keyed = c.worker(opts).await;
    let n = c.trigger("deploy").await;
    c.wait_status("deploy", n, "success", T).await;
    assert!(c.log("deploy", n).await.contains("token=***"));
    keyed.kill();

    // A worker without the key cannot open it, and says so.
    let _plain = c.worker(WorkerOpts::new("plain")).await;
    let n = c.trigger("deploy").await;
    let b = c.wait_status("deploy", n, "error", T).await;
    let reason = b["reason"].as_str().unwrap();
    assert!(
        reason.contains("secret 'DEPLOY_TOKEN' is sealed") && reason.contains("secrets.key"),
        "{reason}"
    );
}

#[tokio::test]
async fn builds_older_than_the_jobs_retention_days_go_at_its_next_trigger() {
    let c = Cluster::start().await;
    let mut def = job(&["true"]);
    def["retention"] = json!({"builds": 100, "days": 1});
    c.apply("aged", def).await;
    let _w = c.worker(WorkerOpts::new("w")).await;
    let one = c.trigger("aged").await;
    c.wait_status("aged", one, "success", T).await;
    // As if build 1 had ended two days ago.
    let mut conn = c.redis.pool().get().await.unwrap();
    let key = format!("job_aged_{one}");
    let raw: String = deadpool_redis::redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let two_days_ago = chrono::Utc::now() - chrono::Duration::days(2);
    doc["finished_at"] = json!(two_days_ago);
    let _: () = deadpool_redis::redis::cmd("SET")
        .arg(&key)
        .arg(doc.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();

    let two = c.trigger("aged").await;
    c.wait_status("aged", two, "success", T).await;
    let r = c
        .call(
            Method::GET,
            &format!("/api/v1/jobs/aged/builds/{one}"),
            None,
        )
        .await;
    assert_eq!(
        r.status(),
        404,
        "build {one} is past the job's retention.days"
    );
    let page = c.get_json("/api/v1/jobs/aged/builds").await;
    assert_eq!(page["total"], 1, "{page}");
    // Its folder goes too, as for builds past the count.
    let stale = c.build_dir("aged", one);
    kiln_testkit::wait_for("the worker to prune the aged build's folder", T, || async {
        (!stale.exists()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_folders_secrets_go_first_to_the_jobs_inside_it() {
    let c = Cluster::start().await;
    for (name, parent) in [("team", None), ("backend", Some("team"))] {
        let r = c
            .call(
                Method::POST,
                "/api/v1/folders",
                Some(json!({"name": name, "parent": parent})),
            )
            .await;
        assert_eq!(r.status(), 201);
    }
    for (path, value) in [
        ("/api/v1/secrets/TOKEN", "global-token-1"),
        ("/api/v1/secrets/SHARED", "shared-value-1"),
        ("/api/v1/folders/team/secrets/TOKEN", "team-token-22"),
    ] {
        let r = c
            .call(Method::PUT, path, Some(json!({ "value": value })))
            .await;
        assert_eq!(r.status(), 201, "{path}");
    }
    let listed = c.get_json("/api/v1/folders/team/secrets").await;
    assert_eq!(listed["secrets"][0]["name"], "TOKEN");
    assert!(!listed.to_string().contains("team-token-22"));

    // Inside backend (inside team): team's TOKEN before the global one, SHARED from the
    // global ones; at the root: the global TOKEN.
    let mut inner = job(&[
        "[ \"$TOKEN\" = team-token-22 ] && [ \"$SHARED\" = shared-value-1 ] && echo from the folder",
    ]);
    inner["folder"] = json!("backend");
    inner["secrets"] = json!(["TOKEN", "SHARED"]);
    c.apply("inner", inner).await;
    let mut outer = job(&["[ \"$TOKEN\" = global-token-1 ] && echo the global one"]);
    outer["secrets"] = json!(["TOKEN"]);
    c.apply("outer", outer).await;
    let _w = c.worker(WorkerOpts::new("w")).await;
    for (job, says) in [("inner", "from the folder"), ("outer", "the global one")] {
        let n = c.trigger(job).await;
        c.wait_status(job, n, "success", T).await;
        let log = c.log(job, n).await;
        assert!(log.contains(says), "{job}: {log}");
    }

    // A folder's secrets go with it.
    let r = c.call(Method::DELETE, "/api/v1/jobs/inner", None).await;
    assert_eq!(r.status(), 204);
    for folder in ["backend", "team"] {
        let r = c
            .call(Method::DELETE, &format!("/api/v1/folders/{folder}"), None)
            .await;
        assert_eq!(r.status(), 204, "{folder}");
    }
    let r = c
        .call(Method::GET, "/api/v1/redis/kiln:folder-secrets:team", None)
        .await;
    assert_eq!(r.status(), 403, "never shown, even to an admin");
    let mut conn = deadpool_redis::redis::Client::open(c.redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let exists: bool = deadpool_redis::redis::cmd("EXISTS")
        .arg("kiln:folder-secrets:team")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!exists);
}
