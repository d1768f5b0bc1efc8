//! Clearing away the storage folders of builds that fell out of their job's retention,
//! whoever trimmed them (the api, github-ingest...): the worker that finishes a build of the
//! job keeps or removes the folders below the job's oldest kept build.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use kiln_model::{storage, BuildDocument};

use crate::state::Worker;

/// How far below the oldest kept build a worker looks the first time it prunes a job.
/// Builds leave retention in order, so the folders of those trimmed since then sit just
/// below it.
const PRUNE_WINDOW: u64 = 64;

/// Farthest below the oldest kept build a worker looks back to its mark. The oldest kept
/// build can jump by many at once: a build still running holds back the trimming of the
/// newer ones (`trigger.lua`), which then leave together once it has ended; every folder in
/// between must go. Bounded so a worker that has not pruned a job for long does not look
/// through its whole history (other workers pruned that meanwhile).
const PRUNE_CATCH_UP: u64 = 4096;

/// Most jobs whose prune mark is remembered; past that the marks start over (each job then
/// looks through its window once more).
const MAX_MARKS: usize = 10_000;

/// Per job, the oldest kept build when this worker last pruned it: the folders below that
/// are gone already, so each finished build looks only at builds trimmed since, usually
/// none or one, instead of the whole window.
#[derive(Default)]
pub(crate) struct PruneMarks(Mutex<HashMap<String, u64>>);

impl PruneMarks {
    /// The build numbers to remove now that `oldest_kept` is the job's oldest build.
    fn advance(&self, job: &str, oldest_kept: u64) -> std::ops::Range<u64> {
        let window = oldest_kept.saturating_sub(PRUNE_WINDOW).max(1);
        let Ok(mut marks) = self.0.lock() else {
            return window..oldest_kept;
        };
        if marks.len() >= MAX_MARKS && !marks.contains_key(job) {
            marks.clear();
        }
        let mark = marks.entry(job.to_owned()).or_insert(0);
        let from = match *mark {
            0 => window,
            mark => mark.max(oldest_kept.saturating_sub(PRUNE_CATCH_UP)),
        };
        *mark = (*mark).max(oldest_kept);
        from..oldest_kept
    }
}

/// Clears away the storage folders of `doc`'s job that fell out of its retention since this
/// worker last looked, in one blocking task: kept as spares while there is room
/// (`crate::spares`), else removed. `oldest_kept` is the job's oldest build, as read when
/// the build's result was recorded.
pub(crate) async fn prune_storage(w: &Worker, doc: &BuildDocument, oldest_kept: u64) {
    let Some(dir) = storage::build_dir(&w.settings.storage_root, &doc.storage_path) else {
        return;
    };
    let Some(job_dir) = dir.parent().map(PathBuf::from) else {
        return;
    };
    let numbers = w.pruned.advance(doc.job.as_str(), oldest_kept);
    if numbers.is_empty() {
        return;
    }
    let spares = w.spares.clone();
    let _ = tokio::task::spawn_blocking(move || {
        for n in numbers {
            let old = job_dir.join(n.to_string());
            // Every worker finishing a build of the job looks at the same numbers; most
            // find the folder gone already.
            if std::fs::symlink_metadata(&old).is_err() {
                continue;
            }
            let removed = match spares.keep(&job_dir, &old) {
                Ok(true) => Ok(()),
                Ok(false) => std::fs::remove_dir_all(&old),
                Err(e) => {
                    tracing::debug!(path = %old.display(), error = %e, "cannot keep an old build folder as a spare");
                    std::fs::remove_dir_all(&old)
                }
            };
            match removed {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %old.display(), error = %e, "cannot remove an old build folder")
                }
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_is_looked_at_through_its_window_once_then_back_to_its_mark() {
        let marks = PruneMarks::default();
        assert_eq!(marks.advance("app", 1), 1..1, "nothing trimmed yet");
        assert_eq!(marks.advance("app", 100), 1..100, "from its mark");
        assert_eq!(marks.advance("app", 101), 100..101);
        assert_eq!(marks.advance("app", 101), 101..101);
        assert_eq!(marks.advance("lib", 10), 1..10, "marks are per job");
        assert_eq!(
            marks.advance("app", 500),
            101..500,
            "back to the mark when a long build held the trimming back"
        );
        assert_eq!(
            marks.advance("app", 10_000),
            5_904..10_000,
            "at most the catch-up"
        );
        assert_eq!(
            marks.advance("new", 500),
            436..500,
            "a job seen first: only the window"
        );
    }
}
