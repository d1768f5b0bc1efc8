//! Scheduled builds: every api process looks, every few seconds, for jobs whose `schedule`
//! names a minute that has begun and queues one build for it. Several api replicas may do
//! so at once: the build of each (job, minute) is queued through the trigger script with a
//! key of its own (`keys::schedule_fired`), so exactly one of them queues it.
//!
//! A minute is owed only if it began after the schedule was set (`keys::SCHEDULES`) and at
//! most [`CATCH_UP`] ago: after an outage of every api replica the latest missed minute
//! still gets its build, once, and older ones do not pile up.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Timelike, Utc};
use kiln_model::{keys, BuildRef, JobDefinition, JobName, Trigger, TriggerKind};
use kiln_store::{Store, StoreError, TriggerRequest};
use tokio_util::sync::CancellationToken;

/// How often the scheduler looks at least, besides just after each minute begins.
const TICK: Duration = Duration::from_secs(5);
/// How long after a minute begins the scheduler looks: a margin for the timer's
/// millisecond rounding, so a look never lands a hair before the minute and misses it
/// until the next one.
const JUST_AFTER: Duration = Duration::from_millis(50);
/// How late a missed minute may still get its build.
pub const CATCH_UP: Duration = Duration::from_secs(3600);
/// How long the key saying a minute's build was queued lives: longer than [`CATCH_UP`].
const FIRED_TTL_SECS: u64 = 2 * 24 * 3600;

/// Queues the builds schedules owe. Remembers the last minute it handled per job, so each
/// minute costs one trigger per replica, not one per tick.
pub struct Scheduler {
    store: Store,
    handled: HashMap<JobName, DateTime<Utc>>,
}

impl Scheduler {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            handled: HashMap::new(),
        }
    }

    /// Queues the build of every job whose schedule names a minute begun by `now` that no
    /// replica has queued yet; returns the builds this call queued.
    pub async fn fire_due(&mut self, now: DateTime<Utc>) -> Result<Vec<BuildRef>, StoreError> {
        let window = chrono::Duration::from_std(CATCH_UP).unwrap_or(chrono::Duration::hours(1));
        let mut queued = Vec::new();
        let scheduled = self.store.scheduled_jobs().await?;
        // Jobs whose schedule or job went are forgotten.
        let names: HashSet<&JobName> = scheduled.iter().map(|(j, _, _)| j).collect();
        self.handled.retain(|job, _| names.contains(job));
        for (job, since, def) in scheduled {
            let Some(schedule) = def.as_ref().and_then(JobDefinition::active_schedule) else {
                continue;
            };
            let since = Utc.timestamp_opt(since, 0).single().unwrap_or(now);
            let Some(slot) = schedule.latest_slot(since, now, window) else {
                continue;
            };
            if self.handled.get(&job) == Some(&slot) {
                continue;
            }
            let request = TriggerRequest {
                job: job.clone(),
                parameters: Default::default(),
                trigger: Trigger::new(TriggerKind::Schedule, None),
                dedup: Some((keys::schedule_fired(&job, slot.timestamp()), FIRED_TTL_SECS)),
                next: false,
                cells: None,
            };
            match self.store.trigger(&request).await {
                Ok(t) => {
                    if !t.deduplicated {
                        tracing::info!(job = %job, number = t.build.number.0, minute = %slot, "scheduled build queued");
                        metrics::counter!("kiln_builds_triggered_total")
                            .increment(t.builds().count() as u64);
                        queued.push(BuildRef::new(job.clone(), t.build.number));
                    }
                }
                // Disabled or deleted since it was read, or a parameter without a default:
                // nothing to queue for this minute.
                Err(
                    e @ (StoreError::Conflict(_)
                    | StoreError::NotFound(_)
                    | StoreError::Invalid { .. }),
                ) => {
                    tracing::warn!(job = %job, minute = %slot, error = %e, "scheduled build not queued");
                }
                Err(e) => return Err(e),
            }
            self.handled.insert(job, slot);
        }
        Ok(queued)
    }

    /// Runs [`Scheduler::fire_due`] just after each minute begins, and every [`TICK`] in
    /// between (a schedule set mid-minute, a round that failed while Redis was away), until
    /// `stop`.
    pub async fn run(mut self, stop: CancellationToken) {
        loop {
            if let Err(e) = self.fire_due(Utc::now()).await {
                tracing::warn!(error = %e, "scheduler round failed; retrying at the next tick");
            }
            tokio::select! {
                _ = tokio::time::sleep(until_next_look(Utc::now())) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}

/// How long to wait from `now`: to just after the next minute begins, or [`TICK`] if that is
/// sooner.
fn until_next_look(now: DateTime<Utc>) -> Duration {
    let into_minute = Duration::from_millis(
        u64::from(now.second()) * 1000 + u64::from(now.nanosecond() / 1_000_000).min(999),
    );
    let to_next = Duration::from_secs(60).saturating_sub(into_minute) + JUST_AFTER;
    to_next.min(TICK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheduler_looks_just_after_each_minute_begins() {
        let at = |s: u32, ms: u32| {
            Utc.with_ymd_and_hms(2026, 12, 1, 15, 22, s).unwrap()
                + chrono::Duration::milliseconds(i64::from(ms))
        };
        assert_eq!(until_next_look(at(58, 500)), Duration::from_millis(1550));
        assert_eq!(until_next_look(at(10, 0)), TICK);
        assert_eq!(until_next_look(at(59, 999)), Duration::from_millis(51));
    }
}
