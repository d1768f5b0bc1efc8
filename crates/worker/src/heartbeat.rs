//! Lease renewal and the node heartbeat (one round trip per interval), and the cancel
//! listener that makes an api cancel reach the running build within a second.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use fred::prelude::*;
use kiln_model::{keys, BuildRef, NodeInfo};
use tokio_util::sync::CancellationToken;

use crate::state::{now_ms, StopReason, Worker};

pub(crate) fn node_info(w: &Worker) -> NodeInfo {
    let builds: Vec<String> = w.leases().iter().map(|l| l.build.key()).collect();
    let state = if w.draining.load(Ordering::Relaxed) {
        "draining"
    } else if w.paused.load(Ordering::Relaxed) {
        "paused"
    } else if builds.is_empty() {
        "idle"
    } else {
        "busy"
    };
    NodeInfo {
        id: w.settings.id.clone(),
        queue: w.settings.queue.clone(),
        concurrency: w.settings.concurrency,
        builds,
        version: env!("CARGO_PKG_VERSION").into(),
        started_at: w.started_at,
        last_seen: Utc::now(),
        state: state.into(),
    }
}

/// Renews every lease each `renew` interval. Stale leases and cancelled builds are
/// stopped; if no renewal succeeded for most of the lease, every build is killed and its
/// result discarded (its lease is about to expire and the build will run elsewhere).
pub(crate) async fn heartbeat_loop(w: Arc<Worker>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(w.settings.renew);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let fence_after = w.settings.lease.mul_f64(0.8).as_millis() as i64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let leases = w.leases();
        let node = node_info(&w);
        match w
            .store
            .heartbeat(&node, w.settings.renew * 3, w.settings.lease, &leases)
            .await
        {
            Ok(hb) => {
                w.renewed_ms.store(now_ms(), Ordering::Relaxed);
                if w.paused.swap(hb.paused, Ordering::Relaxed) != hb.paused {
                    tracing::info!(
                        paused = hb.paused,
                        "an operator paused or resumed this worker"
                    );
                }
                for key in hb.stale {
                    if let Some(a) = w.find(&key) {
                        tracing::warn!(build = %key, "lease taken away; stopping the build");
                        a.stop(StopReason::LeaseLost);
                    }
                }
                for key in hb.cancelled {
                    if let Some(a) = w.find(&key) {
                        a.stop(StopReason::Cancelled);
                    }
                }
            }
            Err(e) => {
                w.record_redis_failure();
                tracing::warn!(error = %e, "cannot renew leases");
                if now_ms() - w.renewed_ms.load(Ordering::Relaxed) > fence_after {
                    for a in w.all() {
                        tracing::error!(build = %a.lease.build, "no renewal for most of the lease; killing the build");
                        a.stop(StopReason::LeaseLost);
                    }
                }
            }
        }
    }
}

/// Listens on the cancel channel; a message naming one of our builds is checked against the
/// build document (the truth) and stops the build: cancelled if asked, killed and
/// discarded if the document is gone (its job was deleted). Missed messages are covered by
/// the next renewal, which reports cancelled builds and lost leases too.
pub(crate) async fn cancel_listener(w: Arc<Worker>, url: String, stop: CancellationToken) {
    let client = match Config::from_url(&url).and_then(|c| {
        Builder::from_config(c)
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
            .build_subscriber_client()
    }) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot create the cancel subscriber; cancels arrive with renewals only");
            return;
        }
    };
    let mut rx = client.message_rx();
    loop {
        let init = async {
            client.init().await?;
            client.subscribe(keys::CANCEL_CHANNEL).await
        };
        tokio::select! {
            r = init => match r {
                Ok(()) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "cancel subscriber cannot connect yet");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = stop.cancelled() => return,
                    }
                }
            },
            _ = stop.cancelled() => return,
        }
    }
    let resubscribe = client.manage_subscriptions();
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                Ok(m) => {
                    let Ok(key) = m.value.convert::<String>() else { continue };
                    let Some(active) = w.find(&key) else { continue };
                    let Ok(build) = BuildRef::from_key(&key) else { continue };
                    match w.store.get_build(&build).await {
                        Ok(Some(doc)) if doc.cancel_requested => active.stop(StopReason::Cancelled),
                        Ok(None) => {
                            tracing::warn!(build = %key, "build deleted with its job; stopping it");
                            active.stop(StopReason::LeaseLost);
                        }
                        _ => {}
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => break,
            },
            _ = stop.cancelled() => break,
        }
    }
    resubscribe.abort();
    let _ = client.quit().await;
}
