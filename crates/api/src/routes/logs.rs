//! `/jobs/{name}/builds/{n}/log`: a build's output from file storage, resumable by offset,
//! so a client can follow a running build over plain HTTP.

use actix_web::{web, HttpResponse};
use kiln_service_kit::auth::Reader;
use kiln_service_kit::error::ApiError;
use kiln_service_kit::query::Query;
use serde::Deserialize;

use super::builds::{build_ref, require_build};
use crate::app::AppState;
use crate::storage::read_log;

/// Response header: the offset to pass as `?offset=` next time.
pub(crate) const NEXT_OFFSET: &str = "X-Kiln-Log-Next-Offset";
/// Response header: `true` while the build runs or more bytes wait to be read.
pub(crate) const MORE: &str = "X-Kiln-Log-More";

#[derive(Deserialize)]
pub(crate) struct LogQuery {
    #[serde(default)]
    offset: u64,
    /// `text` (default): the output lines; `jsonl`: the stored records with sequence
    /// numbers, timestamps and streams.
    #[serde(default)]
    format: Option<String>,
}

pub(crate) async fn get(
    _: Reader,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    q: Query<LogQuery>,
) -> Result<HttpResponse, ApiError> {
    let r = build_ref(&path.0, &path.1)?;
    let jsonl = match q.format.as_deref() {
        None | Some("text") => false,
        Some("jsonl") => true,
        Some(_) => return Err(ApiError::bad_request("format", "must be text or jsonl")),
    };
    let doc = require_build(&state, &r).await?;
    let root = state.storage_root.clone();
    let offset = q.offset;
    let read_doc = doc.clone();
    let chunk = web::block(move || read_log(&root, &read_doc, offset))
        .await
        .map_err(|e| ApiError::Unexpected(e.to_string()))?
        .map_err(|e| ApiError::Unexpected(format!("cannot read log: {e}")))?;
    let more = !doc.status.is_final() || !chunk.raw.is_empty();
    let mut res = HttpResponse::Ok();
    res.insert_header((NEXT_OFFSET, chunk.next_offset.to_string()))
        .insert_header((MORE, more.to_string()));
    if jsonl {
        return Ok(res.content_type("application/x-ndjson").body(chunk.raw));
    }
    let mut text = String::new();
    for l in &chunk.lines {
        text.push_str(&l.line);
        text.push('\n');
    }
    Ok(res.content_type("text/plain; charset=utf-8").body(text))
}
