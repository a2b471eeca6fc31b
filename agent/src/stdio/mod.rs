//! A process's stdio, joined to the host's stdio streams (see `isola_agent_proto`, "How stdio
//! travels").
//!
//! # The pieces
//!
//! Each process has three slots. An output slot (stdout, stderr) pairs a *source* (the read end
//! of the process's pipe, or a copy of its pty master) with a *stream* (the host's connection);
//! an input slot (stdin) pairs a stream with a *sink* (the write end of the process's stdin
//! pipe, or a copy of the pty master). Either half may come first: pipes exist from creation,
//! a pty master arrives when the process is created, and the host may attach its streams
//! before or after `StartContainer`/`ExecProcess` returns. When both halves are there a pump
//! task copies bytes. Until then the pipe holds the output (and eventually blocks the writer:
//! back-pressure, nothing is dropped).
//!
//! * stdout/stderr pump: source -> stream; at end of file (every writer of the pipe closed, or
//!   the pty's slave side closed) it shuts the stream down, so the host reads EOF.
//! * stdin pump: stream -> sink; when the host shuts its side down (or `CloseStdin` is called)
//!   the sink is closed, so the process reads EOF. For a terminal, EOF is sent as the
//!   terminal's EOF character (^D) since the master cannot be half-closed.
//! * Streams not requested by the host's `StdioConfig` are `/dev/null` for the process; a
//!   terminal's output nobody asked for is drained and dropped, so the process never blocks.
//!
//! # Ordering: exit, output, WaitProcess
//!
//! `WaitProcess` answers only after (1) the reaper has collected the process's exit and (2)
//! each output slot has been flushed: its pump saw end of file and shut the stream down after
//! writing every byte. So the host has received all output before it learns of the exit
//! (`ctr run` never loses trailing output). A process's descendants can keep a pipe open after
//! the process has exited; so step (2) gives up after [`FLUSH_IDLE`] without progress (no
//! bytes moved, or no stream attached) and answers anyway; the pump keeps forwarding.

pub mod fdio;
pub mod listener;

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::fcntl::OFlag;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use self::fdio::FdIo;
use crate::error::{AgentError, Result};

/// How long an output may sit without progress after the process exited before `WaitProcess`
/// stops waiting for it.
pub const FLUSH_IDLE: Duration = Duration::from_secs(3);

/// Size of the pumps' copy buffer.
const CHUNK: usize = 32 * 1024;

/// The terminal's default EOF character (VEOF, ^D).
const TERMINAL_EOF: u8 = 0x04;

/// Where a stream's bytes go (stdout, stderr).
pub type OutStream = Box<dyn AsyncWrite + Unpin + Send>;
/// Where a stream's bytes come from (stdin).
pub type InStream = Box<dyn AsyncRead + Unpin + Send>;

/// Which streams the host will attach (`StdioConfig`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StdioWanted {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub terminal: bool,
}

/// The descriptors the container process gets as its stdin, stdout, stderr (pipe mode).
pub type ProcessSide = [OwnedFd; 3];

/// Labels for logs.
#[derive(Debug, Clone)]
pub struct Labels {
    pub container_id: String,
    pub exec_id: String,
}

/// One process's stdio slots.
pub struct ProcessStdio {
    pub wanted: StdioWanted,
    pub stdin: Input,
    pub stdout: Output,
    pub stderr: Output,
}

impl ProcessStdio {
    /// Creates the slots and, for pipe mode, the process's side of them (pipes for the wanted
    /// streams, `/dev/null` for the others). A terminal's slots get their halves from
    /// [`ProcessStdio::set_terminal`] once the pty master is known.
    /// `exited` turns true when the process has exited (it ends a waiting stdin pump).
    pub fn new(
        wanted: StdioWanted,
        labels: Labels,
        exited: watch::Receiver<bool>,
    ) -> Result<(ProcessStdio, Option<ProcessSide>)> {
        let stdin = Input::new(wanted.stdin, wanted.terminal, labels.clone(), exited);
        let stdout = Output::new("stdout", wanted.stdout || wanted.terminal, labels.clone());
        let stderr = Output::new("stderr", wanted.stderr && !wanted.terminal, labels);
        if wanted.terminal {
            if !wanted.stdout {
                // Nobody will read the terminal: drain it so the process never blocks.
                stdout.attach(Box::new(tokio::io::sink()));
            }
            let stdio = ProcessStdio {
                wanted,
                stdin,
                stdout,
                stderr,
            };
            return Ok((stdio, None));
        }
        let null = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map(OwnedFd::from)
                .map_err(|e| AgentError::io("opening /dev/null", e))
        };
        let pipe = || {
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| AgentError::sys("creating a pipe", e))
        };
        let process_stdin = if wanted.stdin {
            let (r, w) = pipe()?;
            stdin.set_sink(w);
            r
        } else {
            null()?
        };
        let process_stdout = if wanted.stdout {
            let (r, w) = pipe()?;
            stdout.set_source(r);
            w
        } else {
            null()?
        };
        let process_stderr = if wanted.stderr {
            let (r, w) = pipe()?;
            stderr.set_source(r);
            w
        } else {
            null()?
        };
        let stdio = ProcessStdio {
            wanted,
            stdin,
            stdout,
            stderr,
        };
        Ok((stdio, Some([process_stdin, process_stdout, process_stderr])))
    }

    /// Wires a terminal's pty master: its output to stdout, stdin into it.
    pub fn set_terminal(&self, master: &OwnedFd) -> Result<()> {
        let dup = || {
            master
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| AgentError::io("duplicating the pty master", e))
        };
        self.stdout.set_source(dup()?);
        if self.wanted.stdin {
            self.stdin.set_sink(dup()?);
        }
        Ok(())
    }

    /// Waits until stdout and stderr are flushed to their streams (see the module docs).
    pub async fn flushed(&self) {
        self.stdout.flushed(FLUSH_IDLE).await;
        self.stderr.flushed(FLUSH_IDLE).await;
    }
}

// ---- output ----

struct OutputInner {
    source: Option<OwnedFd>,
    stream: Option<OutStream>,
    attached: bool,
}

/// An output slot (stdout or stderr).
pub struct Output {
    name: &'static str,
    used: bool,
    labels: Labels,
    inner: Mutex<OutputInner>,
    done: Arc<watch::Sender<bool>>,
    moved: Arc<AtomicU64>,
}

impl Output {
    /// A slot; an unused one (not wanted by the host) counts as flushed from the start.
    fn new(name: &'static str, used: bool, labels: Labels) -> Output {
        Output {
            name,
            used,
            labels,
            inner: Mutex::new(OutputInner {
                source: None,
                stream: None,
                attached: false,
            }),
            done: Arc::new(watch::Sender::new(!used)),
            moved: Arc::new(AtomicU64::new(0)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, OutputInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes forwarded so far.
    pub fn moved(&self) -> u64 {
        self.moved.load(Ordering::Relaxed)
    }

    fn set_source(&self, fd: OwnedFd) {
        let mut inner = self.lock();
        inner.source = Some(fd);
        self.maybe_start(&mut inner);
    }

    /// Attaches the host's stream. A second stream for the same slot, or a stream for a slot
    /// the host did not ask for, is shut down at once (it reads EOF) and reported.
    pub fn attach(&self, mut stream: OutStream) -> bool {
        let mut inner = self.lock();
        if !self.used || inner.attached {
            drop(inner);
            tracing::warn!(container_id = %self.labels.container_id, exec_id = %self.labels.exec_id,
                stream = self.name, "refusing a stdio stream: not requested or already attached");
            tokio::spawn(async move {
                let _ = stream.shutdown().await;
            });
            return false;
        }
        inner.attached = true;
        inner.stream = Some(stream);
        self.maybe_start(&mut inner);
        true
    }

    fn maybe_start(&self, inner: &mut OutputInner) {
        if inner.source.is_none() || inner.stream.is_none() {
            return;
        }
        let (Some(source), Some(stream)) = (inner.source.take(), inner.stream.take()) else {
            return;
        };
        let done = self.done.clone();
        let moved = self.moved.clone();
        let labels = self.labels.clone();
        let name = self.name;
        tokio::spawn(async move {
            pump_out(source, stream, &moved, name, &labels).await;
            done.send_replace(true);
        });
    }

    /// Waits until the pump has flushed everything, or until [`FLUSH_IDLE`]-like `idle` passes
    /// without a byte moving.
    pub async fn flushed(&self, idle: Duration) {
        let mut done = self.done.subscribe();
        loop {
            let before = self.moved();
            match tokio::time::timeout(idle, done.wait_for(|d| *d)).await {
                Ok(_) => return,
                Err(_) if self.moved() == before => {
                    tracing::warn!(container_id = %self.labels.container_id, exec_id = %self.labels.exec_id,
                        stream = self.name, attached = self.lock().attached,
                        "process exited but its {} is still open and idle; answering WaitProcess anyway", self.name);
                    return;
                }
                Err(_) => continue,
            }
        }
    }
}

async fn pump_out(
    source: OwnedFd,
    mut stream: OutStream,
    moved: &AtomicU64,
    name: &str,
    labels: &Labels,
) {
    let mut source = match FdIo::new(source) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(container_id = %labels.container_id, exec_id = %labels.exec_id, stream = name, error = %e, "cannot poll the process's output");
            let _ = stream.shutdown().await;
            return;
        }
    };
    let mut buf = vec![0u8; CHUNK];
    loop {
        match source.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                if let Err(e) = stream.write_all(&buf[..n]).await {
                    tracing::debug!(container_id = %labels.container_id, exec_id = %labels.exec_id, stream = name, error = %e, "host stream closed; dropping the rest of the output");
                    break;
                }
                moved.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(container_id = %labels.container_id, exec_id = %labels.exec_id, stream = name, error = %e, "reading the process's output failed");
                break;
            }
        }
    }
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
    tracing::debug!(container_id = %labels.container_id, exec_id = %labels.exec_id, stream = name,
        bytes = moved.load(Ordering::Relaxed), "output stream finished");
}

// ---- input ----

struct InputInner {
    sink: Option<OwnedFd>,
    stream: Option<InStream>,
    attached: bool,
    /// CloseStdin was called (or the pump finished): no more input.
    closed: bool,
    /// Tells a running pump to stop and close the sink.
    stop: Option<watch::Sender<bool>>,
}

/// The stdin slot.
pub struct Input {
    used: bool,
    terminal: bool,
    labels: Labels,
    exited: watch::Receiver<bool>,
    inner: Mutex<InputInner>,
}

impl Input {
    fn new(used: bool, terminal: bool, labels: Labels, exited: watch::Receiver<bool>) -> Input {
        Input {
            used,
            terminal,
            labels,
            exited,
            inner: Mutex::new(InputInner {
                sink: None,
                stream: None,
                attached: false,
                closed: false,
                stop: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, InputInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_sink(&self, fd: OwnedFd) {
        let mut inner = self.lock();
        if inner.closed {
            close_sink(fd, self.terminal);
            return;
        }
        inner.sink = Some(fd);
        self.maybe_start(&mut inner);
    }

    /// Attaches the host's stdin stream; refused (dropped) when not requested, already
    /// attached, or closed.
    pub fn attach(&self, stream: InStream) -> bool {
        let mut inner = self.lock();
        if !self.used || inner.attached || inner.closed {
            tracing::warn!(container_id = %self.labels.container_id, exec_id = %self.labels.exec_id,
                "refusing a stdin stream: not requested, already attached or closed");
            return false;
        }
        inner.attached = true;
        inner.stream = Some(stream);
        self.maybe_start(&mut inner);
        true
    }

    /// CloseStdin: the process reads end of file once the input already received is written.
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        if let Some(stop) = inner.stop.take() {
            stop.send_replace(true);
        } else if let Some(sink) = inner.sink.take() {
            close_sink(sink, self.terminal);
        }
        inner.stream = None;
    }

    fn maybe_start(&self, inner: &mut InputInner) {
        if inner.sink.is_none() || inner.stream.is_none() {
            return;
        }
        let (Some(sink), Some(stream)) = (inner.sink.take(), inner.stream.take()) else {
            return;
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        inner.stop = Some(stop_tx);
        let terminal = self.terminal;
        let labels = self.labels.clone();
        let exited = self.exited.clone();
        tokio::spawn(pump_in(stream, sink, terminal, stop_rx, exited, labels));
    }
}

/// Resolves once the flag is true (or its sender is gone).
async fn flag_set(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|set| *set).await.map(drop);
}

/// Closes a stdin sink: the process reads EOF (for a terminal: ^D, then our copy closes).
fn close_sink(sink: OwnedFd, terminal: bool) {
    if terminal {
        let _ = nix::unistd::write(&sink, &[TERMINAL_EOF]);
    }
    drop(sink);
}

async fn pump_in(
    mut stream: InStream,
    sink: OwnedFd,
    terminal: bool,
    mut stop: watch::Receiver<bool>,
    mut exited: watch::Receiver<bool>,
    labels: Labels,
) {
    let sink_fd = match sink.as_fd().try_clone_to_owned() {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(container_id = %labels.container_id, exec_id = %labels.exec_id, error = %e, "cannot duplicate the stdin sink");
            return;
        }
    };
    let mut writer = match FdIo::new(sink_fd) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(container_id = %labels.container_id, exec_id = %labels.exec_id, error = %e, "cannot poll the process's stdin");
            return;
        }
    };
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    let reason = loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) => break "end of the host's stdin",
                Ok(n) => {
                    if let Err(e) = writer.write_all(&buf[..n]).await {
                        tracing::debug!(container_id = %labels.container_id, exec_id = %labels.exec_id, error = %e, "the process no longer reads stdin");
                        break "the process closed its stdin";
                    }
                    total += n as u64;
                }
                Err(e) => {
                    tracing::debug!(container_id = %labels.container_id, exec_id = %labels.exec_id, error = %e, "reading the host's stdin failed");
                    break "the host's stdin failed";
                }
            },
            _ = flag_set(&mut stop) => break "CloseStdin",
            _ = flag_set(&mut exited) => break "the process exited",
        }
    };
    drop(writer);
    close_sink(sink, terminal);
    tracing::debug!(container_id = %labels.container_id, exec_id = %labels.exec_id, bytes = total, reason, "stdin stream finished");
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    fn labels() -> Labels {
        Labels {
            container_id: "c".into(),
            exec_id: String::new(),
        }
    }

    fn wanted_all() -> StdioWanted {
        StdioWanted {
            stdin: true,
            stdout: true,
            stderr: true,
            terminal: false,
        }
    }

    #[tokio::test]
    async fn output_written_before_attach_is_delivered_and_flushed() {
        let (_exit_tx, exit_rx) = watch::channel(false);
        let (stdio, side) = ProcessStdio::new(wanted_all(), labels(), exit_rx).unwrap();
        let [_stdin, stdout, stderr] = side.unwrap();
        nix::unistd::write(&stdout, b"early bytes").unwrap();
        drop(stdout);
        let (ours, mut theirs) = duplex(1024);
        assert!(stdio.stdout.attach(Box::new(ours)));
        let mut got = Vec::new();
        theirs.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"early bytes");
        // Nobody attached stderr: flushed() gives up after the idle bound instead of hanging.
        drop(stderr);
        tokio::time::timeout(Duration::from_secs(1), stdio.stdout.flushed(FLUSH_IDLE))
            .await
            .unwrap();
        let started = std::time::Instant::now();
        stdio.stderr.flushed(Duration::from_millis(200)).await;
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn second_attach_and_unwanted_streams_are_refused() {
        let (_exit_tx, exit_rx) = watch::channel(false);
        let wanted = StdioWanted {
            stdout: true,
            ..Default::default()
        };
        let (stdio, _side) = ProcessStdio::new(wanted, labels(), exit_rx).unwrap();
        assert!(stdio.stdout.attach(Box::new(tokio::io::sink())));
        assert!(!stdio.stdout.attach(Box::new(tokio::io::sink())));
        let (ours, mut theirs) = duplex(64);
        assert!(!stdio.stderr.attach(Box::new(ours)));
        // The refused stream is shut down: the host reads EOF.
        let mut got = Vec::new();
        theirs.read_to_end(&mut got).await.unwrap();
        assert!(got.is_empty());
        assert!(!stdio.stdin.attach(Box::new(tokio::io::empty())));
        // Unused outputs count as flushed.
        tokio::time::timeout(Duration::from_millis(100), stdio.stderr.flushed(FLUSH_IDLE))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn stdin_flows_and_eof_closes_the_pipe() {
        let (_exit_tx, exit_rx) = watch::channel(false);
        let (stdio, side) = ProcessStdio::new(wanted_all(), labels(), exit_rx).unwrap();
        let [stdin, _o, _e] = side.unwrap();
        let (mut host, ours) = duplex(1024);
        assert!(stdio.stdin.attach(Box::new(ours)));
        host.write_all(b"typed").await.unwrap();
        drop(host);
        let mut process_stdin = FdIo::new(stdin).unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), process_stdin.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, b"typed");
    }

    #[tokio::test]
    async fn close_stdin_before_attach_gives_eof_and_refuses_later_streams() {
        let (_exit_tx, exit_rx) = watch::channel(false);
        let (stdio, side) = ProcessStdio::new(wanted_all(), labels(), exit_rx).unwrap();
        let [stdin, _o, _e] = side.unwrap();
        stdio.stdin.close();
        let mut process_stdin = FdIo::new(stdin).unwrap();
        let mut got = Vec::new();
        process_stdin.read_to_end(&mut got).await.unwrap();
        assert!(got.is_empty());
        assert!(!stdio.stdin.attach(Box::new(tokio::io::empty())));
    }

    #[tokio::test]
    async fn stdin_pump_ends_when_the_process_exits() {
        let (exit_tx, exit_rx) = watch::channel(false);
        let (stdio, side) = ProcessStdio::new(wanted_all(), labels(), exit_rx).unwrap();
        let [stdin, _o, _e] = side.unwrap();
        let (_host, ours) = duplex(64);
        assert!(stdio.stdin.attach(Box::new(ours)));
        exit_tx.send_replace(true);
        // The pump lets go of the pipe's write end although the host never closed its side.
        let mut process_stdin = FdIo::new(stdin).unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), process_stdin.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
    }
}
