//! The QEMU command line, as a pure function of already-resolved decisions.
//!
//! Everything that needs the host (accelerator probing, vsock mode, CID choice, daemon
//! sockets) is decided before; [`build`] only turns a [`QemuPlan`] into arguments, so the
//! exact command line is covered by golden tests.
//!
//! Choices worth knowing:
//! - Guest RAM is a shared memfd (`memory-backend-memfd,share=on`): vhost-user backends
//!   (virtiofsd, vhost-device-vsock) map guest memory from it.
//! - `-nodefaults` drops the default NIC, VGA, monitor, parallel port and CD-ROM that a
//!   sandbox does not use (the default e1000 NIC alone costs boot time under TCG); the serial
//!   port we need is added explicitly. q35's built-in chipset devices are unaffected.
//! - `-no-reboot` with the guest's `panic=-1 reboot=t` makes a guest reboot or panic end the
//!   QEMU process, which is how the backend notices it.
//! - microvm has no PCI bus by default, so its devices are the virtio-mmio variants.
//! - Hotplug ceilings: `-smp <n>,maxcpus=<max>` adds possible-but-absent CPUs that QMP
//!   `device_add` plugs later; `-m <N>M,slots=<s>,maxmem=<max>M` reserves room for `s` DIMMs.
//!   Boot RAM stays the `mem` memfd backend (`-M ...,memory-backend=mem` works together with
//!   `maxmem` in QEMU 7.2); each hot-plugged DIMM gets its own shared memfd backend so
//!   vhost-user daemons can map it too. microvm has neither (no ACPI CPU or DIMM hotplug).
//! - Values inside QEMU option strings (`key=value,...`) have commas doubled, QEMU's escape.

use std::path::{Path, PathBuf};

use crate::{Accelerator, DEFAULT_KERNEL_PARAMS};

/// The vsock device, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VsockPlan {
    /// Kernel vhost-vsock with a host-unique guest CID.
    VhostKernel {
        /// The guest CID.
        cid: u32,
    },
    /// vhost-user vsock backed by a daemon listening on `socket`.
    VhostUser {
        /// The daemon's vhost-user socket.
        socket: PathBuf,
    },
}

/// The virtio-fs device, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsPlan {
    /// virtiofsd's vhost-user socket.
    pub socket: PathBuf,
    /// The mount tag.
    pub tag: String,
}

/// One virtio-net device on a tap descriptor the VMM inherits, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetPlan {
    /// The guest MAC address (validated by the caller: six hex octets).
    pub mac: String,
    /// `host_mtu`; 0 = leave QEMU's default.
    pub mtu: u32,
    /// The tap descriptor's number in QEMU.
    pub tap_fd: i32,
    /// An open `/dev/vhost-net` descriptor's number in QEMU, if vhost-net is used.
    pub vhost_fd: Option<i32>,
}

/// Memory hotplug room, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryHotplug {
    /// DIMM slots (`slots=`), at least 1.
    pub slots: u32,
    /// The ceiling in MiB (`maxmem=`), above the boot memory.
    pub max_mib: u32,
}

/// The hotplug ceilings a VM is started with (pure: see [`HotplugLimits::resolve`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HotplugLimits {
    /// Whether the machine type supports CPU and memory hotplug at all.
    pub supported: bool,
    /// `maxcpus`: at least the boot vCPUs; equal to them = no CPU hotplug.
    pub max_vcpus: u32,
    /// Memory hotplug room, or None when memory cannot be hot-plugged.
    pub memory: Option<MemoryHotplug>,
}

impl HotplugLimits {
    /// The ceilings for a VM booting with `vcpus` and `memory_mib`: `max_vcpus` below `vcpus`
    /// counts as `vcpus`; memory hotplug needs `slots > 0` and `max_memory_mib > memory_mib`;
    /// microvm supports neither.
    pub fn resolve(
        machine_type: &str,
        vcpus: u32,
        memory_mib: u32,
        max_vcpus: u32,
        max_memory_mib: u32,
        slots: u32,
    ) -> Self {
        if machine_type == "microvm" {
            return Self {
                supported: false,
                max_vcpus: vcpus,
                memory: None,
            };
        }
        Self {
            supported: true,
            max_vcpus: max_vcpus.max(vcpus),
            memory: (slots > 0 && max_memory_mib > memory_mib).then_some(MemoryHotplug {
                slots,
                max_mib: max_memory_mib,
            }),
        }
    }
}

/// How the VM comes up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// Boots the kernel; guest RAM is a shared memfd.
    Cold,
    /// Boots a VM template (see [`super::template`]): guest RAM is the shared file `ram`, so
    /// the file holds it when the VM is saved. The devices clones get hot-plugged (vsock,
    /// virtio-fs, NICs) are left out, and PCIe root ports wait for them.
    Template {
        /// The template's RAM file.
        ram: PathBuf,
    },
    /// Restores a clone of a template: guest RAM is `ram` (this VM's own copy of the
    /// template's RAM, shared with its vhost-user daemons), the devices' backends (chardevs,
    /// netdevs) are on the command line, the devices themselves are plugged after the
    /// incoming migration ([`super::clone_args::hotplugged`]), and QEMU waits for it
    /// (`-incoming defer`).
    Restore {
        /// This VM's copy of the template's RAM.
        ram: PathBuf,
    },
}

/// Every decision the command line depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuPlan {
    /// Shown in `ps` and QEMU's thread names.
    pub name: String,
    /// "q35", "pc", "microvm".
    pub machine_type: String,
    /// `-bios` image, if any.
    pub firmware: Option<PathBuf>,
    /// The accelerator.
    pub accelerator: Accelerator,
    /// TCG's translation cache size in MiB (`tb-size`); None: QEMU's default.
    pub tcg_tb_size_mib: Option<u32>,
    /// The host's TSC rate in kHz, told to a TCG guest (`tsc_early_khz=`, see
    /// [`crate::tsc`]); None: the guest measures it itself.
    pub tsc_khz: Option<u32>,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// CPU and memory hotplug ceilings.
    pub hotplug: HotplugLimits,
    /// Kernel image.
    pub kernel: PathBuf,
    /// Initrd.
    pub initrd: PathBuf,
    /// Extra kernel parameters, after [`DEFAULT_KERNEL_PARAMS`].
    pub kernel_params: String,
    /// The QMP socket QEMU listens on.
    pub qmp_socket: PathBuf,
    /// The vsock device.
    pub vsock: VsockPlan,
    /// The virtio-fs device, if any.
    pub shared_fs: Option<FsPlan>,
    /// Network devices, in order (`net0`, `net1`, ...).
    pub net: Vec<NetPlan>,
    /// Cold boot, template, or clone.
    pub boot: Boot,
}

/// Doubles commas, QEMU's escape for values inside `key=value,...` option strings.
pub fn escape(value: &str) -> String {
    value.replace(',', ",,")
}

fn esc_path(p: &Path) -> String {
    escape(&p.display().to_string())
}

/// The full kernel command line: defaults, then the plan's extra parameters.
pub fn kernel_cmdline(extra: &str) -> String {
    let extra = extra.trim();
    if extra.is_empty() {
        DEFAULT_KERNEL_PARAMS.to_owned()
    } else {
        format!("{DEFAULT_KERNEL_PARAMS} {extra}")
    }
}

/// The plan's own kernel parameters, then the configured extra ones (which may override).
fn guest_params(plan: &QemuPlan) -> String {
    match (plan.accelerator, plan.tsc_khz) {
        (Accelerator::Tcg, Some(khz)) => format!("tsc_early_khz={khz} {}", plan.kernel_params),
        _ => plan.kernel_params.clone(),
    }
}

/// Builds QEMU's arguments (without the binary) for `plan`.
pub fn build(plan: &QemuPlan) -> Vec<String> {
    let microvm = plan.machine_type == "microvm";
    let mut a: Vec<String> = Vec::with_capacity(48);
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| (*s).to_owned()));

    push(&["-name", &escape(&plan.name)]);
    push(&["-M", &format!("{},memory-backend=mem", plan.machine_type)]);
    if let Some(fw) = &plan.firmware {
        push(&["-bios", &fw.display().to_string()]);
    }
    match plan.accelerator {
        Accelerator::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        Accelerator::Tcg => match plan.tcg_tb_size_mib {
            Some(mib) => push(&["-accel", &format!("tcg,tb-size={mib}")]),
            None => push(&["-accel", "tcg"]),
        },
    }
    let mem = format!("{}M", plan.memory_mib);
    let m = match plan.hotplug.memory {
        Some(h) => format!("{mem},slots={},maxmem={}M", h.slots, h.max_mib),
        None => mem.clone(),
    };
    let smp = if plan.hotplug.supported {
        format!("{},maxcpus={}", plan.vcpus, plan.hotplug.max_vcpus)
    } else {
        plan.vcpus.to_string()
    };
    let backend = match &plan.boot {
        Boot::Cold => format!("memory-backend-memfd,id=mem,size={mem},share=on"),
        Boot::Template { ram } | Boot::Restore { ram } => format!(
            "memory-backend-file,id=mem,size={mem},share=on,mem-path={}",
            esc_path(ram)
        ),
    };
    push(&["-object", &backend, "-m", &m, "-smp", &smp]);
    push(&[
        "-kernel",
        &plan.kernel.display().to_string(),
        "-initrd",
        &plan.initrd.display().to_string(),
        "-append",
        &kernel_cmdline(&guest_params(plan)),
    ]);
    push(&[
        "-display",
        "none",
        "-nodefaults",
        "-no-user-config",
        // The console goes to QEMU's stdout, drained into a size-capped log (see console.rs).
        "-serial",
        "stdio",
        "-no-reboot",
        "-qmp",
        &format!("unix:{},server=on,wait=off", esc_path(&plan.qmp_socket)),
    ]);
    let (backends, devices) = match plan.boot {
        Boot::Cold => (true, true),
        Boot::Template { .. } => (false, false),
        Boot::Restore { .. } => (true, false),
    };
    if !matches!(plan.boot, Boot::Cold) {
        let machine = super::clone_args::machine_args();
        push(&machine.iter().map(String::as_str).collect::<Vec<_>>());
    }
    match &plan.vsock {
        VsockPlan::VhostKernel { cid } if devices => {
            let dev = if microvm {
                "vhost-vsock-device"
            } else {
                "vhost-vsock-pci"
            };
            push(&["-device", &format!("{dev},guest-cid={cid}")]);
        }
        VsockPlan::VhostKernel { .. } => {}
        VsockPlan::VhostUser { socket } => {
            if backends {
                push(&[
                    "-chardev",
                    &format!("socket,id=vsock0,path={}", esc_path(socket)),
                ]);
            }
            if devices {
                let dev = if microvm {
                    "vhost-user-vsock-device"
                } else {
                    "vhost-user-vsock-pci"
                };
                push(&["-device", &format!("{dev},chardev=vsock0")]);
            }
        }
    }
    if let Some(fs) = plan.shared_fs.as_ref().filter(|_| backends) {
        push(&[
            "-chardev",
            &format!("socket,id=fs0,path={}", esc_path(&fs.socket)),
        ]);
        if devices {
            let dev = if microvm {
                "vhost-user-fs-device"
            } else {
                "vhost-user-fs-pci"
            };
            push(&[
                "-device",
                &format!("{dev},chardev=fs0,tag={}", escape(&fs.tag)),
            ]);
        }
    }
    for (i, n) in plan.net.iter().enumerate().filter(|_| backends) {
        let (netdev, device) = net_args(i, n, microvm);
        push(&["-netdev", &netdev]);
        if devices {
            push(&["-device", &device]);
        }
    }
    if matches!(plan.boot, Boot::Restore { .. }) {
        // Paused after the stream is read, until the clone's devices are plugged.
        push(&["-S", "-incoming", "defer"]);
    }
    a
}

/// The `-netdev` and `-device` values of network device `index`.
///
/// - `fd=N`: the tap is opened by the caller (in the pod's network namespace, which QEMU never
///   enters) and inherited by QEMU under its own descriptor number.
/// - `vhost=on,vhostfd=M` only with an inherited `/dev/vhost-net` descriptor: the packets then
///   move in the host kernel instead of QEMU's main loop.
/// - `host_mtu` makes the guest driver use the pod interface's MTU (`VIRTIO_NET_F_MTU`).
/// - `romfile=` (empty): no iPXE option ROM; the guest boots by `-kernel`, and loading the ROM
///   costs boot time and fails where the ROM files are not installed.
pub(super) fn net_args(index: usize, n: &NetPlan, microvm: bool) -> (String, String) {
    let id = format!("net{index}");
    let mut netdev = format!("tap,id={id},fd={}", n.tap_fd);
    if let Some(vfd) = n.vhost_fd {
        netdev.push_str(&format!(",vhost=on,vhostfd={vfd}"));
    }
    let mut device = if microvm {
        format!("virtio-net-device,netdev={id},mac={}", escape(&n.mac))
    } else {
        format!("virtio-net-pci,netdev={id},mac={},romfile=", escape(&n.mac))
    };
    if n.mtu > 0 {
        device.push_str(&format!(",host_mtu={}", n.mtu));
    }
    (netdev, device)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    const CMDLINE: &str = "console=ttyS0 quiet panic=-1 cryptomgr.notests noreplace-smp \
                           hpet=disable noapictimer tsc=reliable no_timer_check \
                           memhp_default_state=online swiotlb=noforce agent.log=debug";

    pub(crate) fn plan() -> QemuPlan {
        QemuPlan {
            name: "isola-sb1".into(),
            machine_type: "q35".into(),
            firmware: Some("/usr/share/qemu/qboot.rom".into()),
            accelerator: Accelerator::Tcg,
            tcg_tb_size_mib: None,
            tsc_khz: None,
            vcpus: 1,
            memory_mib: 512,
            hotplug: HotplugLimits::resolve("q35", 1, 512, 2, 2048, 8),
            kernel: "/k/vmlinuz".into(),
            initrd: "/k/initrd.img".into(),
            kernel_params: "agent.log=debug".into(),
            qmp_socket: "/run/sb1/qmp.sock".into(),
            vsock: VsockPlan::VhostUser {
                socket: "/run/sb1/vhost-vsock.sock".into(),
            },
            shared_fs: Some(FsPlan {
                socket: "/run/sb1/virtiofs.sock".into(),
                tag: "isola".into(),
            }),
            net: Vec::new(),
            boot: Boot::Cold,
        }
    }

    /// The arguments every plan() variant shares after the accelerator.
    fn common_tail() -> Vec<&'static str> {
        let mut v = vec![
            "-object",
            "memory-backend-memfd,id=mem,size=512M,share=on",
            "-m",
            "512M,slots=8,maxmem=2048M",
            "-smp",
            "1,maxcpus=2",
        ];
        v.extend(common_rest());
        v
    }

    /// The arguments every plan() variant shares after `-smp`.
    fn common_rest() -> Vec<&'static str> {
        vec![
            "-kernel",
            "/k/vmlinuz",
            "-initrd",
            "/k/initrd.img",
            "-append",
            CMDLINE,
            "-display",
            "none",
            "-nodefaults",
            "-no-user-config",
            "-serial",
            "stdio",
            "-no-reboot",
            "-qmp",
            "unix:/run/sb1/qmp.sock,server=on,wait=off",
        ]
    }

    #[test]
    fn default_params_constant_is_used() {
        assert!(CMDLINE.starts_with(DEFAULT_KERNEL_PARAMS));
        assert_eq!(kernel_cmdline("  "), DEFAULT_KERNEL_PARAMS);
    }

    #[test]
    fn a_tcg_guest_is_told_the_tsc_rate_before_the_configured_params() {
        let mut p = plan();
        p.tsc_khz = Some(2_200_000);
        let a = build(&p);
        let i = a.iter().position(|x| x == "-append").unwrap();
        assert_eq!(
            a[i + 1],
            CMDLINE.replace("agent.log=debug", "tsc_early_khz=2200000 agent.log=debug")
        );
        // KVM guests use kvmclock: never the hint.
        p.accelerator = Accelerator::Kvm;
        let a = build(&p);
        assert!(!a.iter().any(|x| x.contains("tsc_early_khz")), "{a:?}");
    }

    #[test]
    fn the_tcg_cache_size_goes_to_tcg_only() {
        let mut p = plan();
        p.tcg_tb_size_mib = Some(32);
        let a = build(&p);
        let i = a.iter().position(|x| x == "-accel").unwrap();
        assert_eq!(a[i + 1], "tcg,tb-size=32");
        p.accelerator = Accelerator::Kvm;
        let a = build(&p);
        let i = a.iter().position(|x| x == "-accel").unwrap();
        assert_eq!(a[i + 1], "kvm", "KVM has no translation cache");
        assert!(!a.iter().any(|x| x.contains("tb-size")));
    }

    #[test]
    fn golden_tcg_vhost_user_vsock_virtiofs() {
        let mut want = vec![
            "-name",
            "isola-sb1",
            "-M",
            "q35,memory-backend=mem",
            "-bios",
            "/usr/share/qemu/qboot.rom",
            "-accel",
            "tcg",
        ];
        want.extend(common_tail());
        want.extend([
            "-chardev",
            "socket,id=vsock0,path=/run/sb1/vhost-vsock.sock",
            "-device",
            "vhost-user-vsock-pci,chardev=vsock0",
            "-chardev",
            "socket,id=fs0,path=/run/sb1/virtiofs.sock",
            "-device",
            "vhost-user-fs-pci,chardev=fs0,tag=isola",
        ]);
        assert_eq!(build(&plan()), want);
    }

    #[test]
    fn golden_kvm_kernel_vsock() {
        let p = QemuPlan {
            accelerator: Accelerator::Kvm,
            firmware: None,
            vsock: VsockPlan::VhostKernel { cid: 1234 },
            ..plan()
        };
        let mut want = vec![
            "-name",
            "isola-sb1",
            "-M",
            "q35,memory-backend=mem",
            "-accel",
            "kvm",
            "-cpu",
            "host",
        ];
        want.extend(common_tail());
        want.extend([
            "-device",
            "vhost-vsock-pci,guest-cid=1234",
            "-chardev",
            "socket,id=fs0,path=/run/sb1/virtiofs.sock",
            "-device",
            "vhost-user-fs-pci,chardev=fs0,tag=isola",
        ]);
        assert_eq!(build(&p), want);
    }

    #[test]
    fn golden_no_shared_fs() {
        let p = QemuPlan {
            shared_fs: None,
            ..plan()
        };
        let mut want = vec![
            "-name",
            "isola-sb1",
            "-M",
            "q35,memory-backend=mem",
            "-bios",
            "/usr/share/qemu/qboot.rom",
            "-accel",
            "tcg",
        ];
        want.extend(common_tail());
        want.extend([
            "-chardev",
            "socket,id=vsock0,path=/run/sb1/vhost-vsock.sock",
            "-device",
            "vhost-user-vsock-pci,chardev=vsock0",
        ]);
        assert_eq!(build(&p), want);
    }

    #[test]
    fn golden_microvm() {
        let p = QemuPlan {
            machine_type: "microvm".into(),
            firmware: None,
            hotplug: HotplugLimits::resolve("microvm", 1, 512, 2, 2048, 8),
            ..plan()
        };
        let mut want = vec![
            "-name",
            "isola-sb1",
            "-M",
            "microvm,memory-backend=mem",
            "-accel",
            "tcg",
            // microvm: no hotplug, so no maxcpus/slots/maxmem.
            "-object",
            "memory-backend-memfd,id=mem,size=512M,share=on",
            "-m",
            "512M",
            "-smp",
            "1",
        ];
        want.extend(common_rest());
        want.extend([
            "-chardev",
            "socket,id=vsock0,path=/run/sb1/vhost-vsock.sock",
            "-device",
            "vhost-user-vsock-device,chardev=vsock0",
            "-chardev",
            "socket,id=fs0,path=/run/sb1/virtiofs.sock",
            "-device",
            "vhost-user-fs-device,chardev=fs0,tag=isola",
        ]);
        assert_eq!(build(&p), want);

        let kernel_vsock = QemuPlan {
            vsock: VsockPlan::VhostKernel { cid: 7 },
            shared_fs: None,
            ..p
        };
        assert_eq!(
            build(&kernel_vsock).last().unwrap(),
            "vhost-vsock-device,guest-cid=7"
        );
    }

    #[test]
    fn golden_network_devices() {
        let net = vec![
            NetPlan {
                mac: "02:42:0a:58:00:07".into(),
                mtu: 1450,
                tap_fd: 17,
                vhost_fd: None,
            },
            NetPlan {
                mac: "02:42:0a:58:00:08".into(),
                mtu: 0,
                tap_fd: 18,
                vhost_fd: Some(19),
            },
        ];
        let p = QemuPlan {
            net: net.clone(),
            ..plan()
        };
        let a = build(&p);
        // After every other device, in order.
        assert_eq!(
            a[a.len() - 8..],
            [
                "-netdev",
                "tap,id=net0,fd=17",
                "-device",
                "virtio-net-pci,netdev=net0,mac=02:42:0a:58:00:07,romfile=,host_mtu=1450",
                "-netdev",
                "tap,id=net1,fd=18,vhost=on,vhostfd=19",
                "-device",
                "virtio-net-pci,netdev=net1,mac=02:42:0a:58:00:08,romfile=",
            ]
        );
        assert_eq!(&a[..a.len() - 8], build(&plan()).as_slice());

        let micro = QemuPlan {
            machine_type: "microvm".into(),
            net: net[..1].to_vec(),
            ..plan()
        };
        assert_eq!(
            build(&micro).last().unwrap(),
            "virtio-net-device,netdev=net0,mac=02:42:0a:58:00:07,host_mtu=1450"
        );
        // No network: no NIC at all (-nodefaults drops QEMU's default one).
        assert!(!build(&plan()).iter().any(|x| x.contains("net")));
    }

    /// The `-m` and `-smp` values of `plan`.
    fn mem_and_smp(p: &QemuPlan) -> (String, String) {
        let a = build(p);
        let after = |flag: &str| {
            let i = a.iter().position(|x| x == flag).unwrap();
            a[i + 1].clone()
        };
        (after("-m"), after("-smp"))
    }

    #[test]
    fn golden_hotplug_ceilings() {
        let with = |h: HotplugLimits| {
            mem_and_smp(&QemuPlan {
                vcpus: 2,
                memory_mib: 1024,
                hotplug: h,
                ..plan()
            })
        };
        // Ceilings above the boot size.
        assert_eq!(
            with(HotplugLimits::resolve("q35", 2, 1024, 4, 8192, 8)),
            ("1024M,slots=8,maxmem=8192M".into(), "2,maxcpus=4".into())
        );
        // Ceilings below the boot size are raised to it; no memory room = plain -m.
        assert_eq!(
            with(HotplugLimits::resolve("q35", 2, 1024, 1, 512, 8)),
            ("1024M".into(), "2,maxcpus=2".into())
        );
        // No slots = no memory hotplug, whatever maxmem says.
        assert_eq!(
            with(HotplugLimits::resolve("q35", 2, 1024, 2, 4096, 0)),
            ("1024M".into(), "2,maxcpus=2".into())
        );
        // The pc machine type supports hotplug as q35 does.
        assert_eq!(
            HotplugLimits::resolve("pc", 1, 512, 3, 1024, 2),
            HotplugLimits {
                supported: true,
                max_vcpus: 3,
                memory: Some(MemoryHotplug {
                    slots: 2,
                    max_mib: 1024
                }),
            }
        );
        assert!(!HotplugLimits::resolve("microvm", 1, 512, 3, 1024, 2).supported);
    }

    #[test]
    fn commas_in_option_values_are_escaped() {
        let p = QemuPlan {
            name: "a,b".into(),
            qmp_socket: "/run/a,b/qmp.sock".into(),
            vsock: VsockPlan::VhostUser {
                socket: "/run/a,b/v.sock".into(),
            },
            ..plan()
        };
        let args = build(&p);
        assert_eq!(args[1], "a,,b");
        assert!(args.contains(&"unix:/run/a,,b/qmp.sock,server=on,wait=off".to_owned()));
        assert!(args.contains(&"socket,id=vsock0,path=/run/a,,b/v.sock".to_owned()));
    }
}
