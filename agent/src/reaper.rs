//! Reaping: as PID 1 every orphan in the guest becomes our child, and only we can collect it.
//!
//! One task owns `waitpid(-1)`. Nothing else in the agent process may call `wait`/`waitpid`
//! (so no `tokio::process`, no `std::process::Child::wait`). Exits reach their owners two ways:
//!
//! * **Children the agent forks itself** (the libcontainer helper, see [`crate::libct`]) are
//!   registered by [`Reaper::spawn_watched`], which holds the reaper's lock across the fork: an
//!   exit can never be collected before its waiter exists.
//! * **Container processes** (a container's init, an exec) are not forked by the agent. The
//!   helper process forks them (through libcontainer's intermediate process, with
//!   `CLONE_PARENT`), so they are the helper's children; when the helper exits they are
//!   re-parented to PID 1 (or to the agent as child subreaper when it runs outside a VM). Their
//!   pid is known only when the helper answers, and such a process may already have exited and
//!   been reaped by then (an exec of `true`, a container killed before start). Exits nobody
//!   waits for are therefore kept in a bounded cache of recent unclaimed exits
//!   ([`UNCLAIMED_CAPACITY`] entries, oldest dropped first) that [`Reaper::watch_since`]
//!   consults before registering a waiter.
//!
//! **Pid reuse.** A cached exit could belong to an older process that had the same pid. The
//! caller of [`Reaper::watch_since`] passes the instant *before* it asked the helper to create
//! the process; a process can only reuse a pid after the previous owner was reaped, so an exit
//! reaped before that instant can never be the new process's and is ignored. (A false match would
//! need the pid space to wrap around during one helper run.)
//!
//! **libcontainer's own `waitpid` calls.** libcontainer waits for its intermediate process, and
//! runs OCI hooks with `std::process::Command` and waits for them. A global `waitpid(-1)` in the
//! same process could steal those statuses; forking from the agent's multi-threaded runtime
//! would also be unsafe (clone3 without glibc's fork handlers, then allocation and logging in the
//! child). libcontainer therefore never runs inside the agent process: every operation that
//! forks runs in a short-lived, single-threaded helper process (`/proc/self/exe` re-executed),
//! whose `waitpid` calls only ever see the helper's own children. The agent's reaper only ever
//! sees the helper itself (registered) and the container processes it leaves behind (cached or
//! watched).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

/// How many unclaimed exits are remembered.
pub const UNCLAIMED_CAPACITY: usize = 1024;

/// How a process ended, as containerd reports it: the exit code, or 128+N for signal N.
pub fn exit_code(status: &WaitStatus) -> Option<i32> {
    match *status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}

/// One collected exit.
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    pub status: WaitStatus,
    /// Wall-clock time of the reap (reported to the host as the exit time).
    pub at: SystemTime,
    /// Monotonic time of the reap (for the pid-reuse check).
    pub reaped: Instant,
}

impl Exit {
    fn now(status: WaitStatus) -> Exit {
        Exit {
            status,
            at: SystemTime::now(),
            reaped: Instant::now(),
        }
    }

    /// The containerd-style exit status (see [`exit_code`]); 255 for anything unexpected.
    pub fn code(&self) -> i32 {
        exit_code(&self.status).unwrap_or(255)
    }
}

/// Waiters and the cache of unclaimed exits.
#[derive(Default)]
struct State {
    waiters: HashMap<Pid, oneshot::Sender<Exit>>,
    unclaimed: VecDeque<(Pid, Exit)>,
}

impl State {
    /// Hands an exit to its waiter, or remembers it.
    fn deliver(&mut self, pid: Pid, exit: Exit) {
        match self.waiters.remove(&pid) {
            Some(tx) => {
                let _ = tx.send(exit);
            }
            None => {
                tracing::debug!(pid = pid.as_raw(), status = ?exit.status, "reaped an exit nobody waits for (yet)");
                // A newer exit of the same pid replaces the older one.
                self.unclaimed.retain(|(p, _)| *p != pid);
                if self.unclaimed.len() >= UNCLAIMED_CAPACITY {
                    self.unclaimed.pop_front();
                }
                self.unclaimed.push_back((pid, exit));
            }
        }
    }

    /// Takes the cached exit of `pid` if it was reaped at or after `since`.
    fn claim(&mut self, pid: Pid, since: Instant) -> Option<Exit> {
        let i = self
            .unclaimed
            .iter()
            .position(|(p, e)| *p == pid && e.reaped >= since)?;
        self.unclaimed.remove(i).map(|(_, e)| e)
    }
}

/// Routes child exits to whoever registered for them.
#[derive(Clone, Default)]
pub struct Reaper {
    state: Arc<Mutex<State>>,
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

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `spawn` (which forks and returns the child's pid) with the lock held, and registers
    /// the pid before any exit can be collected.
    pub fn spawn_watched<E>(
        &self,
        spawn: impl FnOnce() -> Result<Pid, E>,
    ) -> Result<(Pid, oneshot::Receiver<Exit>), E> {
        let mut state = self.lock();
        let pid = spawn()?;
        let (tx, rx) = oneshot::channel();
        state.waiters.insert(pid, tx);
        Ok((pid, rx))
    }

    /// Waits for the exit of `pid`, a process somebody else forked that ends up our child.
    /// `since` is an instant before the process was created: a cached exit reaped earlier
    /// belongs to an older process with the same pid and is ignored (see the module docs).
    pub fn watch_since(&self, pid: Pid, since: Instant) -> oneshot::Receiver<Exit> {
        let mut state = self.lock();
        let (tx, rx) = oneshot::channel();
        match state.claim(pid, since) {
            Some(exit) => {
                let _ = tx.send(exit);
            }
            None => {
                state.waiters.insert(pid, tx);
            }
        }
        rx
    }

    /// Collects every child that has exited, without blocking.
    fn reap_ready(&self) {
        loop {
            // Hold the lock across waitpid so a concurrent spawn_watched finishes registering
            // before its child can be collected.
            let mut state = self.lock();
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(status) => {
                    let Some(pid) = status.pid() else { continue };
                    if exit_code(&status).is_none() {
                        // Stopped/continued reports are not exits (waitpid without WUNTRACED
                        // does not return them, but be safe).
                        continue;
                    }
                    state.deliver(pid, Exit::now(status));
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
        assert_eq!(exit_code(&three.status), Some(3));
        assert_eq!(three.code(), 3);
        assert_eq!(exit_code(&killed.status), Some(137));
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
        let exit = tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(exit_code(&exit.status), Some(0));
    }

    #[tokio::test]
    async fn unclaimed_exit_is_delivered_to_a_late_watcher() {
        let reaper = Reaper::start().unwrap();
        let before = Instant::now();
        // Forked without registration, like a container process the helper leaves behind.
        let pid = spawn("exit 5").unwrap();
        // Let it exit and be reaped into the cache.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let exit = tokio::time::timeout(Duration::from_secs(10), reaper.watch_since(pid, before))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(exit.code(), 5);
        // Claimed exits are gone from the cache.
        assert!(reaper.lock().claim(pid, before).is_none());
    }

    #[tokio::test]
    async fn watcher_registered_first_gets_the_exit() {
        let reaper = Reaper::start().unwrap();
        let before = Instant::now();
        let pid = spawn("sleep 0.3; exit 4").unwrap();
        let rx = reaper.watch_since(pid, before);
        let exit = tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(exit.code(), 4);
    }

    fn fake_exit(pid: i32, code: i32) -> Exit {
        Exit::now(WaitStatus::Exited(Pid::from_raw(pid), code))
    }

    #[test]
    fn stale_exits_of_a_reused_pid_are_ignored() {
        let mut state = State::default();
        state.deliver(Pid::from_raw(42), fake_exit(42, 1));
        std::thread::sleep(Duration::from_millis(5));
        let created = Instant::now();
        assert!(state.claim(Pid::from_raw(42), created).is_none());
        // A newer exit of the same pid replaces the stale one and is claimable.
        state.deliver(Pid::from_raw(42), fake_exit(42, 2));
        assert_eq!(state.unclaimed.len(), 1);
        assert_eq!(state.claim(Pid::from_raw(42), created).unwrap().code(), 2);
    }

    #[test]
    fn unclaimed_cache_is_bounded_and_drops_the_oldest() {
        let mut state = State::default();
        let start = Instant::now();
        for pid in 1..=(UNCLAIMED_CAPACITY as i32 + 100) {
            state.deliver(Pid::from_raw(pid), fake_exit(pid, 0));
        }
        assert_eq!(state.unclaimed.len(), UNCLAIMED_CAPACITY);
        assert!(state.claim(Pid::from_raw(1), start).is_none());
        assert!(state.claim(Pid::from_raw(100), start).is_none());
        assert!(state.claim(Pid::from_raw(101), start).is_some());
        let last = UNCLAIMED_CAPACITY as i32 + 100;
        assert!(state.claim(Pid::from_raw(last), start).is_some());
    }

    #[test]
    fn registered_waiters_bypass_the_cache() {
        let mut state = State::default();
        let (tx, mut rx) = oneshot::channel();
        state.waiters.insert(Pid::from_raw(7), tx);
        state.deliver(Pid::from_raw(7), fake_exit(7, 9));
        assert_eq!(rx.try_recv().unwrap().code(), 9);
        assert!(state.unclaimed.is_empty());
    }
}
