//! github-ingest's settings (`[github]`, or `KILN_GITHUB__*`).

use std::time::Duration;

use kiln_service_kit::config::Secret;
use kiln_service_kit::{Common, ConfigError};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct IngestConfig {
    #[serde(flatten)]
    pub common: Common,
    #[serde(default)]
    pub github: GithubSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct GithubSettings {
    /// The webhook's secret; required.
    pub webhook_secret: Option<Secret>,
    /// Where GitHub posts.
    pub webhook_path: String,
    /// GitHub's API (GitHub Enterprise: `https://ghe.example.com/api/v3`).
    pub api_url: String,
    /// A token allowed to post commit statuses; without it no status is posted.
    pub token: Option<Secret>,
    /// Build pull requests from forks (they run untrusted code).
    pub allow_fork_prs: bool,
    /// Without `allow_fork_prs`: give a pull request from a fork its job, and build each
    /// head once someone with a writing token approves it (`POST /jobs/{name}/approve`),
    /// instead of ignoring it.
    pub fork_pr_approval: bool,
    /// The commit status context shown on GitHub.
    pub status_context: String,
    /// The api's public base URL, for the status's link to the build log.
    pub public_url: String,
    /// A new head for a PR or branch cancels that job's older queued and running builds.
    pub cancel_superseded: bool,
    /// Largest webhook body accepted.
    pub max_body_bytes: usize,
    /// Longest the Redis work of one delivery may take before answering 503 (GitHub gives
    /// up after 10 s and can redeliver).
    pub redis_timeout_ms: u64,
    /// How long disabled PR and branch jobs keep their history before they are deleted.
    pub closed_retention_days: u64,
    pub cleanup_interval_secs: u64,
    /// How often the reconcile scan asks GitHub for the open pull requests and the branches
    /// of linked repositories, to catch up with webhooks that never arrived (needs `token`);
    /// 0 turns it off.
    pub reconcile_interval_secs: u64,
}

impl Default for GithubSettings {
    fn default() -> Self {
        Self {
            webhook_secret: None,
            webhook_path: "/webhook".into(),
            api_url: "https://api.github.com".into(),
            token: None,
            allow_fork_prs: false,
            fork_pr_approval: false,
            status_context: "kiln".into(),
            public_url: "http://127.0.0.1:8080".into(),
            cancel_superseded: true,
            max_body_bytes: 5 * 1024 * 1024,
            redis_timeout_ms: 5_000,
            closed_retention_days: 7,
            cleanup_interval_secs: 3_600,
            reconcile_interval_secs: 900,
        }
    }
}

/// Checked settings.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) secret: Secret,
    pub(crate) webhook_path: String,
    pub(crate) api_url: String,
    pub(crate) token: Option<Secret>,
    pub(crate) forks: crate::derive::ForkPolicy,
    pub(crate) status_context: String,
    pub(crate) public_url: String,
    pub(crate) cancel_superseded: bool,
    pub(crate) max_body_bytes: usize,
    pub(crate) redis_timeout: Duration,
    pub(crate) closed_retention: chrono::Duration,
    pub(crate) cleanup_interval: Duration,
    /// `None`: no reconcile scan.
    pub(crate) reconcile_interval: Option<Duration>,
}

impl IngestConfig {
    pub(crate) fn settings(&self) -> Result<Settings, ConfigError> {
        self.common.validate(false)?;
        let g = &self.github;
        let secret = g
            .webhook_secret
            .clone()
            .filter(|s| !s.expose().is_empty())
            .ok_or_else(|| ConfigError::invalid("github.webhook_secret", "is required"))?;
        if !g.webhook_path.starts_with('/') {
            return Err(ConfigError::invalid(
                "github.webhook_path",
                "must start with /",
            ));
        }
        for (name, url) in [
            ("github.api_url", &g.api_url),
            ("github.public_url", &g.public_url),
        ] {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::invalid(name, "must be an http(s) URL"));
            }
        }
        if g.max_body_bytes < 1024 || g.redis_timeout_ms == 0 || g.redis_timeout_ms >= 10_000 {
            return Err(ConfigError::invalid(
                "github.redis_timeout_ms",
                "must be between 1 and 9999 (GitHub waits 10 s), and max_body_bytes at least 1024",
            ));
        }
        Ok(Settings {
            secret,
            webhook_path: g.webhook_path.clone(),
            api_url: g.api_url.trim_end_matches('/').to_owned(),
            token: g.token.clone().filter(|t| !t.expose().is_empty()),
            forks: match (g.allow_fork_prs, g.fork_pr_approval) {
                (true, _) => crate::derive::ForkPolicy::Build,
                (false, true) => crate::derive::ForkPolicy::Approve,
                (false, false) => crate::derive::ForkPolicy::Ignore,
            },
            status_context: g.status_context.clone(),
            public_url: g.public_url.trim_end_matches('/').to_owned(),
            cancel_superseded: g.cancel_superseded,
            max_body_bytes: g.max_body_bytes,
            redis_timeout: Duration::from_millis(g.redis_timeout_ms),
            closed_retention: chrono::Duration::days(g.closed_retention_days as i64),
            cleanup_interval: Duration::from_secs(g.cleanup_interval_secs.max(1)),
            reconcile_interval: (g.reconcile_interval_secs > 0)
                .then(|| Duration::from_secs(g.reconcile_interval_secs)),
        })
    }
}
