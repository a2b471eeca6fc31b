//! `isola check`: every host prerequisite, then a throwaway VM whose agent must answer.
//!
//! Both backends are reported: the configured one (`hypervisor.kind`) must work, the other is
//! shown for information (its problems are warnings), so an operator sees at once whether this
//! node could also serve a Cloud Hypervisor runtime handler.

use std::path::Path;
use std::time::Instant;

use isola_config::{Config, HypervisorKind, SharedFs, Vsock};
use isola_hypervisor::{accel, AcceleratorChoice};
use isola_sandbox::BootedVm;

use crate::host::{self, CgroupMode};
use crate::report::{Report, Status};

/// Runs the checks; Ok(true) when everything needed works.
pub async fn run(config: Option<&Path>, boot: bool, verbose: bool) -> anyhow::Result<bool> {
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
    if verbose {
        crate::logs::print(&cfg);
    }
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
    let qemu = h.kind == HypervisorKind::Qemu;
    r.line(
        Status::Ok,
        "hypervisor kind",
        format!("{} (hypervisor.kind)", h.kind),
    );

    let (status, text) = qemu_line(&h.path, host::version_of(&h.path).await);
    let (status, text) = for_kind((status, text), qemu, HypervisorKind::Qemu);
    r.line(status, "qemu", text);

    let choice = match h.accelerator {
        isola_config::Accelerator::Auto => AcceleratorChoice::Auto,
        isola_config::Accelerator::Kvm => AcceleratorChoice::Kvm,
        isola_config::Accelerator::Tcg => AcceleratorChoice::Tcg,
    };
    let facts = accel::probe_host().await;
    let chosen = accel::choose(choice, &facts.cpuinfo, facts.kvm_openable);
    let tcg = qemu && matches!(chosen, Ok((isola_hypervisor::Accelerator::Tcg, _)));
    let line = match chosen {
        Ok((a, reason)) => {
            let status = if a == isola_hypervisor::Accelerator::Kvm {
                Status::Ok
            } else {
                Status::Warn
            };
            (status, format!("{a:?}: {reason}"))
        }
        Err(e) => (Status::Fail, e.to_string()),
    };
    let (status, text) = for_kind(line, qemu, HypervisorKind::Qemu);
    r.line(status, "accelerator", text);

    let (status, text) = clh_binary_line(
        &h.cloud_hypervisor_path,
        host::version_of(&h.cloud_hypervisor_path).await,
    );
    let clh = !qemu;
    let (status, text) = for_kind((status, text), clh, HypervisorKind::CloudHypervisor);
    r.line(status, "cloud-hypervisor", text);
    let (status, text) = clh_host_line(accel::cloud_hypervisor_problem(
        &facts.cpuinfo,
        facts.kvm_openable,
    ));
    let (status, text) = for_kind((status, text), clh, HypervisorKind::CloudHypervisor);
    r.line(status, "clh: hardware kvm", text);

    match h.vsock.resolve() {
        _ if clh => r.line(
            Status::Ok,
            "vsock",
            "Cloud Hypervisor's own hybrid vsock (a Unix socket; no vsock daemon needed)",
        ),
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
        let line = match host::file_size(fw) {
            Ok(_) => (Status::Ok, fw.display().to_string()),
            Err(e) => (
                Status::Fail,
                format!("{e}; install qemu-system-data or set hypervisor.firmware = \"\""),
            ),
        };
        let (status, text) = for_kind(line, qemu, HypervisorKind::Qemu);
        r.line(status, "firmware", text);
    }

    if tcg {
        let khz = tokio::task::spawn_blocking(isola_hypervisor::tsc::host_tsc_khz)
            .await
            .ok()
            .flatten();
        let (status, text) = tsc_line(khz);
        r.line(status, "guest clock", text);
    }
    let ksm = |f: &str| std::fs::read_to_string(format!("/sys/kernel/mm/ksm/{f}")).ok();
    let (status, text) = ksm_line(ksm("run").as_deref(), ksm("pages_sharing").as_deref());
    r.line(status, "ksm", text);
    let (status, text) = crate::template::check_line(cfg).await;
    r.line(status, "vm templates", text);

    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    match host::cgroup_mode(&mounts) {
        CgroupMode::Unified => r.line(Status::Ok, "host cgroups", "v2 (unified)"),
        CgroupMode::Hybrid => r.line(Status::Warn, "host cgroups", "v1 + v2 hybrid (cgroup2 at /sys/fs/cgroup/unified); containers use cgroup v2 inside the guest, so this only matters for host-side accounting"),
        CgroupMode::Legacy => r.line(Status::Warn, "host cgroups", "v1 only; containers use cgroup v2 inside the guest"),
    }
}

/// How TCG guests get their clock's rate (see isola_hypervisor::tsc).
fn tsc_line(khz: Option<u32>) -> (Status, String) {
    match khz {
        Some(khz) => (
            Status::Ok,
            format!("TCG guests are told the host's TSC rate ({khz} kHz, tsc_early_khz=)"),
        ),
        None => (
            Status::Warn,
            "the host's TSC is not constant and non-stop (or not x86_64): TCG guests calibrate \
             their clock themselves, and on a busy host one may run fast and time RPCs out early"
                .into(),
        ),
    }
}

/// Kernel samepage merging: its state, and why it does not reach isola's guest RAM.
fn ksm_line(run: Option<&str>, pages_sharing: Option<&str>) -> (Status, String) {
    let why = "isola's guest RAM is a shared memfd (virtio-fs and vhost-user vsock map it), \
               which KSM never merges; pod density does not depend on it";
    match run.map(str::trim) {
        None => (Status::Ok, format!("not built into this kernel; {why}")),
        Some("1") => (
            Status::Ok,
            format!(
                "running, {} pages shared; {why}",
                pages_sharing.map(str::trim).unwrap_or("?")
            ),
        ),
        Some(_) => (Status::Ok, format!("off; {why}")),
    }
}

/// The QEMU binary's line from its `--version` (or why it could not run).
fn qemu_line(path: &Path, version: Result<String, String>) -> (Status, String) {
    match version {
        Ok(v) => match host::qemu_version(&v) {
            Some(ver) if ver >= host::MIN_QEMU => (Status::Ok, format!("{} ({v})", path.display())),
            Some(_) => (
                Status::Fail,
                format!(
                    "{v}: QEMU {}.{} or newer is needed",
                    host::MIN_QEMU.0,
                    host::MIN_QEMU.1
                ),
            ),
            None => (
                Status::Warn,
                format!("{}: unrecognised version line {v:?}", path.display()),
            ),
        },
        Err(e) => (
            Status::Fail,
            format!("{e}; install qemu-system-x86 (make setup) or set hypervisor.path"),
        ),
    }
}

/// The Cloud Hypervisor binary's line from its `--version` (or why it could not run).
fn clh_binary_line(path: &Path, version: Result<String, String>) -> (Status, String) {
    match version {
        Ok(v) => (Status::Ok, format!("{} ({v})", path.display())),
        Err(e) => (
            Status::Fail,
            format!(
                "{e}; install a Cloud Hypervisor release binary there or set \
                 hypervisor.cloud_hypervisor_path"
            ),
        ),
    }
}

/// Whether this host can run Cloud Hypervisor guests, from
/// [`accel::cloud_hypervisor_problem`].
fn clh_host_line(problem: Option<String>) -> (Status, String) {
    match problem {
        None => (
            Status::Ok,
            "the CPU exposes vmx/svm and /dev/kvm is usable: Cloud Hypervisor can run here".into(),
        ),
        Some(reason) => (Status::Fail, reason),
    }
}

/// A backend's line as the configured kind sees it: a failure of the backend `of` counts only
/// when it is the one configured (`used`); for the other it is a warning saying so.
fn for_kind(line: (Status, String), used: bool, of: HypervisorKind) -> (Status, String) {
    match line {
        (Status::Ok, text) => (Status::Ok, text),
        (status, text) if used => (status, text),
        (_, text) => (
            Status::Warn,
            format!("{text} (only matters with hypervisor.kind = \"{of}\")"),
        ),
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

#[cfg(test)]
mod tests {
    use super::*;

    const PVM: &str = "flags\t\t: fpu vme sse2 hypervisor\n";
    const VMX: &str = "flags\t\t: fpu vmx sse2\n";

    #[test]
    fn cloud_hypervisor_on_a_host_without_vmx_warns_under_qemu_and_fails_when_chosen() {
        let line = || clh_host_line(accel::cloud_hypervisor_problem(PVM, true));
        let (status, text) = for_kind(line(), false, HypervisorKind::CloudHypervisor);
        assert_eq!(status, Status::Warn);
        assert!(text.contains("no vmx/svm"), "{text}");
        assert!(
            text.ends_with("(only matters with hypervisor.kind = \"cloud-hypervisor\")"),
            "{text}"
        );
        let (status, text) = for_kind(line(), true, HypervisorKind::CloudHypervisor);
        assert_eq!(status, Status::Fail);
        assert!(text.contains("no software emulation"), "{text}");
        assert!(!text.contains("only matters"), "{text}");
        let (status, text) = clh_host_line(accel::cloud_hypervisor_problem(VMX, true));
        assert_eq!(status, Status::Ok);
        assert!(text.contains("can run here"), "{text}");
    }

    #[test]
    fn the_cloud_hypervisor_binary_is_reported_with_its_version() {
        let path = Path::new("/usr/local/bin/cloud-hypervisor");
        let (status, text) = clh_binary_line(path, Ok("cloud-hypervisor v43.0".into()));
        assert_eq!(status, Status::Ok);
        assert_eq!(
            text,
            "/usr/local/bin/cloud-hypervisor (cloud-hypervisor v43.0)"
        );
        let missing = || clh_binary_line(path, Err("cannot run /x: No such file".into()));
        let (status, text) = missing();
        assert_eq!(status, Status::Fail);
        assert!(text.contains("hypervisor.cloud_hypervisor_path"), "{text}");
        let (status, _) = for_kind(missing(), false, HypervisorKind::CloudHypervisor);
        assert_eq!(status, Status::Warn, "not needed under qemu");
    }

    #[test]
    fn the_guest_clock_and_ksm_lines() {
        let (status, text) = tsc_line(Some(2_445_404));
        assert_eq!(status, Status::Ok);
        assert!(text.contains("2445404 kHz"), "{text}");
        assert_eq!(tsc_line(None).0, Status::Warn);
        let (_, text) = ksm_line(Some("1\n"), Some("812\n"));
        assert!(text.starts_with("running, 812 pages shared;"), "{text}");
        assert!(ksm_line(Some("0\n"), None).1.starts_with("off;"));
        assert!(ksm_line(None, None).1.starts_with("not built"));
    }

    #[test]
    fn qemu_problems_only_count_when_qemu_is_chosen() {
        let path = Path::new("/usr/bin/qemu-system-x86_64");
        let ok = qemu_line(path, Ok("QEMU emulator version 7.2.19".into()));
        assert_eq!(ok.0, Status::Ok);
        let old = || qemu_line(path, Ok("QEMU emulator version 6.2.0".into()));
        assert_eq!(old().0, Status::Fail);
        assert_eq!(for_kind(old(), true, HypervisorKind::Qemu).0, Status::Fail);
        let (status, text) = for_kind(old(), false, HypervisorKind::Qemu);
        assert_eq!(status, Status::Warn);
        assert!(text.contains("hypervisor.kind = \"qemu\""), "{text}");
        // A warning stays a warning either way.
        let odd = || qemu_line(path, Ok("something".into()));
        assert_eq!(for_kind(odd(), true, HypervisorKind::Qemu).0, Status::Warn);
    }
}
