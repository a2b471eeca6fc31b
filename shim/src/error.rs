//! The shim's errors and their one mapping to ttrpc status codes ([`to_ttrpc`]).
//!
//! containerd reacts to codes (NotFound on Kill of an exited process is ignored, AlreadyExists
//! on Create is reported as such, ...), so every failure names its kind here and the message
//! says what failed and, where there is something to do, what to do about it.

use std::path::PathBuf;

use ttrpc::Code;

/// Everything that can go wrong in the shim.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// An unknown container or exec id.
    #[error("{0} not found")]
    NotFound(String),
    /// A container or exec id that is already in use.
    #[error("{0} already exists: choose another id or delete the existing one first")]
    AlreadyExists(String),
    /// The request does not fit the current state (start of a started process, ...).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request itself is malformed (bad spec, missing rootfs, bad id, ...).
    #[error("{0}")]
    InvalidArgument(String),
    /// Something isola does not support (checkpoint/restore, growing a VM whose hypervisor
    /// cannot hotplug, ...); the message says what.
    #[error("{0}")]
    Unimplemented(String),
    /// The guest agent answered an RPC with an error; `code` is the agent's own code.
    #[error("guest agent {rpc} failed: {message}")]
    Agent {
        rpc: &'static str,
        code: Code,
        message: String,
    },
    /// The guest agent could not be reached for `rpc`: its connection closed or the call
    /// timed out before any answer. The guest side of the request is in an unknown state; a
    /// caller cleaning up (Delete) goes on with the host side, others fail.
    #[error("guest agent {rpc}: {message} (the guest agent or the VM may have died: see the guest console log)")]
    AgentUnreachable { rpc: &'static str, message: String },
    /// A host file operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A host mount operation failed.
    #[error("{op} {}: {source}", path.display())]
    Mount {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    /// The runtime configuration could not be loaded.
    #[error("isola configuration: {0} (fix the file named by the runtime option ConfigPath, $ISOLA_CONFIG or /etc/isola/configuration.toml)")]
    Config(Box<isola_config::ConfigError>),
    /// A pod annotation the runtime refuses (unknown, not enabled by the configuration, or a
    /// bad value).
    #[error("{0}")]
    Annotation(isola_config::AnnotationError),
    /// The sandbox VM could not be booted or stopped. Its code is the hypervisor's when the VM
    /// did not start (see [`hypervisor_code`]), else Internal.
    #[error("sandbox VM: {0} (run `isola check` to diagnose the host)")]
    Sandbox(Box<isola_sandbox::SandboxError>),
    /// An operation on the running VM failed in the hypervisor (hotplug, ...): `op` says which.
    /// Its code is the hypervisor's ([`hypervisor_code`]); the message is the hypervisor's,
    /// which says what to do where there is something to do (a hotplug ceiling: restart the
    /// pod with more).
    #[error("{op}: {source}")]
    Hypervisor {
        op: &'static str,
        #[source]
        source: Box<isola_hypervisor::HypervisorError>,
    },
    /// The pod network namespace could not be carried into the VM (see [`network_code`]).
    #[error("pod networking: {0}{hint}", hint = network_hint(.0))]
    Network(#[source] Box<crate::network::NetError>),
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}

impl From<isola_config::ConfigError> for ShimError {
    fn from(e: isola_config::ConfigError) -> Self {
        ShimError::Config(Box::new(e))
    }
}

impl From<isola_config::AnnotationError> for ShimError {
    fn from(e: isola_config::AnnotationError) -> Self {
        ShimError::Annotation(e)
    }
}

impl From<isola_sandbox::SandboxError> for ShimError {
    fn from(e: isola_sandbox::SandboxError) -> Self {
        ShimError::Sandbox(Box::new(e))
    }
}

impl From<crate::network::NetError> for ShimError {
    fn from(e: crate::network::NetError) -> Self {
        ShimError::Network(Box::new(e))
    }
}

/// The shim's result type.
pub type Result<T, E = ShimError> = std::result::Result<T, E>;

impl ShimError {
    /// An I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> ShimError {
        ShimError::Io {
            context: context.into(),
            source,
        }
    }

    /// A failed agent RPC, keeping the agent's status code when it sent one.
    pub fn agent(rpc: &'static str, err: ttrpc::Error) -> ShimError {
        match err {
            ttrpc::Error::RpcStatus(status) => ShimError::Agent {
                rpc,
                code: status.code(),
                message: status.message,
            },
            other => ShimError::AgentUnreachable {
                rpc,
                message: other.to_string(),
            },
        }
    }

    /// A failed hypervisor operation `op` on the running VM, keeping the hypervisor's error.
    pub fn hypervisor(op: &'static str, source: isola_hypervisor::HypervisorError) -> ShimError {
        ShimError::Hypervisor {
            op,
            source: Box::new(source),
        }
    }

    /// The ttrpc status code this error maps to (see [`to_ttrpc`]).
    pub fn code(&self) -> Code {
        match self {
            ShimError::NotFound(_) => Code::NOT_FOUND,
            ShimError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            ShimError::FailedPrecondition(_) | ShimError::Config(_) => Code::FAILED_PRECONDITION,
            ShimError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            // Not enabled: the node's configuration would have to change, not the request.
            ShimError::Annotation(isola_config::AnnotationError::NotEnabled { .. }) => {
                Code::FAILED_PRECONDITION
            }
            ShimError::Annotation(_) => Code::INVALID_ARGUMENT,
            ShimError::Unimplemented(_) => Code::UNIMPLEMENTED,
            ShimError::Agent { code, .. } => *code,
            ShimError::AgentUnreachable { .. } => Code::INTERNAL,
            ShimError::Sandbox(e) => match e.as_ref() {
                isola_sandbox::SandboxError::Start(h) => hypervisor_code(h),
                _ => Code::INTERNAL,
            },
            ShimError::Hypervisor { source, .. } => hypervisor_code(source),
            ShimError::Network(e) => network_code(e),
            ShimError::Io { .. } | ShimError::Mount { .. } | ShimError::Internal(_) => {
                Code::INTERNAL
            }
        }
    }
}

/// The code of a hypervisor error, from starting the VM or from an operation on it: the host
/// cannot provide what the configuration asks for (no hardware KVM for Cloud Hypervisor, a
/// forced KVM without /dev/kvm) is FailedPrecondition, and so is a hotplug past the ceiling
/// fixed when the VM started or a shrink (the running VM cannot do it: restart the pod); a
/// configuration the backend refuses is InvalidArgument, an operation the backend lacks is
/// Unimplemented, anything else Internal.
pub fn hypervisor_code(e: &isola_hypervisor::HypervisorError) -> Code {
    use isola_hypervisor::HypervisorError as H;
    match e {
        H::AcceleratorUnavailable { .. } | H::HotplugLimit { .. } | H::ShrinkUnsupported { .. } => {
            Code::FAILED_PRECONDITION
        }
        H::InvalidConfig(_) => Code::INVALID_ARGUMENT,
        H::Unsupported(_) => Code::UNIMPLEMENTED,
        _ => Code::INTERNAL,
    }
}

/// The code of a pod networking error: the pod's network namespace is gone
/// (FailedPrecondition: the pod must be created again; not NotFound, which containerd reads as
/// "no such task"), the shim may not act in it (PermissionDenied), anything else Internal.
pub fn network_code(e: &crate::network::NetError) -> Code {
    if e.netns_missing() {
        return Code::FAILED_PRECONDITION;
    }
    match e.io_kind() {
        Some(std::io::ErrorKind::PermissionDenied) => Code::PERMISSION_DENIED,
        _ => Code::INTERNAL,
    }
}

/// What to do about a pod networking error, appended to its message.
fn network_hint(e: &crate::network::NetError) -> &'static str {
    if e.netns_missing() {
        " (the pod's network namespace is gone: delete the pod and create it again)"
    } else if e.io_kind() == Some(std::io::ErrorKind::PermissionDenied) {
        " (the shim needs CAP_SYS_ADMIN and CAP_NET_ADMIN to join the pod network namespace: run containerd and its shims as root)"
    } else {
        ""
    }
}

/// The one mapping from shim errors to what containerd receives.
pub fn to_ttrpc(err: ShimError) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(err.code(), err.to_string()))
}

impl From<ShimError> for ttrpc::Error {
    fn from(err: ShimError) -> Self {
        to_ttrpc(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(err: ShimError) -> Code {
        match to_ttrpc(err) {
            ttrpc::Error::RpcStatus(s) => s.code(),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn each_kind_has_its_code() {
        assert_eq!(
            code_of(ShimError::NotFound("container c".into())),
            Code::NOT_FOUND
        );
        assert_eq!(
            code_of(ShimError::AlreadyExists("c".into())),
            Code::ALREADY_EXISTS
        );
        assert_eq!(
            code_of(ShimError::FailedPrecondition("x".into())),
            Code::FAILED_PRECONDITION
        );
        assert_eq!(
            code_of(ShimError::InvalidArgument("x".into())),
            Code::INVALID_ARGUMENT
        );
        assert_eq!(
            code_of(ShimError::Unimplemented("Pause".into())),
            Code::UNIMPLEMENTED
        );
        assert_eq!(code_of(ShimError::Internal("x".into())), Code::INTERNAL);
        let not_enabled = isola_config::AnnotationError::NotEnabled {
            key: "io.isola.config.hypervisor.vcpus".into(),
            name: "hypervisor.vcpus".into(),
        };
        assert_eq!(code_of(not_enabled.into()), Code::FAILED_PRECONDITION);
        let unknown = isola_config::AnnotationError::Unknown {
            key: "io.isola.config.x".into(),
        };
        assert_eq!(code_of(unknown.into()), Code::INVALID_ARGUMENT);
        assert_eq!(
            code_of(ShimError::io("reading", std::io::Error::other("boom"))),
            Code::INTERNAL
        );
    }

    fn start_failure(e: isola_hypervisor::HypervisorError) -> ShimError {
        isola_sandbox::SandboxError::Start(e).into()
    }

    #[test]
    fn vm_start_failures_keep_the_hypervisors_kind() {
        use isola_hypervisor::{Accelerator, HypervisorError as H};
        // What Cloud Hypervisor answers on a host without vmx/svm: the reason reaches
        // containerd's message, with a code that says "not on this node".
        let reason = isola_hypervisor::accel::cloud_hypervisor_problem("flags : fpu sse2\n", true)
            .expect("no vmx/svm is refused");
        let err = start_failure(H::AcceleratorUnavailable {
            accelerator: Accelerator::Kvm,
            reason: reason.clone(),
        });
        assert_eq!(err.code(), Code::FAILED_PRECONDITION);
        let msg = match to_ttrpc(err) {
            ttrpc::Error::RpcStatus(s) => s.message,
            other => panic!("not a status: {other:?}"),
        };
        assert!(
            msg.contains(&reason) && msg.contains("isola check"),
            "{msg}"
        );

        let invalid = start_failure(H::InvalidConfig("tcg with cloud-hypervisor".into()));
        assert_eq!(code_of(invalid), Code::INVALID_ARGUMENT);
        let unsupported = start_failure(H::Unsupported("pause".into()));
        assert_eq!(code_of(unsupported), Code::UNIMPLEMENTED);
        let other = start_failure(H::NotRunning("vm".into()));
        assert_eq!(code_of(other), Code::INTERNAL);
        // Only a VM that did not start takes the hypervisor's code.
        let stop: ShimError =
            isola_sandbox::SandboxError::Stop(H::InvalidConfig("x".into())).into();
        assert_eq!(code_of(stop), Code::INTERNAL);
    }

    #[test]
    fn hypervisor_errors_of_a_running_vm_keep_their_kind() {
        use isola_hypervisor::HypervisorError as H;
        let limit = ShimError::hypervisor(
            "CPU hotplug",
            H::HotplugLimit {
                vm: "pod".into(),
                resource: "vCPUs",
                requested: 8,
                limit: 4,
                hint: "restart the pod with more vCPUs",
            },
        );
        assert_eq!(limit.code(), Code::FAILED_PRECONDITION);
        let msg = limit.to_string();
        assert!(
            msg.starts_with("CPU hotplug: ") && msg.contains("restart the pod"),
            "{msg}"
        );
        let shrink = ShimError::hypervisor(
            "memory hotplug",
            H::ShrinkUnsupported {
                vm: "pod".into(),
                resource: "MiB of memory",
                current: 1024,
                requested: 512,
            },
        );
        assert_eq!(code_of(shrink), Code::FAILED_PRECONDITION);
        for (e, code) in [
            (H::Unsupported("hotplug".into()), Code::UNIMPLEMENTED),
            (H::InvalidConfig("x".into()), Code::INVALID_ARGUMENT),
            (
                H::AcceleratorUnavailable {
                    accelerator: isola_hypervisor::Accelerator::Kvm,
                    reason: "no /dev/kvm".into(),
                },
                Code::FAILED_PRECONDITION,
            ),
            (H::NotRunning("pod".into()), Code::INTERNAL),
        ] {
            let what = e.to_string();
            assert_eq!(
                code_of(ShimError::hypervisor("CPU hotplug", e)),
                code,
                "{what}"
            );
        }
    }

    #[test]
    fn network_errors_map_to_what_went_wrong() {
        use crate::network::NetError;
        use std::io::{Error, ErrorKind};
        let gone = NetError::Netns {
            path: "/var/run/netns/cni-1".into(),
            source: Error::from(ErrorKind::NotFound),
        };
        let err = ShimError::from(gone);
        assert_eq!(err.code(), Code::FAILED_PRECONDITION);
        let msg = err.to_string();
        assert!(
            msg.starts_with(
                "pod networking: entering the pod network namespace /var/run/netns/cni-1"
            ) && msg.contains("create it again"),
            "{msg}"
        );
        let denied = NetError::Netns {
            path: "/var/run/netns/cni-1".into(),
            source: Error::from_raw_os_error(libc::EPERM),
        };
        let err = ShimError::from(denied);
        assert_eq!(err.code(), Code::PERMISSION_DENIED);
        assert!(err.to_string().contains("as root"), "{err}");
        let mut nack = rtnetlink::packet_core::ErrorMessage::default();
        nack.code = std::num::NonZeroI32::new(-libc::EACCES);
        let netlink = NetError::Netlink {
            what: "adding the ingress qdisc of eth0".into(),
            source: rtnetlink::Error::NetlinkError(nack),
        };
        assert_eq!(code_of(netlink.into()), Code::PERMISSION_DENIED);
        let mut busy = rtnetlink::packet_core::ErrorMessage::default();
        busy.code = std::num::NonZeroI32::new(-libc::EBUSY);
        let netlink = NetError::Netlink {
            what: "adding the ingress qdisc of eth0".into(),
            source: rtnetlink::Error::NetlinkError(busy),
        };
        assert_eq!(code_of(netlink.into()), Code::INTERNAL);
        let unusable = NetError::Unusable("link eth0 vanished".into());
        assert_eq!(code_of(unusable.into()), Code::INTERNAL);
        let io = NetError::Io {
            what: "creating tap0".into(),
            source: Error::from(ErrorKind::NotFound),
        };
        assert_eq!(code_of(io.into()), Code::INTERNAL, "only a missing netns");
    }

    #[test]
    fn agent_codes_are_preserved() {
        let remote =
            ttrpc::Error::RpcStatus(ttrpc::get_status(Code::NOT_FOUND, "no such container"));
        let err = ShimError::agent("StartContainer", remote);
        assert_eq!(err.code(), Code::NOT_FOUND);
        let msg = err.to_string();
        assert!(
            msg.contains("StartContainer") && msg.contains("no such container"),
            "{msg}"
        );
        let transport = ShimError::agent("WaitProcess", ttrpc::Error::RemoteClosed);
        assert!(
            matches!(
                transport,
                ShimError::AgentUnreachable {
                    rpc: "WaitProcess",
                    ..
                }
            ),
            "{transport:?}"
        );
        assert_eq!(transport.code(), Code::INTERNAL);
        assert!(
            transport.to_string().contains("guest console log"),
            "{transport}"
        );
    }

    #[test]
    fn messages_say_what_to_do() {
        let msg = ShimError::AlreadyExists("container c1".into()).to_string();
        assert!(msg.contains("delete the existing one"), "{msg}");
        let msg = ShimError::Unimplemented("Checkpoint: not supported".into()).to_string();
        assert_eq!(msg, "Checkpoint: not supported");
    }
}
