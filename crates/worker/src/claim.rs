//! The claim loop: whenever a slot is free, take the next build of the queue atomically
//! (under a lease), else block on the queue's marker until work may have arrived. A busy
//! slot takes its next build with the finish of the last one (`run::launch`), so the loop
//! only claims for slots that fell idle. The loop also ends, and the worker with it once
//! its builds have ended, when `worker.max_builds` are taken or `worker.idle_exit_secs`
//! passed without a build (ephemeral workers).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::state::{now_ms, Worker};

/// Longest pause after a Redis error before the loop tries again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A build slot taken: held by one build after another until the worker shuts down or its
/// queue runs dry.
pub(crate) struct Slot {
    /// Not read: the slot is free again when it is dropped.
    pub(crate) _permit: OwnedSemaphorePermit,
    /// Where the builds run, so that shutting down waits for them.
    pub(crate) builds: TaskTracker,
    /// Cancelled when the worker stops taking builds.
    pub(crate) stop: CancellationToken,
}

pub(crate) async fn claim_loop(w: Arc<Worker>, stop: CancellationToken, builds: TaskTracker) {
    let mut backoff = Duration::from_millis(100);
    loop {
        w.claim_progress_ms.store(now_ms(), Ordering::Relaxed);
        let slot = tokio::select! {
            s = w.slots.clone().acquire_owned() => match s { Ok(s) => s, Err(_) => return },
            _ = stop.cancelled() => return,
        };
        if stop.is_cancelled() {
            return;
        }
        if w.paused.load(Ordering::Relaxed) {
            // Paused by an operator: look again after the next heartbeat.
            drop(slot);
            tokio::select! {
                _ = tokio::time::sleep(w.settings.renew) => continue,
                _ = stop.cancelled() => return,
            }
        }
        if !w.take_budget() {
            tracing::info!(
                max_builds = w.settings.max_builds,
                "took worker.max_builds builds; taking no more"
            );
            return;
        }
        match w
            .store
            .claim(&w.settings.queue, &w.settings.id, w.settings.lease)
            .await
        {
            Ok(Some(claimed)) => {
                backoff = Duration::from_millis(100);
                let slot = Slot {
                    _permit: slot,
                    builds: builds.clone(),
                    stop: stop.clone(),
                };
                crate::run::launch(&w, claimed, slot);
            }
            Ok(None) => {
                drop(slot);
                w.return_budget();
                if w.idle_too_long() {
                    tracing::info!(
                        idle_exit_secs = w.settings.idle_exit.map(|d| d.as_secs()),
                        "no build for worker.idle_exit_secs; taking no more"
                    );
                    return;
                }
                backoff = Duration::from_millis(100);
                let wait = w
                    .blocking
                    .wait_for_work(&w.settings.queue, w.settings.claim_block);
                tokio::select! {
                    r = wait => if let Err(e) = r {
                        w.record_redis_failure();
                        tracing::warn!(error = %e, "waiting for work failed; reconnecting");
                        pause(&stop, &mut backoff).await;
                    },
                    _ = stop.cancelled() => return,
                }
            }
            Err(e) => {
                drop(slot);
                w.return_budget();
                w.record_redis_failure();
                tracing::warn!(error = %e, "cannot claim; retrying");
                pause(&stop, &mut backoff).await;
            }
        }
    }
}

/// Sleeps for the backoff with full jitter (so workers that lost Redis together do not
/// reconnect together), then doubles it.
async fn pause(stop: &CancellationToken, backoff: &mut Duration) {
    let jittered = backoff
        .mul_f64(rand::random::<f64>())
        .max(Duration::from_millis(50));
    tokio::select! {
        _ = tokio::time::sleep(jittered) => {}
        _ = stop.cancelled() => {}
    }
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
}
