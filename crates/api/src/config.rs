//! The api's settings: the shared ones, the HTTP worker count and the retention sweep's
//! interval.

use std::time::Duration;

use kiln_service_kit::{Common, ConfigError};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct ApiConfig {
    #[serde(flatten)]
    pub common: Common,
    #[serde(default)]
    pub api: ApiSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ApiSettings {
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
    /// How often every job is trimmed to its retention without waiting for its next
    /// trigger: a job nobody triggers still loses builds past `retention.days`.
    pub retention_sweep_secs: u64,
    /// The api's public base URL (`https://ci.example.com`), for the links in build
    /// notifications; without it they carry none.
    pub public_url: Option<String>,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            workers: 0,
            retention_sweep_secs: 3_600,
            public_url: None,
        }
    }
}

impl ApiConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.api.retention_sweep_secs == 0 {
            return Err(ConfigError::invalid(
                "api.retention_sweep_secs",
                "must be at least 1",
            ));
        }
        if let Some(url) = &self.api.public_url {
            if !kiln_model::job::valid_notify_url(url) {
                return Err(ConfigError::invalid(
                    "api.public_url",
                    "must be an http:// or https:// URL",
                ));
            }
        }
        self.common.validate(true)
    }

    /// The public base URL without a trailing `/`.
    pub(crate) fn public_url(&self) -> Option<String> {
        self.api
            .public_url
            .as_ref()
            .map(|u| u.trim_end_matches('/').to_owned())
    }

    pub(crate) fn retention_sweep(&self) -> Duration {
        Duration::from_secs(self.api.retention_sweep_secs)
    }
}
