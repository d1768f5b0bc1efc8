//! `/redis/{key}`: any key of the documented layout, type and value (JSON strings parsed),
//! for admins: the spec says everything in Redis is reachable through REST.

use actix_web::{web, HttpResponse};
use kiln_service_kit::auth::Admin;
use kiln_service_kit::error::ApiError;

use crate::app::AppState;

pub(crate) async fn get(
    _: Admin,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let key = path.into_inner();
    if !kiln_store::is_layout_key(&key) {
        return Err(ApiError::bad_request(
            "key",
            "not a key of Kiln's layout (jobs, folder_*, job_*, github_*, kiln:*)",
        ));
    }
    if key == kiln_model::keys::SECRETS || key.starts_with(kiln_model::keys::prefix::FOLDER_SECRETS)
    {
        return Err(ApiError::Forbidden(
            "secret values are never shown; GET /api/v1/secrets lists their names".into(),
        ));
    }
    Ok(HttpResponse::Ok().json(state.store.raw(&key).await?))
}
