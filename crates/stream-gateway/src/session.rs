//! One WebSocket client: sends with a timeout, keep-alive pings, bounded closes. A client
//! that stops reading never blocks the gateway: its send times out and it is cut off with
//! the position to resume from.

use std::time::Duration;

use actix_ws::{CloseCode, CloseReason, Message, MessageStream, Session};
use bytestring::ByteString;
use futures::StreamExt;
use tokio::time::Instant;

use crate::config::Limits;

/// Close code for a client cut off because it fell behind; the description says
/// `resume_from=<seq>`.
pub(crate) const CLOSE_SLOW: u16 = 4000;
/// Close code for an unknown build.
pub(crate) const CLOSE_NOT_FOUND: u16 = 4404;
/// Close code for a client that answered no ping in time (policy violation).
pub(crate) const CLOSE_UNRESPONSIVE: u16 = 1008;
/// Close code when Redis cannot be reached to start the stream.
pub(crate) const CLOSE_UNAVAILABLE: u16 = 4503;

/// How long a close may wait for the client's answer to the last ping and to be queued
/// behind data the client has not read; the close is sent in the background, so nobody
/// waits for it.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(60);

/// The client stopped reading or left.
#[derive(Debug)]
pub(crate) struct Gone;

pub(crate) struct Client {
    session: Session,
    /// The client's side; taken by `close`, which keeps reading it until the close is sent.
    stream: Option<MessageStream>,
    limits: Limits,
    last_pong: Instant,
    /// A ping was sent and its pong has not come yet.
    ping_unanswered: bool,
    ping: tokio::time::Interval,
}

/// What happened on the client's side of the socket.
pub(crate) enum Incoming {
    /// Nothing that concerns the stream (pong, text).
    Nothing,
    /// The client closed or the connection broke.
    Left,
    /// The client answered no ping within the client timeout.
    Unresponsive,
}

impl Client {
    pub(crate) fn new(session: Session, stream: MessageStream, limits: Limits) -> Self {
        metrics::gauge!("kiln_gateway_connections").increment(1.0);
        let mut ping = tokio::time::interval(limits.ping);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            session,
            stream: Some(stream.max_frame_size(64 * 1024)),
            limits,
            last_pong: Instant::now(),
            ping_unanswered: false,
            ping,
        }
    }

    /// Queues a text frame, failing if the client has not made room within the send
    /// timeout.
    pub(crate) async fn send(&mut self, text: ByteString) -> Result<(), Gone> {
        match tokio::time::timeout(self.limits.send_timeout, self.session.text(text)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Gone),
        }
    }

    pub(crate) async fn send_json(&mut self, v: &serde_json::Value) -> Result<(), Gone> {
        self.send(ByteString::from(v.to_string())).await
    }

    /// Waits for the next thing the client does, or the next ping time (answered here).
    /// Returns `Left` when the client is gone or stopped answering pings.
    pub(crate) async fn next(&mut self) -> Incoming {
        let Some(stream) = self.stream.as_mut() else {
            return Incoming::Left;
        };
        tokio::select! {
            m = stream.next() => match m {
                Some(Ok(Message::Ping(p))) => {
                    let _ = tokio::time::timeout(self.limits.send_timeout, self.session.pong(&p)).await;
                    Incoming::Nothing
                }
                Some(Ok(Message::Pong(_))) => {
                    self.last_pong = Instant::now();
                    self.ping_unanswered = false;
                    Incoming::Nothing
                }
                Some(Ok(Message::Close(reason))) => {
                    tracing::debug!(?reason, "client closed");
                    Incoming::Left
                }
                None => {
                    tracing::debug!("client connection ended");
                    Incoming::Left
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "client protocol error");
                    Incoming::Left
                }
                Some(Ok(_)) => Incoming::Nothing,
            },
            _ = self.ping.tick() => {
                if self.last_pong.elapsed() > self.limits.client_timeout {
                    return Incoming::Unresponsive;
                }
                match tokio::time::timeout(self.limits.send_timeout, self.session.ping(b"kiln")).await {
                    Ok(Ok(())) => {
                        self.ping_unanswered = true;
                        Incoming::Nothing
                    }
                    _ => {
                        tracing::debug!("cannot ping the client");
                        Incoming::Left
                    }
                }
            }
        }
    }

    /// Closes with `code` and `description`, in the background and bounded in time.
    pub(crate) fn close(mut self, code: u16, description: impl Into<String>) {
        let reason = CloseReason {
            code: if code == 1000 {
                CloseCode::Normal
            } else {
                CloseCode::Other(code)
            },
            description: Some(description.into()),
        };
        let session = self.session.clone();
        let mut stream = self.stream.take();
        // A pong is awaited only as long as the client would still count as responsive.
        let pong_deadline = self
            .ping_unanswered
            .then(|| self.last_pong + self.limits.client_timeout);
        // actix-ws ends the connection as soon as the close frame is written. Whatever the
        // client sends after that meets a closed socket, and the kernel answers with a reset,
        // which makes the client's kernel drop what the client has not read yet: the end of
        // the log. The client's answer to its close comes after it has read everything, but
        // a pong for a ping sent earlier may not: so the close waits for that pong first
        // (without this, 200 slow watchers in the black-box tests lost the end of the log).
        // The client's stream is tied to this worker thread: a local task.
        actix_web::rt::spawn(async move {
            let closing = async {
                if let (Some(deadline), Some(stream)) = (pong_deadline, stream.as_mut()) {
                    let pong = async {
                        while let Some(Ok(m)) = stream.next().await {
                            if matches!(m, Message::Pong(_) | Message::Close(_)) {
                                break;
                            }
                        }
                    };
                    let _ = tokio::time::timeout_at(deadline, pong).await;
                }
                let _ = session.close(Some(reason)).await;
            };
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
            // The incoming half is kept until the close is written.
            drop(stream);
        });
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        metrics::gauge!("kiln_gateway_connections").decrement(1.0);
    }
}
