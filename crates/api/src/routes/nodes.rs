//! `/nodes` and `/queue`: live workers, and what waits for them.

use actix_web::{web, HttpResponse};
use kiln_service_kit::auth::Reader;
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
