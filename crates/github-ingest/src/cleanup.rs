//! Deletes PR and branch jobs that were disabled (PR closed, branch deleted) longer than
//! `github.closed_retention_days` ago, with their builds and files.

use std::path::PathBuf;

use chrono::Utc;
use kiln_model::storage;
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
        let docs = store.delete_job(&name).await?;
        let root = storage_root.to_owned();
        let failed = tokio::task::spawn_blocking(move || {
            storage::remove_deleted_builds(&root, docs.iter().map(|d| d.storage_path.as_str()))
        })
        .await
        .unwrap_or_default();
        for (path, e) in failed {
            tracing::warn!(job = %name, path = %path.display(), error = %e, "cannot remove a deleted build's folder");
        }
        deleted += 1;
    }
    Ok(deleted)
}
