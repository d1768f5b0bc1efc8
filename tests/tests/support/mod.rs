//! A Kiln cluster of real binaries (api and workers as child processes) around a private
//! redis-server, with helpers that read like a user's actions.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kiln_testkit::{free_port, wait_for, RedisServer};
use serde_json::{json, Value};

pub const TOKEN: &str = "admin-token-for-tests-0123";
pub const WEBHOOK_SECRET: &str = "webhook-secret-for-tests";
pub const PERSISTENT: &[&str] = &["--appendonly", "yes", "--appendfsync", "always"];

/// Where the workspace's binaries are: `KILN_BIN_DIR`, else the target directory this test
/// binary was built into.
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("KILN_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().expect("test binary path");
            exe.parent()
                .and_then(Path::parent)
                .expect("target dir")
                .to_path_buf()
        });
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (make test does)",
        p.display()
    );
    p
}

/// A running service binary, killed when dropped.
pub struct Proc {
    pub child: Child,
    pub port: u16,
    pub name: String,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: the process dies at once, as in an OOM kill.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM: a graceful stop.
    pub fn terminate(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill command");
        assert!(ok.success());
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the process to exit by itself and returns its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let name = self.name.clone();
        wait_for(&format!("{name} to exit"), timeout, || {
            let r = self.child.try_wait();
            async move { r.ok().flatten().map(|s| s.code()) }
        })
        .await
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Cluster {
    pub redis: RedisServer,
    /// The URL the services are given (the server's own, or a Sentinel URL).
    pub redis_url: String,
    pub storage: tempfile::TempDir,
    pub work: tempfile::TempDir,
    pub api: Proc,
    pub client: reqwest::Client,
    logs: Logs,
}

/// Where the services' stderr goes: a temporary folder, or a kept one.
pub enum Logs {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl From<tempfile::TempDir> for Logs {
    fn from(t: tempfile::TempDir) -> Self {
        Logs::Temp(t)
    }
}

impl From<PathBuf> for Logs {
    fn from(p: PathBuf) -> Self {
        Logs::Kept(p)
    }
}

impl Logs {
    fn path(&self) -> &Path {
        match self {
            Logs::Temp(t) => t.path(),
            Logs::Kept(p) => p,
        }
    }
}

/// Worker settings used by tests: short leases so recovery is quick.
pub struct WorkerOpts {
    pub id: String,
    pub concurrency: u32,
    pub lease_ms: u64,
    pub grace_secs: u64,
    pub queue: String,
    /// `worker.start_linger_ms`; the worker's default when `None`.
    pub start_linger_ms: Option<u64>,
    /// `worker.max_log_bytes`; the worker's default when `None`.
    pub max_log_bytes: Option<u64>,
    /// More settings, as environment variables.
    pub env: Vec<(&'static str, String)>,
}

impl WorkerOpts {
    pub fn new(id: &str) -> Self {
        Self {
            id: id.into(),
            concurrency: 1,
            lease_ms: 1500,
            grace_secs: 10,
            queue: "default".into(),
            start_linger_ms: None,
            max_log_bytes: None,
            env: Vec::new(),
        }
    }
}

impl Cluster {
    pub async fn start() -> Self {
        Self::start_on(RedisServer::start()).await
    }

    /// A cluster whose Redis keeps its data across a restart (AOF, fsync always).
    pub async fn start_persistent() -> Self {
        Self::start_on(RedisServer::start_with(PERSISTENT)).await
    }

    async fn start_on(redis: RedisServer) -> Self {
        let url = redis.url();
        Self::start_with_url(redis, url).await
    }

    /// A cluster whose services reach `redis` through `url` (e.g. a Sentinel).
    pub async fn start_with_url(redis: RedisServer, url: String) -> Self {
        let storage = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        // KILN_TEST_LOG_DIR keeps the services' logs for a failing test to be read.
        let logs: Logs = match std::env::var_os("KILN_TEST_LOG_DIR") {
            Some(d) => {
                std::fs::create_dir_all(&d).unwrap();
                tempfile::tempdir_in(d).unwrap().keep().into()
            }
            None => tempfile::tempdir().unwrap().into(),
        };
        let api = spawn_api(&url, storage.path(), logs.path(), &[]);
        let c = Self {
            redis,
            redis_url: url,
            storage,
            work,
            api,
            client: reqwest::Client::new(),
            logs,
        };
        c.wait_healthy(c.api.port).await;
        c
    }

    /// Starts the api again (on another port) after a test killed it.
    pub async fn restart_api(&mut self) {
        self.restart_api_with(&[]).await;
    }

    /// Starts the api again with more settings, as environment variables.
    pub async fn restart_api_with(&mut self, env: &[(&'static str, String)]) {
        self.api.kill();
        self.api = spawn_api(&self.redis_url, self.storage.path(), self.logs.path(), env);
        self.wait_healthy(self.api.port).await;
    }

    async fn wait_healthy(&self, port: u16) {
        let client = self.client.clone();
        wait_for("service /healthz", Duration::from_secs(20), || {
            let client = client.clone();
            async move {
                let r = client
                    .get(format!("http://127.0.0.1:{port}/healthz"))
                    .send()
                    .await
                    .ok()?;
                r.status().is_success().then_some(())
            }
        })
        .await;
    }

    pub fn redis_url(&self) -> String {
        self.redis_url.clone()
    }

    pub async fn worker(&self, opts: WorkerOpts) -> Proc {
        let p = self.spawn_worker(opts);
        self.wait_healthy(p.port).await;
        p
    }

    /// A worker process, not waited for: one that may be gone before it would answer
    /// `/healthz` (an ephemeral worker with quick builds).
    pub fn spawn_worker(&self, opts: WorkerOpts) -> Proc {
        let port = free_port();
        let mut env = vec![
            ("KILN_REDIS__URL", self.redis_url.clone()),
            (
                "KILN_STORAGE__ROOT",
                self.storage.path().display().to_string(),
            ),
            ("KILN_WORKER__ID", opts.id.clone()),
            ("KILN_WORKER__QUEUE", opts.queue.clone()),
            ("KILN_WORKER__CONCURRENCY", opts.concurrency.to_string()),
            ("KILN_WORKER__LEASE_MS", opts.lease_ms.to_string()),
            ("KILN_WORKER__RENEW_MS", (opts.lease_ms / 5).to_string()),
            ("KILN_WORKER__REAP_MS", (opts.lease_ms / 5).to_string()),
            ("KILN_WORKER__CLAIM_BLOCK_MS", "1000".into()),
            (
                "KILN_WORKER__SHUTDOWN_GRACE_SECS",
                opts.grace_secs.to_string(),
            ),
            (
                "KILN_WORKER__WORKSPACE_ROOT",
                self.work.path().display().to_string(),
            ),
        ];
        if let Some(ms) = opts.start_linger_ms {
            env.push(("KILN_WORKER__START_LINGER_MS", ms.to_string()));
        }
        if let Some(n) = opts.max_log_bytes {
            env.push(("KILN_WORKER__MAX_LOG_BYTES", n.to_string()));
        }
        env.extend(opts.env.iter().cloned());
        spawn("kiln-worker", port, &env, self.logs.path())
    }

    /// Starts a stream gateway; returns it with its `ws://` base URL.
    pub async fn gateway(&self) -> (Proc, String) {
        // Generous: on a loaded 2-core CI machine a healthy client may lag a few seconds.
        self.gateway_with_send_timeout_ms(10_000).await
    }

    /// A gateway that cuts off a client which accepts no frame for `ms`.
    pub async fn gateway_with_send_timeout_ms(&self, ms: u64) -> (Proc, String) {
        let port = free_port();
        let p = spawn(
            "kiln-stream-gateway",
            port,
            &[
                ("KILN_REDIS__URL", self.redis_url.clone()),
                (
                    "KILN_STORAGE__ROOT",
                    self.storage.path().display().to_string(),
                ),
                ("KILN_AUTH__TOKENS", format!("tests:admin:{TOKEN}")),
                ("KILN_GATEWAY__PING_SECS", "1".into()),
                ("KILN_GATEWAY__CLIENT_TIMEOUT_SECS", "20".into()),
                ("KILN_GATEWAY__SEND_TIMEOUT_MS", ms.to_string()),
            ],
            self.logs.path(),
        );
        self.wait_healthy(port).await;
        (p, format!("ws://127.0.0.1:{port}"))
    }

    /// Starts github-ingest with `WEBHOOK_SECRET`, posting statuses to `github_api`.
    pub async fn ingest(&self, github_api: &str, extra: &[(&str, &str)]) -> (Proc, String) {
        let port = free_port();
        let mut env = vec![
            ("KILN_REDIS__URL", self.redis_url.clone()),
            (
                "KILN_STORAGE__ROOT",
                self.storage.path().display().to_string(),
            ),
            ("KILN_GITHUB__WEBHOOK_SECRET", WEBHOOK_SECRET.to_owned()),
            ("KILN_GITHUB__TOKEN", "ghp_test_token".to_owned()),
            ("KILN_GITHUB__API_URL", github_api.to_owned()),
            ("KILN_GITHUB__PUBLIC_URL", self.url("")),
        ];
        env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let p = spawn("kiln-github-ingest", port, &env, self.logs.path());
        self.wait_healthy(port).await;
        (p, format!("http://127.0.0.1:{port}"))
    }

    /// Everything the processes of `bin_name` (`kiln-api`, ...) wrote to their logs so far.
    pub fn logs_of(&self, bin_name: &str) -> String {
        let mut all = String::new();
        for e in std::fs::read_dir(self.logs.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{bin_name}-"))
            {
                all.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
        all
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.api.port)
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut r = self
            .client
            .request(method, self.url(path))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            r = r.json(&b);
        }
        r.send().await.expect("api reachable")
    }

    pub async fn apply(&self, name: &str, def: Value) {
        let r = self
            .call(
                reqwest::Method::PUT,
                &format!("/api/v1/jobs/{name}"),
                Some(def),
            )
            .await;
        assert!(
            r.status().is_success(),
            "apply {name}: {}",
            r.text().await.unwrap()
        );
    }

    pub async fn trigger_with(&self, job: &str, body: Value) -> u64 {
        let r = self
            .call(
                reqwest::Method::POST,
                &format!("/api/v1/jobs/{job}/builds"),
                Some(body),
            )
            .await;
        assert_eq!(r.status(), 201);
        let v: Value = r.json().await.unwrap();
        v["number"].as_u64().unwrap()
    }

    pub async fn trigger(&self, job: &str) -> u64 {
        self.trigger_with(job, json!({})).await
    }

    /// GETs an api path and returns its JSON body.
    pub async fn get_json(&self, path: &str) -> Value {
        self.call(reqwest::Method::GET, path, None)
            .await
            .json()
            .await
            .unwrap()
    }

    /// Asks the api to cancel a build.
    pub async fn cancel(&self, job: &str, n: u64) -> reqwest::Response {
        self.call(
            reqwest::Method::POST,
            &format!("/api/v1/jobs/{job}/builds/{n}/cancel"),
            None,
        )
        .await
    }

    pub async fn build(&self, job: &str, n: u64) -> Value {
        self.get_json(&format!("/api/v1/jobs/{job}/builds/{n}"))
            .await
    }

    /// Polls until the build has `status`, failing fast if it ends in another final one.
    pub async fn wait_status(&self, job: &str, n: u64, status: &str, timeout: Duration) -> Value {
        wait_for(&format!("{job}#{n} to be {status}"), timeout, || async {
            let b = self.build(job, n).await;
            let s = b["status"].as_str().unwrap_or_default().to_owned();
            if s == status {
                return Some(b);
            }
            let final_states = [
                "success",
                "failure",
                "cancelled",
                "timed_out",
                "lost",
                "error",
            ];
            assert!(
                !final_states.contains(&s.as_str()) || status == "running",
                "{job}#{n} ended {s}, expected {status}: {b}"
            );
            None
        })
        .await
    }

    pub async fn log(&self, job: &str, n: u64) -> String {
        self.call(
            reqwest::Method::GET,
            &format!("/api/v1/jobs/{job}/builds/{n}/log"),
            None,
        )
        .await
        .text()
        .await
        .unwrap()
    }

    pub async fn wait_log_contains(&self, job: &str, n: u64, needle: &str, timeout: Duration) {
        wait_for(
            &format!("{needle:?} in the log of {job}#{n}"),
            timeout,
            || async { self.log(job, n).await.contains(needle).then_some(()) },
        )
        .await
    }

    pub fn build_dir(&self, job: &str, n: u64) -> PathBuf {
        self.storage
            .path()
            .join("jobs")
            .join(job)
            .join(n.to_string())
    }
}

fn spawn_api(
    redis_url: &str,
    storage: &Path,
    logs: &Path,
    extra: &[(&'static str, String)],
) -> Proc {
    let mut env = vec![
        ("KILN_REDIS__URL", redis_url.to_owned()),
        ("KILN_STORAGE__ROOT", storage.display().to_string()),
        ("KILN_AUTH__TOKENS", format!("tests:admin:{TOKEN}")),
        ("KILN_API__WORKERS", "1".into()),
    ];
    env.extend(extra.iter().cloned());
    spawn("kiln-api", free_port(), &env, logs)
}

fn spawn(bin_name: &str, port: u16, env: &[(&str, String)], logs: &Path) -> Proc {
    let log = std::fs::File::create(logs.join(format!("{bin_name}-{port}.log"))).unwrap();
    let mut cmd = Command::new(bin(bin_name));
    cmd.env("KILN_HTTP__BIND", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc {
        child: cmd.spawn().expect("spawn service binary"),
        port,
        name: bin_name.into(),
    }
}

/// A step-only job definition.
pub fn job(steps: &[&str]) -> Value {
    json!({
        "steps": steps.iter().enumerate().map(|(i, s)| json!({"name": format!("step{}", i + 1), "run": s})).collect::<Vec<_>>()
    })
}

/// True while a process with this pid exists.
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.split_whitespace().nth(2) == Some("Z"))
            .unwrap_or(true)
}

/// An OpenSearch-compatible server (`osmem-server` from PyPI) of the test's own, killed on
/// drop. A missing server fails the test loudly (`pip install osmem-server`).
pub struct SearchServer {
    child: Child,
    pub url: String,
    port: u16,
}

fn osmem_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("OSMEM_SERVER") {
        return PathBuf::from(p);
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "from osmem_server import resolve_binary; print(resolve_binary())",
        ])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "osmem-server is missing: `pip install osmem-server` (or set OSMEM_SERVER)"
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

impl SearchServer {
    pub fn start() -> Self {
        Self::start_on(0)
    }

    /// Starts on `port` (0: any free one) and waits for its URL.
    pub fn start_on(port: u16) -> Self {
        use std::io::BufRead;
        let mut child = Command::new(osmem_binary())
            .args([
                "--addr",
                &format!("127.0.0.1:{port}"),
                "--no-stdin-watch",
                "--no-ja",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("osmem-server starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("osmem-server prints its URL");
        let v: Value = serde_json::from_str(&line).expect("osmem-server's JSON line");
        let url = v["url"].as_str().expect("url").to_owned();
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        Self { child, url, port }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SearchServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Cluster {
    /// Starts an es-indexer against `search_url`.
    pub async fn indexer(&self, search_url: &str) -> Proc {
        let port = free_port();
        let p = spawn(
            "kiln-es-indexer",
            port,
            &[
                ("KILN_REDIS__URL", self.redis_url.clone()),
                ("KILN_ELASTICSEARCH__URL", search_url.to_owned()),
                ("KILN_ELASTICSEARCH__BATCH_WAIT_MS", "50".into()),
                ("KILN_ELASTICSEARCH__MAX_BACKOFF_MS", "500".into()),
            ],
            self.logs.path(),
        );
        self.wait_healthy(port).await;
        p
    }
}

/// Runs git in `dir` with a fixed identity; returns its trimmed stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Every command Redis executes, as `MONITOR` reports it, from when it is started.
pub struct Monitor {
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Monitor {
    pub async fn start(redis_url: &str) -> Self {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let addr = redis_url.trim_start_matches("redis://");
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"MONITOR\r\n").await.unwrap();
        let mut lines = tokio::io::BufReader::new(conn).lines();
        assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("+OK"));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let into = seen.clone();
        let reader = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                into.lock().unwrap().push(line);
            }
        });
        Self { seen, reader }
    }

    /// Polls until a command matching `until` was seen; returns everything seen so far.
    pub async fn wait_for(&self, timeout: Duration, until: impl Fn(&str) -> bool) -> Vec<String> {
        wait_for("a command on the monitor", timeout, || async {
            let seen = self.seen.lock().unwrap().clone();
            seen.iter().any(|l| until(l)).then_some(seen)
        })
        .await
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.reader.abort();
    }
}
