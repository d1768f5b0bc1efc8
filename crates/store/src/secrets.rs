//! Secrets (`kiln:secrets`): set and listed through the api, read by workers for the builds
//! whose job names them. Listings never carry a value.

use chrono::Utc;
use deadpool_redis::redis::{self, AsyncCommands};
use kiln_model::{keys, SecretInfo, StoredSecret};

use crate::connect::Store;
use crate::error::StoreError;

fn decode(name: &str, raw: &str) -> Result<StoredSecret, StoreError> {
    serde_json::from_str(raw).map_err(|e| StoreError::corrupt(&format!("secret {name}"), e))
}

impl Store {
    /// Sets a secret (the caller validated name and value); true when it is new.
    pub async fn put_secret(&self, name: &str, value: &str, by: &str) -> Result<bool, StoreError> {
        let stored = StoredSecret {
            value: value.to_owned(),
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

    /// The values of the named secrets, in order; `Err(NotFound)` names the first one that
    /// is not defined.
    pub async fn secret_values(&self, names: &[String]) -> Result<Vec<String>, StoreError> {
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
            .map(|(name, raw)| match raw {
                Some(r) => decode(name, &r).map(|s| s.value),
                None => Err(StoreError::NotFound(format!("secret '{name}'"))),
            })
            .collect()
    }
}
