//! File names inside a VM's state directory.

use std::path::{Path, PathBuf};

use crate::HypervisorError;

/// Longest Unix socket path the kernel accepts (`sun_path` is 108 bytes with the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Room for the `_<port>` suffix vhost-device-vsock appends for guest-initiated connections.
pub(crate) const PORT_SUFFIX: usize = "_4294967295".len();

/// Every path the QEMU backend creates under the state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatePaths {
    /// QEMU's QMP socket.
    pub qmp_socket: PathBuf,
    /// The guest serial console log.
    pub console_log: PathBuf,
    /// QEMU's stdout/stderr.
    pub qemu_log: PathBuf,
    /// vhost-device-vsock's vhost-user socket (QEMU connects to it).
    pub vhost_vsock_socket: PathBuf,
    /// The hybrid vsock socket the host connects to for the agent.
    pub hybrid_vsock_socket: PathBuf,
    /// vhost-device-vsock's stdout/stderr.
    pub vhost_vsock_log: PathBuf,
    /// virtiofsd's vhost-user socket.
    pub virtiofs_socket: PathBuf,
    /// virtiofsd's stdout/stderr.
    pub virtiofsd_log: PathBuf,
}

impl StatePaths {
    /// The paths for state directory `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            qmp_socket: dir.join("qmp.sock"),
            console_log: dir.join("console.log"),
            qemu_log: dir.join("qemu.log"),
            vhost_vsock_socket: dir.join("vhost-vsock.sock"),
            hybrid_vsock_socket: dir.join("vsock.sock"),
            vhost_vsock_log: dir.join("vhost-device-vsock.log"),
            virtiofs_socket: dir.join("virtiofs.sock"),
            virtiofsd_log: dir.join("virtiofsd.log"),
        }
    }

    /// Fails when a socket path would not fit in `sun_path`.
    pub fn check_socket_lengths(&self) -> Result<(), HypervisorError> {
        check_socket_paths(&[
            (&self.qmp_socket, 0),
            (&self.vhost_vsock_socket, 0),
            (&self.virtiofs_socket, 0),
            (&self.hybrid_vsock_socket, PORT_SUFFIX),
        ])
    }
}

/// Fails when one of `sockets` (a path and the room a suffix appended to it needs) would not
/// fit in `sun_path`.
pub(crate) fn check_socket_paths(sockets: &[(&PathBuf, usize)]) -> Result<(), HypervisorError> {
    for (p, extra) in sockets {
        let len = p.as_os_str().len() + extra;
        if len > MAX_SOCKET_PATH {
            return Err(HypervisorError::InvalidConfig(format!(
                "socket path {} is {len} bytes (with suffixes), over the {MAX_SOCKET_PATH}-byte \
                 Unix socket limit; use a shorter state_dir",
                p.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_length_limit() {
        assert!(StatePaths::new(Path::new("/run/isola/abc"))
            .check_socket_lengths()
            .is_ok());
        let long = format!("/run/{}", "x".repeat(90));
        let err = StatePaths::new(Path::new(&long))
            .check_socket_lengths()
            .unwrap_err();
        assert!(err.to_string().contains("shorter state_dir"), "{err}");
    }
}
