//! Task events for containerd: [`EventSink`], with [`RemoteEvents`] forwarding to containerd's
//! event service through containerd-shim's `RemotePublisher`, and [`NoEvents`] for CRI-O,
//! which gives the shim no event service.

use async_trait::async_trait;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::Context;
use protobuf::MessageDyn;
use tokio::sync::{mpsc, oneshot};

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
    Event(&'static str, Box<dyn MessageDyn>),
    Flush(oneshot::Sender<()>),
}

/// Events forwarded to containerd by a background task, in order.
pub struct RemoteEvents {
    tx: mpsc::UnboundedSender<Item>,
}

impl RemoteEvents {
    /// Starts the forwarding task; `namespace` is the containerd namespace of the shim.
    pub fn new(publisher: RemotePublisher, namespace: String) -> RemoteEvents {
        let (tx, mut rx) = mpsc::unbounded_channel::<Item>();
        tokio::spawn(async move {
            while let Some(item) = rx.recv().await {
                match item {
                    Item::Event(topic, event) => {
                        if let Err(e) = publisher
                            .publish(Context::default(), topic, &namespace, event)
                            .await
                        {
                            tracing::warn!(topic, error = %e, "publishing an event to containerd failed");
                        }
                    }
                    Item::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        RemoteEvents { tx }
    }
}

#[async_trait]
impl EventSink for RemoteEvents {
    fn publish(&self, topic: &'static str, event: Box<dyn MessageDyn>) {
        tracing::debug!(topic, "event");
        if self.tx.send(Item::Event(topic, event)).is_err() {
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
