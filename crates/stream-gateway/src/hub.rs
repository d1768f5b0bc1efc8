//! One Redis subscription per channel, fanned out in-process to every watcher through a
//! bounded broadcast channel; unsubscribed when the last watcher leaves. After a Redis
//! reconnect every watcher is told to resync (publishes made during the outage are gone,
//! and fred may replay ones it buffered, so watchers deduplicate by sequence number).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytestring::ByteString;
use fred::clients::SubscriberClient;
use fred::error::Error as FredError;
use fred::prelude::*;
use serde::Deserialize;
use tokio::sync::{broadcast, Mutex};

/// A published message, shared by every watcher of its channel. Its header (which lines
/// it carries) is decoded at most once, by the first watcher that needs it, however many
/// watchers there are.
#[derive(Debug)]
pub(crate) struct Published {
    pub(crate) text: ByteString,
    header: OnceLock<Option<Header>>,
}

/// What a build output message carries, without its line texts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Header {
    Lines { attempt: u32, first: u64, last: u64 },
    End { attempt: u32, last_seq: u64 },
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum LightMessage {
    Lines { lines: Vec<LightLine> },
    End { attempt: u32, last_seq: u64 },
}

/// A log line's numbers; its text and other fields are skipped while parsing.
#[derive(Debug, Clone, Copy, Deserialize)]
pub(crate) struct LightLine {
    pub(crate) seq: u64,
    pub(crate) attempt: u32,
}

impl Published {
    pub(crate) fn header(&self) -> Option<Header> {
        *self.header.get_or_init(|| {
            match serde_json::from_str::<LightMessage>(&self.text).ok()? {
                LightMessage::Lines { lines } => Some(Header::Lines {
                    attempt: lines.first()?.attempt,
                    first: lines.first()?.seq,
                    last: lines.last()?.seq,
                }),
                LightMessage::End { attempt, last_seq } => Some(Header::End { attempt, last_seq }),
            }
        })
    }
}

/// Why watchers of build output went back to the log file for lines they may have missed
/// live. Counted in `kiln_gateway_resyncs_total{cause}`: a watcher that keeps falling behind
/// means a slow client or a gateway short of CPU, and each catch-up costs a file read.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Resync {
    /// Redis came back after an outage: publishes made meanwhile are gone.
    Reconnect,
    /// The gateway read Redis's messages slower than they came, and dropped some.
    GatewayBehind,
    /// One watcher fell more than `gateway.channel_buffer` messages behind its channel.
    WatcherBehind,
}

/// Counts one resync (once per event for the whole gateway, once per watcher for
/// [`Resync::WatcherBehind`]).
pub(crate) fn count_resync(cause: Resync) {
    let cause = match cause {
        Resync::Reconnect => "reconnect",
        Resync::GatewayBehind => "gateway_behind",
        Resync::WatcherBehind => "watcher_behind",
    };
    metrics::counter!("kiln_gateway_resyncs_total", "cause" => cause).increment(1);
}

/// What watchers receive.
#[derive(Clone, Debug)]
pub(crate) enum Frame {
    /// A message exactly as published (JSON text).
    Message(Arc<Published>),
    /// Redis reconnected: messages may have been missed; catch up from the source of truth.
    Resync,
}

/// Longest a SUBSCRIBE may take before the watcher is refused.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

struct Channel {
    tx: broadcast::Sender<Frame>,
    watchers: usize,
}

pub(crate) struct Hub {
    client: SubscriberClient,
    channels: Mutex<HashMap<String, Channel>>,
    buffer: usize,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum HubError {
    #[error("cannot subscribe: {0}")]
    Subscribe(String),
}

impl Hub {
    pub(crate) fn start(url: &str, buffer: usize) -> Result<Arc<Self>, FredError> {
        let client = Builder::from_config(Config::from_url(url)?)
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .build_subscriber_client()?;
        let hub = Arc::new(Self {
            client,
            channels: Mutex::new(HashMap::new()),
            buffer,
        });
        let h = hub.clone();
        tokio::spawn(async move { h.dispatch().await });
        Ok(hub)
    }

    async fn dispatch(self: Arc<Self>) {
        let mut messages = self.client.message_rx();
        let mut reconnects = self.client.reconnect_rx();
        loop {
            if self.client.init().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let _resubscriber = self.client.manage_subscriptions();
        let mut connected = false;
        loop {
            tokio::select! {
                m = messages.recv() => match m {
                    Ok(m) => {
                        let channel = m.channel.to_string();
                        let Ok(text) = m.value.convert::<String>() else { continue };
                        let channels = self.channels.lock().await;
                        if let Some(c) = channels.get(&channel) {
                            metrics::counter!("kiln_gateway_messages_total").increment(1);
                            let _ = c.tx.send(Frame::Message(Arc::new(Published {
                                text: ByteString::from(text),
                                header: OnceLock::new(),
                            })));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "gateway fell behind Redis; watchers resync");
                        count_resync(Resync::GatewayBehind);
                        self.resync_all().await;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                // Also fires for the first connection; a resync then is harmless, and
                // not counted.
                r = reconnects.recv() => match r {
                    Ok(_) => {
                        tracing::info!("Redis reconnected; watchers resync");
                        if connected {
                            count_resync(Resync::Reconnect);
                        }
                        connected = true;
                        self.resync_all().await;
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        count_resync(Resync::Reconnect);
                        self.resync_all().await;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }

    async fn resync_all(&self) {
        for c in self.channels.lock().await.values() {
            let _ = c.tx.send(Frame::Resync);
        }
    }

    /// Starts watching `channel`: subscribes on the first watcher. The subscription is
    /// made before the caller reads anything else, so nothing published afterwards is missed.
    pub(crate) async fn watch(self: &Arc<Self>, channel: String) -> Result<Watch, HubError> {
        let mut channels = self.channels.lock().await;
        let rx = match channels.get_mut(&channel) {
            Some(c) => {
                c.watchers += 1;
                c.tx.subscribe()
            }
            None => {
                let sub =
                    tokio::time::timeout(SUBSCRIBE_TIMEOUT, self.client.subscribe(channel.clone()));
                match sub.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(HubError::Subscribe(e.to_string())),
                    Err(_) => return Err(HubError::Subscribe("Redis did not answer".into())),
                }
                let (tx, rx) = broadcast::channel(self.buffer);
                channels.insert(channel.clone(), Channel { tx, watchers: 1 });
                metrics::gauge!("kiln_gateway_subscriptions").set(channels.len() as f64);
                rx
            }
        };
        Ok(Watch {
            rx,
            hub: self.clone(),
            channel: Some(channel),
        })
    }

    async fn release(&self, channel: String) {
        let mut channels = self.channels.lock().await;
        let last = match channels.get_mut(&channel) {
            Some(c) => {
                c.watchers -= 1;
                c.watchers == 0
            }
            None => false,
        };
        if last {
            channels.remove(&channel);
            metrics::gauge!("kiln_gateway_subscriptions").set(channels.len() as f64);
            if let Err(e) = self.client.unsubscribe(channel).await {
                tracing::debug!(error = %e, "unsubscribe failed");
            }
        }
    }

    pub(crate) async fn quit(&self) {
        let _ = self.client.quit().await;
    }
}

/// A watcher's handle: receives the channel's frames; leaving drops the subscription when
/// it was the last.
pub(crate) struct Watch {
    pub(crate) rx: broadcast::Receiver<Frame>,
    hub: Arc<Hub>,
    channel: Option<String>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(channel) = self.channel.take() {
            let hub = self.hub.clone();
            tokio::spawn(async move { hub.release(channel).await });
        }
    }
}
