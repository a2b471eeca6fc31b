//! File names inside a Cloud Hypervisor VM's state directory.

use std::path::{Path, PathBuf};

use crate::qemu::paths::{check_socket_paths, PORT_SUFFIX};
use crate::HypervisorError;

/// Every path the Cloud Hypervisor backend creates under the state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClhPaths {
    /// The REST API socket (`--api-socket`).
    pub api_socket: PathBuf,
    /// The guest serial console log.
    pub console_log: PathBuf,
    /// The VMM's stderr.
    pub vmm_log: PathBuf,
    /// The hybrid vsock socket the host connects to for the agent (guest-initiated
    /// connections arrive on `<it>_<port>`).
    pub vsock_socket: PathBuf,
    /// virtiofsd's vhost-user socket.
    pub virtiofs_socket: PathBuf,
    /// virtiofsd's stdout/stderr.
    pub virtiofsd_log: PathBuf,
}

impl ClhPaths {
    /// The paths for state directory `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            api_socket: dir.join("api.sock"),
            console_log: dir.join("console.log"),
            vmm_log: dir.join("cloud-hypervisor.log"),
            vsock_socket: dir.join("vsock.sock"),
            virtiofs_socket: dir.join("virtiofs.sock"),
            virtiofsd_log: dir.join("virtiofsd.log"),
        }
    }

    /// Fails when a socket path would not fit in `sun_path`.
    pub fn check_socket_lengths(&self) -> Result<(), HypervisorError> {
        check_socket_paths(&[
            (&self.api_socket, 0),
            (&self.virtiofs_socket, 0),
            (&self.vsock_socket, PORT_SUFFIX),
        ])
    }
}
