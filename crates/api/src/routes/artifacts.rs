//! `/jobs/{name}/builds/{n}/artifacts`: the files a build archived (the job's `artifacts`
//! globs), listed and downloaded over the api, so that a client needs no access to the
//! shared file storage.

use actix_web::http::header::{ContentDisposition, ContentType};
use actix_web::{web, HttpResponse};
use kiln_service_kit::auth::Reader;
use kiln_service_kit::error::ApiError;
use serde_json::json;

use super::builds::{build_ref, require_build};
use crate::app::AppState;
use crate::storage::{list_artifacts, open_artifact};

/// Bytes read from the file per chunk sent: each read is a hop to the blocking pool, so
/// tokio's 4 KiB default made a large download ten times slower (measured on the local
/// stack: a 500 MB artifact took 3.1 s with it, 0.26–0.34 s with this; the api's resident
/// memory stayed under 40 MB).
const CHUNK: usize = 256 * 1024;
/// Longest artifact path accepted, as Linux's `PATH_MAX`.
const MAX_PATH: usize = 4096;

pub(crate) async fn list(
    _: Reader,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let r = build_ref(&path.0, &path.1)?;
    let doc = require_build(&state, &r).await?;
    if let Some(at) = doc.artifacts_expired_at {
        return Ok(HttpResponse::Ok().json(json!({ "artifacts": [], "expired_at": at })));
    }
    let root = state.storage_root.clone();
    let artifacts = web::block(move || list_artifacts(&root, &doc))
        .await
        .map_err(|e| ApiError::Unexpected(e.to_string()))?
        .map_err(|e| ApiError::Unexpected(format!("cannot list artifacts: {e}")))?;
    Ok(HttpResponse::Ok().json(json!({ "artifacts": artifacts })))
}

pub(crate) async fn get(
    _: Reader,
    state: web::Data<AppState>,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (name, number, rel) = path.into_inner();
    let r = build_ref(&name, &number)?;
    let parts = artifact_path(&rel)?;
    let doc = require_build(&state, &r).await?;
    if let Some(at) = doc.artifacts_expired_at {
        return Err(ApiError::NotFound(format!(
            "the artifacts of build {r} were removed at {at} (its job's retention.artifacts_days)"
        )));
    }
    let root = state.storage_root.clone();
    let owned: Vec<String> = parts.iter().map(|p| (*p).to_owned()).collect();
    let opened = web::block(move || {
        let parts: Vec<&str> = owned.iter().map(String::as_str).collect();
        open_artifact(&root, &doc, &parts)
    })
    .await
    .map_err(|e| ApiError::Unexpected(e.to_string()))?
    .map_err(|e| ApiError::Unexpected(format!("cannot read artifact: {e}")))?;
    let Some((file, size)) = opened else {
        return Err(ApiError::NotFound(format!(
            "artifact {rel} of build {r} not found"
        )));
    };
    let file_name = parts.last().copied().unwrap_or_default().to_owned();
    Ok(HttpResponse::Ok()
        .insert_header(ContentType::octet_stream())
        .insert_header(ContentDisposition::attachment(file_name))
        .no_chunking(size)
        .streaming(tokio_util::io::ReaderStream::with_capacity(
            tokio::fs::File::from_std(file),
            CHUNK,
        )))
}

/// Splits an artifact's path into its components, refusing anything that is not a plain
/// relative path (`..`, `.`, empty components, NUL), so it can only name a file below the
/// build's `artifacts/` folder.
fn artifact_path(raw: &str) -> Result<Vec<&str>, ApiError> {
    let bad = |why: &str| ApiError::bad_request("path", why);
    if raw.is_empty() {
        return Err(bad("must name an artifact"));
    }
    if raw.len() > MAX_PATH {
        return Err(bad("is too long"));
    }
    let parts: Vec<&str> = raw.split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == ".." || p.contains('\0'))
    {
        return Err(bad(
            "must be a relative path without empty, '.' or '..' components",
        ));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths_name_an_artifact() {
        assert_eq!(
            artifact_path("dist/app.tar.gz").expect("plain"),
            ["dist", "app.tar.gz"]
        );
        for bad in [
            "",
            "../log.jsonl",
            "dist/../../x",
            "/etc/passwd",
            "a//b",
            "./a",
            "a/",
            "a\0b",
        ] {
            assert!(artifact_path(bad).is_err(), "{bad:?}");
        }
    }
}
