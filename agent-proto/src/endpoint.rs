//! Where the host reaches the agent: a hypervisor backend says it, the agent client dials it.

use std::path::PathBuf;

/// How the host reaches the guest agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEndpoint {
    /// Kernel vsock (host has /dev/vhost-vsock): connect to (cid, port) with AF_VSOCK.
    Vsock {
        /// The guest's context id.
        cid: u32,
        /// The port the agent listens on.
        port: u32,
    },
    /// Hybrid vsock over a Unix socket (vhost-device-vsock, Cloud Hypervisor): connect to
    /// `path`, write `"CONNECT <port>\n"`, read one `"OK <n>\n"` line, then the stream is raw.
    HybridVsock {
        /// The host-side Unix socket.
        path: PathBuf,
        /// The guest port to ask for in the CONNECT line.
        port: u32,
    },
}
