//! Starts the api in-process on port 0 against a private redis-server.

use std::path::PathBuf;

use kiln_api::{ApiConfig, Application};
use kiln_testkit::RedisServer;
use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub(crate) const ADMIN: &str = "admin-token-0123456789";
pub(crate) const WRITER: &str = "write-token-0123456789";
pub(crate) const READER: &str = "read-token-01234567890";
/// A write token limited to the folder `team-a`.
pub(crate) const TEAM_A: &str = "team-a-token-0123456789";

pub(crate) struct TestApp {
    pub(crate) redis: RedisServer,
    pub(crate) storage: tempfile::TempDir,
    api: Instance,
}

/// One running api process: a deployment may run several on the same Redis.
pub(crate) struct Instance {
    base: String,
    client: reqwest::Client,
    shutdown: CancellationToken,
}

impl Instance {
    async fn start(redis_url: &str, storage: PathBuf) -> Self {
        Self::start_with(config(redis_url, storage)).await
    }

    async fn start_with(config: ApiConfig) -> Self {
        let app = Application::build(config).await.expect("api builds");
        let base = format!("http://{}", app.addr());
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        tokio::spawn(async move { app.run_until_stopped(s).await });
        Self {
            base,
            client: reqwest::Client::new(),
            shutdown,
        }
    }

    pub(crate) fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
    ) -> RequestBuilder {
        let mut r = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r
    }

    pub(crate) async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Response {
        let mut r = self.request(method, path, Some(ADMIN));
        if let Some(b) = body {
            r = r.json(&b);
        }
        r.send().await.expect("request sent")
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub(crate) fn config(redis_url: &str, storage: PathBuf) -> ApiConfig {
    let toml = format!(
        r#"
        [redis]
        url = "{redis_url}"
        [storage]
        root = "{}"
        [http]
        bind = "127.0.0.1:0"
        max_body_bytes = 65536
        [api]
        workers = 1
        [[auth.tokens]]
        name = "root"
        role = "admin"
        token = "{ADMIN}"
        [[auth.tokens]]
        name = "ci"
        role = "write"
        token = "{WRITER}"
        [[auth.tokens]]
        name = "viewer"
        role = "read"
        token = "{READER}"
        [[auth.tokens]]
        name = "team-a-ci"
        role = "write"
        token = "{TEAM_A}"
        folders = ["team-a"]
        "#,
        storage.display()
    );
    config::Config::builder()
        .add_source(config::File::from_str(&toml, config::FileFormat::Toml))
        .build()
        .unwrap()
        .try_deserialize()
        .unwrap()
}

impl TestApp {
    pub(crate) async fn spawn() -> Self {
        let redis = RedisServer::start();
        let url = redis.url();
        Self::spawn_with(redis, &url).await
    }

    /// The api on `redis`, reached through `url` (TLS, Sentinel...).
    pub(crate) async fn spawn_with(redis: RedisServer, url: &str) -> Self {
        let storage = tempfile::tempdir().unwrap();
        let api = Instance::start(url, storage.path().to_path_buf()).await;
        Self {
            redis,
            storage,
            api,
        }
    }

    /// Another api process on the same Redis and storage.
    pub(crate) async fn second_instance(&self) -> Instance {
        Instance::start(&self.redis.url(), self.storage.path().to_path_buf()).await
    }

    /// Another api process on the same Redis and storage, with `change` made to its
    /// settings.
    pub(crate) async fn instance_with(&self, change: impl FnOnce(&mut ApiConfig)) -> Instance {
        let mut c = config(&self.redis.url(), self.storage.path().to_path_buf());
        change(&mut c);
        Instance::start_with(c).await
    }

    pub(crate) fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
    ) -> RequestBuilder {
        self.api.request(method, path, token)
    }

    pub(crate) async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Response {
        self.api.call(method, path, body).await
    }

    pub(crate) async fn get_json(&self, path: &str) -> Value {
        let r = self.call(Method::GET, path, None).await;
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }

    pub(crate) async fn put_job(&self, name: &str, def: Value) -> Response {
        self.call(Method::PUT, &format!("/api/v1/jobs/{name}"), Some(def))
            .await
    }

    pub(crate) async fn create_folder(&self, name: &str, parent: Option<&str>) -> Response {
        self.call(
            Method::POST,
            "/api/v1/folders",
            Some(serde_json::json!({"name": name, "parent": parent})),
        )
        .await
    }

    pub(crate) async fn trigger(&self, job: &str) -> Response {
        self.call(Method::POST, &format!("/api/v1/jobs/{job}/builds"), None)
            .await
    }

    pub(crate) async fn redis_type(&self, key: &str) -> String {
        let mut c = self.redis.pool().get().await.unwrap();
        deadpool_redis::redis::cmd("TYPE")
            .arg(key)
            .query_async(&mut c)
            .await
            .unwrap()
    }

    pub(crate) async fn snapshot(&self) -> Vec<(String, String)> {
        kiln_testkit::snapshot(&self.redis.pool()).await
    }
}

/// Asserts the one error shape and returns its `field`.
pub(crate) async fn error_field(r: Response, status: u16) -> Option<String> {
    assert_eq!(r.status().as_u16(), status);
    let v: Value = r.json().await.expect("JSON error body");
    assert!(
        v["error"]["code"].is_string() && v["error"]["message"].is_string(),
        "{v}"
    );
    v["error"]["field"].as_str().map(str::to_owned)
}
