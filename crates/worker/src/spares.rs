//! Spare build folders: the folder of a build that fell out of retention is emptied and
//! kept by the worker, then renamed into place as the folder of its next build of the same
//! job, instead of being removed and a new one made. A build of a job at its retention
//! otherwise makes two inodes (folder, log) and frees two; on ext4 without a journal every
//! inode made scans past those freed in the last 30 s (making the folder and log was over
//! half of the worker's CPU in `make bench`'s throughput figure, with nothing freed by
//! the builds themselves: docs/performance.md).
//!
//! Spares live in `<storage root>/.spare/<worker id>/`, outside `jobs/`, so no reader sees
//! them and no other worker's pruning touches them. A spare is only reused for the job it
//! came from: a reader that still had the old build's log open sees that job's next log,
//! never another job's.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kiln_model::output;

pub(crate) struct Spares {
    /// `<storage root>/.spare/<worker id>`.
    dir: PathBuf,
    /// Most spares kept; past that, folders of pruned builds are removed as before.
    max: usize,
    kept: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    /// (job folder it came from, where it is now).
    folders: Vec<(PathBuf, PathBuf)>,
    /// Names spares uniquely within `dir`.
    next: u64,
}

impl Spares {
    pub(crate) fn new(storage_root: &Path, worker_id: &str, max: usize) -> Self {
        Self {
            dir: storage_root.join(".spare").join(worker_id),
            max,
            kept: Mutex::default(),
        }
    }

    /// Removes what an earlier run of a worker with this id left (blocking).
    pub(crate) fn clear(&self) -> io::Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// A spare folder of `job_dir` for its next build, if this worker keeps one.
    pub(crate) fn take(&self, job_dir: &Path) -> Option<PathBuf> {
        let mut kept = self.kept.lock().ok()?;
        let i = kept.folders.iter().position(|(job, _)| job == job_dir)?;
        Some(kept.folders.swap_remove(i).1)
    }

    /// Keeps `build_dir` (of a build that left retention) as a spare: moved out of `jobs/`
    /// and emptied but for an empty `log.jsonl`. `Ok(false)` when there is no room, so the
    /// caller removes it; an error leaves nothing in `.spare` (blocking).
    pub(crate) fn keep(&self, job_dir: &Path, build_dir: &Path) -> io::Result<bool> {
        let name = {
            let Ok(mut kept) = self.kept.lock() else {
                return Ok(false);
            };
            if kept.folders.len() >= self.max {
                return Ok(false);
            }
            kept.next += 1;
            kept.next
        };
        let spare = self.dir.join(name.to_string());
        if let Err(e) = std::fs::rename(build_dir, &spare) {
            if e.kind() != io::ErrorKind::NotFound {
                return Err(e);
            }
            std::fs::create_dir_all(&self.dir)?;
            std::fs::rename(build_dir, &spare)?;
        }
        if let Err(e) = empty_but_log(&spare) {
            let _ = std::fs::remove_dir_all(&spare);
            return Err(e);
        }
        if let Ok(mut kept) = self.kept.lock() {
            kept.folders.push((job_dir.to_owned(), spare));
        }
        Ok(true)
    }
}

/// Removes everything in `dir` (without following symlinks) except the log, which is
/// truncated: the file, unlike its blocks, is reused.
fn empty_but_log(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_file() && entry.file_name() == output::LOG_FILE {
            std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(entry.path())?;
        } else if kind.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pruned_folder_comes_back_empty_for_the_same_job_only() {
        let root = std::env::temp_dir().join(format!("kiln-spares-{}", std::process::id()));
        let job = root.join("jobs/app");
        let old = job.join("1");
        std::fs::create_dir_all(old.join("artifacts/sub")).expect("mkdir");
        std::fs::write(old.join(output::LOG_FILE), "old line\n").expect("log");
        std::fs::write(old.join("log.attempt-1.jsonl"), "older\n").expect("log");
        std::fs::write(old.join("artifacts/sub/a.txt"), "a").expect("artifact");
        let spares = Spares::new(&root, "w1", 1);

        assert!(spares.keep(&job, &old).expect("keep"));
        assert!(!old.exists(), "moved out of jobs/");
        assert!(
            !spares.keep(&job, &job.join("2")).expect("full"),
            "no room past the limit: the caller removes the folder"
        );
        assert_eq!(spares.take(&root.join("jobs/other")), None);
        let spare = spares.take(&job).expect("kept for its job");
        let left: Vec<_> = std::fs::read_dir(&spare)
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from(output::LOG_FILE)]);
        assert_eq!(
            std::fs::read(spare.join(output::LOG_FILE)).expect("read"),
            b""
        );
        assert_eq!(spares.take(&job), None, "taken once");
        spares.clear().expect("clear");
        assert!(!spare.exists());
        let _ = std::fs::remove_dir_all(root);
    }
}
