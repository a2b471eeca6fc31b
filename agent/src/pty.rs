//! Terminals: receiving a container process's pty master, and resizing it.
//!
//! libcontainer opens the pty inside the container (from the container's own devpts, so
//! `tty` there names `/dev/pts/N`), makes the slave the process's controlling terminal and
//! stdio, and sends the master over a "console socket": a Unix socket the agent listens on
//! for that one process ([`ConsoleSocket`]). The master then carries the process's output
//! (the stdout stream), takes its input (the stdin stream) and its window size
//! ([`resize`]).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::MsgFlags;
use tokio::io::Interest;
use tokio::net::UnixListener;

use crate::error::{AgentError, Result};
use crate::fdpass;

/// Where console sockets are created (short paths: a Unix socket path has at most 107 bytes).
pub const CONSOLE_DIR: &str = "/run/isola/tty";

/// How long to wait for the master once the helper has created the process.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A listening console socket for one process. The socket file is removed on drop.
pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    /// Binds a fresh console socket in [`CONSOLE_DIR`].
    pub fn bind() -> Result<ConsoleSocket> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        std::fs::create_dir_all(CONSOLE_DIR)
            .map_err(|e| AgentError::io(format!("creating {CONSOLE_DIR}"), e))?;
        let path =
            Path::new(CONSOLE_DIR).join(format!("{}.sock", NEXT.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .map_err(|e| AgentError::io(format!("binding console socket {}", path.display()), e))?;
        Ok(ConsoleSocket { listener, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts libcontainer's connection and receives the pty master. Called after the helper
    /// has created the process: by then the connection is queued and the master sent.
    pub async fn receive_master(&self) -> Result<OwnedFd> {
        let timeout = |what: &str| {
            AgentError::DeadlineExceeded(format!(
                "no pty master arrived on {} ({what})",
                self.path.display()
            ))
        };
        let (stream, _) = tokio::time::timeout(RECEIVE_TIMEOUT, self.listener.accept())
            .await
            .map_err(|_| timeout("no connection"))?
            .map_err(|e| AgentError::io("accepting on the console socket", e))?;
        let receive = async {
            loop {
                stream
                    .readable()
                    .await
                    .map_err(|e| AgentError::io("waiting on the console socket", e))?;
                let mut buf = [0u8; 256];
                let got = stream.try_io(Interest::READABLE, || {
                    fdpass::recv(stream.as_fd(), &mut buf, MsgFlags::MSG_DONTWAIT)
                        .map_err(std::io::Error::from)
                });
                match got {
                    Ok((_, mut fds)) if !fds.is_empty() => return Ok(fds.swap_remove(0)),
                    Ok((0, _)) => {
                        return Err(AgentError::Runtime(
                            "the console socket closed without a pty master".into(),
                        ))
                    }
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(AgentError::io("receiving the pty master", e)),
                }
            }
        };
        tokio::time::timeout(RECEIVE_TIMEOUT, receive)
            .await
            .map_err(|_| timeout("no message"))?
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

nix::ioctl_write_ptr_bad!(set_winsize, libc::TIOCSWINSZ, libc::winsize);

/// Sets the window size of the terminal whose master is `master`.
pub fn resize(master: BorrowedFd<'_>, rows: u16, columns: u16) -> std::result::Result<(), Errno> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: columns,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which points at a live local;
    // the fd is borrowed and open for the duration of the call.
    unsafe { set_winsize(master.as_raw_fd(), &size) }.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_sets_the_window_size() {
        let pty = nix::pty::openpty(None, None).unwrap();
        resize(pty.master.as_fd(), 42, 137).unwrap();
        let mut size = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one `winsize` into the live local.
        let rc = unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut size) };
        assert_eq!(rc, 0);
        assert_eq!((size.ws_row, size.ws_col), (42, 137));
        // Not a terminal: an error, not a panic.
        let (r, _w) = nix::unistd::pipe().unwrap();
        assert!(resize(r.as_fd(), 1, 1).is_err());
    }
}
