//! The VMM process (QEMU, Cloud Hypervisor): spawning it, reaping it in a background task,
//! killing it, and the exit every backend's `wait()` reports ([`ExitWatch`]). Each backend
//! waits for its own control channel on top of it ([`VmmProcess::wait_control`]).
//!
//! A reaper task owns the [`tokio::process::Child`] and publishes the exit on a
//! `watch` channel, so any number of waiters see it, immediately (tokio reaps on SIGCHLD)
//! and forever after. Killing goes through the same task ([`KillHandle`]), so a pid is never
//! signalled after it was reaped and possibly reused. Dropping the [`VmmProcess`] asks the
//! task to kill it.

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use tokio::process::Command;
use tokio::sync::{watch, Notify};

use crate::process::{self, duration_ms};
use crate::{HypervisorError, VmExit};

/// How often [`VmmProcess::wait_control`] polls for the control socket during startup.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// How long to wait for the exit of a VMM whose control connection failed during startup, to
/// tell "the VMM died" (with its stderr) from a control-channel problem.
const EXIT_GRACE: Duration = Duration::from_millis(500);

/// A running (or exited, not yet dropped) VMM process.
#[derive(Debug)]
pub struct VmmProcess {
    name: &'static str,
    pid: u32,
    kill: KillHandle,
    exit_rx: watch::Receiver<Option<VmExit>>,
    log: PathBuf,
}

impl VmmProcess {
    /// Spawns the VMM `name` from `path` with `args`, its stderr going to `log` and its stdout
    /// (the guest serial console: the VMM's `-serial stdio`, Cloud Hypervisor's `--serial tty`)
    /// to the size-capped `console` log, and starts the reaper. The VMM inherits the
    /// descriptors `inherited` (the VMM's taps and vhost-net) under their numbers.
    pub async fn spawn(
        name: &'static str,
        path: &Path,
        args: &[String],
        log: &Path,
        console: &Path,
        sandbox: &str,
        inherited: &[RawFd],
    ) -> Result<Self, HypervisorError> {
        let mut cmd = Command::new(path);
        // Cloud Hypervisor dies with SIGSYS when a vCPU error makes it build a backtrace
        // (statx is not in its vCPU threads' seccomp filter): never hand it RUST_BACKTRACE.
        cmd.args(args).env_remove("RUST_BACKTRACE");
        let mut child = process::spawn_piped_stdout_keeping(name, cmd, log, inherited).await?;
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(crate::console::pump(
                stdout,
                console.to_owned(),
                crate::console::DEFAULT_CONSOLE_LOG_MAX,
            ));
        }
        let pid = child.id().unwrap_or(0);
        let kill = KillHandle(Arc::new(Notify::new()));
        let kill_rx = kill.clone();
        let (exit_tx, exit_rx) = watch::channel(None);
        let task_sandbox = sandbox.to_owned();
        tokio::spawn(async move {
            let sandbox = task_sandbox;
            let status = tokio::select! {
                status = child.wait() => status,
                // An explicit kill request, or the VmmProcess was dropped.
                () = kill_rx.0.notified() => {
                    let _ = child.start_kill();
                    child.wait().await
                }
            };
            let exit = match status {
                Ok(status) => process::exit_of(status),
                Err(e) => {
                    tracing::warn!(%sandbox, pid, vmm = name, error = %e, "waiting for the VMM failed");
                    VmExit {
                        code: None,
                        signal: None,
                    }
                }
            };
            tracing::info!(%sandbox, pid, vmm = name, %exit, "VMM exited");
            exit_tx.send_replace(Some(exit));
        });
        tracing::debug!(%sandbox, pid, vmm = name, "spawned the VMM");
        Ok(Self {
            name,
            pid,
            kill,
            exit_rx,
            log: log.to_owned(),
        })
    }

    /// The VMM's name in messages ("qemu", "cloud-hypervisor").
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The VMM's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit, if the VMM has exited.
    pub fn exited(&self) -> Option<VmExit> {
        *self.exit_rx.borrow()
    }

    /// A receiver that sees the exit.
    pub fn exit_receiver(&self) -> watch::Receiver<Option<VmExit>> {
        self.exit_rx.clone()
    }

    /// Waits up to `timeout` for the VMM to exit.
    pub async fn wait_exit(&self, timeout: Duration) -> Option<VmExit> {
        let mut rx = self.exit_rx.clone();
        let res = tokio::time::timeout(timeout, rx.wait_for(Option::is_some)).await;
        match res {
            Ok(Ok(exit)) => *exit,
            // Timed out, or the reaper vanished (runtime shutting down).
            _ => None,
        }
    }

    /// A handle that SIGKILLs the VMM from elsewhere (e.g. an event watcher).
    pub fn kill_handle(&self) -> KillHandle {
        self.kill.clone()
    }

    /// SIGKILLs the VMM and waits up to `timeout` for the reaper to see it exit.
    pub async fn kill(&mut self, timeout: Duration) -> Result<VmExit, HypervisorError> {
        self.kill.kill();
        self.wait_exit(timeout)
            .await
            .ok_or(HypervisorError::VmmStuck {
                vmm: self.name,
                pid: self.pid,
                timeout_ms: duration_ms(timeout),
            })
    }

    /// The "exited during startup" error, with the end of the VMM's stderr.
    pub async fn early_exit_error(&self, exit: VmExit) -> HypervisorError {
        HypervisorError::VmmExitedEarly {
            vmm: self.name,
            status: exit.to_string(),
            stderr_tail: process::tail_file(&self.log).await,
        }
    }

    /// Waits until the VMM's control socket exists and `attempt` (given the time left)
    /// connects to it, within `timeout`. Fails early, with the VMM's stderr, if the VMM exits
    /// first, and also when an attempt fails and the VMM exits right after (the failure was
    /// its death). Polls every [`POLL_INTERVAL`], waking at once when the VMM exits.
    pub async fn wait_control<T, F, Fut>(
        &self,
        socket: &Path,
        timeout: Duration,
        mut attempt: F,
    ) -> Result<T, HypervisorError>
    where
        F: FnMut(Duration) -> Fut,
        Fut: std::future::Future<Output = Attempt<T>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(exit) = self.exited() {
                return Err(self.early_exit_error(exit).await);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(HypervisorError::VmmStartTimeout {
                    vmm: self.name,
                    timeout_ms: duration_ms(timeout),
                });
            }
            if tokio::fs::try_exists(socket).await.unwrap_or(false) {
                match attempt(deadline - now).await {
                    Attempt::Ready(t) => return Ok(t),
                    Attempt::NotYet => {}
                    Attempt::Failed(e) => {
                        return match self.wait_exit(EXIT_GRACE).await {
                            Some(exit) => Err(self.early_exit_error(exit).await),
                            None => Err(e),
                        }
                    }
                }
            }
            let mut rx = self.exit_rx.clone();
            let _ = tokio::time::timeout(POLL_INTERVAL, rx.wait_for(Option::is_some)).await;
        }
    }
}

impl Drop for VmmProcess {
    fn drop(&mut self) {
        self.kill.kill();
    }
}

/// Asks the reaper task of a [`VmmProcess`] to SIGKILL it (a no-op once it exited).
#[derive(Debug, Clone)]
pub struct KillHandle(Arc<Notify>);

impl KillHandle {
    /// A handle and what it notifies, for tests of its users.
    #[cfg(test)]
    pub(crate) fn for_test() -> (KillHandle, Arc<Notify>) {
        let notify = Arc::new(Notify::new());
        (KillHandle(notify.clone()), notify)
    }

    /// Requests the kill; returns at once.
    pub fn kill(&self) {
        // A stored permit: the reaper sees it even if it is not waiting yet.
        self.0.notify_one();
    }
}

/// What a backend's `wait()` observes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitState {
    /// Not started yet, or running.
    Pending,
    /// The VMM exited.
    Exited(VmExit),
    /// start() failed before the VMM ran, or its reaper vanished (runtime shutdown).
    Lost,
}

/// The exit of a backend's VMM, for any number of waiters, before and after it happens.
#[derive(Debug, Clone)]
pub struct ExitWatch(Arc<watch::Sender<ExitState>>);

impl Default for ExitWatch {
    fn default() -> Self {
        Self(Arc::new(watch::channel(ExitState::Pending).0))
    }
}

impl ExitWatch {
    /// The current state.
    pub fn state(&self) -> ExitState {
        *self.0.borrow()
    }

    /// Whether the VMM has not exited (or was never started).
    pub fn pending(&self) -> bool {
        self.state() == ExitState::Pending
    }

    /// Records `state`.
    pub fn set(&self, state: ExitState) {
        self.0.send_replace(state);
    }

    /// Records the exit of `vmm` when it happens (from a background task).
    pub fn follow(&self, vmm: &VmmProcess) {
        let mut rx = vmm.exit_receiver();
        let tx = Arc::clone(&self.0);
        tokio::spawn(async move {
            let state = match rx.wait_for(Option::is_some).await {
                Ok(exit) => exit.map_or(ExitState::Lost, ExitState::Exited),
                Err(_) => ExitState::Lost,
            };
            tx.send_replace(state);
        });
    }

    /// Waits for the exit of VM `id`: [`HypervisorError::NotRunning`] if it was lost.
    pub async fn wait(&self, id: &str) -> Result<VmExit, HypervisorError> {
        let mut rx = self.0.subscribe();
        let state = *rx
            .wait_for(|s| *s != ExitState::Pending)
            .await
            .map_err(|_| HypervisorError::NotRunning(id.to_owned()))?;
        match state {
            ExitState::Exited(exit) => Ok(exit),
            ExitState::Pending | ExitState::Lost => Err(HypervisorError::NotRunning(id.to_owned())),
        }
    }
}

/// Creates a VM's state directory, private to the owner.
pub async fn create_state_dir(dir: &Path) -> Result<(), HypervisorError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |action, source| HypervisorError::StateDir {
        action,
        path: dir.to_owned(),
        source,
    };
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| err("creating", e))?;
    tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .await
        .map_err(|e| err("setting permissions of", e))
}

/// Removes a VM's state directory (gone already is fine).
pub async fn remove_state_dir(dir: &Path) -> Result<(), HypervisorError> {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(HypervisorError::StateDir {
            action: "removing",
            path: dir.to_owned(),
            source,
        }),
    }
}

/// One try of [`VmmProcess::wait_control`].
#[derive(Debug)]
pub enum Attempt<T> {
    /// Connected.
    Ready(T),
    /// The socket is there but not answering yet (bound, not listening): poll again.
    NotYet,
    /// A real failure.
    Failed(HypervisorError),
}
