//! Cloud Hypervisor's API types for the parts isola uses, and the pure builder from a
//! [`ClhPlan`] to the `vm.create` body (golden-tested, like the QEMU command line).
//!
//! Field names and enum spellings are Cloud Hypervisor's (its `cloud-hypervisor.yaml`
//! OpenAPI document, v49). Requests leave out what isola does not set, so the VMM's defaults
//! apply; responses ignore fields isola does not read. The contract tests in
//! `hypervisor/tests/clh_contract.rs` check against the real binary that `vm.create` accepts
//! exactly what [`build`] produces and that `vm.info` gives it back unchanged.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::NetDevice;

/// The guest CID of Cloud Hypervisor's vsock device (the host is 2; the guest's own number
/// only matters inside the guest, and each VM has its own hybrid socket).
pub const GUEST_CID: u64 = 3;

/// Queue size of the virtio-fs request queue (virtiofsd's default maximum).
pub const FS_QUEUE_SIZE: u16 = 1024;

/// Queue size of each virtio-net queue (Cloud Hypervisor's default).
pub const NET_QUEUE_SIZE: u16 = 256;

/// `vm.create`'s body, and `vm.info`'s `config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfig {
    /// Kernel, initramfs, command line.
    pub payload: PayloadConfig,
    /// vCPUs at boot and the hotplug ceiling.
    pub cpus: CpusConfig,
    /// Guest memory.
    pub memory: MemoryConfig,
    /// virtio-fs devices (vhost-user, served by virtiofsd).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs: Option<Vec<FsConfig>>,
    /// The hybrid vsock device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockConfig>,
    /// virtio-net devices. Empty in `vm.create`: taps are added with `vm.add-net` because
    /// their descriptors travel as `SCM_RIGHTS` with that request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<Vec<NetConfig>>,
    /// The 8250 serial port (`ttyS0`).
    pub serial: ConsoleConfig,
    /// The virtio console (`hvc0`).
    pub console: ConsoleConfig,
    /// A pvpanic device: a guest panic becomes a `panic` event on the event monitor.
    #[serde(default)]
    pub pvpanic: bool,
}

/// What the VM boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadConfig {
    /// A PVH `vmlinux` (or bzImage-less ELF) booted directly.
    pub kernel: PathBuf,
    /// The initramfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<PathBuf>,
    /// The kernel command line.
    pub cmdline: String,
}

/// vCPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpusConfig {
    /// vCPUs at boot.
    pub boot_vcpus: u32,
    /// The most vCPUs `vm.resize` can reach.
    pub max_vcpus: u32,
}

/// How memory is hot-plugged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HotplugMethod {
    /// ACPI memory devices (what QEMU's DIMMs are too; the guest onlines them itself with
    /// `memhp_default_state=online`).
    Acpi,
    /// virtio-mem (also shrinks; not used by isola).
    VirtioMem,
}

/// Guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryConfig {
    /// Boot memory in bytes.
    pub size: u64,
    /// Address space reserved for hotplug, in bytes; None = no memory hotplug.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotplug_size: Option<u64>,
    /// How memory is hot-plugged.
    pub hotplug_method: HotplugMethod,
    /// `MAP_SHARED` guest memory: required by vhost-user devices (virtio-fs), which map it.
    pub shared: bool,
}

/// One virtio-fs device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsConfig {
    /// The mount tag the guest uses.
    pub tag: String,
    /// virtiofsd's vhost-user socket.
    pub socket: PathBuf,
    /// Request queues.
    pub num_queues: u16,
    /// Size of each queue.
    pub queue_size: u16,
    /// Device id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// The hybrid vsock device: the host connects to `socket` and writes `CONNECT <port>\n`;
/// guest-initiated connections to port P arrive on `<socket>_P`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockConfig {
    /// The guest's CID.
    pub cid: u64,
    /// The host-side Unix socket.
    pub socket: PathBuf,
    /// Device id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// One virtio-net device on a tap descriptor passed with the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    /// The guest NIC's MAC.
    pub mac: String,
    /// The guest NIC's MTU; None = the tap's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Queues: two (RX and TX) per tap descriptor.
    pub num_queues: u16,
    /// Size of each queue.
    pub queue_size: u16,
    /// Device id.
    pub id: String,
    /// The descriptors' numbers in the VMM: filled in by the VMM from the `SCM_RIGHTS` it
    /// received (numbers in a request body are ignored), so never sent.
    #[serde(default, skip_serializing)]
    pub fds: Option<Vec<i32>>,
}

/// Where a console goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsoleMode {
    /// Not present.
    Off,
    /// A pseudo terminal.
    Pty,
    /// The VMM's stdout (isola pipes it into the size-capped console log).
    Tty,
    /// A file (unbounded: not used).
    File,
    /// A Unix socket.
    Socket,
    /// Discarded.
    Null,
}

/// A console device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleConfig {
    /// Where its output goes.
    pub mode: ConsoleMode,
}

/// The VM's state as `vm.info` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// `vm.create` done, not booted.
    Created,
    /// Booted and running.
    Running,
    /// Shut down (the VMM still runs).
    Shutdown,
    /// vCPUs paused.
    Paused,
    /// Stopped at a debugger breakpoint.
    BreakPoint,
}

/// `vm.info`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VmInfo {
    /// The configuration with the VMM's defaults filled in.
    pub config: VmConfig,
    /// The state.
    pub state: VmState,
    /// Guest memory including hot-plugged memory, in bytes.
    #[serde(default)]
    pub memory_actual_size: Option<u64>,
}

/// `vmm.ping`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VmmPing {
    /// The VMM's version, e.g. "49.0.0".
    pub version: String,
    /// The VMM's pid.
    #[serde(default)]
    pub pid: Option<i64>,
    /// Build features, e.g. "kvm".
    #[serde(default)]
    pub features: Vec<String>,
}

/// `vm.resize`'s body: grow vCPUs and/or memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct ResizeRequest {
    /// The vCPU count to reach.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desired_vcpus: Option<u32>,
    /// The memory size to reach, in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desired_ram: Option<u64>,
}

/// Everything [`build`] needs: the backend resolves it from [`crate::VmConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClhPlan {
    /// Guest kernel (PVH vmlinux).
    pub kernel: PathBuf,
    /// Guest initrd.
    pub initrd: PathBuf,
    /// The whole kernel command line.
    pub cmdline: String,
    /// vCPUs at boot.
    pub vcpus: u32,
    /// vCPU ceiling (at least `vcpus`).
    pub max_vcpus: u32,
    /// Boot memory, MiB.
    pub memory_mib: u32,
    /// Memory that can be hot-plugged on top, MiB; 0 = none.
    pub hotplug_mib: u32,
    /// The hybrid vsock socket.
    pub vsock_socket: PathBuf,
    /// virtiofsd's socket and the tag, when a directory is shared.
    pub fs: Option<(PathBuf, String)>,
}

const MIB: u64 = 1024 * 1024;

/// The `vm.create` body for `plan`.
pub fn build(plan: &ClhPlan) -> VmConfig {
    VmConfig {
        payload: PayloadConfig {
            kernel: plan.kernel.clone(),
            initramfs: Some(plan.initrd.clone()),
            cmdline: plan.cmdline.clone(),
        },
        cpus: CpusConfig {
            boot_vcpus: plan.vcpus,
            max_vcpus: plan.max_vcpus.max(plan.vcpus),
        },
        memory: MemoryConfig {
            size: u64::from(plan.memory_mib) * MIB,
            hotplug_size: (plan.hotplug_mib > 0).then(|| u64::from(plan.hotplug_mib) * MIB),
            hotplug_method: HotplugMethod::Acpi,
            // virtiofsd maps guest memory; without a share nothing else does.
            shared: plan.fs.is_some(),
        },
        fs: plan.fs.as_ref().map(|(socket, tag)| {
            vec![FsConfig {
                tag: tag.clone(),
                socket: socket.clone(),
                num_queues: 1,
                queue_size: FS_QUEUE_SIZE,
                id: Some("fs0".into()),
            }]
        }),
        vsock: Some(VsockConfig {
            cid: GUEST_CID,
            socket: plan.vsock_socket.clone(),
            id: Some("vsock0".into()),
        }),
        net: None,
        serial: ConsoleConfig {
            mode: ConsoleMode::Tty,
        },
        console: ConsoleConfig {
            mode: ConsoleMode::Off,
        },
        pvpanic: true,
    }
}

/// The `vm.add-net` body for network device number `index` (its tap descriptor travels with
/// the request).
pub fn net_config(index: usize, dev: &NetDevice) -> NetConfig {
    NetConfig {
        mac: dev.mac.clone(),
        mtu: (dev.mtu > 0).then_some(dev.mtu),
        num_queues: 2,
        queue_size: NET_QUEUE_SIZE,
        id: format!("net{index}"),
        fds: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> ClhPlan {
        ClhPlan {
            kernel: "/k/vmlinux".into(),
            initrd: "/k/initrd.img".into(),
            cmdline: "console=ttyS0 agent.log=info".into(),
            vcpus: 1,
            max_vcpus: 2,
            memory_mib: 512,
            hotplug_mib: 1536,
            vsock_socket: "/run/isola/vm/p/vsock.sock".into(),
            fs: Some(("/run/isola/vm/p/virtiofs.sock".into(), "isolafs".into())),
        }
    }

    #[test]
    fn golden_full() {
        let got = serde_json::to_value(build(&plan())).unwrap();
        let want = serde_json::json!({
            "payload": {
                "kernel": "/k/vmlinux",
                "initramfs": "/k/initrd.img",
                "cmdline": "console=ttyS0 agent.log=info"
            },
            "cpus": {"boot_vcpus": 1, "max_vcpus": 2},
            "memory": {
                "size": 536_870_912_u64,
                "hotplug_size": 1_610_612_736_u64,
                "hotplug_method": "Acpi",
                "shared": true
            },
            "fs": [{
                "tag": "isolafs",
                "socket": "/run/isola/vm/p/virtiofs.sock",
                "num_queues": 1,
                "queue_size": 1024,
                "id": "fs0"
            }],
            "vsock": {"cid": 3, "socket": "/run/isola/vm/p/vsock.sock", "id": "vsock0"},
            "serial": {"mode": "Tty"},
            "console": {"mode": "Off"},
            "pvpanic": true
        });
        assert_eq!(got, want);
    }

    #[test]
    fn golden_no_share_no_hotplug() {
        let p = ClhPlan {
            fs: None,
            hotplug_mib: 0,
            max_vcpus: 0,
            vcpus: 2,
            ..plan()
        };
        let got = serde_json::to_value(build(&p)).unwrap();
        assert_eq!(
            got["memory"],
            serde_json::json!({"size": 536_870_912_u64, "hotplug_method": "Acpi", "shared": false})
        );
        assert_eq!(
            got["cpus"],
            serde_json::json!({"boot_vcpus": 2, "max_vcpus": 2})
        );
        assert!(got.get("fs").is_none() && got.get("net").is_none());
    }

    #[test]
    fn net_device_body() {
        let tap = std::sync::Arc::new(std::os::fd::OwnedFd::from(
            std::fs::File::open("/dev/null").unwrap(),
        ));
        let dev = NetDevice {
            mac: "02:00:00:00:00:07".into(),
            mtu: 1450,
            tap,
        };
        let got = serde_json::to_value(net_config(1, &dev)).unwrap();
        assert_eq!(
            got,
            serde_json::json!({
                "mac": "02:00:00:00:00:07", "mtu": 1450, "num_queues": 2,
                "queue_size": 256, "id": "net1"
            })
        );
        let dev0 = NetDevice { mtu: 0, ..dev };
        assert!(serde_json::to_value(net_config(0, &dev0))
            .unwrap()
            .get("mtu")
            .is_none());
    }

    #[test]
    fn info_parses_what_the_vmm_returns() {
        // Trimmed from a real v49 `vm.info`: unknown fields are ignored, fds are read.
        let info: VmInfo = serde_json::from_value(serde_json::json!({
            "config": {
                "cpus": {"boot_vcpus": 1, "max_vcpus": 2, "topology": null, "kvm_hyperv": false},
                "memory": {"size": 536_870_912_u64, "mergeable": false, "hotplug_method": "Acpi",
                           "hotplug_size": null, "shared": false, "thp": true},
                "payload": {"firmware": null, "kernel": "/k", "cmdline": "c", "initramfs": "/i"},
                "net": [{"mac": "02:00:00:00:00:01", "mtu": 1400, "num_queues": 2,
                         "queue_size": 256, "id": "net0", "fds": [25], "tap": null}],
                "serial": {"file": null, "mode": "Tty", "iommu": false, "socket": null},
                "console": {"file": null, "mode": "Off", "iommu": false, "socket": null},
                "pvpanic": true
            },
            "state": "Running",
            "memory_actual_size": 536_870_912_u64
        }))
        .unwrap();
        assert_eq!(info.state, VmState::Running);
        assert_eq!(info.config.net.unwrap()[0].fds, Some(vec![25]));
        assert_eq!(info.config.memory.hotplug_size, None);
    }
}
