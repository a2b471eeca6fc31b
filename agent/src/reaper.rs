//! Reaping: as PID 1 every orphan in the guest becomes our child, and only we can collect it.
//!
//! One task owns `waitpid(-1)`. Code that starts a process registers its pid with [`Reaper::watch`]
//! *while holding the reaper's lock across the fork* ([`Reaper::spawn_watched`]) so an exit can
//! never be collected before someone waits for it; any other exit (an orphan) is logged and
//! dropped. Nothing else in the agent may call `wait`/`waitpid` (so no `tokio::process`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

/// How a process ended, as containerd reports it: the exit code, or 128+N for signal N.
// Its caller is container process management (the next piece of work).
#[allow(dead_code)]
pub fn exit_code(status: &WaitStatus) -> Option<i32> {
    match *status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}

/// Routes child exits to whoever registered for them.
#[derive(Clone, Default)]
pub struct Reaper {
    waiters: Arc<Mutex<HashMap<Pid, oneshot::Sender<WaitStatus>>>>,
}

impl Reaper {
    /// Starts the reaping task. Must be called from within a tokio runtime.
    pub fn start() -> std::io::Result<Reaper> {
        let reaper = Reaper::default();
        let mut sigchld = signal(SignalKind::child())?;
        let r = reaper.clone();
        tokio::spawn(async move {
            loop {
                r.reap_ready();
                if sigchld.recv().await.is_none() {
                    tracing::error!("SIGCHLD stream ended; no more children will be reaped");
                    return;
                }
            }
        });
        Ok(reaper)
    }

    /// Runs `spawn` (which forks and returns the child's pid) with the lock held, and registers
    /// the pid before any exit can be collected.
    // Its caller is container process management (the next piece of work).
    #[allow(dead_code)]
    pub fn spawn_watched<E>(
        &self,
        spawn: impl FnOnce() -> Result<Pid, E>,
    ) -> Result<(Pid, oneshot::Receiver<WaitStatus>), E> {
        let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        let pid = spawn()?;
        let (tx, rx) = oneshot::channel();
        waiters.insert(pid, tx);
        Ok((pid, rx))
    }

    /// Collects every child that has exited, without blocking.
    fn reap_ready(&self) {
        loop {
            // Hold the lock across waitpid so a concurrent spawn_watched finishes registering
            // before its child can be collected.
            let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(status) => {
                    let Some(pid) = status.pid() else { continue };
                    match waiters.remove(&pid) {
                        Some(tx) => {
                            let _ = tx.send(status);
                        }
                        None => tracing::debug!(pid = pid.as_raw(), ?status, "reaped orphan"),
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "waitpid failed");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! These tests reap every child of the test process: they rely on nextest running each test
    //! in its own process.
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::time::Duration;

    fn spawn(cmd: &str) -> Result<Pid, std::io::Error> {
        let child = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(cmd)
            .process_group(0)
            .spawn()?;
        Ok(Pid::from_raw(child.id() as i32))
    }

    #[tokio::test]
    async fn reports_exit_codes_and_signals() {
        let reaper = Reaper::start().unwrap();
        let (_, three) = reaper.spawn_watched(|| spawn("exit 3")).unwrap();
        let (_, killed) = reaper.spawn_watched(|| spawn("kill -9 $$")).unwrap();
        let three = tokio::time::timeout(Duration::from_secs(10), three)
            .await
            .unwrap()
            .unwrap();
        let killed = tokio::time::timeout(Duration::from_secs(10), killed)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(exit_code(&three), Some(3));
        assert_eq!(exit_code(&killed), Some(137));
    }

    #[tokio::test]
    async fn exit_before_registration_is_not_lost() {
        let reaper = Reaper::start().unwrap();
        // The child exits at once; registration happens under the lock, so it still arrives.
        let (_, rx) = reaper
            .spawn_watched(|| {
                let pid = spawn("exit 0");
                std::thread::sleep(Duration::from_millis(200));
                pid
            })
            .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(exit_code(&status), Some(0));
    }
}
