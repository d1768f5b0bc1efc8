//! `/github/...`: links from a GitHub repository's pull requests or branch pushes to the job
//! github-ingest copies for each of them (`github_<org>_<repo>_pullrequest|branch`), and the
//! approval of a pull request from a fork (`/jobs/{name}/approve`).

use actix_web::{web, HttpRequest, HttpResponse};
use kiln_model::keys::{self, GithubLinkKind};
use kiln_model::{Name, Trigger, TriggerKind};
use kiln_service_kit::auth::{Reader, Writer};
use kiln_service_kit::body::Body;
use kiln_service_kit::error::ApiError;
use kiln_store::TriggerRequest;
use serde::Deserialize;
use serde_json::json;

use super::{body_json, body_or_default, job_name};
use crate::app::AppState;
use crate::scope;

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
    who: Writer,
    state: web::Data<AppState>,
    path: web::Path<(String, String, String)>,
    req: HttpRequest,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    let (org, repo, kind) = parts(&path)?;
    let b: LinkBody = body_json(&req, &body)?;
    scope::require_unlimited(&who.0, "GitHub links")?;
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
    who: Writer,
    state: web::Data<AppState>,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (org, repo, kind) = parts(&path)?;
    scope::require_unlimited(&who.0, "GitHub links")?;
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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    /// The head the approver reviewed: refused if the pull request moved on since.
    #[serde(default)]
    sha: Option<String>,
}

/// Approves the head of a pull request from a fork that waits for it (with
/// `github.fork_pr_approval`): its build is queued, `by` the approver. Each new head waits
/// again. Naming the reviewed `sha` makes sure the code built is the code read.
pub(crate) async fn approve(
    who: Writer,
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    let name = job_name(&path)?;
    let b: ApproveBody = body_or_default(&req, &body)?;
    let mut def = state
        .store
        .get_job(&name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job {name} not found")))?;
    scope::require_folder(&state.store, &who.0, def.folder.as_ref()).await?;
    let Some(source) = def.github.as_mut().filter(|g| g.kind == "pull_request") else {
        return Err(ApiError::Conflict(format!(
            "job {name} is not a pull request's job"
        )));
    };
    let Some(sha) = source.awaiting_approval.take() else {
        return Err(ApiError::Conflict(format!(
            "nothing of job {name} waits for approval"
        )));
    };
    if b.sha
        .as_ref()
        .is_some_and(|s| !sha.starts_with(s.as_str()) || s.len() < 7)
    {
        return Err(ApiError::bad_request(
            "sha",
            format!("the pull request's head is {sha}: review that and approve it"),
        ));
    }
    let git_ref = source.head_ref.clone();
    state.store.put_job(&name, &def, &who.0.name).await?;
    let t = state
        .store
        .trigger(&TriggerRequest {
            job: name.clone(),
            parameters: Default::default(),
            trigger: Trigger {
                sha: Some(sha.clone()),
                git_ref: Some(git_ref),
                ..Trigger::new(TriggerKind::GithubPullRequest, Some(who.0.name))
            },
            dedup: Some((
                keys::github_delivery(&format!("approve-{name}-{sha}")),
                24 * 3600,
            )),
            next: false,
            cells: None,
        })
        .await?;
    // The status reporter, when it runs, posts `pending` as for any pull request's build.
    let reporter =
        Name::parse(keys::GITHUB_CONSUMER).map_err(|e| ApiError::Unexpected(e.to_string()))?;
    if state.store.is_consumer(&reporter).await? {
        let entries: Vec<String> = t
            .builds()
            .map(|b| keys::github_pending(&b.build_ref()))
            .collect();
        state.store.push_finished(&reporter, &entries).await?;
    }
    metrics::counter!("kiln_builds_triggered_total").increment(t.builds().count() as u64);
    Ok(super::builds::created(t.build))
}
