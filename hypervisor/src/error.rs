//! The error type returned by [`crate::Hypervisor`] methods.
//!
//! Lower layers have their own enums ([`crate::process::SpawnError`],
//! [`crate::daemons::DaemonError`], [`crate::qemu::qmp::QmpError`]); they are wrapped here
//! so callers match on one type while the detail stays available through `source()`.

use std::path::PathBuf;

use crate::clh::api::ApiError;
use crate::daemons::DaemonError;
use crate::process::SpawnError;
use crate::qemu::qmp::QmpError;
use crate::Accelerator;

/// Everything a hypervisor backend can fail with.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    /// The configuration asks for an accelerator this host cannot provide.
    #[error("accelerator {accelerator:?} is not usable on this host: {reason}")]
    AcceleratorUnavailable {
        /// The accelerator that was asked for.
        accelerator: Accelerator,
        /// Why it cannot be used.
        reason: String,
    },

    /// The configuration is inconsistent or cannot work on this host.
    #[error("invalid VM configuration: {0}")]
    InvalidConfig(String),

    /// A filesystem operation on the per-VM state directory failed.
    #[error("{action} {}: {source}", path.display())]
    StateDir {
        /// What was being done ("creating", "removing", ...).
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A child process could not be spawned or signalled.
    #[error(transparent)]
    Spawn(#[from] SpawnError),

    /// A helper daemon (virtiofsd, vhost-device-vsock) failed.
    #[error(transparent)]
    Daemon(#[from] DaemonError),

    /// Talking to QEMU over QMP failed.
    #[error(transparent)]
    Qmp(#[from] QmpError),

    /// Talking to Cloud Hypervisor over its REST API failed.
    #[error(transparent)]
    Api(#[from] ApiError),

    /// The VMM process exited before it became ready.
    #[error("{vmm} exited during startup ({status}); stderr tail:\n{stderr_tail}")]
    VmmExitedEarly {
        /// Name of the VMM ("qemu").
        vmm: &'static str,
        /// Human-readable exit status.
        status: String,
        /// The last part of its stderr, for the error message.
        stderr_tail: String,
    },

    /// The VMM did not become ready in time.
    #[error("{vmm} did not become ready within {timeout_ms} ms")]
    VmmStartTimeout {
        /// Name of the VMM ("qemu").
        vmm: &'static str,
        /// The deadline that passed.
        timeout_ms: u64,
    },

    /// The VMM did not exit in time, even after SIGKILL.
    #[error("{vmm} (pid {pid}) did not exit within {timeout_ms} ms of SIGKILL")]
    VmmStuck {
        /// Name of the VMM ("qemu").
        vmm: &'static str,
        /// Its pid.
        pid: u32,
        /// The deadline that passed.
        timeout_ms: u64,
    },

    /// Every guest CID tried for kernel vhost-vsock was already taken on this host.
    #[error("no free vsock guest CID after trying {tried:?}")]
    CidExhausted {
        /// The CIDs that QEMU reported as in use.
        tried: Vec<u32>,
    },

    /// The operation needs a running VM and `start()` has not been called.
    #[error("VM {0} has not been started")]
    NotStarted(String),

    /// `start()` was called on a VM that is running or was already stopped.
    #[error("VM {0} was already started (a stopped VM cannot be restarted; create a new one)")]
    AlreadyStarted(String),

    /// The operation needs a running VM and it has been stopped or has exited.
    #[error("VM {0} is not running")]
    NotRunning(String),

    /// A hotplug would go past a ceiling fixed when the VM was started.
    #[error("cannot grow VM {vm} to {requested} {resource}: its ceiling is {limit} ({hint})")]
    HotplugLimit {
        /// The sandbox id.
        vm: String,
        /// What ran out: "vCPUs", "MiB of memory", "memory slots".
        resource: &'static str,
        /// What was asked for (after rounding to the hotplug granularity).
        requested: u64,
        /// The ceiling.
        limit: u64,
        /// What to do about it.
        hint: &'static str,
    },

    /// Hot-unplug is not supported: the VM can only grow.
    #[error(
        "cannot shrink VM {vm} from {current} to {requested} {resource}: hot-unplug is not \
         supported (resources only grow while the VM runs; restart the pod to shrink it, or \
         treat this as \"already large enough\")"
    )]
    ShrinkUnsupported {
        /// The sandbox id.
        vm: String,
        /// "vCPUs" or "MiB of memory".
        resource: &'static str,
        /// What the VM has now.
        current: u64,
        /// What was asked for.
        requested: u64,
    },

    /// A VMM command of a hotplug sequence failed; resources added before it stay plugged.
    #[error(
        "hot-plugging {what} into VM {vm} failed (the VM now has {reached} {resource}): {source}"
    )]
    HotplugFailed {
        /// The sandbox id.
        vm: String,
        /// What was being plugged, e.g. "vCPU cpu-2 (socket 0 core 2 thread 0)".
        what: String,
        /// "vCPUs" or "MiB of memory".
        resource: &'static str,
        /// The amount the VM has after the failure.
        reached: u64,
        /// The VMM's failure ([`HypervisorError::Qmp`] or [`HypervisorError::Api`]; boxed:
        /// this variant is rare).
        #[source]
        source: Box<HypervisorError>,
    },

    /// The backend does not implement this operation (yet).
    #[error("unsupported operation: {0}")]
    Unsupported(String),
}
