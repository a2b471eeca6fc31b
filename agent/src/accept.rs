//! The accept loop of the agent's side listeners (stdio streams, the debug console): a vsock
//! port in a VM, or a Unix socket next to the control socket when the agent serves on one
//! (`agent.listen=unix:PATH`, tests). Each connection is handed to a [`Handler`] on a task of
//! its own; a failed accept is logged and retried after a pause, never the end of the loop.

use std::future::Future;
use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixListener;
use tokio_vsock::{VsockAddr, VsockListener};

use crate::cmdline::Listen;

/// The pause after a failed accept (out of file descriptors, ...).
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Serves one connection of either kind.
pub trait Handler: Clone + Send + Sync + 'static {
    fn handle<S>(self, conn: S) -> impl Future<Output = ()> + Send + 'static
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static;
}

/// Binds `port` (vsock) or `unix_path` (with [`Listen::Unix`], replacing a stale socket) and
/// serves it with `handler` on a background task; `what` names the connections in logs.
pub fn start<H: Handler>(
    listen: &Listen,
    port: u32,
    unix_path: &str,
    what: &'static str,
    handler: H,
) -> io::Result<()> {
    match listen {
        Listen::Vsock(_) => {
            let listener = VsockListener::bind(VsockAddr::new(libc::VMADDR_CID_ANY, port))?;
            tokio::spawn(async move {
                loop {
                    match listener.accept().await {
                        Ok((conn, _)) => {
                            tokio::spawn(handler.clone().handle(conn));
                        }
                        Err(e) => failed(what, e).await,
                    }
                }
            });
        }
        Listen::Unix(_) => {
            let _ = std::fs::remove_file(unix_path);
            let listener = UnixListener::bind(unix_path)?;
            tokio::spawn(async move {
                loop {
                    match listener.accept().await {
                        Ok((conn, _)) => {
                            tokio::spawn(handler.clone().handle(conn));
                        }
                        Err(e) => failed(what, e).await,
                    }
                }
            });
        }
    }
    Ok(())
}

async fn failed(what: &str, e: io::Error) {
    tracing::warn!(error = %e, "accepting a {what} connection failed");
    tokio::time::sleep(RETRY_PAUSE).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::Mutex;

    /// Echoes one line back and records it.
    #[derive(Clone)]
    struct Echo(Arc<Mutex<Vec<String>>>);

    impl Handler for Echo {
        async fn handle<S>(self, mut conn: S)
        where
            S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        {
            let mut buf = [0u8; 64];
            let n = conn.read(&mut buf).await.unwrap_or(0);
            self.0
                .lock()
                .await
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            let _ = conn.write_all(&buf[..n]).await;
        }
    }

    #[tokio::test]
    async fn each_unix_connection_is_served_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("side.sock");
        // A stale socket file from an earlier run is replaced.
        std::fs::write(&path, b"stale").unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let listen = Listen::Unix(dir.path().join("control").display().to_string());
        start(
            &listen,
            0,
            path.to_str().unwrap(),
            "test",
            Echo(seen.clone()),
        )
        .unwrap();
        let mut conns = Vec::new();
        for word in ["one", "two"] {
            let mut c = tokio::net::UnixStream::connect(&path).await.unwrap();
            c.write_all(word.as_bytes()).await.unwrap();
            conns.push((word, c));
        }
        for (word, mut c) in conns {
            let mut back = vec![0u8; word.len()];
            c.read_exact(&mut back).await.unwrap();
            assert_eq!(back, word.as_bytes());
        }
        let mut got = seen.lock().await.clone();
        got.sort();
        assert_eq!(got, ["one", "two"]);
    }
}
