//! The gateway's settings (`[gateway]`, or `KILN_GATEWAY__*`).

use std::time::Duration;

use kiln_service_kit::{Common, ConfigError};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct GatewayConfig {
    #[serde(flatten)]
    pub common: Common,
    #[serde(default)]
    pub gateway: GatewaySettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct GatewaySettings {
    /// Browser origins allowed to connect; empty allows any (a token is required anyway).
    pub allowed_origins: Vec<String>,
    /// How often the gateway pings each client.
    pub ping_secs: u64,
    /// A client that answers no ping for this long is closed.
    pub client_timeout_secs: u64,
    /// Longest one frame may take to be queued for a client; a client that stops reading
    /// is cut off with the sequence number to resume from.
    pub send_timeout_ms: u64,
    /// Messages buffered per channel for watchers that fall behind (bounded memory).
    pub channel_buffer: usize,
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            ping_secs: 10,
            client_timeout_secs: 30,
            send_timeout_ms: 2_000,
            channel_buffer: 1024,
            workers: 0,
        }
    }
}

/// Checked settings in the types the gateway uses.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) allowed_origins: Vec<String>,
    pub(crate) ping: Duration,
    pub(crate) client_timeout: Duration,
    pub(crate) send_timeout: Duration,
    pub(crate) channel_buffer: usize,
}

impl GatewayConfig {
    pub(crate) fn limits(&self) -> Result<Limits, ConfigError> {
        self.common.validate(true)?;
        let g = &self.gateway;
        if g.ping_secs == 0 || g.client_timeout_secs <= g.ping_secs {
            return Err(ConfigError::invalid(
                "gateway.client_timeout_secs",
                "must be greater than gateway.ping_secs, which must be positive",
            ));
        }
        if g.send_timeout_ms == 0 || !(16..=1_000_000).contains(&g.channel_buffer) {
            return Err(ConfigError::invalid(
                "gateway.channel_buffer",
                "send_timeout_ms must be positive and channel_buffer between 16 and 1000000",
            ));
        }
        Ok(Limits {
            allowed_origins: g.allowed_origins.clone(),
            ping: Duration::from_secs(g.ping_secs),
            client_timeout: Duration::from_secs(g.client_timeout_secs),
            send_timeout: Duration::from_millis(g.send_timeout_ms),
            channel_buffer: g.channel_buffer,
        })
    }
}
