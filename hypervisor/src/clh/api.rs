//! A client for Cloud Hypervisor's REST API on its `--api-socket` Unix socket.
//!
//! Each call opens one connection and sends one HTTP/1.1 request with hyper's client
//! connection (no hand-written HTTP), bounded in time ([`ApiClient::timeout`]) and in the
//! size of the answer ([`MAX_RESPONSE`]): a VMM that hangs, dies mid-call or answers
//! garbage yields a typed [`ApiError`], never a hang. Requests that carry descriptors
//! (`vm.add-net`) send them as `SCM_RIGHTS` with the request ([`super::fdstream`]).

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;

use super::config::{NetConfig, ResizeRequest, VmConfig, VmInfo, VmmPing};
use super::fdstream::FdStream;
use crate::process::duration_ms;

/// Default deadline of one API call (connect, request, whole answer).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest answer read (`vm.info` is a few KiB).
pub const MAX_RESPONSE: usize = 1024 * 1024;

/// How much of an error answer goes into [`ApiError::Status`].
const MAX_ERROR_TEXT: usize = 2048;

/// A failed API call.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket could not be connected (the VMM is gone or not listening yet).
    #[error("connecting to Cloud Hypervisor's API socket {}: {source}", socket.display())]
    Connect {
        /// The API socket.
        socket: PathBuf,
        /// The connect error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed (e.g. the VMM closed the connection mid-call).
    #[error("Cloud Hypervisor API {endpoint}: {source} (did the VMM exit?)")]
    Http {
        /// The endpoint, e.g. "vm.boot".
        endpoint: &'static str,
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
    /// No whole answer within the deadline.
    #[error("Cloud Hypervisor API {endpoint} did not answer within {timeout_ms} ms")]
    Timeout {
        /// The endpoint.
        endpoint: &'static str,
        /// The deadline.
        timeout_ms: u64,
    },
    /// The VMM refused the request.
    #[error("Cloud Hypervisor API {endpoint} failed with HTTP {status}: {message}")]
    Status {
        /// The endpoint.
        endpoint: &'static str,
        /// The HTTP status.
        status: u16,
        /// The VMM's explanation (its answer's text, cut to 2 KiB).
        message: String,
    },
    /// The answer was larger than [`MAX_RESPONSE`] or could not be read whole.
    #[error("Cloud Hypervisor API {endpoint}: reading the answer failed: {reason}")]
    Body {
        /// The endpoint.
        endpoint: &'static str,
        /// Why.
        reason: String,
    },
    /// The answer is not the documented JSON.
    #[error("Cloud Hypervisor API {endpoint} answered something unexpected: {source}")]
    Decode {
        /// The endpoint.
        endpoint: &'static str,
        /// serde's error.
        #[source]
        source: serde_json::Error,
    },
}

impl ApiError {
    /// Whether the VMM could not be reached at all (not a refusal or a timeout).
    pub fn is_connect(&self) -> bool {
        matches!(self, ApiError::Connect { .. })
    }
}

/// A client for one VMM's API socket.
#[derive(Debug, Clone)]
pub struct ApiClient {
    socket: PathBuf,
    timeout: Duration,
}

impl ApiClient {
    /// A client for `socket` with [`DEFAULT_TIMEOUT`].
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same client with another per-call deadline.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The per-call deadline.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The API socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET vmm.ping`: the VMM's version; answers before any VM exists.
    pub async fn ping(&self) -> Result<VmmPing, ApiError> {
        self.call_json(Method::GET, "vmm.ping", None::<&()>).await
    }

    /// `PUT vm.create`: defines the VM (nothing runs yet).
    pub async fn create(&self, cfg: &VmConfig) -> Result<(), ApiError> {
        self.call(Method::PUT, "vm.create", Some(cfg), &[])
            .await
            .map(drop)
    }

    /// `PUT vm.add-net` with the tap descriptor `tap` attached. Before `vm.boot` it only
    /// extends the configuration.
    pub async fn add_net(&self, net: &NetConfig, tap: RawFd) -> Result<(), ApiError> {
        self.call(Method::PUT, "vm.add-net", Some(net), &[tap])
            .await
            .map(drop)
    }

    /// `PUT vm.boot`: starts the vCPUs; returns once they run, not once the guest booted.
    pub async fn boot(&self) -> Result<(), ApiError> {
        self.call_empty(Method::PUT, "vm.boot").await
    }

    /// `PUT vm.pause`.
    pub async fn pause(&self) -> Result<(), ApiError> {
        self.call_empty(Method::PUT, "vm.pause").await
    }

    /// `PUT vm.resume`.
    pub async fn resume(&self) -> Result<(), ApiError> {
        self.call_empty(Method::PUT, "vm.resume").await
    }

    /// `PUT vm.resize`: hot-plugs vCPUs and/or memory.
    pub async fn resize(&self, req: &ResizeRequest) -> Result<(), ApiError> {
        self.call(Method::PUT, "vm.resize", Some(req), &[])
            .await
            .map(drop)
    }

    /// `GET vm.info`: the configuration with defaults filled in, and the state.
    pub async fn info(&self) -> Result<VmInfo, ApiError> {
        self.call_json(Method::GET, "vm.info", None::<&()>).await
    }

    /// `PUT vm.shutdown`: stops the VM (the VMM keeps running).
    pub async fn shutdown(&self) -> Result<(), ApiError> {
        self.call_empty(Method::PUT, "vm.shutdown").await
    }

    /// `PUT vmm.shutdown`: the VMM exits.
    pub async fn shutdown_vmm(&self) -> Result<(), ApiError> {
        self.call_empty(Method::PUT, "vmm.shutdown").await
    }

    async fn call_empty(&self, method: Method, endpoint: &'static str) -> Result<(), ApiError> {
        self.call(method, endpoint, None::<&()>, &[])
            .await
            .map(drop)
    }

    async fn call_json<T: DeserializeOwned>(
        &self,
        method: Method,
        endpoint: &'static str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ApiError> {
        let bytes = self.call(method, endpoint, body, &[]).await?;
        serde_json::from_slice(&bytes).map_err(|source| ApiError::Decode { endpoint, source })
    }

    /// One request; the answer's body on a 2xx status.
    async fn call(
        &self,
        method: Method,
        endpoint: &'static str,
        body: Option<&impl Serialize>,
        fds: &[RawFd],
    ) -> Result<Bytes, ApiError> {
        let body = match body {
            // Serializing isola's own structs cannot fail.
            Some(b) => Bytes::from(serde_json::to_vec(b).unwrap_or_default()),
            None => Bytes::new(),
        };
        let exchange = self.exchange(method, endpoint, body, fds);
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(res) => res,
            Err(_) => Err(ApiError::Timeout {
                endpoint,
                timeout_ms: duration_ms(self.timeout),
            }),
        }
    }

    async fn exchange(
        &self,
        method: Method,
        endpoint: &'static str,
        body: Bytes,
        fds: &[RawFd],
    ) -> Result<Bytes, ApiError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ApiError::Connect {
                    socket: self.socket.clone(),
                    source,
                })?;
        let http = |source| ApiError::Http { endpoint, source };
        let io = TokioIo::new(FdStream::new(stream, fds.to_vec()));
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(http)?;
        // Drives the connection; ends when `sender` is dropped or the VMM hangs up.
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(format!("/api/v1/{endpoint}"))
            .header(hyper::header::HOST, "localhost")
            .header(hyper::header::ACCEPT, "application/json");
        if !body.is_empty() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        // The URI and headers are fixed, valid strings.
        let req = req.body(Full::new(body)).map_err(|e| ApiError::Body {
            endpoint,
            reason: e.to_string(),
        })?;
        let result = async {
            let resp = sender.send_request(req).await.map_err(http)?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| ApiError::Body {
                    endpoint,
                    reason: e.to_string(),
                })?
                .to_bytes();
            check_status(endpoint, status, bytes)
        }
        .await;
        drop(sender);
        driver.abort();
        result
    }
}

/// The body of a 2xx answer, or [`ApiError::Status`] with the VMM's text.
fn check_status(
    endpoint: &'static str,
    status: StatusCode,
    body: Bytes,
) -> Result<Bytes, ApiError> {
    if status.is_success() {
        return Ok(body);
    }
    let cut = &body[..body.len().min(MAX_ERROR_TEXT)];
    let text = String::from_utf8_lossy(cut).trim().to_owned();
    Err(ApiError::Status {
        endpoint,
        status: status.as_u16(),
        message: if text.is_empty() {
            status
                .canonical_reason()
                .unwrap_or("no explanation")
                .to_owned()
        } else {
            text
        },
    })
}
