//! The api's routes. One table lists every route with its method, path, required role and
//! summary; it registers the handlers and generates the OpenAPI document, so the two cannot
//! disagree.

mod artifacts;
mod badge;
mod builds;
mod dead_letters;
mod folders;
mod github;
mod jobs;
mod logs;
mod matrix;
mod nodes;
mod raw;
mod secrets;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse};
use kiln_model::{JobName, Name};
use kiln_service_kit::error::{self, parse_json, ApiError};
use kiln_service_kit::health::{self, PrometheusHandle};

use crate::app::AppState;
use crate::downstream;
use crate::openapi::{self, RouteDoc};

macro_rules! routes {
    ($($method:ident $path:literal => $handler:path, $role:literal, $ok:literal, $summary:literal;)*) => {
        pub(crate) fn register(cfg: &mut web::ServiceConfig) {
            $(cfg.route($path, web::$method().to($handler));)*
        }

        pub(crate) const ROUTES: &[RouteDoc] = &[
            $(RouteDoc { method: stringify!($method), path: $path, role: $role, ok: $ok, summary: $summary },)*
        ];
    };
}

routes! {
    get "/folders" => folders::list_root, "read", 200, "List the root's entries (the `jobs` list)";
    post "/folders" => folders::create, "write", 201, "Create a folder, optionally inside a parent";
    get "/folders/{name}" => folders::get, "read", 200, "List a folder's entries";
    delete "/folders/{name}" => folders::delete, "write", 204, "Delete an empty folder";
    get "/jobs" => jobs::list, "read", 200, "List jobs (all, or those directly in ?folder=)";
    put "/jobs/{name}" => jobs::put, "write", 201, "Create or replace a job definition";
    get "/jobs/{name}" => jobs::get, "read", 200, "Read a job definition";
    get "/jobs/{name}/badge.svg" => badge::get, "read", 200, "The newest ended build's status as an SVG badge (no token needed for a job with public_badge)";
    delete "/jobs/{name}" => jobs::delete, "write", 204, "Delete a job with its builds and files";
    post "/jobs/{name}/move" => jobs::move_job, "write", 200, "Move a job to another folder";
    get "/jobs/{name}/revisions" => jobs::revisions, "read", 200, "List a job's definitions as they were put, newest first (?limit=, at most 50)";
    post "/jobs/{name}/builds" => builds::trigger, "write", 201, "Trigger a build";
    get "/jobs/{name}/builds" => builds::list, "read", 200, "List recent builds, newest first";
    get "/jobs/{name}/builds/{number}" => builds::get, "read", 200, "Read a build document";
    post "/jobs/{name}/builds/{number}/cancel" => builds::cancel, "write", 202, "Cancel a queued or running build";
    post "/jobs/{name}/builds/{number}/rebuild" => builds::rebuild, "write", 201, "Run a build again with its parameters and revision (`failed_cells`: a matrix's cells that did not succeed)";
    get "/jobs/{name}/builds/{number}/matrix" => matrix::get, "read", 200, "Read a matrix build's whole matrix: each cell's build and the matrix's status";
    post "/jobs/{name}/builds/{number}/matrix/cancel" => matrix::cancel, "write", 202, "Cancel every build of a matrix still queued or running";
    put "/jobs/{name}/builds/{number}/keep" => builds::keep, "write", 200, "Pin an ended build so retention never removes it (optional reason)";
    delete "/jobs/{name}/builds/{number}/keep" => builds::unkeep, "write", 200, "Unpin a build: its job's retention applies to it again";
    get "/jobs/{name}/builds/{number}/log" => logs::get, "read", 200, "Read a build's output from ?offset=";
    get "/jobs/{name}/builds/{number}/artifacts" => artifacts::list, "read", 200, "List the files a build archived, with their sizes";
    get "/jobs/{name}/builds/{number}/artifacts/{path:.*}" => artifacts::get, "read", 200, "Download one archived file (path as listed)";
    get "/nodes" => nodes::list, "read", 200, "List live workers";
    post "/nodes/{id}/pause" => nodes::pause, "admin", 200, "Pause a live worker: it takes no new build and finishes the ones it runs";
    post "/nodes/{id}/resume" => nodes::resume, "admin", 200, "Resume a paused worker";
    get "/queue" => nodes::queue, "read", 200, "List queues with their depth and waiting builds";
    post "/jobs/{name}/approve" => github::approve, "write", 201, "Approve the head of a pull request from a fork that waits for it (github.fork_pr_approval): its build is queued";
    get "/github/links" => github::list, "read", 200, "List every GitHub link";
    put "/github/{org}/{repo}/{kind}" => github::put, "write", 200, "Link a repository's pullrequest or branch events to a job";
    get "/github/{org}/{repo}/{kind}" => github::get, "read", 200, "Read a GitHub link";
    delete "/github/{org}/{repo}/{kind}" => github::delete, "write", 204, "Remove a GitHub link";
    get "/secrets" => secrets::list, "read", 200, "List secrets by name (never their values)";
    put "/secrets/{name}" => secrets::put, "write", 201, "Set or replace a secret";
    delete "/secrets/{name}" => secrets::delete, "write", 204, "Delete a secret";
    get "/folders/{folder}/secrets" => secrets::list_folder, "read", 200, "List a folder's secrets by name (never their values)";
    put "/folders/{folder}/secrets/{name}" => secrets::put_folder, "write", 201, "Set or replace a folder's secret: the jobs inside it get it before a global one";
    delete "/folders/{folder}/secrets/{name}" => secrets::delete_folder, "write", 204, "Delete a folder's secret";
    get "/dead-letters/{consumer}" => dead_letters::list, "read", 200, "List what a consumer (es, github, downstream, notify) gave up on, newest first";
    get "/redis/{key}" => raw::get, "admin", 200, "Read any key of Kiln's Redis layout";
    get "/openapi.json" => openapi_json, "none", 200, "This document";
}

/// Where the route table is served.
pub(crate) const API_PREFIX: &str = "/api/v1";

/// A request no route serves: 405 with `Allow` for a known path asked with the wrong
/// method, else 404 (`kiln_service_kit::error::unrouted`).
pub(crate) async fn unrouted(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let path = req.path();
    Err(match path.strip_prefix(API_PREFIX) {
        Some(rest) => error::unrouted(&req, rest, ROUTES.iter().map(|r| (r.method, r.path))),
        None => error::unrouted(&req, path, health::ROUTES.iter().copied()),
    })
}

async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(openapi::document(ROUTES))
}

pub(crate) async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    kiln_service_kit::health::redis_readiness(&state.store).await
}

/// Prometheus metrics, with the queue gauges refreshed from Redis first: they are the
/// signal autoscalers (KEDA, HPA) scale workers on.
pub(crate) async fn metrics(
    state: web::Data<AppState>,
    handle: web::Data<PrometheusHandle>,
) -> HttpResponse {
    if let Ok(queues) = state.store.queue_names().await {
        for q in queues {
            if let Ok(s) = state.store.queue_stats(&q).await {
                let label = q.to_string();
                metrics::gauge!("kiln_queue_depth", "queue" => label.clone()).set(s.depth as f64);
                metrics::gauge!("kiln_queue_running", "queue" => label.clone())
                    .set(s.running as f64);
                metrics::gauge!("kiln_queue_oldest_age_seconds", "queue" => label.clone())
                    .set(s.oldest_age_secs.unwrap_or(0.0));
                metrics::gauge!("kiln_queue_live_workers", "queue" => label)
                    .set(s.live_workers as f64);
            }
        }
    }
    if let Ok(n) = state.store.inflight_count().await {
        metrics::gauge!("kiln_builds_inflight").set(n as f64);
    }
    if let Ok(n) = state.store.backlog(&downstream::consumer()).await {
        metrics::gauge!("kiln_downstream_backlog").set(n as f64);
    }
    kiln_service_kit::health::metrics_endpoint(handle).await
}

/// Counts requests by method and status class for `/metrics`.
pub(crate) async fn count_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let method = req.method().to_string();
    let res = next.call(req).await?;
    let class = format!("{}xx", res.status().as_u16() / 100);
    metrics::counter!("kiln_http_requests_total", "method" => method, "status" => class)
        .increment(1);
    Ok(res)
}

/// A path's `{name}` as a job name (user-chosen or derived).
pub(crate) fn job_name(raw: &str) -> Result<JobName, ApiError> {
    JobName::parse(raw).map_err(|e| ApiError::bad_request("name", format!("{raw:?} {e}")))
}

pub(crate) fn folder_name(raw: &str, field: &str) -> Result<Name, ApiError> {
    Name::parse(raw).map_err(|e| ApiError::bad_request(field, format!("{raw:?} {e}")))
}

/// Decodes an optional JSON body; an empty body is `T::default()`.
pub(crate) fn body_or_default<T: serde::de::DeserializeOwned + Default>(
    req: &HttpRequest,
    body: &[u8],
) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    body_json(req, body)
}

pub(crate) fn body_json<T: serde::de::DeserializeOwned>(
    req: &HttpRequest,
    body: &[u8],
) -> Result<T, ApiError> {
    let ct = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    parse_json(ct, body)
}
