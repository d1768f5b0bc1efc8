//! The retention sweep: a job's builds are trimmed to its retention when it is triggered
//! (`trigger.lua`), so a job nobody triggers would keep builds past its `retention.days` (or
//! a `retention.builds` lowered since) for ever. Every `api.retention_sweep_secs` each api
//! replica trims every job as its next trigger would (`trim.lua`: atomic and idempotent, so
//! replicas need no coordination); the removed builds' folders go onto the storage orphans
//! list, which `crate::orphans` empties.
//!
//! The same pass removes the archived files of builds that ended more than their job's
//! `retention.artifacts_days` ago (not pinned ones), and records it on each build
//! (`artifacts_expired_at`): folder first, record second, so a replica that stops in
//! between leaves a build the next pass finishes, never a record of files still there.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use kiln_model::{output, storage, JobDefinition, JobName};
use kiln_store::{Store, StoreError};
use tokio_util::sync::CancellationToken;

/// Builds read per page while looking for expired artifacts.
const PAGE: usize = 200;

/// Trims every job each `every`, until `stop`; the first sweep runs one interval after
/// start-up.
pub(crate) async fn run(store: Store, root: PathBuf, every: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        match sweep(&store, &root).await {
            Ok((builds, artifacts)) => {
                if builds > 0 {
                    tracing::info!(builds, "retention sweep removed builds");
                }
                if artifacts > 0 {
                    tracing::info!(
                        builds = artifacts,
                        "retention sweep removed builds' artifacts"
                    );
                }
                metrics::counter!("kiln_retention_swept_builds_total").increment(builds);
                metrics::counter!("kiln_retention_expired_artifacts_total").increment(artifacts);
            }
            Err(e) => tracing::warn!(error = %e, "retention sweep failed; retrying next round"),
        }
    }
}

/// One pass over every job; returns how many builds went, and how many builds' artifacts.
async fn sweep(store: &Store, root: &Path) -> Result<(u64, u64), StoreError> {
    let (mut builds, mut artifacts) = (0, 0);
    for (name, def) in store.list_jobs(None).await? {
        builds += store.sweep_retention(&name, &def).await?;
        artifacts += expire_artifacts(store, root, &name, &def).await?;
    }
    Ok((builds, artifacts))
}

/// Removes the archived files of `job`'s builds that ended before its
/// `retention.artifacts_days`; returns how many builds lost theirs.
async fn expire_artifacts(
    store: &Store,
    root: &Path,
    job: &JobName,
    def: &JobDefinition,
) -> Result<u64, StoreError> {
    let Some(days) = def.retention.artifacts_days else {
        return Ok(0);
    };
    let cutoff = Utc::now() - chrono::Duration::days(i64::from(days));
    let mut expired = 0;
    let mut offset = 0;
    loop {
        let (page, total) = store.list_builds(job, offset, PAGE).await?;
        for b in &page {
            let due = b.finished_at.is_some_and(|f| f < cutoff)
                && b.keep.is_none()
                && b.artifacts_expired_at.is_none();
            if !due {
                continue;
            }
            if let Some(dir) = storage::build_dir(root, &b.storage_path) {
                let dir = dir.join(output::ARTIFACTS_DIR);
                let removed =
                    tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                        _ => Ok(()),
                    })
                    .await;
                if !matches!(removed, Ok(Ok(()))) {
                    tracing::warn!(build = %b.build_ref(), "cannot remove a build's expired artifacts; the next sweep tries again");
                    continue;
                }
            }
            match store
                .set_artifacts_expired(&b.build_ref(), Utc::now())
                .await
            {
                Ok(_) => expired += 1,
                // Gone or changed meanwhile (trimmed, pinned): the next sweep looks again.
                Err(StoreError::NotFound(_) | StoreError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        offset += PAGE;
        if offset >= total || page.is_empty() {
            return Ok(expired);
        }
    }
}
