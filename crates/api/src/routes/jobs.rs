//! `/jobs/{name}`: job definitions at `job_<name>`.

use actix_web::{web, HttpRequest, HttpResponse};
use kiln_model::{keys, JobDefinition, JobName};
use kiln_service_kit::auth::{Reader, Writer};
use kiln_service_kit::body::Body;
use kiln_service_kit::error::ApiError;
use kiln_service_kit::query::Query;
use kiln_store::PutOutcome;
use serde::Deserialize;
use serde_json::json;

use super::{body_json, folder_name, job_name, API_PREFIX};
use crate::app::AppState;
use crate::scope;

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    folder: Option<String>,
}

pub(crate) async fn list(
    _: Reader,
    state: web::Data<AppState>,
    q: Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let folder = q
        .folder
        .as_deref()
        .map(|f| folder_name(f, "folder"))
        .transpose()?;
    let jobs = state.store.list_jobs(folder.as_ref()).await?;
    let jobs: Vec<_> = jobs
        .into_iter()
        .map(|(name, definition)| json!({"name": name, "definition": definition}))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "jobs": jobs })))
}

/// Users may only create names they could choose; derived `_pr<N>` / `_branch-` jobs are
/// created by github-ingest, but may be replaced here once they exist.
pub(crate) async fn put(
    who: Writer,
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    let name = job_name(&path)?;
    let def: JobDefinition = body_json(&req, &body)?;
    def.validate_as(&name)
        .map_err(|e| ApiError::bad_request(e.field, e.message))?;
    // A limited token may put a job only in its folders, and replace only one there.
    scope::require_job(&state.store, &who.0, &name).await?;
    scope::require_folder(&state.store, &who.0, def.folder.as_ref()).await?;
    if name.base().is_some() && state.store.get_job(&name).await?.is_none() {
        return Err(ApiError::bad_request(
            "name",
            "names with '_' are reserved for jobs Kiln derives from GitHub pull requests and branches",
        ));
    }
    let outcome = state.store.put_job(&name, &def, &who.0.name).await?;
    let mut r = match outcome {
        PutOutcome::Created => HttpResponse::Created(),
        PutOutcome::Replaced => HttpResponse::Ok(),
    };
    Ok(
        r.insert_header(("Location", format!("{API_PREFIX}/jobs/{name}")))
            .json(json!({"name": name, "definition": def})),
    )
}

pub(crate) async fn get(
    _: Reader,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = job_name(&path)?;
    let def = require_job(&state, &name).await?;
    let mut body = json!({"name": name, "definition": def});
    if let Some(next) = next_scheduled_build(&def) {
        body["next_scheduled_build"] = json!(next);
    }
    Ok(HttpResponse::Ok().json(body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RevisionsQuery {
    limit: Option<usize>,
}

/// The job's definitions as they were put, newest first: who changed it, when, and what it
/// said (the last [`keys::JOB_REVISIONS_KEPT`]).
pub(crate) async fn revisions(
    _: Reader,
    state: web::Data<AppState>,
    path: web::Path<String>,
    q: Query<RevisionsQuery>,
) -> Result<HttpResponse, ApiError> {
    let name = job_name(&path)?;
    let limit = q.limit.unwrap_or(keys::JOB_REVISIONS_KEPT);
    if limit == 0 || limit > keys::JOB_REVISIONS_KEPT {
        return Err(ApiError::bad_request(
            "limit",
            format!("must be between 1 and {}", keys::JOB_REVISIONS_KEPT),
        ));
    }
    require_job(&state, &name).await?;
    let revisions = state.store.job_revisions(&name, limit).await?;
    Ok(HttpResponse::Ok().json(json!({ "name": name, "revisions": revisions })))
}

/// When the scheduler will next queue a build of the job: for an enabled job with a
/// schedule that names a date in the next ten years.
fn next_scheduled_build(def: &JobDefinition) -> Option<chrono::DateTime<chrono::Utc>> {
    def.active_schedule()?.next_after(chrono::Utc::now())
}

pub(crate) async fn require_job(
    state: &AppState,
    name: &JobName,
) -> Result<JobDefinition, ApiError> {
    state
        .store
        .get_job(name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job {name} not found")))
}

pub(crate) async fn delete(
    who: Writer,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = job_name(&path)?;
    scope::require_job(&state.store, &who.0, &name).await?;
    state
        .store
        .delete_job_with_files(&name, &state.storage_root)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Move {
    /// The destination folder; `null` is the root.
    folder: Option<String>,
}

pub(crate) async fn move_job(
    who: Writer,
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    let name = job_name(&path)?;
    let m: Move = body_json(&req, &body)?;
    let folder = m
        .folder
        .as_deref()
        .map(|f| folder_name(f, "folder"))
        .transpose()?;
    let mut def = require_job(&state, &name).await?;
    scope::require_folder(&state.store, &who.0, def.folder.as_ref()).await?;
    scope::require_folder(&state.store, &who.0, folder.as_ref()).await?;
    def.folder = folder;
    state.store.put_job(&name, &def, &who.0.name).await?;
    Ok(HttpResponse::Ok().json(json!({"name": name, "definition": def})))
}
