//! What the shim asks of the guest agent: [`AgentApi`], implemented over ttrpc by
//! [`TtrpcAgent`] and by a hand-written fake in the unit tests.

use std::time::Duration;

use async_trait::async_trait;
use isola_agent_client::dial::{self, DialError};
use isola_agent_client::AgentClient;
use isola_agent_proto::agent::{
    stdio_stream_header::Stream, AddARPNeighborsRequest, CloseStdinRequest, ContainerRequest,
    CreateContainerRequest, CreateSandboxRequest, DestroySandboxRequest, ExecProcessRequest,
    GuestDetailsRequest, GuestDetailsResponse, ListProcessesRequest, OnlineCPUMemRequest,
    RemoveContainerRequest, Routes, SignalProcessRequest, StartContainerRequest,
    StatsContainerResponse, StdioStreamHeader, TtyWinResizeRequest, UpdateContainerRequest,
    UpdateInterfaceRequest, UpdateRoutesRequest, WaitProcessRequest,
};
use isola_agent_proto::agent_ttrpc::AgentClient as AgentRpc;
use isola_agent_proto::types::{ARPNeighbor, Empty, Interface, Route};
use isola_hypervisor::AgentEndpoint;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::error::{Result, ShimError};

/// A byte stream to the agent carrying one stdio stream of one process.
pub trait StdioStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> StdioStream for T {}

/// A boxed [`StdioStream`].
pub type BoxStream = Box<dyn StdioStream>;

/// Which stdio stream of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StdioKind {
    Stdin,
    Stdout,
    Stderr,
}

impl StdioKind {
    fn wire(self) -> Stream {
        match self {
            StdioKind::Stdin => Stream::STDIN,
            StdioKind::Stdout => Stream::STDOUT,
            StdioKind::Stderr => Stream::STDERR,
        }
    }
}

/// How a guest process ended, as the agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessExit {
    /// Exit code; 128+N for a process killed by signal N.
    pub status: u32,
}

/// A guest process as listed by the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestProcess {
    /// PID in the guest.
    pub pid: u32,
    /// Exec id, empty for a container's init.
    pub exec_id: String,
}

/// The agent RPCs the shim uses, plus opening a stdio stream.
///
/// Errors are [`ShimError::Agent`] carrying the agent's own status code, so that (for example)
/// the agent's NotFound reaches containerd as NotFound.
#[async_trait]
pub trait AgentApi: Send + Sync {
    /// Sets up the sandbox in the guest (shared filesystem, hostname).
    /// Health.Check within `timeout`: Ok only when the agent answers SERVING (the watchdog's
    /// probe; cheap in the guest).
    async fn check(&self, timeout: Duration) -> Result<()>;
    async fn create_sandbox(&self, req: CreateSandboxRequest) -> Result<()>;
    /// Tears the sandbox down in the guest before the VM stops.
    async fn destroy_sandbox(&self) -> Result<()>;
    /// Creates a container (its init process exists but has not started).
    async fn create_container(&self, req: CreateContainerRequest) -> Result<()>;
    /// Starts a created container's init process.
    async fn start_container(&self, container_id: &str) -> Result<()>;
    /// Creates and starts an additional process in a running container.
    async fn exec_process(&self, req: ExecProcessRequest) -> Result<()>;
    /// Sends `signal` to a process (or, with `all`, to every process of the container).
    async fn signal_process(
        &self,
        container_id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<()>;
    /// Waits until a process exits; no deadline.
    async fn wait_process(&self, container_id: &str, exec_id: &str) -> Result<ProcessExit>;
    /// Removes a container, killing what is left after `timeout_secs`.
    async fn remove_container(&self, container_id: &str, timeout_secs: u32) -> Result<()>;
    /// Lists a container's processes.
    async fn list_processes(&self, container_id: &str) -> Result<Vec<GuestProcess>>;
    /// Resizes a process's pty.
    async fn resize_pty(
        &self,
        container_id: &str,
        exec_id: &str,
        rows: u32,
        cols: u32,
    ) -> Result<()>;
    /// Closes a process's stdin in the guest.
    async fn close_stdin(&self, container_id: &str, exec_id: &str) -> Result<()>;
    /// Opens the stdio stream `kind` of a process: connected, header already sent.
    async fn open_stdio(
        &self,
        container_id: &str,
        exec_id: &str,
        kind: StdioKind,
    ) -> Result<BoxStream>;
    /// Freezes every process of a container (cgroup freezer in the guest).
    async fn pause_container(&self, container_id: &str) -> Result<()>;
    /// Thaws a container frozen by [`pause_container`](Self::pause_container).
    async fn resume_container(&self, container_id: &str) -> Result<()>;
    /// The container's cgroup v2 statistics in the guest.
    async fn stats_container(&self, container_id: &str) -> Result<StatsContainerResponse>;
    /// Applies new resource limits (OCI `LinuxResources` as JSON) to a container's cgroup.
    async fn update_container(&self, container_id: &str, resources_json: Vec<u8>) -> Result<()>;
    /// Onlines hot-plugged CPUs (`nb_cpus`, 0 = all offline ones) in the guest and, when memory
    /// grew (`memory_mib`: the VM's memory after the hot-plug, 0 when it did not), its memory
    /// blocks, answering once the guest has that much memory online.
    async fn online_cpu_mem(&self, nb_cpus: u32, memory_mib: u32) -> Result<()>;
    /// Blocks until a container of the sandbox is OOM-killed; returns its id. No deadline.
    async fn get_oom_event(&self) -> Result<String>;
    /// Configures the guest NIC with `iface.hw_addr`: name, MTU, addresses, up.
    async fn update_interface(&self, iface: Interface) -> Result<()>;
    /// Replaces the guest's routes through the devices `routes` name.
    async fn update_routes(&self, routes: Vec<Route>) -> Result<()>;
    /// Adds permanent neighbour entries in the guest.
    async fn add_arp_neighbors(&self, neighbors: Vec<ARPNeighbor>) -> Result<()>;
    /// GetGuestDetails within `timeout`: the guest's memory, CPUs and CPU time. Fields an
    /// older agent does not know are 0.
    async fn guest_details(&self, timeout: Duration) -> Result<GuestDetailsResponse>;
}

/// The first frame of a stdio connection (framing shared with the agent, see
/// `isola_agent_proto::stdio_header`).
pub fn stdio_header_frame(container_id: &str, exec_id: &str, kind: StdioKind) -> Vec<u8> {
    isola_agent_proto::stdio_header::encode(&StdioStreamHeader {
        container_id: container_id.to_string(),
        exec_id: exec_id.to_string(),
        stream: kind.wire().into(),
        ..Default::default()
    })
}

/// Default deadline of control RPCs. Generous: container creation under TCG is slow.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(120);
/// How long to keep retrying to open a stdio connection the agent refuses.
const STDIO_DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one attempt to open a stdio connection may take.
const STDIO_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// The real agent, over ttrpc on vsock (kernel or hybrid).
pub struct TtrpcAgent {
    client: AgentClient,
    rpc: AgentRpc,
    endpoint: AgentEndpoint,
}

impl TtrpcAgent {
    /// Wraps a connected agent client; `endpoint` is where stdio streams are dialed.
    pub fn new(client: AgentClient, endpoint: AgentEndpoint) -> TtrpcAgent {
        let rpc = client.agent.clone();
        TtrpcAgent {
            client,
            rpc,
            endpoint,
        }
    }

    async fn dial_stdio(&self) -> Result<BoxStream, DialError> {
        let port = isola_agent_proto::STDIO_PORT;
        Ok(match &self.endpoint {
            AgentEndpoint::Vsock { cid, .. } => Box::new(dial::vsock_once(*cid, port).await?),
            AgentEndpoint::HybridVsock { path, .. } => {
                Box::new(dial::hybrid_once(path, port).await?)
            }
        })
    }
}

/// Awaits an agent RPC, naming it in the error (the agent's status code is kept).
async fn call<T>(
    rpc: &'static str,
    fut: impl std::future::Future<Output = ttrpc::Result<T>>,
) -> Result<T> {
    fut.await.map_err(|e| ShimError::agent(rpc, e))
}

fn ctx() -> ttrpc::context::Context {
    isola_agent_client::context(RPC_TIMEOUT)
}

#[async_trait]
impl AgentApi for TtrpcAgent {
    async fn check(&self, timeout: Duration) -> Result<()> {
        self.client.check(timeout).await.map_err(|e| match e {
            isola_agent_client::ClientError::Rpc { rpc, source } => ShimError::agent(rpc, source),
            other => ShimError::Agent {
                rpc: "Check",
                code: ttrpc::Code::UNAVAILABLE,
                message: other.to_string(),
            },
        })
    }

    async fn create_sandbox(&self, req: CreateSandboxRequest) -> Result<()> {
        call("CreateSandbox", self.rpc.create_sandbox(ctx(), &req)).await?;
        Ok(())
    }

    async fn destroy_sandbox(&self) -> Result<()> {
        let ctx = isola_agent_client::context(Duration::from_secs(10));
        call(
            "DestroySandbox",
            self.rpc
                .destroy_sandbox(ctx, &DestroySandboxRequest::default()),
        )
        .await?;
        Ok(())
    }

    async fn create_container(&self, req: CreateContainerRequest) -> Result<()> {
        call("CreateContainer", self.rpc.create_container(ctx(), &req)).await?;
        Ok(())
    }

    async fn start_container(&self, container_id: &str) -> Result<()> {
        let req = StartContainerRequest {
            container_id: container_id.to_string(),
            ..Default::default()
        };
        call("StartContainer", self.rpc.start_container(ctx(), &req)).await?;
        Ok(())
    }

    async fn exec_process(&self, req: ExecProcessRequest) -> Result<()> {
        call("ExecProcess", self.rpc.exec_process(ctx(), &req)).await?;
        Ok(())
    }

    async fn signal_process(
        &self,
        container_id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<()> {
        let req = SignalProcessRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            signal,
            all,
            ..Default::default()
        };
        call("SignalProcess", self.rpc.signal_process(ctx(), &req)).await?;
        Ok(())
    }

    async fn wait_process(&self, container_id: &str, exec_id: &str) -> Result<ProcessExit> {
        let req = WaitProcessRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        // No deadline: a process may run for as long as it likes.
        let resp = call(
            "WaitProcess",
            self.rpc
                .wait_process(ttrpc::context::Context::default(), &req),
        )
        .await?;
        Ok(ProcessExit {
            status: resp.status as u32,
        })
    }

    async fn remove_container(&self, container_id: &str, timeout_secs: u32) -> Result<()> {
        let req = RemoveContainerRequest {
            container_id: container_id.to_string(),
            timeout: timeout_secs,
            ..Default::default()
        };
        let ctx =
            isola_agent_client::context(RPC_TIMEOUT + Duration::from_secs(timeout_secs.into()));
        call("RemoveContainer", self.rpc.remove_container(ctx, &req)).await?;
        Ok(())
    }

    async fn list_processes(&self, container_id: &str) -> Result<Vec<GuestProcess>> {
        let req = ListProcessesRequest {
            container_id: container_id.to_string(),
            ..Default::default()
        };
        let resp = call("ListProcesses", self.rpc.list_processes(ctx(), &req)).await?;
        Ok(resp
            .processes
            .into_iter()
            .map(|p| GuestProcess {
                pid: p.pid,
                exec_id: p.exec_id,
            })
            .collect())
    }

    async fn resize_pty(
        &self,
        container_id: &str,
        exec_id: &str,
        rows: u32,
        cols: u32,
    ) -> Result<()> {
        let req = TtyWinResizeRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            row: rows,
            column: cols,
            ..Default::default()
        };
        call("TtyWinResize", self.rpc.tty_win_resize(ctx(), &req)).await?;
        Ok(())
    }

    async fn close_stdin(&self, container_id: &str, exec_id: &str) -> Result<()> {
        let req = CloseStdinRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        call("CloseStdin", self.rpc.close_stdin(ctx(), &req)).await?;
        Ok(())
    }

    async fn open_stdio(
        &self,
        container_id: &str,
        exec_id: &str,
        kind: StdioKind,
    ) -> Result<BoxStream> {
        let deadline = tokio::time::Instant::now() + STDIO_DIAL_TIMEOUT;
        let mut delay = Duration::from_millis(5);
        let mut stream = loop {
            // Each attempt is bounded: a connection request the guest never answers must not
            // use up the whole deadline.
            let attempt = tokio::time::timeout(STDIO_ATTEMPT_TIMEOUT, self.dial_stdio()).await;
            let result = attempt.unwrap_or_else(|_| {
                Err(DialError::Deadline {
                    port: isola_agent_proto::STDIO_PORT,
                    waited: STDIO_ATTEMPT_TIMEOUT,
                    last: "the guest did not answer the connection request".into(),
                })
            });
            match result {
                Ok(stream) => break stream,
                Err(e) if tokio::time::Instant::now() + delay < deadline => {
                    tracing::debug!(error = %e, "stdio port not reachable yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(200));
                }
                Err(e) => {
                    return Err(ShimError::Internal(format!(
                        "opening the {kind:?} stream of {container_id}/{exec_id:?} to the guest agent: {e}"
                    )))
                }
            }
        };
        stream
            .write_all(&stdio_header_frame(container_id, exec_id, kind))
            .await
            .map_err(|e| ShimError::io(format!("sending the {kind:?} stream header"), e))?;
        Ok(stream)
    }

    async fn pause_container(&self, container_id: &str) -> Result<()> {
        self.container_call("PauseContainer", container_id).await
    }

    async fn resume_container(&self, container_id: &str) -> Result<()> {
        self.container_call("ResumeContainer", container_id).await
    }

    async fn stats_container(&self, container_id: &str) -> Result<StatsContainerResponse> {
        let req = ContainerRequest {
            container_id: container_id.to_string(),
            ..Default::default()
        };
        call("StatsContainer", self.rpc.stats_container(ctx(), &req)).await
    }

    async fn update_container(&self, container_id: &str, resources_json: Vec<u8>) -> Result<()> {
        let req = UpdateContainerRequest {
            container_id: container_id.to_string(),
            resources_json,
            ..Default::default()
        };
        call("UpdateContainer", self.rpc.update_container(ctx(), &req)).await?;
        Ok(())
    }

    async fn online_cpu_mem(&self, nb_cpus: u32, memory_mib: u32) -> Result<()> {
        let req = OnlineCPUMemRequest {
            nb_cpus,
            cpu_only: memory_mib == 0,
            memory_mib,
            ..Default::default()
        };
        call("OnlineCPUMem", self.rpc.online_cpu_mem(ctx(), &req)).await?;
        Ok(())
    }

    async fn get_oom_event(&self) -> Result<String> {
        // No deadline: this long-polls for as long as the sandbox lives.
        let resp = call(
            "GetOOMEvent",
            self.rpc
                .get_oom_event(ttrpc::context::Context::default(), &Empty::default()),
        )
        .await?;
        Ok(resp.container_id)
    }

    async fn update_interface(&self, iface: Interface) -> Result<()> {
        let req = UpdateInterfaceRequest {
            interface: Some(iface).into(),
            ..Default::default()
        };
        call("UpdateInterface", self.rpc.update_interface(ctx(), &req)).await?;
        Ok(())
    }

    async fn update_routes(&self, routes: Vec<Route>) -> Result<()> {
        let req = UpdateRoutesRequest {
            routes: Some(Routes {
                routes,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        call("UpdateRoutes", self.rpc.update_routes(ctx(), &req)).await?;
        Ok(())
    }

    async fn add_arp_neighbors(&self, neighbors: Vec<ARPNeighbor>) -> Result<()> {
        let req = AddARPNeighborsRequest {
            neighbors,
            ..Default::default()
        };
        call("AddARPNeighbors", self.rpc.add_arp_neighbors(ctx(), &req)).await?;
        Ok(())
    }

    async fn guest_details(&self, timeout: Duration) -> Result<GuestDetailsResponse> {
        let ctx = isola_agent_client::context(timeout);
        call(
            "GetGuestDetails",
            self.rpc
                .get_guest_details(ctx, &GuestDetailsRequest::default()),
        )
        .await
    }
}

impl TtrpcAgent {
    async fn container_call(&self, rpc: &'static str, container_id: &str) -> Result<()> {
        let req = ContainerRequest {
            container_id: container_id.to_string(),
            ..Default::default()
        };
        let result = match rpc {
            "PauseContainer" => self.rpc.pause_container(ctx(), &req).await,
            _ => self.rpc.resume_container(ctx(), &req).await,
        };
        result.map_err(|e| ShimError::agent(rpc, e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use protobuf::Message;

    #[test]
    fn header_frame_is_length_prefixed_protobuf() {
        let frame = stdio_header_frame("c1", "e1", StdioKind::Stderr);
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - 4);
        assert!(len as u32 <= isola_agent_proto::MAX_STDIO_HEADER_LEN);
        let header = StdioStreamHeader::parse_from_bytes(&frame[4..]).unwrap();
        assert_eq!(header.container_id, "c1");
        assert_eq!(header.exec_id, "e1");
        assert_eq!(header.stream.enum_value(), Ok(Stream::STDERR));
    }

    #[test]
    fn stdin_header_of_init_is_minimal() {
        // STDIN is the protobuf default and an empty exec id is omitted: only the id travels.
        let frame = stdio_header_frame("c", "", StdioKind::Stdin);
        assert_eq!(frame, [0, 0, 0, 3, 0x0a, 1, b'c']);
    }
}
