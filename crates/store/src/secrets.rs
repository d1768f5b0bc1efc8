//! Secrets (`kiln:secrets`): set and listed through the api, read by workers for the builds
//! whose job names them. Listings never carry a value. With a [`SealKey`] values are stored
//! sealed; without one, as they are.

use chrono::Utc;
use deadpool_redis::redis::{self, AsyncCommands};
use kiln_model::{keys, SecretInfo, StoredSecret};

use crate::connect::Store;
use crate::error::StoreError;
use crate::seal::SealKey;

fn decode(name: &str, raw: &str) -> Result<StoredSecret, StoreError> {
    serde_json::from_str(raw).map_err(|e| StoreError::corrupt(&format!("secret {name}"), e))
}

impl Store {
    /// Sets a secret (the caller validated name and value), sealed under `key` when given;
    /// true when it is new.
    pub async fn put_secret(
        &self,
        name: &str,
        value: &str,
        by: &str,
        key: Option<&SealKey>,
    ) -> Result<bool, StoreError> {
        let (value, sealed) = match key {
            Some(k) => {
                let sealed = k
                    .seal(name, value)
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
        let added: u64 = c.hset(keys::SECRETS, name, json).await?;
        Ok(added == 1)
    }

    /// Every secret's name, who set it and when, by name.
    pub async fn list_secrets(&self) -> Result<Vec<SecretInfo>, StoreError> {
        let mut c = self.conn().await?;
        let all: Vec<(String, String)> = c.hgetall(keys::SECRETS).await?;
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

    /// Deletes a secret; false when there was none.
    pub async fn delete_secret(&self, name: &str) -> Result<bool, StoreError> {
        let mut c = self.conn().await?;
        let removed: u64 = c.hdel(keys::SECRETS, name).await?;
        Ok(removed == 1)
    }

    /// The values of the named secrets, in order, sealed ones opened with `key`;
    /// `Err(NotFound)` names the first one that is not defined, `Err(Invalid)` one that is
    /// sealed but cannot be opened here.
    pub async fn secret_values(
        &self,
        names: &[String],
        key: Option<&SealKey>,
    ) -> Result<Vec<String>, StoreError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = self.conn().await?;
        let raws: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(keys::SECRETS)
            .arg(names)
            .query_async(&mut c)
            .await?;
        names
            .iter()
            .zip(raws)
            .map(|(name, raw)| {
                let raw = raw.ok_or_else(|| StoreError::NotFound(format!("secret '{name}'")))?;
                let s = decode(name, &raw)?;
                let unopened = |why: String| StoreError::Invalid {
                    field: "secrets.key".into(),
                    message: format!("secret '{name}' is sealed and {why}"),
                };
                match (s.value, s.sealed, key) {
                    (Some(v), _, _) => Ok(v),
                    (None, Some(sealed), Some(k)) => k
                        .open(name, &sealed)
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
