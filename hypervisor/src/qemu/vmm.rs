//! The QEMU process: spawning it, reaping it in a background task, killing it, and waiting
//! for its QMP socket to answer.
//!
//! A reaper task owns the [`tokio::process::Child`] and publishes the exit on a
//! `watch` channel, so any number of waiters see it, immediately (tokio reaps on SIGCHLD)
//! and forever after. Killing goes through the same task (a oneshot), so a pid is never
//! signalled after it was reaped and possibly reused. Dropping the [`VmmProcess`] drops that
//! oneshot's sender, which the task treats as a kill request.

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::{oneshot, watch};

use super::qmp::{QmpClient, QmpError, DEFAULT_TIMEOUT};
use crate::process::{self, duration_ms};
use crate::{HypervisorError, VmExit};

/// Name of the VMM in messages.
pub const NAME: &str = "qemu";

/// How often the QMP socket's appearance is polled during startup.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// How long to wait for the exit of a QEMU whose QMP connection failed during startup, to
/// tell "QEMU died" (with its stderr) from a QMP problem.
const EXIT_GRACE: Duration = Duration::from_millis(500);

/// A running (or exited, not yet dropped) QEMU process.
#[derive(Debug)]
pub struct VmmProcess {
    pid: u32,
    kill_tx: Option<oneshot::Sender<()>>,
    exit_rx: watch::Receiver<Option<VmExit>>,
    log: PathBuf,
}

impl VmmProcess {
    /// Spawns `qemu_path` with `args`, its stderr going to `log` and its stdout (the guest
    /// serial console, `-serial stdio`) to the size-capped `console` log, and starts the reaper.
    /// QEMU inherits the descriptors `inherited` (tap and vhost-net) under their numbers.
    pub async fn spawn(
        qemu_path: &Path,
        args: &[String],
        log: &Path,
        console: &Path,
        sandbox: &str,
        inherited: &[RawFd],
    ) -> Result<Self, HypervisorError> {
        let mut cmd = Command::new(qemu_path);
        cmd.args(args);
        let mut child = process::spawn_piped_stdout_keeping(NAME, cmd, log, inherited).await?;
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(crate::console::pump(
                stdout,
                console.to_owned(),
                crate::console::DEFAULT_CONSOLE_LOG_MAX,
            ));
        }
        let pid = child.id().unwrap_or(0);
        let (kill_tx, mut kill_rx) = oneshot::channel::<()>();
        let (exit_tx, exit_rx) = watch::channel(None);
        let task_sandbox = sandbox.to_owned();
        tokio::spawn(async move {
            let sandbox = task_sandbox;
            let status = tokio::select! {
                status = child.wait() => status,
                // An explicit kill request, or the VmmProcess was dropped.
                _ = &mut kill_rx => {
                    let _ = child.start_kill();
                    child.wait().await
                }
            };
            let exit = match status {
                Ok(status) => process::exit_of(status),
                Err(e) => {
                    tracing::warn!(%sandbox, pid, error = %e, "waiting for qemu failed");
                    VmExit {
                        code: None,
                        signal: None,
                    }
                }
            };
            tracing::info!(%sandbox, pid, %exit, "qemu exited");
            exit_tx.send_replace(Some(exit));
        });
        tracing::debug!(%sandbox, pid, "spawned qemu");
        Ok(Self {
            pid,
            kill_tx: Some(kill_tx),
            exit_rx,
            log: log.to_owned(),
        })
    }

    /// QEMU's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit, if QEMU has exited.
    pub fn exited(&self) -> Option<VmExit> {
        *self.exit_rx.borrow()
    }

    /// A receiver that sees the exit.
    pub fn exit_receiver(&self) -> watch::Receiver<Option<VmExit>> {
        self.exit_rx.clone()
    }

    /// Waits up to `timeout` for QEMU to exit.
    pub async fn wait_exit(&self, timeout: Duration) -> Option<VmExit> {
        let mut rx = self.exit_rx.clone();
        let res = tokio::time::timeout(timeout, rx.wait_for(Option::is_some)).await;
        match res {
            Ok(Ok(exit)) => *exit,
            // Timed out, or the reaper vanished (runtime shutting down).
            _ => None,
        }
    }

    /// SIGKILLs QEMU and waits up to `timeout` for the reaper to see it exit.
    pub async fn kill(&mut self, timeout: Duration) -> Result<VmExit, HypervisorError> {
        if let Some(tx) = self.kill_tx.take() {
            let _ = tx.send(());
        }
        self.wait_exit(timeout)
            .await
            .ok_or(HypervisorError::VmmStuck {
                vmm: NAME,
                pid: self.pid,
                timeout_ms: duration_ms(timeout),
            })
    }

    /// The "exited during startup" error, with the end of QEMU's stderr.
    pub async fn early_exit_error(&self, exit: VmExit) -> HypervisorError {
        HypervisorError::VmmExitedEarly {
            vmm: NAME,
            status: exit.to_string(),
            stderr_tail: process::tail_file(&self.log).await,
        }
    }

    /// Waits until QEMU's QMP socket exists and answers the handshake, within `timeout`.
    /// Fails early, with QEMU's stderr, if QEMU exits first.
    ///
    /// QEMU creates the socket while parsing its options but only sends the greeting once its
    /// main loop runs, i.e. after the machine and all devices (including the vhost-user
    /// connections) are set up; a successful handshake therefore means the VMM is running.
    pub async fn connect_qmp(
        &self,
        socket: &Path,
        timeout: Duration,
        sandbox: &str,
    ) -> Result<QmpClient, HypervisorError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let timed_out = || HypervisorError::VmmStartTimeout {
            vmm: NAME,
            timeout_ms: duration_ms(timeout),
        };
        loop {
            if let Some(exit) = self.exited() {
                return Err(self.early_exit_error(exit).await);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(timed_out());
            }
            if tokio::fs::try_exists(socket).await.unwrap_or(false) {
                let remaining = deadline - now;
                return match QmpClient::connect(socket, remaining, sandbox).await {
                    Ok(mut client) => {
                        client.set_timeout(DEFAULT_TIMEOUT);
                        Ok(client)
                    }
                    // QEMU binds the socket before it listens on it: not yet, poll again.
                    Err(QmpError::Connect { source, .. })
                        if source.kind() == std::io::ErrorKind::ConnectionRefused =>
                    {
                        let mut rx = self.exit_rx.clone();
                        let _ =
                            tokio::time::timeout(POLL_INTERVAL, rx.wait_for(Option::is_some)).await;
                        continue;
                    }
                    Err(e) => match self.wait_exit(EXIT_GRACE).await {
                        Some(exit) => Err(self.early_exit_error(exit).await),
                        None => Err(e.into()),
                    },
                };
            }
            // Sleep, but wake up at once if QEMU exits.
            let mut rx = self.exit_rx.clone();
            let _ = tokio::time::timeout(POLL_INTERVAL, rx.wait_for(Option::is_some)).await;
        }
    }
}
