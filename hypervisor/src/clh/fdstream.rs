//! A Unix stream that sends descriptors with the first bytes written: how a tap descriptor
//! reaches Cloud Hypervisor with its `vm.add-net` request (`SCM_RIGHTS` on the request's
//! first `sendmsg`; the VMM's HTTP server collects descriptors from the messages it reads).

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::UnixStream;

/// A [`UnixStream`] whose first write carries `fds`. The caller keeps the descriptors open
/// until the request has been written (the kernel duplicates them into the message).
#[derive(Debug)]
pub struct FdStream {
    inner: UnixStream,
    fds: Vec<RawFd>,
}

impl FdStream {
    /// Wraps `inner`; `fds` go with the first write (none: a plain stream).
    pub fn new(inner: UnixStream, fds: Vec<RawFd>) -> Self {
        Self { inner, fds }
    }

    /// Whether the descriptors have been sent (or there were none).
    pub fn fds_sent(&self) -> bool {
        self.fds.is_empty()
    }
}

impl AsyncRead for FdStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for FdStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.fds.is_empty() || buf.is_empty() {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        loop {
            ready!(this.inner.poll_write_ready(cx))?;
            let fd = this.inner.as_raw_fd();
            let fds = &this.fds;
            let sent = this.inner.try_io(Interest::WRITABLE, || {
                sendmsg::<UnixAddr>(
                    fd,
                    &[IoSlice::new(buf)],
                    &[ControlMessage::ScmRights(fds)],
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(io::Error::from)
            });
            match sent {
                Ok(n) => {
                    this.fds.clear();
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{recvmsg, ControlMessageOwned};
    use std::io::{IoSliceMut, Read, Seek, Write};
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn descriptors_travel_with_the_first_write_only() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"tap stand-in").unwrap();
        let mut s = FdStream::new(a, vec![file.as_raw_fd()]);
        assert!(!s.fds_sent());
        s.write_all(b"PUT /x").await.unwrap();
        assert!(s.fds_sent());
        s.write_all(b" HTTP/1.1").await.unwrap();
        drop(s);
        let b = b.into_std().unwrap();
        b.set_nonblocking(false).unwrap();
        let mut data = [0u8; 64];
        let mut iov = [IoSliceMut::new(&mut data)];
        let mut space = nix::cmsg_space!([RawFd; 2]);
        let msg = recvmsg::<UnixAddr>(b.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty())
            .unwrap();
        let mut got = Vec::new();
        for c in msg.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(fds) = c {
                got.extend(fds);
            }
        }
        assert_eq!(msg.bytes, 6, "the first message is the first write");
        assert_eq!(got.len(), 1);
        // SAFETY: the descriptor was just received and is owned by nobody else.
        let mut received =
            unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(got[0]) };
        received.rewind().unwrap();
        let mut text = String::new();
        received.read_to_string(&mut text).unwrap();
        assert_eq!(text, "tap stand-in");
    }
}
