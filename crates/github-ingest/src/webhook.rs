//! `POST /webhook`: size-limited body -> signature -> event -> derived job and build. A bad
//! or missing signature is 401 and touches nothing; Redis trouble is a 503 within GitHub's
//! 10 s, so GitHub can redeliver.

use actix_web::{web, HttpRequest, HttpResponse};
use kiln_model::keys::GithubLinkKind;
use kiln_model::{GithubSource, JobName, TriggerKind};
use kiln_service_kit::error::{parse_json, ApiError};
use serde::de::DeserializeOwned;

use crate::app::State;
use crate::derive::{pull_request_head, Ctx, Head, Outcome, PrSkip, DELIVERY_TTL_SECS};
use crate::payload::{DeleteEvent, PullRequestEvent, PushEvent, Repository};
use kiln_service_kit::signature;

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

pub(crate) async fn receive(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    let body = kiln_service_kit::body::read(payload, state.settings.max_body_bytes).await?;
    if !signature::verify(
        state.settings.secret.expose().as_bytes(),
        &body,
        header(&req, "x-hub-signature-256"),
    ) {
        metrics::counter!("kiln_github_deliveries_total", "event" => "unknown", "outcome" => "bad_signature").increment(1);
        return Err(ApiError::Unauthorized);
    }
    let event = header(&req, "x-github-event")
        .ok_or_else(|| ApiError::bad_request("X-GitHub-Event", "header is required"))?
        .to_owned();
    let delivery = header(&req, "x-github-delivery")
        .filter(|d| {
            !d.is_empty()
                && d.len() <= 100
                && d.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        .ok_or_else(|| ApiError::bad_request("X-GitHub-Delivery", "header must be a delivery id"))?
        .to_owned();
    let content_type = header(&req, "content-type").unwrap_or("");
    if !content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .eq_ignore_ascii_case("application/json")
    {
        return Err(ApiError::UnsupportedMediaType);
    }
    let ctx = Ctx {
        store: &state.store,
        cancel_superseded: state.settings.cancel_superseded,
        reporter: state.reporter.as_ref(),
    };
    let work = handle(&ctx, &state, &event, &delivery, &body);
    let outcome = match tokio::time::timeout(state.settings.redis_timeout, work).await {
        Ok(r) => r?,
        Err(_) => {
            metrics::counter!("kiln_github_deliveries_total", "event" => event.clone(), "outcome" => "timeout").increment(1);
            return Err(ApiError::Unavailable(
                "Redis did not answer in time; redeliver later".into(),
            ));
        }
    };
    metrics::counter!("kiln_github_deliveries_total", "event" => event.clone(), "outcome" => outcome.label()).increment(1);
    tracing::info!(github.event = %event, github.delivery = %delivery, outcome = outcome.label(), "delivery handled");
    let status = match outcome {
        Outcome::Pong { .. } | Outcome::Duplicate { .. } => actix_web::http::StatusCode::OK,
        _ => actix_web::http::StatusCode::ACCEPTED,
    };
    Ok(HttpResponse::build(status).json(outcome))
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    parse_json(None, body)
}

/// Lower-cased owner and name for the link key.
fn link_parts(repo: &Repository) -> Result<(String, String), ApiError> {
    let (owner, name) = repo
        .owner_and_name()
        .filter(|(o, n)| kiln_store::valid_repo_part(o) && kiln_store::valid_repo_part(n))
        .ok_or_else(|| ApiError::bad_request("repository.full_name", "must be owner/name"))?;
    Ok((owner.to_lowercase(), name.to_lowercase()))
}

async fn handle(
    ctx: &Ctx<'_>,
    state: &State,
    event: &str,
    delivery: &str,
    body: &[u8],
) -> Result<Outcome, ApiError> {
    match event {
        "ping" => {
            let v: serde_json::Value = parse(body)?;
            Ok(Outcome::Pong {
                zen: v["zen"].as_str().unwrap_or("").to_owned(),
            })
        }
        "pull_request" => pull_request(ctx, state, delivery, parse(body)?).await,
        "push" => push(ctx, delivery, parse(body)?).await,
        "delete" => delete(ctx, delivery, parse(body)?).await,
        other => Ok(Outcome::ignored(format!(
            "{other} events do not trigger builds"
        ))),
    }
}

/// The job a repository is linked to for `kind` events, or the answer for an event that
/// changes nothing (no link, or a link to a derived job).
async fn linked_base(
    ctx: &Ctx<'_>,
    repo: &Repository,
    kind: GithubLinkKind,
) -> Result<Result<kiln_model::Name, Outcome>, ApiError> {
    let (org, name) = link_parts(repo)?;
    let Some(job) = ctx.store.get_link(&org, &name, kind).await? else {
        return Ok(Err(Outcome::ignored(format!(
            "{} has no {} link",
            repo.full_name,
            kind.as_str()
        ))));
    };
    Ok(kiln_model::Name::parse(job.as_str())
        .map_err(|_| Outcome::ignored("the link does not name a job you defined")))
}

async fn pull_request(
    ctx: &Ctx<'_>,
    state: &State,
    delivery: &str,
    e: PullRequestEvent,
) -> Result<Outcome, ApiError> {
    let base_name = match linked_base(ctx, &e.repository, GithubLinkKind::Pullrequest).await? {
        Ok(b) => b,
        Err(ignored) => return Ok(ignored),
    };
    let job = JobName::pull_request(&base_name, e.number);
    match e.action.as_str() {
        "opened" | "reopened" | "synchronize" | "ready_for_review" => {}
        "closed" => {
            return Ok(mark(ctx, delivery, ctx.close(&job, "pull request closed").await?).await?)
        }
        other => {
            return Ok(Outcome::ignored(format!(
                "pull_request action {other} does not build"
            )))
        }
    }
    let head = match pull_request_head(
        base_name,
        job,
        &e.repository.full_name,
        e.number,
        e.pull_request,
        state.settings.forks,
    ) {
        Ok(head) => head,
        Err(PrSkip::HeadRepoGone) => {
            return Err(ApiError::bad_request(
                "pull_request.head.repo",
                "the head repository is gone",
            ))
        }
        Err(PrSkip::Fork) => {
            return Ok(Outcome::ignored(
                "pull requests from forks are not built (github.allow_fork_prs and github.fork_pr_approval are off)",
            ))
        }
    };
    Ok(ctx.build(head, delivery).await?)
}

async fn push(ctx: &Ctx<'_>, delivery: &str, e: PushEvent) -> Result<Outcome, ApiError> {
    let Some(branch) = e.git_ref.strip_prefix("refs/heads/") else {
        return Ok(Outcome::ignored(format!(
            "{} is not a branch; tag pushes are not built",
            e.git_ref
        )));
    };
    let base_name = match linked_base(ctx, &e.repository, GithubLinkKind::Branch).await? {
        Ok(b) => b,
        Err(ignored) => return Ok(ignored),
    };
    let Some(job) = JobName::branch(&base_name, branch) else {
        return Ok(Outcome::ignored(
            "the branch name is too long for a job name",
        ));
    };
    if e.deleted {
        return Ok(mark(ctx, delivery, ctx.close(&job, "branch deleted").await?).await?);
    }
    let head = Head {
        base: JobName::from_name(&base_name),
        job,
        kind: TriggerKind::GithubPush,
        source: GithubSource {
            kind: "branch".into(),
            repository: e.repository.full_name.clone(),
            base_job: base_name.to_string(),
            number: None,
            title: None,
            author: e.sender.map(|s| s.login),
            head_sha: e.after,
            head_ref: branch.to_owned(),
            clone_url: e.repository.clone_url,
            closed_at: None,
            awaiting_approval: None,
        },
        from_fork: false,
        needs_approval: false,
    };
    Ok(ctx.build(head, delivery).await?)
}

async fn delete(ctx: &Ctx<'_>, delivery: &str, e: DeleteEvent) -> Result<Outcome, ApiError> {
    if e.ref_type != "branch" {
        return Ok(Outcome::ignored(format!(
            "deleting a {} changes no job",
            e.ref_type
        )));
    }
    let base_name = match linked_base(ctx, &e.repository, GithubLinkKind::Branch).await? {
        Ok(b) => b,
        Err(ignored) => return Ok(ignored),
    };
    let Some(job) = JobName::branch(&base_name, &e.git_ref) else {
        return Ok(Outcome::ignored("no job for this branch"));
    };
    Ok(mark(ctx, delivery, ctx.close(&job, "branch deleted").await?).await?)
}

/// Remembers a delivery that queued nothing (closing is idempotent, so this only keeps the
/// answer to a redelivery honest).
async fn mark(
    ctx: &Ctx<'_>,
    delivery: &str,
    outcome: Outcome,
) -> Result<Outcome, kiln_store::StoreError> {
    ctx.store
        .mark_delivery(
            &kiln_model::keys::github_delivery(delivery),
            DELIVERY_TTL_SECS,
        )
        .await?;
    Ok(outcome)
}

pub(crate) async fn readyz(state: web::Data<State>) -> HttpResponse {
    kiln_service_kit::health::redis_readiness(&state.store).await
}
