//! Build folders in the shared file storage: `jobs/<folder>/.../<job>/<n>`, built only from
//! validated names. Readers re-check a stored path before touching the disk, so a corrupted
//! or hand-edited document can never point outside the storage root.

use std::path::{Path, PathBuf};

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
}
