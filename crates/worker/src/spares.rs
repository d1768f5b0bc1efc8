//! Spare build folders: the folder of a build that fell out of retention is emptied (but
//! for its log, truncated) and becomes the folder of this worker's next build of the same
//! job, so that a job at its retention, as most jobs of a CI server are, renames a folder
//! into place instead of freeing one inode pair and allocating another per build. Only for
//! the same job: a reader that still had the old log open sees that job's next log, never
//! another job's.
//!
//! Why: on the benchmark machine's ext4 (no journal: every inode made scans past those
//! freed in the last minutes) making the folder and the log cost up to 0.5 ms where
//! renaming a folder costs 0.03 ms (docs/performance.md). Spares live in
//! `<storage root>/.spare/<worker id>/`, outside `jobs/`, so no reader sees them and no other
//! worker's pruning touches them. (Empty folders made ahead of time for any job, *fresh*
//! spares, were dropped in session 9: the log writer makes a build's folder while its first
//! step already runs, so they saved no latency, and their rename cost CPU.)

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use kiln_model::output;

pub(crate) struct Spares {
    /// `<storage root>/.spare/<worker id>`.
    dir: PathBuf,
    /// Most spares kept; past that, folders of pruned builds are removed as before.
    max_kept: usize,
    /// Set when `.spare` turned out to be on another filesystem than `jobs/` (a rename
    /// across them fails): spares are then not kept.
    off: AtomicBool,
    kept: Mutex<Kept>,
}

/// A spare folder taken for a build; [`Spare::place`] puts it in place.
pub(crate) struct Spare {
    path: PathBuf,
    spares: Arc<Spares>,
}

#[derive(Default)]
struct Kept {
    /// (job folder it came from, where it is now).
    used: Vec<(PathBuf, PathBuf)>,
    /// Names spares uniquely within `dir`.
    next: u64,
}

impl Kept {
    fn name(&mut self, dir: &Path) -> PathBuf {
        self.next += 1;
        dir.join(self.next.to_string())
    }
}

impl Spares {
    pub(crate) fn new(storage_root: &Path, worker_id: &str, max_kept: usize) -> Self {
        Self {
            dir: storage_root.join(".spare").join(worker_id),
            max_kept,
            off: AtomicBool::new(false),
            kept: Mutex::default(),
        }
    }

    /// Removes what an earlier run of a worker with this id left, and forgets every spare
    /// (blocking).
    pub(crate) fn clear(&self) -> io::Result<()> {
        if let Ok(mut kept) = self.kept.lock() {
            kept.used.clear();
        }
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// A spare folder for the next build of `job_dir`, if one of its builds left one.
    pub(crate) fn take(self: &Arc<Self>, job_dir: &Path) -> Option<Spare> {
        let mut kept = self.kept.lock().ok()?;
        let i = kept.used.iter().position(|(job, _)| job == job_dir)?;
        let path = kept.used.swap_remove(i).1;
        Some(Spare {
            path,
            spares: self.clone(),
        })
    }

    /// Keeps `build_dir` (of a build that left retention) as a spare: moved out of `jobs/`
    /// and emptied but for an empty `log.jsonl`. When the kept spares are at their limit
    /// the oldest is removed first: a job that just finished a build is likelier to run
    /// again than one whose spare waited longest (its job may be gone). `Ok(false)` when
    /// `build_dir` is not a plain folder (a symlink is never followed) or spares are off,
    /// so the caller removes it; an error leaves nothing in `.spare` (blocking).
    pub(crate) fn keep(&self, job_dir: &Path, build_dir: &Path) -> io::Result<bool> {
        if self.off.load(Ordering::Relaxed) || !std::fs::symlink_metadata(build_dir)?.is_dir() {
            return Ok(false);
        }
        let (spare, evicted) = {
            let Ok(mut kept) = self.kept.lock() else {
                return Ok(false);
            };
            let evicted = (kept.used.len() >= self.max_kept && !kept.used.is_empty())
                .then(|| kept.used.remove(0).1);
            (kept.name(&self.dir), evicted)
        };
        if let Some(old) = evicted {
            let _ = std::fs::remove_dir_all(old);
        }
        let moved = std::fs::rename(build_dir, &spare).or_else(|e| {
            if e.kind() != io::ErrorKind::NotFound {
                return Err(e);
            }
            std::fs::create_dir_all(&self.dir)?;
            std::fs::rename(build_dir, &spare)
        });
        if let Err(e) = moved {
            self.turn_off_if_apart(&e);
            return Err(e);
        }
        if let Err(e) = empty_but_log(&spare) {
            let _ = std::fs::remove_dir_all(&spare);
            return Err(e);
        }
        if let Ok(mut kept) = self.kept.lock() {
            kept.used.push((job_dir.to_owned(), spare));
        }
        Ok(true)
    }

    fn turn_off_if_apart(&self, e: &io::Error) {
        if e.kind() == io::ErrorKind::CrossesDevices && !self.off.swap(true, Ordering::Relaxed) {
            tracing::warn!(path = %self.dir.display(), "spare build folders are on another filesystem than the builds' folders; not used");
        }
    }
}

impl Spare {
    /// Puts the spare in place as the build folder `dir` and opens its (empty) log for
    /// writing; `dir`'s parents are made if missing. On failure the spare is removed
    /// (blocking).
    pub(crate) fn place(self, dir: &Path) -> io::Result<std::fs::File> {
        let spare = &self.path;
        let placed = std::fs::rename(spare, dir)
            .or_else(|e| match dir.parent() {
                Some(parent) if e.kind() == io::ErrorKind::NotFound && spare.exists() => {
                    std::fs::create_dir_all(parent)?;
                    std::fs::rename(spare, dir)
                }
                _ => Err(e),
            })
            .and_then(|()| open_empty_log(&dir.join(output::LOG_FILE)));
        if let Err(e) = &placed {
            self.spares.turn_off_if_apart(e);
            let _ = std::fs::remove_dir_all(spare);
        }
        placed
    }
}

/// Opens a spare's log, which is empty, for writing. Not with `O_TRUNC`: on ext4 truncating a
/// file (even an empty one) marks it to be flushed to disk when it is closed (`auto_da_alloc`,
/// the guard for programs that rewrite a file in place), so every build's log would have
/// been written out synchronously at its end: a tenth of the worker's CPU per build in
/// `make bench`, and a disk write per build (docs/performance-history.md, session 9). A log that is
/// not empty after all is emptied, as `File::create` would.
fn open_empty_log(path: &Path) -> io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    if file.metadata()?.len() > 0 {
        file.set_len(0)?;
    }
    Ok(file)
}

/// Removes everything in `dir` (without following symlinks) except the log, which is
/// truncated: the file, unlike its blocks, is reused.
fn empty_but_log(dir: &Path) -> io::Result<()> {
    crate::workspace::empty_but(dir, Some(output::LOG_FILE))?;
    match std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(dir.join(output::LOG_FILE))
    {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("kiln-spares-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        root
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_pruned_folder_comes_back_empty_for_the_same_job_only() {
        let root = scratch("used");
        let job = root.join("jobs/app");
        let old = job.join("1");
        std::fs::create_dir_all(old.join("artifacts/sub")).expect("mkdir");
        std::fs::write(old.join(output::LOG_FILE), "old line\n").expect("log");
        std::fs::write(old.join("log.attempt-1.jsonl"), "older\n").expect("log");
        std::fs::write(old.join("artifacts/sub/a.txt"), "a").expect("artifact");
        let spares = Arc::new(Spares::new(&root, "w1", 1));

        let other_job = root.join("jobs/other");
        std::fs::create_dir_all(other_job.join("7")).expect("mkdir");
        assert!(spares.keep(&other_job, &other_job.join("7")).expect("keep"));
        let evicted = spares.dir.join("1");
        assert!(evicted.exists());
        assert!(spares.keep(&job, &old).expect("keep"));
        assert!(!old.exists(), "moved out of jobs/");
        assert!(
            !evicted.exists(),
            "past the limit the spare kept longest is removed"
        );
        std::os::unix::fs::symlink(&root, job.join("3")).expect("symlink");
        assert!(
            !spares.keep(&job, &job.join("3")).expect("not a folder"),
            "a symlink is left to the caller"
        );
        assert!(spares.take(&other_job).is_none());
        let spare = spares.take(&job).expect("kept for its job").path;
        assert_eq!(names(&spare), [output::LOG_FILE]);
        assert_eq!(
            std::fs::read(spare.join(output::LOG_FILE)).expect("read"),
            b""
        );
        assert!(spares.take(&job).is_none(), "taken once");
        spares.clear().expect("clear");
        assert!(!spare.exists());
        let _ = std::fs::remove_dir_all(root);
    }

    /// A spare's log is opened without truncating it, yet a build never appends to
    /// anything left in it.
    #[test]
    fn a_placed_log_starts_empty_whatever_the_spare_held() {
        let root = scratch("log");
        std::fs::create_dir_all(&root).expect("mkdir");
        let path = root.join(output::LOG_FILE);
        std::fs::write(&path, "left over\n").expect("write");
        let mut log = open_empty_log(&path).expect("open");
        std::io::Write::write_all(&mut log, b"new\n").expect("write");
        assert_eq!(std::fs::read(&path).expect("read"), b"new\n");
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn a_spare_is_placed_with_its_parents_and_never_over_a_folder() {
        let root = scratch("place");
        let job = root.join("jobs/team/app");
        for n in ["1", "2"] {
            std::fs::create_dir_all(job.join(n)).expect("mkdir");
        }
        let spares = Arc::new(Spares::new(&root, "w1", 4));
        assert!(spares.keep(&job, &job.join("1")).expect("keep"));
        assert!(spares.keep(&job, &job.join("2")).expect("keep"));
        std::fs::remove_dir_all(root.join("jobs")).expect("job folder gone");
        let dir = job.join("3");
        let spare = spares.take(&job).expect("a spare");
        let from = spare.path.clone();
        let mut log = spare.place(&dir).expect("placed, parents made");
        std::io::Write::write_all(&mut log, b"line\n").expect("write");
        assert_eq!(names(&dir), [output::LOG_FILE]);
        assert!(!from.exists());

        let other = spares.take(&job).expect("the second");
        let from = other.path.clone();
        assert!(
            other.place(&dir).is_err(),
            "a folder that exists is not replaced"
        );
        assert!(
            !from.exists(),
            "a spare that could not be placed is removed"
        );
        assert_eq!(
            std::fs::read(dir.join(output::LOG_FILE)).expect("read"),
            b"line\n"
        );
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn spares_on_another_filesystem_are_turned_off() {
        use std::os::unix::fs::MetadataExt;
        let shm = Path::new("/dev/shm");
        let root = scratch("apart");
        let job = root.join("jobs/app");
        std::fs::create_dir_all(job.join("1")).expect("mkdir");
        assert_ne!(
            std::fs::metadata(shm)
                .expect("/dev/shm (tmpfs) is needed")
                .dev(),
            std::fs::metadata(&root).expect("root").dev(),
            "this test needs the temp dir and /dev/shm on different filesystems"
        );
        let elsewhere = shm.join(format!("kiln-spares-apart-{}", std::process::id()));
        let spares = Arc::new(Spares::new(&elsewhere, "w1", 4));
        assert!(spares.keep(&job, &job.join("1")).is_err());
        assert!(job.join("1").exists(), "left for the caller to remove");
        assert!(!spares.keep(&job, &job.join("1")).expect("spares are off"));
        assert!(spares.take(&job).is_none());
        let _ = std::fs::remove_dir_all(root);
        let _ = std::fs::remove_dir_all(elsewhere);
    }
}
