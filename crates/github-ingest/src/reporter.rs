//! Commit statuses: `pending` when a PR or branch build is queued, then `success`, `failure`
//! or `error` when it finishes. Consumes `kiln:finished:github` (durable: a GitHub outage or a
//! restart loses nothing), retries with capped backoff, and never blocks webhook handling.

use std::time::Duration;

use kiln_model::{BuildRef, BuildStatus, Name};
use kiln_service_kit::shutdown::retry_until_ok;
use kiln_store::Store;
use octocrab::models::StatusState;
use octocrab::Octocrab;
use tokio_util::sync::CancellationToken;

use crate::client::describe;
use crate::config::Settings;
use crate::derive::final_state;

/// The consumer name of the status reporter.
pub(crate) const CONSUMER: &str = kiln_model::keys::GITHUB_CONSUMER;
/// Prefix of entries github-ingest (and the api's approval of a fork's pull request) adds
/// when it queues a build; plain build keys come from the finish script.
pub(crate) const PENDING: &str = kiln_model::keys::GITHUB_PENDING;
/// Entries handled per round.
const BATCH: usize = 20;
/// Pause when there is nothing to report.
const IDLE: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

pub(crate) struct Reporter {
    store: Store,
    github: Octocrab,
    consumer: Name,
    context: String,
    public_url: String,
}

/// Whether GitHub refused for good (a 4xx other than rate limiting) or may accept later.
enum PostError {
    Permanent(String),
    Transient(String),
}

impl Reporter {
    pub(crate) fn new(store: Store, settings: &Settings, github: Octocrab) -> Self {
        Self {
            store,
            github,
            consumer: Name::parse(CONSUMER).expect("a valid consumer name"),
            context: settings.status_context.clone(),
            public_url: settings.public_url.clone(),
        }
    }

    pub(crate) fn consumer(&self) -> &Name {
        &self.consumer
    }

    pub(crate) async fn run(self, stop: CancellationToken) {
        let read = retry_until_ok(
            "status reporter cannot read Redis yet",
            Duration::from_secs(1),
            &stop,
            || self.store.unfinished(&self.consumer),
        );
        let Some(mut leftovers) = read.await else {
            return;
        };
        loop {
            let batch = if leftovers.is_empty() {
                match self.store.claim_finished(&self.consumer, BATCH).await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(error = %e, "status reporter cannot claim work");
                        Vec::new()
                    }
                }
            } else {
                std::mem::take(&mut leftovers)
            };
            if batch.is_empty() {
                tokio::select! {
                    _ = tokio::time::sleep(IDLE) => continue,
                    _ = stop.cancelled() => return,
                }
            }
            for entry in batch {
                if !self.report(&entry, &stop).await {
                    return;
                }
            }
        }
    }

    /// Reports one entry, retrying transient failures until it succeeds or the reporter
    /// stops (then the entry stays in the processing list for the next start). Returns
    /// false when stopped.
    async fn report(&self, entry: &str, stop: &CancellationToken) -> bool {
        let mut backoff = Duration::from_millis(500);
        loop {
            match self.try_report(entry).await {
                Ok(()) => {
                    let _ = self
                        .store
                        .ack_finished(&self.consumer, &[entry.to_owned()])
                        .await;
                    return true;
                }
                Err(PostError::Permanent(reason)) => {
                    metrics::counter!("kiln_github_status_failures_total", "kind" => "permanent")
                        .increment(1);
                    tracing::warn!(entry, reason = %reason, "GitHub refused the status; giving up on it");
                    let _ = self.store.dead_letter(&self.consumer, entry, &reason).await;
                    return true;
                }
                Err(PostError::Transient(reason)) => {
                    metrics::counter!("kiln_github_status_failures_total", "kind" => "transient")
                        .increment(1);
                    tracing::warn!(entry, reason = %reason, retry_in_ms = backoff.as_millis() as u64, "cannot post the status yet");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.cancelled() => return false,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    async fn try_report(&self, entry: &str) -> Result<(), PostError> {
        let (pending, key) = match entry.strip_prefix(PENDING) {
            Some(k) => (true, k),
            None => (false, entry),
        };
        let Ok(build) = BuildRef::from_key(key) else {
            return Ok(());
        };
        let transient = |e: kiln_store::StoreError| PostError::Transient(e.to_string());
        let Some(doc) = self.store.get_build(&build).await.map_err(transient)? else {
            return Ok(());
        };
        let Some(def) = self.store.get_job(&build.job).await.map_err(transient)? else {
            return Ok(());
        };
        let (Some(source), Some(sha)) = (def.github, doc.trigger.sha.clone()) else {
            return Ok(());
        };
        if pending && doc.status.is_final() {
            // The final status is on its way; a late `pending` would hide it.
            return Ok(());
        }
        let (state, description) = if pending {
            final_state(BuildStatus::Queued)
        } else {
            final_state(doc.status)
        };
        let state = match state {
            "success" => StatusState::Success,
            "failure" => StatusState::Failure,
            "pending" => StatusState::Pending,
            _ => StatusState::Error,
        };
        let Some((owner, repo)) = source.repository.split_once('/') else {
            return Ok(());
        };
        let target = format!(
            "{}/api/v1/jobs/{}/builds/{}/log",
            self.public_url, build.job, build.number
        );
        let r = self
            .github
            .repos(owner, repo)
            .create_status(sha, state)
            .context(match &doc.matrix {
                // Each cell of a matrix is a check of its own, as GitHub shows a workflow's jobs.
                Some(m) => format!("{} ({})", self.context, m.label()),
                None => self.context.clone(),
            })
            .target(target)
            .description(format!("{description} (#{})", build.number))
            .send()
            .await;
        match r {
            Ok(_) => {
                metrics::counter!("kiln_github_statuses_posted_total").increment(1);
                Ok(())
            }
            Err(e) => match describe(&e) {
                (Some(code), msg) if code != 403 && code != 429 && code < 500 => {
                    Err(PostError::Permanent(msg))
                }
                (_, msg) => Err(PostError::Transient(msg)),
            },
        }
    }
}
