//! The services under test: the release binaries as child processes around a private
//! redis-server, killed when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use kiln_testkit::{free_port, RedisServer};
use serde_json::Value;

pub(crate) const TOKEN: &str = "bench-admin-token-0123456789";

fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::var_os("KILN_BIN_DIR")
        .map_or_else(|| PathBuf::from("target/release"), PathBuf::from);
    let p = dir.join(name);
    if !p.exists() {
        bail!(
            "{} is missing: run `cargo build --release --bins` (make bench does)",
            p.display()
        );
    }
    Ok(p)
}

pub(crate) struct Service {
    name: String,
    child: Child,
    pub(crate) port: u16,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) struct Cluster {
    pub(crate) redis: RedisServer,
    pub(crate) storage: PathBuf,
    _dir: tempdir::Dir,
    services: Vec<Service>,
    pub(crate) api: u16,
    pub(crate) http: reqwest::Client,
}

mod tempdir {
    /// A scratch folder removed on drop.
    pub(crate) struct Dir(pub(crate) std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Cluster {
    /// Redis and the api; workers and the gateway are added per figure.
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let redis = RedisServer::start();
        let dir = std::env::temp_dir().join(format!("kiln-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let storage = dir.join("storage");
        let mut c = Self {
            redis,
            storage,
            _dir: tempdir::Dir(dir),
            services: Vec::new(),
            api: 0,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(128)
                .build()?,
        };
        c.api = c.spawn("kiln-api", &[]).await?;
        Ok(c)
    }

    /// Starts a service binary and waits for its `/healthz`; returns its port.
    pub(crate) async fn spawn(
        &mut self,
        name: &str,
        env: &[(&str, String)],
    ) -> anyhow::Result<u16> {
        let port = free_port();
        let mut cmd = Command::new(bin(name)?);
        cmd.env("KILN_HTTP__BIND", format!("127.0.0.1:{port}"))
            .env("KILN_REDIS__URL", self.redis.url())
            .env("KILN_STORAGE__ROOT", &self.storage)
            .env("KILN_AUTH__TOKENS", format!("bench:admin:{TOKEN}"))
            .env("KILN_WORKER__WORKSPACE_ROOT", self.storage.join("work"))
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        // Diagnosis: `KILN_BENCH_LOG_DIR` keeps each service's log (at info) in a file.
        match std::env::var_os("KILN_BENCH_LOG_DIR") {
            Some(dir) => {
                let dir = PathBuf::from(dir);
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                let path = dir.join(format!("{name}-{port}.log"));
                let log = std::fs::File::create(&path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                cmd.env("KILN_LOG__LEVEL", "info").stderr(log);
            }
            None => {
                cmd.env("KILN_LOG__LEVEL", "warn").stderr(Stdio::null());
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        self.services.push(Service {
            name: name.to_owned(),
            child,
            port,
        });
        for _ in 0..500 {
            if let Ok(r) = self
                .http
                .get(format!("http://127.0.0.1:{port}/healthz"))
                .send()
                .await
            {
                if r.status().is_success() {
                    return Ok(port);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("{name} did not become healthy")
    }

    /// Stops every service but the api (between figures).
    pub(crate) fn stop_extras(&mut self) {
        let api = self.api;
        self.services.retain(|s| s.port == api);
    }

    pub(crate) async fn workers(&mut self, n: usize, concurrency: usize) -> anyhow::Result<()> {
        for i in 0..n {
            self.spawn(
                "kiln-worker",
                &[
                    ("KILN_WORKER__ID", format!("bench-{i}")),
                    ("KILN_WORKER__CONCURRENCY", concurrency.to_string()),
                ],
            )
            .await?;
        }
        Ok(())
    }

    /// The process ids of the running services started from binary `name`.
    pub(crate) fn pids(&self, name: &str) -> Vec<u32> {
        self.services
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.child.id())
            .collect()
    }

    /// Field `field` of the bench's redis-server's `INFO <section>`.
    pub(crate) async fn info<T: std::str::FromStr>(
        &self,
        section: &str,
        field: &str,
    ) -> anyhow::Result<T> {
        let mut conn = self.redis().await?;
        let info: String = deadpool_redis::redis::cmd("INFO")
            .arg(section)
            .query_async(&mut conn)
            .await?;
        info.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("INFO {section} has no {field}"))
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.api)
    }

    pub(crate) async fn apply(&self, name: &str, def: Value) -> anyhow::Result<()> {
        let r = self
            .http
            .put(self.url(&format!("/api/v1/jobs/{name}")))
            .bearer_auth(TOKEN)
            .json(&def)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("apply {name}: {}", r.text().await?);
        }
        Ok(())
    }

    pub(crate) async fn trigger(&self, job: &str) -> anyhow::Result<u64> {
        let r = self
            .http
            .post(self.url(&format!("/api/v1/jobs/{job}/builds")))
            .bearer_auth(TOKEN)
            .send()
            .await?;
        let v: Value = r.json().await?;
        v["number"].as_u64().context("no build number")
    }

    pub(crate) async fn build(&self, job: &str, n: u64) -> anyhow::Result<Value> {
        Ok(self
            .http
            .get(self.url(&format!("/api/v1/jobs/{job}/builds/{n}")))
            .bearer_auth(TOKEN)
            .send()
            .await?
            .json()
            .await?)
    }

    pub(crate) async fn redis(&self) -> anyhow::Result<deadpool_redis::Connection> {
        Ok(self.redis.pool().get().await?)
    }
}
