//! Read-only access to any key of Kiln's layout, for the api's `/redis/{key}`.

use deadpool_redis::redis::{self, AsyncCommands};
use kiln_model::{BuildRef, Entry};
use serde::Serialize;
use serde_json::Value;

use crate::connect::Store;
use crate::error::StoreError;

/// Most elements returned for a list, set, hash or sorted set.
pub(crate) const RAW_LIMIT: isize = 1000;

#[derive(Debug, Clone, Serialize)]
pub struct RawValue {
    pub key: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub value: Value,
    /// True when a collection held more than [`RAW_LIMIT`] elements.
    pub truncated: bool,
}

/// Whether `key` belongs to the documented layout (spec keys, or Kiln's `kiln:` keys).
pub fn is_layout_key(key: &str) -> bool {
    key == kiln_model::keys::ROOT
        || key.starts_with("kiln:")
        || key.parse::<Entry>().is_ok()
        || BuildRef::from_key(key).is_ok()
        || key
            .strip_prefix("job_")
            .and_then(|k| k.strip_suffix("_recent"))
            .is_some_and(|j| kiln_model::JobName::parse(j).is_ok())
        || (key.starts_with("github_")
            && (key.ends_with("_pullrequest") || key.ends_with("_branch"))
            && !key.contains(char::is_whitespace))
}

fn json_or_string(s: String) -> Value {
    serde_json::from_str(&s).unwrap_or(Value::String(s))
}

impl Store {
    /// The key's type and value; strings holding JSON come back parsed.
    pub async fn raw(&self, key: &str) -> Result<RawValue, StoreError> {
        let mut c = self.conn().await?;
        let kind: String = redis::cmd("TYPE").arg(key).query_async(&mut c).await?;
        let (value, len): (Value, u64) = match kind.as_str() {
            "none" => return Err(StoreError::NotFound(format!("key {key}"))),
            "string" => {
                let s: String = c.get(key).await?;
                (json_or_string(s), 0)
            }
            "list" => {
                let (v, n): (Vec<String>, u64) = redis::pipe()
                    .lrange(key, 0, RAW_LIMIT - 1)
                    .llen(key)
                    .query_async(&mut c)
                    .await?;
                (Value::from(v), n)
            }
            "hash" => {
                let n: u64 = c.hlen(key).await?;
                let (_, v): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
                    .arg(key)
                    .arg(0)
                    .arg("COUNT")
                    .arg(RAW_LIMIT)
                    .query_async(&mut c)
                    .await?;
                (
                    Value::Object(v.into_iter().map(|(k, v)| (k, Value::from(v))).collect()),
                    n,
                )
            }
            "set" => {
                let n: u64 = c.scard(key).await?;
                let v: Vec<String> = c.srandmember_multiple(key, RAW_LIMIT).await?;
                (Value::from(v), n)
            }
            "zset" => {
                let n: u64 = c.zcard(key).await?;
                let v: Vec<(String, f64)> = c.zrange_withscores(key, 0, RAW_LIMIT - 1).await?;
                let v = v
                    .into_iter()
                    .map(|(m, s)| serde_json::json!({"member": m, "score": s}))
                    .collect::<Vec<_>>();
                (Value::from(v), n)
            }
            other => (Value::String(format!("<{other}>")), 0),
        };
        Ok(RawValue {
            key: key.to_owned(),
            kind,
            value,
            truncated: len > RAW_LIMIT as u64,
        })
    }
}
