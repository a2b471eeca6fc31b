//! The agent's side of the container factory (see [`super::factory`]): starting it, handing it
//! operations, and falling back to an exec'd helper whenever it is not serving.
//!
//! An operation through the factory: a fresh `SOCK_SEQPACKET` pair; the request goes down the
//! factory's control socket with the pair's far end and the container's stdio fds attached;
//! the factory answers [`Reply::Started`] with the child's pid on the pair, and the child
//! (the agent's own child, by `CLONE_PARENT`) leaves its [`Reply::Done`] there before it exits.
//! The two may arrive in either order. The agent waits for the child's exit through the reaper,
//! as for a helper, then takes the answer. The factory's phases are explicit: before it is
//! started, and after it exits, operations exec a helper each, exactly as before it existed.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{MsgFlags, SockFlag};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;

use super::{Reply, FACTORY_ARG, FACTORY_NAME, HELPER_TIMEOUT, MAX_MESSAGE};
use crate::error::{AgentError, Result};
use crate::fdpass;
use crate::reaper::Reaper;

/// Where the factory is in its life.
enum Phase {
    /// Not started (unit tests; the agent before it is ready): operations exec a helper.
    Off,
    /// Serving on `control`.
    Ready { control: Arc<Control> },
    /// Exited or never started: operations exec a helper each.
    Gone { reason: String },
}

/// The agent's end of the factory's control socket (a `SOCK_SEQPACKET` send is one whole
/// message or `EAGAIN`, so concurrent senders never interleave).
struct Control {
    fd: AsyncFd<OwnedFd>,
}

/// A handle on the factory, shared by every clone of the runtime.
#[derive(Clone)]
pub struct Factory {
    phase: Arc<Mutex<Phase>>,
}

impl Default for Factory {
    fn default() -> Factory {
        Factory {
            phase: Arc::new(Mutex::new(Phase::Off)),
        }
    }
}

impl Factory {
    fn lock(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the factory process (once); a failure leaves operations on exec'd helpers.
    pub fn start(&self, reaper: &Reaper, log_level: &str) {
        // Held across the spawn: the exit watcher's `Gone` can only come after `Ready`.
        let mut phase = self.lock();
        if !matches!(*phase, Phase::Off) {
            return;
        }
        *phase = match self.spawn(reaper, log_level) {
            Ok(ready) => ready,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the {FACTORY_NAME}; every container operation execs a helper");
                Phase::Gone {
                    reason: e.to_string(),
                }
            }
        };
    }

    fn spawn(&self, reaper: &Reaper, log_level: &str) -> Result<Phase> {
        let (ours, theirs) = fdpass::seqpacket_pair(SockFlag::SOCK_NONBLOCK)
            .map_err(|e| AgentError::sys("creating the factory's control socket", e))?;
        // Our end stays non-blocking (for the AsyncFd); the factory's end blocks.
        fcntl(&theirs, FcntlArg::F_SETFL(OFlag::empty()))
            .map_err(|e| AgentError::sys("making the factory's end of its socket blocking", e))?;
        let mut cmd = super::agent_binary(FACTORY_ARG, log_level);
        cmd.stdin(Stdio::from(theirs));
        let (pid, exited) = reaper
            .spawn_watched(|| cmd.spawn().map(|child| Pid::from_raw(child.id() as i32)))
            .map_err(|e| AgentError::io("starting the container factory", e))?;
        let fd = register(ours)
            .map_err(|e| AgentError::io("registering the factory's control socket", e))?;
        let watcher = self.clone();
        tokio::spawn(async move {
            let reason = match exited.await {
                Ok(exit) => format!("exited with status {}", exit.code()),
                Err(_) => "the reaper dropped its exit".to_string(),
            };
            tracing::warn!(pid = pid.as_raw(), %reason, "the {FACTORY_NAME} is gone; every container operation now execs a helper");
            *watcher.lock() = Phase::Gone { reason };
        });
        tracing::debug!(pid = pid.as_raw(), "{FACTORY_NAME} started");
        let control = Arc::new(Control { fd });
        Ok(Phase::Ready { control })
    }

    /// Runs one encoded request through the factory; `None` when it is not serving (the
    /// caller execs a helper instead: the factory never saw the request).
    pub async fn run(
        &self,
        reaper: &Reaper,
        what: &str,
        request: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Option<Result<Option<Pid>>> {
        let control = match &*self.lock() {
            Phase::Ready { control } => control.clone(),
            Phase::Off => return None,
            Phase::Gone { reason } => {
                tracing::debug!(op = %what, %reason, "no {FACTORY_NAME}; running the operation in a helper");
                return None;
            }
        };
        let since = Instant::now();
        let (ours, theirs) = match fdpass::seqpacket_pair(SockFlag::SOCK_NONBLOCK) {
            Ok(pair) => pair,
            Err(e) => return Some(Err(AgentError::sys("creating a reply socket pair", e))),
        };
        let mut attached = vec![theirs.as_fd()];
        attached.extend_from_slice(fds);
        if let Err(e) = control.send(request, &attached).await {
            // Not delivered: the factory never saw it, so a helper may run it instead.
            tracing::warn!(error = %e, op = %what, "the {FACTORY_NAME} did not take a request; running it in a helper");
            return None;
        }
        drop(attached);
        drop(theirs);
        let reply = match register(ours) {
            Ok(fd) => fd,
            Err(e) => return Some(Err(AgentError::io("registering a reply socket", e))),
        };
        Some(await_child(reaper, what, &reply, since).await)
    }
}

impl Control {
    async fn send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        loop {
            let mut ready = self.fd.writable().await?;
            match ready.try_io(|fd| {
                fdpass::send_flags(fd.get_ref().as_fd(), bytes, fds, MsgFlags::MSG_DONTWAIT)
                    .map_err(io::Error::from)
            }) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }
}

/// Waits for the factory's word on the child, then for the child's exit and answer.
async fn await_child(
    reaper: &Reaper,
    what: &str,
    reply: &AsyncFd<OwnedFd>,
    since: Instant,
) -> Result<Option<Pid>> {
    let mut done = None;
    let started = tokio::time::timeout(HELPER_TIMEOUT, async {
        loop {
            match recv_reply(reply).await? {
                Some(Reply::Started { pid }) => return Ok(Some(Pid::from_raw(pid))),
                Some(Reply::Refused { message }) => return Err(AgentError::Runtime(message)),
                Some(Reply::Done(response)) => done = Some(response),
                None => return Ok(None),
            }
        }
    })
    .await
    .map_err(|_| {
        AgentError::DeadlineExceeded(format!(
            "the {FACTORY_NAME} did not start {what} within {HELPER_TIMEOUT:?}"
        ))
    })??;
    let Some(pid) = started else {
        // End of file before the start: the factory died with the request.
        return match done {
            Some(response) => response.into_result(),
            None => Err(AgentError::Runtime(format!(
                "the {FACTORY_NAME} ended before starting {what}; see the guest console log"
            ))),
        };
    };
    tracing::debug!(pid = pid.as_raw(), op = %what, "libcontainer helper forked by the {FACTORY_NAME}");
    let exit = super::wait_exit(pid, reaper.watch_since(pid, since), what).await?;
    match done {
        Some(response) => {
            tracing::debug!(op = %what, ?response, "libcontainer helper answered");
            response.into_result()
        }
        None => super::read_done(reply.get_ref().as_fd(), what, &exit),
    }
}

/// `fd` (non-blocking) registered with tokio's reactor.
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the `AsyncFd` owns `fd`, which stays open as long as it lives and is only
    // closed by its drop, after tokio has deregistered it; `as_raw_fd` is always that fd.
    unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}

/// The next message on a reply socket; `None` at end of file.
async fn recv_reply(sock: &AsyncFd<OwnedFd>) -> Result<Option<Reply>> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let mut ready = sock
            .readable()
            .await
            .map_err(|e| AgentError::io("waiting on a reply socket", e))?;
        let got = ready.try_io(|fd| {
            fdpass::recv(fd.get_ref().as_fd(), &mut buf, MsgFlags::MSG_DONTWAIT)
                .map_err(io::Error::from)
        });
        match got {
            Ok(Ok((0, _))) => return Ok(None),
            Ok(Ok((n, _))) => {
                return serde_json::from_slice(&buf[..n]).map(Some).map_err(|e| {
                    AgentError::Runtime(format!("the {FACTORY_NAME}'s reply is garbled: {e}"))
                })
            }
            Ok(Err(e)) => return Err(AgentError::io("reading a reply socket", e)),
            Err(_would_block) => continue,
        }
    }
}
