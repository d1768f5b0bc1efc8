//! `/ws/builds/{job}/{n}`: the output so far from the log file, then live lines from the
//! build's output channel with no gap and no duplicate (sequence numbers bridge the two),
//! then an end message with the final status, then close.
//!
//! The worker appends a line to the file before publishing it, so whenever the channel
//! shows a gap (a missed message, a Redis reconnect, a late join) the file already holds the
//! missing lines.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytestring::ByteString;
use kiln_model::{keys, output, storage, BuildRef, OutputMessage};
use kiln_store::Store;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::hub::{count_resync, Frame, Header, Hub, Published, Resync};
use crate::log_cursor::{Cursor, LinesFrame};
use crate::session::{
    Client, Gone, Incoming, CLOSE_NOT_FOUND, CLOSE_SLOW, CLOSE_UNAVAILABLE, CLOSE_UNRESPONSIVE,
};

/// With no message for this long, the file and the document are checked anyway (covers a
/// lost end message or a silent outage).
const POLL: Duration = Duration::from_secs(2);
/// Largest frame sent to a client (but for a single longer line). actix-ws queues 32
/// frames per client, so this bounds what a client that stopped reading can pin in memory
/// (plus kernel socket buffers) before its send times out.
const MAX_FRAME: usize = 64 * 1024;

struct Watcher {
    client: Client,
    store: Store,
    build: BuildRef,
    cursor: Cursor,
    attempt: u32,
    /// Last sequence number sent in the current attempt.
    sent: u64,
}

enum Step {
    Continue,
    Done,
}

impl Watcher {
    /// Sends everything new in the file, attempt by attempt, in frames of at most about
    /// `MAX_FRAME` bytes; `sent` moves only past frames the client's queue accepted, so it
    /// is always a valid resume point.
    async fn catch_up(&mut self) -> Result<(), Gone> {
        let mut frame = LinesFrame::new();
        loop {
            let chunk = self.cursor.read().await;
            if chunk.is_empty() {
                return Ok(());
            }
            for (l, json) in chunk.lines() {
                if l.attempt > self.attempt {
                    self.send_frame(&mut frame).await?;
                    self.new_attempt(l.attempt).await?;
                }
                if l.attempt == self.attempt && l.seq > self.sent {
                    if frame.would_exceed(json.len(), MAX_FRAME) {
                        self.send_frame(&mut frame).await?;
                    }
                    frame.push(l.seq, json);
                }
            }
            self.send_frame(&mut frame).await?;
        }
    }

    async fn send_frame(&mut self, frame: &mut LinesFrame) -> Result<(), Gone> {
        if frame.is_empty() {
            return Ok(());
        }
        let (text, last) = frame.take();
        self.client.send(text).await?;
        self.sent = last;
        Ok(())
    }

    async fn new_attempt(&mut self, attempt: u32) -> Result<(), Gone> {
        self.attempt = attempt;
        self.sent = 0;
        self.client
            .send_json(&json!({"type": "attempt", "attempt": attempt}))
            .await
    }

    /// Handles one published message.
    async fn on_message(&mut self, m: &Published) -> Result<Step, Gone> {
        match m.header() {
            None => Ok(Step::Continue),
            Some(Header::Lines {
                attempt,
                first,
                last,
            }) => {
                if attempt < self.attempt || (attempt == self.attempt && last <= self.sent) {
                    // An old attempt, or a duplicate replayed after a reconnect.
                    return Ok(Step::Continue);
                }
                if attempt == self.attempt && first == self.sent + 1 && m.text.len() <= MAX_FRAME {
                    // The common case: forward the published text unchanged.
                    self.client.send(m.text.clone()).await?;
                    self.sent = last;
                } else {
                    // A gap, a new attempt, or a batch too large for one frame: the file has
                    // every line, in frames of the right size.
                    self.catch_up().await?;
                }
                Ok(Step::Continue)
            }
            Some(Header::End { attempt, .. }) if attempt < self.attempt => Ok(Step::Continue),
            Some(Header::End { attempt, last_seq })
                if attempt == self.attempt && last_seq == self.sent =>
            {
                // The common case: every line went out live. An end is published only by
                // the script that records the build's final state, so it is forwarded as
                // it is. Reading the file and the document again for each watcher cost a
                // popular build's last lines tens of milliseconds (`make bench`, figure 3).
                self.client.send(m.text.clone()).await?;
                Ok(Step::Done)
            }
            Some(Header::End { .. }) => self.finish_if_final().await,
        }
    }

    /// If the build is final, sends what the file still holds, the end message, and closes.
    async fn finish_if_final(&mut self) -> Result<Step, Gone> {
        self.catch_up().await?;
        let doc = match self.store.get_build(&self.build).await {
            Ok(Some(d)) => d,
            Ok(None) => return Ok(Step::Done),
            Err(_) => return Ok(Step::Continue),
        };
        if !doc.status.is_final() {
            return Ok(Step::Continue);
        }
        self.catch_up().await?;
        let end = OutputMessage::End {
            status: doc.status,
            last_seq: self.sent,
            attempt: self.attempt,
        };
        self.client
            .send(ByteString::from(
                serde_json::to_string(&end).unwrap_or_default(),
            ))
            .await?;
        Ok(Step::Done)
    }
}

pub(crate) async fn stream_build(
    mut client: Client,
    hub: Arc<Hub>,
    store: Store,
    storage_root: PathBuf,
    build: BuildRef,
    from: u64,
    shutdown: CancellationToken,
) {
    // Subscribe before reading anything, so no line published from now on is missed.
    let mut watch = match hub.watch(keys::output_channel(&build)).await {
        Ok(w) => w,
        Err(e) => return client.close(CLOSE_UNAVAILABLE, e.to_string()),
    };
    let doc = match store.get_build(&build).await {
        Ok(Some(d)) => d,
        Ok(None) => return client.close(CLOSE_NOT_FOUND, format!("unknown build {build}")),
        Err(_) => return client.close(CLOSE_UNAVAILABLE, "Redis is unavailable"),
    };
    let path =
        storage::build_dir(&storage_root, &doc.storage_path).map(|d| d.join(output::LOG_FILE));
    if client
        .send_json(&json!({"type": "build", "build": doc}))
        .await
        .is_err()
    {
        return client.close(CLOSE_SLOW, format!("resume_from={from}"));
    }
    let mut w = Watcher {
        client,
        store,
        build,
        cursor: Cursor::new(path),
        attempt: doc.attempt,
        sent: from,
    };
    // The document was read after subscribing: unless the build was final already, its end
    // comes through the subscription, and reading the document again would only cost
    // every joining watcher another round trip.
    let mut step = if doc.status.is_final() {
        w.finish_if_final().await
    } else {
        w.catch_up().await.map(|()| Step::Continue)
    };
    let mut poll = tokio::time::interval(POLL);
    poll.reset();
    // While messages flow the poll is skipped; noting the time is cheaper than re-arming a
    // timer per message for every watcher.
    let mut last_message = std::time::Instant::now();
    while let Ok(Step::Continue) = step {
        step = tokio::select! {
            f = watch.rx.recv() => match f {
                Ok(Frame::Message(m)) => {
                    last_message = std::time::Instant::now();
                    w.on_message(&m).await
                }
                // Missed messages (a reconnect, or this process fell behind): the file has them.
                Ok(Frame::Resync) => w.finish_if_final().await,
                Err(RecvError::Lagged(_)) => {
                    count_resync(Resync::WatcherBehind);
                    w.finish_if_final().await
                }
                Err(RecvError::Closed) => Ok(Step::Done),
            },
            _ = poll.tick() => {
                if last_message.elapsed() < POLL {
                    Ok(Step::Continue)
                } else {
                    w.finish_if_final().await
                }
            }
            i = w.client.next() => match i {
                Incoming::Nothing => Ok(Step::Continue),
                Incoming::Left => return,
                Incoming::Unresponsive => return w.client.close(CLOSE_UNRESPONSIVE, "no pong in time"),
            },
            _ = shutdown.cancelled() => {
                let sent = w.sent;
                return w.client.close(1001, format!("gateway shutting down; resume_from={sent}"));
            }
        };
    }
    let sent = w.sent;
    match step {
        Ok(_) => w.client.close(1000, "build finished"),
        Err(Gone) => {
            tracing::info!(build = %w.build, resume_from = sent, "client stopped reading; cut off");
            metrics::counter!("kiln_gateway_dropped_clients_total").increment(1);
            w.client
                .close(CLOSE_SLOW, format!("too slow; resume_from={sent}"));
        }
    }
}
