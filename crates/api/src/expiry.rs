//! Queue timeouts: a build of a job with `queue_timeout_secs` that has not started when its
//! time runs out (no live worker serves its queue, or every concurrency slot stayed taken)
//! ends `cancelled`, saying why it waited, instead of waiting for ever. The trigger script
//! records each such build's deadline (`keys::QUEUE_DEADLINES`); every api replica looks
//! each second, and the script that cancels (`expire.lua`) is atomic and idempotent, so
//! replicas need no coordination.

use std::time::Duration;

use kiln_store::Store;
use tokio_util::sync::CancellationToken;

/// How often the deadlines are looked at: a build ends at most this long after its time.
const TICK: Duration = Duration::from_secs(1);
/// Deadlines handled per script call.
const BATCH: usize = 100;

/// Cancels the builds whose queue timeout ran out, every [`TICK`], until `stop`.
pub(crate) async fn run(store: Store, stop: CancellationToken) {
    loop {
        loop {
            match store.expire_queued(BATCH).await {
                Ok((cancelled, seen)) => {
                    if cancelled > 0 {
                        tracing::info!(cancelled, "builds cancelled: their queue timeout ran out");
                        metrics::counter!("kiln_builds_queue_timed_out_total").increment(cancelled);
                    }
                    if seen < BATCH {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot look for builds past their queue timeout");
                    break;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.cancelled() => return,
        }
    }
}
