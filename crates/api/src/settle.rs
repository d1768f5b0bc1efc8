//! How the api's durable consumers (the after-build consumer, the notifier) finish one
//! entry of their processing list: acknowledged when it was handled in full, a dead letter
//! naming what could not be done otherwise, and handled again while Redis fails.

use std::future::Future;
use std::time::Duration;

use kiln_model::Name;
use kiln_store::{Store, StoreError};
use tokio_util::sync::CancellationToken;

/// Longest pause between tries while Redis fails.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Handles `entry` with `handle` (which returns why each part of it could not be done, or a
/// Redis failure) until its outcome is recorded. An error other than Redis failing (an
/// unreadable document) will not read better later: it is the dead letter's reason rather
/// than an entry that holds up the ones behind it. `what` names the work in the log.
/// Returns false when stopped first: the entry stays in progress for the next start.
pub(crate) async fn settle<F, Fut>(
    store: &Store,
    consumer: &Name,
    entry: &str,
    what: &str,
    stop: &CancellationToken,
    mut handle: F,
) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Vec<String>, StoreError>>,
{
    let mut backoff = Duration::from_millis(250);
    loop {
        let handled = match handle().await {
            Err(e) if !e.is_unavailable() => Ok(vec![e.to_string()]),
            handled => handled,
        };
        let done = match handled {
            Ok(failed) if failed.is_empty() => {
                store.ack_finished(consumer, &[entry.to_owned()]).await
            }
            Ok(failed) => {
                let reason = failed.join("; ");
                tracing::warn!(entry, reason = %reason, "{what}: not done for good");
                store.dead_letter(consumer, entry, &reason).await
            }
            Err(e) => Err(e),
        };
        let Err(e) = done else { return true };
        tracing::warn!(entry, error = %e, retry_in_ms = backoff.as_millis() as u64, "{what}: cannot record the outcome yet");
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => return false,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
