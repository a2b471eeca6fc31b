//! Terminals: receiving a container process's pty master, and resizing it.
//!
//! libcontainer opens the pty inside the container (from the container's own devpts, so
//! `tty` there names `/dev/pts/N`), makes the slave the process's controlling terminal and
//! stdio, and sends the master over a "console socket": a Unix socket the agent listens on
//! for that one process ([`ConsoleSocket`]). The master then carries the process's output
//! (the stdout stream), takes its input (the stdin stream) and its window size
//! ([`resize`]).
//!
//! # Window size
//!
//! A fresh pty is 0x0, and stays so until the host's first TtyWinResize, which containerd sends
//! only after the process has started (`ctr run -t` resizes after Start), or never (a client
//! whose own terminal has no size sends 0x0). Programs that ask for the size meanwhile fail:
//! busybox `stty size` treats 0 rows as an error and reports whatever `errno` was lying around
//! ("No child processes", "Resource temporarily unavailable"). So a new terminal starts at
//! [`DEFAULT_SIZE`] (24x80, what a console or `xterm` starts with): the container process itself
//! sets it ([`set_default_size`], from the libcontainer helper's executor) after libcontainer has
//! made the pty its terminal and before it reports ready, so the size is there before the
//! program runs and before the agent (hence the host) can resize. A resize to a 0 dimension
//! ([`usable_size`]) keeps the current size.

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

/// The size of a new terminal, (rows, columns), until the host sets one.
pub const DEFAULT_SIZE: (u16, u16) = (24, 80);

nix::ioctl_write_ptr_bad!(set_winsize, libc::TIOCSWINSZ, libc::winsize);
nix::ioctl_read_bad!(get_winsize, libc::TIOCGWINSZ, libc::winsize);

/// The window size of the terminal `fd` (master or slave), as (rows, columns).
pub fn size(fd: BorrowedFd<'_>) -> std::result::Result<(u16, u16), Errno> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` through the pointer, which points at a live
    // local; the fd is borrowed and open for the duration of the call.
    unsafe { get_winsize(fd.as_raw_fd(), &mut size) }?;
    Ok((size.ws_row, size.ws_col))
}

/// Whether a requested size can be applied: a terminal with 0 rows or 0 columns is what a
/// client without a sized terminal of its own reports, and would only make programs fail.
pub fn usable_size(rows: u16, columns: u16) -> bool {
    rows > 0 && columns > 0
}

/// Gives the terminal `fd` the [`DEFAULT_SIZE`] if it has none yet (0x0); a terminal that
/// already has a size keeps it. Returns whether it set the size; `Ok(false)` also for an fd
/// that is not a terminal. Only ioctls: safe in a freshly cloned process.
pub fn set_default_size(fd: BorrowedFd<'_>) -> std::result::Result<bool, Errno> {
    match size(fd) {
        Ok((rows, columns)) if usable_size(rows, columns) => Ok(false),
        Ok(_) => resize(fd, DEFAULT_SIZE.0, DEFAULT_SIZE.1).map(|()| true),
        Err(Errno::ENOTTY) => Ok(false),
        Err(e) => Err(e),
    }
}

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
        assert_eq!(super::size(pty.master.as_fd()).unwrap(), (42, 137));
        // Not a terminal: an error, not a panic.
        let (r, _w) = nix::unistd::pipe().unwrap();
        assert!(resize(r.as_fd(), 1, 1).is_err());
    }

    #[test]
    fn a_new_terminal_gets_the_default_size_once() {
        let pty = nix::pty::openpty(None, None).unwrap();
        assert_eq!(size(pty.slave.as_fd()).unwrap(), (0, 0));
        assert!(set_default_size(pty.slave.as_fd()).unwrap());
        assert_eq!(size(pty.master.as_fd()).unwrap(), DEFAULT_SIZE);
        // A size set by the host is kept.
        resize(pty.master.as_fd(), 50, 120).unwrap();
        assert!(!set_default_size(pty.slave.as_fd()).unwrap());
        assert_eq!(size(pty.slave.as_fd()).unwrap(), (50, 120));
        // Not a terminal: nothing to do.
        let (r, _w) = nix::unistd::pipe().unwrap();
        assert!(!set_default_size(r.as_fd()).unwrap());
        assert!(usable_size(1, 1));
        assert!(!usable_size(0, 80) && !usable_size(24, 0) && !usable_size(0, 0));
    }
}
