//! `/jobs/{name}/builds`: triggering, listing, reading, cancelling and rebuilding builds.

use std::collections::BTreeMap;

use actix_web::{web, HttpRequest, HttpResponse};
use kiln_model::{
    BuildDocument, BuildNumber, BuildRef, BuildStatus, JobName, Keep, Trigger, TriggerKind,
};
use kiln_service_kit::auth::{Reader, Writer};
use kiln_service_kit::body::Body;
use kiln_service_kit::error::ApiError;
use kiln_service_kit::query::Query;
use kiln_store::TriggerRequest;
use serde::Deserialize;
use serde_json::json;

use super::{body_or_default, job_name, API_PREFIX};
use crate::app::AppState;
use crate::scope;

/// Largest page of builds one request returns.
const MAX_PAGE: usize = 200;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TriggerBody {
    #[serde(default)]
    parameters: BTreeMap<String, String>,
    /// Build this commit (the job must name a repository).
    #[serde(default)]
    sha: Option<String>,
    /// Build this branch or tag instead of the job's `repository.ref`.
    #[serde(default, rename = "ref")]
    git_ref: Option<String>,
    /// Run it before the builds already queued (a hotfix).
    #[serde(default)]
    next: bool,
}

fn check_revision(b: &TriggerBody) -> Result<(), ApiError> {
    if let Some(sha) = &b.sha {
        if !(7..=64).contains(&sha.len()) || !sha.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(ApiError::bad_request(
                "sha",
                "must be 7 to 64 hexadecimal digits",
            ));
        }
    }
    if let Some(r) = &b.git_ref {
        let bad = r.is_empty()
            || r.len() > 255
            || r.starts_with('-')
            || r.contains("..")
            || r.chars().any(|c| c.is_control() || c.is_whitespace());
        if bad {
            return Err(ApiError::bad_request("ref", "must be a branch or tag name"));
        }
    }
    Ok(())
}

pub(crate) async fn trigger(
    who: Writer,
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    let name = job_name(&path)?;
    let b: TriggerBody = body_or_default(&req, &body)?;
    check_revision(&b)?;
    scope::require_job(&state.store, &who.0, &name).await?;
    let trigger = Trigger {
        sha: b.sha,
        git_ref: b.git_ref,
        ..Trigger::new(TriggerKind::Api, Some(who.0.name))
    };
    queue(&state, name, b.parameters, trigger, b.next, None).await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RebuildBody {
    /// Of a matrix build: run again only the cells of its matrix that did not succeed.
    #[serde(default)]
    failed_cells: bool,
}

/// Runs a build again: a new build of the job with the old one's parameters and revision
/// (`sha`, `ref`), as the job is defined now (a matrix build: its whole matrix, or with
/// `failed_cells` the cells that did not succeed, as a matrix of their own). A parameter the
/// job no longer has is refused (422 naming it) rather than dropped: the new build would not
/// be the same.
pub(crate) async fn rebuild(
    who: Writer,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    req: HttpRequest,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    let r = build_ref(&path.0, &path.1)?;
    let b: RebuildBody = body_or_default(&req, &body)?;
    scope::require_job(&state.store, &who.0, &r.job).await?;
    let old = require_build(&state, &r).await?;
    let (rebuild_of, cells) = match (&old.matrix, b.failed_cells) {
        (_, false) => (r.number, None),
        (None, true) => {
            return Err(ApiError::Conflict(format!(
                "build {r} is not a build of a matrix: it has no cells to run again"
            )))
        }
        (Some(m), true) => (m.group, Some(failed_cells(&state, &r, m).await?)),
    };
    let trigger = Trigger {
        sha: old.trigger.sha,
        git_ref: old.trigger.git_ref,
        rebuild_of: Some(rebuild_of),
        ..Trigger::new(TriggerKind::Api, Some(who.0.name))
    };
    queue(&state, r.job, old.parameters, trigger, false, cells).await
}

/// The cells of an ended matrix that did not succeed; 409 while one runs, or when all
/// succeeded or one is no longer kept.
async fn failed_cells(
    state: &AppState,
    r: &BuildRef,
    m: &kiln_model::MatrixCell,
) -> Result<Vec<BTreeMap<String, String>>, ApiError> {
    let group = state.store.matrix_group(&r.job, m).await?;
    let mut failed = Vec::new();
    for (n, d) in m.numbers().zip(&group) {
        let d = d.as_ref().ok_or_else(|| {
            ApiError::Conflict(format!(
                "build {n} of matrix #{} is no longer kept",
                m.group
            ))
        })?;
        if !d.status.is_final() {
            return Err(ApiError::Conflict(format!(
                "matrix #{} has not ended: build {n} is {}",
                m.group, d.status
            )));
        }
        if d.status != BuildStatus::Success {
            failed.extend(d.matrix.as_ref().map(|c| c.cell.clone()));
        }
    }
    if failed.is_empty() {
        return Err(ApiError::Conflict(format!(
            "every build of matrix #{} succeeded: nothing to run again",
            m.group
        )));
    }
    Ok(failed)
}

/// Queues a build: 201 with its document and `Location`.
async fn queue(
    state: &AppState,
    name: JobName,
    parameters: BTreeMap<String, String>,
    trigger: Trigger,
    next: bool,
    cells: Option<Vec<BTreeMap<String, String>>>,
) -> Result<HttpResponse, ApiError> {
    let t = state
        .store
        .trigger(&TriggerRequest {
            job: name.clone(),
            parameters,
            trigger,
            dedup: None,
            next,
            cells,
        })
        .await?;
    metrics::counter!("kiln_builds_triggered_total").increment(t.builds().count() as u64);
    Ok(created(t.build))
}

/// 201 with a build just queued and its `Location`.
pub(crate) fn created(build: BuildDocument) -> HttpResponse {
    HttpResponse::Created()
        .insert_header((
            "Location",
            format!("{API_PREFIX}/jobs/{}/builds/{}", build.job, build.number),
        ))
        .json(build)
}

#[derive(Deserialize)]
pub(crate) struct Page {
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
}

pub(crate) async fn list(
    _: Reader,
    state: web::Data<AppState>,
    path: web::Path<String>,
    page: Query<Page>,
) -> Result<HttpResponse, ApiError> {
    let name = job_name(&path)?;
    let limit = page.limit.unwrap_or(50);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(
            "limit",
            format!("must be between 1 and {MAX_PAGE}"),
        ));
    }
    let (builds, total) = state
        .store
        .list_builds_raw(&name, page.offset, limit)
        .await?;
    if total == 0 && state.store.get_job(&name).await?.is_none() {
        return Err(ApiError::NotFound(format!("job {name} not found")));
    }
    // The stored documents are written out as they are: putting them in a `json!` value
    // would parse each one into a tree only to encode it again.
    let mut body = Vec::with_capacity(builds.iter().map(|b| b.get().len() + 1).sum::<usize>() + 80);
    body.extend_from_slice(b"{\"builds\":[");
    for (i, b) in builds.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(b.get().as_bytes());
    }
    body.extend_from_slice(
        format!(
            "],\"total\":{total},\"offset\":{},\"limit\":{limit}}}",
            page.offset
        )
        .as_bytes(),
    );
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(body))
}

pub(crate) fn build_ref(name: &str, number: &str) -> Result<BuildRef, ApiError> {
    let job = job_name(name)?;
    let n: BuildNumber = number
        .parse()
        .map_err(|_| ApiError::bad_request("number", "must be a positive integer"))?;
    Ok(BuildRef::new(job, n))
}

pub(crate) async fn require_build(
    state: &AppState,
    r: &BuildRef,
) -> Result<BuildDocument, ApiError> {
    state
        .store
        .get_build(r)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("build {r} not found")))
}

pub(crate) async fn get(
    _: Reader,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let r = build_ref(&path.0, &path.1)?;
    let raw = state
        .store
        .get_raw(&[r.key()])
        .await?
        .pop()
        .flatten()
        .ok_or_else(|| ApiError::NotFound(format!("build {r} not found")))?;
    // Only a queued build needs decoding (to say why it waits); others are served as stored.
    if raw.contains(r#""status":"queued""#) {
        let mut doc: BuildDocument =
            serde_json::from_str(&raw).map_err(|e| ApiError::Unexpected(format!("{r}: {e}")))?;
        if doc.status == BuildStatus::Queued {
            // A build waiting for a concurrency slot is in no queue: workers do not matter yet.
            match state
                .store
                .slot_wait(&r, doc.concurrency_group.as_ref())
                .await?
            {
                Some(wait) => doc.reason = Some(wait.reason(&r.job)),
                None => explain_wait(&state, &mut doc).await?,
            }
        }
        return Ok(HttpResponse::Ok().json(doc));
    }
    serde_json::from_str::<serde::de::IgnoredAny>(&raw)
        .map_err(|e| ApiError::Unexpected(format!("{r}: {e}")))?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(raw))
}

/// A queued build says why it waits: no live worker serves its queue, or workers are busy.
/// A reason recorded earlier (requeued after a lost worker, handed back) is kept in front.
pub(crate) async fn explain_wait(
    state: &AppState,
    doc: &mut BuildDocument,
) -> Result<(), ApiError> {
    const NO_WORKER: &str = "no live worker serves queue";
    const BUSY: &str = "waiting for a free worker";
    let stats = state.store.queue_stats(&doc.queue).await?;
    let now = if stats.live_workers == 0 {
        format!(
            "{NO_WORKER} '{}'; the build waits until one starts",
            doc.queue
        )
    } else {
        format!(
            "{BUSY} on queue '{}' ({} builds queued)",
            doc.queue, stats.depth
        )
    };
    doc.reason = Some(match doc.reason.take() {
        Some(earlier) if !earlier.starts_with(NO_WORKER) && !earlier.starts_with(BUSY) => {
            format!("{earlier}; {now}")
        }
        _ => now,
    });
    Ok(())
}

pub(crate) async fn cancel(
    who: Writer,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let r = build_ref(&path.0, &path.1)?;
    scope::require_job(&state.store, &who.0, &r.job).await?;
    let outcome = state.store.cancel(&r, &who.0.name).await?;
    let doc = require_build(&state, &r).await?;
    Ok(HttpResponse::Accepted().json(json!({"outcome": outcome.as_str(), "build": doc})))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct KeepBody {
    /// Why it is kept (a release, an incident), shown with the pin.
    #[serde(default)]
    reason: Option<String>,
}

/// Longest reason a pin may give.
const MAX_KEEP_REASON: usize = 500;

/// Pins an ended build: retention, by count or age, never removes it (a release build,
/// the build an incident report links to). Pinning again replaces who, when and why.
pub(crate) async fn keep(
    who: Writer,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    req: HttpRequest,
    body: Body,
) -> Result<HttpResponse, ApiError> {
    let r = build_ref(&path.0, &path.1)?;
    let b: KeepBody = body_or_default(&req, &body)?;
    if let Some(reason) = &b.reason {
        if reason.trim().is_empty()
            || reason.len() > MAX_KEEP_REASON
            || reason.chars().any(char::is_control)
        {
            return Err(ApiError::bad_request(
                "reason",
                format!("must be 1 to {MAX_KEEP_REASON} bytes of text on one line"),
            ));
        }
    }
    scope::require_job(&state.store, &who.0, &r.job).await?;
    let pin = Keep {
        by: who.0.name,
        at: chrono::Utc::now(),
        reason: b.reason,
    };
    Ok(HttpResponse::Ok().json(state.store.set_keep(&r, Some(&pin)).await?))
}

/// Unpins a build: the job's retention applies to it again from its next trigger.
pub(crate) async fn unkeep(
    who: Writer,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let r = build_ref(&path.0, &path.1)?;
    scope::require_job(&state.store, &who.0, &r.job).await?;
    Ok(HttpResponse::Ok().json(state.store.set_keep(&r, None).await?))
}
