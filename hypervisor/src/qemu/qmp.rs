//! A small QMP (QEMU Machine Protocol) client over a tokio Unix socket.
//!
//! Decision: hand-written rather than the `qapi` crate. We need a handful of commands
//! (`qmp_capabilities`, `query-status`, `stop`, `cont`, `quit`, and for hotplug
//! `query-hotpluggable-cpus`, `query-memory-devices`, `device_add`, `object-add`,
//! `object-del`); `qapi`'s QMP support brings
//! the whole generated QEMU schema (`qapi-qmp`: thousands of types compiled into the crate) and
//! its async feature stack, which is a lot of build time on a 2-core machine for five untyped
//! calls. We would still have had to wrap it to get what we must guarantee here: a cap on the
//! length of every line QEMU sends, a timeout on every command, and recovery from a timed-out
//! command. The protocol itself is simple: line-delimited JSON, a greeting, `qmp_capabilities`,
//! then `{"execute": ..., "id": ...}` requests answered by `{"return": ...}` or
//! `{"error": ...}`, with asynchronous `{"event": ...}` lines interleaved.
//!
//! Robustness:
//! - Reads go into our own buffer, so a command cancelled by its timeout leaves no half-read
//!   line behind; every request carries an `id` and replies with another id (late replies to
//!   timed-out commands) are skipped.
//! - A line longer than the cap fails the command with [`QmpError::LineTooLong`]; the rest of
//!   that line is discarded and the connection stays usable.
//! - A timeout in the middle of writing a request would leave QEMU's parser mid-object, so the
//!   client is marked broken and later commands fail with [`QmpError::Broken`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::process::duration_ms;

/// Longest line accepted from QEMU. Replies to the commands we send are tiny; this leaves
/// room for large events while bounding memory.
pub const MAX_LINE: usize = 256 * 1024;

/// Default deadline for connecting plus greeting, and for each command.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest excerpt of an offending line kept in an error.
const EXCERPT: usize = 200;

/// QMP failures.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// Connecting to the QMP socket failed.
    #[error("connecting to QMP socket {}: {source}", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the socket failed.
    #[error("QMP I/O error during {during}: {source}")]
    Io {
        /// What was being done.
        during: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// QEMU closed the connection.
    #[error("QMP connection closed by QEMU during {during}")]
    Closed {
        /// What was being done.
        during: String,
    },
    /// No answer in time.
    #[error("QMP {during} timed out after {timeout_ms} ms")]
    Timeout {
        /// What was being done.
        during: String,
        /// The deadline that passed.
        timeout_ms: u64,
    },
    /// QEMU sent a line longer than the cap.
    #[error("QMP line longer than {limit} bytes rejected during {during}")]
    LineTooLong {
        /// What was being done.
        during: String,
        /// The cap.
        limit: usize,
    },
    /// QEMU sent something that is not a QMP message.
    #[error("malformed QMP message during {during} ({detail}): {excerpt}")]
    Malformed {
        /// What was being done.
        during: String,
        /// What is wrong.
        detail: String,
        /// The start of the offending line.
        excerpt: String,
    },
    /// QEMU answered the command with an error.
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        /// The command.
        command: String,
        /// QMP error class, e.g. "GenericError", "CommandNotFound".
        class: String,
        /// QEMU's description.
        desc: String,
    },
    /// An earlier command timed out while its request was being written.
    #[error("QMP connection unusable: a request was interrupted while being written")]
    Broken,
}

/// The result of `query-status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmStatus {
    /// Whether vCPUs are running.
    pub running: bool,
    /// QEMU's run state: "running", "paused", "prelaunch", "shutdown", ...
    pub status: String,
}

/// One entry of `query-hotpluggable-cpus`: a possible CPU, plugged or not.
#[derive(Debug, Clone, PartialEq)]
pub struct HotpluggableCpu {
    /// The device driver to `device_add`, e.g. "qemu64-x86_64-cpu".
    pub driver: String,
    /// Its topology properties (socket-id, core-id, thread-id, node-id, ...), passed back
    /// verbatim to `device_add`.
    pub props: Map<String, Value>,
    /// Set when the CPU is present; "/machine/peripheral/<id>" for hot-plugged ones.
    pub qom_path: Option<String>,
    /// How many vCPUs the entry stands for (1 on x86).
    pub vcpus_count: u32,
}

impl HotpluggableCpu {
    /// A topology property as a number (missing = 0), for ordering.
    pub fn prop(&self, key: &str) -> u64 {
        self.props.get(key).and_then(Value::as_u64).unwrap_or(0)
    }

    /// The `device_add` id of a hot-plugged CPU (None for boot CPUs and free slots).
    pub fn device_id(&self) -> Option<&str> {
        self.qom_path
            .as_deref()?
            .strip_prefix("/machine/peripheral/")
    }
}

/// One entry of `query-memory-devices`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryDevice {
    /// "dimm", "nvdimm", "virtio-mem", ...
    pub kind: String,
    /// The device id, if it has one.
    pub id: Option<String>,
    /// Its size in bytes.
    pub size: u64,
}

/// Reads lines of at most `max` bytes; cancellation-safe (partial data stays buffered).
struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    max: usize,
    /// Dropping the rest of an oversized line up to its newline.
    discarding: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    fn new(inner: R, max: usize) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            max,
            discarding: false,
        }
    }

    async fn next_line(&mut self, during: &str) -> Result<Vec<u8>, QmpError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if std::mem::take(&mut self.discarding) {
                    continue;
                }
                if line.len() > self.max {
                    return Err(self.too_long(during));
                }
                return Ok(line);
            }
            if self.discarding {
                self.buf.clear();
            } else if self.buf.len() > self.max {
                self.buf.clear();
                self.discarding = true;
                return Err(self.too_long(during));
            }
            let mut chunk = [0u8; 8192];
            let n = self
                .inner
                .read(&mut chunk)
                .await
                .map_err(|source| QmpError::Io {
                    during: during.to_owned(),
                    source,
                })?;
            if n == 0 {
                return Err(QmpError::Closed {
                    during: during.to_owned(),
                });
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn too_long(&self, during: &str) -> QmpError {
        QmpError::LineTooLong {
            during: during.to_owned(),
            limit: self.max,
        }
    }
}

/// A connected QMP session, in command mode (capabilities negotiated).
pub struct QmpClient<S = UnixStream> {
    reader: LineReader<tokio::io::ReadHalf<S>>,
    writer: tokio::io::WriteHalf<S>,
    timeout: Duration,
    next_id: u64,
    /// Set while a request is being written; still set at the next call = it was interrupted.
    writing: bool,
    /// The sandbox id, for logs.
    vm: String,
}

impl<S> std::fmt::Debug for QmpClient<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QmpClient")
            .field("vm", &self.vm)
            .field("next_id", &self.next_id)
            .finish_non_exhaustive()
    }
}

impl QmpClient<UnixStream> {
    /// Connects to QEMU's QMP socket at `path`, reads the greeting and negotiates
    /// capabilities; each step, and later each command, is bounded by `timeout`.
    pub async fn connect(path: &Path, timeout: Duration, vm: &str) -> Result<Self, QmpError> {
        let stream = tokio::time::timeout(timeout, UnixStream::connect(path))
            .await
            .map_err(|_| QmpError::Timeout {
                during: "connect".into(),
                timeout_ms: duration_ms(timeout),
            })?
            .map_err(|source| QmpError::Connect {
                path: path.to_owned(),
                source,
            })?;
        Self::handshake(stream, timeout, MAX_LINE, vm).await
    }
}

impl<S: AsyncRead + AsyncWrite> QmpClient<S> {
    /// Runs the QMP handshake on an already connected stream.
    pub async fn handshake(
        stream: S,
        timeout: Duration,
        max_line: usize,
        vm: &str,
    ) -> Result<Self, QmpError> {
        let (r, w) = tokio::io::split(stream);
        let mut client = Self {
            reader: LineReader::new(r, max_line),
            writer: w,
            timeout,
            next_id: 1,
            writing: false,
            vm: vm.to_owned(),
        };
        let greeting = tokio::time::timeout(timeout, client.reader.next_line("greeting"))
            .await
            .map_err(|_| QmpError::Timeout {
                during: "greeting".into(),
                timeout_ms: duration_ms(timeout),
            })??;
        let greeting = parse_object(&greeting, "greeting")?;
        let Some(version) = greeting.get("QMP") else {
            return Err(malformed(
                "greeting",
                "no \"QMP\" member",
                &greeting_text(&greeting),
            ));
        };
        let version = version.get("version").cloned().unwrap_or_default();
        tracing::debug!(sandbox = %client.vm, %version, "QMP greeting");
        client.execute("qmp_capabilities", None).await?;
        Ok(client)
    }

    /// Changes the deadline applied to each later command.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Runs `command` with optional `arguments` and returns the `return` value.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        if self.writing {
            return Err(QmpError::Broken);
        }
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.execute_inner(command, arguments))
            .await
            .map_err(|_| QmpError::Timeout {
                during: command.to_owned(),
                timeout_ms: duration_ms(timeout),
            })?
    }

    async fn execute_inner(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let id = format!("isola-{}", self.next_id);
        self.next_id += 1;
        let mut req = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            req["arguments"] = args;
        }
        let mut bytes = req.to_string().into_bytes();
        bytes.push(b'\n');
        let io_err = |source| QmpError::Io {
            during: command.to_owned(),
            source,
        };
        self.writing = true;
        self.writer.write_all(&bytes).await.map_err(io_err)?;
        self.writer.flush().await.map_err(io_err)?;
        self.writing = false;

        loop {
            let line = self.reader.next_line(command).await?;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let msg = parse_object(&line, command)?;
            if let Some(event) = msg.get("event") {
                tracing::debug!(sandbox = %self.vm, event = %event, "QMP event");
                continue;
            }
            match msg.get("id") {
                Some(Value::String(got)) if *got == id => {}
                Some(other) => {
                    tracing::debug!(sandbox = %self.vm, id = %other, "skipping stale QMP reply");
                    continue;
                }
                // QEMU echoes the id; a reply without one cannot be matched, take it as ours.
                None => {}
            }
            if let Some(ret) = msg.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = msg.get("error") {
                let field = |k: &str| {
                    err.get(k)
                        .and_then(Value::as_str)
                        .unwrap_or("(missing)")
                        .to_owned()
                };
                return Err(QmpError::Command {
                    command: command.to_owned(),
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            return Err(malformed(
                command,
                "neither return, error nor event",
                &greeting_text(&msg),
            ));
        }
    }

    /// `query-status`.
    pub async fn query_status(&mut self) -> Result<VmStatus, QmpError> {
        let ret = self.execute("query-status", None).await?;
        let running = ret.get("running").and_then(Value::as_bool);
        let status = ret.get("status").and_then(Value::as_str);
        match (running, status) {
            (Some(running), Some(status)) => Ok(VmStatus {
                running,
                status: status.to_owned(),
            }),
            _ => Err(malformed(
                "query-status",
                "missing running/status",
                &ret.to_string(),
            )),
        }
    }

    /// `stop`: pause the vCPUs.
    pub async fn stop(&mut self) -> Result<(), QmpError> {
        self.execute("stop", None).await.map(drop)
    }

    /// `cont`: resume the vCPUs.
    pub async fn cont(&mut self) -> Result<(), QmpError> {
        self.execute("cont", None).await.map(drop)
    }

    /// `migrate-set-capabilities x-ignore-shared`: shared RAM (a template's RAM file) is not
    /// sent in the stream; both sides map the same contents.
    pub async fn migrate_ignore_shared(&mut self) -> Result<(), QmpError> {
        let caps = json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]});
        self.execute("migrate-set-capabilities", Some(caps))
            .await
            .map(drop)
    }

    /// `migrate` to `uri` (outgoing; follow it with [`QmpClient::migration_status`]).
    pub async fn migrate(&mut self, uri: &str) -> Result<(), QmpError> {
        self.execute("migrate", Some(json!({ "uri": uri })))
            .await
            .map(drop)
    }

    /// `migrate-incoming` from `uri` (QEMU started with `-incoming defer`).
    pub async fn migrate_incoming(&mut self, uri: &str) -> Result<(), QmpError> {
        self.execute("migrate-incoming", Some(json!({ "uri": uri })))
            .await
            .map(drop)
    }

    /// `query-migrate`: the status ("active", "completed", "failed", ...) and QEMU's error
    /// description when it failed.
    pub async fn migration_status(&mut self) -> Result<(String, Option<String>), QmpError> {
        let ret = self.execute("query-migrate", None).await?;
        let status = ret
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("none")
            .to_owned();
        let desc = ret
            .get("error-desc")
            .and_then(Value::as_str)
            .map(str::to_owned);
        Ok((status, desc))
    }

    /// `query-hotpluggable-cpus`: every possible CPU, present or not.
    pub async fn query_hotpluggable_cpus(&mut self) -> Result<Vec<HotpluggableCpu>, QmpError> {
        self.query_list(
            "query-hotpluggable-cpus",
            "an entry without type/props",
            |e| {
                let driver = e.get("type").and_then(Value::as_str)?;
                let props = e.get("props").and_then(Value::as_object)?;
                Some(HotpluggableCpu {
                    driver: driver.to_owned(),
                    props: props.clone(),
                    qom_path: e.get("qom-path").and_then(Value::as_str).map(str::to_owned),
                    vcpus_count: e
                        .get("vcpus-count")
                        .and_then(Value::as_u64)
                        .and_then(|n| u32::try_from(n).ok())
                        .unwrap_or(1),
                })
            },
        )
        .await
    }

    /// `query-memory-devices`: the plugged DIMMs (boot RAM is not listed).
    pub async fn query_memory_devices(&mut self) -> Result<Vec<MemoryDevice>, QmpError> {
        self.query_list(
            "query-memory-devices",
            "an entry without type/data.size",
            |e| {
                let kind = e.get("type").and_then(Value::as_str)?;
                let data = e.get("data");
                let size = data.and_then(|d| d.get("size")).and_then(Value::as_u64)?;
                Some(MemoryDevice {
                    kind: kind.to_owned(),
                    id: data
                        .and_then(|d| d.get("id"))
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    size,
                })
            },
        )
        .await
    }

    /// Runs query `cmd`, whose answer is an array, and parses each entry with `entry`; an
    /// answer that is not an array, or an entry `entry` rejects (`missing` says what it
    /// lacks), is [`QmpError::Malformed`].
    async fn query_list<T>(
        &mut self,
        cmd: &str,
        missing: &str,
        entry: impl Fn(&Value) -> Option<T>,
    ) -> Result<Vec<T>, QmpError> {
        let ret = self.execute(cmd, None).await?;
        let bad = |detail: &str| malformed(cmd, detail, &ret.to_string());
        let Some(list) = ret.as_array() else {
            return Err(bad("not an array"));
        };
        list.iter()
            .map(|e| entry(e).ok_or_else(|| bad(missing)))
            .collect()
    }

    /// `device_add` with `arguments` (driver, id, properties).
    pub async fn device_add(&mut self, arguments: Value) -> Result<(), QmpError> {
        self.execute("device_add", Some(arguments)).await.map(drop)
    }

    /// `object-add` with `arguments` (qom-type, id, properties).
    pub async fn object_add(&mut self, arguments: Value) -> Result<(), QmpError> {
        self.execute("object-add", Some(arguments)).await.map(drop)
    }

    /// `object-del` of object `id`.
    pub async fn object_del(&mut self, id: &str) -> Result<(), QmpError> {
        self.execute("object-del", Some(json!({ "id": id })))
            .await
            .map(drop)
    }

    /// `quit`: make QEMU exit. QEMU may close the connection right after (or instead of)
    /// answering, so a closed connection counts as success.
    pub async fn quit(&mut self) -> Result<(), QmpError> {
        match self.execute("quit", None).await {
            Ok(_) | Err(QmpError::Closed { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn parse_object(line: &[u8], during: &str) -> Result<Map<String, Value>, QmpError> {
    match serde_json::from_slice::<Value>(line) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(malformed(
            during,
            "not a JSON object",
            &String::from_utf8_lossy(line),
        )),
        Err(e) => Err(malformed(
            during,
            &e.to_string(),
            &String::from_utf8_lossy(line),
        )),
    }
}

fn greeting_text(map: &Map<String, Value>) -> String {
    Value::Object(map.clone()).to_string()
}

fn malformed(during: &str, detail: &str, line: &str) -> QmpError {
    QmpError::Malformed {
        during: during.to_owned(),
        detail: detail.to_owned(),
        excerpt: line.chars().take(EXCERPT).collect(),
    }
}

#[cfg(test)]
#[path = "qmp_tests.rs"]
mod tests;
