//! The durable hand-off of finished builds to their consumers (es-indexer, the GitHub
//! status reporter, the api's downstream trigger): `kiln:finished:<consumer>` -> `kiln:processing:<consumer>` -> done, or
//! `kiln:dead-letter:<consumer>`. Never pub/sub: a consumer that is down for an hour finds
//! everything waiting when it comes back.

use std::time::Duration;

use deadpool_redis::redis::{self, AsyncCommands};
use kiln_model::{keys, Name};
use serde::{Deserialize, Serialize};

use crate::connect::{BlockingStore, Store};
use crate::error::StoreError;
use crate::scripts;

/// An entry a consumer gave up on, with why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter {
    pub entry: String,
    pub reason: String,
    pub at: chrono::DateTime<chrono::Utc>,
}

impl Store {
    /// Takes up to `max` entries, oldest first, into the consumer's processing list.
    pub async fn claim_finished(
        &self,
        consumer: &Name,
        max: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.take_into(&keys::finished(consumer), &keys::processing(consumer), max)
            .await
    }

    /// Entries a previous run took but did not finish (oldest first), to handle again.
    pub async fn unfinished(&self, consumer: &Name) -> Result<Vec<String>, StoreError> {
        self.oldest_first(&keys::processing(consumer)).await
    }

    /// Marks entries handled.
    pub async fn ack_finished(
        &self,
        consumer: &Name,
        entries: &[String],
    ) -> Result<(), StoreError> {
        self.remove_from(&keys::processing(consumer), entries).await
    }

    /// Moves up to `max` entries of the list `from`, oldest first, onto the list `taken`,
    /// atomically, so each is in one of the two until it is removed from `taken`.
    pub(crate) async fn take_into(
        &self,
        from: &str,
        taken: &str,
        max: usize,
    ) -> Result<Vec<String>, StoreError> {
        let mut c = self.conn().await?;
        Ok(scripts::CLAIM_FINISHED
            .key(from)
            .key(taken)
            .arg(max)
            .invoke_async(&mut c)
            .await?)
    }

    /// The entries of a list of taken entries, oldest first.
    pub(crate) async fn oldest_first(&self, list: &str) -> Result<Vec<String>, StoreError> {
        let mut c = self.conn().await?;
        let mut v: Vec<String> = c.lrange(list, 0, -1).await?;
        v.reverse();
        Ok(v)
    }

    /// Removes one occurrence of each entry from a list of taken entries: they are done.
    pub(crate) async fn remove_from(
        &self,
        list: &str,
        entries: &[String],
    ) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for e in entries {
            pipe.lrem(list, 1, e).ignore();
        }
        let mut c = self.conn().await?;
        let _: () = pipe.query_async(&mut c).await?;
        Ok(())
    }

    /// Moves an entry from processing to the dead-letter list, with the reason, atomically.
    pub async fn dead_letter(
        &self,
        consumer: &Name,
        entry: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        let letter = DeadLetter {
            entry: entry.to_owned(),
            reason: reason.to_owned(),
            at: chrono::Utc::now(),
        };
        let json =
            serde_json::to_string(&letter).map_err(|e| StoreError::corrupt("dead letter", e))?;
        let mut c = self.conn().await?;
        let _: () = redis::pipe()
            .atomic()
            .lrem(keys::processing(consumer), 1, entry)
            .ignore()
            .lpush(keys::dead_letter(consumer), json)
            .ignore()
            .query_async(&mut c)
            .await?;
        Ok(())
    }

    /// The newest dead letters of a consumer.
    pub async fn dead_letters(
        &self,
        consumer: &Name,
        max: isize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let mut c = self.conn().await?;
        let raw: Vec<String> = c.lrange(keys::dead_letter(consumer), 0, max - 1).await?;
        Ok(raw
            .iter()
            .filter_map(|r| serde_json::from_str(r).ok())
            .collect())
    }

    /// How many entries wait for a consumer (not yet claimed).
    pub async fn backlog(&self, consumer: &Name) -> Result<u64, StoreError> {
        let mut c = self.conn().await?;
        Ok(c.llen(keys::finished(consumer)).await?)
    }

    /// Adds an entry to a consumer's list by hand (the GitHub reporter's `pending:<key>`
    /// entries, backfills).
    pub async fn push_finished(
        &self,
        consumer: &Name,
        entries: &[String],
    ) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut c = self.conn().await?;
        let _: () = c.lpush(keys::finished(consumer), entries).await?;
        Ok(())
    }

    /// Whether `consumer` is registered (its service runs and asked for finished builds).
    pub async fn is_consumer(&self, consumer: &Name) -> Result<bool, StoreError> {
        let mut c = self.conn().await?;
        Ok(c.sismember(keys::FINISHED_CONSUMERS, consumer.as_str())
            .await?)
    }

    /// Stops copying finished builds to a consumer that is switched off, so its list does
    /// not grow without a reader.
    pub async fn unregister_consumer(&self, consumer: &Name) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let _: i64 = c.srem(keys::FINISHED_CONSUMERS, consumer.as_str()).await?;
        Ok(())
    }
}

impl BlockingStore {
    /// Waits up to `timeout` for an entry of the consumer's list and takes it into its
    /// processing list, like [`Store::claim_finished`] with one entry, for a consumer that
    /// should act as soon as a build ends rather than at its next poll.
    pub async fn wait_finished(
        &self,
        consumer: &Name,
        timeout: Duration,
    ) -> Result<Option<String>, StoreError> {
        let mut c = self.0.conn().await?;
        Ok(redis::cmd("BLMOVE")
            .arg(keys::finished(consumer))
            .arg(keys::processing(consumer))
            .arg("RIGHT")
            .arg("LEFT")
            .arg(timeout.as_secs_f64())
            .query_async(&mut c)
            .await?)
    }
}
