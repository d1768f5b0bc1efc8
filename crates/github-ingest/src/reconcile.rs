//! The reconcile scan. GitHub does not redeliver a webhook it failed to deliver (and keeps
//! failed deliveries for three days only), so an outage of github-ingest, of the network
//! or of GitHub's hooks would leave pull requests unbuilt and closed ones running. Every
//! `github.reconcile_interval_secs` this asks GitHub, for every linked repository, what the
//! webhooks would have said, and does what they would have done:
//! - an open pull request whose job is missing, disabled or at another head gets its head
//!   built (as `opened` / `synchronize` would); a PR job whose pull request is no longer open
//!   is disabled (as `closed` would);
//! - a branch job whose branch moved gets its new head built; one whose branch is gone is
//!   disabled. Branches that never had a job are left alone: a push webhook makes their
//!   job, and building every branch of a repository at the first scan would flood the
//!   queue with old ones.
//!
//! One request per linked repository and kind per scan (more for over 100 open pull
//! requests or branches, at most [`MAX_PAGES`] pages: a repository with more is built but
//! nothing of it is disabled, since the list was not whole), conditional on the last
//! answer's `ETag`, so an unchanged list costs none of the token's hourly requests.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use http::header::{HeaderMap, HeaderValue, ETAG, IF_NONE_MATCH};
use http::StatusCode;
use kiln_model::keys::GithubLinkKind;
use kiln_model::{GithubSource, JobDefinition, JobName, Name, TriggerKind};
use kiln_store::{Store, StoreError};
use octocrab::Octocrab;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::client::describe;
use crate::config::Settings;
use crate::derive::{pull_request_head, Ctx, Head, Outcome};
use crate::payload::PullRequest;

const PER_PAGE: usize = 100;
/// Pages read per repository and kind: 1,000 pull requests or branches.
const MAX_PAGES: usize = 10;
/// Most pages whose `ETag` and items are kept; past that they start over.
const MAX_ETAGS: usize = 10_000;

/// An item of `GET /repos/{owner}/{repo}/pulls`: the webhook's `pull_request` and its number.
#[derive(Deserialize, Serialize)]
struct PullItem {
    number: u64,
    #[serde(flatten)]
    pr: PullRequest,
}

/// An item of `GET /repos/{owner}/{repo}/branches`.
#[derive(Deserialize, Serialize)]
struct BranchItem {
    name: String,
    commit: Commit,
}

#[derive(Deserialize, Serialize)]
struct Commit {
    sha: String,
}

/// What one scan did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scan {
    pub(crate) queued: usize,
    pub(crate) disabled: usize,
    /// Repositories GitHub did not list (gone, no access, GitHub down): tried again at the
    /// next scan.
    pub(crate) failed: usize,
}

/// Why a repository was not reconciled.
enum RepoError {
    Github(String),
    Store(StoreError),
}

impl From<StoreError> for RepoError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

pub(crate) struct Reconciler {
    store: Store,
    github: Octocrab,
    every: Duration,
    forks: crate::derive::ForkPolicy,
    cancel_superseded: bool,
    reporter: Option<Name>,
    /// Per page asked for, the `ETag` of GitHub's last answer and the items it held.
    etags: Mutex<HashMap<String, (HeaderValue, String)>>,
}

/// The jobs derived from `base` for events of `repository` of `kind`, with their source.
fn derived_jobs<'a>(
    jobs: &'a [(JobName, JobDefinition)],
    base: &Name,
    repository: &str,
    kind: &str,
) -> Vec<(&'a JobName, &'a JobDefinition, &'a GithubSource)> {
    jobs.iter()
        .filter_map(|(name, def)| {
            let g = def.github.as_ref()?;
            (g.base_job == base.as_str()
                && g.kind == kind
                && g.repository.eq_ignore_ascii_case(repository))
            .then_some((name, def, g))
        })
        .collect()
}

impl Reconciler {
    pub(crate) fn new(
        store: Store,
        settings: &Settings,
        github: Octocrab,
        reporter: Option<Name>,
        every: Duration,
    ) -> Self {
        Self {
            store,
            github,
            every,
            forks: settings.forks,
            cancel_superseded: settings.cancel_superseded,
            reporter,
            etags: Mutex::default(),
        }
    }

    /// Scans at start-up (webhooks may have been missed while the service was down), then
    /// every interval.
    pub(crate) async fn run(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            match self.scan().await {
                Ok(s) => {
                    metrics::counter!("kiln_github_reconcile_scans_total").increment(1);
                    metrics::counter!("kiln_github_reconcile_queued_total")
                        .increment(s.queued as u64);
                    metrics::counter!("kiln_github_reconcile_disabled_total")
                        .increment(s.disabled as u64);
                    if s != Scan::default() {
                        tracing::info!(
                            queued = s.queued,
                            disabled = s.disabled,
                            failed_repositories = s.failed,
                            "reconciled GitHub's state with missed webhooks"
                        );
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reconcile scan failed; retrying next round"),
            }
        }
    }

    /// One pass over every link.
    pub(crate) async fn scan(&self) -> Result<Scan, StoreError> {
        let mut scan = Scan::default();
        let links = self.store.list_links().await?;
        if links.is_empty() {
            return Ok(scan);
        }
        let jobs = self.store.list_jobs(None).await?;
        let ctx = Ctx {
            store: &self.store,
            cancel_superseded: self.cancel_superseded,
            reporter: self.reporter.as_ref(),
        };
        for link in links {
            let Some((org, repo, kind)) = kiln_model::keys::parse_github_link(&link.key) else {
                continue;
            };
            let Some(base) = link
                .job_key
                .strip_prefix(kiln_model::keys::prefix::JOB)
                .and_then(|j| Name::parse(j).ok())
            else {
                continue;
            };
            let r = match kind {
                GithubLinkKind::Pullrequest => {
                    self.pulls(&ctx, &jobs, &org, &repo, &base, &mut scan).await
                }
                GithubLinkKind::Branch => {
                    self.branches(&ctx, &jobs, &org, &repo, &base, &mut scan)
                        .await
                }
            };
            match r {
                Ok(()) => {}
                Err(RepoError::Github(reason)) => {
                    metrics::counter!("kiln_github_reconcile_failures_total").increment(1);
                    tracing::warn!(repository = %format!("{org}/{repo}"), kind = kind.as_str(), reason = %reason, "GitHub did not list the repository; retrying next scan");
                    scan.failed += 1;
                }
                Err(RepoError::Store(e)) => return Err(e),
            }
        }
        Ok(scan)
    }

    /// Every page of a list, and whether it was whole (not cut at [`MAX_PAGES`]).
    async fn list<T: DeserializeOwned + Serialize>(
        &self,
        route: &str,
        extra: &str,
    ) -> Result<(Vec<T>, bool), RepoError> {
        let mut all = Vec::new();
        for page in 1..=MAX_PAGES {
            let uri = format!("{route}?per_page={PER_PAGE}&page={page}{extra}");
            let items: Vec<T> = self.page(&uri).await?;
            let last = items.len() < PER_PAGE;
            all.extend(items);
            if last {
                return Ok((all, true));
            }
        }
        Ok((all, false))
    }

    /// One page, asked for with the `ETag` of the last answer: GitHub answers 304 for an
    /// unchanged list without counting it against the token's hourly requests, and the
    /// items kept from last time stand in for it.
    async fn page<T: DeserializeOwned + Serialize>(&self, uri: &str) -> Result<Vec<T>, RepoError> {
        let cached = self.etags.lock().ok().and_then(|c| c.get(uri).cloned());
        let mut headers = HeaderMap::new();
        if let Some((etag, _)) = &cached {
            headers.insert(IF_NONE_MATCH, etag.clone());
        }
        let res = self
            .github
            ._get_with_headers(uri, Some(headers))
            .await
            .map_err(|e| RepoError::Github(describe(&e).1))?;
        if let Some(left) = res
            .headers()
            .get("x-ratelimit-remaining")
            .and_then(|v| v.to_str().ok()?.parse::<f64>().ok())
        {
            metrics::gauge!("kiln_github_rate_limit_remaining").set(left);
        }
        let status = res.status();
        if status == StatusCode::NOT_MODIFIED {
            if let Some((_, items)) = cached {
                metrics::counter!("kiln_github_reconcile_not_modified_total").increment(1);
                return serde_json::from_str(&items)
                    .map_err(|e| RepoError::Github(format!("cached list: {e}")));
            }
        }
        let etag = res.headers().get(ETAG).cloned();
        let body = self
            .github
            .body_to_string(res)
            .await
            .map_err(|e| RepoError::Github(describe(&e).1))?;
        if !status.is_success() {
            let message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or_default();
            return Err(RepoError::Github(format!(
                "GitHub answered {}: {message}",
                status.as_u16()
            )));
        }
        let items: Vec<T> = serde_json::from_str(&body)
            .map_err(|e| RepoError::Github(format!("unreadable list from {uri}: {e}")))?;
        // What is kept is the few fields read, not GitHub's whole answer.
        if let (Some(etag), Ok(kept), Ok(mut c)) =
            (etag, serde_json::to_string(&items), self.etags.lock())
        {
            if c.len() >= MAX_ETAGS && !c.contains_key(uri) {
                c.clear();
            }
            c.insert(uri.to_owned(), (etag, kept));
        }
        Ok(items)
    }

    async fn pulls(
        &self,
        ctx: &Ctx<'_>,
        jobs: &[(JobName, JobDefinition)],
        org: &str,
        repo: &str,
        base: &Name,
        scan: &mut Scan,
    ) -> Result<(), RepoError> {
        let (open, whole) = self
            .list::<PullItem>(&format!("/repos/{org}/{repo}/pulls"), "&state=open")
            .await?;
        let derived = derived_jobs(jobs, base, &format!("{org}/{repo}"), "pull_request");
        let known: HashMap<&JobName, (&JobDefinition, &GithubSource)> =
            derived.iter().map(|(n, d, g)| (*n, (*d, *g))).collect();
        let mut open_jobs = Vec::with_capacity(open.len());
        for item in open {
            let job = JobName::pull_request(base, item.number);
            open_jobs.push(job.clone());
            let current = known.get(&job).is_some_and(|(def, g)| {
                !def.disabled && g.head_sha.eq_ignore_ascii_case(&item.pr.head.sha)
            });
            if current {
                continue;
            }
            let repository = item
                .pr
                .base
                .repo
                .as_ref()
                .map_or_else(|| format!("{org}/{repo}"), |r| r.full_name.clone());
            let Ok(head) = pull_request_head(
                base.clone(),
                job,
                &repository,
                item.number,
                item.pr,
                self.forks,
            ) else {
                continue;
            };
            self.build(ctx, head, scan).await?;
        }
        if whole {
            for (name, def, _) in derived {
                if !def.disabled && !open_jobs.contains(name) {
                    ctx.close(name, "pull request closed (found by the reconcile scan)")
                        .await?;
                    scan.disabled += 1;
                }
            }
        }
        Ok(())
    }

    async fn branches(
        &self,
        ctx: &Ctx<'_>,
        jobs: &[(JobName, JobDefinition)],
        org: &str,
        repo: &str,
        base: &Name,
        scan: &mut Scan,
    ) -> Result<(), RepoError> {
        let derived = derived_jobs(jobs, base, &format!("{org}/{repo}"), "branch");
        if derived.iter().all(|(_, def, _)| def.disabled) {
            return Ok(());
        }
        let (branches, whole) = self
            .list::<BranchItem>(&format!("/repos/{org}/{repo}/branches"), "")
            .await?;
        let heads: HashMap<&str, &str> = branches
            .iter()
            .map(|b| (b.name.as_str(), b.commit.sha.as_str()))
            .collect();
        for (name, _, g) in derived.into_iter().filter(|(_, d, _)| !d.disabled) {
            match heads.get(g.head_ref.as_str()) {
                Some(sha) if sha.eq_ignore_ascii_case(&g.head_sha) => {}
                Some(sha) => {
                    let head = Head {
                        base: JobName::from_name(base),
                        job: name.clone(),
                        kind: TriggerKind::GithubPush,
                        source: GithubSource {
                            head_sha: (*sha).to_owned(),
                            author: None,
                            closed_at: None,
                            awaiting_approval: None,
                            ..g.clone()
                        },
                        from_fork: false,
                        needs_approval: false,
                    };
                    self.build(ctx, head, scan).await?;
                }
                None if whole => {
                    ctx.close(name, "branch deleted (found by the reconcile scan)")
                        .await?;
                    scan.disabled += 1;
                }
                None => {}
            }
        }
        Ok(())
    }

    /// Queues the head's build once: the delivery key names the job and sha, so a scan
    /// that runs again before the job shows the new head queues nothing more.
    async fn build(&self, ctx: &Ctx<'_>, head: Head, scan: &mut Scan) -> Result<(), RepoError> {
        let delivery = format!("reconcile-{}-{}", head.job, head.source.head_sha);
        match ctx.build(head, &delivery).await? {
            Outcome::Queued { job, number, .. } => {
                tracing::info!(job = %job, number, "queued a build a missed webhook would have queued");
                scan.queued += 1;
            }
            Outcome::Ignored { reason } => {
                tracing::info!(reason = %reason, "reconcile scan queued nothing");
            }
            _ => {}
        }
        Ok(())
    }
}
