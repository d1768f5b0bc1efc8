//! The `kiln` CLI against real services: apply, start --follow (over the gateway and over
//! the api's log offsets), exit codes.

mod support;

use std::process::Command;

use support::{bin, Cluster, WorkerOpts, TOKEN};

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
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    let out = kiln(&c, None, &["build", "log", "ok", "1"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("out-3"));
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
