//! When a build's start is written: the fenced write that shows it running, with the log's
//! first lines (`output::FirstBatch`).
//!
//! On a worker with nothing else to do the start is written at once, so a lone build's
//! state and first lines reach watchers without delay. While other builds run on the same
//! worker the start may linger (`worker.start_linger_ms`): a build that ends meanwhile is
//! recorded, start included, by its finish alone — one script and one round trip per
//! build instead of two, which is what a busy worker's rate is made of (`make bench`,
//! docs/performance.md). A build that runs longer, or has a step result to record before
//! its end, or output piling up behind the start, is started as soon as that is known.

use tokio::sync::watch;

use crate::state::Worker;

/// Where the build's start is, as the log writer and the step results see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartState {
    /// Not decided yet.
    Pending,
    /// Written: Redis accepted it.
    Accepted,
    /// Refused, or Redis could not be reached: the build is being stopped.
    Refused,
    /// The build ended while its start lingered: its finish records the start too, and
    /// publishes every line.
    WithFinish,
}

/// What the build's execution tells a lingering start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    Running,
    /// The start is needed now: a step result is to be written, or output piles up
    /// (neither happens in a quick build).
    StartDue,
    /// Every step is over; the finish follows.
    Over,
}

/// Waits as long as the start may linger. True when the build's steps ended first, so its
/// finish is to carry the start.
pub(crate) async fn ends_while_lingering(
    w: &Worker,
    progress: &mut watch::Receiver<Progress>,
) -> bool {
    let linger = w.settings.start_linger;
    if linger.is_zero() || w.running() <= 1 {
        return false;
    }
    let seen = tokio::time::timeout(linger, progress.wait_for(|p| *p != Progress::Running)).await;
    matches!(seen, Ok(Ok(p)) if *p == Progress::Over)
}
