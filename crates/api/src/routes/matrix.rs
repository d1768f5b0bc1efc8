//! `/jobs/{name}/builds/{n}/matrix`: a matrix build's whole matrix — each cell's build, and
//! the matrix's status once every cell has ended — and cancelling all of it at once.

use actix_web::{web, HttpResponse};
use kiln_model::matrix::matrix_status;
use kiln_model::{BuildDocument, BuildRef, MatrixCell};
use kiln_service_kit::auth::{Reader, Writer};
use kiln_service_kit::error::ApiError;
use serde_json::json;

use super::builds::{build_ref, require_build};
use crate::app::AppState;
use crate::scope;

/// The matrix the build at `r` belongs to, and its builds' documents in cell order (`None`
/// for one retention or a deletion took away). 404 for a build of no matrix.
async fn group(
    state: &AppState,
    r: &BuildRef,
) -> Result<(MatrixCell, Vec<Option<BuildDocument>>), ApiError> {
    let doc = require_build(state, r).await?;
    let cell = doc
        .matrix
        .ok_or_else(|| ApiError::NotFound(format!("build {r} is not a build of a matrix")))?;
    let docs = state.store.matrix_group(&r.job, &cell).await?;
    Ok((cell, docs))
}

/// Each cell's build (number, cell, status, reason) and the matrix's status: `null` while a
/// cell is queued or running, else as `kiln_model::matrix::matrix_status` rules.
pub(crate) async fn get(
    _: Reader,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let r = build_ref(&path.0, &path.1)?;
    let (cell, docs) = group(&state, &r).await?;
    let builds: Vec<_> = cell
        .numbers()
        .zip(&docs)
        .map(|(n, d)| match d {
            Some(d) => json!({
                "number": n,
                "cell": d.matrix.as_ref().map(|m| &m.cell),
                "status": d.status,
                "reason": d.reason,
                "started_at": d.started_at,
                "finished_at": d.finished_at,
            }),
            None => json!({"number": n, "status": null, "reason": "no longer kept"}),
        })
        .collect();
    let status = docs
        .iter()
        .map(|d| d.as_ref().map(|d| d.status))
        .collect::<Option<Vec<_>>>()
        .and_then(matrix_status);
    Ok(HttpResponse::Ok().json(json!({
        "job": r.job,
        "group": cell.group,
        "size": cell.size,
        "status": status,
        "builds": builds,
    })))
}

/// Cancels every build of the matrix still queued or running (202): what each one's
/// cancel did, `cancelled` at once or `requested` of its worker.
pub(crate) async fn cancel(
    who: Writer,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let r = build_ref(&path.0, &path.1)?;
    scope::require_job(&state.store, &who.0, &r.job).await?;
    let (cell, _) = group(&state, &r).await?;
    let outcomes: Vec<_> = state
        .store
        .cancel_matrix(&r.job, &cell, &who.0.name)
        .await?
        .into_iter()
        .map(|(n, outcome)| json!({"number": n, "outcome": outcome.as_str()}))
        .collect();
    Ok(HttpResponse::Accepted().json(json!({"cancelled": outcomes})))
}
