//! GitHub links: `github_<org>_<repo>_pullrequest|branch` hold the key of the job that PRs or
//! branch pushes of the repository run. `kiln:github-links` indexes them.

use deadpool_redis::redis::{self, AsyncCommands};
use kiln_model::keys::{self, GithubLinkKind};
use kiln_model::JobName;
use serde::Serialize;

use crate::connect::Store;
use crate::error::StoreError;

#[derive(Debug, Clone, Serialize)]
pub struct Link {
    pub key: String,
    /// The linked job's key, `job_<name>`.
    pub job_key: String,
}

/// A GitHub owner or repository name as a key part: `[A-Za-z0-9._-]`, 1 to 100 characters.
pub fn valid_repo_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        && !s.starts_with('.')
}

impl Store {
    /// Links a repository's PRs or branches to `job` (which must exist).
    pub async fn set_link(
        &self,
        org: &str,
        repo: &str,
        kind: GithubLinkKind,
        job: &JobName,
    ) -> Result<Link, StoreError> {
        if self.get_job(job).await?.is_none() {
            return Err(StoreError::Invalid {
                field: "job".into(),
                message: format!("job {job} does not exist"),
            });
        }
        let key = keys::github_link(org, repo, kind);
        let job_key = keys::job(job);
        let mut c = self.conn().await?;
        let _: () = redis::pipe()
            .atomic()
            .set(&key, &job_key)
            .sadd(keys::GITHUB_LINKS, &key)
            .query_async(&mut c)
            .await?;
        Ok(Link { key, job_key })
    }

    /// The linked job's name, if the repository is linked for `kind`.
    pub async fn get_link(
        &self,
        org: &str,
        repo: &str,
        kind: GithubLinkKind,
    ) -> Result<Option<JobName>, StoreError> {
        let mut c = self.conn().await?;
        let v: Option<String> = c.get(keys::github_link(org, repo, kind)).await?;
        Ok(v.and_then(|k| {
            k.strip_prefix(keys::prefix::JOB)
                .and_then(|n| JobName::parse(n).ok())
        }))
    }

    pub async fn delete_link(
        &self,
        org: &str,
        repo: &str,
        kind: GithubLinkKind,
    ) -> Result<bool, StoreError> {
        let key = keys::github_link(org, repo, kind);
        let mut c = self.conn().await?;
        let (n, _): (u64, u64) = redis::pipe()
            .atomic()
            .del(&key)
            .srem(keys::GITHUB_LINKS, &key)
            .query_async(&mut c)
            .await?;
        Ok(n > 0)
    }

    pub async fn list_links(&self) -> Result<Vec<Link>, StoreError> {
        let mut c = self.conn().await?;
        let mut keys: Vec<String> = c.smembers(keys::GITHUB_LINKS).await?;
        keys.sort();
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut c).await?;
        Ok(keys
            .into_iter()
            .zip(values)
            .filter_map(|(key, v)| v.map(|job_key| Link { key, job_key }))
            .collect())
    }
}

impl Store {
    /// What a handled delivery left at its `keys::github_delivery` key: the build key it
    /// queued, or `-`.
    pub async fn delivery(&self, key: &str) -> Result<Option<String>, StoreError> {
        let mut c = self.conn().await?;
        Ok(c.get(key).await?)
    }
}
