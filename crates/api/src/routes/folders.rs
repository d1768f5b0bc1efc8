//! `/folders`: the `jobs` root list and `folder_<name>` lists.

use actix_web::{web, HttpRequest, HttpResponse};
use kiln_model::{Entry, Name};
use kiln_service_kit::auth::{Reader, Writer};
use kiln_service_kit::body::Body;
use kiln_service_kit::error::ApiError;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{body_json, folder_name, API_PREFIX};
use crate::app::AppState;
use crate::scope;
use crate::storage::remove_folder_dir;

pub(crate) fn entry_json(e: &Entry) -> Value {
    match e {
        Entry::Job(j) => json!({"type": "job", "name": j, "key": e.to_string()}),
        Entry::Folder(f) => json!({"type": "folder", "name": f, "key": e.to_string()}),
    }
}

pub(crate) async fn list_root(
    _: Reader,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let entries = state.store.list_entries(None).await?;
    Ok(HttpResponse::Ok().json(json!({
        "entries": entries.iter().map(entry_json).collect::<Vec<_>>()
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewFolder {
    name: String,
    #[serde(default)]
    parent: Option<String>,
}

pub(crate) async fn create(
    who: Writer,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    let f: NewFolder = body_json(&req, &body)?;
    let name = folder_name(&f.name, "name")?;
    let parent = f
        .parent
        .as_deref()
        .map(|p| folder_name(p, "parent"))
        .transpose()?;
    scope::require_folder(&state.store, &who.0, parent.as_ref()).await?;
    state.store.create_folder(&name, parent.as_ref()).await?;
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("{API_PREFIX}/folders/{name}")))
        .json(json!({"name": name, "parent": parent, "entries": []})))
}

pub(crate) async fn get(
    _: Reader,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name: Name = folder_name(&path, "name")?;
    let parent = state
        .store
        .folder_parent(&name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("folder {name} not found")))?;
    let entries = state.store.list_entries(Some(&name)).await?;
    Ok(HttpResponse::Ok().json(json!({
        "name": name,
        "parent": parent,
        "entries": entries.iter().map(entry_json).collect::<Vec<_>>()
    })))
}

pub(crate) async fn delete(
    who: Writer,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = folder_name(&path, "name")?;
    // What a limited token may change is inside its folders: not the folders themselves.
    if let Some(parent) = state.store.folder_parent(&name).await? {
        scope::require_folder(&state.store, &who.0, parent.as_ref()).await?;
    }
    // Read before the folder goes: its place in the tree names its storage folder.
    let chain = state.store.folder_chain(Some(&name)).await.ok();
    state.store.delete_folder(&name).await?;
    if let Some(chain) = chain {
        remove_folder_dir(&state.storage_root, chain).await;
    }
    Ok(HttpResponse::NoContent().finish())
}
