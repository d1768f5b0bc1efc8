//! The api's settings: only the shared ones, plus the HTTP worker count.

use kiln_service_kit::{Common, ConfigError};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct ApiConfig {
    #[serde(flatten)]
    pub common: Common,
    #[serde(default)]
    pub api: ApiSettings,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ApiSettings {
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
}

impl ApiConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.common.validate(true)
    }
}
