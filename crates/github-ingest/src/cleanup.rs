//! Deletes PR and branch jobs that were disabled (PR closed, branch deleted) longer than
//! `github.closed_retention_days` ago, with their builds and files.

use std::path::PathBuf;

use chrono::Utc;
use kiln_store::Store;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;

pub(crate) async fn cleanup_loop(
    store: Store,
    settings: Settings,
    storage_root: PathBuf,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(settings.cleanup_interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        match sweep(&store, &settings, &storage_root).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "deleted closed PR and branch jobs"),
            Err(e) => tracing::warn!(error = %e, "cleanup failed; retrying next round"),
        }
    }
}

/// One pass; returns how many jobs were deleted.
pub(crate) async fn sweep(
    store: &Store,
    settings: &Settings,
    storage_root: &std::path::Path,
) -> Result<usize, kiln_store::StoreError> {
    let cutoff = Utc::now() - settings.closed_retention;
    let mut deleted = 0;
    for (name, def) in store.list_jobs(None).await? {
        let closed = def.github.as_ref().and_then(|g| g.closed_at);
        if !def.disabled || name.base().is_none() || closed.is_none_or(|c| c > cutoff) {
            continue;
        }
        store.delete_job_with_files(&name, storage_root).await?;
        deleted += 1;
    }
    Ok(deleted)
}
