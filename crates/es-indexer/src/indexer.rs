//! The indexing loop: claim a batch (up to `batch_size` entries or `batch_wait`, whichever
//! comes first) into the processing list, index it with one `_bulk` request, acknowledge
//! what the cluster acknowledged, dead-letter what it refused for good, and retry the rest
//! with capped exponential backoff. Nothing is dropped: until acknowledged, an entry is in
//! `kiln:finished:es` or `kiln:processing:es`, and leftovers are re-sent at start-up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kiln_model::{BuildDocument, Name};
use kiln_store::{Store, StoreError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::{Es, EsError, ItemResult};
use crate::config::Settings;
use crate::document::{document, index_for};

/// The indexer's consumer name (`kiln:finished:es`).
pub(crate) const CONSUMER: &str = kiln_model::keys::ES_CONSUMER;
/// Pause when there is nothing to index.
const IDLE: Duration = Duration::from_millis(100);

pub(crate) struct Indexer {
    pub(crate) store: Store,
    pub(crate) es: Arc<Es>,
    pub(crate) settings: Settings,
    pub(crate) consumer: Name,
    /// The template is installed and the last request reached the cluster.
    pub(crate) ready: Arc<AtomicBool>,
}

/// What happened to a batch: entries to retry, and whether the cluster was reachable.
struct Round {
    retry: Vec<String>,
}

impl Indexer {
    pub(crate) async fn run(self, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        let mut template_ok = false;
        let mut pending: Vec<String> = Vec::new();
        let mut leftovers_read = false;
        while !stop.is_cancelled() {
            if !template_ok {
                match self.es.install_template().await {
                    Ok(()) => {
                        template_ok = true;
                        tracing::info!(index = %self.settings.es.index, "index template installed");
                    }
                    Err(e) => {
                        self.ready.store(false, Ordering::Relaxed);
                        tracing::warn!(error = %e, "cannot install the index template yet");
                        if !self.pause(&stop, &mut backoff).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            if !leftovers_read {
                match self.store.unfinished(&self.consumer).await {
                    Ok(v) => {
                        if !v.is_empty() {
                            tracing::info!(
                                count = v.len(),
                                "re-sending entries a previous run did not finish"
                            );
                        }
                        pending = v;
                        leftovers_read = true;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read Redis yet");
                        if !self.pause(&stop, &mut backoff).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            if pending.is_empty() {
                pending = self.collect(&stop).await;
                if pending.is_empty() {
                    continue;
                }
            }
            match self.index(&pending).await {
                Ok(round) => {
                    self.ready.store(true, Ordering::Relaxed);
                    if round.retry.is_empty() {
                        backoff = Duration::from_millis(100);
                    } else {
                        metrics::counter!("kiln_es_retried_total")
                            .increment(round.retry.len() as u64);
                        if !self.pause(&stop, &mut backoff).await {
                            return;
                        }
                    }
                    pending = round.retry;
                }
                Err(e) => {
                    self.ready.store(false, Ordering::Relaxed);
                    metrics::counter!("kiln_es_retried_total").increment(pending.len() as u64);
                    tracing::warn!(error = %e, entries = pending.len(), "indexing failed; retrying");
                    // The cluster may have lost the template (a new cluster): install it again.
                    template_ok = false;
                    if !self.pause(&stop, &mut backoff).await {
                        return;
                    }
                }
            }
            if let Ok(n) = self.store.backlog(&self.consumer).await {
                metrics::gauge!("kiln_es_backlog").set(n as f64);
            }
        }
    }

    /// Sleeps for the backoff (with jitter), doubling it up to the cap. False when stopped.
    async fn pause(&self, stop: &CancellationToken, backoff: &mut Duration) -> bool {
        let d = backoff.mul_f64(0.5 + rand::random::<f64>() / 2.0);
        *backoff = (*backoff * 2).min(self.settings.max_backoff);
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = stop.cancelled() => false,
        }
    }

    /// Claims up to `batch_size` entries, waiting at most `batch_wait` after the first one.
    async fn collect(&self, stop: &CancellationToken) -> Vec<String> {
        let max = self.settings.es.batch_size;
        let mut batch = Vec::new();
        let mut first_at: Option<Instant> = None;
        loop {
            match self
                .store
                .claim_finished(&self.consumer, max - batch.len())
                .await
            {
                Ok(mut got) => {
                    if !got.is_empty() && first_at.is_none() {
                        first_at = Some(Instant::now());
                    }
                    batch.append(&mut got);
                }
                Err(e) => tracing::warn!(error = %e, "cannot claim finished builds"),
            }
            let waited_enough = first_at.is_some_and(|t| t.elapsed() >= self.settings.batch_wait);
            if batch.len() >= max || waited_enough {
                return batch;
            }
            let nap = if first_at.is_some() {
                Duration::from_millis(10)
            } else {
                IDLE
            };
            tokio::select! {
                _ = tokio::time::sleep(nap) => {}
                _ = stop.cancelled() => return batch,
            }
        }
    }

    /// Indexes one batch. Entries acknowledged by the cluster are removed from the
    /// processing list; refused ones are dead-lettered; the rest are returned for a retry.
    async fn index(&self, entries: &[String]) -> Result<Round, IndexError> {
        let raws = self.store.get_raw(entries).await?;
        let mut done = Vec::new();
        let mut docs = Vec::new();
        let mut sent = Vec::new();
        let mut chains: HashMap<Option<Name>, String> = HashMap::new();
        for (entry, raw) in entries.iter().zip(raws) {
            let Some(raw) = raw else {
                // The build was deleted (retention, job deleted): nothing left to index.
                done.push(entry.clone());
                continue;
            };
            let doc: BuildDocument = match serde_json::from_str(&raw) {
                Ok(d) => d,
                Err(e) => {
                    self.dead(entry, &format!("unreadable build document: {e}"))
                        .await?;
                    continue;
                }
            };
            let path = match chains.get(&doc.folder) {
                Some(p) => p.clone(),
                None => {
                    let chain = self
                        .store
                        .folder_chain(doc.folder.as_ref())
                        .await
                        .unwrap_or_default();
                    let p: Vec<&str> = chain.iter().map(Name::as_str).collect();
                    let p = p.join("/");
                    chains.insert(doc.folder.clone(), p.clone());
                    p
                }
            };
            let folder_path: Vec<Name> = path
                .split('/')
                .filter_map(|s| Name::parse(s).ok())
                .collect();
            let index = index_for(
                &self.settings.es.index,
                self.settings.es.index_per_month,
                &doc,
            );
            docs.push((index, entry.clone(), document(&doc, &folder_path)));
            sent.push(entry.clone());
        }
        let mut retry = Vec::new();
        if !docs.is_empty() {
            let results = self.es.bulk(&docs).await?;
            for (entry, result) in sent.into_iter().zip(results) {
                match result {
                    ItemResult::Indexed => done.push(entry),
                    ItemResult::Rejected(reason) => self.dead(&entry, &reason).await?,
                    ItemResult::Retry(reason) => {
                        tracing::debug!(entry, reason, "the cluster asked to retry");
                        retry.push(entry);
                    }
                }
            }
        }
        metrics::counter!("kiln_es_indexed_total").increment(done.len() as u64);
        self.store.ack_finished(&self.consumer, &done).await?;
        Ok(Round { retry })
    }

    async fn dead(&self, entry: &str, reason: &str) -> Result<(), StoreError> {
        metrics::counter!("kiln_es_dead_lettered_total").increment(1);
        tracing::warn!(
            entry,
            reason,
            "the cluster refused the document; dead-lettered"
        );
        self.store.dead_letter(&self.consumer, entry, reason).await
    }
}

#[derive(Debug, thiserror::Error)]
enum IndexError {
    #[error(transparent)]
    Es(#[from] EsError),
    #[error(transparent)]
    Store(#[from] StoreError),
}
