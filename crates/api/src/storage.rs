//! The api's side of the shared file storage: reading logs and removing the folders of
//! deleted builds, jobs and folders.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use kiln_model::{output, storage, BuildDocument, LogLine, Name};

/// Removes the folders of a deleted job's builds and its emptied folder; failures are
/// logged, never fatal (Redis already forgot the builds, and a leftover folder only costs
/// disk).
pub(crate) async fn remove_build_dirs(root: &Path, docs: Vec<BuildDocument>) {
    let root = root.to_owned();
    let failed = tokio::task::spawn_blocking(move || {
        storage::remove_deleted_builds(&root, docs.iter().map(|d| d.storage_path.as_str()))
    })
    .await
    .unwrap_or_default();
    for (path, e) in failed {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove a deleted build's folder");
    }
}

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
