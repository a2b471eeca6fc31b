//! `isola check`: every host prerequisite, then a throwaway VM whose agent must answer.

use std::path::Path;
use std::time::Instant;

use isola_config::{Config, SharedFs, Vsock};
use isola_hypervisor::{accel, AcceleratorChoice};
use isola_sandbox::BootedVm;

use crate::host::{self, CgroupMode};
use crate::report::{Report, Status};

/// Runs the checks; Ok(true) when everything needed works.
pub async fn run(config: Option<&Path>, boot: bool) -> anyhow::Result<bool> {
    let mut r = Report::default();
    let (cfg, path) = match crate::load_config(config) {
        Ok(c) => c,
        Err(e) => {
            r.line(Status::Fail, "configuration", format!("{e:#}"));
            return Ok(false);
        }
    };
    r.line(Status::Ok, "configuration", path.display().to_string());
    host_checks(&cfg, &mut r).await;
    if r.failed() {
        println!("host checks failed: fix the lines marked FAIL above");
        return Ok(false);
    }
    if boot {
        boot_check(&cfg, &mut r).await;
    }
    Ok(!r.failed())
}

async fn host_checks(cfg: &Config, r: &mut Report) {
    let h = &cfg.hypervisor;

    match host::version_of(&h.path).await {
        Ok(v) => match host::qemu_version(&v) {
            Some(ver) if ver >= host::MIN_QEMU => {
                r.line(Status::Ok, "qemu", format!("{} ({v})", h.path.display()))
            }
            Some(_) => r.line(
                Status::Fail,
                "qemu",
                format!(
                    "{v}: QEMU {}.{} or newer is needed",
                    host::MIN_QEMU.0,
                    host::MIN_QEMU.1
                ),
            ),
            None => r.line(
                Status::Warn,
                "qemu",
                format!("{}: unrecognised version line {v:?}", h.path.display()),
            ),
        },
        Err(e) => r.line(
            Status::Fail,
            "qemu",
            format!("{e}; install qemu-system-x86 (make setup) or set hypervisor.path"),
        ),
    }

    let choice = match h.accelerator {
        isola_config::Accelerator::Auto => AcceleratorChoice::Auto,
        isola_config::Accelerator::Kvm => AcceleratorChoice::Kvm,
        isola_config::Accelerator::Tcg => AcceleratorChoice::Tcg,
    };
    let facts = accel::probe_host().await;
    match accel::choose(choice, &facts.cpuinfo, facts.kvm_openable) {
        Ok((a, reason)) => {
            let status = if a == isola_hypervisor::Accelerator::Kvm {
                Status::Ok
            } else {
                Status::Warn
            };
            r.line(status, "accelerator", format!("{a:?}: {reason}"));
        }
        Err(e) => r.line(Status::Fail, "accelerator", e.to_string()),
    }

    match h.vsock.resolve() {
        Vsock::Vhost => r.line(Status::Ok, "vsock", "kernel vhost-vsock (/dev/vhost-vsock)"),
        _ => match host::version_of(&h.vhost_user_vsock_path).await {
            Ok(v) => r.line(
                Status::Ok,
                "vsock",
                format!(
                    "vhost-user via {} ({v}); no /dev/vhost-vsock on this host",
                    h.vhost_user_vsock_path.display()
                ),
            ),
            Err(e) => r.line(
                Status::Fail,
                "vsock",
                format!(
                    "no /dev/vhost-vsock and {e}; run make setup (installs vhost-device-vsock)"
                ),
            ),
        },
    }

    match h.shared_fs {
        SharedFs::VirtioFs => match host::version_of(&h.virtiofsd_path).await {
            Ok(v) => r.line(
                Status::Ok,
                "virtiofsd",
                format!("{} ({v})", h.virtiofsd_path.display()),
            ),
            Err(e) => r.line(
                Status::Fail,
                "virtiofsd",
                format!("{e}; run make setup (installs virtiofsd)"),
            ),
        },
        SharedFs::None => r.line(
            Status::Warn,
            "virtiofsd",
            "shared_fs = \"none\": containers cannot get their rootfs from the host",
        ),
    }

    for (what, p) in [("kernel", &h.kernel), ("initrd", &h.initrd)] {
        match host::file_size(p) {
            Ok(n) => r.line(
                Status::Ok,
                what,
                format!("{} ({:.1} MiB)", p.display(), n as f64 / 1048576.0),
            ),
            Err(e) => r.line(
                Status::Fail,
                what,
                format!("{e}; run make guest && make install, or set hypervisor.{what}"),
            ),
        }
    }
    if h.kernel.is_file() {
        match crate::kernel::inspect(&h.kernel) {
            Ok(info) => {
                let (ok, text) = crate::kernel::describe(&info);
                let status = if !ok {
                    Status::Fail
                } else if info.kind() == crate::kernel::Kind::Tailored {
                    Status::Ok
                } else {
                    Status::Warn
                };
                r.line(status, "guest kernel", text);
            }
            Err(e) => r.line(
                Status::Fail,
                "guest kernel",
                format!("reading {}: {e}", h.kernel.display()),
            ),
        }
    }
    if let Some(fw) = h.firmware_path() {
        match host::file_size(fw) {
            Ok(_) => r.line(Status::Ok, "firmware", fw.display().to_string()),
            Err(e) => r.line(
                Status::Fail,
                "firmware",
                format!("{e}; install qemu-system-data or set hypervisor.firmware = \"\""),
            ),
        }
    }

    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    match host::cgroup_mode(&mounts) {
        CgroupMode::Unified => r.line(Status::Ok, "host cgroups", "v2 (unified)"),
        CgroupMode::Hybrid => r.line(Status::Warn, "host cgroups", "v1 + v2 hybrid (cgroup2 at /sys/fs/cgroup/unified); containers use cgroup v2 inside the guest, so this only matters for host-side accounting"),
        CgroupMode::Legacy => r.line(Status::Warn, "host cgroups", "v1 only; containers use cgroup v2 inside the guest"),
    }
}

async fn boot_check(cfg: &Config, r: &mut Report) {
    let id = crate::throwaway_id("check", 0);
    let started = Instant::now();
    let vm = match BootedVm::boot(cfg, &id).await {
        Ok(vm) => vm,
        Err(e) => {
            r.timed(
                Status::Fail,
                "boot",
                Some(started.elapsed()),
                format!("{e}"),
            );
            return;
        }
    };
    if let Some((a, _)) = vm.vm.accelerator() {
        r.timed(
            Status::Ok,
            "boot: VMM up",
            Some(vm.timings.vmm_ready),
            format!(
                "{a:?}, {} vCPU, {} MiB",
                cfg.hypervisor.vcpus, cfg.hypervisor.memory_mib
            ),
        );
    }
    match vm.agent.version(std::time::Duration::from_secs(5)).await {
        Ok(v) => r.timed(
            Status::Ok,
            "boot: agent ready",
            Some(vm.timings.agent_ready),
            format!(
                "Check answered by isola-agent {} (protocol {}), guest kernel {}",
                v.agent_version, v.protocol_version, v.kernel_release
            ),
        ),
        Err(e) => r.timed(
            Status::Fail,
            "boot: agent ready",
            Some(vm.timings.agent_ready),
            e.to_string(),
        ),
    }
    let stop_started = Instant::now();
    let pids = vm.vm.pids();
    match vm.stop().await {
        Ok(()) => {
            let left: Vec<u32> = pids
                .into_iter()
                .filter(|p| Path::new(&format!("/proc/{p}")).exists())
                .collect();
            if left.is_empty() && !vm.paths.vm_dir.exists() {
                r.timed(
                    Status::Ok,
                    "boot: stopped",
                    Some(stop_started.elapsed()),
                    "no process or state left",
                );
            } else {
                r.timed(
                    Status::Fail,
                    "boot: stopped",
                    Some(stop_started.elapsed()),
                    format!(
                        "left behind: pids {left:?}, state dir exists: {}",
                        vm.paths.vm_dir.exists()
                    ),
                );
            }
        }
        Err(e) => r.timed(
            Status::Fail,
            "boot: stopped",
            Some(stop_started.elapsed()),
            e.to_string(),
        ),
    }
}
