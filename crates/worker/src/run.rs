//! One build's life on this worker: start (fenced) while the first step already runs,
//! execute, then record the result, hand it back, or discard it, depending on why it ended.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use kiln_model::{storage, BuildStatus, OutputMessage};
use kiln_store::{Claimed, Finished, StoreError};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tracing::Instrument;

use crate::claim::Slot;
use crate::execute::{Execution, Outcome};
use crate::start::{Progress, StartState};
use crate::state::{Active, StopReason, Worker};

/// Runs `claimed` in its own task, holding `slot` until the build is over or, when its
/// finish claimed the next build, handing the slot on to that one.
pub(crate) fn launch(w: &Arc<Worker>, claimed: Claimed, slot: Slot) {
    metrics::counter!("kiln_worker_claims_total").increment(1);
    let active = Arc::new(Active::new(claimed.lease.clone()));
    let key = claimed.lease.build.key();
    w.insert(key.clone(), active.clone());
    w.note_build_activity();
    // A root span: a build launched by the finish of the one before must not become its
    // child, or a busy slot's spans would nest (and stay alive) without end.
    let span = tracing::info_span!(
        parent: None,
        "build",
        job.name = %claimed.lease.build.job,
        build.number = %claimed.lease.build.number,
        attempt = claimed.doc.attempt
    );
    let builds = slot.builds.clone();
    let w = w.clone();
    builds.spawn(
        async move {
            run_claimed(&w, claimed, &active, slot).await;
            w.remove(&key);
            w.note_build_activity();
        }
        .instrument(span),
    );
}

async fn run_claimed(w: &Arc<Worker>, claimed: Claimed, active: &Arc<Active>, slot: Slot) {
    let Claimed {
        lease,
        mut doc,
        job,
    } = claimed;
    let Some(job) = job else {
        // The lease stays until it expires; the reaper then deals with the build.
        tracing::warn!(build = %lease.build, "job definition is gone; build abandoned");
        return;
    };
    let def = &job.def;
    let started = Instant::now();
    let was_cancelled = doc.cancel_requested;
    doc.status = BuildStatus::Running;
    let now = Utc::now();
    if doc.attempt == 1 {
        let waited = (now - doc.queued_at).num_milliseconds().max(0) as f64 / 1000.0;
        metrics::histogram!("kiln_build_queue_wait_seconds", "queue" => doc.queue.to_string())
            .record(waited);
    }
    doc.started_at = Some(now);
    doc.node = Some(w.settings.id.to_string());
    doc.reason = None;
    doc.steps.clear();
    doc.finished_at = None;
    doc.duration_ms = None;
    doc.exit_code = None;
    // The log's writer making the storage folder and the file, and the first step, begin
    // now; the fenced start follows as soon as the log is made, carrying its first lines
    // (`output::FirstBatch`), unless it lingers and rides with the finish (`crate::start`).
    // A start Redis refuses stops the build's steps (`LeaseLost`: killed, nothing written);
    // fenced writes of step results wait for the start.
    let (started_tx, started_rx) = watch::channel(StartState::Pending);
    let (progress_tx, mut progress_rx) = watch::channel(Progress::Running);
    let progress_tx = Arc::new(progress_tx);
    let (first_tx, first_rx) = oneshot::channel();
    let log = storage::build_dir(&w.settings.storage_root, &doc.storage_path)
        .ok_or_else(|| format!("invalid storage path {:?}", doc.storage_path))
        .map(|dir| {
            // A retried attempt keeps its folder (and the earlier attempt's log).
            let spare = (doc.attempt == 1)
                .then(|| dir.parent().and_then(|job_dir| w.spares.take(job_dir)))
                .flatten();
            let (sink, writer) = crate::output::start(
                w.store.clone(),
                active.clone(),
                doc.attempt,
                dir.clone(),
                spare,
                crate::output::LogOptions {
                    local: w.settings.storage_local,
                    max_bytes: w.settings.max_log_bytes,
                },
                crate::output::FirstBatch {
                    to_start: first_tx,
                    started: started_rx.clone(),
                    progress: progress_tx.clone(),
                },
            );
            (dir, sink, writer)
        });
    let running = doc.clone();
    let start = async {
        // Without a writer (no valid folder) there is no batch and no wait.
        let first_lines = first_rx.await.ok().flatten();
        if crate::start::ends_while_lingering(w, &mut progress_rx).await {
            let _ = started_tx.send(StartState::WithFinish);
            return Start::WithFinish(first_lines);
        }
        let start = match w
            .store
            .start_build(&lease, &running, first_lines.as_ref())
            .await
        {
            Ok(()) => {
                tracing::info!(build = %lease.build, "build started");
                let _ = started_tx.send(StartState::Accepted);
                return Start::Written;
            }
            Err(StoreError::Stale(_)) => {
                tracing::warn!(build = %lease.build, "lease lost before the build started");
                Start::Refused
            }
            Err(e) => {
                // The lease stays; if Redis does not come back in time the reaper requeues it.
                w.record_redis_failure();
                tracing::warn!(build = %lease.build, error = %e, "cannot start build");
                Start::Failed
            }
        };
        active.stop(StopReason::LeaseLost);
        let _ = started_tx.send(StartState::Refused);
        start
    };
    metrics::gauge!("kiln_worker_running_builds").increment(1.0);
    if was_cancelled {
        active.stop(StopReason::Cancelled);
    }

    let mut held = None;
    let mut made = None;
    let execute = async {
        match log {
            Err(reason) => {
                let _ = progress_tx.send(Progress::Over);
                error_outcome(reason)
            }
            Ok((dir, sink, writer)) => {
                made = Some(dir.clone());
                let deadline = Instant::now() + Duration::from_secs(def.timeout_secs);
                let exec = Execution {
                    worker: w,
                    active,
                    def,
                    sink,
                    build_dir: dir,
                    deadline,
                    started: started_rx,
                    progress: &progress_tx,
                };
                let mut outcome = exec.run(&mut doc).await;
                drop(exec);
                let _ = progress_tx.send(Progress::Over);
                if let Ok(summary) = writer.await {
                    if let Some(reason) = summary.write_error {
                        outcome = error_outcome(reason);
                    }
                    outcome.last_seq = summary.last_seq;
                    held = summary.held;
                }
                outcome
            }
        }
    };
    let (start, outcome) = tokio::join!(start, execute);
    metrics::gauge!("kiln_worker_running_builds").decrement(1.0);
    let (with_start, refused) = match start {
        Start::WithFinish(first_lines) => {
            let all = crate::output::joined(first_lines, held.take());
            held = crate::output::publish_all_but_last(&w.store, &lease.build, all).await;
            (true, false)
        }
        Start::Refused => (false, true),
        Start::Written | Start::Failed => (false, false),
    };
    if refused {
        // Its job or the build itself was deleted meanwhile: leave no folder behind.
        if let Some(dir) = made {
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
        }
        return;
    }

    if matches!(
        active.reason(),
        Some(StopReason::LeaseLost | StopReason::Shutdown)
    ) {
        // The build does not end through `finish`, which would publish the last batch.
        if let Some(msg) = held.take() {
            crate::output::publish(&w.store, &lease.build, &msg).await;
        }
    }
    match active.reason() {
        Some(StopReason::LeaseLost) => {
            metrics::counter!("kiln_worker_builds_discarded_total").increment(1);
            tracing::warn!(build = %lease.build, "lease lost: build killed and its result discarded");
        }
        Some(StopReason::Shutdown) => {
            doc.status = BuildStatus::Queued;
            doc.started_at = None;
            doc.node = None;
            doc.steps.clear();
            doc.reason = Some(format!(
                "handed back by worker {} when it shut down",
                w.settings.id
            ));
            hand_back(w, &lease, &doc).await;
        }
        Some(StopReason::Cancelled | StopReason::LogFailed) | None => {
            let last_seq = outcome.last_seq;
            doc.status = outcome.status;
            doc.exit_code = outcome.exit_code;
            doc.reason = outcome.reason;
            if doc.status == BuildStatus::Cancelled {
                doc.cancel_requested = true;
                doc.reason = Some("cancelled while it ran".into());
            }
            let now = Utc::now();
            doc.finished_at = Some(now);
            doc.duration_ms = Some(started.elapsed().as_millis() as u64);
            let end = OutputMessage::End {
                status: doc.status,
                last_seq,
                attempt: doc.attempt,
            };
            // Unless the worker is stopping, paused or has taken its `max_builds`, the
            // finish also claims this slot's next build.
            let claim_next = (!slot.stop.is_cancelled()
                && !w.paused.load(std::sync::atomic::Ordering::Relaxed)
                && w.take_budget())
            .then_some(w.settings.lease);
            let finished =
                finish(w, &lease, &doc, held.as_ref(), &end, claim_next, with_start).await;
            let took_next = finished
                .as_ref()
                .is_some_and(|f| matches!(f.next, Ok(Some(_))));
            if claim_next.is_some() && !took_next {
                w.return_budget();
            }
            if let Some(finished) = finished {
                metrics::counter!("kiln_worker_builds_finished_total", "status" => doc.status.as_str()).increment(1);
                metrics::histogram!("kiln_build_duration_seconds", "queue" => doc.queue.to_string(), "status" => doc.status.as_str())
                    .record(doc.duration_ms.unwrap_or_default() as f64 / 1000.0);
                tracing::info!(build = %lease.build, status = %doc.status, duration_ms = doc.duration_ms, "build finished");
                match finished.next {
                    // The worker began to stop while the finish was on its way (it may
                    // have been retried for a while): the build claimed with it goes back.
                    Ok(Some(next)) if slot.stop.is_cancelled() => {
                        hand_back(w, &next.lease, &next.doc).await
                    }
                    Ok(Some(next)) => launch(w, next, slot),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the next build claimed; its lease will run out for the reaper")
                    }
                }
                if let Some(oldest_kept) = finished.oldest_kept {
                    crate::prune::prune_storage(w, &doc, oldest_kept).await;
                }
                crate::fail_fast::after_cell(w, def, &doc).await;
            }
        }
    }
}

/// Puts a build this worker holds back at the head of its queue, its attempt not counted,
/// as `doc` (which should read as queued).
async fn hand_back(w: &Worker, lease: &kiln_store::Lease, doc: &kiln_model::BuildDocument) {
    match w.store.release_build(lease, doc).await {
        Ok(()) => tracing::info!(build = %lease.build, "build handed back to its queue"),
        Err(e) => {
            tracing::warn!(build = %lease.build, error = %e, "cannot hand back; the reaper will requeue it")
        }
    }
}

/// How a build's start ended.
enum Start {
    /// Redis accepted it.
    Written,
    /// Redis could not be reached: the build was stopped; its lease runs out for the reaper.
    Failed,
    /// The lease or the build was gone: the build was stopped and nothing is recorded.
    Refused,
    /// The build ended while its start lingered: the finish carries the start, and these
    /// first lines ahead of the rest.
    WithFinish(Option<OutputMessage>),
}

fn error_outcome(reason: String) -> Outcome {
    Outcome {
        status: BuildStatus::Error,
        exit_code: None,
        reason: Some(reason),
        last_seq: 0,
    }
}

/// Records the final state (and sends live watchers the log's last lines and the build's
/// end), retrying while Redis is unreachable for up to one lease; after that the lease has
/// expired and the reaper owns the build. With `claim_next`, claims the slot's next build
/// in the same round trip; `with_start` also announces the build's start, which was never
/// written (`crate::start`). Returns `None` when it was not recorded.
async fn finish(
    w: &Worker,
    lease: &kiln_store::Lease,
    doc: &kiln_model::BuildDocument,
    last_lines: Option<&OutputMessage>,
    end: &OutputMessage,
    claim_next: Option<Duration>,
    with_start: bool,
) -> Option<Finished> {
    let give_up = Instant::now() + w.settings.lease;
    let mut delay = Duration::from_millis(100);
    loop {
        match w
            .store
            .finish_build(lease, doc, last_lines, end, claim_next, with_start)
            .await
        {
            Ok(finished) => return Some(finished),
            Err(StoreError::Stale(_)) => {
                tracing::warn!(build = %lease.build, "lease lost before the result was recorded; discarded");
                return None;
            }
            Err(e) if Instant::now() < give_up => {
                w.record_redis_failure();
                tracing::warn!(build = %lease.build, error = %e, "cannot record the result yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                tracing::error!(build = %lease.build, error = %e, "cannot record the result; the reaper will requeue it");
                return None;
            }
        }
    }
}
