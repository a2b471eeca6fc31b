//! The ttrpc server: Health and Agent on vsock (or a Unix socket outside a VM).

use std::sync::Arc;

use isola_agent_proto::{agent_ttrpc, health_ttrpc};
use ttrpc::r#async::Server;

use crate::cmdline::Listen;
use crate::rpc::{agent::AgentService, health::HealthService};

/// Failure to bring the server up.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("binding the ttrpc server to {addr}: {source}")]
    Bind { addr: String, source: ttrpc::Error },
    #[error("starting the ttrpc server on {addr}: {source}")]
    Start { addr: String, source: ttrpc::Error },
}

/// The ttrpc address for a listen option.
pub fn address(listen: &Listen) -> String {
    match listen {
        // -1 is VMADDR_CID_ANY.
        Listen::Vsock(port) => format!("vsock://-1:{port}"),
        Listen::Unix(path) => format!("unix://{path}"),
    }
}

/// Binds and starts the server; it runs on background tasks until the returned server is
/// dropped or shut down.
pub async fn start(listen: &Listen, agent: Arc<AgentService>) -> Result<Server, ServerError> {
    let addr = address(listen);
    if let Listen::Unix(path) = listen {
        // A stale socket from an earlier run would make bind fail.
        let _ = std::fs::remove_file(path);
    }
    let health = health_ttrpc::create_health(Arc::new(HealthService));
    let agent = agent_ttrpc::create_agent(agent);
    let mut server = Server::new()
        .bind(&addr)
        .map_err(|source| ServerError::Bind {
            addr: addr.clone(),
            source,
        })?
        .register_service(health)
        .register_service(agent);
    server.start().await.map_err(|source| ServerError::Start {
        addr: addr.clone(),
        source,
    })?;
    tracing::info!(%addr, "agent serving ttrpc");
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(address(&Listen::Vsock(1024)), "vsock://-1:1024");
        assert_eq!(address(&Listen::Unix("/a/b".into())), "unix:///a/b");
    }
}
