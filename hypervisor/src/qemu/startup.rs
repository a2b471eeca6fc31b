//! Waiting for QEMU's QMP socket to answer during startup.

use std::path::Path;
use std::time::Duration;

use super::qmp::{QmpClient, QmpError, DEFAULT_TIMEOUT};
use crate::vmm::{Attempt, VmmProcess};
use crate::HypervisorError;

/// Waits until QEMU's QMP socket exists and answers the handshake, within `timeout`.
/// Fails early, with QEMU's stderr, if QEMU exits first.
///
/// QEMU creates the socket while parsing its options but only sends the greeting once its
/// main loop runs, i.e. after the machine and all devices (including the vhost-user
/// connections) are set up; a successful handshake therefore means the VMM is running.
pub async fn connect_qmp(
    vmm: &VmmProcess,
    socket: &Path,
    timeout: Duration,
    sandbox: &str,
) -> Result<QmpClient, HypervisorError> {
    vmm.wait_control(socket, timeout, |remaining| async move {
        match QmpClient::connect(socket, remaining, sandbox).await {
            Ok(mut client) => {
                client.set_timeout(DEFAULT_TIMEOUT);
                Attempt::Ready(client)
            }
            // QEMU binds the socket before it listens on it: not yet, poll again.
            Err(QmpError::Connect { source, .. })
                if source.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                Attempt::NotYet
            }
            Err(e) => Attempt::Failed(e.into()),
        }
    })
    .await
}
