//! The container factory's process side: a warm, single-threaded copy of the agent binary that
//! forks one child per libcontainer operation.
//!
//! The agent starts it once (`/proc/self/exe --isola-container-factory`, a fresh exec like the
//! helper, with the same signal and logging set-up) and then sends it every operation instead
//! of exec'ing a new helper. Each message on its control socket (its stdin) is one JSON
//! [`Request`](super::Request) with, attached by SCM_RIGHTS, first the operation's reply socket
//! and then the container's stdio fds. The factory clones a child with `CLONE_PARENT`, so the
//! child is the agent's child exactly as an exec'd helper is: the agent's reaper collects its
//! exit, and the container processes it leaves behind are re-parented to the agent as before.
//! The child runs the operation as the helper does ([`super::helper::answer`]) and exits; the
//! factory answers [`Reply::Started`] with the child's pid on the reply socket and closes its
//! copies of the fds at once, so a container's pipes reach end-of-file when the container ends.
//!
//! Why it is faster: under TCG every new process image is translated again, and with address
//! randomisation a fresh exec of the same binary lands at new addresses, so nothing translated
//! for the last helper is reused. A fork keeps the factory's layout, and every child runs the
//! code its predecessors already had translated. What a container gets is unchanged: the child
//! has the helper's signal dispositions and mask, no descriptor but its request's, and the
//! container's own program is exec'd (with a fresh layout) as before.

use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::MsgFlags;

use super::{Reply, FACTORY_NAME, MAX_MESSAGE};
use crate::fdpass;

/// The factory's `main`: serves until the agent closes the control socket; never returns.
pub fn main() -> ! {
    super::helper::prepare(FACTORY_NAME);
    let code = match serve() {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{FACTORY_NAME}: {e}");
            1
        }
    };
    std::process::exit(code)
}

fn serve() -> Result<(), String> {
    let control = super::helper::detach_stdin()?;
    tracing::debug!("{FACTORY_NAME} ready");
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let (n, fds) = match fdpass::recv(control.as_fd(), &mut buf, MsgFlags::empty()) {
            Ok((0, _)) => return Ok(()),
            Ok(got) => got,
            Err(Errno::EINTR) => continue,
            // A message too big for MAX_MESSAGE: its fds were closed; there is no reply socket
            // to answer on, and the agent's wait for the start times out.
            Err(Errno::EMSGSIZE) => {
                tracing::error!(
                    "{FACTORY_NAME}: dropped a request larger than {MAX_MESSAGE} bytes"
                );
                continue;
            }
            Err(e) => return Err(format!("receiving a request: {e}")),
        };
        let mut fds = fds.into_iter();
        let Some(reply) = fds.next() else {
            tracing::error!("{FACTORY_NAME}: dropped a request without its reply socket");
            continue;
        };
        let stdio: Vec<OwnedFd> = fds.collect();
        match clone_child() {
            Ok(None) => {
                // The child: nothing of the factory's but memory. Its control socket goes
                // first, so no container process can ever hold it.
                drop(control);
                let code = match super::helper::answer(reply.as_fd(), &buf[..n], stdio) {
                    Ok(()) => 0,
                    Err(e) => {
                        tracing::error!("libcontainer helper: {e}");
                        1
                    }
                };
                std::process::exit(code);
            }
            Ok(Some(pid)) => {
                drop(stdio);
                send(&reply, &Reply::Started { pid });
            }
            Err(e) => send(
                &reply,
                &Reply::Refused {
                    message: format!("the container factory cannot fork: {e}"),
                },
            ),
        }
    }
}

/// Sends `reply`; a failure only means the agent stopped waiting (it logs its own side).
fn send(sock: &OwnedFd, reply: &Reply) {
    let sent = serde_json::to_vec(reply)
        .map_err(|e| e.to_string())
        .and_then(|bytes| fdpass::send(sock.as_fd(), &bytes, &[]).map_err(|e| e.to_string()));
    if let Err(e) = sent {
        tracing::warn!("{FACTORY_NAME}: cannot answer the agent: {e}");
    }
}

/// Forks a child of the factory's parent (`CLONE_PARENT`): `None` in the child, its pid in the
/// factory.
fn clone_child() -> Result<Option<i32>, Errno> {
    // SAFETY: a fork-like clone (no new stack: the child runs on a copy-on-write copy of this
    // one) of a single-threaded process, so no lock can be held by a thread missing in the
    // child. CLONE_PARENT only changes who the child's parent is and who gets its SIGCHLD.
    // The raw syscall skips libc's fork handlers, which this process does not register; the
    // child runs the helper's code, as libcontainer's own clone3 children do.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    match ret {
        -1 => Err(Errno::last()),
        0 => Ok(None),
        pid => Ok(Some(pid as i32)),
    }
}
