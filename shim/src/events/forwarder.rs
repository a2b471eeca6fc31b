//! Forwarding events to containerd's event service (its ttrpc socket), reconnecting as needed.
//!
//! containerd can be restarted under a running shim (an upgrade, a crash): the shim's pods keep
//! running and the new containerd reconnects to the shim, but the shim's connection to the old
//! event service is dead. Every failed forward therefore drops the connection, and the next
//! attempt dials again, with backoff, for up to [`GIVE_UP_AFTER`] per event, so events queued
//! while containerd was away arrive, in order, once it is back.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::MessageDyn;
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::{Client, EventsClient};
use containerd_shim_protos::ttrpc;

/// How long one forward may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an event is retried before it is dropped (containerd down that long).
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(60);
/// The first and the longest wait between attempts.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// An event that could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("encoding the {topic} event: {source}")]
    Encode {
        topic: String,
        #[source]
        source: containerd_shim_protos::protobuf::Error,
    },
    #[error(
        "containerd's event service at {address} did not take the {topic} event within {:?} \
         (last error: {last}); the event is dropped",
        GIVE_UP_AFTER
    )]
    Undelivered {
        address: String,
        topic: String,
        last: String,
    },
}

/// The envelope containerd's event service takes: the event as an `Any`, its topic, the
/// shim's namespace, and when it happened.
pub fn envelope(
    topic: &str,
    namespace: &str,
    event: &dyn MessageDyn,
    at: SystemTime,
) -> Result<Envelope, ForwardError> {
    let mut any = Any::new();
    any.type_url = event.descriptor_dyn().full_name().to_string();
    any.value = event
        .write_to_bytes_dyn()
        .map_err(|source| ForwardError::Encode {
            topic: topic.to_string(),
            source,
        })?;
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut timestamp = Timestamp::new();
    timestamp.seconds = since.as_secs() as i64;
    timestamp.nanos = since.subsec_nanos() as i32;
    let mut env = Envelope::new();
    env.set_topic(topic.to_string());
    env.set_namespace(namespace.to_string());
    env.set_timestamp(timestamp);
    env.set_event(any);
    Ok(env)
}

/// A connection to containerd's event service, dialled when needed.
pub struct Forwarder {
    /// `unix://<path>`.
    address: String,
    client: Option<EventsClient>,
}

impl Forwarder {
    /// `address`: containerd's `TTRPC_ADDRESS` (a socket path, or `unix://<path>`).
    pub fn new(address: &str) -> Forwarder {
        let address = if address.contains("://") {
            address.to_string()
        } else {
            format!("unix://{address}")
        };
        Forwarder {
            address,
            client: None,
        }
    }

    /// Delivers `env`, reconnecting and retrying until [`GIVE_UP_AFTER`].
    pub async fn forward(&mut self, env: &Envelope) -> Result<(), ForwardError> {
        let deadline = Instant::now() + GIVE_UP_AFTER;
        let mut backoff = FIRST_BACKOFF;
        let mut failures = 0u32;
        loop {
            match self.try_once(env).await {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(
                            topic = env.topic(),
                            failures,
                            "event delivered after reconnecting to containerd"
                        );
                    }
                    return Ok(());
                }
                Err(last) => {
                    // A failed connection is never reused: the next attempt dials again.
                    self.client = None;
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(topic = env.topic(), error = %last, "forwarding an event to containerd failed; reconnecting");
                    }
                    if Instant::now() + backoff > deadline {
                        return Err(ForwardError::Undelivered {
                            address: self.address.clone(),
                            topic: env.topic().to_string(),
                            last,
                        });
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    async fn try_once(&mut self, env: &Envelope) -> Result<(), String> {
        if self.client.is_none() {
            let client = tokio::time::timeout(CALL_TIMEOUT, Client::connect(&self.address))
                .await
                .map_err(|_| format!("connecting to {} timed out", self.address))?
                .map_err(|e| format!("connecting to {}: {e}", self.address))?;
            self.client = Some(EventsClient::new(client));
        }
        let client = self.client.as_ref().expect("connected above");
        let mut req = ForwardRequest::new();
        req.set_envelope(env.clone());
        let ctx = ttrpc::context::with_timeout(CALL_TIMEOUT.as_nanos() as i64);
        client
            .forward(ctx, &req)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
