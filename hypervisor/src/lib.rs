//! The hypervisor layer of isola: one small async trait, [`Hypervisor`], and a QEMU backend.
//!
//! A backend owns one VM: it starts the helper daemons the VM needs (virtiofsd for the shared
//! filesystem, vhost-device-vsock when the host has no kernel vhost-vsock), then the VMM, and
//! tears all of them down again on [`Hypervisor::stop`]. Every child process is spawned so that
//! it dies with the process that owns it (see [`process`]).
//!
//! The trait is deliberately narrow so that a second backend with a different control plane
//! (Cloud Hypervisor's REST API on a Unix socket, its hybrid vsock) fits without changes:
//! nothing in it mentions QMP, command lines or device names. Backend-specific knobs live in
//! [`VmConfig`] and are ignored by backends they do not apply to.
//!
//! ```no_run
//! # async fn demo(cfg: isola_hypervisor::VmConfig) -> Result<(), isola_hypervisor::HypervisorError> {
//! let vm = isola_hypervisor::new_qemu(cfg);
//! vm.start().await?;
//! let endpoint = vm.agent_endpoint(); // connect the agent client here
//! # let _ = endpoint;
//! vm.stop().await?;
//! # Ok(()) }
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

pub mod accel;
pub mod console;
pub mod daemons;
mod error;
pub mod process;
pub mod qemu;

pub use error::HypervisorError;

/// Kernel command-line parameters every guest gets, before [`VmConfig::kernel_params`].
///
/// `console=ttyS0` sends the console to the serial port QEMU logs; `panic=-1` with QEMU's
/// `-no-reboot` turns a guest panic into a VMM exit. The rest were each measured to shorten the
/// boot (guest/README.md, "Recommended kernel command line", has the numbers):
/// `cryptomgr.notests` skips the crypto self-tests, `noreplace-smp` the SMP-to-UP text patching
/// that costs TCG its translated code, `hpet=disable` and `noapictimer` two timer calibrations,
/// `tsc=reliable` and `no_timer_check` clock and timer-routing checks a VM does not need.
pub const DEFAULT_KERNEL_PARAMS: &str = "console=ttyS0 quiet panic=-1 cryptomgr.notests \
     noreplace-smp hpet=disable noapictimer tsc=reliable no_timer_check";

/// How the host reaches the guest agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEndpoint {
    /// Kernel vsock (host has /dev/vhost-vsock): connect to (cid, port) with AF_VSOCK.
    Vsock {
        /// The guest's context id.
        cid: u32,
        /// The port the agent listens on.
        port: u32,
    },
    /// Hybrid vsock over a Unix socket (vhost-device-vsock, Cloud Hypervisor): connect to
    /// `path`, write `"CONNECT <port>\n"`, read one `"OK <n>\n"` line, then the stream is raw.
    HybridVsock {
        /// The host-side Unix socket.
        path: PathBuf,
        /// The guest port to ask for in the CONNECT line.
        port: u32,
    },
}

/// The virtualization accelerator a VM runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accelerator {
    /// Hardware virtualization through /dev/kvm.
    Kvm,
    /// QEMU's software emulation (Tiny Code Generator): works everywhere, much slower.
    Tcg,
}

/// Which accelerator the configuration asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AcceleratorChoice {
    /// KVM when the host supports it, otherwise TCG (with a warning).
    #[default]
    Auto,
    /// KVM or fail.
    Kvm,
    /// TCG even when KVM would work.
    Tcg,
}

/// Which vsock transport the configuration asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VsockChoice {
    /// Kernel vhost-vsock when /dev/vhost-vsock exists, otherwise vhost-user.
    #[default]
    Auto,
    /// The kernel's vhost-vsock (`vhost-vsock-pci`), reached with AF_VSOCK.
    VhostKernel,
    /// A vhost-user backend daemon (`vhost-device-vsock`), reached through a Unix socket.
    VhostUser,
}

/// A host directory shared with the guest over virtio-fs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedFsConfig {
    /// The virtiofsd binary.
    pub virtiofsd_path: PathBuf,
    /// The host directory to share.
    pub shared_dir: PathBuf,
    /// virtiofsd cache policy: auto, always, never (or metadata).
    pub cache: String,
    /// virtiofsd sandbox: namespace, chroot or none.
    pub sandbox: String,
    /// The mount tag the guest uses (`mount -t virtiofs <tag> /mnt`).
    pub tag: String,
}

/// Everything a backend needs to start one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// Sandbox id, used in logs and names.
    pub id: String,
    /// Per-VM directory the backend creates (sockets, console.log, daemon logs) and removes
    /// on stop. Keep it short: Unix socket paths inside it must fit in 107 bytes.
    pub state_dir: PathBuf,
    /// The qemu-system-x86_64 binary.
    pub qemu_path: PathBuf,
    /// Guest kernel image.
    pub kernel: PathBuf,
    /// Guest initrd.
    pub initrd: PathBuf,
    /// Extra kernel parameters, appended after [`DEFAULT_KERNEL_PARAMS`].
    pub kernel_params: String,
    /// "q35" (default), "pc" or "microvm".
    pub machine_type: String,
    /// Firmware image, e.g. /usr/share/qemu/qboot.rom; None = the VMM's default.
    pub firmware: Option<PathBuf>,
    /// Which accelerator to use.
    pub accelerator: AcceleratorChoice,
    /// Number of vCPUs at boot.
    pub vcpus: u32,
    /// Guest memory at boot, in MiB.
    pub memory_mib: u32,
    /// Optional virtio-fs share.
    pub shared_fs: Option<SharedFsConfig>,
    /// Which vsock transport to use.
    pub vsock: VsockChoice,
    /// The vhost-device-vsock binary (used for [`VsockChoice::VhostUser`]).
    pub vhost_user_vsock_path: PathBuf,
    /// The vsock port the guest agent listens on.
    pub agent_port: u32,
    /// More verbose helper daemons.
    pub debug: bool,
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            id: String::new(),
            state_dir: PathBuf::new(),
            qemu_path: PathBuf::from("qemu-system-x86_64"),
            kernel: PathBuf::new(),
            initrd: PathBuf::new(),
            kernel_params: String::new(),
            machine_type: "q35".to_owned(),
            firmware: None,
            accelerator: AcceleratorChoice::Auto,
            vcpus: 1,
            memory_mib: 512,
            shared_fs: None,
            vsock: VsockChoice::Auto,
            vhost_user_vsock_path: PathBuf::from("vhost-device-vsock"),
            agent_port: 1024,
            debug: false,
        }
    }
}

/// How the VMM process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmExit {
    /// Exit code, if it exited normally.
    pub code: Option<i32>,
    /// Terminating signal, if it was killed by one.
    pub signal: Option<i32>,
}

impl std::fmt::Display for VmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exit code {c}"),
            (None, Some(s)) => write!(f, "killed by signal {s}"),
            (None, None) => f.write_str("unknown exit status"),
        }
    }
}

/// One VM, driven by some VMM.
///
/// Lifecycle: `start` once, then any of the control methods, then `stop` (also after the VMM
/// exited on its own, to reap the helper daemons and remove the state directory). A stopped VM
/// cannot be started again: make a new one.
#[async_trait]
pub trait Hypervisor: Send + Sync {
    /// Starts the helper daemons and the VMM. Returns once the VMM is running and its control
    /// channel is connected, not once the guest has booted: wait for the agent for that.
    /// On error everything started so far is torn down again.
    async fn start(&self) -> Result<(), HypervisorError>;

    /// Stops the VM: asks the VMM to quit, SIGKILLs it after a short deadline, stops the
    /// helper daemons, removes the sockets and the state directory. Idempotent; a no-op on a
    /// VM that was never started.
    async fn stop(&self) -> Result<(), HypervisorError>;

    /// Resolves when the VMM process exits, with how it exited. Can be awaited from several
    /// tasks at once, and keeps returning the same result after the exit. Errors with
    /// [`HypervisorError::NotStarted`] before `start`.
    async fn wait(&self) -> Result<VmExit, HypervisorError>;

    /// Pauses all vCPUs.
    async fn pause(&self) -> Result<(), HypervisorError>;

    /// Resumes vCPUs paused by [`Hypervisor::pause`].
    async fn resume(&self) -> Result<(), HypervisorError>;

    /// Sets the number of online vCPUs to `total`; returns the resulting count.
    async fn hotplug_vcpus(&self, total: u32) -> Result<u32, HypervisorError>;

    /// Grows guest memory to `total_mib`; returns the resulting size in MiB.
    async fn hotplug_memory(&self, total_mib: u32) -> Result<u32, HypervisorError>;

    /// Where the host connects to reach the guest agent. Known before `start` (the vsock
    /// transport is resolved when the backend is created); a kernel-vsock CID may change
    /// during `start` if the first choice is taken on the host, so read it after `start`.
    fn agent_endpoint(&self) -> AgentEndpoint;

    /// Pids of the VMM (first, while it runs) and of the helper daemons it started.
    fn pids(&self) -> Vec<u32>;

    /// The file the guest serial console is logged to.
    fn console_log(&self) -> PathBuf;

    /// The accelerator chosen by `start`, with a human-readable reason; None before `start`.
    fn accelerator(&self) -> Option<(Accelerator, String)>;
}

/// Creates a QEMU-backed VM. Nothing is started until [`Hypervisor::start`].
pub fn new_qemu(cfg: VmConfig) -> Arc<dyn Hypervisor> {
    Arc::new(qemu::QemuHypervisor::new(cfg))
}
