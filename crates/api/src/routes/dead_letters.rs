//! `/dead-letters/{consumer}`: finished builds a consumer (the indexer, the GitHub status
//! reporter) gave up on for good, with the reason.

use actix_web::{web, HttpResponse};
use kiln_service_kit::auth::Reader;
use kiln_service_kit::error::ApiError;
use serde_json::json;

use super::folder_name;
use crate::app::AppState;

/// Most dead letters returned.
const MAX: isize = 500;

pub(crate) async fn list(
    _: Reader,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let consumer = folder_name(&path, "consumer")?;
    let letters = state.store.dead_letters(&consumer, MAX).await?;
    Ok(HttpResponse::Ok().json(json!({ "consumer": consumer, "dead_letters": letters })))
}
