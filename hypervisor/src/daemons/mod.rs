//! Helper daemons a VM needs next to the VMM: virtiofsd and vhost-device-vsock.
//!
//! Both are vhost-user backends: they create a listening Unix socket and the VMM connects to
//! it at startup, so they must be started (and their socket must exist) before the VMM.
//! Readiness is checked by the socket file appearing, not by connecting: these daemons serve
//! exactly one frontend connection and exit when it closes, so a probe connection would kill
//! them.
//!
//! Each daemon is reaped by a task of its own the moment it exits (no zombie), and its exit is
//! published ([`Daemon::exit_receiver`]) so the VM's supervisor can end a VM whose helper died
//! (see `lifecycle.rs`). Stopping goes through the same task, so a pid is never signalled
//! after it was reaped.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::{oneshot, watch};

use crate::process::{self, duration_ms, SpawnError};
use crate::VmExit;

pub mod virtiofsd;
pub mod vsock;

/// How often readiness is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// How long a stop waits for the reaper beyond the grace period (SIGKILL and reaping).
const STOP_SLACK: Duration = Duration::from_secs(6);

/// Failures of a helper daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Spawning or signalling the process failed.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// The daemon exited before its socket appeared.
    #[error("{name} exited during startup ({status}); its output ends with:\n{log_tail}")]
    ExitedEarly {
        /// Which daemon.
        name: &'static str,
        /// Human-readable exit status.
        status: String,
        /// The last lines of its stderr.
        log_tail: String,
    },
    /// The daemon's socket did not appear in time.
    #[error(
        "{name} did not create {} within {timeout_ms} ms; its output ends with:\n{log_tail}",
        socket.display()
    )]
    SocketTimeout {
        /// Which daemon.
        name: &'static str,
        /// The socket that was expected.
        socket: PathBuf,
        /// The deadline that passed.
        timeout_ms: u64,
        /// The last lines of its stderr.
        log_tail: String,
    },
    /// The daemon did not exit even after SIGKILL.
    #[error("{name} (pid {pid}) did not exit within {timeout_ms} ms of being stopped")]
    Stuck {
        /// Which daemon.
        name: &'static str,
        /// Its pid.
        pid: u32,
        /// How long was waited.
        timeout_ms: u64,
    },
    /// Checking the socket path failed for a reason other than it not existing.
    #[error("checking {} for {name}: {source}", socket.display())]
    SocketCheck {
        /// Which daemon.
        name: &'static str,
        /// The socket path.
        socket: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// A running helper daemon that serves one vhost-user socket.
#[derive(Debug)]
pub struct Daemon {
    name: &'static str,
    pid: u32,
    socket: PathBuf,
    log: PathBuf,
    /// The exit, once the reaper saw it.
    exit: watch::Receiver<Option<VmExit>>,
    /// Asks the reaper to stop the daemon with this grace period; dropped = kill at once.
    stop: Option<oneshot::Sender<Duration>>,
}

impl Daemon {
    /// Spawns `cmd` (see [`process::spawn`]); its output goes to `log`. A stale `socket` left
    /// from an earlier run is removed first so readiness is not misjudged.
    pub async fn spawn(
        name: &'static str,
        cmd: Command,
        socket: PathBuf,
        log: PathBuf,
    ) -> Result<Self, DaemonError> {
        remove_if_exists(&socket).await;
        let mut child = process::spawn(name, cmd, &log).await?;
        let pid = child.id().unwrap_or(0);
        tracing::debug!(name, pid, socket = %socket.display(), "spawned helper daemon");
        let (exit_tx, exit) = watch::channel(None);
        let (stop, stop_rx) = oneshot::channel::<Duration>();
        tokio::spawn(async move {
            let status = tokio::select! {
                status = child.wait() => status.map_err(|source| SpawnError::Wait { name, pid, source }),
                // A stop request, or the Daemon was dropped (grace zero).
                grace = stop_rx => process::terminate(name, &mut child, grace.unwrap_or(Duration::ZERO)).await,
            };
            let exit = match status {
                Ok(status) => process::exit_of(status),
                Err(e) => {
                    tracing::warn!(name, pid, error = %e, "reaping a helper daemon failed");
                    VmExit {
                        code: None,
                        signal: None,
                    }
                }
            };
            tracing::debug!(name, pid, %exit, "helper daemon exited");
            exit_tx.send_replace(Some(exit));
        });
        Ok(Self {
            name,
            pid,
            socket,
            log,
            exit,
            stop: Some(stop),
        })
    }

    /// [`spawn`](Self::spawn) followed by [`wait_ready`](Self::wait_ready); a daemon that does
    /// not get ready is stopped again before the error is returned.
    pub async fn start(
        name: &'static str,
        cmd: Command,
        socket: PathBuf,
        log: PathBuf,
        ready_timeout: Duration,
    ) -> Result<Self, DaemonError> {
        let mut daemon = Self::spawn(name, cmd, socket, log).await?;
        if let Err(e) = daemon.wait_ready(ready_timeout).await {
            let _ = daemon.stop(Duration::ZERO).await;
            return Err(e);
        }
        Ok(daemon)
    }

    /// The daemon's name ("virtiofsd", "vhost-device-vsock").
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The vhost-user socket the VMM connects to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A receiver that sees the daemon's exit.
    pub fn exit_receiver(&self) -> watch::Receiver<Option<VmExit>> {
        self.exit.clone()
    }

    /// Waits until the socket exists. Fails early, with the daemon's output, if it exits.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), DaemonError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let exited = *self.exit.borrow();
            if let Some(exit) = exited {
                return Err(DaemonError::ExitedEarly {
                    name: self.name,
                    status: exit.to_string(),
                    log_tail: process::tail_file(&self.log).await,
                });
            }
            match tokio::fs::try_exists(&self.socket).await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(source) => {
                    return Err(DaemonError::SocketCheck {
                        name: self.name,
                        socket: self.socket.clone(),
                        source,
                    })
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(DaemonError::SocketTimeout {
                    name: self.name,
                    socket: self.socket.clone(),
                    timeout_ms: duration_ms(timeout),
                    log_tail: process::tail_file(&self.log).await,
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Stops the daemon (SIGTERM, then SIGKILL after `grace`), waits for the reaper and removes
    /// its socket.
    pub async fn stop(mut self, grace: Duration) -> Result<(), DaemonError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(grace);
        }
        let bound = grace + STOP_SLACK;
        let exited = tokio::time::timeout(bound, self.exit.wait_for(Option::is_some))
            .await
            .map(|r| r.map(|exit| *exit));
        remove_if_exists(&self.socket).await;
        match exited {
            Ok(Ok(exit)) => {
                tracing::debug!(name = self.name, pid = self.pid, exit = ?exit, "helper daemon stopped");
                Ok(())
            }
            // The reaper is gone only with the runtime: nothing left to wait for.
            Ok(Err(_)) => Ok(()),
            Err(_) => Err(DaemonError::Stuck {
                name: self.name,
                pid: self.pid,
                timeout_ms: duration_ms(bound),
            }),
        }
    }
}

/// Removes a file, ignoring "not found" (and logging other failures: the caller proceeds,
/// and the state directory is removed as a whole later anyway).
pub(crate) async fn remove_if_exists(path: &Path) {
    match tokio::fs::remove_file(path).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::debug!(path = %path.display(), error = %e, "cannot remove file"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_when_socket_appears_and_stop_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("d.sock");
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(format!(
            "sleep 0.1; touch {}; exec sleep 30",
            sock.display()
        ));
        let mut d = Daemon::spawn("fake", cmd, sock.clone(), dir.path().join("d.log"))
            .await
            .unwrap();
        d.wait_ready(Duration::from_secs(5)).await.unwrap();
        d.stop(Duration::from_secs(1)).await.unwrap();
        assert!(!sock.exists());
    }

    #[tokio::test]
    async fn early_exit_reports_output() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "echo 'bad flag --frobnicate' >&2; exit 2"]);
        let mut d = Daemon::spawn("fake", cmd, dir.path().join("s"), dir.path().join("l"))
            .await
            .unwrap();
        let err = d.wait_ready(Duration::from_secs(5)).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, DaemonError::ExitedEarly { .. }), "{err:?}");
        assert!(
            msg.contains("exit code 2") && msg.contains("--frobnicate"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn socket_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "echo starting >&2; exec sleep 30"]);
        let mut d = Daemon::spawn("fake", cmd, dir.path().join("s"), dir.path().join("l"))
            .await
            .unwrap();
        let err = d.wait_ready(Duration::from_millis(200)).await.unwrap_err();
        assert!(matches!(err, DaemonError::SocketTimeout { .. }), "{err:?}");
        assert!(err.to_string().contains("starting"), "{err}");
        d.stop(Duration::from_millis(500)).await.unwrap();
    }

    #[tokio::test]
    async fn a_dying_daemon_is_reaped_at_once_and_its_exit_published() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "exec sleep 30"]);
        let d = Daemon::spawn("fake", cmd, dir.path().join("s"), dir.path().join("l"))
            .await
            .unwrap();
        let mut exit = d.exit_receiver();
        assert!(exit.borrow().is_none());
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(d.pid()).unwrap()),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(2), exit.wait_for(Option::is_some))
            .await
            .expect("the exit is seen at once")
            .unwrap()
            .unwrap();
        assert_eq!(got.signal, Some(9));
        // Reaped: no zombie left under our pid.
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", d.pid()));
        assert!(stat.is_err(), "still there: {stat:?}");
        d.stop(Duration::from_millis(100)).await.unwrap();
    }
}
