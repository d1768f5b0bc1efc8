//! The api's side of the shared file storage: reading logs and artifacts, and removing the
//! storage folders of deleted folders (a deleted job's files: `Store::delete_job_with_files`).

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use kiln_model::{output, storage, BuildDocument, LogLine, Name};

/// Removes a deleted folder's storage folder if it is empty; a failure is logged, never
/// fatal (Redis already forgot the folder).
pub(crate) async fn remove_folder_dir(root: &Path, chain: Vec<Name>) {
    let root = root.to_owned();
    let r =
        tokio::task::spawn_blocking(move || storage::remove_deleted_folder(&root, &chain)).await;
    if let Ok(Err(e)) = r {
        tracing::warn!(error = %e, "cannot remove a deleted folder's storage folder");
    }
}

/// A chunk of a build's log: complete lines from `offset`, and where the next read starts.
pub(crate) struct LogChunk {
    pub(crate) lines: Vec<LogLine>,
    pub(crate) raw: Vec<u8>,
    pub(crate) next_offset: u64,
}

/// Most bytes one log request returns; clients page with the next offset.
const MAX_CHUNK: u64 = 1024 * 1024;

/// Reads complete lines of the build's `log.jsonl` from byte `offset` (a partial last line
/// is left for the next read).
pub(crate) fn read_log(root: &Path, doc: &BuildDocument, offset: u64) -> std::io::Result<LogChunk> {
    let empty = LogChunk {
        lines: Vec::new(),
        raw: Vec::new(),
        next_offset: offset,
    };
    let Some(dir) = storage::build_dir(root, &doc.storage_path) else {
        return Ok(empty);
    };
    let mut f = match std::fs::File::open(dir.join(output::LOG_FILE)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(empty),
        Err(e) => return Err(e),
    };
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    f.take(MAX_CHUNK).read_to_end(&mut buf)?;
    let complete = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    buf.truncate(complete);
    let lines = buf
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect();
    Ok(LogChunk {
        lines,
        next_offset: offset + complete as u64,
        raw: buf,
    })
}

/// One file a build archived: its path below the build's `artifacts/` folder and its size.
#[derive(Debug, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Artifact {
    pub(crate) path: String,
    pub(crate) size: u64,
}

/// Every regular file below the build's `artifacts/` folder, sorted by path; none while the
/// build has archived nothing yet. Symlinks are neither listed nor followed (the worker
/// never makes one; one put there by hand must not reveal what it points at).
pub(crate) fn list_artifacts(root: &Path, doc: &BuildDocument) -> std::io::Result<Vec<Artifact>> {
    let Some(dir) = storage::build_dir(root, &doc.storage_path) else {
        return Ok(Vec::new());
    };
    let base = dir.join(output::ARTIFACTS_DIR);
    let mut found = Vec::new();
    let mut pending = vec![base.clone()];
    while let Some(d) = pending.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for e in entries {
            let e = e?;
            let t = e.file_type()?;
            if t.is_dir() {
                pending.push(e.path());
            } else if t.is_file() {
                let path = e.path();
                let rel = path.strip_prefix(&base).unwrap_or(&path);
                found.push(Artifact {
                    path: rel.to_string_lossy().into_owned(),
                    size: e.metadata()?.len(),
                });
            }
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(found)
}

/// Opens one artifact, `rel` being its path below `artifacts/` as the listing gives it
/// (already checked to hold only plain components): the file and its size, or `None` when
/// there is no such regular file. No symlink is followed on the way, so the download
/// cannot leave the build's folder.
pub(crate) fn open_artifact(
    root: &Path,
    doc: &BuildDocument,
    rel: &[&str],
) -> std::io::Result<Option<(std::fs::File, u64)>> {
    use std::os::unix::fs::OpenOptionsExt;
    let Some(mut path) = storage::build_dir(root, &doc.storage_path) else {
        return Ok(None);
    };
    path.push(output::ARTIFACTS_DIR);
    for (i, part) in rel.iter().enumerate() {
        path.push(part);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let last = i + 1 == rel.len();
        if (last && !meta.is_file()) || (!last && !meta.is_dir()) {
            return Ok(None);
        }
    }
    let file = match std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let size = file.metadata()?.len();
    Ok(Some((file, size)))
}
