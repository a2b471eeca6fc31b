//! Task events for containerd: [`EventSink`], with [`RemoteEvents`] forwarding to containerd's
//! event service (see [`forwarder`]: it survives a containerd restart), and [`NoEvents`] for
//! CRI-O, which gives the shim no event service.

mod forwarder;
#[cfg(test)]
mod tests;

use std::time::SystemTime;

use async_trait::async_trait;
use containerd_shim_protos::shim::event::Envelope;
use protobuf::MessageDyn;
use tokio::sync::{mpsc, oneshot};

pub use forwarder::{envelope, Forwarder, GIVE_UP_AFTER};

/// Where the task service sends its events (TaskCreate, TaskStart, TaskExit, TaskDelete, ...).
///
/// `publish` never blocks and never fails: events are queued and delivered in the order they
/// were queued, so a state transition can publish without awaiting containerd.
#[async_trait]
pub trait EventSink: Send + Sync {
    /// Queues `event` under `topic` (one of `containerd_shim_protos::topics`).
    fn publish(&self, topic: &'static str, event: Box<dyn MessageDyn>);

    /// Waits until everything queued so far has been handed to containerd (best effort).
    async fn flush(&self);
}

enum Item {
    Event(Envelope),
    Flush(oneshot::Sender<()>),
}

/// Events forwarded to containerd by a background task, in order.
pub struct RemoteEvents {
    namespace: String,
    tx: mpsc::UnboundedSender<Item>,
}

impl RemoteEvents {
    /// Starts the forwarding task; `address` is containerd's `TTRPC_ADDRESS`, `namespace` the
    /// containerd namespace of the shim.
    pub fn new(address: &str, namespace: String) -> RemoteEvents {
        let (tx, mut rx) = mpsc::unbounded_channel::<Item>();
        let mut forwarder = Forwarder::new(address);
        tokio::spawn(async move {
            while let Some(item) = rx.recv().await {
                match item {
                    Item::Event(env) => {
                        if let Err(e) = forwarder.forward(&env).await {
                            tracing::error!(topic = env.topic(), error = %e, "an event for containerd was lost");
                        }
                    }
                    Item::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        RemoteEvents { namespace, tx }
    }
}

#[async_trait]
impl EventSink for RemoteEvents {
    fn publish(&self, topic: &'static str, event: Box<dyn MessageDyn>) {
        tracing::debug!(topic, "event");
        // Stamped now, when it happened, however long the delivery takes.
        let env = match envelope(topic, &self.namespace, event.as_ref(), SystemTime::now()) {
            Ok(env) => env,
            Err(e) => {
                tracing::error!(topic, error = %e, "an event for containerd was lost");
                return;
            }
        };
        if self.tx.send(Item::Event(env)).is_err() {
            tracing::warn!(topic, "the event forwarder is gone; event dropped");
        }
    }

    async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Item::Flush(done)).is_ok() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), wait).await;
        }
    }
}

/// No event service to publish to: CRI-O starts VM runtimes' shims without one (`-address ""`,
/// an empty `TTRPC_ADDRESS`) and learns about exits through the Task API's Wait instead.
pub struct NoEvents;

#[async_trait]
impl EventSink for NoEvents {
    fn publish(&self, topic: &'static str, _event: Box<dyn MessageDyn>) {
        tracing::debug!(topic, "event (no event service to publish to)");
    }

    async fn flush(&self) {}
}
