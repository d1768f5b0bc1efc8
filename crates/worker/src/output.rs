//! The build's log: every line gets a sequence number and timestamp, is appended to
//! `log.jsonl` and then published on the build's output channel. Lines that arrive together
//! go out as one write and one PUBLISH, so a chatty build does not cost a round trip per
//! line, while a quiet one is not delayed at all.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use chrono::Utc;
use kiln_model::{output, BuildRef, LogLine, Masker, OutputMessage, Stream};
use kiln_store::Store;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::start::{Progress, StartState};
use crate::state::{Active, StopReason};

/// Most lines written and published as one batch.
const MAX_BATCH: usize = 512;
/// Most bytes of output in one batch (lines may be up to 64 KiB each).
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Lines the log's channel holds.
const CHANNEL: usize = 4096;

/// Where and how much a build's log is written.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogOptions {
    /// The storage is a local filesystem (see [`start`]).
    pub(crate) local: bool,
    /// Most bytes the log file gets (`worker.max_log_bytes`); the lines past it are dropped,
    /// after one that says so.
    pub(crate) max_bytes: u64,
}

/// Where the build's processes send their lines. Cloneable; the log closes when every
/// clone is dropped.
#[derive(Clone)]
pub(crate) struct LogSink {
    tx: mpsc::Sender<(Stream, String)>,
    progress: Arc<watch::Sender<Progress>>,
    /// The build's secret values, set before its first step runs: no line reaches the
    /// log file or a watcher with one of them in it.
    secrets: Arc<OnceLock<Masker>>,
}

impl LogSink {
    /// From now on every line has these secret values masked.
    pub(crate) fn hide(&self, secrets: Masker) {
        let _ = self.secrets.set(secrets);
    }

    pub(crate) async fn line(&self, stream: Stream, line: String) {
        let line = match self.secrets.get() {
            Some(m) => m.mask(line),
            None => line,
        };
        // The writer only stops after every sink is dropped, so this cannot fail while
        // a sink exists; a lost system line is not worth failing a build for.
        let _ = self.tx.send((stream, line)).await;
        // A batch's worth of lines waiting means the writer waits for a lingering start:
        // the build is no quick one, and its steps must not stall on a full channel.
        if self.tx.capacity() <= CHANNEL - MAX_BATCH {
            self.progress.send_if_modified(|p| {
                let running = *p == Progress::Running;
                if running {
                    *p = Progress::StartDue;
                }
                running
            });
        }
    }
}

/// What the writer reports when the log is closed.
pub(crate) struct LogSummary {
    pub(crate) last_seq: u64,
    /// Why the log could not be made or written (disk full...), the build's error reason.
    pub(crate) write_error: Option<String>,
    /// The last batch, in the file but not yet published: every sink was gone when it was
    /// read, so nothing follows it, and it goes out with the build's end, in the same
    /// round trip, as the first batch goes out with the start. When the finish carries the
    /// start (`crate::start`), every batch after the first.
    pub(crate) held: Option<OutputMessage>,
}

/// Starts the writer of the build's log `dir/log.jsonl` for one attempt of the build (the
/// previous attempt's log is kept beside it as `log.attempt-<n>.jsonl`). `spare`, an empty
/// folder (`crate::spares`), becomes `dir` when given.
///
/// Returns at once: the writer makes the folder and the file itself while the build's first
/// step starts; lines sent meanwhile wait in the channel. Making them used to sit between a
/// build's claim and its first step (`make bench`, trigger figure). On `local` storage the
/// writer makes them on the event loop; elsewhere (network storage, where each is a round
/// trip to the file server) in the blocking pool. A log that cannot be made stops the build
/// (its steps' process groups are killed) and fails it as `error`.
pub(crate) fn start(
    store: Store,
    active: Arc<Active>,
    attempt: u32,
    dir: PathBuf,
    spare: Option<crate::spares::Spare>,
    opts: LogOptions,
    start: FirstBatch,
) -> (LogSink, JoinHandle<LogSummary>) {
    let (tx, mut rx) = mpsc::channel::<(Stream, String)>(CHANNEL);
    let progress = start.progress.clone();
    let handle = tokio::spawn(async move {
        let shown = dir.display().to_string();
        let made = if opts.local {
            create_log(&dir, attempt, spare)
        } else {
            tokio::task::spawn_blocking(move || create_log(&dir, attempt, spare))
                .await
                .map_err(std::io::Error::other)
                .flatten()
        };
        let (mut file, mut write_error) = match made {
            Ok(file) => (Some(file), None),
            Err(e) => {
                active.stop(StopReason::LogFailed);
                let reason = format!("cannot create the build log in {shown}: {e}");
                (None, Some(reason))
            }
        };
        let build = &active.lease.build;
        let mut seq = 0u64;
        let mut held = None;
        let mut batch: Vec<LogLine> = Vec::new();
        let mut bytes: Vec<u8> = Vec::new();
        // Bytes in the file before this batch, and whether the limit was reached.
        let mut kept = 0u64;
        let mut capped = false;
        let mut start = Some(start);
        // Once the finish is to carry the start, every later batch waits for it too.
        let mut holding = false;
        loop {
            // The first batch is what has arrived by the time the log is made, perhaps
            // nothing: it goes to the start, which must not wait for a line.
            let first = match start {
                Some(_) => rx.try_recv().ok(),
                None => match rx.recv().await {
                    Some(line) => Some(line),
                    None => break,
                },
            };
            batch.clear();
            bytes.clear();
            let mut next = first;
            while let Some((stream, line)) = next.take() {
                // Past the limit lines are still read (the steps must not block on a full
                // channel), and dropped.
                if !capped {
                    seq += 1;
                    let mut l = LogLine {
                        seq,
                        ts: Utc::now(),
                        stream,
                        attempt,
                        line,
                    };
                    let at = bytes.len();
                    append(&mut bytes, &l);
                    if kept + bytes.len() as u64 > opts.max_bytes {
                        bytes.truncate(at);
                        capped = true;
                        l.stream = Stream::System;
                        l.line = format!(
                            "the log reached its limit of {} bytes (worker.max_log_bytes): the rest of this build's output is dropped; the build goes on",
                            opts.max_bytes
                        );
                        append(&mut bytes, &l);
                    }
                    batch.push(l);
                }
                if batch.len() < MAX_BATCH && bytes.len() < MAX_BATCH_BYTES {
                    next = rx.try_recv().ok();
                }
            }
            kept += bytes.len() as u64;
            // The file first: a listener that joins late reads the file up to some seq and
            // continues from the channel, so nothing may be published before it is written.
            // The append is made right here, not in the blocking pool: it lands in the page
            // cache in microseconds (on NFS too), while the hop to a pool thread and back
            // cost about half a millisecond of every line's latency (`make bench`, one
            // watcher: 1.1 ms p50 through the pool, 0.65 ms direct, as fast as a bare
            // PUBLISH). Making the folder and the file, the metadata operations that can be
            // slow on network storage, goes to the pool there (`start`).
            if let Some(f) = &mut file {
                if let Err(e) = f.write_all(&bytes) {
                    write_error = Some(format!("cannot write the build log: {e}"));
                    file = None;
                }
            }
            let msg = (!batch.is_empty()).then(|| OutputMessage::Lines {
                lines: std::mem::take(&mut batch),
            });
            if let Some(start) = start.take() {
                holding = start.hand_over(msg).await;
                continue;
            }
            let Some(msg) = msg else { continue };
            if holding {
                held = joined(held, Some(msg));
                continue;
            }
            if rx.is_closed() && rx.is_empty() {
                held = Some(msg);
                break;
            }
            publish(&store, build, &msg).await;
        }
        LogSummary {
            last_seq: seq,
            write_error,
            held,
        }
    });
    let sink = LogSink {
        tx,
        progress,
        secrets: Arc::default(),
    };
    (sink, handle)
}

/// Appends a line to a batch's bytes, as one line of JSON.
fn append(bytes: &mut Vec<u8>, line: &LogLine) {
    if serde_json::to_writer(&mut *bytes, line).is_ok() {
        bytes.push(b'\n');
    }
}

/// How the log's first batch reaches the build's start: the start's script publishes it,
/// so a build's start and its first lines (the first step's header, at least) are one
/// round trip, not two. The start waits for the log to be made (while the first step already
/// runs); the log's later batches wait for the start's answer, or for the finish when the
/// start rides with it, so live watchers get them in order.
pub(crate) struct FirstBatch {
    pub(crate) to_start: oneshot::Sender<Option<OutputMessage>>,
    /// What became of the start, as the step results wait for it.
    pub(crate) started: watch::Receiver<StartState>,
    /// Told when output piles up behind a lingering start (`LogSink::line`).
    pub(crate) progress: Arc<watch::Sender<Progress>>,
}

impl FirstBatch {
    /// Gives the start its batch and waits for it to be written or given up; returns
    /// whether the finish is to carry the start (`StartState::WithFinish`).
    async fn hand_over(mut self, msg: Option<OutputMessage>) -> bool {
        let _ = self.to_start.send(msg);
        self.started
            .wait_for(|s| *s != StartState::Pending)
            .await
            .is_ok_and(|s| *s == StartState::WithFinish)
    }
}

/// `later`'s lines after `earlier`'s, as one batch (`None` when there are none).
pub(crate) fn joined(
    earlier: Option<OutputMessage>,
    later: Option<OutputMessage>,
) -> Option<OutputMessage> {
    let lines: Vec<LogLine> = [earlier, later]
        .into_iter()
        .flatten()
        .flat_map(|m| match m {
            OutputMessage::Lines { lines } => lines,
            OutputMessage::End { .. } => Vec::new(),
        })
        .collect();
    (!lines.is_empty()).then_some(OutputMessage::Lines { lines })
}

/// Publishes `msg`'s lines in batches of the usual size, all but the last, which it
/// returns: a start that rode with the finish leaves every line to the finish, and no
/// message may grow past a batch for that.
pub(crate) async fn publish_all_but_last(
    store: &Store,
    build: &BuildRef,
    msg: Option<OutputMessage>,
) -> Option<OutputMessage> {
    let Some(OutputMessage::Lines { lines }) = msg else {
        return msg;
    };
    let mut batches = batches(lines);
    let last = batches.pop();
    for lines in batches {
        publish(store, build, &OutputMessage::Lines { lines }).await;
    }
    last.map(|lines| OutputMessage::Lines { lines })
}

/// `lines` in order, cut into batches of at most `MAX_BATCH` lines and, unless a single
/// line is longer, `MAX_BATCH_BYTES` of text.
fn batches(lines: Vec<LogLine>) -> Vec<Vec<LogLine>> {
    let mut all = Vec::new();
    let mut batch: Vec<LogLine> = Vec::new();
    let mut bytes = 0;
    for line in lines {
        let full = batch.len() == MAX_BATCH || bytes + line.line.len() > MAX_BATCH_BYTES;
        if full && !batch.is_empty() {
            all.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += line.line.len();
        batch.push(line);
    }
    if !batch.is_empty() {
        all.push(batch);
    }
    all
}

/// Publishes a batch of the build's lines for live views; a failure is not the build's
/// (the file holds them, and watchers catch up from it).
pub(crate) async fn publish(store: &Store, build: &BuildRef, msg: &OutputMessage) {
    if let Err(e) = store.publish_output(build, msg).await {
        tracing::debug!(error = %e, "cannot publish output (live views only)");
    }
}

fn create_log(
    dir: &Path,
    attempt: u32,
    spare: Option<crate::spares::Spare>,
) -> std::io::Result<std::fs::File> {
    if let Some(file) = spare.and_then(|spare| spare.place(dir).ok()) {
        return Ok(file);
    }
    std::fs::create_dir_all(dir)?;
    let path = dir.join(output::LOG_FILE);
    if attempt > 1 && path.try_exists()? {
        std::fs::rename(
            &path,
            dir.join(format!("log.attempt-{}.jsonl", attempt - 1)),
        )?;
    }
    std::fs::File::create(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(n: usize, len: usize) -> Vec<LogLine> {
        (1..=n as u64)
            .map(|seq| LogLine {
                seq,
                ts: Utc::now(),
                stream: Stream::Stdout,
                attempt: 1,
                line: "x".repeat(len),
            })
            .collect()
    }

    fn seqs(batches: &[Vec<LogLine>]) -> Vec<Vec<u64>> {
        batches
            .iter()
            .map(|b| b.iter().map(|l| l.seq).collect())
            .collect()
    }

    #[test]
    fn held_lines_are_cut_into_ordinary_batches_in_order() {
        let few = batches(lines(3, 10));
        assert_eq!(seqs(&few), vec![vec![1, 2, 3]]);
        let many = batches(lines(MAX_BATCH + 1, 10));
        assert_eq!(many.len(), 2);
        assert_eq!(many[0].len(), MAX_BATCH);
        assert_eq!(many[1][0].seq, MAX_BATCH as u64 + 1);
        // Lines of 100 KiB: two fit in 256 KiB, a third starts a batch.
        let long = batches(lines(5, 100 * 1024));
        assert_eq!(seqs(&long), vec![vec![1, 2], vec![3, 4], vec![5]]);
        // A line longer than a batch's bytes is a batch of its own, never an empty one.
        let huge = batches(lines(2, MAX_BATCH_BYTES + 1));
        assert_eq!(seqs(&huge), vec![vec![1], vec![2]]);
        assert!(batches(Vec::new()).is_empty());
    }
}
