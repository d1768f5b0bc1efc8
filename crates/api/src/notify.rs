//! Build notifications: a job's `notify` names URLs to `POST` a JSON message to when one of
//! its builds ends with a given status (a chat webhook, a pager, a dashboard). The
//! after-build consumer (`crate::downstream`, which hears of every ended build whose job
//! names downstream jobs or notification targets, durably) hands such builds to the
//! durable list `kiln:finished:notify`; every api replica takes entries from there (each
//! entry is taken by one) and sends up to [`CONCURRENT`] builds' messages at once, so one
//! slow target holds up only its own build's. Delivery is at least once, and messages may
//! arrive out of order (each says when its build ended): a replica that dies mid-entry
//! sends it again on restart, so each message carries the same `X-Kiln-Delivery` id for
//! receivers that must not act twice.
//!
//! A target that answers 2xx is done; 408, 429, 5xx, a timeout or no answer is tried
//! [`ATTEMPTS`] times in all, then, like a 4xx at once, becomes a dead letter
//! (`GET /dead-letters/notify`) naming the target by its index and host only: a chat
//! webhook's URL is its password, so it is never logged or shown.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};

use kiln_model::job::Notify;
use kiln_model::{keys, BuildDocument, BuildRef, BuildStatus, Name};
use kiln_service_kit::shutdown::retry_until_ok;
use kiln_service_kit::signature::sign;
use kiln_store::{SealKey, Store, StoreError};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Tries per target before it is a dead letter.
const ATTEMPTS: u32 = 3;
/// Longest one request may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between tries (doubled each time).
const RETRY: Duration = Duration::from_secs(1);
/// Pause when there is nothing to send.
const IDLE: Duration = Duration::from_millis(250);
/// Builds whose messages are sent at once: a target that does not answer holds up only its
/// own build's entry.
const CONCURRENT: usize = 8;
/// How many of a job's builds before an ended one `only_on_change` looks through for the
/// previous ended build.
const PREVIOUS_WINDOW: usize = 200;

/// The consumer name whose lists the notifier reads (`kiln:finished:notify`).
pub(crate) fn consumer() -> Name {
    Name::parse(keys::NOTIFY_CONSUMER).expect("a valid consumer name")
}

/// Sends the notifications of ended builds.
pub(crate) struct Notifier {
    store: Store,
    http: reqwest::Client,
    seal_key: Option<Arc<SealKey>>,
    /// The api's public URL, for the link in each message.
    public_url: Option<String>,
    consumer: Name,
}

/// Why one target was not notified.
enum Failure {
    /// Worth another try (no answer, 408, 429, 5xx).
    Transient(String),
    /// Will not get better (4xx, a secret missing, no URL).
    Permanent(String),
}

/// A URL's scheme and host, the part of it that may be shown.
fn host_of(url: &str) -> &str {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    &url[..end]
}

/// The message for `doc`: what people read (`text`, which chat webhooks such as Slack's
/// and Mattermost's show) and the fields programs read.
fn message(doc: &BuildDocument, public_url: Option<&str>) -> serde_json::Value {
    let path = format!("/api/v1/jobs/{}/builds/{}", doc.job, doc.number);
    let mut text = format!("{} #{} {}", doc.job, doc.number, doc.status);
    if let Some(reason) = &doc.reason {
        text.push_str(&format!(": {reason}"));
    }
    if let Some(base) = public_url {
        text.push_str(&format!(" ({base}{path}/log)"));
    }
    json!({
        "text": text,
        "event": "build.finished",
        "job": doc.job,
        "number": doc.number,
        "status": doc.status,
        "reason": doc.reason,
        "exit_code": doc.exit_code,
        "duration_ms": doc.duration_ms,
        "queued_at": doc.queued_at,
        "finished_at": doc.finished_at,
        "trigger": doc.trigger,
        "parameters": doc.parameters,
        "matrix": doc.matrix.as_ref().map(|m| json!({"group": m.group, "size": m.size})),
        "url": public_url.map(|base| format!("{base}{path}")),
    })
}

impl Notifier {
    pub(crate) fn new(
        store: Store,
        seal_key: Option<Arc<SealKey>>,
        public_url: Option<String>,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            store,
            http,
            seal_key,
            public_url,
            consumer: consumer(),
        })
    }

    /// Handles what an earlier run left in progress, then every build handed over, until
    /// `stop`.
    pub(crate) async fn run(self, stop: CancellationToken) {
        let read = retry_until_ok(
            "notifier cannot read Redis yet",
            Duration::from_secs(1),
            &stop,
            || self.store.unfinished(&self.consumer),
        );
        let Some(unfinished) = read.await else {
            return;
        };
        let mut waiting = VecDeque::from(unfinished);
        let mut sending = FuturesUnordered::new();
        loop {
            if waiting.is_empty() && sending.len() < CONCURRENT {
                match self
                    .store
                    .claim_finished(&self.consumer, CONCURRENT - sending.len())
                    .await
                {
                    Ok(more) => waiting.extend(more),
                    Err(e) => tracing::warn!(error = %e, "notifier cannot claim work"),
                }
            }
            while sending.len() < CONCURRENT {
                let Some(entry) = waiting.pop_front() else {
                    break;
                };
                let stop = &stop;
                let this = &self;
                sending.push(async move { this.settle(&entry, stop).await });
            }
            // An entry done, or a pause while there is room for more, then look again.
            tokio::select! {
                Some(_) = sending.next(), if !sending.is_empty() => {}
                _ = tokio::time::sleep(IDLE), if sending.len() < CONCURRENT => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Sends one entry's messages and records the outcome (acknowledged, or a dead letter
    /// naming the targets that failed), retrying while Redis fails. False when stopped first.
    async fn settle(&self, entry: &str, stop: &CancellationToken) -> bool {
        crate::settle::settle(
            &self.store,
            &self.consumer,
            entry,
            "notifications",
            stop,
            || self.deliver(entry, stop),
        )
        .await
    }

    /// Sends the build's message to each target whose `on` holds its status; returns why
    /// each one that failed did. Errors are Redis failures.
    async fn deliver(
        &self,
        entry: &str,
        stop: &CancellationToken,
    ) -> Result<Vec<String>, StoreError> {
        let mut failed = Vec::new();
        let Ok(build) = BuildRef::from_key(entry) else {
            return Ok(failed);
        };
        let (Some(doc), Some(def)) = (
            self.store.get_build(&build).await?,
            self.store.get_job(&build.job).await?,
        ) else {
            return Ok(failed);
        };
        let Some(doc) = self.store.ended_as_a_whole(doc).await? else {
            return Ok(failed);
        };
        let body = message(&doc, self.public_url.as_deref()).to_string();
        let delivery = format!("{}:{}", entry, doc.queued_at.timestamp_millis());
        let changes_only = def
            .notify
            .iter()
            .any(|n| n.only_on_change && n.on.contains(&doc.status));
        let unchanged = changes_only && self.previous_status(&doc).await? == Some(doc.status);
        for (i, target) in def.notify.iter().enumerate() {
            if !target.on.contains(&doc.status) || (target.only_on_change && unchanged) {
                continue;
            }
            // Secrets are read first: Redis failing is the entry's to retry, not a target's.
            let (url, signature) = match self.secrets_of(target, def.folder.as_ref(), &body).await {
                Ok(read) => read,
                Err(e) if e.is_unavailable() => return Err(e),
                Err(e) => {
                    failed.push(format!("notify[{i}]: {e}"));
                    continue;
                }
            };
            if let Err(why) = self
                .send(&url, signature.as_deref(), &body, &delivery, stop)
                .await
            {
                failed.push(format!("notify[{i}]: {why}"));
            }
        }
        metrics::counter!("kiln_notifications_failed_total").increment(failed.len() as u64);
        Ok(failed)
    }

    /// The status of the job's newest build older than `doc` that has ended (builds still
    /// running are passed over; a matrix's, the whole matrix's), among the [`PREVIOUS_WINDOW`] builds before it; `None` when
    /// there is none, which counts as a change.
    async fn previous_status(
        &self,
        doc: &BuildDocument,
    ) -> Result<Option<BuildStatus>, StoreError> {
        const PAGE: usize = 50;
        let mut offset = 0;
        while offset < PREVIOUS_WINDOW {
            let (page, total) = self.store.list_builds(&doc.job, offset, PAGE).await?;
            let found = page
                .iter()
                .find(|b| b.number < doc.number && b.status.is_final());
            if let Some(b) = found {
                // A matrix's cell stands for its matrix.
                let whole = self.store.ended_as_a_whole(b.clone()).await?;
                return Ok(Some(whole.map_or(b.status, |w| w.status)));
            }
            offset += PAGE;
            if offset >= total {
                break;
            }
        }
        Ok(None)
    }

    /// A target's URL and, with `signing_secret`, the body's signature: secrets are read
    /// (and opened) at send time, as a build of the job in `folder` would find them, and
    /// never logged; an error names the secret, not a value.
    async fn secrets_of(
        &self,
        target: &Notify,
        folder: Option<&Name>,
        body: &str,
    ) -> Result<(String, Option<String>), StoreError> {
        let url = match (&target.url, &target.url_secret) {
            (Some(url), _) => url.clone(),
            (None, Some(name)) => {
                let url = self.secret(name, folder).await?;
                if !kiln_model::job::valid_notify_url(&url) {
                    return Err(StoreError::Invalid {
                        field: "url_secret".into(),
                        message: format!("secret '{name}' does not hold an http(s) URL"),
                    });
                }
                url
            }
            (None, None) => return Err(StoreError::NotFound("notify url".into())),
        };
        let signature = match &target.signing_secret {
            Some(name) => Some(sign(
                self.secret(name, folder).await?.as_bytes(),
                body.as_bytes(),
            )),
            None => None,
        };
        Ok((url, signature))
    }

    /// One target, tried up to [`ATTEMPTS`] times.
    async fn send(
        &self,
        url: &str,
        signature: Option<&str>,
        body: &str,
        delivery: &str,
        stop: &CancellationToken,
    ) -> Result<(), String> {
        let host = host_of(url).to_owned();
        let mut pause = RETRY;
        for attempt in 1..=ATTEMPTS {
            let mut req = self
                .http
                .post(url)
                .header("Content-Type", "application/json")
                .header("X-Kiln-Event", "build.finished")
                .header("X-Kiln-Delivery", delivery)
                .body(body.to_owned());
            if let Some(s) = signature {
                req = req.header("X-Kiln-Signature-256", s);
            }
            let failure = match req.send().await {
                Ok(r) if r.status().is_success() => {
                    metrics::counter!("kiln_notifications_sent_total").increment(1);
                    return Ok(());
                }
                Ok(r) => {
                    let code = r.status().as_u16();
                    let why = format!("{host} answered {code}");
                    if code == 408 || code == 429 || code >= 500 {
                        Failure::Transient(why)
                    } else {
                        Failure::Permanent(why)
                    }
                }
                // Without the URL: reqwest's errors name it.
                Err(e) if e.is_timeout() => {
                    Failure::Transient(format!("{host} did not answer within {TIMEOUT:?}"))
                }
                Err(_) => Failure::Transient(format!("cannot reach {host}")),
            };
            match failure {
                Failure::Permanent(why) => return Err(why),
                Failure::Transient(why) if attempt == ATTEMPTS => {
                    return Err(format!("{why} ({ATTEMPTS} tries)"))
                }
                Failure::Transient(why) => {
                    tracing::info!(host = %host, reason = %why, attempt, "notification not delivered; trying again");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.cancelled() => return Err(format!("{host}: the api stopped")),
            }
            pause *= 2;
        }
        Err(format!("{host}: not delivered"))
    }

    /// A secret's value (a URL, a signing key) for a job in `folder`.
    async fn secret(&self, name: &str, folder: Option<&Name>) -> Result<String, StoreError> {
        self.store
            .secret_values(&[name.to_owned()], folder, self.seal_key.as_deref())
            .await?
            .pop()
            .ok_or_else(|| StoreError::NotFound(format!("secret '{name}'")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_scheme_and_host_of_a_url_are_shown() {
        assert_eq!(
            host_of("https://hooks.slack.com/services/T0/B0/secret"),
            "https://hooks.slack.com"
        );
        assert_eq!(
            host_of("http://127.0.0.1:9/x?token=1"),
            "http://127.0.0.1:9"
        );
        assert_eq!(host_of("https://example.com"), "https://example.com");
    }
}
