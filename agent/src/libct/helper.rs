//! The helper process side: read one request, run it with libcontainer, answer, exit.
//!
//! Runs single-threaded in a fresh `exec` of the agent binary (see the parent module). Its
//! stdin is the socket to the agent; it logs to a close-on-exec copy of its stderr (the guest
//! console), so that container processes, which inherit the helper's memory but get their own
//! stdio, never write the helper's log lines into a container's output.

use std::error::Error as _;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Mutex;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::error::LibcontainerError;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::signal::{signal, SigHandler, Signal};
use nix::sys::socket::MsgFlags;

use super::executor::ProcessExecutor;
use super::seccomp::ExecSeccomp;
use super::{FailureKind, Op, Reply, Request, Response, LOG_ENV, MAX_MESSAGE};

/// The largest seccomp plan the helper reads (a profile lists a few hundred syscalls).
const MAX_SECCOMP_FILE: u64 = 4 << 20;
use crate::fdpass;

/// The helper's `main`: never returns.
pub fn main() -> ! {
    prepare("libcontainer helper");
    let code = match serve() {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("libcontainer helper: {e}");
            1
        }
    };
    std::process::exit(code)
}

/// What a fresh exec of the agent binary does before serving as the helper or the factory.
pub(super) fn prepare(what: &str) {
    // Rust starts every program with SIGPIPE ignored, and an ignored signal stays ignored
    // across execve: without this, every container process would ignore SIGPIPE.
    // SAFETY: setting a signal to its default disposition installs no handler; nothing else
    // runs yet (single-threaded, before any other work).
    if let Err(e) = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) } {
        eprintln!("{what}: cannot reset SIGPIPE: {e}");
    }
    init_logging();
}

fn init_logging() {
    let level = std::env::var(LOG_ENV).unwrap_or_else(|_| "info".into());
    if let Ok(id) = std::env::var(crate::logging::SANDBOX_ENV) {
        if !id.is_empty() {
            crate::logging::set_sandbox_id(&id);
        }
    }
    // A close-on-exec duplicate: container processes replace fds 0-2 with their own stdio.
    let Ok(log) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return;
    };
    crate::logging::init(
        &format!("isola_agent={level},libcontainer={level},libcgroups={level}"),
        Mutex::new(File::from(log)),
    );
}

fn serve() -> Result<(), String> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let (n, fds) = fdpass::recv(std::io::stdin().as_fd(), &mut buf, MsgFlags::empty())
        .map_err(|e| format!("receiving the request: {e}"))?;
    let sock = detach_stdin()?;
    answer(sock.as_fd(), &buf[..n], fds)
}

/// Moves the socket on fd 0 to a close-on-exec descriptor and puts /dev/null on fd 0, so that
/// no container process inherits the channel to the agent (or the factory) as its stdin.
pub(super) fn detach_stdin() -> Result<OwnedFd, String> {
    let sock = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("duplicating the request socket: {e}"))?;
    let null = File::open("/dev/null").map_err(|e| format!("opening /dev/null: {e}"))?;
    nix::unistd::dup2_stdin(&null).map_err(|e| format!("replacing stdin: {e}"))?;
    Ok(sock)
}

/// Decodes one request, runs it and sends the answer on `sock` (a process of its own: the
/// helper, or a child of the container factory).
pub(super) fn answer(
    sock: BorrowedFd<'_>,
    request: &[u8],
    fds: Vec<OwnedFd>,
) -> Result<(), String> {
    let response = match serde_json::from_slice::<Request>(request) {
        Ok(request) => {
            if let Some(id) = request.sandbox_id.as_deref().filter(|id| !id.is_empty()) {
                crate::logging::set_sandbox_id(id);
            }
            let span = tracing::info_span!("helper", container_id = %request.op.container_id());
            let _entered = span.enter();
            tracing::debug!(?request, "libcontainer helper request");
            execute(request, fds)
        }
        Err(e) => Response::Failed {
            kind: FailureKind::Other,
            message: format!("the helper could not decode its request: {e}"),
        },
    };
    let bytes = serde_json::to_vec(&Reply::Done(response))
        .map_err(|e| format!("encoding the answer: {e}"))?;
    fdpass::send(sock, &bytes, &[]).map_err(|e| format!("sending the answer: {e}"))
}

fn execute(request: Request, fds: Vec<OwnedFd>) -> Response {
    let root = request.root;
    let result = match request.op {
        Op::Create {
            id,
            bundle,
            console_socket,
            stdio,
        } => builder(&id, &root, console_socket.as_deref(), stdio, fds, None).and_then(|b| {
            b.validate_id()?
                .as_init(bundle)
                .with_systemd(false)
                .with_detach(true)
                .build()
                .map(|c| c.pid().map(|p| p.as_raw()))
        }),
        Op::Exec {
            id,
            process,
            console_socket,
            stdio,
            seccomp,
        } => exec_seccomp(seccomp.as_deref())
            .and_then(|seccomp| builder(&id, &root, console_socket.as_deref(), stdio, fds, seccomp))
            .and_then(|b| {
                b.as_tenant()
                    .with_detach(true)
                    .with_process(Some(process))
                    .build()
                    .map(|p| Some(p.as_raw()))
            }),
        Op::Start { id } => load(&root, &id).and_then(|mut c| c.start().map(|()| None)),
        Op::Delete { id } => load(&root, &id).and_then(|mut c| c.delete(true).map(|()| None)),
    };
    match result {
        Ok(pid) => Response::Ok { pid },
        Err(e) => Response::Failed {
            kind: classify(&e),
            message: describe(&e),
        },
    }
}

fn builder(
    id: &str,
    root: &Path,
    console_socket: Option<&Path>,
    stdio: bool,
    fds: Vec<OwnedFd>,
    seccomp: Option<ExecSeccomp>,
) -> Result<ContainerBuilder, LibcontainerError> {
    let mut b = ContainerBuilder::new(id.to_string(), SyscallType::Linux)
        .with_root_path(root)?
        .with_console_socket(console_socket)
        .with_executor(ProcessExecutor {
            terminal: console_socket.is_some(),
            seccomp,
        });
    if stdio {
        let [stdin, stdout, stderr]: [OwnedFd; 3] = fds.try_into().map_err(|fds: Vec<_>| {
            LibcontainerError::InvalidInput(format!("expected 3 stdio fds, got {}", fds.len()))
        })?;
        b = b.with_stdin(stdin).with_stdout(stdout).with_stderr(stderr);
    }
    Ok(b)
}

/// Reads the exec's seccomp plan the agent wrote (at most [`MAX_SECCOMP_FILE`] bytes).
fn exec_seccomp(path: Option<&Path>) -> Result<Option<ExecSeccomp>, LibcontainerError> {
    let Some(path) = path else { return Ok(None) };
    let invalid =
        |what: String| LibcontainerError::InvalidInput(format!("{}: {what}", path.display()));
    let mut raw = Vec::new();
    File::open(path)
        .and_then(|f| f.take(MAX_SECCOMP_FILE + 1).read_to_end(&mut raw))
        .map_err(|e| invalid(e.to_string()))?;
    if raw.len() as u64 > MAX_SECCOMP_FILE {
        return Err(invalid(format!("larger than {MAX_SECCOMP_FILE} bytes")));
    }
    serde_json::from_slice(&raw)
        .map(Some)
        .map_err(|e| invalid(format!("not a seccomp plan: {e}")))
}

fn load(root: &Path, id: &str) -> Result<Container, LibcontainerError> {
    let dir = root.join(id);
    if id.is_empty() || id.contains('/') || !dir.exists() {
        return Err(LibcontainerError::NoDirectory);
    }
    Container::load(dir)
}

fn classify(e: &LibcontainerError) -> FailureKind {
    match e {
        LibcontainerError::Exist => FailureKind::AlreadyExists,
        LibcontainerError::NoDirectory => FailureKind::NotFound,
        LibcontainerError::IncorrectStatus(_) => FailureKind::WrongState,
        LibcontainerError::InvalidID(_)
        | LibcontainerError::MissingSpec(_)
        | LibcontainerError::InvalidSpec(_)
        | LibcontainerError::Spec(_) => FailureKind::InvalidSpec,
        _ => FailureKind::Other,
    }
}

/// The error and its causes on one line, skipping causes already quoted by their parent.
fn describe(e: &LibcontainerError) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let msg = cause.to_string();
        if !text.contains(&msg) {
            text.push_str(": ");
            text.push_str(&msg);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_and_described_with_causes() {
        assert_eq!(
            classify(&LibcontainerError::Exist),
            FailureKind::AlreadyExists
        );
        assert_eq!(
            classify(&LibcontainerError::NoDirectory),
            FailureKind::NotFound
        );
        let io = LibcontainerError::OtherIO(std::io::Error::other("disk on fire"));
        assert_eq!(classify(&io), FailureKind::Other);
        assert_eq!(describe(&io), "io error: disk on fire");
    }

    #[test]
    fn loading_an_unknown_container_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let e = load(dir.path(), "nope").unwrap_err();
        assert_eq!(classify(&e), FailureKind::NotFound);
        let e = load(dir.path(), "../etc").unwrap_err();
        assert_eq!(classify(&e), FailureKind::NotFound);
    }
}
