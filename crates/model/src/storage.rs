//! Build folders in the shared file storage: `jobs/<folder>/.../<job>/<n>`, built only from
//! validated names. Readers re-check a stored path before touching the disk, so a corrupted
//! or hand-edited document can never point outside the storage root.

use std::io;
use std::path::{Path, PathBuf};

use crate::Name;

/// The build's folder under `root`, or `None` when `storage_path` is not a path Kiln
/// writes (absolute, `..`, empty or odd components).
pub fn build_dir(root: &Path, storage_path: &str) -> Option<PathBuf> {
    let mut parts = storage_path.split('/');
    if parts.next() != Some("jobs") {
        return None;
    }
    let rest: Vec<&str> = parts.collect();
    if rest.len() < 2 {
        return None;
    }
    let safe = |c: &&str| {
        !c.is_empty()
            && *c != "."
            && *c != ".."
            && c.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ".-_".contains(ch))
    };
    if !rest.iter().all(safe) || rest.last()?.parse::<u64>().is_err() {
        return None;
    }
    Some(root.join(storage_path))
}

/// Removes the folders of a deleted job's builds, then each job folder that held them once
/// it is empty, so that deleting a job leaves nothing of it in the storage (called by
/// `Store::delete_job_with_files`). Returns what could not be removed, with why;
/// a folder already gone is not a failure, and a job folder something else still uses
/// (a new build of a job made again under the same name) stays.
pub fn remove_deleted_builds<'a>(
    root: &Path,
    storage_paths: impl IntoIterator<Item = &'a str>,
) -> Vec<(PathBuf, io::Error)> {
    let mut failed = Vec::new();
    let mut job_dirs: Vec<PathBuf> = Vec::new();
    for dir in storage_paths.into_iter().filter_map(|p| build_dir(root, p)) {
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => failed.push((dir.clone(), e)),
            _ => {}
        }
        if let Some(job) = dir.parent().filter(|j| !job_dirs.iter().any(|d| d == j)) {
            job_dirs.push(job.to_owned());
        }
    }
    for dir in job_dirs {
        match std::fs::remove_dir(&dir) {
            Err(e)
                if !matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty
                ) =>
            {
                failed.push((dir, e))
            }
            _ => {}
        }
    }
    failed
}

/// Removes the storage folder of a deleted Kiln folder (`jobs/<chain>`, `chain` from the
/// root down to it) when it is empty. A deleted folder holds no jobs, so no new build
/// needs its storage folder; the old builds of a job moved elsewhere may still be in it,
/// and then it stays. A folder already gone is not a failure.
pub fn remove_deleted_folder(root: &Path, chain: &[Name]) -> io::Result<()> {
    let dir = chain
        .iter()
        .fold(root.join("jobs"), |dir, f| dir.join(f.as_str()));
    match std::fs::remove_dir(dir) {
        Err(e)
            if !matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty
            ) =>
        {
            Err(e)
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_kiln_shaped_paths_resolve() {
        let root = Path::new("/srv/kiln");
        assert_eq!(
            build_dir(root, "jobs/team-a/app_pr2/3").unwrap(),
            Path::new("/srv/kiln/jobs/team-a/app_pr2/3")
        );
        for bad in [
            "jobs/../etc/1",
            "/etc/passwd",
            "jobs/app",
            "jobs//1",
            "other/app/1",
            "jobs/a/b c/1",
            "jobs/app/x",
        ] {
            assert!(build_dir(root, bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_deleted_jobs_builds_and_its_emptied_folder_are_removed() {
        let root = std::env::temp_dir().join(format!("kiln-remove-{}", std::process::id()));
        let job = root.join("jobs/team/app");
        for sub in ["1/artifacts", "2"] {
            std::fs::create_dir_all(job.join(sub)).expect("mkdir");
        }
        std::fs::write(job.join("1/log.jsonl"), "{}").expect("write");
        let kept = root.join("jobs/team/other/1");
        std::fs::create_dir_all(&kept).expect("mkdir");
        let failed = remove_deleted_builds(
            &root,
            [
                "jobs/team/app/1",
                "jobs/team/app/2",
                "jobs/team/app/3",
                "jobs/../x/1",
            ],
        );
        assert!(failed.is_empty(), "{failed:?}");
        assert!(!job.exists(), "the job's folder is gone");
        assert!(kept.exists(), "another job's build stays");
        std::fs::create_dir_all(job.join("4")).expect("mkdir");
        assert!(remove_deleted_builds(&root, ["jobs/team/app/1"]).is_empty());
        assert!(job.join("4").exists(), "a job folder still in use stays");
        std::fs::remove_dir_all(&root).expect("clean up");
    }

    #[test]
    fn a_deleted_folders_storage_folder_goes_only_when_empty() {
        let root = std::env::temp_dir().join(format!("kiln-rmfolder-{}", std::process::id()));
        let chain = |names: &[&str]| -> Vec<Name> {
            names
                .iter()
                .map(|n| Name::parse(n).expect("name"))
                .collect()
        };
        std::fs::create_dir_all(root.join("jobs/team/sub")).expect("mkdir");
        std::fs::create_dir_all(root.join("jobs/team/moved/app/1")).expect("mkdir");
        remove_deleted_folder(&root, &chain(&["team", "sub"])).expect("removed");
        assert!(!root.join("jobs/team/sub").exists());
        remove_deleted_folder(&root, &chain(&["team", "moved"])).expect("kept");
        assert!(
            root.join("jobs/team/moved/app/1").exists(),
            "a moved job's old build stays"
        );
        remove_deleted_folder(&root, &chain(&["gone"])).expect("already gone");
        std::fs::remove_dir_all(&root).expect("clean up");
    }
}
