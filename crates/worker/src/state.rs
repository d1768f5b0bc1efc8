//! What the worker's tasks share: the builds it runs now and how healthy its loops are.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use kiln_store::{BlockingStore, Lease, Store};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::workspace::Workspaces;

/// Why a running build is being stopped before its steps end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StopReason {
    /// Cancelled through the api: ends as `cancelled`.
    Cancelled,
    /// The lease is gone or could not be renewed: kill, discard, write nothing.
    LeaseLost,
    /// The worker is shutting down and the grace period ran out: hand it back.
    Shutdown,
    /// The build's log could not be made: ends as `error`, saying why.
    LogFailed,
}

/// One build this worker runs.
pub(crate) struct Active {
    pub(crate) lease: Lease,
    pub(crate) stop: CancellationToken,
    reason: Mutex<Option<StopReason>>,
}

impl Active {
    pub(crate) fn new(lease: Lease) -> Self {
        Self {
            lease,
            stop: CancellationToken::new(),
            reason: Mutex::new(None),
        }
    }

    /// Stops the build for `reason`; the first reason given wins.
    pub(crate) fn stop(&self, reason: StopReason) {
        if let Ok(mut r) = self.reason.lock() {
            r.get_or_insert(reason);
        }
        self.stop.cancel();
    }

    pub(crate) fn reason(&self) -> Option<StopReason> {
        self.reason.lock().ok().and_then(|r| r.clone())
    }
}

pub(crate) fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

pub(crate) struct Worker {
    pub(crate) store: Store,
    /// One connection for the blocking wait for work (see `Store::blocking`).
    pub(crate) blocking: BlockingStore,
    pub(crate) settings: Settings,
    pub(crate) workspaces: Workspaces,
    pub(crate) pruned: crate::prune::PruneMarks,
    pub(crate) spares: Arc<crate::spares::Spares>,
    pub(crate) active: Mutex<HashMap<String, Arc<Active>>>,
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) draining: AtomicBool,
    /// An operator paused it (`kiln:paused-workers`, read with each heartbeat): it takes
    /// no new build and finishes the ones it runs.
    pub(crate) paused: AtomicBool,
    /// When the claim loop last completed an iteration (ms since the epoch).
    pub(crate) claim_progress_ms: AtomicI64,
    /// When a Redis call last failed (ms since the epoch; 0 = never).
    pub(crate) redis_failed_ms: AtomicI64,
    /// When a lease renewal last succeeded.
    pub(crate) renewed_ms: AtomicI64,
    /// Builds it may still take under `worker.max_builds` (unused without a limit).
    pub(crate) budget: AtomicU64,
    /// When a build last started or ended here (ms since the epoch), for
    /// `worker.idle_exit_secs`.
    pub(crate) last_build_ms: AtomicI64,
}

impl Worker {
    /// Takes one build from the `worker.max_builds` budget before a claim; false when it is
    /// spent (the worker then retires). Always true without a limit.
    pub(crate) fn take_budget(&self) -> bool {
        self.settings.max_builds.is_none()
            || self
                .budget
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| b.checked_sub(1))
                .is_ok()
    }

    /// Gives back what a claim that found no build took.
    pub(crate) fn return_budget(&self) {
        if self.settings.max_builds.is_some() {
            self.budget.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// A build started or ended now: the idle time of `worker.idle_exit_secs` starts over.
    pub(crate) fn note_build_activity(&self) {
        self.last_build_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Whether `worker.idle_exit_secs` has passed without a build.
    pub(crate) fn idle_too_long(&self) -> bool {
        self.settings.idle_exit.is_some_and(|idle| {
            self.running() == 0
                && now_ms() - self.last_build_ms.load(Ordering::Relaxed) >= idle.as_millis() as i64
        })
    }

    pub(crate) fn record_redis_failure(&self) {
        self.redis_failed_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub(crate) fn leases(&self) -> Vec<Lease> {
        self.active
            .lock()
            .map(|a| a.values().map(|b| b.lease.clone()).collect())
            .unwrap_or_default()
    }

    pub(crate) fn find(&self, key: &str) -> Option<Arc<Active>> {
        self.active.lock().ok().and_then(|a| a.get(key).cloned())
    }

    pub(crate) fn all(&self) -> Vec<Arc<Active>> {
        self.active
            .lock()
            .map(|a| a.values().cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn insert(&self, key: String, active: Arc<Active>) {
        if let Ok(mut a) = self.active.lock() {
            a.insert(key, active);
        }
    }

    pub(crate) fn remove(&self, key: &str) {
        if let Ok(mut a) = self.active.lock() {
            a.remove(key);
        }
    }

    pub(crate) fn running(&self) -> usize {
        self.active.lock().map(|a| a.len()).unwrap_or(0)
    }
}
