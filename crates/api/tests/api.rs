//! The api against a real redis-server: every endpoint, the exact key layout, atomicity,
//! retention, auth and bad input (which must change nothing).

mod support;

use reqwest::Method;
use serde_json::{json, Value};
use support::{error_field, TestApp, ADMIN, READER, TEAM_A, WRITER};

/// How long a test waits for what the api does in the background.
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

fn job(extra: Value) -> Value {
    let mut base = json!({"steps": [{"name": "build", "run": "echo hi"}]});
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    base
}

#[tokio::test]
async fn a_folder_tree_with_jobs_leaves_exactly_the_spec_keys() {
    let app = TestApp::spawn().await;
    assert_eq!(app.create_folder("team-a", None).await.status(), 201);
    assert_eq!(
        app.create_folder("backend", Some("team-a")).await.status(),
        201
    );
    assert_eq!(
        app.put_job("app", job(json!({"folder": "backend"})))
            .await
            .status(),
        201
    );
    assert_eq!(app.put_job("tool", job(json!({}))).await.status(), 201);
    assert_eq!(app.trigger("app").await.status(), 201);

    for (key, kind) in [
        ("jobs", "list"),
        ("folder_team-a", "list"),
        ("folder_backend", "list"),
        ("job_app", "string"),
        ("job_tool", "string"),
        ("job_app_recent", "list"),
        ("job_app_1", "string"),
    ] {
        assert_eq!(app.redis_type(key).await, kind, "{key}");
    }
    let spec_keys: Vec<String> = app
        .snapshot()
        .await
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| !k.starts_with("kiln:"))
        .collect();
    assert_eq!(
        spec_keys,
        [
            "folder_backend",
            "folder_team-a",
            "job_app",
            "job_app_1",
            "job_app_recent",
            "job_tool",
            "jobs"
        ]
    );
    let root = app.get_json("/api/v1/folders").await;
    let keys: Vec<&str> = root["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["folder_team-a", "job_tool"]);
    let team = app.get_json("/api/v1/folders/team-a").await;
    assert_eq!(team["entries"][0]["key"], "folder_backend");
    let backend = app.get_json("/api/v1/folders/backend").await;
    assert_eq!(backend["parent"], "team-a");
    assert_eq!(backend["entries"][0]["key"], "job_app");
}

#[tokio::test]
async fn triggering_queues_a_numbered_build_with_its_parameters() {
    let app = TestApp::spawn().await;
    app.put_job("app", job(json!({"parameters": [{"name": "TARGET", "default": "x"}, {"name": "MODE", "default": "fast"}]})))
        .await;
    let r = app
        .call(
            Method::POST,
            "/api/v1/jobs/app/builds",
            Some(json!({"parameters": {"TARGET": "y"}})),
        )
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["location"], "/api/v1/jobs/app/builds/1");
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["number"], 1);
    assert_eq!(b["status"], "queued");
    assert_eq!(b["attempt"], 1);
    assert_eq!(b["parameters"], json!({"TARGET": "y", "MODE": "fast"}));
    assert_eq!(b["trigger"], json!({"kind": "api", "by": "root"}));
    assert_eq!(b["storage_path"], "jobs/app/1");
    assert!(b["reason"]
        .as_str()
        .unwrap()
        .contains("no live worker serves queue 'default'"));

    assert_eq!(app.trigger("app").await.status(), 201);
    let q = app.get_json("/api/v1/queue").await;
    assert_eq!(q["queues"][0]["stats"]["depth"], 2);
    assert_eq!(
        q["queues"][0]["builds"][0]["number"], 1,
        "next to run first"
    );
    assert!(q["queues"][0]["stats"]["oldest_age_secs"].as_f64().unwrap() >= 0.0);
    let list = app.get_json("/api/v1/jobs/app/builds").await;
    assert_eq!(list["total"], 2);
    assert_eq!(list["builds"][0]["number"], 2, "newest first");
    let page = app
        .get_json("/api/v1/jobs/app/builds?offset=1&limit=1")
        .await;
    assert_eq!(page["builds"][0]["number"], 1);
}

/// "Run it again": a new build with the old one's parameters and revision, saying which
/// build it repeats; one that can no longer be the same is refused and writes nothing.
#[tokio::test]
async fn a_rebuild_repeats_the_parameters_and_revision_of_its_build() {
    let app = TestApp::spawn().await;
    let def = job(json!({
        "parameters": [{"name": "TARGET", "default": "x"}, {"name": "MODE", "default": "fast"}],
        "repository": {"url": "https://example.com/app.git", "ref": "main"},
    }));
    app.put_job("app", def.clone()).await;
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let r = app
        .call(
            Method::POST,
            "/api/v1/jobs/app/builds",
            Some(json!({"parameters": {"TARGET": "y"}, "sha": sha, "ref": "release"})),
        )
        .await;
    assert_eq!(r.status(), 201);
    app.trigger("app").await;

    let r = app
        .call(Method::POST, "/api/v1/jobs/app/builds/1/rebuild", None)
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["location"], "/api/v1/jobs/app/builds/3");
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["number"], 3);
    assert_eq!(b["status"], "queued");
    assert_eq!(b["parameters"], json!({"TARGET": "y", "MODE": "fast"}));
    assert_eq!(
        b["trigger"],
        json!({"kind": "api", "by": "root", "sha": sha, "ref": "release", "rebuild_of": 1})
    );
    assert_eq!(
        app.get_json("/api/v1/jobs/app/builds/3").await["trigger"]["rebuild_of"],
        1
    );

    let reader = app
        .request(
            Method::POST,
            "/api/v1/jobs/app/builds/1/rebuild",
            Some(READER),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(reader.status(), 403);
    error_field(
        app.call(Method::POST, "/api/v1/jobs/app/builds/9/rebuild", None)
            .await,
        404,
    )
    .await;
    error_field(
        app.call(Method::POST, "/api/v1/jobs/app/builds/x/rebuild", None)
            .await,
        400,
    )
    .await;

    let mut fewer = def;
    fewer["parameters"] = json!([{"name": "MODE", "default": "fast"}]);
    app.put_job("app", fewer).await;
    let before = app.snapshot().await;
    let field = error_field(
        app.call(Method::POST, "/api/v1/jobs/app/builds/1/rebuild", None)
            .await,
        422,
    )
    .await;
    assert_eq!(field.as_deref(), Some("parameters.TARGET"));
    assert_eq!(
        app.snapshot().await,
        before,
        "a refused rebuild writes nothing"
    );
}

/// A job's badge shows its newest ended build; it needs a reading token unless the job says
/// `public_badge`, and even the job's existence is hidden from those without one.
#[tokio::test]
async fn a_status_badge_is_public_only_when_its_job_says_so() {
    let app = TestApp::spawn().await;
    app.put_job("private", job(json!({}))).await;
    app.put_job("open", job(json!({"public_badge": true})))
        .await;
    let anonymous = |path: &'static str| app.request(Method::GET, path, None).send();
    for path in [
        "/api/v1/jobs/private/badge.svg",
        "/api/v1/jobs/ghost/badge.svg",
    ] {
        assert_eq!(anonymous(path).await.unwrap().status(), 401, "{path}");
    }
    let r = app
        .request(Method::GET, "/api/v1/jobs/private/badge.svg", Some(READER))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains(">no builds</text>"));

    // A queued build has not ended: the badge shows the one cancelled before it.
    app.trigger("open").await;
    let r = app
        .call(Method::POST, "/api/v1/jobs/open/builds/1/cancel", None)
        .await;
    assert_eq!(r.status(), 202);
    app.trigger("open").await;
    let r = anonymous("/api/v1/jobs/open/badge.svg").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/svg+xml");
    let body = r.text().await.unwrap();
    assert!(body.contains(r#"aria-label="open: cancelled""#), "{body}");
}

/// A schedule with a `schedule_timezone` names minutes of that zone's clocks; a zone that is
/// not one is refused by name.
#[tokio::test]
async fn a_schedule_is_read_in_its_time_zone() {
    let app = TestApp::spawn().await;
    // Tokyo keeps no daylight saving time: 03:00 there is always 18:00 UTC the day before.
    app.put_job(
        "tokyo",
        job(json!({"schedule": "0 3 * * *", "schedule_timezone": "Asia/Tokyo"})),
    )
    .await;
    let next = app.get_json("/api/v1/jobs/tokyo").await["next_scheduled_build"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(next.ends_with("T18:00:00Z"), "{next}");
    let r = app
        .call(
            Method::PUT,
            "/api/v1/jobs/mars",
            Some(job(
                json!({"schedule": "0 3 * * *", "schedule_timezone": "Mars/Olympus"}),
            )),
        )
        .await;
    assert_eq!(
        error_field(r, 400).await.as_deref(),
        Some("schedule_timezone")
    );
}

/// A job's `schedule` queues one build per minute it names, however many api replicas
/// look (two schedulers here, as two replicas would run); a minute before the schedule was
/// set, or older than the catch-up window, gets none.
#[tokio::test]
async fn a_schedule_queues_one_build_per_minute_it_names() {
    use chrono::{Duration, TimeZone, Timelike, Utc};
    use kiln_api::scheduler::Scheduler;
    use kiln_store::{Store, StoreOptions};

    let app = TestApp::spawn().await;
    let store = || Store::new(&StoreOptions::new(app.redis.url())).unwrap();
    let (mut a, mut b) = (Scheduler::new(store()), Scheduler::new(store()));
    error_field(
        app.put_job("bad", job(json!({"schedule": "61 * * * *"})))
            .await,
        400,
    )
    .await
    .filter(|f| f == "schedule")
    .expect("the error names the schedule");

    // The schedules name minutes half an hour and half a day away from now, so the api's
    // own scheduler (running in real time beside this test) never owes them a build.
    let now = Utc::now();
    let minute = (now.minute() + 30) % 60;
    let hour = (now.hour() + 12) % 24;
    let hourly = format!("{minute} * * * *");
    app.put_job("nightly", job(json!({ "schedule": hourly })))
        .await;
    let scheduled = store().scheduled_jobs().await.unwrap();
    assert_eq!(scheduled.len(), 1);
    let set = Utc.timestamp_opt(scheduled[0].1, 0).unwrap();
    assert!(
        a.fire_due(set).await.unwrap().is_empty(),
        "a minute begun before the schedule was set is not owed"
    );
    // The first minute after `t` that `names` accepts.
    let first_after = |t: chrono::DateTime<Utc>, names: &dyn Fn(chrono::DateTime<Utc>) -> bool| {
        let mut m = t.with_second(0).unwrap() + Duration::minutes(1);
        while !names(m) {
            m += Duration::minutes(1);
        }
        m
    };
    let next = first_after(set, &|m| m.minute() == minute);
    assert_eq!(
        app.get_json("/api/v1/jobs/nightly").await["next_scheduled_build"],
        json!(next),
        "the job says when its next scheduled build comes"
    );
    let later = next + Duration::seconds(7);
    let queued = a.fire_due(later).await.unwrap();
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert!(
        b.fire_due(later).await.unwrap().is_empty(),
        "the other replica"
    );
    assert!(a
        .fire_due(later + Duration::seconds(30))
        .await
        .unwrap()
        .is_empty());
    let doc = app
        .get_json(&format!(
            "/api/v1/jobs/nightly/builds/{}",
            queued[0].number.0
        ))
        .await;
    assert_eq!(doc["trigger"], json!({"kind": "schedule"}));
    assert_eq!(doc["status"], "queued");

    // Every replica down for 80 minutes: the latest minute missed (20 minutes ago) gets
    // one build.
    let back = next + Duration::minutes(80) + Duration::seconds(3);
    assert_eq!(b.fire_due(back).await.unwrap().len(), 1);
    assert!(a.fire_due(back).await.unwrap().is_empty());
    // A daily build missed by more than the catch-up window is not made up.
    app.put_job(
        "daily",
        job(json!({ "schedule": format!("0 {hour} * * *") })),
    )
    .await;
    let day = first_after(set, &|m| m.hour() == hour && m.minute() == 0);
    assert!(a
        .fire_due(day + Duration::minutes(90))
        .await
        .unwrap()
        .iter()
        .all(|b| b.job.as_str() != "daily"));
    let late = a.fire_due(day + Duration::minutes(30)).await.unwrap();
    assert!(late.iter().any(|b| b.job.as_str() == "daily"), "{late:?}");

    // As if the schedule had been set two hours ago.
    let mut c = app.redis.pool().get().await.unwrap();
    let _: () = deadpool_redis::redis::cmd("HSET")
        .arg("kiln:schedules")
        .arg("nightly")
        .arg(set.timestamp() - 7200)
        .query_async(&mut c)
        .await
        .unwrap();
    let mut off = job(json!({"schedule": hourly, "disabled": true}));
    app.put_job("nightly", off.clone()).await;
    assert_eq!(
        app.get_json("/api/v1/jobs/nightly")
            .await
            .get("next_scheduled_build"),
        None,
        "a disabled job has no next build"
    );
    let when_disabled = a.fire_due(next + Duration::minutes(180)).await.unwrap();
    assert!(
        when_disabled.iter().all(|b| b.job.as_str() != "nightly"),
        "disabled: {when_disabled:?}"
    );
    // Enabled again, it owes nothing for the minutes it spent disabled: its schedule
    // starts afresh now.
    off["disabled"] = json!(false);
    let before_enabling = Utc::now().timestamp();
    app.put_job("nightly", off.clone()).await;
    let since = store()
        .scheduled_jobs()
        .await
        .unwrap()
        .into_iter()
        .find(|(j, _, _)| j.as_str() == "nightly")
        .map(|(_, since, _)| since);
    assert!(
        since.is_some_and(|s| s >= before_enabling),
        "{since:?} < {before_enabling}"
    );
    let names = || async {
        let mut n: Vec<String> = store()
            .scheduled_jobs()
            .await
            .unwrap()
            .into_iter()
            .map(|(j, _, _)| j.as_str().to_owned())
            .collect();
        n.sort();
        n
    };
    off.as_object_mut().unwrap().remove("schedule");
    app.put_job("nightly", off).await;
    assert_eq!(names().await, ["daily"], "nightly has no schedule left");
    app.put_job("hourly", job(json!({"schedule": "@hourly"})))
        .await;
    assert_eq!(names().await, ["daily", "hourly"]);
    app.call(reqwest::Method::DELETE, "/api/v1/jobs/hourly", None)
        .await;
    assert_eq!(names().await, ["daily"], "deleted with its job");
}

/// Several api processes share one Redis: each may hold a job definition another has
/// changed since, and a trigger must always follow the stored one.
#[tokio::test]
async fn a_trigger_follows_a_definition_changed_through_another_api_process() {
    let app = TestApp::spawn().await;
    let other = app.second_instance().await;
    let put = |def: Value| other.call(Method::PUT, "/api/v1/jobs/app", Some(def));
    assert_eq!(app.put_job("app", job(json!({}))).await.status(), 201);
    assert_eq!(app.trigger("app").await.status(), 201);

    assert!(put(job(
        json!({"queue": "gpu", "parameters": [{"name": "MODE", "default": "full"}]})
    ))
    .await
    .status()
    .is_success());
    let r = app.trigger("app").await;
    assert_eq!(r.status(), 201);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["queue"], "gpu");
    assert_eq!(b["parameters"], json!({"MODE": "full"}));

    assert!(put(job(json!({"disabled": true})))
        .await
        .status()
        .is_success());
    error_field(app.trigger("app").await, 409).await;
    assert!(put(job(json!({}))).await.status().is_success());
    let r = app.trigger("app").await;
    assert_eq!(r.status(), 201, "a refusal is not remembered");
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["number"], 3);

    let r = other.call(Method::DELETE, "/api/v1/jobs/app", None).await;
    assert!(r.status().is_success());
    error_field(app.trigger("app").await, 404).await;
}

#[tokio::test]
async fn retention_trims_ended_builds_and_never_one_still_queued() {
    let app = TestApp::spawn().await;
    app.put_job("app", job(json!({"retention": {"builds": 2}})))
        .await;
    let dir1 = app.storage.path().join("jobs/app/1");
    std::fs::create_dir_all(&dir1).unwrap();
    std::fs::write(dir1.join("log.jsonl"), "").unwrap();
    for _ in 0..3 {
        assert_eq!(app.trigger("app").await.status(), 201);
    }
    // No worker: all three wait, and retention discards none of them.
    let recent = app.get_json("/api/v1/redis/job_app_recent").await;
    assert_eq!(recent["value"], json!(["3", "2", "1"]));
    let q = app.get_json("/api/v1/redis/kiln:queue:default").await;
    assert_eq!(q["value"], json!(["job_app_3", "job_app_2", "job_app_1"]));

    // Once build 1 has ended, the next trigger trims it, and stops at build 2, still queued.
    let r = app
        .call(Method::POST, "/api/v1/jobs/app/builds/1/cancel", None)
        .await;
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(app.trigger("app").await.status(), 201);
    let recent = app.get_json("/api/v1/redis/job_app_recent").await;
    assert_eq!(recent["value"], json!(["4", "3", "2"]));
    assert_eq!(app.redis_type("job_app_1").await, "none");
    for gone in ["/api/v1/jobs/app/builds/1", "/api/v1/jobs/app/builds/1/log"] {
        let r = app.call(Method::GET, gone, None).await;
        assert_eq!(
            r.status(),
            404,
            "{gone}: its folder is the workers' to clear away"
        );
    }
    let q = app.get_json("/api/v1/redis/kiln:queue:default").await;
    assert_eq!(q["value"], json!(["job_app_4", "job_app_3", "job_app_2"]));

    // When the builds holding the trimming back have ended, one trigger catches up.
    for n in [2, 3] {
        let path = format!("/api/v1/jobs/app/builds/{n}/cancel");
        assert!(app
            .call(Method::POST, &path, None)
            .await
            .status()
            .is_success());
    }
    assert_eq!(app.trigger("app").await.status(), 201);
    let recent = app.get_json("/api/v1/redis/job_app_recent").await;
    assert_eq!(recent["value"], json!(["5", "4"]));
    for n in 1..=3 {
        assert_eq!(app.redis_type(&format!("job_app_{n}")).await, "none");
    }
}

#[tokio::test]
async fn a_pinned_build_outlives_retention_until_it_is_unpinned() {
    let app = TestApp::spawn().await;
    app.put_job("app", job(json!({"retention": {"builds": 2}})))
        .await;
    let cancel = |n: u32| {
        let app = &app;
        async move {
            let path = format!("/api/v1/jobs/app/builds/{n}/cancel");
            let r = app.call(Method::POST, &path, None).await;
            assert!(r.status().is_success(), "cancel {n}: {}", r.status());
        }
    };
    let keep = "/api/v1/jobs/app/builds/1/keep";
    assert_eq!(app.trigger("app").await.status(), 201);

    // Queued: the worker will rewrite its document, so it cannot be pinned yet.
    let r = app.call(Method::PUT, keep, None).await;
    assert_eq!(r.status(), 409);
    cancel(1).await;
    let before = app.snapshot().await;
    for (body, field) in [
        (json!({"reason": ""}), "reason"),
        (json!({"reason": "two\nlines"}), "reason"),
        (json!({"reason": "x".repeat(501)}), "reason"),
        (json!({"why": "release"}), "why"),
    ] {
        let r = app.call(Method::PUT, keep, Some(body.clone())).await;
        assert_eq!(error_field(r, 400).await.as_deref(), Some(field), "{body}");
    }
    let r = app
        .request(Method::PUT, keep, Some(READER))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "pinning needs a writing token");
    let r = app.request(Method::PUT, keep, None).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = app
        .call(Method::PUT, "/api/v1/jobs/app/builds/9/keep", None)
        .await;
    assert_eq!(r.status(), 404);
    assert_eq!(app.snapshot().await, before, "refused pins change nothing");

    let r = app
        .request(Method::PUT, keep, Some(WRITER))
        .json(&json!({"reason": "release 1.4"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["keep"]["by"], "ci", "{doc}");
    assert_eq!(doc["keep"]["reason"], "release 1.4", "{doc}");
    assert_eq!(doc["status"], "cancelled", "{doc}");
    let page = app.get_json("/api/v1/jobs/app/builds").await;
    assert_eq!(page["builds"][0]["keep"]["by"], "ci", "{page}");

    // Builds 2 to 5 come and go; the job keeps its newest two and the pinned build 1.
    let dir = |n: u32| app.storage.path().join(format!("jobs/app/{n}"));
    for n in 1..=6 {
        std::fs::create_dir_all(dir(n)).unwrap();
        std::fs::write(dir(n).join("log.jsonl"), "").unwrap();
    }
    for n in 2..=5 {
        assert_eq!(app.trigger("app").await.status(), 201);
        cancel(n).await;
    }
    assert_eq!(app.trigger("app").await.status(), 201);
    let recent = app.get_json("/api/v1/redis/job_app_recent").await;
    assert_eq!(recent["value"], json!(["6", "5", "1"]));
    for n in 2..=4 {
        assert_eq!(app.redis_type(&format!("job_app_{n}")).await, "none");
    }
    let one = app.get_json("/api/v1/jobs/app/builds/1").await;
    assert_eq!(one["keep"]["reason"], "release 1.4", "{one}");
    // Workers clear away only folders below the oldest kept build, the pinned one: the
    // api removes those of the builds trimmed from behind it.
    kiln_testkit::wait_for(
        "the api to remove folders left behind build 1",
        TIMEOUT,
        || async { (2..=4).all(|n| !dir(n).exists()).then_some(()) },
    )
    .await;
    for n in [1, 5, 6] {
        assert!(dir(n).exists(), "build {n} is kept");
    }

    // Unpinned, it goes at the next trigger like any build past the count.
    let r = app.call(Method::DELETE, keep, None).await;
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.unwrap();
    assert!(doc.get("keep").is_none(), "{doc}");
    cancel(6).await;
    assert_eq!(app.trigger("app").await.status(), 201);
    let recent = app.get_json("/api/v1/redis/job_app_recent").await;
    assert_eq!(recent["value"], json!(["7", "6"]));
    assert_eq!(app.redis_type("job_app_1").await, "none");
}

#[tokio::test]
async fn a_pin_past_retention_days_stays_and_reaches_the_index_again() {
    let app = TestApp::spawn().await;
    app.put_job("app", job(json!({"retention": {"builds": 100, "days": 1}})))
        .await;
    let mut conn = app.redis.pool().get().await.unwrap();
    let _: () = deadpool_redis::redis::cmd("SADD")
        .arg("kiln:finished-consumers")
        .arg("es")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(app.trigger("app").await.status(), 201);
    let r = app
        .call(Method::POST, "/api/v1/jobs/app/builds/1/cancel", None)
        .await;
    assert!(r.status().is_success());
    let r = app
        .call(Method::PUT, "/api/v1/jobs/app/builds/1/keep", None)
        .await;
    assert_eq!(r.status(), 200);
    // The cancel and the pin each hand the build to the index.
    let es = app.get_json("/api/v1/redis/kiln:finished:es").await;
    assert_eq!(es["value"], json!(["job_app_1", "job_app_1"]), "{es}");

    // As if it had ended two days ago: past retention.days, but pinned.
    age(&app, "job_app_1", 2).await;
    assert_eq!(app.trigger("app").await.status(), 201);
    let recent = app.get_json("/api/v1/redis/job_app_recent").await;
    assert_eq!(recent["value"], json!(["2", "1"]));
}

/// Sets a stored build's `finished_at` to `days` ago.
async fn age(app: &TestApp, key: &str, days: i64) {
    let mut conn = app.redis.pool().get().await.unwrap();
    let raw: String = deadpool_redis::redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut doc: Value = serde_json::from_str(&raw).unwrap();
    doc["finished_at"] = json!(chrono::Utc::now() - chrono::Duration::days(days));
    let _: () = deadpool_redis::redis::cmd("SET")
        .arg(key)
        .arg(doc.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn the_retention_sweep_trims_a_job_nobody_triggers() {
    let app = TestApp::spawn().await;
    app.put_job(
        "idle",
        job(json!({"retention": {"builds": 100, "days": 1}})),
    )
    .await;
    let dir = |n: u32| app.storage.path().join(format!("jobs/idle/{n}"));
    for n in 1..=3 {
        assert_eq!(app.trigger("idle").await.status(), 201);
        let r = app
            .call(
                Method::POST,
                &format!("/api/v1/jobs/idle/builds/{n}/cancel"),
                None,
            )
            .await;
        assert!(r.status().is_success());
        std::fs::create_dir_all(dir(n)).unwrap();
        std::fs::write(dir(n).join("log.jsonl"), "").unwrap();
    }
    let r = app
        .call(Method::PUT, "/api/v1/jobs/idle/builds/2/keep", None)
        .await;
    assert_eq!(r.status(), 200);
    // Builds 1 and 2 ended two days ago; nobody triggers the job again.
    age(&app, "job_idle_1", 2).await;
    age(&app, "job_idle_2", 2).await;

    let _sweeper = app.instance_with(|c| c.api.retention_sweep_secs = 1).await;
    kiln_testkit::wait_for(
        "the sweep to remove build 1 and its folder",
        TIMEOUT,
        || async {
            (app.redis_type("job_idle_1").await == "none" && !dir(1).exists()).then_some(())
        },
    )
    .await;
    let recent = app.get_json("/api/v1/redis/job_idle_recent").await;
    assert_eq!(
        recent["value"],
        json!(["3", "2"]),
        "build 2 is pinned, 3 is new"
    );
    assert!(dir(2).exists() && dir(3).exists());
}

#[tokio::test]
async fn artifacts_go_after_their_days_while_the_build_and_its_log_stay() {
    let app = TestApp::spawn().await;
    let r = app
        .put_job(
            "app",
            job(json!({"retention": {"builds": 100, "days": 5, "artifacts_days": 5}})),
        )
        .await;
    assert_eq!(
        error_field(r, 400).await.as_deref(),
        Some("retention.artifacts_days")
    );
    app.put_job(
        "app",
        job(json!({"retention": {"builds": 100, "artifacts_days": 1}})),
    )
    .await;
    let dir = |n: u32| app.storage.path().join(format!("jobs/app/{n}"));
    for n in 1..=3 {
        assert_eq!(app.trigger("app").await.status(), 201);
        let r = app
            .call(
                Method::POST,
                &format!("/api/v1/jobs/app/builds/{n}/cancel"),
                None,
            )
            .await;
        assert!(r.status().is_success());
        std::fs::create_dir_all(dir(n).join("artifacts/dist")).unwrap();
        std::fs::write(dir(n).join("artifacts/dist/app.tar"), "bytes").unwrap();
        std::fs::write(dir(n).join("log.jsonl"), "").unwrap();
    }
    let r = app
        .call(Method::PUT, "/api/v1/jobs/app/builds/2/keep", None)
        .await;
    assert_eq!(r.status(), 200);
    // Builds 1 and 2 ended two days ago; 2 is pinned.
    age(&app, "job_app_1", 2).await;
    age(&app, "job_app_2", 2).await;

    let _sweeper = app.instance_with(|c| c.api.retention_sweep_secs = 1).await;
    let one = kiln_testkit::wait_for("build 1's artifacts to expire", TIMEOUT, || async {
        let b = app.get_json("/api/v1/jobs/app/builds/1").await;
        b["artifacts_expired_at"].is_string().then_some(b)
    })
    .await;
    assert_eq!(one["status"], "cancelled", "the build stays");
    assert!(!dir(1).join("artifacts").exists());
    assert!(dir(1).join("log.jsonl").exists(), "its log stays");
    let listed = app.get_json("/api/v1/jobs/app/builds/1/artifacts").await;
    assert_eq!(listed["artifacts"], json!([]));
    assert_eq!(listed["expired_at"], one["artifacts_expired_at"]);
    let r = app
        .call(
            Method::GET,
            "/api/v1/jobs/app/builds/1/artifacts/dist/app.tar",
            None,
        )
        .await;
    assert_eq!(r.status(), 404);
    let e: Value = r.json().await.unwrap();
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("retention.artifacts_days"),
        "{e}"
    );
    // The pinned build and the new one keep theirs.
    for n in [2, 3] {
        assert!(dir(n).join("artifacts/dist/app.tar").exists(), "build {n}");
        let b = app.get_json(&format!("/api/v1/jobs/app/builds/{n}")).await;
        assert!(b.get("artifacts_expired_at").is_none(), "{b}");
    }
}

#[tokio::test]
async fn a_jobs_revisions_say_who_changed_it_when_and_what_it_said() {
    let app = TestApp::spawn().await;
    let first = job(json!({"description": "first"}));
    assert_eq!(app.put_job("app", first.clone()).await.status(), 201);
    assert_eq!(
        app.put_job("app", first).await.status(),
        200,
        "the same definition again"
    );
    let r = app
        .request(Method::PUT, "/api/v1/jobs/app", Some(WRITER))
        .json(&job(json!({"description": "second"})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(app.create_folder("team", None).await.status(), 201);
    let r = app
        .call(
            Method::POST,
            "/api/v1/jobs/app/move",
            Some(json!({"folder": "team"})),
        )
        .await;
    assert_eq!(r.status(), 200);

    let v = app.get_json("/api/v1/jobs/app/revisions").await;
    let seen: Vec<(u64, &str, &str, Option<&str>)> = v["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert!(r["at"].is_string(), "{r}");
            (
                r["revision"].as_u64().unwrap(),
                r["by"].as_str().unwrap(),
                r["definition"]["description"].as_str().unwrap(),
                r["definition"]["folder"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (3, "root", "second", Some("team")),
            (2, "ci", "second", None),
            (1, "root", "first", None)
        ],
        "newest first; putting the same definition again is no revision"
    );
    let v = app.get_json("/api/v1/jobs/app/revisions?limit=1").await;
    assert_eq!(v["revisions"].as_array().unwrap().len(), 1);
    let r = app
        .call(Method::GET, "/api/v1/jobs/app/revisions?limit=0", None)
        .await;
    assert_eq!(error_field(r, 400).await.as_deref(), Some("limit"));
    let r = app
        .call(Method::GET, "/api/v1/jobs/nope/revisions", None)
        .await;
    assert_eq!(r.status(), 404);

    // The history goes with the job.
    let r = app.call(Method::DELETE, "/api/v1/jobs/app", None).await;
    assert_eq!(r.status(), 204);
    assert_eq!(app.redis_type("kiln:job-revisions:app").await, "none");
    app.put_job("app", job(json!({}))).await;
    let v = app.get_json("/api/v1/jobs/app/revisions").await;
    assert_eq!(v["revisions"][0]["revision"], 1);
}

#[tokio::test]
async fn folders_a_stopped_replica_was_removing_are_removed_by_the_next() {
    let app = TestApp::spawn().await;
    // As a replica leaves them when it dies between taking the paths and removing them.
    let dirs: Vec<_> = (1..=2)
        .map(|n| app.storage.path().join(format!("jobs/gone/{n}")))
        .collect();
    for d in &dirs {
        std::fs::create_dir_all(d).unwrap();
    }
    let mut conn = app.redis.pool().get().await.unwrap();
    let _: () = deadpool_redis::redis::cmd("LPUSH")
        .arg("kiln:storage-orphans:taken")
        .arg("jobs/gone/1")
        .arg("jobs/gone/2")
        .query_async(&mut conn)
        .await
        .unwrap();

    let _next = app.instance_with(|_| {}).await;
    kiln_testkit::wait_for("both folders gone and recorded so", TIMEOUT, || async {
        let gone = dirs.iter().all(|d| !d.exists());
        (gone && app.redis_type("kiln:storage-orphans:taken").await == "none").then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_token_limited_to_folders_changes_only_what_is_inside_them() {
    let app = TestApp::spawn().await;
    for (name, parent) in [
        ("team-a", None),
        ("backend", Some("team-a")),
        ("team-b", None),
    ] {
        assert_eq!(app.create_folder(name, parent).await.status(), 201);
    }
    for (name, folder) in [("mine", json!("backend")), ("theirs", json!("team-b"))] {
        assert_eq!(
            app.put_job(name, job(json!({"folder": folder})))
                .await
                .status(),
            201
        );
        assert_eq!(app.trigger(name).await.status(), 201);
    }
    assert_eq!(app.put_job("rooted", job(json!({}))).await.status(), 201);
    let team = |method: Method, path: &str, body: Option<Value>| {
        let r = app.request(method, path, Some(TEAM_A));
        match body {
            Some(b) => r.json(&b),
            None => r,
        }
        .send()
    };

    // Inside team-a, at any depth: allowed.
    let allowed = [
        (
            Method::PUT,
            "/api/v1/jobs/new",
            Some(job(json!({"folder": "backend"}))),
        ),
        (
            Method::PUT,
            "/api/v1/jobs/mine",
            Some(job(json!({"folder": "team-a"}))),
        ),
        (Method::POST, "/api/v1/jobs/mine/builds", None),
        (Method::POST, "/api/v1/jobs/mine/builds/1/cancel", None),
        (
            Method::POST,
            "/api/v1/folders",
            Some(json!({"name": "tools", "parent": "backend"})),
        ),
        (Method::DELETE, "/api/v1/folders/tools", None),
        (
            Method::POST,
            "/api/v1/jobs/new/move",
            Some(json!({"folder": "backend"})),
        ),
        (Method::DELETE, "/api/v1/jobs/new", None),
        (
            Method::PUT,
            "/api/v1/folders/team-a/secrets/TEAM_TOKEN",
            Some(json!({"value": "0123456789"})),
        ),
        (
            Method::PUT,
            "/api/v1/folders/backend/secrets/DEPLOY_KEY",
            Some(json!({"value": "0123456789"})),
        ),
        (
            Method::DELETE,
            "/api/v1/folders/backend/secrets/DEPLOY_KEY",
            None,
        ),
    ];
    for (method, path, body) in allowed {
        let r = team(method.clone(), path, body).await.unwrap();
        assert!(r.status().is_success(), "{method} {path}: {}", r.status());
    }

    // Anything else: 403 naming the token's folders, and nothing written.
    let before = app.snapshot().await;
    let refused = [
        (
            Method::PUT,
            "/api/v1/jobs/theirs",
            Some(job(json!({"folder": "backend"}))),
        ),
        (
            Method::PUT,
            "/api/v1/jobs/mine",
            Some(job(json!({"folder": "team-b"}))),
        ),
        (Method::PUT, "/api/v1/jobs/stray", Some(job(json!({})))),
        (Method::DELETE, "/api/v1/jobs/theirs", None),
        (Method::DELETE, "/api/v1/jobs/rooted", None),
        (
            Method::POST,
            "/api/v1/jobs/theirs/move",
            Some(json!({"folder": "backend"})),
        ),
        (
            Method::POST,
            "/api/v1/jobs/mine/move",
            Some(json!({"folder": null})),
        ),
        (Method::POST, "/api/v1/jobs/theirs/builds", None),
        (Method::POST, "/api/v1/jobs/theirs/builds/1/cancel", None),
        (Method::POST, "/api/v1/jobs/theirs/builds/1/rebuild", None),
        (Method::PUT, "/api/v1/jobs/theirs/builds/1/keep", None),
        (Method::DELETE, "/api/v1/jobs/theirs/builds/1/keep", None),
        (
            Method::POST,
            "/api/v1/jobs/theirs/builds/1/matrix/cancel",
            None,
        ),
        (Method::POST, "/api/v1/jobs/theirs/approve", None),
        (Method::POST, "/api/v1/folders", Some(json!({"name": "x"}))),
        (
            Method::POST,
            "/api/v1/folders",
            Some(json!({"name": "x", "parent": "team-b"})),
        ),
        (Method::DELETE, "/api/v1/folders/team-a", None),
        (Method::DELETE, "/api/v1/folders/team-b", None),
        (
            Method::PUT,
            "/api/v1/secrets/TEAM_TOKEN",
            Some(json!({"value": "0123456789"})),
        ),
        (Method::DELETE, "/api/v1/secrets/TEAM_TOKEN", None),
        (
            Method::PUT,
            "/api/v1/folders/team-b/secrets/TEAM_TOKEN",
            Some(json!({"value": "0123456789"})),
        ),
        (
            Method::DELETE,
            "/api/v1/folders/team-b/secrets/TEAM_TOKEN",
            None,
        ),
        (
            Method::PUT,
            "/api/v1/github/o/r/branch",
            Some(json!({"job": "mine"})),
        ),
        (Method::DELETE, "/api/v1/github/o/r/branch", None),
    ];
    // Every write route the api has is among them: a new one fails here until it checks.
    let openapi = app.get_json("/api/v1/openapi.json").await;
    let matches = |template: &str, path: &str| {
        let (t, p): (Vec<_>, Vec<_>) = (template.split('/').collect(), path.split('/').collect());
        t.len() == p.len() && t.iter().zip(&p).all(|(t, p)| t.starts_with('{') || t == p)
    };
    for (template, ops) in openapi["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            if op["x-kiln-role"] != "write" {
                continue;
            }
            let covered = refused
                .iter()
                .any(|(m, p, _)| m.as_str().eq_ignore_ascii_case(method) && matches(template, p));
            assert!(
                covered,
                "{method} {template} is not tried with a limited token"
            );
        }
    }
    for (method, path, body) in refused {
        let r = team(method.clone(), path, body).await.unwrap();
        assert_eq!(r.status(), 403, "{method} {path}");
        let e: Value = r.json().await.unwrap();
        let message = e["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("token 'team-a-ci' may change only what is inside folder team-a"),
            "{method} {path}: {e}"
        );
    }
    assert_eq!(
        app.snapshot().await,
        before,
        "refused changes wrote nothing"
    );
    // The team's own secret is listed by name only; a folder that does not exist has none.
    let listed = app.get_json("/api/v1/folders/team-a/secrets").await;
    assert_eq!(listed["secrets"][0]["name"], "TEAM_TOKEN", "{listed}");
    assert_eq!(listed["secrets"][0]["updated_by"], "team-a-ci");
    assert!(!listed.to_string().contains("0123456789"));
    let r = app
        .call(Method::GET, "/api/v1/folders/nowhere/secrets", None)
        .await;
    assert_eq!(r.status(), 404);
    // Reads are not limited.
    let r = app
        .request(Method::GET, "/api/v1/jobs/theirs", Some(TEAM_A))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn names_that_could_collide_are_refused() {
    let app = TestApp::spawn().await;
    app.put_job("app", job(json!({}))).await;
    let before = app.snapshot().await;
    assert_eq!(
        error_field(app.put_job("app_pr1", job(json!({}))).await, 400)
            .await
            .as_deref(),
        Some("name")
    );
    assert_eq!(
        error_field(app.put_job("app_1", job(json!({}))).await, 400)
            .await
            .as_deref(),
        Some("name")
    );
    assert_eq!(
        error_field(app.put_job("a%2Fb", job(json!({}))).await, 400)
            .await
            .as_deref(),
        Some("name")
    );
    // `..` is normalised away before routing: it never reaches a handler.
    error_field(app.put_job("%2E%2E", job(json!({}))).await, 404).await;
    error_field(app.create_folder("app", None).await, 409).await;
    assert_eq!(
        error_field(app.create_folder("a_b", None).await, 400)
            .await
            .as_deref(),
        Some("name")
    );
    assert_eq!(app.snapshot().await, before);

    app.create_folder("team", None).await;
    let before = app.snapshot().await;
    error_field(app.put_job("team", job(json!({}))).await, 409).await;
    error_field(app.create_folder("team", None).await, 409).await;
    assert_eq!(
        error_field(app.put_job("x", job(json!({"folder": "nope"}))).await, 422)
            .await
            .as_deref(),
        Some("folder")
    );
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test]
async fn tokens_and_roles_gate_every_route() {
    let app = TestApp::spawn().await;
    let put = |token: Option<&'static str>| {
        app.request(Method::PUT, "/api/v1/jobs/app", token)
            .json(&job(json!({})))
            .send()
    };
    assert_eq!(put(None).await.unwrap().status(), 401);
    assert_eq!(
        put(Some("wrong-token-0123456789")).await.unwrap().status(),
        401
    );
    assert_eq!(put(Some(READER)).await.unwrap().status(), 403);
    assert_eq!(put(Some(WRITER)).await.unwrap().status(), 201);
    let get = |token| app.request(Method::GET, "/api/v1/jobs/app", token).send();
    assert_eq!(get(None).await.unwrap().status(), 401);
    assert_eq!(get(Some(READER)).await.unwrap().status(), 200);
    let raw = |token| {
        app.request(Method::GET, "/api/v1/redis/job_app", token)
            .send()
    };
    assert_eq!(raw(Some(WRITER)).await.unwrap().status(), 403);
    assert_eq!(raw(Some(ADMIN)).await.unwrap().status(), 200);
    let open = app
        .request(Method::GET, "/healthz", None)
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), 200);
}

#[tokio::test]
async fn bad_input_gets_a_named_4xx_and_changes_nothing() {
    let app = TestApp::spawn().await;
    app.put_job(
        "app",
        job(json!({"parameters": [{"name": "T"},
            {"name": "ENV", "default": "staging", "choices": ["staging", "production"]}]})),
    )
    .await;
    let before = app.snapshot().await;
    let send_raw = |method: Method, path: &'static str, body: &'static str, ct: &'static str| {
        app.request(method, path, Some(ADMIN))
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let cases: Vec<(reqwest::Response, u16, Option<&str>)> = vec![
        (
            send_raw(
                Method::PUT,
                "/api/v1/jobs/app",
                "{\"steps\": [",
                "application/json",
            )
            .await
            .unwrap(),
            400,
            Some("steps"),
        ),
        (
            send_raw(
                Method::PUT,
                "/api/v1/jobs/app",
                r#"{"steps": [], "step": 1}"#,
                "application/json",
            )
            .await
            .unwrap(),
            400,
            Some("step"),
        ),
        (
            send_raw(
                Method::PUT,
                "/api/v1/jobs/app",
                r#"{"steps": [{"name": "a", "run": "b", "shell": 1}]}"#,
                "application/json",
            )
            .await
            .unwrap(),
            400,
            Some("steps[0].shell"),
        ),
        (
            send_raw(
                Method::PUT,
                "/api/v1/jobs/app",
                r#"{"steps": []}"#,
                "application/json",
            )
            .await
            .unwrap(),
            400,
            Some("steps"),
        ),
        (
            send_raw(
                Method::PUT,
                "/api/v1/jobs/app",
                r#"{"steps": [{"name":"a","run":"b"}], "timeout_secs": -1}"#,
                "application/json",
            )
            .await
            .unwrap(),
            400,
            Some("timeout_secs"),
        ),
        (
            send_raw(
                Method::PUT,
                "/api/v1/jobs/app",
                r#"{"steps": [{"name":"a","run":"b"}], "concurrency": 0}"#,
                "application/json",
            )
            .await
            .unwrap(),
            400,
            Some("concurrency"),
        ),
        (
            send_raw(
                Method::PUT,
                "/api/v1/jobs/app",
                r#"{"steps": [{"name":"a","run":"b"}], "parameters": [{"name": "E", "choices": ["x"]}]}"#,
                "application/json",
            )
            .await
            .unwrap(),
            400,
            Some("parameters[0].default"),
        ),
        (
            send_raw(
                Method::PUT,
                "/api/v1/jobs/app",
                r#"{"steps": [{"name":"a","run":"b","when":"failure"}]}"#,
                "application/json",
            )
            .await
            .unwrap(),
            400,
            Some("steps[0].when"),
        ),
        (
            send_raw(
                Method::PUT,
                "/api/v1/jobs/app",
                r#"{"steps": [{"name":"a","run":"b"}], "downstream": [{"job": "app"}]}"#,
                "application/json",
            )
            .await
            .unwrap(),
            400,
            Some("downstream[0].job"),
        ),
        (
            send_raw(
                Method::PUT,
                "/api/v1/jobs/app",
                r#"{"steps": [{"name":"a","run":"b"}], "downstream": [{"job": "x", "on": ["queued"]}]}"#,
                "application/json",
            )
            .await
            .unwrap(),
            400,
            Some("downstream[0].on[0]"),
        ),
        (
            send_raw(
                Method::PUT,
                "/api/v1/jobs/app",
                r#"{"steps": [{"name":"a","run":"b"}], "artifacts": ["../../x"]}"#,
                "application/json",
            )
            .await
            .unwrap(),
            400,
            Some("artifacts[0]"),
        ),
        (
            send_raw(
                Method::PUT,
                "/api/v1/jobs/app",
                r#"{"steps": [{"name":"a","run":"b"}]}"#,
                "text/plain",
            )
            .await
            .unwrap(),
            415,
            None,
        ),
        (
            send_raw(
                Method::POST,
                "/api/v1/jobs/app/builds",
                r#"{"parameters": {"NOPE": "1"}}"#,
                "application/json",
            )
            .await
            .unwrap(),
            422,
            Some("parameters.NOPE"),
        ),
        (
            send_raw(
                Method::POST,
                "/api/v1/jobs/app/builds",
                r#"{"parameters": {"ENV": "prod"}}"#,
                "application/json",
            )
            .await
            .unwrap(),
            422,
            Some("parameters.ENV"),
        ),
        (
            send_raw(
                Method::POST,
                "/api/v1/jobs/app/builds",
                r#"{"parameters": {"T": 1}}"#,
                "application/json",
            )
            .await
            .unwrap(),
            400,
            Some("parameters.T"),
        ),
        (
            send_raw(
                Method::POST,
                "/api/v1/jobs/nope/builds",
                "",
                "application/json",
            )
            .await
            .unwrap(),
            404,
            None,
        ),
        (
            send_raw(
                Method::POST,
                "/api/v1/folders",
                r#"{"name": "x", "parent": "nope"}"#,
                "application/json",
            )
            .await
            .unwrap(),
            422,
            Some("parent"),
        ),
        (
            send_raw(
                Method::GET,
                "/api/v1/jobs/app/builds/0",
                "",
                "application/json",
            )
            .await
            .unwrap(),
            400,
            Some("number"),
        ),
        (
            send_raw(
                Method::GET,
                "/api/v1/jobs/app/builds?limit=100000",
                "",
                "application/json",
            )
            .await
            .unwrap(),
            400,
            Some("limit"),
        ),
        (
            send_raw(
                Method::GET,
                "/api/v1/jobs/app/builds?offset=1&limit=-1",
                "",
                "application/json",
            )
            .await
            .unwrap(),
            400,
            Some("limit"),
        ),
        (
            send_raw(
                Method::GET,
                "/api/v1/jobs/app/builds/1/log?offset=x",
                "",
                "application/json",
            )
            .await
            .unwrap(),
            400,
            Some("offset"),
        ),
        (
            send_raw(
                Method::GET,
                "/api/v1/redis/not-a-kiln-key",
                "",
                "application/json",
            )
            .await
            .unwrap(),
            400,
            Some("key"),
        ),
    ];
    for (i, (r, status, field)) in cases.into_iter().enumerate() {
        let got = error_field(r, status).await;
        assert_eq!(got.as_deref(), field, "case {i}");
    }
    let huge = format!(
        r#"{{"steps": [{{"name": "a", "run": "{}"}}]}}"#,
        "x".repeat(100_000)
    );
    let r = app
        .request(Method::PUT, "/api/v1/jobs/app", Some(ADMIN))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let body: Value = r
        .json()
        .await
        .expect("a JSON error, like every other refusal");
    assert_eq!(body["error"]["code"], "payload_too_large", "{body}");
    assert_eq!(
        app.snapshot().await,
        before,
        "refused requests wrote nothing"
    );
}

#[tokio::test]
async fn a_trigger_that_redis_rejects_writes_nothing() {
    let app = TestApp::spawn().await;
    app.put_job("app", job(json!({}))).await;
    let before = app.snapshot().await;
    let mut c = app.redis.pool().get().await.unwrap();
    let _: () = deadpool_redis::redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("1")
        .query_async(&mut c)
        .await
        .unwrap();
    let r = app.trigger("app").await;
    assert!(r.status().is_server_error(), "{}", r.status());
    let _: () = deadpool_redis::redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("0")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        app.snapshot().await,
        before,
        "out of memory: nothing half-written"
    );

    // A key of the wrong type makes a write fail mid-way unless the script checks first.
    let _: () = deadpool_redis::redis::cmd("SET")
        .arg("kiln:queues")
        .arg("oops")
        .query_async(&mut c)
        .await
        .unwrap();
    let before = app.snapshot().await;
    assert!(app.trigger("app").await.status().is_server_error());
    assert_eq!(
        app.snapshot().await,
        before,
        "wrong type: nothing half-written"
    );
}

#[tokio::test]
async fn cancelling_a_queued_build_ends_it_and_empties_the_queue() {
    let app = TestApp::spawn().await;
    app.put_job("app", job(json!({}))).await;
    app.trigger("app").await;
    let r = app
        .call(Method::POST, "/api/v1/jobs/app/builds/1/cancel", None)
        .await;
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["outcome"], "cancelled");
    assert_eq!(v["build"]["status"], "cancelled");
    assert!(v["build"]["finished_at"].is_string());
    assert_eq!(app.redis_type("kiln:queue:default").await, "none");
    error_field(
        app.call(Method::POST, "/api/v1/jobs/app/builds/1/cancel", None)
            .await,
        409,
    )
    .await;
    error_field(
        app.call(Method::POST, "/api/v1/jobs/app/builds/9/cancel", None)
            .await,
        404,
    )
    .await;
}

#[tokio::test]
async fn deleting_removes_keys_entries_and_files() {
    let app = TestApp::spawn().await;
    app.create_folder("team", None).await;
    app.put_job("app", job(json!({"folder": "team"}))).await;
    app.trigger("app").await;
    let dir = app.storage.path().join("jobs/team/app/1");
    std::fs::create_dir_all(&dir).unwrap();
    error_field(
        app.call(Method::DELETE, "/api/v1/folders/team", None).await,
        409,
    )
    .await;
    assert_eq!(
        app.call(Method::DELETE, "/api/v1/jobs/app", None)
            .await
            .status(),
        204
    );
    assert!(!dir.exists());
    assert!(
        !dir.parent().unwrap().exists(),
        "the job's emptied folder is removed too"
    );
    for key in [
        "job_app",
        "job_app_recent",
        "job_app_1",
        "kiln:queue:default",
    ] {
        assert_eq!(app.redis_type(key).await, "none", "{key}");
    }
    assert_eq!(
        app.call(Method::DELETE, "/api/v1/folders/team", None)
            .await
            .status(),
        204
    );
    assert!(
        !app.storage.path().join("jobs/team").exists(),
        "the folder's emptied storage folder is removed"
    );
    let keys: Vec<String> = app
        .snapshot()
        .await
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| !k.starts_with("kiln:"))
        .collect();
    assert_eq!(keys, Vec::<String>::new());
    error_field(
        app.call(Method::DELETE, "/api/v1/jobs/app", None).await,
        404,
    )
    .await;
}

#[tokio::test]
async fn jobs_move_between_folders_and_can_be_listed_by_folder() {
    let app = TestApp::spawn().await;
    app.create_folder("a", None).await;
    app.create_folder("b", None).await;
    app.put_job("app", job(json!({"folder": "a"}))).await;
    let r = app
        .call(
            Method::POST,
            "/api/v1/jobs/app/move",
            Some(json!({"folder": "b"})),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        app.get_json("/api/v1/folders/a").await["entries"],
        json!([])
    );
    assert_eq!(
        app.get_json("/api/v1/folders/b").await["entries"][0]["key"],
        "job_app"
    );
    assert_eq!(
        app.get_json("/api/v1/jobs?folder=b").await["jobs"][0]["name"],
        "app"
    );
    assert_eq!(
        app.get_json("/api/v1/jobs?folder=a").await["jobs"],
        json!([])
    );
    assert_eq!(
        app.get_json("/api/v1/jobs").await["jobs"][0]["definition"]["folder"],
        "b"
    );
    // Re-PUT with another folder moves it too; replacing answers 200.
    let r = app.put_job("app", job(json!({}))).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        app.get_json("/api/v1/folders").await["entries"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test]
async fn the_log_endpoint_pages_through_the_stored_output() {
    let app = TestApp::spawn().await;
    app.put_job("app", job(json!({}))).await;
    app.trigger("app").await;
    let dir = app.storage.path().join("jobs/app/1");
    std::fs::create_dir_all(&dir).unwrap();
    let line = |seq: u64, text: &str| {
        format!(
            "{}\n",
            json!({"seq": seq, "ts": "2026-11-30T00:00:00Z", "stream": "stdout", "attempt": 1, "line": text})
        )
    };
    std::fs::write(
        dir.join("log.jsonl"),
        format!("{}{}{{\"partial", line(1, "hello"), line(2, "world")),
    )
    .unwrap();
    let r = app
        .call(Method::GET, "/api/v1/jobs/app/builds/1/log", None)
        .await;
    assert_eq!(r.status(), 200);
    let next: u64 = r.headers()["x-kiln-log-next-offset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        r.headers()["x-kiln-log-more"],
        "true",
        "a queued build has more to come"
    );
    assert_eq!(r.text().await.unwrap(), "hello\nworld\n");
    let r = app
        .call(
            Method::GET,
            &format!("/api/v1/jobs/app/builds/1/log?offset={next}"),
            None,
        )
        .await;
    assert_eq!(
        r.text().await.unwrap(),
        "",
        "the partial line waits for its newline"
    );
    let r = app
        .call(
            Method::GET,
            "/api/v1/jobs/app/builds/1/log?format=jsonl",
            None,
        )
        .await;
    assert_eq!(r.text().await.unwrap().lines().count(), 2);
}

/// A build's archived files are listed and downloaded over the api; a path can name only
/// a regular file below the build's `artifacts/` folder.
#[tokio::test]
async fn artifacts_are_listed_and_downloaded_and_nothing_else_is_reachable() {
    let app = TestApp::spawn().await;
    app.put_job("app", job(json!({}))).await;
    app.trigger("app").await;
    let build = app.storage.path().join("jobs/app/1");
    let art = build.join("artifacts");
    std::fs::create_dir_all(art.join("dist/deep")).unwrap();
    std::fs::write(art.join("dist/app.tar.gz"), b"\x1f\x8b binary \x00 data").unwrap();
    std::fs::write(art.join("dist/deep/report with space.txt"), b"ok\n").unwrap();
    std::fs::write(art.join("dist/résumé \"1\".txt"), b"r").unwrap();
    std::fs::write(build.join("log.jsonl"), b"{}\n").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", art.join("dist/passwd")).unwrap();
    std::os::unix::fs::symlink(&build, art.join("up")).unwrap();

    let list = app.get_json("/api/v1/jobs/app/builds/1/artifacts").await;
    assert_eq!(
        list,
        json!({"artifacts": [
            {"path": "dist/app.tar.gz", "size": 16},
            {"path": "dist/deep/report with space.txt", "size": 3},
            {"path": "dist/résumé \"1\".txt", "size": 1},
        ]})
    );
    let r = app
        .call(
            Method::GET,
            "/api/v1/jobs/app/builds/1/artifacts/dist/app.tar.gz",
            None,
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert_eq!(r.headers()["content-length"], "16");
    assert!(r.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .contains("app.tar.gz"));
    assert_eq!(&r.bytes().await.unwrap()[..], b"\x1f\x8b binary \x00 data");
    let r = app
        .call(
            Method::GET,
            "/api/v1/jobs/app/builds/1/artifacts/dist/deep/report%20with%20space.txt",
            None,
        )
        .await;
    assert_eq!(r.text().await.unwrap(), "ok\n");
    let r = app
        .call(
            Method::GET,
            "/api/v1/jobs/app/builds/1/artifacts/dist/r%C3%A9sum%C3%A9%20%221%22.txt",
            None,
        )
        .await;
    assert_eq!(r.status(), 200, "a name beyond ASCII, with quotes");
    assert_eq!(r.text().await.unwrap(), "r");

    // `%2F` reaches the api as `/` in the path (`..` itself a client normalises away).
    for bad in [
        "..%2Flog.jsonl",
        "dist/..%2F..%2Flog.jsonl",
        "dist//app.tar.gz",
        "a%00b",
    ] {
        let path = format!("/api/v1/jobs/app/builds/1/artifacts/{bad}");
        let field = error_field(app.call(Method::GET, &path, None).await, 400).await;
        assert_eq!(field.as_deref(), Some("path"), "{bad}");
    }
    for missing in [
        "/api/v1/jobs/app/builds/1/artifacts/dist/passwd",
        "/api/v1/jobs/app/builds/1/artifacts/up/log.jsonl",
        "/api/v1/jobs/app/builds/1/artifacts/dist",
        "/api/v1/jobs/app/builds/1/artifacts/nope.txt",
        "/api/v1/jobs/app/builds/2/artifacts",
        "/api/v1/jobs/app/builds/2/artifacts/dist/app.tar.gz",
    ] {
        error_field(app.call(Method::GET, missing, None).await, 404).await;
    }
    app.trigger("app").await;
    assert_eq!(
        app.get_json("/api/v1/jobs/app/builds/2/artifacts").await,
        json!({"artifacts": []}),
        "a build that archived nothing yet has an empty list"
    );
}

#[tokio::test]
async fn every_documented_route_exists() {
    let app = TestApp::spawn().await;
    let doc = app.get_json("/api/v1/openapi.json").await;
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 12);
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            let concrete = path
                .replace("{name}", "x")
                .replace("{number}", "1")
                .replace("{key}", "jobs")
                .replace("{path}", "dist/a.tar.gz");
            let r = app
                .call(method.to_uppercase().parse().unwrap(), &concrete, None)
                .await;
            let status = r.status().as_u16();
            let body = r.text().await.unwrap();
            assert!(
                !body.contains("no route for"),
                "{method} {path} is documented but not routed"
            );
            assert!(status < 500, "{method} {path}: {status} {body}");
        }
    }
    let bogus = app.call(Method::GET, "/api/v1/nothing", None).await;
    assert!(bogus.text().await.unwrap().contains("no route for"));
}

/// A client that used the wrong method on a real path is told which methods it takes (405
/// with `Allow`), not that the path does not exist.
#[tokio::test]
async fn a_wrong_method_on_a_known_path_is_405_with_the_allowed_ones() {
    let app = TestApp::spawn().await;
    for (method, path, allowed) in [
        (Method::PATCH, "/api/v1/jobs/app", "GET, PUT, DELETE"),
        (Method::POST, "/api/v1/nodes", "GET"),
        (Method::DELETE, "/api/v1/jobs/app/builds/7", "GET"),
        (Method::GET, "/api/v1/jobs/app/builds/7/cancel", "POST"),
        (
            Method::DELETE,
            "/api/v1/jobs/app/builds/7/artifacts/dist/a.tar.gz",
            "GET",
        ),
    ] {
        let r = app.call(method.clone(), path, None).await;
        assert_eq!(r.status(), 405, "{method} {path}");
        let allow = r.headers()["allow"].to_str().unwrap().to_owned();
        let mut got: Vec<&str> = allow.split(", ").collect();
        let mut want: Vec<&str> = allowed.split(", ").collect();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want, "{method} {path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
    }
    for path in ["/api/v1/jobs/app/nope", "/api/v1/jobs//builds", "/api/v1"] {
        let r = app.call(Method::GET, path, None).await;
        assert_eq!(r.status(), 404, "{path}");
    }
}

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let app = TestApp::spawn().await;
    let ready = app.get_json("/readyz").await;
    assert_eq!(ready["ready"], true);
    assert!(ready["redis"]["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w.as_str().unwrap().contains("persistence")));
    app.put_job("app", job(json!({}))).await;
    app.trigger("app").await;
    let m = app
        .call(Method::GET, "/metrics", None)
        .await
        .text()
        .await
        .unwrap();
    assert!(m.contains("kiln_queue_depth{queue=\"default\"} 1"), "{m}");
    assert!(m.contains("kiln_downstream_backlog 0"), "{m}");
}

#[tokio::test]
async fn readiness_fails_when_redis_is_gone() {
    let mut app = TestApp::spawn().await;
    app.redis.stop();
    let r = app.call(Method::GET, "/readyz", None).await;
    assert_eq!(r.status(), 503);
    let r = app.call(Method::GET, "/api/v1/jobs/app", None).await;
    assert_eq!(r.status(), 503, "Redis down is 503, never 500");
}

#[tokio::test]
async fn github_links_point_at_existing_jobs() {
    let app = TestApp::spawn().await;
    app.put_job("app", job(json!({}))).await;
    let r = app
        .call(
            Method::PUT,
            "/api/v1/github/MyOrg/Repo.js/pullrequest",
            Some(json!({"job": "app"})),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        app.get_json("/api/v1/redis/github_myorg_repo.js_pullrequest")
            .await["value"],
        "job_app"
    );
    assert_eq!(
        app.get_json("/api/v1/github/myorg/repo.js/pullrequest")
            .await["job"],
        "app"
    );
    assert_eq!(
        app.get_json("/api/v1/github/links").await["links"][0]["key"],
        "github_myorg_repo.js_pullrequest"
    );
    let before = app.snapshot().await;
    let bad = [
        (
            "/api/v1/github/o/r/branch",
            json!({"job": "nope"}),
            422,
            "job",
        ),
        (
            "/api/v1/github/o/r/tags",
            json!({"job": "app"}),
            400,
            "kind",
        ),
        (
            "/api/v1/github/o%20x/r/branch",
            json!({"job": "app"}),
            400,
            "org",
        ),
        (
            "/api/v1/github/o/r/branch",
            json!({"job": "app_pr1"}),
            400,
            "job",
        ),
    ];
    for (path, body, status, field) in bad {
        let r = app.call(Method::PUT, path, Some(body)).await;
        assert_eq!(
            error_field(r, status).await.as_deref(),
            Some(field),
            "{path}"
        );
    }
    assert_eq!(app.snapshot().await, before);
    assert_eq!(
        app.call(
            Method::DELETE,
            "/api/v1/github/myorg/repo.js/pullrequest",
            None
        )
        .await
        .status(),
        204
    );
    assert_eq!(
        app.redis_type("github_myorg_repo.js_pullrequest").await,
        "none"
    );
    assert_eq!(
        app.get_json("/api/v1/github/links").await["links"],
        json!([])
    );
}

#[tokio::test]
async fn the_api_works_over_tls_to_redis() {
    let (redis, url) = kiln_testkit::RedisServer::start_tls();
    assert!(url.starts_with("rediss://"));
    let app = TestApp::spawn_with(redis, &url).await;
    assert_eq!(app.put_job("app", job(json!({}))).await.status(), 201);
    assert_eq!(app.trigger("app").await.status(), 201);
    assert_eq!(
        app.get_json("/api/v1/jobs/app/builds/1").await["status"],
        "queued"
    );
    assert_eq!(app.get_json("/readyz").await["ready"], true);
}

/// Secrets are set, replaced, listed and deleted without any answer carrying a value; a bad
/// name or value, or a reader, changes nothing.
#[tokio::test]
async fn secrets_are_kept_and_listed_by_name_only() {
    let app = TestApp::spawn().await;
    let put = |name: &'static str, body: Value, token: &'static str| {
        app.request(Method::PUT, &format!("/api/v1/secrets/{name}"), Some(token))
            .json(&body)
            .send()
    };
    let r = put("DEPLOY_TOKEN", json!({"value": "first-value"}), WRITER)
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = put("DEPLOY_TOKEN", json!({"value": "second-value"}), ADMIN)
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "replaced");
    assert!(!r.text().await.unwrap().contains("second-value"));

    let before = app.snapshot().await;
    for (name, body, token, status, field) in [
        (
            "bad-name",
            json!({"value": "abcdef"}),
            WRITER,
            400,
            Some("name"),
        ),
        (
            "KILN_X",
            json!({"value": "abcdef"}),
            WRITER,
            400,
            Some("name"),
        ),
        ("SHORT", json!({"value": "abc"}), WRITER, 400, Some("value")),
        (
            "NUL",
            json!({"value": "ab\u{0}cd"}),
            WRITER,
            400,
            Some("value"),
        ),
        (
            "EXTRA",
            json!({"value": "abcdef", "x": 1}),
            WRITER,
            400,
            Some("x"),
        ),
        ("READER", json!({"value": "abcdef"}), READER, 403, None),
    ] {
        let got = error_field(put(name, body, token).await.unwrap(), status).await;
        assert_eq!(got.as_deref(), field, "{name}");
    }
    assert_eq!(
        app.snapshot().await,
        before,
        "refused requests change nothing"
    );

    let list = app.get_json("/api/v1/secrets").await;
    assert_eq!(list["secrets"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["secrets"][0]["name"], "DEPLOY_TOKEN");
    assert_eq!(
        list["secrets"][0]["updated_by"], "root",
        "the admin token's name"
    );
    assert!(list["secrets"][0]["updated_at"].is_string());
    assert!(!list.to_string().contains("-value"), "{list}");
    let raw = app
        .request(Method::GET, "/api/v1/redis/kiln:secrets", Some(ADMIN))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 403);
    assert!(!raw.text().await.unwrap().contains("-value"));

    let delete = |token| {
        app.request(Method::DELETE, "/api/v1/secrets/DEPLOY_TOKEN", Some(token))
            .send()
    };
    assert_eq!(delete(READER).await.unwrap().status(), 403);
    assert_eq!(delete(WRITER).await.unwrap().status(), 204);
    assert_eq!(delete(WRITER).await.unwrap().status(), 404);
    assert_eq!(app.redis_type("kiln:secrets").await, "none");
}
