//! virtiofsd, the virtio-fs vhost-user backend that serves a host directory to the guest.
//!
//! Flags are those of the Rust virtiofsd (1.x). Its thread pool is off by default
//! (`--thread-pool-size 0`), which is what we want for small sandboxes; submount announcement
//! is on by default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

use super::{Daemon, DaemonError};
use crate::SharedFsConfig;

/// The daemon's name in messages.
pub const NAME: &str = "virtiofsd";

/// How long virtiofsd gets to create its socket.
pub const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// virtiofsd's command-line arguments (without the binary).
pub fn args(cfg: &SharedFsConfig, socket: &Path, debug: bool) -> Vec<String> {
    vec![
        "--socket-path".into(),
        socket.display().to_string(),
        "--shared-dir".into(),
        cfg.shared_dir.display().to_string(),
        "--cache".into(),
        cfg.cache.clone(),
        "--sandbox".into(),
        cfg.sandbox.clone(),
        "--log-level".into(),
        if debug { "debug" } else { "warn" }.into(),
    ]
}

/// Starts virtiofsd for `cfg` on `socket` and waits until the socket exists.
pub async fn start(
    cfg: &SharedFsConfig,
    socket: PathBuf,
    log: PathBuf,
    debug: bool,
) -> Result<Daemon, DaemonError> {
    let mut cmd = Command::new(&cfg.virtiofsd_path);
    cmd.args(args(cfg, &socket, debug));
    Daemon::start(NAME, cmd, socket, log, READY_TIMEOUT).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_args() {
        let cfg = SharedFsConfig {
            virtiofsd_path: "/usr/libexec/virtiofsd".into(),
            shared_dir: "/run/isola/sb1/shared".into(),
            cache: "auto".into(),
            sandbox: "namespace".into(),
            tag: "isola".into(),
        };
        assert_eq!(
            args(&cfg, Path::new("/run/isola/sb1/virtiofs.sock"), false),
            [
                "--socket-path",
                "/run/isola/sb1/virtiofs.sock",
                "--shared-dir",
                "/run/isola/sb1/shared",
                "--cache",
                "auto",
                "--sandbox",
                "namespace",
                "--log-level",
                "warn",
            ]
        );
        assert_eq!(args(&cfg, Path::new("/s"), true).last().unwrap(), "debug");
    }
}
