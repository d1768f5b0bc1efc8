//! `/secrets` and `/folders/{folder}/secrets`: values builds get as environment variables
//! (`secrets` in a job definition). A folder's secrets go to the jobs inside it, at any
//! depth, before a global secret of the same name, so a team can manage its own with a
//! token limited to its folder. They can be set, replaced, listed by name and deleted; no
//! answer ever carries a value.

use actix_web::{web, HttpRequest, HttpResponse};
use kiln_model::{secret, Name};
use kiln_service_kit::auth::{Principal, Reader, Writer};
use kiln_service_kit::body::Body;
use kiln_service_kit::error::ApiError;
use serde::Deserialize;
use serde_json::json;

use super::{body_json, folder_name};
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

/// The folder named in the path, which must exist.
async fn existing_folder(state: &AppState, path: &str) -> Result<Name, ApiError> {
    let folder = folder_name(path, "folder")?;
    match state.store.folder_parent(&folder).await? {
        Some(_) => Ok(folder),
        None => Err(ApiError::NotFound(format!("folder {folder} not found"))),
    }
}

/// `who` may change the secrets of `folder` (`None`: the global ones).
async fn may_change(
    state: &AppState,
    who: &Principal,
    folder: Option<&Name>,
) -> Result<(), ApiError> {
    match folder {
        Some(f) => scope::require_folder(&state.store, who, Some(f)).await,
        None => scope::require_unlimited(who, "global secrets"),
    }
}

async fn list_in(state: &AppState, folder: Option<&Name>) -> Result<HttpResponse, ApiError> {
    let secrets = state.store.list_secrets(folder).await?;
    Ok(HttpResponse::Ok().json(json!({ "secrets": secrets })))
}

async fn put_in(
    state: &AppState,
    who: Principal,
    folder: Option<Name>,
    name: &str,
    req: &HttpRequest,
    body: &Body,
) -> Result<HttpResponse, ApiError> {
    let b: SecretBody = body_json(req, body)?;
    secret::validate_value(&b.value).map_err(|e| ApiError::bad_request(e.field, e.message))?;
    may_change(state, &who, folder.as_ref()).await?;
    let created = state
        .store
        .put_secret(
            folder.as_ref(),
            name,
            &b.value,
            &who.name,
            state.seal_key.as_deref(),
        )
        .await?;
    let answer = json!({"name": name, "folder": folder, "updated_by": who.name});
    Ok(if created {
        HttpResponse::Created().json(answer)
    } else {
        HttpResponse::Ok().json(answer)
    })
}

async fn delete_in(
    state: &AppState,
    who: &Principal,
    folder: Option<Name>,
    name: &str,
) -> Result<HttpResponse, ApiError> {
    may_change(state, who, folder.as_ref()).await?;
    if !state.store.delete_secret(folder.as_ref(), name).await? {
        return Err(ApiError::NotFound(format!("secret '{name}' not found")));
    }
    Ok(HttpResponse::NoContent().finish())
}

pub(crate) async fn list(_: Reader, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    list_in(&state, None).await
}

pub(crate) async fn put(
    who: Writer,
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    put_in(&state, who.0, None, name(&path)?, &req, &body).await
}

pub(crate) async fn delete(
    who: Writer,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    delete_in(&state, &who.0, None, name(&path)?).await
}

pub(crate) async fn list_folder(
    _: Reader,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let folder = existing_folder(&state, &path).await?;
    list_in(&state, Some(&folder)).await
}

pub(crate) async fn put_folder(
    who: Writer,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    req: HttpRequest,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    let secret = name(&path.1)?;
    let folder = existing_folder(&state, &path.0).await?;
    put_in(&state, who.0, Some(folder), secret, &req, &body).await
}

pub(crate) async fn delete_folder(
    who: Writer,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let secret = name(&path.1)?;
    let folder = existing_folder(&state, &path.0).await?;
    delete_in(&state, &who.0, Some(folder), secret).await
}
