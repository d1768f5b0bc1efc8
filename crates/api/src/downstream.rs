//! Downstream builds: a job's `downstream` names jobs to build when one of its builds ends
//! with a given status. The scripts that end a build (finish, cancel, reap) put its key on
//! `kiln:finished:downstream` in the same atomic step, for jobs that name downstream jobs or
//! notification targets only, so an end is never missed however long every api replica is
//! away; this consumer also hands the builds to notify about to `crate::notify`. Every replica
//! takes entries from there (a blocking move, so a downstream build is queued as soon as its
//! upstream one ends) and queues each downstream build through the trigger script with a
//! key of its own (`keys::downstream_fired`): an entry handled twice — a replica that
//! restarts handles again what was in progress — queues nothing twice.
//!
//! A downstream build that cannot be queued (its job is gone or disabled, a parameter it
//! does not define, a chain longer than [`MAX_DOWNSTREAM_DEPTH`]) is a dead letter of the
//! `downstream` consumer with the reason, for `GET /dead-letters/downstream`.
//!
//! A matrix (`kiln_model::matrix`) is one build to what follows it: its downstream builds
//! are queued, and its notifications sent, once all its cells have ended, with the whole
//! matrix's status, as if its first build were the whole of it.

use std::time::Duration;

use kiln_model::job::MAX_DOWNSTREAM_DEPTH;
use kiln_model::{
    keys, BuildDocument, BuildRef, Downstream, JobDefinition, Name, Trigger, TriggerKind, Upstream,
};
use kiln_service_kit::shutdown::retry_until_ok;
use kiln_store::{BlockingStore, Store, StoreError, TriggerRequest};
use tokio_util::sync::CancellationToken;

/// Longest one blocking wait for an ended build lasts.
pub(crate) const BLOCK: Duration = Duration::from_secs(5);
/// Entries taken at once after a wait returned one.
const BATCH: usize = 20;
/// How long a downstream build's once-only key lives: longer than any replica stays down
/// with an entry in progress.
const FIRED_TTL_SECS: u64 = 7 * 24 * 3600;

/// Queues the downstream builds of ended builds.
pub(crate) struct DownstreamTrigger {
    store: Store,
    blocking: BlockingStore,
    consumer: Name,
}

/// The consumer name whose lists the downstream trigger reads.
pub(crate) fn consumer() -> Name {
    Name::parse(keys::DOWNSTREAM_CONSUMER).expect("a valid consumer name")
}

impl DownstreamTrigger {
    pub(crate) fn new(store: Store, blocking: BlockingStore) -> Self {
        Self {
            store,
            blocking,
            consumer: consumer(),
        }
    }

    /// Queues the downstream builds that the end of the build at `entry` asks for; returns
    /// why each one that could not be queued was not. Errors are Redis failures, after
    /// which the entry is to be handled again.
    async fn handle(&self, entry: &str) -> Result<Vec<String>, StoreError> {
        let mut refused = Vec::new();
        let Ok(build) = BuildRef::from_key(entry) else {
            return Ok(refused);
        };
        let Some(cell) = self.store.get_build(&build).await? else {
            return Ok(refused);
        };
        let matrix = cell.matrix.is_some();
        // A matrix's cells each bring their end here; the whole matrix's end is acted on
        // once, by the entry that finds its last cell ended and claims it first.
        let Some(doc) = self.store.ended_as_a_whole(cell).await? else {
            return Ok(refused);
        };
        if matrix
            && !self
                .store
                .claim_matrix_end(&doc, entry, FIRED_TTL_SECS)
                .await?
        {
            return Ok(refused);
        }
        let build = doc.build_ref();
        let Some(def) = self.store.get_job(&build.job).await? else {
            return Ok(refused);
        };
        let notify = def.notify.iter().any(|n| n.on.contains(&doc.status));
        let depth = doc.trigger.upstream.as_ref().map_or(0, |u| u.depth) + 1;
        for d in def.downstream.iter().filter(|d| d.on.contains(&doc.status)) {
            if depth > MAX_DOWNSTREAM_DEPTH {
                refused.push(format!(
                    "{}: not queued: {build} is the end of a chain of {MAX_DOWNSTREAM_DEPTH} downstream builds, the most there may be (do jobs name each other in a cycle?)",
                    d.job
                ));
                continue;
            }
            match self.queue(&build, &doc, &def, d, depth).await {
                Ok(()) => {}
                Err(
                    e @ (StoreError::NotFound(_)
                    | StoreError::Conflict(_)
                    | StoreError::Invalid { .. }),
                ) => refused.push(format!("{}: not queued: {e}", d.job)),
                Err(e) => return Err(e),
            }
        }
        // Last, so a Redis failure above (the entry is handled again) does not notify twice.
        if notify {
            self.store
                .push_finished(&crate::notify::consumer(), &[build.key()])
                .await?;
        }
        metrics::counter!("kiln_downstream_refused_total").increment(refused.len() as u64);
        Ok(refused)
    }

    /// Queues one downstream build of the upstream build `doc`.
    async fn queue(
        &self,
        build: &BuildRef,
        doc: &BuildDocument,
        def: &JobDefinition,
        d: &Downstream,
        depth: u32,
    ) -> Result<(), StoreError> {
        let target = self
            .store
            .get_job(&d.job)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("job {}", d.job)))?;
        // A revision means something to a job that builds the same repository, or none.
        let same_code = target.repository.as_ref().is_none_or(|r| {
            def.repository
                .as_ref()
                .is_some_and(|mine| mine.url == r.url)
        });
        let (sha, git_ref) = if same_code {
            (doc.trigger.sha.clone(), doc.trigger.git_ref.clone())
        } else {
            (None, None)
        };
        let request = TriggerRequest {
            job: d.job.clone(),
            parameters: d.parameters.clone(),
            trigger: Trigger {
                sha,
                git_ref,
                upstream: Some(Upstream {
                    job: build.job.clone(),
                    number: build.number,
                    status: doc.status,
                    depth,
                }),
                // Whoever started the chain is who asked for this build too.
                ..Trigger::new(TriggerKind::Upstream, doc.trigger.by.clone())
            },
            dedup: Some((
                keys::downstream_fired(build, doc.queued_at.timestamp_millis(), &d.job),
                FIRED_TTL_SECS,
            )),
            next: false,
            cells: None,
        };
        let t = self.store.trigger(&request).await?;
        // Again for a build queued before (an entry handled twice): it is recorded once.
        match self
            .store
            .add_downstream_build(build, &t.build.build_ref())
            .await
        {
            Ok(_) => {}
            // The upstream build went meanwhile (trimmed, its job deleted), or was requeued:
            // the downstream build stands, and names it in `trigger.upstream`.
            Err(e @ (StoreError::NotFound(_) | StoreError::Conflict(_))) => {
                tracing::warn!(upstream = %build, error = %e, "cannot record the downstream build on its upstream build");
            }
            Err(e) => return Err(e),
        }
        if !t.deduplicated {
            tracing::info!(upstream = %build, job = %d.job, number = t.build.number.0, "downstream build queued");
            metrics::counter!("kiln_builds_triggered_total").increment(t.builds().count() as u64);
        }
        Ok(())
    }

    /// Handles one entry until it is done (acknowledged, or a dead letter naming what could
    /// not be queued), retrying while Redis fails. False when stopped first.
    async fn settle(&self, entry: &str, stop: &CancellationToken) -> bool {
        crate::settle::settle(
            &self.store,
            &self.consumer,
            entry,
            "downstream builds",
            stop,
            || self.handle(entry),
        )
        .await
    }

    /// Handles what an earlier run left in progress, then every ended build as it comes,
    /// until `stop`.
    pub(crate) async fn run(self, stop: CancellationToken) {
        let read = retry_until_ok(
            "downstream trigger cannot read Redis yet",
            Duration::from_secs(1),
            &stop,
            || self.store.unfinished(&self.consumer),
        );
        let Some(mut batch) = read.await else { return };
        loop {
            for entry in std::mem::take(&mut batch) {
                if !self.settle(&entry, &stop).await {
                    return;
                }
            }
            let waited = tokio::select! {
                r = self.blocking.wait_finished(&self.consumer, BLOCK) => r,
                _ = stop.cancelled() => return,
            };
            match waited {
                Ok(Some(entry)) => {
                    batch.push(entry);
                    match self.store.claim_finished(&self.consumer, BATCH).await {
                        Ok(more) => batch.extend(more),
                        Err(e) => {
                            tracing::warn!(error = %e, "downstream trigger cannot claim work")
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "downstream trigger cannot wait for ended builds");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.cancelled() => return,
                    }
                }
            }
        }
    }
}
