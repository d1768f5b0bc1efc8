//! `/secrets`: values builds get as environment variables (`secrets` in a job definition).
//! They can be set, replaced, listed by name and deleted; no answer ever carries a value.

use actix_web::{web, HttpRequest, HttpResponse};
use kiln_model::secret;
use kiln_service_kit::auth::{Reader, Writer};
use kiln_service_kit::body::Body;
use kiln_service_kit::error::ApiError;
use serde::Deserialize;
use serde_json::json;

use super::body_json;
use crate::app::AppState;
use crate::scope;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretBody {
    value: String,
}

fn name(path: &str) -> Result<&str, ApiError> {
    secret::validate_name(path).map_err(|e| ApiError::bad_request(e.field, e.message))?;
    Ok(path)
}

pub(crate) async fn list(_: Reader, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let secrets = state.store.list_secrets().await?;
    Ok(HttpResponse::Ok().json(json!({ "secrets": secrets })))
}

pub(crate) async fn put(
    who: Writer,
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    let name = name(&path)?;
    let b: SecretBody = body_json(&req, &body)?;
    secret::validate_value(&b.value).map_err(|e| ApiError::bad_request(e.field, e.message))?;
    scope::require_unlimited(&who.0, "secrets")?;
    let created = state
        .store
        .put_secret(name, &b.value, &who.0.name, state.seal_key.as_deref())
        .await?;
    let answer = json!({"name": name, "updated_by": who.0.name});
    Ok(if created {
        HttpResponse::Created().json(answer)
    } else {
        HttpResponse::Ok().json(answer)
    })
}

pub(crate) async fn delete(
    who: Writer,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = name(&path)?;
    scope::require_unlimited(&who.0, "secrets")?;
    if !state.store.delete_secret(name).await? {
        return Err(ApiError::NotFound(format!("secret '{name}' not found")));
    }
    Ok(HttpResponse::NoContent().finish())
}
