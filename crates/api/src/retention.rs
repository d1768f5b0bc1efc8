//! The retention sweep: a job's builds are trimmed to its retention when it is triggered
//! (`trigger.lua`), so a job nobody triggers would keep builds past its `retention.days` (or
//! a `retention.builds` lowered since) for ever. Every `api.retention_sweep_secs` each api
//! replica trims every job as its next trigger would (`trim.lua`: atomic and idempotent, so
//! replicas need no coordination); the removed builds' folders go onto the storage orphans
//! list, which `crate::orphans` empties.

use std::time::Duration;

use kiln_store::Store;
use tokio_util::sync::CancellationToken;

/// Trims every job each `every`, until `stop`; the first sweep runs one interval after
/// start-up.
pub(crate) async fn run(store: Store, every: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        match sweep(&store).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(builds = n, "retention sweep removed builds");
                metrics::counter!("kiln_retention_swept_builds_total").increment(n);
            }
            Err(e) => tracing::warn!(error = %e, "retention sweep failed; retrying next round"),
        }
    }
}

/// One pass over every job; returns how many builds went.
async fn sweep(store: &Store) -> Result<u64, kiln_store::StoreError> {
    let mut removed = 0;
    for (name, def) in store.list_jobs(None).await? {
        removed += store.sweep_retention(&name, &def).await?;
    }
    Ok(removed)
}
