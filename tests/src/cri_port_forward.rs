//! CRI PortForward as `kubectl port-forward` uses it: the call gives a URL on containerd's
//! streaming server, which speaks Kubernetes' websocket protocol `v4.channel.k8s.io`
//! ([`crate::cri_stream::connect`]) for port forwarding: one forwarded connection per websocket, channel 0 its data (both ways) and
//! channel 1 its errors; the server opens each channel with the port (two bytes,
//! little-endian). Every message starts with its channel.
//!
//! ```no_run
//! # async fn example(cri: &isola_tests::cri::CriEnv, pod: &str) -> anyhow::Result<()> {
//! let out = cri.port_forward(pod, 8080, b"GET / HTTP/1.0\r\n\r\n".to_vec(), None).await?;
//! assert!(out.data.starts_with(b"HTTP/1.0 200"));
//! # Ok(()) }
//! ```

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures::{SinkExt, StreamExt};
use k8s_cri::v1::PortForwardRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::cri::CriEnv;

/// How long one forwarded connection may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(180);
/// The largest websocket message sent.
const CHUNK: usize = 32 * 1024;

/// What came back over one forwarded connection.
#[derive(Debug, Clone, Default)]
pub struct Forwarded {
    /// Everything the pod sent.
    pub data: Vec<u8>,
    /// What the server reported on the error channel (empty when nothing failed).
    pub error: String,
}

impl CriEnv {
    /// Forwards one connection to `port` of pod `pod_id`: sends `send`, then reads until the
    /// server closes the stream or, with `expect`, until that many bytes came back (then
    /// closes it from this side).
    pub async fn port_forward(
        &self,
        pod_id: &str,
        port: u16,
        send: Vec<u8>,
        expect: Option<usize>,
    ) -> Result<Forwarded> {
        let url = self
            .client()
            .port_forward(PortForwardRequest {
                pod_sandbox_id: pod_id.into(),
                port: vec![i32::from(port)],
            })
            .await
            .map_err(|s| anyhow::Error::new(s).context(format!("PortForward {pod_id}:{port}")))?
            .into_inner()
            .url;
        tokio::time::timeout(FORWARD_TIMEOUT, forward(&url, port, send, expect))
            .await
            .map_err(|_| {
                anyhow!("port-forward to {pod_id}:{port}: no end after {FORWARD_TIMEOUT:?}")
            })?
            .with_context(|| format!("port-forward to {pod_id}:{port} ({url})"))
    }
}

async fn forward(url: &str, port: u16, send: Vec<u8>, expect: Option<usize>) -> Result<Forwarded> {
    let (mut sink, mut stream) = crate::cri_stream::connect(url).await?.split();
    let writer = tokio::spawn(async move {
        for chunk in send.chunks(CHUNK) {
            let mut msg = Vec::with_capacity(chunk.len() + 1);
            msg.push(0u8);
            msg.extend_from_slice(chunk);
            sink.send(Message::Binary(msg.into())).await?;
        }
        Ok::<_, anyhow::Error>(sink)
    });
    let mut out = Forwarded::default();
    let mut opened = [false, false];
    while let Some(msg) = stream.next().await {
        let data = match msg {
            Ok(Message::Binary(b)) => b.to_vec(),
            Ok(Message::Close(_)) => break,
            Ok(_) => continue,
            // The server may drop the connection at the end.
            Err(_) if opened[0] => break,
            Err(e) => return Err(e).context("reading the stream"),
        };
        let Some((&channel, payload)) = data.split_first() else {
            continue;
        };
        let ch = usize::from(channel);
        if ch < 2 && !opened[ch] {
            // Each channel opens with its port.
            if payload.len() != 2 || u16::from_le_bytes([payload[0], payload[1]]) != port {
                bail!("channel {ch} opened with {payload:?}, not port {port}");
            }
            opened[ch] = true;
            continue;
        }
        match channel {
            0 => out.data.extend_from_slice(payload),
            1 => out.error.push_str(&String::from_utf8_lossy(payload)),
            _ => {}
        }
        if expect.is_some_and(|n| out.data.len() >= n) {
            break;
        }
    }
    // A connection the pod (or the server) ended early leaves the writer with nowhere to
    // write: what came back tells the story.
    if let Ok(Ok(mut sink)) = writer.await {
        let _ = sink.close().await;
    }
    Ok(out)
}
