//! One container process (a container's init or an exec): its pid, its exit, its stdio.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::unistd::Pid;
use tokio::sync::watch;

use crate::error::{AgentError, Result};
use crate::pty;
use crate::reaper::Reaper;
use crate::stdio::{Labels, ProcessSide, ProcessStdio, StdioWanted};

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit code, or 128+N for signal N.
    pub code: i32,
    pub at: SystemTime,
}

/// A container process.
pub struct Process {
    pub container_id: String,
    /// Empty for a container's init.
    pub exec_id: String,
    pub stdio: ProcessStdio,
    pid: OnceLock<Pid>,
    exit: watch::Sender<Option<ExitInfo>>,
    exited: watch::Sender<bool>,
    /// The pty master of a terminal process (kept for window size changes).
    master: OnceLock<OwnedFd>,
}

impl Process {
    /// A process about to be created, with its stdio slots; for pipe mode also the fds the
    /// process gets as its stdin, stdout and stderr.
    pub fn new(
        container_id: &str,
        exec_id: &str,
        wanted: StdioWanted,
    ) -> Result<(Arc<Process>, Option<ProcessSide>)> {
        let (exited, exited_rx) = watch::channel(false);
        let labels = Labels {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
        };
        let (stdio, side) = ProcessStdio::new(wanted, labels, exited_rx)?;
        let process = Arc::new(Process {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            stdio,
            pid: OnceLock::new(),
            exit: watch::Sender::new(None),
            exited,
            master: OnceLock::new(),
        });
        Ok((process, side))
    }

    pub fn terminal(&self) -> bool {
        self.stdio.wanted.terminal
    }

    pub fn pid(&self) -> Option<Pid> {
        self.pid.get().copied()
    }

    /// The exit, once the reaper has collected it.
    pub fn exit(&self) -> Option<ExitInfo> {
        *self.exit.borrow()
    }

    /// Records the pid the helper reported and starts watching for its exit. `since` is an
    /// instant before the helper was asked to create the process (see [`Reaper::watch_since`]).
    pub fn started(self: &Arc<Self>, reaper: &Reaper, pid: Pid, since: Instant) {
        let _ = self.pid.set(pid);
        let exit = reaper.watch_since(pid, since);
        let me = self.clone();
        tokio::spawn(async move {
            let Ok(exit) = exit.await else {
                tracing::error!(container_id = %me.container_id, exec_id = %me.exec_id, "the reaper dropped this process's exit");
                return;
            };
            let info = ExitInfo {
                code: exit.code(),
                at: exit.at,
            };
            tracing::info!(container_id = %me.container_id, exec_id = %me.exec_id, pid = pid.as_raw(), status = info.code, "process exited");
            me.exit.send_replace(Some(info));
            me.exited.send_replace(true);
        });
    }

    /// Marks a process that never got created (its creation failed) as gone, so nothing waits
    /// for it forever.
    pub fn abandon(&self) {
        if self.pid().is_none() {
            self.exit.send_replace(Some(ExitInfo {
                code: 255,
                at: SystemTime::now(),
            }));
            self.exited.send_replace(true);
        }
        self.stdio.stdin.close();
    }

    /// Wires the terminal's pty master into the stdio slots and keeps it for resizing.
    pub fn set_master(&self, master: OwnedFd) -> Result<()> {
        self.stdio.set_terminal(&master)?;
        let _ = self.master.set(master);
        Ok(())
    }

    /// Waits for the exit, then for the output to be flushed (see [`crate::stdio`]).
    pub async fn wait(&self) -> ExitInfo {
        let mut rx = self.exit.subscribe();
        let info = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.expect("wait_for returned a value satisfying is_some"),
            // The sender lives in `self`: it cannot be dropped while we borrow `self`.
            Err(_) => unreachable!("the exit sender outlives its process"),
        };
        self.stdio.flushed().await;
        info
    }

    /// Waits up to `limit` for the exit; true if it happened.
    pub async fn exited_within(&self, limit: Duration) -> bool {
        let mut rx = self.exit.subscribe();
        let exited = tokio::time::timeout(limit, rx.wait_for(Option::is_some))
            .await
            .is_ok_and(|r| r.is_ok());
        exited
    }

    /// Sends `signal` to the process. NOT_FOUND once it has exited.
    pub fn signal(&self, signal: i32) -> Result<()> {
        let gone = || {
            AgentError::NotFound(format!(
                "process {:?} of container {:?} has already exited",
                self.exec_id, self.container_id
            ))
        };
        if self.exit().is_some() {
            return Err(gone());
        }
        let pid = self.pid().ok_or_else(|| {
            AgentError::FailedPrecondition(format!(
                "process {:?} of container {:?} is still being created",
                self.exec_id, self.container_id
            ))
        })?;
        match send_signal(pid, signal) {
            Ok(()) => Ok(()),
            Err(Errno::ESRCH) => Err(gone()),
            Err(e) => Err(AgentError::sys(
                format!("sending signal {signal} to pid {pid}"),
                e,
            )),
        }
    }

    /// TtyWinResize. A size with a zero dimension is ignored (see [`crate::pty`]).
    pub fn resize(&self, rows: u32, columns: u32) -> Result<()> {
        let master = self.master.get().ok_or_else(|| {
            AgentError::FailedPrecondition(format!(
                "process {:?} of container {:?} has no terminal",
                self.exec_id, self.container_id
            ))
        })?;
        let (rows, columns) = match (u16::try_from(rows), u16::try_from(columns)) {
            (Ok(r), Ok(c)) => (r, c),
            _ => {
                return Err(AgentError::InvalidArgument(format!(
                    "terminal size {rows}x{columns} is out of range"
                )))
            }
        };
        if !pty::usable_size(rows, columns) {
            tracing::debug!(container_id = %self.container_id, exec_id = %self.exec_id, rows, columns,
                "ignoring a terminal size with a zero dimension; keeping the current one");
            return Ok(());
        }
        pty::resize(master.as_fd(), rows, columns)
            .map_err(|e| AgentError::sys("setting the terminal size", e))
    }
}

/// kill(2) with any signal number, real-time ones included (nix's `Signal` has only the
/// classic ones). Signal 0 checks that the process exists.
pub fn send_signal(pid: Pid, signal: i32) -> std::result::Result<(), Errno> {
    if !(0..=libc::SIGRTMAX()).contains(&signal) {
        return Err(Errno::EINVAL);
    }
    // SAFETY: kill(2) takes two integers and touches no memory of ours.
    let rc = unsafe { libc::kill(pid.as_raw(), signal) };
    Errno::result(rc).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_signal_numbers_are_refused() {
        let me = Pid::this();
        assert_eq!(send_signal(me, -1), Err(Errno::EINVAL));
        assert_eq!(send_signal(me, 1000), Err(Errno::EINVAL));
        send_signal(me, 0).unwrap();
    }

    #[tokio::test]
    async fn signalling_before_start_and_after_exit() {
        let (p, _side) = Process::new("c", "e", StdioWanted::default()).unwrap();
        let e = p.signal(9).unwrap_err();
        assert_eq!(e.code(), ttrpc::Code::FAILED_PRECONDITION, "{e}");
        p.abandon();
        assert_eq!(p.signal(9).unwrap_err().code(), ttrpc::Code::NOT_FOUND);
        assert_eq!(p.wait().await.code, 255);
        assert_eq!(
            p.resize(10, 10).unwrap_err().code(),
            ttrpc::Code::FAILED_PRECONDITION
        );
    }
}
