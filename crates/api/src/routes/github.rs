//! `/github/...`: links from a GitHub repository's pull requests or branch pushes to the job
//! github-ingest copies for each of them (`github_<org>_<repo>_pullrequest|branch`).

use actix_web::{web, HttpRequest, HttpResponse};
use kiln_model::keys::GithubLinkKind;
use kiln_service_kit::auth::{Reader, Writer};
use kiln_service_kit::body::Body;
use kiln_service_kit::error::ApiError;
use serde::Deserialize;
use serde_json::json;

use super::{body_json, job_name};
use crate::app::AppState;

fn parts(path: &(String, String, String)) -> Result<(String, String, GithubLinkKind), ApiError> {
    let (org, repo, kind) = path;
    for (field, v) in [("org", org), ("repo", repo)] {
        if !kiln_store::valid_repo_part(v) {
            return Err(ApiError::bad_request(
                field,
                "must be 1 to 100 of [A-Za-z0-9._-]",
            ));
        }
    }
    let kind = match kind.as_str() {
        "pullrequest" => GithubLinkKind::Pullrequest,
        "branch" => GithubLinkKind::Branch,
        _ => {
            return Err(ApiError::bad_request(
                "kind",
                "must be pullrequest or branch",
            ))
        }
    };
    Ok((org.clone(), repo.clone(), kind))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkBody {
    job: String,
}

pub(crate) async fn put(
    _: Writer,
    state: web::Data<AppState>,
    path: web::Path<(String, String, String)>,
    req: HttpRequest,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    let (org, repo, kind) = parts(&path)?;
    let b: LinkBody = body_json(&req, &body)?;
    let job = job_name(&b.job).map_err(|_| ApiError::bad_request("job", "not a valid job name"))?;
    if job.base().is_some() {
        return Err(ApiError::bad_request(
            "job",
            "link a job you defined, not a derived one",
        ));
    }
    let link = state.store.set_link(&org, &repo, kind, &job).await?;
    Ok(HttpResponse::Ok().json(link))
}

pub(crate) async fn get(
    _: Reader,
    state: web::Data<AppState>,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (org, repo, kind) = parts(&path)?;
    let job = state
        .store
        .get_link(&org, &repo, kind)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("{org}/{repo} has no {} link", kind.as_str())))?;
    Ok(HttpResponse::Ok().json(json!({
        "key": kiln_model::keys::github_link(&org, &repo, kind),
        "job": job,
    })))
}

pub(crate) async fn delete(
    _: Writer,
    state: web::Data<AppState>,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (org, repo, kind) = parts(&path)?;
    if !state.store.delete_link(&org, &repo, kind).await? {
        return Err(ApiError::NotFound(format!(
            "{org}/{repo} has no {} link",
            kind.as_str()
        )));
    }
    Ok(HttpResponse::NoContent().finish())
}

pub(crate) async fn list(_: Reader, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(json!({ "links": state.store.list_links().await? })))
}
