//! The errors of the agent's sandbox, container and process RPCs, and the one place where they
//! become ttrpc status codes ([`AgentError::code`], `From<AgentError> for ttrpc::Error`).
//!
//! Messages name the object (container id, exec id, path) so that the host can show them as
//! they are; the RPC name is added by the log line of [`crate::rpc::guard::guarded`].

use ttrpc::Code;

/// A failed sandbox, container or process request.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The request itself is wrong (bad JSON, bad id, missing field): INVALID_ARGUMENT.
    #[error("{0}")]
    InvalidArgument(String),
    /// No such container.
    #[error("container {0:?} does not exist")]
    ContainerNotFound(String),
    /// The container exists but has no such process.
    #[error("container {container:?} has no process with exec id {exec:?}")]
    ProcessNotFound { container: String, exec: String },
    /// Something else named by the request does not exist (or no longer does): NOT_FOUND.
    #[error("{0}")]
    NotFound(String),
    /// A container or exec id that is already taken: ALREADY_EXISTS.
    #[error("{0}")]
    AlreadyExists(String),
    /// The object is in the wrong state for the request (start twice, remove while running,
    /// exec in a stopped container): FAILED_PRECONDITION.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The agent gave up waiting (a hung runtime helper, a process that would not die).
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A system call or file operation in the guest failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The container runtime (libcontainer, run by the helper process) failed.
    #[error("{0}")]
    Runtime(String),
}

impl AgentError {
    /// The ttrpc status code this error answers with.
    pub fn code(&self) -> Code {
        match self {
            AgentError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            AgentError::ContainerNotFound(_)
            | AgentError::ProcessNotFound { .. }
            | AgentError::NotFound(_) => Code::NOT_FOUND,
            AgentError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            AgentError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            AgentError::DeadlineExceeded(_) => Code::DEADLINE_EXCEEDED,
            AgentError::Io { .. } | AgentError::Runtime(_) => Code::INTERNAL,
        }
    }

    /// An [`AgentError::Io`] from a std I/O error.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> AgentError {
        AgentError::Io {
            what: what.into(),
            source,
        }
    }

    /// An [`AgentError::Io`] from a nix errno.
    pub fn sys(what: impl Into<String>, errno: nix::errno::Errno) -> AgentError {
        AgentError::io(what, std::io::Error::from(errno))
    }
}

impl From<AgentError> for ttrpc::Error {
    fn from(e: AgentError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

/// Shorthand for results of the agent's container logic.
pub type Result<T, E = AgentError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages() {
        let cases = [
            (
                AgentError::InvalidArgument("bad".into()),
                Code::INVALID_ARGUMENT,
            ),
            (AgentError::ContainerNotFound("c".into()), Code::NOT_FOUND),
            (
                AgentError::ProcessNotFound {
                    container: "c".into(),
                    exec: "e".into(),
                },
                Code::NOT_FOUND,
            ),
            (AgentError::AlreadyExists("x".into()), Code::ALREADY_EXISTS),
            (
                AgentError::FailedPrecondition("x".into()),
                Code::FAILED_PRECONDITION,
            ),
            (
                AgentError::sys("mount", nix::errno::Errno::EPERM),
                Code::INTERNAL,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(e.code(), code, "{e}");
            let msg = e.to_string();
            match ttrpc::Error::from(e) {
                ttrpc::Error::RpcStatus(s) => {
                    assert_eq!(s.code(), code);
                    assert_eq!(s.message(), msg);
                }
                other => panic!("not a status: {other:?}"),
            }
        }
        assert_eq!(
            AgentError::ContainerNotFound("c1".into()).to_string(),
            "container \"c1\" does not exist"
        );
    }
}
