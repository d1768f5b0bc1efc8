//! The `kiln` CLI against real services: apply, start --follow (over the gateway and over
//! the api's log offsets), cancel, artifacts, secrets, pins, workers, exit codes.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{bin, Cluster, WorkerOpts, TOKEN};

const T: Duration = Duration::from_secs(30);

fn kiln(c: &Cluster, gateway: Option<&str>, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(bin("kiln"));
    cmd.args(args)
        .env("KILN_URL", c.url(""))
        .env("KILN_TOKEN", TOKEN)
        .env_remove("KILN_GATEWAY_URL");
    if let Some(g) = gateway {
        cmd.env("KILN_GATEWAY_URL", g);
    }
    cmd.output().expect("kiln runs")
}

#[tokio::test]
async fn follow_prints_the_output_and_exits_with_the_build_result() {
    let c = Cluster::start().await;
    let _w = c.worker(WorkerOpts::new("w1")).await;
    let (_g, gw) = c.gateway().await;
    let dir = tempfile::tempdir().unwrap();
    let ok = dir.path().join("ok.toml");
    std::fs::write(&ok, "name = \"ok\"\n[[steps]]\nname = \"s\"\nrun = \"for i in 1 2 3; do echo out-$i; sleep 0.1; done\"\n").unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"name": "bad", "steps": [{"name": "s", "run": "echo failing; exit 4"}]}"#,
    )
    .unwrap();

    for f in [&ok, &bad] {
        let out = kiln(&c, None, &["job", "apply", "-f", f.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for gateway in [Some(gw.as_str()), None] {
        let out = kiln(&c, gateway, &["build", "start", "ok", "--follow"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{stdout}");
        assert!(stdout.contains("out-1\nout-2\nout-3\n"), "{stdout}");
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("failed"),
            "gateway used: {gateway:?}"
        );
        let out = kiln(&c, gateway, &["build", "start", "bad", "--follow"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stdout).contains("failing"));
    }
    let out = kiln(&c, None, &["build", "list", "ok"]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert_eq!(listing.lines().count(), 2);
    assert!(
        listing.lines().all(|l| l.ends_with("api by tests")),
        "{listing}"
    );
    let out = kiln(&c, None, &["build", "show", "bad", "1"]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.starts_with("bad #1  failure\n")
            && shown.contains("reason:    step 's' failed with exit code 4")
            && shown.contains("trigger:   api by tests"),
        "{shown}"
    );
    let out = kiln(&c, None, &["build", "rebuild", "bad", "1", "--follow"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the rebuild fails as its build did"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("started bad #3"));
    c.apply("slow", support::job(&["echo started; sleep 60"]))
        .await;
    let n = c.trigger("slow").await;
    c.wait_log_contains("slow", n, "started", T).await;
    let out = kiln(&c, None, &["build", "cancel", "slow", &n.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.wait_status("slow", n, "cancelled", T).await;
    let out = kiln(&c, None, &["build", "cancel", "slow", &n.to_string()]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a finished build cannot be cancelled"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("409"));
    let out = kiln(&c, None, &["build", "log", "ok", "1"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("out-3"));
    let mut nightly = support::job(&["true"]);
    nightly["schedule"] = serde_json::json!("0 3 * * *");
    nightly["concurrency"] = serde_json::json!(1);
    nightly["disabled"] = serde_json::json!(true);
    nightly["downstream"] = serde_json::json!([{"job": "ok"}, {"job": "slow", "on": ["failure"]}]);
    c.apply("nightly", nightly).await;
    let out = kiln(&c, None, &["job", "list"]);
    let listing = String::from_utf8_lossy(&out.stdout);
    let line = listing
        .lines()
        .find(|l| l.starts_with("nightly "))
        .unwrap_or_else(|| panic!("{listing}"));
    assert!(
        line.ends_with("disabled, schedule '0 3 * * *', concurrency 1, then ok slow"),
        "{line}"
    );
    let out = kiln(&c, None, &["job", "show", "nightly"]);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["schedule"], "0 3 * * *");
    let out = kiln(&c, None, &["job", "show", "ghost"]);
    assert_eq!(out.status.code(), Some(2), "a job that does not exist");
    let out = kiln(&c, None, &["job", "apply", "-f", "/nonexistent.toml"]);
    assert_eq!(out.status.code(), Some(2));
    let bad_def = dir.path().join("typo.toml");
    std::fs::write(
        &bad_def,
        "name = \"t\"\n[[step]]\nname = \"s\"\nrun = \"true\"\n",
    )
    .unwrap();
    let out = kiln(&c, None, &["job", "apply", "-f", bad_def.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("step"),
        "the api's error names the field"
    );
}

#[tokio::test]
async fn a_builds_artifacts_are_listed_and_downloaded() {
    let c = Cluster::start().await;
    let _w = c.worker(WorkerOpts::new("w1")).await;
    let dir = tempfile::tempdir().unwrap();
    let def = dir.path().join("art.toml");
    std::fs::write(
        &def,
        "name = \"art\"\nartifacts = [\"dist/**/*\"]\n[[steps]]\nname = \"s\"\n\
         run = \"mkdir -p 'dist/sub dir' && head -c 300000 /dev/urandom > dist/app.bin && echo hi > 'dist/sub dir/note #1.txt'\"\n",
    )
    .unwrap();
    let out = kiln(&c, None, &["job", "apply", "-f", def.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kiln(&c, None, &["build", "start", "art", "--follow"]);
    assert_eq!(out.status.code(), Some(0));

    let out = kiln(&c, None, &["build", "artifacts", "art", "1"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<Vec<&str>> = listed
        .lines()
        .map(|l| l.trim().splitn(2, "  ").map(str::trim).collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec!["300000", "dist/app.bin"],
            vec!["3", "dist/sub dir/note #1.txt"]
        ],
        "{listed}"
    );

    let stored = std::fs::read(c.build_dir("art", 1).join("artifacts/dist/app.bin")).unwrap();
    let download =
        |path: &str, to: &str| kiln(&c, None, &["build", "download", "art", "1", path, "-o", to]);
    let into = dir.path().join("got.bin");
    let out = download("dist/app.bin", into.to_str().unwrap());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(&into).unwrap(),
        stored,
        "the bytes the build archived"
    );
    let out = download("dist/sub dir/note #1.txt", "-");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");

    let missing = dir.path().join("missing.bin");
    let out = download("dist/nope.bin", missing.to_str().unwrap());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!missing.exists(), "no file is left for a failed download");
}

#[tokio::test]
async fn a_secret_is_set_from_standard_input_used_listed_and_deleted() {
    use std::io::Write;
    use std::process::Stdio;
    let c = Cluster::start().await;
    let _w = c.worker(WorkerOpts::new("w1")).await;
    let value = "from-stdin-Zq81";
    let mut set = Command::new(bin("kiln"))
        .args(["secret", "set", "API_KEY"])
        .env("KILN_URL", c.url(""))
        .env("KILN_TOKEN", TOKEN)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(set.stdin.take().unwrap(), "{value}").unwrap();
    let out = set.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The step sees the value without the newline `echo` added, and prints it masked.
    let mut def = support::job(&[&format!(
        "[ \"${{#API_KEY}}\" = {} ] && echo key=$API_KEY",
        value.len()
    )]);
    def["secrets"] = serde_json::json!(["API_KEY"]);
    c.apply("uses-key", def).await;
    let n = c.trigger("uses-key").await;
    c.wait_status("uses-key", n, "success", T).await;
    let out = kiln(&c, None, &["build", "log", "uses-key", &n.to_string()]);
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(log.contains("key=***") && !log.contains(value), "{log}");

    let out = kiln(&c, None, &["secret", "list"]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.starts_with("API_KEY "), "{listing}");
    assert!(!listing.contains(value));
    let out = kiln(&c, None, &["secret", "delete", "API_KEY"]);
    assert!(out.status.success());
    let out = kiln(&c, None, &["secret", "delete", "API_KEY"]);
    assert_eq!(out.status.code(), Some(2), "gone");
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));
}

/// This session's commands, as the README shows them: pin a build, list and pause workers.
#[tokio::test]
async fn keep_and_node_commands_reach_the_api() {
    let c = Cluster::start().await;
    let _w = c.worker(WorkerOpts::new("w1")).await;
    c.apply("app", support::job(&["true"])).await;
    let n = c.trigger("app").await;
    c.wait_status("app", n, "success", T).await;
    let n = n.to_string();
    let out = kiln(
        &c,
        None,
        &["build", "keep", "app", &n, "--reason", "release"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b = c.build("app", n.parse().unwrap()).await;
    assert_eq!(b["keep"]["reason"], "release", "{b}");
    let shown = kiln(&c, None, &["build", "list", "app"]);
    assert!(String::from_utf8_lossy(&shown.stdout).contains(", kept"));
    assert!(kiln(&c, None, &["build", "unkeep", "app", &n])
        .status
        .success());
    assert!(c
        .build("app", n.parse().unwrap())
        .await
        .get("keep")
        .is_none());

    let out = kiln(&c, None, &["node", "pause", "w1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = kiln_testkit::wait_for("w1 listed as paused", T, || async {
        let out = kiln(&c, None, &["node", "list"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split_whitespace()
            .collect::<Vec<_>>()
            .windows(3)
            .any(|w| w == ["w1", "default", "paused"])
            .then_some(text)
    })
    .await;
    assert!(listed.contains("0/1"), "{listed}");
    assert!(kiln(&c, None, &["node", "resume", "w1"]).status.success());
    assert!(!kiln(&c, None, &["node", "pause", "nobody"])
        .status
        .success());
}

#[tokio::test]
async fn a_matrix_is_followed_cell_by_cell_and_exits_with_its_result() {
    let c = Cluster::start().await;
    let mut w = WorkerOpts::new("w1");
    w.concurrency = 2;
    let _w = c.worker(w).await;
    let (_g, gw) = c.gateway().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.toml");
    std::fs::write(
        &file,
        "name = \"m\"\n[[steps]]\nname = \"s\"\nrun = \"echo on-$OS; [ $OS != mac ]\"\n[matrix.axes]\nOS = [\"linux\", \"mac\"]\n",
    )
    .unwrap();
    let out = kiln(&c, None, &["job", "apply", "-f", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kiln(&c, None, &["job", "history", "m"]);
    let history = String::from_utf8_lossy(&out.stdout);
    assert!(
        history.starts_with("#1 ") && history.trim_end().ends_with("by tests"),
        "{history}"
    );
    let out = kiln(&c, None, &["job", "history", "m", "--revision", "1"]);
    let def: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        def["matrix"]["axes"]["OS"],
        serde_json::json!(["linux", "mac"])
    );

    for gateway in [Some(gw.as_str()), None] {
        let out = kiln(&c, gateway, &["build", "start", "m", "--follow"]);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(out.status.code(), Some(1), "one cell failed: {stderr}");
        assert!(
            stdout.contains("on-linux") && stdout.contains("on-mac"),
            "{stdout}"
        );
        assert!(stderr.contains("a matrix of 2 builds"), "{stderr}");
    }
    let out = kiln(&c, None, &["build", "cancel", "m", "1", "--matrix"]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("no build of its matrix was queued or running"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kiln(&c, None, &["build", "matrix", "m", "1"]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.starts_with("m matrix #1: failure\n"), "{shown}");
    assert!(shown.contains("#2      failure    OS=mac"), "{shown}");
    let out = kiln(&c, None, &["build", "show", "m", "4"]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("matrix:    OS=mac (cell 2 of 2, matrix #3)"),
        "{shown}"
    );
    let out = kiln(&c, None, &["build", "list", "m"]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        listing
            .lines()
            .filter(|l| l.ends_with("[OS=linux]"))
            .count(),
        2,
        "{listing}"
    );
}

#[tokio::test]
async fn the_examples_apply_and_the_matrix_example_runs() {
    let c = Cluster::start().await;
    let mut w = WorkerOpts::new("w1");
    w.concurrency = 2;
    let _w = c.worker(w).await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut applied = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        let out = kiln(&c, None, &["job", "apply", "-f", path.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        applied += 1;
    }
    assert!(applied >= 2, "hello.toml and matrix.toml at least");
    let out = kiln(&c, None, &["build", "start", "matrix-demo", "--follow"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    for cell in [
        "linux with stable",
        "macos with nightly",
        "windows with stable",
    ] {
        assert!(stdout.contains(&format!("building for {cell}")), "{stdout}");
    }
    assert!(
        !stdout.contains("windows with nightly"),
        "excluded: {stdout}"
    );
}
