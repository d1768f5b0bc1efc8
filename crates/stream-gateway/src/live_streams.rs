//! `/ws/nodes` (the nodes now, then every heartbeat and node change) and `/ws/events` (build
//! state changes across all jobs, optionally filtered by job or folder).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytestring::ByteString;
use kiln_model::{keys, BuildEvent};
use kiln_store::Store;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::hub::{Frame, Hub};
use crate::session::{Client, Incoming, CLOSE_SLOW, CLOSE_UNAVAILABLE, CLOSE_UNRESPONSIVE};

/// How often the node list is compared with what the client was told, to report nodes that
/// stopped heartbeating (their key expired) or shut down.
const NODE_SWEEP: Duration = Duration::from_secs(5);

pub(crate) async fn stream_nodes(
    mut client: Client,
    hub: Arc<Hub>,
    store: Store,
    shutdown: CancellationToken,
) {
    let mut watch = match hub.watch(keys::NODES_CHANNEL.to_owned()).await {
        Ok(w) => w,
        Err(e) => return client.close(CLOSE_UNAVAILABLE, e.to_string()),
    };
    let Ok(nodes) = store.nodes().await else {
        return client.close(CLOSE_UNAVAILABLE, "Redis is unavailable");
    };
    let mut known: BTreeSet<String> = nodes.iter().map(|n| n.id.to_string()).collect();
    if client
        .send_json(&json!({"type": "nodes", "nodes": nodes}))
        .await
        .is_err()
    {
        return client.close(CLOSE_SLOW, "too slow");
    }
    let mut sweep = tokio::time::interval(NODE_SWEEP);
    sweep.reset();
    loop {
        let sent = tokio::select! {
            f = watch.rx.recv() => match f {
                Ok(Frame::Message(m)) => {
                    let text = &m.text;
                    if let Ok(n) = serde_json::from_str::<kiln_model::NodeInfo>(text) {
                        known.insert(n.id.to_string());
                    }
                    client.send(ByteString::from(format!(r#"{{"type":"heartbeat","node":{text}}}"#))).await
                }
                Ok(Frame::Resync) => Ok(()),
                Err(RecvError::Lagged(_)) => Err(crate::session::Gone),
                Err(RecvError::Closed) => return,
            },
            _ = sweep.tick() => {
                let mut r = Ok(());
                if let Ok(nodes) = store.nodes().await {
                    let now: BTreeSet<String> = nodes.iter().map(|n| n.id.to_string()).collect();
                    for gone in known.difference(&now) {
                        r = r.and(client.send_json(&json!({"type": "node_gone", "id": gone})).await);
                    }
                    known = now;
                }
                r
            }
            i = client.next() => match i {
                Incoming::Nothing => Ok(()),
                Incoming::Left => return,
                Incoming::Unresponsive => return client.close(CLOSE_UNRESPONSIVE, "no pong in time"),
            },
            _ = shutdown.cancelled() => return client.close(1001, "gateway shutting down"),
        };
        if sent.is_err() {
            metrics::counter!("kiln_gateway_dropped_clients_total").increment(1);
            return client.close(CLOSE_SLOW, "too slow");
        }
    }
}

/// Which events a client asked for.
pub(crate) struct EventFilter {
    pub(crate) job: Option<String>,
    pub(crate) folder: Option<String>,
}

impl EventFilter {
    fn matches(&self, text: &str) -> bool {
        if self.job.is_none() && self.folder.is_none() {
            return true;
        }
        let Ok(e) = serde_json::from_str::<BuildEvent>(text) else {
            return false;
        };
        self.job.as_deref().is_none_or(|j| e.job.as_str() == j)
            && self
                .folder
                .as_deref()
                .is_none_or(|f| e.folder.as_ref().is_some_and(|ef| ef.as_str() == f))
    }
}

pub(crate) async fn stream_events(
    mut client: Client,
    hub: Arc<Hub>,
    filter: EventFilter,
    shutdown: CancellationToken,
) {
    let mut watch = match hub.watch(keys::EVENTS_CHANNEL.to_owned()).await {
        Ok(w) => w,
        Err(e) => return client.close(CLOSE_UNAVAILABLE, e.to_string()),
    };
    loop {
        let sent = tokio::select! {
            f = watch.rx.recv() => match f {
                Ok(Frame::Message(m)) if filter.matches(&m.text) => {
                    let text = &m.text;
                    client.send(ByteString::from(format!(r#"{{"type":"event","event":{text}}}"#))).await
                }
                Ok(_) => Ok(()),
                Err(RecvError::Lagged(_)) => Err(crate::session::Gone),
                Err(RecvError::Closed) => return,
            },
            i = client.next() => match i {
                Incoming::Nothing => Ok(()),
                Incoming::Left => return,
                Incoming::Unresponsive => return client.close(CLOSE_UNRESPONSIVE, "no pong in time"),
            },
            _ = shutdown.cancelled() => return client.close(1001, "gateway shutting down"),
        };
        if sent.is_err() {
            metrics::counter!("kiln_gateway_dropped_clients_total").increment(1);
            return client.close(CLOSE_SLOW, "too slow");
        }
    }
}
