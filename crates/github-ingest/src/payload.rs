//! The parts of GitHub's webhook payloads Kiln reads. Our own small types, not a full model:
//! fields GitHub adds later cannot break parsing, and every field used is visible here.

use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, Serialize)]
pub(crate) struct Repository {
    /// `owner/name`.
    pub(crate) full_name: String,
    pub(crate) clone_url: String,
}

impl Repository {
    /// Owner and name as they appear in `full_name`.
    pub(crate) fn owner_and_name(&self) -> Option<(&str, &str)> {
        self.full_name.split_once('/')
    }
}

#[derive(Debug, Deserialize, Serialize)]
pub(crate) struct User {
    pub(crate) login: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct PullRequestEvent {
    pub(crate) action: String,
    pub(crate) number: u64,
    pub(crate) pull_request: PullRequest,
    pub(crate) repository: Repository,
}

#[derive(Debug, Deserialize, Serialize)]
pub(crate) struct PullRequest {
    pub(crate) title: String,
    pub(crate) user: User,
    pub(crate) head: Head,
    pub(crate) base: Head,
}

#[derive(Debug, Deserialize, Serialize)]
pub(crate) struct Head {
    #[serde(rename = "ref")]
    pub(crate) git_ref: String,
    pub(crate) sha: String,
    /// Null when the head repository was deleted.
    pub(crate) repo: Option<Repository>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct PushEvent {
    #[serde(rename = "ref")]
    pub(crate) git_ref: String,
    pub(crate) after: String,
    #[serde(default)]
    pub(crate) deleted: bool,
    pub(crate) repository: Repository,
    pub(crate) sender: Option<User>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct DeleteEvent {
    #[serde(rename = "ref")]
    pub(crate) git_ref: String,
    pub(crate) ref_type: String,
    pub(crate) repository: Repository,
}
