//! The reaper: every worker requeues builds whose lease expired. The script is atomic and
//! idempotent, so many workers reaping at once is safe and no leader is needed.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::state::{now_ms, Worker};

/// Builds examined per reap; more wait for the next round.
const REAP_BATCH: usize = 100;

pub(crate) async fn reaper_loop(w: Arc<Worker>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(w.settings.reap);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // After a (re)connect, live workers need a couple of renewals to refresh leases that
    // look expired only because Redis (or we) were away.
    let grace = (w.settings.renew * 2).as_millis() as i64;
    let started = now_ms();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let now = now_ms();
        if now - started < grace || now - w.redis_failed_ms.load(Ordering::Relaxed) < grace {
            continue;
        }
        match w.store.reap(REAP_BATCH).await {
            Ok(o) if o.requeued + o.lost > 0 => {
                metrics::counter!("kiln_worker_reaped_total", "outcome" => "requeued")
                    .increment(o.requeued);
                metrics::counter!("kiln_worker_reaped_total", "outcome" => "lost")
                    .increment(o.lost);
                tracing::warn!(
                    requeued = o.requeued,
                    lost = o.lost,
                    "reaped builds whose worker stopped renewing"
                );
            }
            Ok(_) => {}
            Err(e) => {
                w.record_redis_failure();
                tracing::warn!(error = %e, "reaper cannot reach Redis");
            }
        }
    }
}
