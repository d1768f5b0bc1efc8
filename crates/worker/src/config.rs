//! The worker's settings (`[worker]`, or `KILN_WORKER__*`).

use std::path::PathBuf;
use std::time::Duration;

use kiln_model::Name;
use kiln_service_kit::{Common, ConfigError};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct WorkerConfig {
    #[serde(flatten)]
    pub common: Common,
    #[serde(default)]
    pub worker: WorkerSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct WorkerSettings {
    /// Defaults to the hostname plus a random suffix, so replicas never share an id.
    pub id: Option<String>,
    /// The queue it serves; pools of workers serve different kinds of jobs.
    pub queue: String,
    /// Builds it runs at once.
    pub concurrency: u32,
    /// How long a claim stays valid without renewal. Shorter detects dead workers sooner;
    /// longer survives longer pauses. 30 s matches BullMQ's lock.
    pub lease_ms: u64,
    /// How often leases are renewed and the heartbeat sent (at most a third of the lease,
    /// so two renewals may fail before the lease is at risk).
    pub renew_ms: u64,
    /// How often this worker's reaper looks for expired leases.
    pub reap_ms: u64,
    /// Longest a blocking wait for work lasts before the loop checks in again.
    pub claim_block_ms: u64,
    /// On SIGTERM, how long running builds may finish before they are handed back.
    pub shutdown_grace_secs: u64,
    /// The shell each step runs under; the step's script is its last argument.
    pub shell: Vec<String>,
    /// Where build workspaces live: one per build slot, emptied after each build.
    pub workspace_root: PathBuf,
    /// While other builds run on this worker, how long a new build's start may wait to be
    /// written: a build that ends within it is recorded, start included, by its finish
    /// alone (one write instead of two). A worker with nothing else to do writes a start at
    /// once. 0 writes every start at once.
    pub start_linger_ms: u64,
    /// Most bytes of one build attempt's log: past it the rest of the output is dropped
    /// (the build goes on), so a step that prints without end cannot fill the storage.
    pub max_log_bytes: u64,
    /// Builds this worker takes before it stops taking more and exits once they have
    /// ended: 1 makes an ephemeral worker (a fresh pod per build, as a Kubernetes Job or
    /// KEDA ScaledJob starts them). 0: no limit.
    pub max_builds: u64,
    /// Exits after this many seconds without a build (noticed within `claim_block_ms`),
    /// so a pod started for work that another worker took does not idle for ever.
    /// 0: never.
    pub idle_exit_secs: u64,
}

/// Smallest `worker.max_log_bytes`: one line of output may be 64 KiB.
const MIN_LOG_BYTES: u64 = 1 << 20;

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            id: None,
            queue: "default".into(),
            concurrency: 1,
            lease_ms: 30_000,
            renew_ms: 5_000,
            reap_ms: 5_000,
            claim_block_ms: 5_000,
            shutdown_grace_secs: 25,
            shell: vec!["sh".into(), "-e".into(), "-c".into()],
            workspace_root: std::env::temp_dir().join("kiln-work"),
            start_linger_ms: 50,
            max_log_bytes: 1 << 30,
            max_builds: 0,
            idle_exit_secs: 0,
        }
    }
}

/// Settings checked and turned into the types the worker uses.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) id: Name,
    pub(crate) queue: Name,
    pub(crate) concurrency: u32,
    pub(crate) lease: Duration,
    pub(crate) renew: Duration,
    pub(crate) reap: Duration,
    pub(crate) claim_block: Duration,
    pub(crate) grace: Duration,
    pub(crate) start_linger: Duration,
    pub(crate) launcher: crate::process::Launcher,
    pub(crate) workspace_root: PathBuf,
    pub(crate) storage_root: PathBuf,
    /// Whether the storage root is on a local filesystem (`crate::local_fs`): the build's
    /// folder and log are then made on the event loop, not in the blocking pool.
    pub(crate) storage_local: bool,
    pub(crate) max_log_bytes: u64,
    /// `worker.max_builds`; `None` without a limit.
    pub(crate) max_builds: Option<u64>,
    /// `worker.idle_exit_secs`; `None`: never.
    pub(crate) idle_exit: Option<Duration>,
    /// Opens sealed secret values (`secrets.key`, the api's).
    pub(crate) seal_key: Option<std::sync::Arc<kiln_store::SealKey>>,
}

fn default_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "worker".into());
    let host: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(50)
        .collect();
    let host = host.trim_start_matches(['-', '.']);
    let host = if host.is_empty() { "worker" } else { host };
    format!("{host}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

impl WorkerConfig {
    pub(crate) fn settings(&self) -> Result<Settings, ConfigError> {
        self.common.validate(false)?;
        let w = &self.worker;
        let id = w.id.clone().unwrap_or_else(default_id);
        let id = Name::parse(&id).map_err(|e| ConfigError::invalid("worker.id", e.to_string()))?;
        let queue = Name::parse(&w.queue)
            .map_err(|e| ConfigError::invalid("worker.queue", e.to_string()))?;
        if !(1..=256).contains(&w.concurrency) {
            return Err(ConfigError::invalid(
                "worker.concurrency",
                "must be between 1 and 256",
            ));
        }
        if w.lease_ms < 100 {
            return Err(ConfigError::invalid(
                "worker.lease_ms",
                "must be at least 100",
            ));
        }
        if w.renew_ms == 0 || w.renew_ms * 3 > w.lease_ms {
            return Err(ConfigError::invalid(
                "worker.renew_ms",
                "must be positive and at most a third of worker.lease_ms",
            ));
        }
        if w.reap_ms == 0 || w.claim_block_ms < 100 {
            return Err(ConfigError::invalid(
                "worker.reap_ms",
                "reap_ms must be positive and claim_block_ms at least 100",
            ));
        }
        if w.start_linger_ms > 1_000 {
            return Err(ConfigError::invalid(
                "worker.start_linger_ms",
                "must be at most 1000",
            ));
        }
        if w.max_log_bytes < MIN_LOG_BYTES {
            return Err(ConfigError::invalid(
                "worker.max_log_bytes",
                format!("must be at least {MIN_LOG_BYTES} (1 MiB)"),
            ));
        }
        let launcher = crate::process::Launcher::new(&w.shell)
            .map_err(|e| ConfigError::invalid("worker.shell", e))?;
        Ok(Settings {
            id,
            queue,
            concurrency: w.concurrency,
            lease: Duration::from_millis(w.lease_ms),
            renew: Duration::from_millis(w.renew_ms),
            reap: Duration::from_millis(w.reap_ms),
            claim_block: Duration::from_millis(w.claim_block_ms),
            grace: Duration::from_secs(w.shutdown_grace_secs),
            start_linger: Duration::from_millis(w.start_linger_ms),
            launcher,
            workspace_root: w.workspace_root.clone(),
            storage_root: self.common.storage.root.clone(),
            storage_local: crate::local_fs::is_local(&self.common.storage.root),
            max_log_bytes: w.max_log_bytes,
            max_builds: (w.max_builds > 0).then_some(w.max_builds),
            idle_exit: (w.idle_exit_secs > 0).then(|| Duration::from_secs(w.idle_exit_secs)),
            seal_key: self.common.seal_key()?.map(std::sync::Arc::new),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(worker: serde_json::Value) -> Result<Settings, ConfigError> {
        let config: WorkerConfig =
            serde_json::from_value(serde_json::json!({ "worker": worker })).expect("config");
        config.settings()
    }

    #[test]
    fn a_start_linger_longer_than_a_second_is_refused_by_name() {
        let e = settings(serde_json::json!({"start_linger_ms": 1001}))
            .expect_err("refused")
            .to_string();
        assert!(e.contains("worker.start_linger_ms"), "{e}");
        let s = settings(serde_json::json!({"start_linger_ms": 0})).expect("0 turns it off");
        assert!(s.start_linger.is_zero());
        let s = settings(serde_json::json!({})).expect("defaults");
        assert_eq!(s.start_linger, Duration::from_millis(50));
    }

    #[test]
    fn a_log_limit_below_a_mebibyte_is_refused_by_name() {
        let e = settings(serde_json::json!({"max_log_bytes": 1000}))
            .expect_err("refused")
            .to_string();
        assert!(e.contains("worker.max_log_bytes"), "{e}");
        let s = settings(serde_json::json!({})).expect("defaults");
        assert_eq!(s.max_log_bytes, 1 << 30);
    }
}
