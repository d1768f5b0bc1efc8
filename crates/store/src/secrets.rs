//! Secrets: set and listed through the api, read by workers for the builds whose job names
//! them. Global ones live in `kiln:secrets`; a folder's in `kiln:folder-secrets:<folder>`,
//! where the jobs inside the folder, at any depth, find them first. Listings never carry a
//! value. With a [`SealKey`] values are stored sealed, bound to their name and, for a
//! folder's, to the folder; without one, as they are.

use chrono::Utc;
use deadpool_redis::redis::AsyncCommands;
use kiln_model::{keys, Name, SecretInfo, StoredSecret};

use crate::connect::Store;
use crate::error::StoreError;
use crate::scripts;
use crate::seal::SealKey;

fn decode(name: &str, raw: &str) -> Result<StoredSecret, StoreError> {
    serde_json::from_str(raw).map_err(|e| StoreError::corrupt(&format!("secret {name}"), e))
}

/// The hash a secret lives in: the global one, or `folder`'s.
fn hash(folder: Option<&Name>) -> String {
    folder.map_or_else(|| keys::SECRETS.to_owned(), keys::folder_secrets)
}

/// What a sealed value is bound to: the secret's name, and its folder when it has one, so
/// a value copied to another name or folder does not open.
fn bound_to(folder: Option<&str>, name: &str) -> String {
    match folder {
        Some(f) => format!("{f}/{name}"),
        None => name.to_owned(),
    }
}

impl Store {
    /// Sets a secret, global or `folder`'s (the caller validated name and value), sealed
    /// under `key` when given; true when it is new.
    pub async fn put_secret(
        &self,
        folder: Option<&Name>,
        name: &str,
        value: &str,
        by: &str,
        key: Option<&SealKey>,
    ) -> Result<bool, StoreError> {
        let (value, sealed) = match key {
            Some(k) => {
                let sealed = k
                    .seal(&bound_to(folder.map(Name::as_str), name), value)
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                (None, Some(sealed))
            }
            None => (Some(value.to_owned()), None),
        };
        let stored = StoredSecret {
            value,
            sealed,
            updated_at: Utc::now(),
            updated_by: by.to_owned(),
        };
        let json = serde_json::to_string(&stored).map_err(|e| StoreError::corrupt("secret", e))?;
        let mut c = self.conn().await?;
        let added: u64 = c.hset(hash(folder), name, json).await?;
        Ok(added == 1)
    }

    /// Every secret's name, who set it and when, by name: the global ones, or `folder`'s.
    pub async fn list_secrets(&self, folder: Option<&Name>) -> Result<Vec<SecretInfo>, StoreError> {
        let mut c = self.conn().await?;
        let all: Vec<(String, String)> = c.hgetall(hash(folder)).await?;
        let mut out = all
            .iter()
            .map(|(name, raw)| {
                decode(name, raw).map(|s| SecretInfo {
                    name: name.clone(),
                    updated_at: s.updated_at,
                    updated_by: s.updated_by,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Deletes a secret, global or `folder`'s; false when there was none.
    pub async fn delete_secret(
        &self,
        folder: Option<&Name>,
        name: &str,
    ) -> Result<bool, StoreError> {
        let mut c = self.conn().await?;
        let removed: u64 = c.hdel(hash(folder), name).await?;
        Ok(removed == 1)
    }

    /// The values of the named secrets for a job in `folder`, in order: each from the
    /// nearest folder up from `folder` that sets it, else the global one
    /// (`secret_values.lua`, one round trip); sealed ones opened with `key`.
    /// `Err(NotFound)` names the first one that is not defined, `Err(Invalid)` one that is
    /// sealed but cannot be opened here.
    pub async fn secret_values(
        &self,
        names: &[String],
        folder: Option<&Name>,
        key: Option<&SealKey>,
    ) -> Result<Vec<String>, StoreError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = self.conn().await?;
        let found: Vec<Vec<String>> = scripts::SECRET_VALUES
            .key(keys::FOLDER_PARENTS)
            .key(keys::SECRETS)
            .arg(folder.map_or("", Name::as_str))
            .arg(keys::prefix::FOLDER_SECRETS)
            .arg(names)
            .invoke_async(&mut c)
            .await?;
        names
            .iter()
            .zip(found)
            .map(|(name, found)| {
                let [from, raw] = <[String; 2]>::try_from(found)
                    .map_err(|_| StoreError::NotFound(format!("secret '{name}'")))?;
                let from = Some(from.as_str()).filter(|f| !f.is_empty());
                let s = decode(name, &raw)?;
                let unopened = |why: String| StoreError::Invalid {
                    field: "secrets.key".into(),
                    message: format!("secret '{name}' is sealed and {why}"),
                };
                match (s.value, s.sealed, key) {
                    (Some(v), _, _) => Ok(v),
                    (None, Some(sealed), Some(k)) => k
                        .open(&bound_to(from, name), &sealed)
                        .map_err(|e| unopened(format!("this secrets.key {e}"))),
                    (None, Some(_), None) => Err(unopened(
                        "this service has no secrets.key to open it (give it the api's)".into(),
                    )),
                    (None, None, _) => Err(StoreError::corrupt(
                        &format!("secret {name}"),
                        serde::de::Error::custom("neither value nor sealed"),
                    )),
                }
            })
            .collect()
    }
}
