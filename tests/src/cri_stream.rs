//! Streaming Exec through CRI: the `Exec` call gives a URL on containerd's streaming server,
//! which speaks Kubernetes' websocket protocol `v4.channel.k8s.io`: every binary message starts
//! with its channel (0 stdin, 1 stdout, 2 stderr, 3 the final status as JSON, 4 resize).
//!
//! ```no_run
//! # async fn example(cri: &isola_tests::cri::CriEnv, cid: &str) -> anyhow::Result<()> {
//! let out = cri.exec_stream(cid, &["sh", "-c", "echo hi; exit 3"]).await?;
//! assert_eq!((out.exit_code, out.stdout.as_str()), (3, "hi\n"));
//! # Ok(()) }
//! ```

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures::StreamExt;
use k8s_cri::v1::ExecRequest;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use crate::cri::{CriEnv, ExecOutput};

/// The websocket subprotocol asked for.
pub const PROTOCOL: &str = "v4.channel.k8s.io";
/// How long one streaming exec may take.
const STREAM_TIMEOUT: Duration = Duration::from_secs(120);

impl CriEnv {
    /// Exec `cmd` in `cid` through CRI's streaming server (stdout and stderr, no stdin, no
    /// terminal); returns what came back on each stream and the exit status.
    pub async fn exec_stream(&self, cid: &str, cmd: &[&str]) -> Result<ExecOutput> {
        let req = ExecRequest {
            container_id: cid.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty: false,
            stdin: false,
            stdout: true,
            stderr: true,
        };
        let url = self
            .client()
            .exec(req)
            .await
            .map_err(|s| anyhow::Error::new(s).context(format!("Exec {cmd:?} in {cid}")))?
            .into_inner()
            .url;
        tokio::time::timeout(STREAM_TIMEOUT, stream(&url))
            .await
            .map_err(|_| {
                anyhow!("streaming exec {cmd:?} in {cid}: no end after {STREAM_TIMEOUT:?}")
            })?
            .with_context(|| format!("streaming exec {cmd:?} in {cid} ({url})"))
    }
}

/// A websocket on CRI's streaming `url` (`http://`), speaking [`PROTOCOL`] (Exec, Attach and
/// PortForward all use it).
pub async fn connect(url: &str) -> Result<Websocket> {
    let ws_url = url
        .strip_prefix("http://")
        .map(|rest| format!("ws://{rest}"))
        .ok_or_else(|| anyhow!("the streaming URL {url} is not http://"))?;
    let mut request = ws_url.into_client_request()?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(PROTOCOL));
    let (ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .context("the websocket handshake")?;
    Ok(ws)
}

/// What [`connect`] gives.
pub type Websocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn stream(url: &str) -> Result<ExecOutput> {
    let mut ws = connect(url).await?;
    let (mut stdout, mut stderr, mut status) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(msg) = ws.next().await {
        let data = match msg {
            Ok(Message::Binary(b)) => b.to_vec(),
            Ok(Message::Text(t)) => t.as_bytes().to_vec(),
            Ok(Message::Close(_)) => break,
            Ok(_) => continue,
            // The server may drop the connection right after the status.
            Err(_) if !status.is_empty() => break,
            Err(e) => return Err(e).context("reading the stream"),
        };
        let Some((&channel, payload)) = data.split_first() else {
            continue;
        };
        match channel {
            1 => stdout.extend_from_slice(payload),
            2 => stderr.extend_from_slice(payload),
            3 => status.extend_from_slice(payload),
            _ => {}
        }
    }
    Ok(ExecOutput {
        exit_code: exit_code(&status)?,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    })
}

/// The exit status in the final v4 status message: 0 for `Success`, the `ExitCode` cause of a
/// `NonZeroExitCode` failure.
pub fn exit_code(status: &[u8]) -> Result<i32> {
    if status.is_empty() {
        bail!("the stream ended without a status");
    }
    let v: serde_json::Value = serde_json::from_slice(status)
        .with_context(|| format!("status {}", String::from_utf8_lossy(status)))?;
    if v["status"] == "Success" {
        return Ok(0);
    }
    v["details"]["causes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["reason"] == "ExitCode")
        .and_then(|c| c["message"].as_str())
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| anyhow!("the exec failed: {v}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_give_exit_codes() {
        assert_eq!(
            exit_code(br#"{"metadata":{},"status":"Success"}"#).unwrap(),
            0
        );
        let failed = br#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#;
        assert_eq!(exit_code(failed).unwrap(), 3);
        let other = br#"{"metadata":{},"status":"Failure","message":"no such container"}"#;
        assert!(exit_code(other)
            .unwrap_err()
            .to_string()
            .contains("no such container"));
        assert!(exit_code(b"").is_err());
    }
}
