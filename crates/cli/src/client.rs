//! The HTTP side of the CLI: authenticated requests and the api's JSON errors as messages.

use std::time::Duration;

use anyhow::{bail, Context};
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::Method;
use serde_json::Value;

/// How long a download may take (the other requests get 30 s).
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

pub(crate) struct Api {
    base: String,
    token: Option<String>,
    http: Client,
}

impl Api {
    pub(crate) fn new(base: &str, token: Option<String>) -> anyhow::Result<Self> {
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http: Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .context("cannot create the HTTP client")?,
        })
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    pub(crate) fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Response> {
        let mut r = self.request(method.clone(), path);
        if let Some(b) = body {
            r = r.json(b);
        }
        self.checked(method, path, r)
    }

    /// A GET whose body may take long to arrive (a large artifact): a day, not 30 s.
    pub(crate) fn download(&self, path: &str) -> anyhow::Result<Response> {
        let r = self.request(Method::GET, path).timeout(DOWNLOAD_TIMEOUT);
        self.checked(Method::GET, path, r)
    }

    /// Sends `r`; an error status becomes the api's JSON error as a message.
    fn checked(&self, method: Method, path: &str, r: RequestBuilder) -> anyhow::Result<Response> {
        let res = r
            .send()
            .with_context(|| format!("cannot reach the Kiln api at {}", self.base))?;
        if !res.status().is_success() {
            let status = res.status();
            let body: Value = res.json().unwrap_or(Value::Null);
            let msg = body["error"]["message"]
                .as_str()
                .unwrap_or("request failed");
            match body["error"]["field"].as_str() {
                Some(f) => bail!("{method} {path}: {status}: {msg} (field {f})"),
                None => bail!("{method} {path}: {status}: {msg}"),
            }
        }
        Ok(res)
    }

    pub(crate) fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        Ok(self.send(method, path, body)?.json()?)
    }
}
