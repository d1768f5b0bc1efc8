//! The GitHub API client the status reporter and the reconcile scan share.

use octocrab::Octocrab;

use crate::config::Settings;

/// A client for `github.api_url` with `github.token`, or `None` without a token: both
/// users of the API then stay off (statuses need a token's rights, and an anonymous scan
/// would run out of GitHub's 60 requests an hour).
pub(crate) fn client(settings: &Settings) -> Result<Option<Octocrab>, String> {
    let Some(token) = &settings.token else {
        return Ok(None);
    };
    Octocrab::builder()
        .base_uri(settings.api_url.as_str())
        .map_err(|e| format!("github.api_url: {e}"))?
        .personal_token(token.expose().to_owned())
        .build()
        .map(Some)
        .map_err(|e| format!("cannot create the GitHub client: {e}"))
}

/// Why a GitHub request failed, in words for the log: GitHub's status and message when it
/// answered.
pub(crate) fn describe(e: &octocrab::Error) -> (Option<u16>, String) {
    match e {
        octocrab::Error::GitHub { source, .. } => {
            let code = source.status_code.as_u16();
            (
                Some(code),
                format!("GitHub answered {code}: {}", source.message),
            )
        }
        other => (None, other.to_string()),
    }
}
