//! vhost-device-vsock, the vhost-user vsock backend used when the host has no
//! /dev/vhost-vsock.
//!
//! It exposes the guest's vsock as "hybrid vsock" on a Unix socket (`uds_path`): the host
//! connects, writes `CONNECT <port>\n` and reads `OK <n>\n`. Guest-initiated connections to
//! host port P arrive on `<uds_path>_P`. Each VM gets its own daemon, so every guest can use
//! the same CID ([`GUEST_CID`]): CIDs of vhost-user devices are private to their daemon.
//!
//! Separate flags are used rather than the `--vm key=value,...` form so that paths containing
//! commas cannot be misparsed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

use super::{Daemon, DaemonError};

/// The daemon's name in messages.
pub const NAME: &str = "vhost-device-vsock";

/// The guest CID given to every vhost-user vsock device (the first non-reserved CID).
pub const GUEST_CID: u32 = 3;

/// How long the daemon gets to create its socket.
pub const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// vhost-device-vsock's command-line arguments (without the binary).
pub fn args(vhost_socket: &Path, uds_path: &Path) -> Vec<String> {
    vec![
        "--guest-cid".into(),
        GUEST_CID.to_string(),
        "--socket".into(),
        vhost_socket.display().to_string(),
        "--uds-path".into(),
        uds_path.display().to_string(),
    ]
}

/// Starts vhost-device-vsock and waits until its vhost-user socket exists.
pub async fn start(
    binary: &Path,
    vhost_socket: PathBuf,
    uds_path: &Path,
    log: PathBuf,
    debug: bool,
) -> Result<Daemon, DaemonError> {
    let mut cmd = Command::new(binary);
    cmd.args(args(&vhost_socket, uds_path));
    // It logs through env_logger; quiet unless debugging.
    cmd.env("RUST_LOG", if debug { "debug" } else { "warn" });
    super::remove_if_exists(uds_path).await;
    Daemon::start(NAME, cmd, vhost_socket, log, READY_TIMEOUT).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_args() {
        assert_eq!(
            args(
                Path::new("/run/x/vhost-vsock.sock"),
                Path::new("/run/x/vsock.sock")
            ),
            [
                "--guest-cid",
                "3",
                "--socket",
                "/run/x/vhost-vsock.sock",
                "--uds-path",
                "/run/x/vsock.sock",
            ]
        );
    }
}
