//! `/nodes` and `/queue`: live workers (which an operator may pause and resume), and what
//! waits for them.

use actix_web::{web, HttpResponse};
use kiln_service_kit::auth::{Admin, Reader};
use kiln_service_kit::error::ApiError;
use serde_json::json;

use super::builds::explain_wait;
use crate::app::AppState;

pub(crate) async fn list(_: Reader, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let nodes = state.store.nodes().await?;
    Ok(HttpResponse::Ok().json(json!({ "nodes": nodes })))
}

pub(crate) async fn queue(_: Reader, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let mut queues = Vec::new();
    for q in state.store.queue_names().await? {
        let stats = state.store.queue_stats(&q).await?;
        let mut builds = state.store.queued_builds(&q).await?;
        for b in &mut builds {
            explain_wait(&state, b).await?;
        }
        queues.push(json!({"stats": stats, "builds": builds}));
    }
    let inflight = state.store.inflight_count().await?;
    Ok(HttpResponse::Ok().json(json!({ "queues": queues, "inflight": inflight })))
}

/// Pauses a live worker: from its next heartbeat it takes no new build and finishes the
/// ones it runs (its node's `state` says `paused`), as for maintenance of its machine.
pub(crate) async fn pause(
    _: Admin,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = super::folder_name(&path, "id")?;
    let live = state.store.nodes().await?;
    if !live.iter().any(|n| n.id == id) {
        return Err(ApiError::NotFound(format!("no live worker {id}")));
    }
    state.store.set_worker_paused(&id, true).await?;
    Ok(HttpResponse::Ok().json(json!({ "node": id, "paused": true })))
}

/// Resumes a paused worker (also one that is not live now: the pause is forgotten).
pub(crate) async fn resume(
    _: Admin,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = super::folder_name(&path, "id")?;
    state.store.set_worker_paused(&id, false).await?;
    Ok(HttpResponse::Ok().json(json!({ "node": id, "paused": false })))
}
