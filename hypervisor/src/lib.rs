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
pub mod clh;
pub mod console;
pub mod daemons;
mod error;
mod lifecycle;
pub mod net;
pub mod process;
pub mod qemu;
pub mod tsc;
pub mod vmm;

pub use error::HypervisorError;
pub use net::NetDevice;

/// Kernel command-line parameters every guest gets, before [`VmConfig::kernel_params`].
///
/// `console=ttyS0` sends the console to the serial port QEMU logs; `panic=-1` with QEMU's
/// `-no-reboot` turns a guest panic into a VMM exit. The rest were each measured to shorten the
/// boot (guest/README.md, "Recommended kernel command line", has the numbers):
/// `cryptomgr.notests` skips the crypto self-tests, `noreplace-smp` the SMP-to-UP text patching
/// that costs TCG its translated code, `hpet=disable` and `noapictimer` two timer calibrations,
/// `tsc=reliable` and `no_timer_check` clock and timer-routing checks a VM does not need.
///
/// Two more serve memory hotplug ([`Hypervisor::hotplug_memory`]):
/// - `memhp_default_state=online` makes the guest kernel online hot-plugged memory blocks as
///   they arrive: the Debian cloud kernel is built without `CONFIG_MEMORY_HOTPLUG_DEFAULT_ONLINE`
///   and the guest has no udev to do it. (Hot-plugged CPUs still arrive offline; the agent's
///   `OnlineCPUMem` onlines them.)
/// - `swiotlb=noforce`: hotplug room (`maxmem`) puts possible RAM above 4 GiB, and x86 then
///   sets up a 64 MiB bounce buffer for 32-bit DMA devices at boot. Measured under TCG: it
///   costs ~0.2-0.3 s of boot and 64 MiB of guest RAM. The guest has no device that needs it:
///   virtio rings bypass the DMA API (no `VIRTIO_F_ACCESS_PLATFORM`) and virtio-pci does 64-bit
///   DMA. Drop it for confidential guests (SEV/TDX need bounce buffers) or 32-bit-DMA
///   passthrough devices.
pub const DEFAULT_KERNEL_PARAMS: &str = "console=ttyS0 quiet panic=-1 cryptomgr.notests \
     noreplace-smp hpet=disable noapictimer tsc=reliable no_timer_check \
     memhp_default_state=online swiotlb=noforce";

/// The guest's memory block size on x86_64 (`/sys/devices/system/memory/block_size_bytes`
/// for guests below 64 GiB): the granularity of memory hotplug. Smaller DIMMs, or DIMMs not
/// aligned to it, would leave memory the guest cannot online.
pub const MEMORY_BLOCK_MIB: u32 = 128;

/// Upper bound of the default [`VmConfig::max_vcpus`]. QEMU's q35 takes up to 288 CPUs, but
/// above 255 APIC ids it needs x2APIC with interrupt remapping (a split irqchip under KVM);
/// 240 is the same conservative cap Kata Containers uses.
pub const MAX_VCPUS_CAP: u32 = 240;

/// Upper bound of the default [`VmConfig::max_memory_mib`] (256 GiB). `maxmem` reserves
/// guest-physical address space (plus 1 GiB of alignment per slot), and a guest CPU model
/// with 40 physical address bits (TCG's qemu64) has only 1 TiB of it.
pub const MAX_MEMORY_CAP_MIB: u32 = 256 * 1024;

/// Default [`VmConfig::memory_slots`]: how many DIMMs can be hot-plugged (one per
/// [`Hypervisor::hotplug_memory`] call that grows memory).
///
/// Each DIMM is one more memory region the vhost-user daemons (virtiofsd, vhost-device-vsock)
/// must map, and QEMU 7.2 allows them 8 regions (neither daemon negotiates more): boot RAM
/// takes 1, or 2 on q35 once it is large enough to be split around the 32-bit PCI hole
/// (above 2.75 GiB). Measured: the 8th DIMM next to 512 MiB of boot RAM fails with "a used
/// vhost backend has no free memory slots left"; 6 DIMMs next to 3 GiB of boot RAM work.
/// 6 fits every boot size.
pub const DEFAULT_MEMORY_SLOTS: u32 = 6;

/// The host's online CPU count (1 if unknown).
pub fn host_cpus() -> u32 {
    std::thread::available_parallelism()
        .ok()
        .and_then(|n| u32::try_from(n.get()).ok())
        .unwrap_or(1)
}

/// The host's physical memory in MiB (0 if unknown).
pub fn host_memory_mib() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    match (u64::try_from(pages), u64::try_from(page)) {
        (Ok(pages), Ok(page)) => pages.saturating_mul(page) / (1024 * 1024),
        _ => 0,
    }
}

/// The default vCPU ceiling for a VM booting with `vcpus`: the host's CPU count (a guest
/// cannot usefully run more vCPUs than the host has), capped at [`MAX_VCPUS_CAP`], and never
/// below `vcpus`. Pure: the host's count is a parameter.
pub fn default_max_vcpus(vcpus: u32, host_cpus: u32) -> u32 {
    host_cpus.min(MAX_VCPUS_CAP).max(vcpus).max(1)
}

/// The default memory ceiling in MiB for a VM booting with `memory_mib`: the host's memory
/// rounded down to whole GiB (what Kata Containers uses: a pod may grow to any size the host
/// could hold), capped at [`MAX_MEMORY_CAP_MIB`], and never below `memory_mib`. Pure: the
/// host's memory is a parameter.
pub fn default_max_memory_mib(memory_mib: u32, host_memory_mib: u64) -> u32 {
    let host = u32::try_from(host_memory_mib / 1024 * 1024).unwrap_or(u32::MAX);
    host.min(MAX_MEMORY_CAP_MIB).max(memory_mib)
}

/// Which VMM runs the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HypervisorKind {
    /// QEMU: KVM or TCG, q35/pc/microvm, QMP control ([`qemu`]).
    #[default]
    Qemu,
    /// Cloud Hypervisor: KVM only, REST API on a Unix socket ([`clh`]).
    CloudHypervisor,
}

impl HypervisorKind {
    /// The name used in configuration files and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            HypervisorKind::Qemu => "qemu",
            HypervisorKind::CloudHypervisor => "cloud-hypervisor",
        }
    }
}

impl std::fmt::Display for HypervisorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the host reaches the guest agent (defined with the agent's protocol, so the agent
/// client does not depend on this crate).
pub use isola_agent_proto::AgentEndpoint;

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
    /// Which VMM runs the VM ([`new_vm`] picks the backend from it).
    pub kind: HypervisorKind,
    /// The qemu-system-x86_64 binary (for [`HypervisorKind::Qemu`]).
    pub qemu_path: PathBuf,
    /// The cloud-hypervisor binary (for [`HypervisorKind::CloudHypervisor`]).
    pub cloud_hypervisor_path: PathBuf,
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
    /// TCG's translation cache in MiB when the accelerator is TCG (QEMU's `tb-size`); None:
    /// QEMU's default. Cloud Hypervisor has no TCG and ignores it.
    pub tcg_tb_size_mib: Option<u32>,
    /// Number of vCPUs at boot.
    pub vcpus: u32,
    /// Guest memory at boot, in MiB.
    pub memory_mib: u32,
    /// The most vCPUs [`Hypervisor::hotplug_vcpus`] can reach (QEMU's `maxcpus`). Values
    /// below `vcpus` count as `vcpus` (no CPU hotplug). Default: [`default_max_vcpus`].
    pub max_vcpus: u32,
    /// The most memory, in MiB, [`Hypervisor::hotplug_memory`] can reach (QEMU's `maxmem`).
    /// Values up to `memory_mib` disable memory hotplug. Default: [`default_max_memory_mib`].
    pub max_memory_mib: u32,
    /// How many memory DIMMs can be hot-plugged (QEMU's `slots`); 0 disables memory hotplug.
    /// Default: [`DEFAULT_MEMORY_SLOTS`].
    pub memory_slots: u32,
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
    /// Network devices (tap descriptors the caller opened); empty = no NIC at all.
    pub network: Vec<NetDevice>,
    /// The VM template store to start from (QEMU; see `qemu::clone`), None: always boot.
    pub templates: Option<PathBuf>,
    /// How many templates that store keeps (the least recently used go first).
    pub max_templates: usize,
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            id: String::new(),
            state_dir: PathBuf::new(),
            kind: HypervisorKind::Qemu,
            qemu_path: PathBuf::from("qemu-system-x86_64"),
            cloud_hypervisor_path: PathBuf::from("cloud-hypervisor"),
            kernel: PathBuf::new(),
            initrd: PathBuf::new(),
            kernel_params: String::new(),
            machine_type: "q35".to_owned(),
            firmware: None,
            accelerator: AcceleratorChoice::Auto,
            tcg_tb_size_mib: None,
            vcpus: 1,
            memory_mib: 512,
            max_vcpus: default_max_vcpus(1, host_cpus()),
            max_memory_mib: default_max_memory_mib(512, host_memory_mib()),
            memory_slots: DEFAULT_MEMORY_SLOTS,
            shared_fs: None,
            vsock: VsockChoice::Auto,
            vhost_user_vsock_path: PathBuf::from("vhost-device-vsock"),
            agent_port: 1024,
            debug: false,
            network: Vec::new(),
            templates: None,
            max_templates: 8,
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

    /// SIGKILLs the VMM at once, for a guest declared dead (frozen, or its agent silent past
    /// the watchdog's limit). The VM then ends as if it crashed: `wait()` resolves, `stop()`
    /// cleans up. [`HypervisorError::NotRunning`] once it exited.
    async fn kill(&self) -> Result<(), HypervisorError>;

    /// Pauses all vCPUs.
    async fn pause(&self) -> Result<(), HypervisorError>;

    /// Resumes vCPUs paused by [`Hypervisor::pause`].
    async fn resume(&self) -> Result<(), HypervisorError>;

    /// Grows the VM to `total` vCPUs by hot-plugging CPUs; returns the resulting count
    /// (`total`, or the current count when it is already there). Up to
    /// [`VmConfig::max_vcpus`], else [`HypervisorError::HotplugLimit`]; shrinking is refused
    /// with [`HypervisorError::ShrinkUnsupported`] (callers that only want "at least" can
    /// treat that as success). The new CPUs arrive *offline* in the guest: online them there
    /// (the agent's `OnlineCPUMem`).
    async fn hotplug_vcpus(&self, total: u32) -> Result<u32, HypervisorError>;

    /// Grows guest memory to `total_mib` by hot-plugging one DIMM for the difference, rounded
    /// up to [`MEMORY_BLOCK_MIB`]; returns the resulting size in MiB (at least `total_mib`).
    /// Up to [`VmConfig::max_memory_mib`] and [`VmConfig::memory_slots`] DIMMs, else
    /// [`HypervisorError::HotplugLimit`]; shrinking is refused with
    /// [`HypervisorError::ShrinkUnsupported`]. The guest onlines the memory itself
    /// (`memhp_default_state=online` in [`DEFAULT_KERNEL_PARAMS`]).
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

    /// The key of the VM template `start` restored this VM from ([`VmConfig::templates`]);
    /// None when it booted, and before `start`. A caller whose agent does not answer in a
    /// clone can boot the pod instead ([`forget_template`]).
    fn template(&self) -> Option<String> {
        None
    }
}

/// Removes the VM template `key` from the store at `root` (unless a build holds it), after a
/// VM restored from it failed: the next pod that wants it rebuilds it. Errors are logged.
pub async fn forget_template(root: &std::path::Path, key: &str) {
    qemu::clone::forget(&qemu::template::TemplateStore::new(root), key).await;
}

/// Creates a QEMU-backed VM. Nothing is started until [`Hypervisor::start`].
pub fn new_qemu(cfg: VmConfig) -> Arc<dyn Hypervisor> {
    Arc::new(qemu::QemuHypervisor::new(cfg))
}

/// Creates a Cloud Hypervisor-backed VM. Nothing is started until [`Hypervisor::start`].
pub fn new_cloud_hypervisor(cfg: VmConfig) -> Arc<dyn Hypervisor> {
    Arc::new(clh::ClhHypervisor::new(cfg))
}

/// Creates a VM with the backend [`VmConfig::kind`] names.
pub fn new_vm(cfg: VmConfig) -> Arc<dyn Hypervisor> {
    match cfg.kind {
        HypervisorKind::Qemu => new_qemu(cfg),
        HypervisorKind::CloudHypervisor => new_cloud_hypervisor(cfg),
    }
}

/// Whether the VM's agent is reached over hybrid vsock (a Unix socket with `CONNECT <port>`)
/// rather than kernel vsock: always with Cloud Hypervisor (its vsock is hybrid), with QEMU
/// unless kernel vhost-vsock is chosen (or, for `Auto`, `/dev/vhost-vsock` exists).
pub fn uses_hybrid_vsock(
    kind: HypervisorKind,
    vsock: VsockChoice,
    vhost_vsock_present: bool,
) -> bool {
    match (kind, vsock) {
        (HypervisorKind::CloudHypervisor, _) => true,
        (HypervisorKind::Qemu, VsockChoice::VhostKernel) => false,
        (HypervisorKind::Qemu, VsockChoice::VhostUser) => true,
        (HypervisorKind::Qemu, VsockChoice::Auto) => !vhost_vsock_present,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ceilings() {
        assert_eq!(default_max_vcpus(1, 2), 2);
        assert_eq!(default_max_vcpus(4, 2), 4, "never below the boot vCPUs");
        assert_eq!(default_max_vcpus(1, 1024), MAX_VCPUS_CAP);
        assert_eq!(default_max_vcpus(0, 0), 1);
        // 24105 MiB of host memory: whole GiB only.
        assert_eq!(default_max_memory_mib(512, 24_105), 23 * 1024);
        assert_eq!(default_max_memory_mib(2048, 1000), 2048);
        assert_eq!(default_max_memory_mib(512, 4 << 20), MAX_MEMORY_CAP_MIB);
        let d = VmConfig::default();
        assert!(d.max_vcpus >= d.vcpus && d.max_memory_mib >= d.memory_mib);
        assert_eq!(d.memory_slots, DEFAULT_MEMORY_SLOTS);
        assert!(DEFAULT_KERNEL_PARAMS.contains("memhp_default_state=online swiotlb=noforce"));
    }
}
