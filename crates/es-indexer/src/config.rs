//! The indexer's settings (`[elasticsearch]`, or `KILN_ELASTICSEARCH__*`).

use std::path::PathBuf;
use std::time::Duration;

use kiln_service_kit::config::Secret;
use kiln_service_kit::{Common, ConfigError};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct IndexerConfig {
    #[serde(flatten)]
    pub common: Common,
    #[serde(default)]
    pub elasticsearch: ElasticsearchSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ElasticsearchSettings {
    pub url: String,
    /// The index name, or the prefix of monthly indexes when `index_per_month` is set.
    pub index: String,
    /// One index per month of the build's queue time: `<index>-YYYY.MM`.
    pub index_per_month: bool,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// An API key as `id:key`.
    pub api_key: Option<Secret>,
    /// A PEM file of the CA that signed the cluster's certificate.
    pub ca_cert: Option<PathBuf>,
    /// Skip certificate validation (diagnostics only).
    pub tls_insecure: bool,
    /// Most documents per `_bulk` request.
    pub batch_size: usize,
    /// Longest a document waits for its batch to fill.
    pub batch_wait_ms: u64,
    pub request_timeout_ms: u64,
    /// Cap of the exponential backoff between retries of a failing cluster.
    pub max_backoff_ms: u64,
}

impl Default for ElasticsearchSettings {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:9200".into(),
            index: "kiln-builds".into(),
            index_per_month: false,
            username: None,
            password: None,
            api_key: None,
            ca_cert: None,
            tls_insecure: false,
            batch_size: 500,
            batch_wait_ms: 200,
            request_timeout_ms: 30_000,
            max_backoff_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) es: ElasticsearchSettings,
    pub(crate) batch_wait: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) max_backoff: Duration,
}

impl IndexerConfig {
    pub(crate) fn settings(&self) -> Result<Settings, ConfigError> {
        self.common.validate(false)?;
        let es = &self.elasticsearch;
        if !(es.url.starts_with("http://") || es.url.starts_with("https://")) {
            return Err(ConfigError::invalid(
                "elasticsearch.url",
                "must be an http(s) URL",
            ));
        }
        let index_ok = !es.index.is_empty()
            && es.index.len() <= 200
            && es
                .index
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
            && !es.index.starts_with(['-', '_', '.']);
        if !index_ok {
            return Err(ConfigError::invalid(
                "elasticsearch.index",
                "must be a lower-case index name ([a-z0-9._-], not starting with - _ .)",
            ));
        }
        if !(1..=10_000).contains(&es.batch_size) {
            return Err(ConfigError::invalid(
                "elasticsearch.batch_size",
                "must be between 1 and 10000",
            ));
        }
        if es.username.is_some() != es.password.is_some() {
            return Err(ConfigError::invalid(
                "elasticsearch.password",
                "username and password go together",
            ));
        }
        if let Some(k) = &es.api_key {
            if !k.expose().contains(':') {
                return Err(ConfigError::invalid(
                    "elasticsearch.api_key",
                    "must be id:key",
                ));
            }
        }
        Ok(Settings {
            es: es.clone(),
            batch_wait: Duration::from_millis(es.batch_wait_ms),
            request_timeout: Duration::from_millis(es.request_timeout_ms.max(100)),
            max_backoff: Duration::from_millis(es.max_backoff_ms.max(100)),
        })
    }
}
