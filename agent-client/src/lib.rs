//! The host's side of the agent protocol: dial the guest agent (kernel or hybrid vsock) with a
//! deadline and backoff, then talk ttrpc to it.
//!
//! ```no_run
//! # async fn f(endpoint: isola_agent_proto::AgentEndpoint) -> Result<(), isola_agent_client::ClientError> {
//! use std::time::Duration;
//! let agent = isola_agent_client::AgentClient::connect(&endpoint, Duration::from_secs(30)).await?;
//! let version = agent.version(Duration::from_secs(1)).await?;
//! # Ok(()) }
//! ```

pub mod dial;

use std::time::Duration;

use isola_agent_proto::agent_ttrpc::AgentClient as AgentRpc;
use isola_agent_proto::health::{
    health_check_response::ServingStatus, CheckRequest, VersionCheckResponse,
};
use isola_agent_proto::health_ttrpc::HealthClient;
use isola_agent_proto::AgentEndpoint;
use tokio::time::Instant;

pub use dial::{Backoff, DialError};

/// Failure to reach or talk to the agent.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the guest agent could not be reached: {0}")]
    Dial(#[from] DialError),
    #[error("agent RPC {rpc} failed: {source}")]
    Rpc {
        rpc: &'static str,
        source: ttrpc::Error,
    },
    #[error("the guest agent answered Check with status {0:?} instead of SERVING")]
    NotServing(ServingStatus),
    #[error("no SERVING answer from the guest agent within {0:?}")]
    Deadline(Duration),
}

/// A connected agent: both services over one ttrpc connection.
#[derive(Clone)]
pub struct AgentClient {
    pub health: HealthClient,
    pub agent: AgentRpc,
}

fn ctx(timeout: Duration) -> ttrpc::context::Context {
    ttrpc::context::with_timeout(timeout.as_nanos().min(i64::MAX as u128) as i64)
}

impl AgentClient {
    /// Dials the agent and waits until it answers Check with SERVING, all within `timeout`.
    pub async fn connect(endpoint: &AgentEndpoint, timeout: Duration) -> Result<Self, ClientError> {
        Self::connect_with(endpoint, timeout, Backoff::default()).await
    }

    /// [`connect`](Self::connect) with an explicit retry schedule.
    pub async fn connect_with(
        endpoint: &AgentEndpoint,
        timeout: Duration,
        backoff: Backoff,
    ) -> Result<Self, ClientError> {
        let deadline = Instant::now() + timeout;
        let socket = dial::dial(endpoint, deadline, backoff).await?;
        let client = ttrpc::r#async::Client::new(socket);
        let agent = AgentClient {
            health: HealthClient::new(client.clone()),
            agent: AgentRpc::new(client),
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ClientError::Deadline(timeout));
        }
        agent.check(remaining).await?;
        Ok(agent)
    }

    /// Health.Check: Ok only when the agent reports SERVING.
    pub async fn check(&self, timeout: Duration) -> Result<(), ClientError> {
        let resp = self
            .health
            .check(ctx(timeout), &CheckRequest::default())
            .await
            .map_err(|source| ClientError::Rpc {
                rpc: "Check",
                source,
            })?;
        match resp.status.enum_value_or_default() {
            ServingStatus::SERVING => Ok(()),
            other => Err(ClientError::NotServing(other)),
        }
    }

    /// Health.Version.
    pub async fn version(&self, timeout: Duration) -> Result<VersionCheckResponse, ClientError> {
        self.health
            .version(ctx(timeout), &CheckRequest::default())
            .await
            .map_err(|source| ClientError::Rpc {
                rpc: "Version",
                source,
            })
    }
}

/// A ttrpc call context with a timeout, for callers using [`AgentClient::agent`] directly.
pub fn context(timeout: Duration) -> ttrpc::context::Context {
    ctx(timeout)
}
