//! A process's stdio: containerd's FIFOs on the host, one agent stream per FIFO.
//!
//! stdout/stderr: agent stream -> FIFO, until the agent shuts the stream down (the process's
//! end of the pipe closed). stdin: FIFO -> agent stream, then a write shutdown passes EOF on.
//!
//! FIFOs are opened without blocking the executor (`tokio::net::unix::pipe`). The stdin FIFO
//! gets a second, write-only handle of ours (the "closer", as containerd's runc shim does):
//! while it is open, the reader never sees a spurious EOF before the client connected, and
//! dropping it on CloseIO lets the EOF of the client's close through. stdout/stderr are opened
//! read-write so that opening never fails for want of a reader and a reader that goes away
//! does not cost the process a SIGPIPE.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use isola_agent_proto::agent::StdioConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

use crate::agent::{AgentApi, BoxStream, StdioKind};
use crate::error::{Result, ShimError};

/// The stdio containerd asked for (paths empty when a stream is not wanted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

impl StdioPaths {
    /// The streams to attach: with a terminal, stderr is merged into stdout.
    pub fn streams(&self) -> Vec<(StdioKind, &str)> {
        let mut v = Vec::new();
        if !self.stdin.is_empty() {
            v.push((StdioKind::Stdin, self.stdin.as_str()));
        }
        if !self.stdout.is_empty() {
            v.push((StdioKind::Stdout, self.stdout.as_str()));
        }
        if !self.stderr.is_empty() && !self.terminal {
            v.push((StdioKind::Stderr, self.stderr.as_str()));
        }
        v
    }

    /// What the agent is told to expect.
    pub fn config(&self) -> StdioConfig {
        let streams = self.streams();
        let has = |k| streams.iter().any(|(kind, _)| *kind == k);
        StdioConfig {
            stdin: has(StdioKind::Stdin),
            stdout: has(StdioKind::Stdout),
            stderr: has(StdioKind::Stderr),
            terminal: self.terminal,
            ..Default::default()
        }
    }
}

type BoxRead = Box<dyn AsyncRead + Unpin + Send>;
type BoxWrite = Box<dyn AsyncWrite + Unpin + Send>;

/// containerd passes FIFO paths, or `file://` URIs (`ctr run --log-uri file://...`).
fn host_path(uri: &str) -> Result<&str> {
    if let Some(path) = uri.strip_prefix("file://") {
        return Ok(path);
    }
    if uri.contains("://") {
        return Err(ShimError::InvalidArgument(format!(
            "stdio {uri:?}: only FIFOs and file:// are supported (binary:// logging is not)"
        )));
    }
    Ok(uri)
}

fn is_fifo(path: &str) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo())
}

async fn open_output(uri: &str) -> Result<BoxWrite> {
    let path = host_path(uri)?;
    let err = |e| ShimError::io(format!("opening the output {path}"), e);
    if is_fifo(path) {
        Ok(Box::new(
            pipe::OpenOptions::new()
                .read_write(true)
                .open_sender(path)
                .map_err(err)?,
        ))
    } else {
        let f = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(Path::new(path))
            .await
            .map_err(err)?;
        Ok(Box::new(f))
    }
}

/// The stdin reader, and our own writer on the FIFO (the closer) when it is one.
async fn open_input(uri: &str) -> Result<(BoxRead, Option<pipe::Sender>)> {
    let path = host_path(uri)?;
    let err = |e| ShimError::io(format!("opening the input {path}"), e);
    if is_fifo(path) {
        let reader = pipe::OpenOptions::new().open_receiver(path).map_err(err)?;
        let closer = pipe::OpenOptions::new().open_sender(path).map_err(err)?;
        Ok((Box::new(reader), Some(closer)))
    } else {
        let f = tokio::fs::File::open(path).await.map_err(err)?;
        Ok((Box::new(f), None))
    }
}

const BUF: usize = 64 * 1024;

/// Agent stream -> host output, until the agent shuts the stream down. If the host side fails,
/// the rest is read and discarded so the guest process never blocks on a dead reader.
async fn copy_out(mut from: BoxStream, mut to: BoxWrite, progress: Arc<AtomicU64>, what: String) {
    let mut buf = vec![0u8; BUF];
    let mut sink_ok = true;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(stream = %what, error = %e, "reading from the guest failed");
                break;
            }
        };
        if sink_ok {
            if let Err(e) = to.write_all(&buf[..n]).await {
                tracing::warn!(stream = %what, error = %e, "writing to containerd's output failed; discarding the rest");
                sink_ok = false;
            }
        }
        progress.fetch_add(n as u64, Ordering::Relaxed);
    }
    let _ = to.flush().await;
}

/// Host stdin -> agent stream; at EOF a write shutdown tells the agent, then the connection is
/// held until the agent closes it, so nothing in flight is cut off.
async fn copy_in(mut from: BoxRead, mut to: BoxStream, what: String) {
    let mut buf = vec![0u8; BUF];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(stream = %what, error = %e, "reading containerd's stdin failed");
                break;
            }
        };
        if let Err(e) = to.write_all(&buf[..n]).await {
            tracing::debug!(stream = %what, error = %e, "the guest no longer takes stdin");
            return;
        }
    }
    if let Err(e) = to.shutdown().await {
        tracing::debug!(stream = %what, error = %e, "passing stdin EOF to the guest");
        return;
    }
    let mut sink = [0u8; 256];
    while matches!(to.read(&mut sink).await, Ok(n) if n > 0) {}
}

/// A process's attached stdio.
pub struct ProcessIo {
    closer: Mutex<Option<pipe::Sender>>,
    stdin: Mutex<Option<JoinHandle<()>>>,
    outputs: Mutex<Vec<JoinHandle<()>>>,
    progress: Arc<AtomicU64>,
}

impl ProcessIo {
    /// Opens the host ends and the agent streams of process `cid`/`exec_id` and starts
    /// copying. Call before the process starts, so no output is lost.
    pub async fn attach(
        agent: &dyn AgentApi,
        cid: &str,
        exec_id: &str,
        paths: &StdioPaths,
    ) -> Result<ProcessIo> {
        let io = ProcessIo {
            closer: Mutex::new(None),
            stdin: Mutex::new(None),
            outputs: Mutex::new(Vec::new()),
            progress: Arc::new(AtomicU64::new(0)),
        };
        for (kind, uri) in paths.streams() {
            let what = format!("{cid}/{exec_id}/{kind:?}");
            match kind {
                StdioKind::Stdin => {
                    let (reader, closer) = open_input(uri).await?;
                    let stream = agent.open_stdio(cid, exec_id, kind).await?;
                    *io.closer.lock().unwrap() = closer;
                    *io.stdin.lock().unwrap() = Some(tokio::spawn(copy_in(reader, stream, what)));
                }
                StdioKind::Stdout | StdioKind::Stderr => {
                    let writer = open_output(uri).await?;
                    let stream = agent.open_stdio(cid, exec_id, kind).await?;
                    let task = tokio::spawn(copy_out(stream, writer, io.progress.clone(), what));
                    io.outputs.lock().unwrap().push(task);
                }
            }
        }
        Ok(io)
    }

    /// CloseIO: drops our writer on the stdin FIFO, so the client's close reaches the guest.
    pub fn close_stdin(&self) {
        self.closer.lock().unwrap().take();
    }

    /// Waits until stdout and stderr have been copied completely. Gives up (and returns
    /// false) when no byte moved for `idle`: e.g. a daemonized child in the guest keeps the
    /// process's output open after it exited.
    pub async fn wait_outputs(&self, idle: Duration) -> bool {
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *self.outputs.lock().unwrap());
        let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
        let mut all = Box::pin(futures::future::join_all(tasks));
        let tick = Duration::from_millis(250).min(idle);
        let mut last = self.progress.load(Ordering::Relaxed);
        let mut quiet = Duration::ZERO;
        loop {
            tokio::select! {
                _ = &mut all => return true,
                _ = tokio::time::sleep(tick) => {
                    let now = self.progress.load(Ordering::Relaxed);
                    if now == last {
                        quiet += tick;
                        if quiet >= idle {
                            for task in &aborts { task.abort(); }
                            return false;
                        }
                    } else {
                        last = now;
                        quiet = Duration::ZERO;
                    }
                }
            }
        }
    }

    /// Stops all copying (the process is gone).
    pub fn abort(&self) {
        self.close_stdin();
        if let Some(task) = self.stdin.lock().unwrap().take() {
            task.abort();
        }
        for task in self.outputs.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

impl Drop for ProcessIo {
    fn drop(&mut self) {
        self.abort();
    }
}

#[cfg(test)]
#[path = "stdio_tests.rs"]
mod tests;
