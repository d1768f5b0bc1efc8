//! Derived jobs: a pull request or branch gets its own job (`<base>_pr<N>`,
//! `<base>_branch-<slug>`), a copy of the linked job refreshed on every event, placed beside
//! it, with the head it builds recorded in `github`.

use chrono::Utc;
use kiln_model::{
    keys, BuildStatus, GithubSource, JobDefinition, JobName, Name, Repository, Trigger, TriggerKind,
};
use kiln_store::{Store, StoreError, TriggerRequest};
use serde::Serialize;

use crate::payload::PullRequest;

/// Who the job revisions github-ingest writes (a derived job refreshed, closed) say changed
/// them.
const GITHUB_INGEST: &str = "github-ingest";

/// A delivery id is remembered this long, so a redelivered event never queues twice.
pub(crate) const DELIVERY_TTL_SECS: u64 = 24 * 3600;

/// What a delivery did, as answered to GitHub (and counted in metrics).
#[derive(Debug, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub(crate) enum Outcome {
    Queued {
        job: JobName,
        number: u64,
        /// Older builds of the same PR or branch cancelled by this new head.
        superseded: usize,
    },
    Duplicate {
        job: JobName,
        number: u64,
    },
    Disabled {
        job: JobName,
        cancelled: usize,
    },
    /// A pull request from a fork got its job; its head waits for someone's approval.
    AwaitingApproval {
        job: JobName,
        sha: String,
    },
    Ignored {
        reason: String,
    },
    Pong {
        zen: String,
    },
}

impl Outcome {
    pub(crate) fn ignored(reason: impl Into<String>) -> Self {
        Self::Ignored {
            reason: reason.into(),
        }
    }

    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::Queued { .. } => "queued",
            Self::Duplicate { .. } => "duplicate",
            Self::Disabled { .. } => "disabled",
            Self::AwaitingApproval { .. } => "awaiting_approval",
            Self::Ignored { .. } => "ignored",
            Self::Pong { .. } => "pong",
        }
    }
}

/// The head of a pull request or branch to build.
pub(crate) struct Head {
    pub(crate) base: JobName,
    pub(crate) job: JobName,
    pub(crate) kind: TriggerKind,
    pub(crate) source: GithubSource,
    /// A pull request from a fork (built only with `github.allow_fork_prs`, or once
    /// approved): it runs code from outside the repository, so its job gets none of the
    /// base job's secrets.
    pub(crate) from_fork: bool,
    /// Its head is not built until someone approves it (`ForkPolicy::Approve`).
    pub(crate) needs_approval: bool,
}

/// What becomes of a pull request from a fork: `github.allow_fork_prs` builds it,
/// `github.fork_pr_approval` waits for someone to approve each head, neither ignores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ForkPolicy {
    Build,
    Approve,
    Ignore,
}

/// Why an open pull request gets no build.
pub(crate) enum PrSkip {
    /// Its head repository was deleted: there is nothing to clone.
    HeadRepoGone,
    /// It comes from a fork, and forks are ignored (`ForkPolicy::Ignore`).
    Fork,
}

/// The head to build for pull request `number` of `repository` (`owner/name`), as a
/// webhook or the reconcile scan saw it.
pub(crate) fn pull_request_head(
    base: Name,
    job: JobName,
    repository: &str,
    number: u64,
    pr: PullRequest,
    forks: ForkPolicy,
) -> Result<Head, PrSkip> {
    let head_repo = pr.head.repo.as_ref().ok_or(PrSkip::HeadRepoGone)?;
    let base_repo = pr.base.repo.as_ref().map_or(repository, |r| &r.full_name);
    let from_fork = !head_repo.full_name.eq_ignore_ascii_case(base_repo);
    if from_fork && forks == ForkPolicy::Ignore {
        return Err(PrSkip::Fork);
    }
    Ok(Head {
        base: JobName::from_name(&base),
        job,
        kind: TriggerKind::GithubPullRequest,
        source: GithubSource {
            kind: "pull_request".into(),
            repository: repository.to_owned(),
            base_job: base.to_string(),
            number: Some(number),
            title: Some(pr.title),
            author: Some(pr.user.login),
            clone_url: head_repo.clone_url.clone(),
            head_sha: pr.head.sha,
            head_ref: pr.head.git_ref,
            closed_at: None,
            awaiting_approval: None,
        },
        from_fork,
        needs_approval: from_fork && forks == ForkPolicy::Approve,
    })
}

/// What the webhook handler shares with the derived-job logic.
pub(crate) struct Ctx<'a> {
    pub(crate) store: &'a Store,
    pub(crate) cancel_superseded: bool,
    /// The status reporter's consumer name, when statuses are posted.
    pub(crate) reporter: Option<&'a Name>,
}

fn derived(base: &JobDefinition, source: GithubSource, from_fork: bool) -> JobDefinition {
    let mut d = base.clone();
    if from_fork {
        d.secrets.clear();
    }
    d.repository = Some(Repository {
        url: source.clone_url.clone(),
        git_ref: Some(source.head_ref.clone()),
    });
    d.disabled = false;
    // The base job's schedule builds the base job; a pull request or branch builds on its
    // own events only, and its builds start none of the base job's downstream jobs (a pull
    // request must not deploy) nor send its notifications (its commit status tells).
    d.schedule = None;
    d.downstream.clear();
    d.notify.clear();
    d.github = Some(source);
    d
}

impl Ctx<'_> {
    /// Refreshes the derived job from its base and queues a build of the head.
    pub(crate) async fn build(&self, head: Head, delivery: &str) -> Result<Outcome, StoreError> {
        let dedup = keys::github_delivery(delivery);
        if let Some(build) = self.already_handled(&dedup).await? {
            return Ok(Outcome::Duplicate {
                job: build.job,
                number: build.number.0,
            });
        }
        let Some(base) = self.store.get_job(&head.base).await? else {
            return Ok(Outcome::ignored(format!(
                "the linked job {} does not exist",
                head.base
            )));
        };
        let sha = head.source.head_sha.clone();
        let author = head.source.author.clone();
        let git_ref = head.source.head_ref.clone();
        let mut def = derived(&base, head.source, head.from_fork);
        if head.needs_approval {
            if let Some(g) = def.github.as_mut() {
                g.awaiting_approval = Some(sha.clone());
            }
        }
        self.store.put_job(&head.job, &def, GITHUB_INGEST).await?;
        let superseded = if self.cancel_superseded {
            let short = &sha[..sha.len().min(8)];
            self.store
                .cancel_active(&head.job, &format!("github (superseded by {short})"))
                .await?
        } else {
            0
        };
        if head.needs_approval {
            self.store.mark_delivery(&dedup, DELIVERY_TTL_SECS).await?;
            return Ok(Outcome::AwaitingApproval { job: head.job, sha });
        }
        let t = self
            .store
            .trigger(&TriggerRequest {
                job: head.job.clone(),
                parameters: Default::default(),
                trigger: Trigger {
                    sha: Some(sha),
                    git_ref: Some(git_ref),
                    ..Trigger::new(head.kind, author)
                },
                dedup: Some((dedup, DELIVERY_TTL_SECS)),
                next: false,
                cells: None,
            })
            .await?;
        if t.deduplicated {
            return Ok(Outcome::Duplicate {
                job: head.job,
                number: t.build.number.0,
            });
        }
        if let Some(reporter) = self.reporter {
            let entries: Vec<String> = t
                .builds()
                .map(|b| keys::github_pending(&b.build_ref()))
                .collect();
            self.store.push_finished(reporter, &entries).await?;
        }
        Ok(Outcome::Queued {
            job: head.job,
            number: t.build.number.0,
            superseded,
        })
    }

    async fn already_handled(
        &self,
        dedup: &str,
    ) -> Result<Option<kiln_model::BuildRef>, StoreError> {
        Ok(self
            .store
            .delivery(dedup)
            .await?
            .and_then(|k| kiln_model::BuildRef::from_key(&k).ok()))
    }

    /// Disables the job of a closed PR or deleted branch and cancels its builds; its
    /// history stays until the cleanup task deletes it.
    pub(crate) async fn close(&self, job: &JobName, why: &str) -> Result<Outcome, StoreError> {
        let Some(mut def) = self.store.get_job(job).await? else {
            return Ok(Outcome::ignored(format!("no job {job} to disable")));
        };
        if !def.disabled {
            def.disabled = true;
            if let Some(g) = def.github.as_mut() {
                g.closed_at = Some(Utc::now());
            }
            self.store.put_job(job, &def, GITHUB_INGEST).await?;
        }
        let cancelled = self
            .store
            .cancel_active(job, &format!("github ({why})"))
            .await?;
        Ok(Outcome::Disabled {
            job: job.clone(),
            cancelled,
        })
    }
}

/// The GitHub commit state for a finished build.
pub(crate) fn final_state(status: BuildStatus) -> (&'static str, String) {
    match status {
        BuildStatus::Success => ("success", "the build succeeded".into()),
        BuildStatus::Failure => ("failure", "the build failed".into()),
        BuildStatus::TimedOut => ("failure", "the build timed out".into()),
        BuildStatus::Cancelled => ("error", "the build was cancelled".into()),
        BuildStatus::Lost => ("error", "the build's worker was lost too often".into()),
        BuildStatus::Error => ("error", "Kiln could not run the build".into()),
        BuildStatus::Queued | BuildStatus::Running => ("pending", "the build is queued".into()),
    }
}
