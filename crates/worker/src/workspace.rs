//! Build workspaces, emptied and reused rather than created and removed per build: for
//! short steps, allocating and freeing a directory inode per build cost more than running
//! the step (measured with `perf` in `make bench`, see docs/performance.md).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The worker's workspaces: `<workspace_root>/<worker id>-<n>`, at most one per build
/// slot, each empty whenever a build takes it.
pub(crate) struct Workspaces {
    root: PathBuf,
    owner: String,
    free: Mutex<Vec<PathBuf>>,
    made: AtomicU64,
}

impl Workspaces {
    pub(crate) fn new(root: PathBuf, owner: &str) -> Self {
        Self {
            root,
            owner: owner.to_owned(),
            free: Mutex::new(Vec::new()),
            made: AtomicU64::new(0),
        }
    }

    /// An empty workspace: a free one, else a new one (emptied first in case a previous
    /// run of a worker with the same id left it behind).
    pub(crate) async fn take(&self) -> io::Result<PathBuf> {
        if let Some(ws) = self.free.lock().ok().and_then(|mut f| f.pop()) {
            return Ok(ws);
        }
        let n = self.made.fetch_add(1, Ordering::Relaxed);
        let ws = self.root.join(format!("{}-{n}", self.owner));
        blocking(ws.clone(), |ws| {
            match std::fs::remove_dir_all(ws) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            std::fs::create_dir_all(ws)
        })
        .await?;
        Ok(ws)
    }

    /// Empties `ws` for the next build; one that cannot be emptied (say, a step left a
    /// read-only folder) is removed as far as possible and not reused.
    pub(crate) async fn give_back(&self, ws: PathBuf) {
        // Most often nothing was left (or the step cleaned up): one directory read answers
        // that without a hop to the blocking pool and back.
        let emptied = if is_empty(&ws) {
            Ok(())
        } else {
            blocking(ws.clone(), empty).await
        };
        match emptied {
            Ok(()) => {
                if let Ok(mut f) = self.free.lock() {
                    f.push(ws);
                }
            }
            Err(e) => {
                tracing::warn!(path = %ws.display(), error = %e, "cannot empty workspace; not reused");
                let _ = blocking(ws, |ws| std::fs::remove_dir_all(ws)).await;
            }
        }
    }
}

async fn blocking(
    ws: PathBuf,
    f: impl FnOnce(&Path) -> io::Result<()> + Send + 'static,
) -> io::Result<()> {
    tokio::task::spawn_blocking(move || f(&ws))
        .await
        .map_err(io::Error::other)?
}

/// Whether `dir` holds nothing, from the first read of its entries (bounded however full
/// it is).
fn is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none())
}

/// Removes everything inside `dir` without following symlinks.
fn empty(dir: &Path) -> io::Result<()> {
    empty_but(dir, None)
}

/// Removes everything inside `dir` without following symlinks, except the regular file
/// named `keep` (if any).
pub(crate) fn empty_but(dir: &Path, keep: Option<&str>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else if !(kind.is_file() && keep.is_some_and(|k| entry.file_name() == k)) {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_workspace_comes_back_empty_and_is_reused() {
        let root = std::env::temp_dir().join(format!("kiln-ws-test-{}", std::process::id()));
        let pool = Workspaces::new(root.clone(), "w");
        let ws = pool.take().await.expect("take");
        std::fs::create_dir_all(ws.join("a/b")).expect("mkdir");
        std::fs::write(ws.join("a/b/f"), "x").expect("write");
        std::os::unix::fs::symlink("/etc", ws.join("link")).expect("symlink");
        pool.give_back(ws.clone()).await;
        let again = pool.take().await.expect("take again");
        assert_eq!(again, ws);
        assert_eq!(std::fs::read_dir(&again).expect("list").count(), 0);
        let second = pool
            .take()
            .await
            .expect("a second one while the first is taken");
        assert_ne!(second, again);
        let _ = std::fs::remove_dir_all(root);
    }
}
