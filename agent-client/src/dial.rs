//! Opening a byte stream to a guest vsock port: kernel vsock, or hybrid vsock over a Unix socket.
//!
//! Hybrid vsock (vhost-device-vsock, Cloud Hypervisor): connect to the Unix socket, write
//! `CONNECT <port>\n`, read one line `OK <host-port>\n`, then the stream is raw. When nothing in
//! the guest listens on the port yet, the socket is closed instead: the caller retries.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::Instant;
use tokio_vsock::{VsockAddr, VsockStream};
use ttrpc::r#async::transport::Socket;

/// The longest a single connection attempt may take before it is abandoned and retried.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest reply line accepted from the hybrid vsock peer: "OK " + a u32 + "\n" is 14 bytes.
pub const MAX_HANDSHAKE_LINE: usize = 32;

/// One failed attempt to reach the guest port.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("connecting to {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("connecting to vsock cid {cid} port {port}: {source}")]
    Vsock {
        cid: u32,
        port: u32,
        source: std::io::Error,
    },
    #[error("hybrid vsock {path}: the guest did not accept port {port} (connection closed)")]
    Refused { path: PathBuf, port: u32 },
    #[error("hybrid vsock {path}: unexpected handshake reply {reply:?} (expected \"OK <port>\")")]
    BadReply { path: PathBuf, reply: String },
    #[error("hybrid vsock {path}: I/O during the handshake: {source}")]
    Handshake {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no answer from the guest on port {port} within {waited:?}; last error: {last}")]
    Deadline {
        port: u32,
        waited: Duration,
        last: String,
    },
}

/// One hybrid vsock attempt: returns the raw stream after a successful handshake.
pub async fn hybrid_once(path: &Path, port: u32) -> Result<UnixStream, DialError> {
    let mut stream = UnixStream::connect(path)
        .await
        .map_err(|source| DialError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
    let handshake_err = |source| DialError::Handshake {
        path: path.to_path_buf(),
        source,
    };
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(handshake_err)?;
    // Read byte by byte: anything after the newline already belongs to the raw stream.
    let mut line = Vec::with_capacity(MAX_HANDSHAKE_LINE);
    loop {
        let mut byte = [0u8; 1];
        let n = stream.read(&mut byte).await.map_err(handshake_err)?;
        if n == 0 {
            return Err(DialError::Refused {
                path: path.to_path_buf(),
                port,
            });
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
        if line.len() >= MAX_HANDSHAKE_LINE {
            return Err(DialError::BadReply {
                path: path.to_path_buf(),
                reply: String::from_utf8_lossy(&line).into_owned() + "...",
            });
        }
    }
    let reply = String::from_utf8_lossy(&line);
    match reply.strip_prefix("OK ") {
        Some(n) if n.trim().parse::<u32>().is_ok() => Ok(stream),
        _ => Err(DialError::BadReply {
            path: path.to_path_buf(),
            reply: reply.into_owned(),
        }),
    }
}

/// The host-side Unix socket where a guest connection to host port `port` arrives over hybrid
/// vsock: `<path>_<port>`.
pub fn guest_initiated_socket(path: &Path, port: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!("_{port}"));
    PathBuf::from(name)
}

/// Waits until the guest agent announces readiness over hybrid vsock: listens on the socket
/// where the guest's connection to host port `port` arrives and accepts connections until one
/// carries [`isola_agent_proto::READY_LINE`] or `deadline` passes. Reads at most a few bytes
/// per connection (the guest is untrusted).
pub async fn wait_ready(path: &Path, port: u32, deadline: Instant) -> Result<(), DialError> {
    use isola_agent_proto::READY_LINE;
    let socket = guest_initiated_socket(path, port);
    let _ = std::fs::remove_file(&socket);
    let listener =
        tokio::net::UnixListener::bind(&socket).map_err(|source| DialError::Connect {
            path: socket.clone(),
            source,
        })?;
    let started = Instant::now();
    let mut last = "no connection from the guest yet".to_string();
    let result = loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let accepted = tokio::time::timeout(remaining, listener.accept()).await;
        let mut stream = match accepted {
            Err(_) => {
                break Err(DialError::Deadline {
                    port,
                    waited: started.elapsed(),
                    last: format!("the guest agent did not announce readiness ({last})"),
                })
            }
            Ok(Err(e)) => {
                last = format!("accept on {}: {e}", socket.display());
                continue;
            }
            Ok(Ok((stream, _))) => stream,
        };
        let mut buf = [0u8; 16];
        let mut got = 0;
        let read = tokio::time::timeout(Duration::from_secs(2), async {
            while got < READY_LINE.len() {
                match stream.read(&mut buf[got..READY_LINE.len()]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
            }
        })
        .await;
        if read.is_ok() && &buf[..got] == READY_LINE {
            break Ok(());
        }
        last = format!(
            "a readiness connection sent {:?}",
            String::from_utf8_lossy(&buf[..got])
        );
    };
    let _ = std::fs::remove_file(&socket);
    result
}

/// One kernel vsock attempt.
pub async fn vsock_once(cid: u32, port: u32) -> Result<VsockStream, DialError> {
    VsockStream::connect(VsockAddr::new(cid, port))
        .await
        .map_err(|source| DialError::Vsock { cid, port, source })
}

/// Retry schedule: starts fast (the agent usually appears within a few ms of the first refusal)
/// and backs off to a short cap, so readiness is seen promptly without spinning.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_millis(2),
            max: Duration::from_millis(50),
        }
    }
}

impl Backoff {
    /// The delay after `delay`: doubled, capped.
    pub fn next(&self, delay: Duration) -> Duration {
        (delay * 2).min(self.max)
    }
}

/// Opens a stream to `endpoint`, retrying until `deadline` passes.
pub async fn dial(
    endpoint: &isola_agent_proto::AgentEndpoint,
    deadline: Instant,
    backoff: Backoff,
) -> Result<Socket, DialError> {
    use isola_agent_proto::AgentEndpoint;
    let started = Instant::now();
    let port = match endpoint {
        AgentEndpoint::Vsock { port, .. } | AgentEndpoint::HybridVsock { port, .. } => *port,
    };
    let mut delay = backoff.first;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let attempt = async {
            match endpoint {
                AgentEndpoint::Vsock { cid, port } => {
                    vsock_once(*cid, *port).await.map(Socket::from)
                }
                AgentEndpoint::HybridVsock { path, port } => {
                    hybrid_once(path, *port).await.map(Socket::from)
                }
            }
        };
        // A single attempt is bounded too: one stuck connection must not eat the whole deadline.
        let last = match tokio::time::timeout(remaining.min(ATTEMPT_TIMEOUT), attempt).await {
            Ok(Ok(socket)) => return Ok(socket),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "the connection attempt timed out".to_string(),
        };
        let now = Instant::now();
        if now + delay >= deadline {
            return Err(DialError::Deadline {
                port,
                waited: now - started,
                last,
            });
        }
        tracing::trace!(error = %last, ?delay, "agent not reachable yet; retrying");
        tokio::time::sleep(delay).await;
        delay = backoff.next(delay);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;
    use tokio::net::UnixListener;

    /// A fake hybrid vsock peer: reads the CONNECT line, answers `reply` (or closes when None),
    /// then echoes.
    async fn fake_peer(listener: UnixListener, reply: Option<&'static str>) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut reader = tokio::io::BufReader::new(stream);
                let mut line = String::new();
                reader.read_line(&mut line).await.unwrap();
                assert!(line.starts_with("CONNECT "), "{line:?}");
                let Some(reply) = reply else { return };
                let mut stream = reader.into_inner();
                stream.write_all(reply.as_bytes()).await.unwrap();
                let mut buf = [0u8; 64];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    }

    #[tokio::test]
    async fn handshake_then_raw_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.vsock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(fake_peer(listener, Some("OK 4321\n")));
        let mut s = hybrid_once(&path, 1024).await.unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
    }

    #[tokio::test]
    async fn closed_connection_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.vsock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(fake_peer(listener, None));
        let err = hybrid_once(&path, 1024).await.unwrap_err();
        assert!(
            matches!(err, DialError::Refused { port: 1024, .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn bad_and_oversized_replies_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        for (i, reply) in [
            "NO 1\n",
            "OK x\n",
            "OK 1234567890123456789012345678901234567890\n",
        ]
        .into_iter()
        .enumerate()
        {
            let path = dir.path().join(format!("vm{i}.vsock"));
            let listener = UnixListener::bind(&path).unwrap();
            tokio::spawn(fake_peer(listener, Some(reply)));
            let err = hybrid_once(&path, 1024).await.unwrap_err();
            assert!(
                matches!(err, DialError::BadReply { .. }),
                "{reply:?}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn dial_retries_until_the_guest_listens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.vsock");
        let endpoint = isola_agent_proto::AgentEndpoint::HybridVsock {
            path: path.clone(),
            port: 1024,
        };
        let p = path.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            fake_peer(UnixListener::bind(&p).unwrap(), Some("OK 1\n")).await;
        });
        let started = Instant::now();
        dial(
            &endpoint,
            started + Duration::from_secs(5),
            Backoff::default(),
        )
        .await
        .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn dial_gives_up_at_the_deadline_with_the_last_error() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = isola_agent_proto::AgentEndpoint::HybridVsock {
            path: dir.path().join("absent.vsock"),
            port: 1024,
        };
        let started = Instant::now();
        let Err(err) = dial(
            &endpoint,
            started + Duration::from_millis(300),
            Backoff::default(),
        )
        .await
        else {
            panic!("nothing listens, yet dial succeeded");
        };
        let waited = started.elapsed();
        assert!(waited < Duration::from_secs(2), "{waited:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("absent.vsock") && msg.contains("1024"),
            "{msg}"
        );
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        let b = Backoff::default();
        let mut d = b.first;
        for _ in 0..20 {
            d = b.next(d);
        }
        assert_eq!(d, b.max);
        assert_eq!(b.next(Duration::from_millis(2)), Duration::from_millis(4));
    }
}

#[cfg(test)]
mod ready_tests {
    use super::*;

    #[tokio::test]
    async fn ready_line_is_awaited_and_garbage_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.vsock");
        let sock = guest_initiated_socket(&path, 1026);
        assert_eq!(sock, dir.path().join("vm.vsock_1026"));
        let s = sock.clone();
        tokio::spawn(async move {
            // The guest retries until the host listens.
            let mut stream = loop {
                match tokio::net::UnixStream::connect(&s).await {
                    Ok(st) => break st,
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            };
            stream.write_all(b"HELLO!\n").await.unwrap();
            drop(stream);
            let mut stream = tokio::net::UnixStream::connect(&s).await.unwrap();
            stream
                .write_all(isola_agent_proto::READY_LINE)
                .await
                .unwrap();
        });
        wait_ready(&path, 1026, Instant::now() + Duration::from_secs(5))
            .await
            .unwrap();
        assert!(!sock.exists(), "the readiness socket is removed");
    }

    #[tokio::test]
    async fn no_announcement_times_out_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.vsock");
        let err = wait_ready(&path, 1026, Instant::now() + Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("did not announce readiness"),
            "{err}"
        );
    }
}
