//! Removing the storage folders of builds retention deleted where no worker clears them
//! away. Workers clear away the folders below a job's oldest kept build when they finish
//! one of its builds (`kiln-worker`'s prune); a pinned build stays the oldest kept one for as
//! long as it is pinned, and a job the retention sweep trims may never be built again. So
//! the trigger script lists the folders of builds it removed from behind a pinned one, the
//! sweep (`crate::retention`) those of every build it removed (`keys::STORAGE_ORPHANS`),
//! and every api replica takes from that list (each path is taken once, onto
//! `keys::STORAGE_ORPHANS_TAKEN` until its folder is gone, so a replica that dies mid-way
//! leaves it for the next start rather than on the disk for ever).

use std::path::PathBuf;
use std::time::Duration;

use kiln_model::storage;
use kiln_store::Store;
use tokio_util::sync::CancellationToken;

/// How often the list is looked at.
const TICK: Duration = Duration::from_secs(5);
/// Paths taken per round trip.
const BATCH: usize = 100;

/// Removes what a replica that stopped had taken, then listed folders every [`TICK`],
/// until `stop`.
pub(crate) async fn run(store: Store, root: PathBuf, stop: CancellationToken) {
    let mut left = match store.taken_storage_orphans().await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the folders an api replica was removing; the next start removes them");
            Vec::new()
        }
    };
    loop {
        loop {
            let paths = match std::mem::take(&mut left) {
                p if !p.is_empty() => p,
                _ => match store.take_storage_orphans(BATCH).await {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the folders retention left behind");
                        break;
                    }
                },
            };
            let taken = paths.len();
            let (root, list) = (root.clone(), paths.clone());
            let removed = tokio::task::spawn_blocking(move || remove(&root, &list)).await;
            if let Ok(n) = removed {
                metrics::counter!("kiln_storage_orphans_removed_total").increment(n as u64);
            }
            // Left on the taken list if this fails: the next start removes them again.
            if let Err(e) = store.storage_orphans_removed(&paths).await {
                tracing::warn!(error = %e, "cannot record removed folders; the next start looks at them again");
            }
            if taken < BATCH {
                break;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Removes the build folders `paths` name (below `root` only); returns how many were there.
fn remove(root: &std::path::Path, paths: &[String]) -> usize {
    let mut removed = 0;
    for p in paths {
        let Some(dir) = storage::build_dir(root, p) else {
            tracing::warn!(storage_path = %p, "not a build folder; left alone");
            continue;
        };
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(error = %e, dir = %dir.display(), "cannot remove a build folder retention left behind")
            }
        }
    }
    removed
}
