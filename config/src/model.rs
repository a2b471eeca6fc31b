//! The configuration data model: the sections of `configuration.toml`, their
//! keys, and the default value of every key.
//!
//! Every struct here deserializes with `#[serde(default, deny_unknown_fields)]`:
//! a missing key takes its documented default, an unknown key is an error.
//! Parsing alone does not check ranges or paths; see [`Config::validate`].
//!
//! [`Config::validate`]: crate::Config::validate

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::PREFIX;

/// The whole runtime configuration: the sections of `configuration.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[hypervisor]`: how the pod VM is launched.
    pub hypervisor: HypervisorConfig,
    /// `[agent]`: how the runtime talks to the in-guest agent.
    pub agent: AgentConfig,
    /// `[runtime]`: behaviour of the shim itself.
    pub runtime: RuntimeConfig,
    /// `[pod]`: sizing a pod's VM, and the pod annotations allowed to override keys.
    pub pod: crate::pod::PodConfig,
    /// `[factory]`: starting pod VMs from a saved template instead of booting them.
    pub factory: FactoryConfig,
}

/// The `[factory]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FactoryConfig {
    /// `template`: start each pod's VM (QEMU, q35) by restoring a VM template saved once per
    /// kernel, initrd, VM shape and QEMU, kept under `<state_dir>/templates`, instead of
    /// booting it (docs/fast-start.md). A VM that cannot be a clone, or a missing or damaged
    /// template, boots as usual. Default `true`.
    pub template: bool,
    /// `max_templates`: how many VM templates the store keeps. Each VM shape (a pod's
    /// declared resources size its VM) has its own; past this many, building one removes the
    /// least recently used. Default [`DEFAULT_MAX_TEMPLATES`].
    pub max_templates: u32,
}

/// Default of `factory.max_templates`: a template holds ~50 MiB of the state directory's
/// filesystem (a tmpfs `/run` is host memory).
pub const DEFAULT_MAX_TEMPLATES: u32 = 8;

impl Default for FactoryConfig {
    fn default() -> Self {
        Self {
            template: true,
            max_templates: DEFAULT_MAX_TEMPLATES,
        }
    }
}

impl Config {
    /// Where VM templates are kept: `<runtime.state_dir>/templates`.
    pub fn template_dir(&self) -> PathBuf {
        self.runtime.state_dir.join("templates")
    }
}

/// The `[hypervisor]` section: the VMM (QEMU or Cloud Hypervisor), guest kernel, shared
/// filesystem, vsock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HypervisorConfig {
    /// `kind`: which VMM runs the pod VM. Default [`HypervisorKind::Qemu`].
    /// [`HypervisorKind::CloudHypervisor`] needs hardware KVM (vmx/svm): it has no software
    /// emulation, so `accelerator = "tcg"` is an error with it, and so is `vsock = "vhost"`
    /// (its vsock is always hybrid); `machine_type`, `firmware`, `path` and
    /// `vhost_user_vsock_path` are QEMU's and ignored by it.
    pub kind: HypervisorKind,
    /// `path`: the QEMU binary (used when `kind = "qemu"`). Default
    /// `/usr/bin/qemu-system-x86_64`.
    pub path: PathBuf,
    /// `cloud_hypervisor_path`: the Cloud Hypervisor binary (used when
    /// `kind = "cloud-hypervisor"`). Default `/usr/local/bin/cloud-hypervisor`.
    pub cloud_hypervisor_path: PathBuf,
    /// `kernel`: the guest kernel image. Default `$PREFIX/share/isola/vmlinux`: isola's
    /// tailored kernel (guest/kernel/isola.config), an uncompressed ELF booted directly
    /// through its PVH entry (no in-guest decompression). Debian's kernel is installed as
    /// `$PREFIX/share/isola/debian/vmlinux` (set `initrd` to its initrd too).
    pub kernel: PathBuf,
    /// `initrd`: the guest initrd. Default `$PREFIX/share/isola/initrd.img` (the tailored
    /// kernel's: no modules); `$PREFIX/share/isola/debian/initrd.img` goes with Debian's.
    pub initrd: PathBuf,
    /// `kernel_params`: extra guest kernel parameters, appended to the ones
    /// the runtime sets itself. Default empty.
    pub kernel_params: String,
    /// `machine_type`: the QEMU machine type. Default [`MachineType::Q35`].
    /// QEMU only: Cloud Hypervisor ignores it.
    pub machine_type: MachineType,
    /// `firmware`: the firmware (`-bios`) image. Default
    /// `/usr/share/qemu/qboot.rom`; the empty string means QEMU's own default
    /// firmware (see [`HypervisorConfig::firmware_path`]). QEMU only: Cloud
    /// Hypervisor boots the kernel directly and ignores it.
    pub firmware: PathBuf,
    /// `accelerator`: the accelerator. Default [`Accelerator::Auto`]. With
    /// `kind = "cloud-hypervisor"` only `auto` and `kvm` are accepted (both mean
    /// KVM: Cloud Hypervisor has no software emulation).
    pub accelerator: Accelerator,
    /// `tcg_tb_size_mib`: the size of QEMU's TCG translation cache in MiB
    /// (`-accel tcg,tb-size=N`), used only when the accelerator is TCG; 0 (the
    /// default) leaves QEMU's own choice, which is 64 MiB for a 512 MiB guest.
    /// Most of the cache an idle pod fills stays in host memory: measured under TCG
    /// on the development host, idle QEMU PSS 176 MiB (cache 54 MiB) by default,
    /// 148 MiB with 32 (cache 31 MiB), 128 MiB with 16 (cache 15 MiB), with no
    /// start-time difference outside the noise of 3 runs. A smaller cache is
    /// translated again more often under a busy guest. At most 4096.
    pub tcg_tb_size_mib: u32,
    /// `vcpus`: number of guest vCPUs, 1..=255. Default 1.
    pub vcpus: u32,
    /// `memory_mib`: guest memory in MiB, 128..=1048576. Default 512.
    pub memory_mib: u64,
    /// `shared_fs`: how container rootfs/volumes reach the guest. Default
    /// [`SharedFs::VirtioFs`].
    pub shared_fs: SharedFs,
    /// `virtiofsd_path`: the virtiofsd binary. Default `/usr/local/bin/virtiofsd`.
    pub virtiofsd_path: PathBuf,
    /// `virtiofsd_cache`: virtiofsd `--cache` mode. Default [`VirtiofsdCache::Auto`].
    pub virtiofsd_cache: VirtiofsdCache,
    /// `virtiofsd_sandbox`: virtiofsd `--sandbox` mode. Default
    /// [`VirtiofsdSandbox::Namespace`].
    pub virtiofsd_sandbox: VirtiofsdSandbox,
    /// `vsock`: the host side of the guest vsock. Default [`Vsock::Auto`].
    /// Cloud Hypervisor always uses its own hybrid vsock (a Unix socket): with
    /// `kind = "cloud-hypervisor"`, `auto` and `vhost-user` mean that, and `vhost`
    /// is an error.
    pub vsock: Vsock,
    /// `vhost_user_vsock_path`: the vhost-user vsock daemon, used when
    /// `vsock` resolves to [`Vsock::VhostUser`] with QEMU (Cloud Hypervisor
    /// ignores it). Default `/usr/local/bin/vhost-device-vsock`.
    pub vhost_user_vsock_path: PathBuf,
}

/// The `[agent]` section: the runtime's connection to the in-guest agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// `dial_timeout_ms`: how long to keep trying to reach the agent after
    /// the VM starts, in milliseconds; must be > 0. Default 30000.
    pub dial_timeout_ms: u64,
    /// `log_level`: the agent's log level, passed to the guest kernel command
    /// line as `agent.log=<level>`. Default [`LogLevel::Info`].
    pub log_level: LogLevel,
    /// `watchdog_timeout_ms`: how long the agent of a running pod may leave the runtime's
    /// health checks (one every [`AgentConfig::watchdog_period`]) unanswered before the VM
    /// is declared dead: its VMM is killed and every process of the pod ends with status 255,
    /// as if the VM had crashed (a frozen VMM, a hung guest). 0 turns the watchdog off.
    /// Default 30000.
    pub watchdog_timeout_ms: u64,
    /// `debug_console`: serve a root shell in the guest, outside every container, for
    /// `isola debug console <sandbox>` (diagnosis only). The pod VM's kernel command line then
    /// carries `agent.debug_console=<port>` and the host puts [`AgentConfig::debug_busybox_path`]
    /// into the pod's shared directory before boot. Not overridable by a pod annotation.
    /// Default `false`.
    pub debug_console: bool,
    /// `debug_busybox_path`: the static busybox the debug console runs in the guest (copied
    /// into each pod's shared directory when `debug_console` is on; the guest has no libc, so
    /// it must be statically linked). Default `/bin/busybox` (Debian's `busybox-static`).
    pub debug_busybox_path: PathBuf,
    /// `container_factory`: run every container operation in the guest through the agent's
    /// warm container factory (one process forked per operation) rather than a freshly
    /// exec'd helper each time; under TCG an exec round trip is about twice as fast with it.
    /// `false` puts `agent.factory=off` on the guest's kernel command line. Default `true`.
    pub container_factory: bool,
}

/// The `[runtime]` section: behaviour of the shim itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// `debug`: verbose logging in the shim. Default `false`.
    pub debug: bool,
    /// `state_dir`: where per-sandbox runtime state (sockets, pid files) is
    /// kept. Default `/run/isola`.
    pub state_dir: PathBuf,
}

/// Default of `hypervisor.path`.
pub const DEFAULT_QEMU_PATH: &str = "/usr/bin/qemu-system-x86_64";
/// Default of `hypervisor.cloud_hypervisor_path`.
pub const DEFAULT_CLOUD_HYPERVISOR_PATH: &str = "/usr/local/bin/cloud-hypervisor";
/// Default of `hypervisor.firmware`.
pub const DEFAULT_FIRMWARE: &str = "/usr/share/qemu/qboot.rom";
/// Default of `hypervisor.virtiofsd_path`.
pub const DEFAULT_VIRTIOFSD_PATH: &str = "/usr/local/bin/virtiofsd";
/// Default of `hypervisor.vhost_user_vsock_path`.
pub const DEFAULT_VHOST_USER_VSOCK_PATH: &str = "/usr/local/bin/vhost-device-vsock";
/// Default of `runtime.state_dir`.
pub const DEFAULT_STATE_DIR: &str = "/run/isola";
/// Default of `agent.watchdog_timeout_ms`.
pub const DEFAULT_WATCHDOG_TIMEOUT_MS: u64 = 30_000;
/// Default of `agent.debug_busybox_path`.
pub const DEFAULT_DEBUG_BUSYBOX_PATH: &str = "/bin/busybox";
/// Default of `agent.dial_timeout_ms`.
pub const DEFAULT_DIAL_TIMEOUT_MS: u64 = 30_000;
/// Default of `hypervisor.vcpus`.
pub const DEFAULT_VCPUS: u32 = 1;
/// Largest accepted `hypervisor.tcg_tb_size_mib` (QEMU's own limit is 2 GiB per region; a
/// cache larger than guest memory would only hold translations nobody needs).
pub const MAX_TCG_TB_SIZE_MIB: u32 = 4096;

/// Default of `hypervisor.memory_mib`.
pub const DEFAULT_MEMORY_MIB: u64 = 512;
/// Smallest accepted `hypervisor.vcpus`.
pub const MIN_VCPUS: u32 = 1;
/// Largest accepted `hypervisor.vcpus`.
pub const MAX_VCPUS: u32 = 255;
/// Smallest accepted `hypervisor.memory_mib`.
pub const MIN_MEMORY_MIB: u64 = 128;
/// Largest accepted `hypervisor.memory_mib` (1 TiB).
pub const MAX_MEMORY_MIB: u64 = 1_048_576;
/// The kernel vhost-vsock device; its presence selects [`Vsock::Vhost`] when
/// `vsock = "auto"`.
pub const VHOST_VSOCK_DEVICE: &str = "/dev/vhost-vsock";

/// `$PREFIX/share/isola`, where the guest kernel, initrd and the default
/// configuration file are installed.
pub fn share_dir() -> PathBuf {
    Path::new(PREFIX).join("share").join("isola")
}

impl Default for HypervisorConfig {
    fn default() -> Self {
        HypervisorConfig {
            kind: HypervisorKind::default(),
            path: PathBuf::from(DEFAULT_QEMU_PATH),
            cloud_hypervisor_path: PathBuf::from(DEFAULT_CLOUD_HYPERVISOR_PATH),
            kernel: share_dir().join("vmlinux"),
            initrd: share_dir().join("initrd.img"),
            kernel_params: String::new(),
            machine_type: MachineType::default(),
            firmware: PathBuf::from(DEFAULT_FIRMWARE),
            accelerator: Accelerator::default(),
            tcg_tb_size_mib: 0,
            vcpus: DEFAULT_VCPUS,
            memory_mib: DEFAULT_MEMORY_MIB,
            shared_fs: SharedFs::default(),
            virtiofsd_path: PathBuf::from(DEFAULT_VIRTIOFSD_PATH),
            virtiofsd_cache: VirtiofsdCache::default(),
            virtiofsd_sandbox: VirtiofsdSandbox::default(),
            vsock: Vsock::default(),
            vhost_user_vsock_path: PathBuf::from(DEFAULT_VHOST_USER_VSOCK_PATH),
        }
    }
}

impl HypervisorConfig {
    /// The firmware to pass to QEMU (`-bios`), or `None` when `firmware` is
    /// empty, meaning "let QEMU use its default firmware".
    pub fn firmware_path(&self) -> Option<&Path> {
        if self.firmware.as_os_str().is_empty() {
            None
        } else {
            Some(&self.firmware)
        }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            dial_timeout_ms: DEFAULT_DIAL_TIMEOUT_MS,
            log_level: LogLevel::default(),
            watchdog_timeout_ms: DEFAULT_WATCHDOG_TIMEOUT_MS,
            debug_console: false,
            container_factory: true,
            debug_busybox_path: PathBuf::from(DEFAULT_DEBUG_BUSYBOX_PATH),
        }
    }
}

impl AgentConfig {
    /// `dial_timeout_ms` as a [`Duration`].
    pub fn dial_timeout(&self) -> Duration {
        Duration::from_millis(self.dial_timeout_ms)
    }

    /// `watchdog_timeout_ms` as a [`Duration`]; None when the watchdog is off.
    pub fn watchdog_timeout(&self) -> Option<Duration> {
        (self.watchdog_timeout_ms > 0).then(|| Duration::from_millis(self.watchdog_timeout_ms))
    }

    /// How often the watchdog checks the agent: a third of its timeout (so a few checks fit
    /// in it), at most 5 s and at least 100 ms.
    pub fn watchdog_period(&self) -> Duration {
        Duration::from_millis((self.watchdog_timeout_ms / 3).clamp(100, 5_000))
    }

    /// The guest kernel parameter carrying the log level, e.g. `agent.log=info`.
    pub fn kernel_param(&self) -> String {
        if self.container_factory {
            format!("agent.log={}", self.log_level)
        } else {
            format!("agent.log={} agent.factory=off", self.log_level)
        }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            debug: false,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
        }
    }
}

/// Defines a string-valued config enum: serde names, `Default`, `as_str`,
/// `Display`, and the list of accepted values.
macro_rules! config_enum {
    (
        $(#[$meta:meta])*
        $name:ident, default $default:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $(
                $(#[$vmeta])*
                #[serde(rename = $text)]
                $variant,
            )+
        }

        impl $name {
            /// Every accepted value, as written in the TOML file.
            pub const VALUES: &'static [&'static str] = &[$($text),+];

            /// The value as written in the TOML file (and as QEMU / the
            /// helper daemons spell it).
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }

            /// The value written `text` in the TOML file, if it is one of
            /// [`Self::VALUES`] (case-sensitive, as serde reads it).
            pub fn from_name(text: &str) -> Option<Self> {
                match text {
                    $( $text => Some($name::$variant), )+
                    _ => None,
                }
            }
        }

        impl Default for $name {
            fn default() -> Self {
                $name::$default
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

config_enum! {
    /// `hypervisor.kind`: the VMM that runs the pod VM.
    HypervisorKind, default Qemu {
        /// `"qemu"`: QEMU, with KVM or TCG software emulation (the default).
        Qemu = "qemu",
        /// `"cloud-hypervisor"`: Cloud Hypervisor; hardware KVM (vmx/svm) only.
        CloudHypervisor = "cloud-hypervisor",
    }
}

config_enum! {
    /// `hypervisor.machine_type`: the QEMU `-machine` type.
    MachineType, default Q35 {
        /// `"q35"`: modern PC with PCIe (the default).
        Q35 = "q35",
        /// `"pc"`: legacy i440FX PC.
        Pc = "pc",
        /// `"microvm"`: QEMU's minimal virtio-mmio machine.
        Microvm = "microvm",
    }
}

config_enum! {
    /// `hypervisor.accelerator`: the accelerator (QEMU's `-accel`).
    Accelerator, default Auto {
        /// `"auto"`: KVM when `/dev/kvm` is usable, else TCG (the default).
        Auto = "auto",
        /// `"kvm"`: hardware virtualization; fail if unavailable.
        Kvm = "kvm",
        /// `"tcg"`: software emulation (slow; for hosts without KVM). QEMU only.
        Tcg = "tcg",
    }
}

config_enum! {
    /// `hypervisor.shared_fs`: how host directories are shared with the guest.
    SharedFs, default VirtioFs {
        /// `"virtio-fs"`: share through virtiofsd (the default).
        VirtioFs = "virtio-fs",
        /// `"none"`: no shared filesystem.
        None = "none",
    }
}

config_enum! {
    /// `hypervisor.virtiofsd_cache`: virtiofsd `--cache` mode.
    VirtiofsdCache, default Auto {
        /// `"auto"` (the default).
        Auto = "auto",
        /// `"always"`.
        Always = "always",
        /// `"never"`.
        Never = "never",
    }
}

config_enum! {
    /// `hypervisor.virtiofsd_sandbox`: virtiofsd `--sandbox` mode.
    VirtiofsdSandbox, default Namespace {
        /// `"namespace"` (the default).
        Namespace = "namespace",
        /// `"chroot"`.
        Chroot = "chroot",
        /// `"none"`.
        None = "none",
    }
}

config_enum! {
    /// `hypervisor.vsock`: the host-side vsock backend.
    Vsock, default Auto {
        /// `"auto"`: [`Vsock::Vhost`] if `/dev/vhost-vsock` exists, else
        /// [`Vsock::VhostUser`] (the default).
        Auto = "auto",
        /// `"vhost"`: the kernel vhost-vsock device.
        Vhost = "vhost",
        /// `"vhost-user"`: a vhost-user vsock daemon (`vhost_user_vsock_path`).
        VhostUser = "vhost-user",
    }
}

config_enum! {
    /// `agent.log_level`: the in-guest agent's log level.
    LogLevel, default Info {
        /// `"error"`.
        Error = "error",
        /// `"warn"`.
        Warn = "warn",
        /// `"info"` (the default).
        Info = "info",
        /// `"debug"`.
        Debug = "debug",
        /// `"trace"`.
        Trace = "trace",
    }
}

impl Vsock {
    /// Resolves [`Vsock::Auto`] given whether the kernel vhost-vsock device is
    /// present; other values are returned unchanged.
    pub fn resolve_with(self, vhost_device_present: bool) -> Vsock {
        match self {
            Vsock::Auto if vhost_device_present => Vsock::Vhost,
            Vsock::Auto => Vsock::VhostUser,
            other => other,
        }
    }

    /// Resolves [`Vsock::Auto`] by looking for [`VHOST_VSOCK_DEVICE`] on this host.
    pub fn resolve(self) -> Vsock {
        self.resolve_with(Path::new(VHOST_VSOCK_DEVICE).exists())
    }
}
