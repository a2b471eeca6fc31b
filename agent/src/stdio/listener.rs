//! The stdio listener: vsock port [`STDIO_PORT`] in a VM, or `<control socket>.stdio` when the
//! agent serves on a Unix socket (`agent.listen=unix:PATH` listens for stdio on
//! `PATH.stdio`).
//!
//! Each connection starts with a header frame (4-byte big-endian length, then a
//! `StdioStreamHeader`, at most [`MAX_STDIO_HEADER_LEN`] bytes) naming the container, exec id
//! and stream; the rest of the connection is raw bytes, handed to that process's stdio slot. A
//! header for a process the agent does not know yet waits up to [`ATTACH_WAIT`] for it to be
//! created (the host may attach concurrently with CreateContainer/ExecProcess).

use std::sync::Arc;
use std::time::Duration;

use isola_agent_proto::agent::stdio_stream_header::Stream;
use isola_agent_proto::agent::StdioStreamHeader;
use isola_agent_proto::stdio_header::{self, HeaderError};
use isola_agent_proto::{MAX_STDIO_HEADER_LEN, STDIO_PORT};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use crate::cmdline::Listen;
use crate::container::Containers;

/// How long a new connection may take to send its header.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a header naming an unknown process waits for that process to appear.
pub const ATTACH_WAIT: Duration = Duration::from_secs(30);

/// The stdio socket path for a Unix control socket path.
pub fn unix_path(control: &str) -> String {
    format!("{control}.stdio")
}

/// A human-readable address of the stdio listener.
pub fn address(listen: &Listen) -> String {
    match listen {
        Listen::Vsock(_) => format!("vsock://-1:{STDIO_PORT}"),
        Listen::Unix(path) => format!("unix://{}", unix_path(path)),
    }
}

/// Binds the stdio listener and serves it on a background task.
pub fn start(listen: &Listen, containers: Arc<Containers>) -> std::io::Result<()> {
    let unix = match listen {
        Listen::Unix(path) => unix_path(path),
        Listen::Vsock(_) => String::new(),
    };
    crate::accept::start(
        listen,
        STDIO_PORT,
        &unix,
        "stdio stream",
        Streams(containers),
    )?;
    tracing::info!(addr = %address(listen), "agent accepting stdio streams");
    Ok(())
}

/// Hands each stdio connection to [`handle`].
#[derive(Clone)]
struct Streams(Arc<Containers>);

impl crate::accept::Handler for Streams {
    fn handle<S>(self, conn: S) -> impl std::future::Future<Output = ()> + Send + 'static
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        handle(conn, self.0)
    }
}

/// Why a connection's header was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum HeaderReadError {
    #[error("reading the stdio header: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Header(#[from] HeaderError),
}

/// Reads one header frame; the stream is left positioned at the first raw byte.
pub async fn read_header<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<StdioStreamHeader, HeaderReadError> {
    let mut prefix = [0u8; 4];
    r.read_exact(&mut prefix).await?;
    let len = stdio_header::body_len(prefix)?;
    debug_assert!(len <= MAX_STDIO_HEADER_LEN as usize);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(stdio_header::decode(&body)?)
}

async fn handle<S>(mut stream: S, containers: Arc<Containers>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let header = match tokio::time::timeout(HEADER_TIMEOUT, read_header(&mut stream)).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "dropping a stdio connection with a bad header");
            return;
        }
        Err(_) => {
            tracing::warn!(
                "dropping a stdio connection that sent no header within {HEADER_TIMEOUT:?}"
            );
            return;
        }
    };
    let (cid, eid) = (header.container_id.as_str(), header.exec_id.as_str());
    let kind = match header.stream.enum_value() {
        Ok(k) => k,
        Err(n) => {
            tracing::warn!(
                container_id = cid,
                exec_id = eid,
                stream = n,
                "dropping a stdio connection for an unknown stream kind"
            );
            return;
        }
    };
    let Some(process) = containers.wait_for_process(cid, eid, ATTACH_WAIT).await else {
        tracing::warn!(
            container_id = cid,
            exec_id = eid,
            ?kind,
            "dropping a stdio connection for a process that does not exist"
        );
        return;
    };
    let stdio = &process.stdio;
    let attached = match kind {
        Stream::STDIN => stdio.stdin.attach(Box::new(stream)),
        Stream::STDOUT => stdio.stdout.attach(Box::new(stream)),
        Stream::STDERR => stdio.stderr.attach(Box::new(stream)),
    };
    tracing::debug!(
        container_id = cid,
        exec_id = eid,
        ?kind,
        attached,
        "stdio stream attached"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn header_then_raw_bytes() {
        let (mut host, mut agent) = tokio::io::duplex(8192);
        let h = StdioStreamHeader {
            container_id: "c1".into(),
            exec_id: "e".into(),
            stream: Stream::STDIN.into(),
            ..Default::default()
        };
        host.write_all(&stdio_header::encode(&h)).await.unwrap();
        host.write_all(b"raw").await.unwrap();
        assert_eq!(read_header(&mut agent).await.unwrap(), h);
        let mut rest = [0u8; 3];
        agent.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"raw");
    }

    #[tokio::test]
    async fn oversized_header_is_rejected_without_reading_it() {
        let (mut host, mut agent) = tokio::io::duplex(64);
        host.write_all(&(MAX_STDIO_HEADER_LEN + 1).to_be_bytes())
            .await
            .unwrap();
        let e = read_header(&mut agent).await.unwrap_err();
        assert!(
            matches!(e, HeaderReadError::Header(HeaderError::TooLong(_))),
            "{e}"
        );
        assert!(e.to_string().contains("exceeds"), "{e}");
    }

    #[tokio::test]
    async fn truncated_header_is_an_io_error() {
        let (mut host, mut agent) = tokio::io::duplex(64);
        host.write_all(&[0, 0, 0, 10, 1, 2]).await.unwrap();
        drop(host);
        assert!(matches!(
            read_header(&mut agent).await.unwrap_err(),
            HeaderReadError::Io(_)
        ));
    }

    #[test]
    fn addresses() {
        assert_eq!(address(&Listen::Vsock(1024)), "vsock://-1:1025");
        assert_eq!(
            address(&Listen::Unix("/tmp/a.sock".into())),
            "unix:///tmp/a.sock.stdio"
        );
    }
}
