//! youki's libcontainer, run in a helper process.
//!
//! Every libcontainer operation that may fork or wait (create, exec, start with its hooks,
//! delete with its hooks) runs in a short-lived helper process. The helper is a child forked
//! by the container factory ([`factory`]: one warm, single-threaded exec of the agent binary,
//! started once the agent is ready), or, before the factory runs and if it ever exits, the
//! agent binary re-executed as `/proc/self/exe --isola-libcontainer-helper`. Both run the same
//! code ([`helper::answer`]) and are the agent's children. Why not in the agent:
//!
//! * libcontainer forks with a raw `clone3` and then runs Rust code (allocation, logging) in the
//!   child. In the agent's multi-threaded tokio runtime a lock held by another thread at that
//!   moment would stay locked forever in the child. The helper is single-threaded.
//! * libcontainer `waitpid`s its intermediate process and its hooks; the agent's reaper owns
//!   `waitpid(-1)` and would steal those statuses (see [`crate::reaper`]). In the helper those
//!   are the helper's own children, invisible to the agent.
//! * A fresh `exec` inherits no descriptors but the ones passed on purpose: another container's
//!   pipes can never leak into a container.
//!
//! Container processes inherit the helper's ignored signals across `exec`, so the helper is
//! started with fork+exec (not posix_spawn, which leaves glibc's internal signals ignored) and
//! restores SIGPIPE (which every Rust program ignores) before anything else: containers start
//! with no signal ignored, as under runc. Every process runs through isola's own executor:
//! programs found as runc finds them, a window size for a pty that has none, and the
//! container's seccomp filter on exec'd processes (see [`executor`], [`seccomp`]).
//!
//! The agent and the helper talk over a `SOCK_SEQPACKET` socket pair (the exec'd helper's
//! stdin, or the reply socket handed to the factory): one JSON [`Request`] (with the
//! container's stdio fds attached by SCM_RIGHTS), one JSON [`Reply::Done`], then the helper
//! exits. The agent waits for the helper's exit through the reaper, and only then reads the
//! answer without blocking: the container process inherits the socket until it execs, so
//! end-of-file cannot mark the end of the answer.

mod executor;
pub mod factory;
mod factory_client;
pub mod helper;
mod lookup;
pub mod seccomp;

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{MsgFlags, SockFlag};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::error::{AgentError, Result};
use crate::fdpass;
use crate::reaper::Reaper;

/// The first argument that turns the agent binary into the helper.
pub const HELPER_ARG: &str = "--isola-libcontainer-helper";
/// The first argument that turns the agent binary into the container factory.
pub const FACTORY_ARG: &str = "--isola-container-factory";
/// How the factory names itself in logs.
pub const FACTORY_NAME: &str = "container factory";
/// The environment variable carrying the agent's log level to the helper.
pub const LOG_ENV: &str = "ISOLA_AGENT_LOG";
/// libcontainer's state directory (one subdirectory per container).
pub const LIBCONTAINER_ROOT: &str = "/run/isola/libcontainer";
/// The largest request or response message.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// How long one helper run may take before it is killed (TCG guests are slow).
const HELPER_TIMEOUT: Duration = Duration::from_secs(120);

/// One libcontainer operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Create a container from `bundle/config.json`; the init process waits to be started.
    /// With `stdio`, three fds (stdin, stdout, stderr) come with the request; with
    /// `console_socket`, the init's pty master is sent to that Unix socket instead.
    Create {
        id: String,
        bundle: PathBuf,
        console_socket: Option<PathBuf>,
        stdio: bool,
    },
    /// Run the OCI process in `process` (a JSON file) in container `id`; it runs at once.
    /// `seccomp` names a JSON [`seccomp::ExecSeccomp`]: the container's filter, which the
    /// process gets right before it runs its program.
    Exec {
        id: String,
        process: PathBuf,
        console_socket: Option<PathBuf>,
        stdio: bool,
        seccomp: Option<PathBuf>,
    },
    /// Let a created container's init exec its process.
    Start { id: String },
    /// Remove libcontainer's state and the container's cgroup (killing what is left in it).
    Delete { id: String },
}

impl Op {
    /// The container the operation is for.
    pub fn container_id(&self) -> &str {
        match self {
            Op::Create { id, .. } | Op::Exec { id, .. } | Op::Start { id } | Op::Delete { id } => {
                id
            }
        }
    }
}

/// What the helper receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// libcontainer's root (state) directory.
    pub root: PathBuf,
    pub op: Op,
    /// The sandbox's id for the helper's log lines (a factory child cannot take it from its
    /// environment: the factory starts before the host names the sandbox).
    #[serde(default)]
    pub sandbox_id: Option<String>,
}

/// How an operation failed, so the agent can answer with the right status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    AlreadyExists,
    NotFound,
    WrongState,
    InvalidSpec,
    Other,
}

/// A message on an operation's reply socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// From the factory: the child running the operation (the agent's child) is `pid`.
    Started { pid: i32 },
    /// From the factory: no child could be started.
    Refused { message: String },
    /// From the helper or the factory's child: the operation's outcome.
    Done(Response),
}

/// What the helper answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// Done; `pid` is the new process's (create, exec).
    Ok {
        pid: Option<i32>,
    },
    Failed {
        kind: FailureKind,
        message: String,
    },
}

impl Response {
    /// The agent-side result.
    pub fn into_result(self) -> Result<Option<Pid>> {
        match self {
            Response::Ok { pid } => Ok(pid.map(Pid::from_raw)),
            Response::Failed { kind, message } => Err(match kind {
                FailureKind::AlreadyExists => AgentError::AlreadyExists(message),
                FailureKind::NotFound => AgentError::NotFound(message),
                FailureKind::WrongState => AgentError::FailedPrecondition(message),
                FailureKind::InvalidSpec => AgentError::InvalidArgument(message),
                FailureKind::Other => AgentError::Runtime(message),
            }),
        }
    }
}

/// Runs libcontainer operations through the container factory, or helper processes.
#[derive(Clone)]
pub struct Runtime {
    reaper: Reaper,
    root: PathBuf,
    log_level: String,
    factory: factory_client::Factory,
}

impl Runtime {
    pub fn new(reaper: Reaper, root: impl Into<PathBuf>, log_level: &str) -> Runtime {
        Runtime {
            reaper,
            root: root.into(),
            log_level: log_level.to_string(),
            factory: factory_client::Factory::default(),
        }
    }

    /// libcontainer's state directory.
    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    /// Starts the container factory; until it runs (and if it ever exits), every operation
    /// execs a helper of its own.
    pub fn start_factory(&self) {
        self.factory.start(&self.reaper, &self.log_level);
    }

    /// Runs `op` in the factory (or a helper) with `fds` passed along; returns the new
    /// process's pid, if any.
    pub async fn run(&self, op: Op, fds: &[BorrowedFd<'_>]) -> Result<Option<Pid>> {
        let what = format!("{op:?}");
        std::fs::create_dir_all(&self.root)
            .map_err(|e| AgentError::io(format!("creating {}", self.root.display()), e))?;
        let request = serde_json::to_vec(&Request {
            root: self.root.clone(),
            op,
            sandbox_id: crate::logging::sandbox_id().map(str::to_string),
        })
        .map_err(|e| AgentError::Runtime(format!("encoding the helper request: {e}")))?;
        if let Some(result) = self.factory.run(&self.reaper, &what, &request, fds).await {
            return result;
        }
        self.run_in_helper(&what, &request, fds).await
    }

    /// Runs one operation in a fresh exec of the agent binary.
    async fn run_in_helper(
        &self,
        what: &str,
        request: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<Option<Pid>> {
        let (ours, theirs) = fdpass::seqpacket_pair(SockFlag::empty())
            .map_err(|e| AgentError::sys("creating the helper's socket pair", e))?;
        // The socket buffers the request until the helper reads it.
        fdpass::send(ours.as_fd(), request, fds)
            .map_err(|e| AgentError::sys("sending the helper its request", e))?;
        let mut helper = agent_binary(HELPER_ARG, &self.log_level);
        helper
            .env(
                crate::logging::SANDBOX_ENV,
                crate::logging::sandbox_id().unwrap_or_default(),
            )
            .stdin(Stdio::from(theirs));
        let (pid, exited) = self
            .reaper
            .spawn_watched(|| helper.spawn().map(|child| Pid::from_raw(child.id() as i32)))
            .map_err(|e| AgentError::io("starting the libcontainer helper", e))?;
        tracing::debug!(pid = pid.as_raw(), op = %what, "libcontainer helper started");
        let exit = wait_exit(pid, exited, what).await?;
        read_done(ours.as_fd(), what, &exit)
    }
}

/// The agent binary re-executed as `arg` (the helper or the factory), with the agent's log
/// level, stdout on /dev/null and stderr on the console.
fn agent_binary(arg: &str, log_level: &str) -> Command {
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(arg)
        .env(LOG_ENV, log_level)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    // SAFETY: the closure does nothing, so it is trivially async-signal-safe. It is there
    // to make std fork+exec instead of posix_spawn: glibc's posix_spawn child sets glibc's
    // internal signals (32, 33) to SIG_IGN, which survives exec, and the helper would pass
    // them on ignored to every container process.
    unsafe {
        cmd.pre_exec(|| Ok(()));
    }
    cmd
}

/// Waits (at most [`HELPER_TIMEOUT`]) for the helper `pid` to exit; kills it when it does not.
async fn wait_exit(
    pid: Pid,
    exited: tokio::sync::oneshot::Receiver<crate::reaper::Exit>,
    what: &str,
) -> Result<crate::reaper::Exit> {
    match tokio::time::timeout(HELPER_TIMEOUT, exited).await {
        Ok(Ok(exit)) => Ok(exit),
        Ok(Err(_)) => Err(AgentError::Runtime(
            "the reaper dropped the libcontainer helper's exit".into(),
        )),
        Err(_) => {
            let _ = kill(pid, Signal::SIGKILL);
            Err(AgentError::DeadlineExceeded(format!(
                "the libcontainer helper ({what}) did not finish within {HELPER_TIMEOUT:?}; killed it"
            )))
        }
    }
}

/// Reads, without blocking, the answer an exited helper left on `sock`.
fn read_done(sock: BorrowedFd<'_>, what: &str, exit: &crate::reaper::Exit) -> Result<Option<Pid>> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    match fdpass::recv(sock, &mut buf, MsgFlags::MSG_DONTWAIT) {
        Ok((n, _)) if n > 0 => match serde_json::from_slice::<Reply>(&buf[..n]) {
            Ok(Reply::Done(response)) => {
                tracing::debug!(op = %what, ?response, "libcontainer helper answered");
                response.into_result()
            }
            Ok(other) => Err(AgentError::Runtime(format!(
                "the libcontainer helper ({what}) answered out of turn: {other:?}"
            ))),
            Err(e) => Err(AgentError::Runtime(format!(
                "the libcontainer helper's answer is garbled: {e}"
            ))),
        },
        _ => Err(AgentError::Runtime(format!(
            "the libcontainer helper ({what}) exited with status {} without answering; see the guest console log",
            exit.code()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_round_trip_as_json() {
        let req = Request {
            sandbox_id: Some("pod".into()),
            root: "/run/isola/libcontainer".into(),
            op: Op::Create {
                id: "c1".into(),
                bundle: "/run/isola/containers/c1".into(),
                console_socket: None,
                stdio: true,
            },
        };
        let text = serde_json::to_string(&req).unwrap();
        assert!(text.contains(r#""op":"create""#), "{text}");
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), req);
        let resp = Response::Failed {
            kind: FailureKind::AlreadyExists,
            message: "container already exists".into(),
        };
        let back: Response = serde_json::from_str(&serde_json::to_string(&resp).unwrap()).unwrap();
        assert_eq!(back, resp);
    }

    #[test]
    fn failures_map_to_agent_errors() {
        let fail = |kind| Response::Failed {
            kind,
            message: "m".into(),
        };
        use ttrpc::Code;
        for (kind, code) in [
            (FailureKind::AlreadyExists, Code::ALREADY_EXISTS),
            (FailureKind::NotFound, Code::NOT_FOUND),
            (FailureKind::WrongState, Code::FAILED_PRECONDITION),
            (FailureKind::InvalidSpec, Code::INVALID_ARGUMENT),
            (FailureKind::Other, Code::INTERNAL),
        ] {
            assert_eq!(fail(kind).into_result().unwrap_err().code(), code);
        }
        assert_eq!(
            Response::Ok { pid: Some(7) }.into_result().unwrap(),
            Some(Pid::from_raw(7))
        );
    }
}
