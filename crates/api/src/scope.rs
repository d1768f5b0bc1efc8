//! What a write token limited to folders (`auth.tokens[].folders`) may change: what is
//! inside one of its folders, at any depth — the folders themselves and what they hold, jobs
//! and their builds — and nothing that belongs to no folder (the root, secrets, GitHub
//! links, which any job may use). Tokens without folders pass without a read of Redis.

use kiln_model::{JobName, Name};
use kiln_service_kit::auth::Principal;
use kiln_service_kit::error::ApiError;
use kiln_store::{Store, StoreError};

fn refused(who: &Principal, what: &str) -> ApiError {
    ApiError::Forbidden(format!(
        "token '{}' may change only what is inside folder{} {}; {what}",
        who.name,
        if who.folders.len() == 1 { "" } else { "s" },
        who.folders.join(", ")
    ))
}

/// `who` may change what is in `folder` (`None`: the root).
pub(crate) async fn require_folder(
    store: &Store,
    who: &Principal,
    folder: Option<&Name>,
) -> Result<(), ApiError> {
    if !who.is_limited() {
        return Ok(());
    }
    let Some(f) = folder else {
        return Err(refused(who, "this is in the root"));
    };
    let chain = match store.folder_chain(Some(f)).await {
        Ok(chain) => chain,
        // A folder that does not exist holds nothing a token was given.
        Err(StoreError::NotFound(_)) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    if chain
        .iter()
        .any(|c| who.folders.iter().any(|w| w == c.as_str()))
    {
        Ok(())
    } else {
        Err(refused(who, &format!("folder '{f}' is not among them")))
    }
}

/// `who` may change the job `job` and its builds. A job that does not exist passes (the
/// route says 404, or creates it and checks the folder it names).
pub(crate) async fn require_job(
    store: &Store,
    who: &Principal,
    job: &JobName,
) -> Result<(), ApiError> {
    if !who.is_limited() {
        return Ok(());
    }
    match store.get_job(job).await? {
        Some(def) => require_folder(store, who, def.folder.as_ref()).await,
        None => Ok(()),
    }
}

/// `who` may change what belongs to no folder (`what`: secrets, GitHub links).
pub(crate) fn require_unlimited(who: &Principal, what: &str) -> Result<(), ApiError> {
    if who.is_limited() {
        Err(refused(who, &format!("{what} belong to no folder")))
    } else {
        Ok(())
    }
}
