//! Unit tests of the Cloud Hypervisor backend that need no VMM.

use std::path::Path;
use std::time::Instant;

use super::*;
use crate::{AcceleratorChoice, SharedFsConfig};

fn cfg(dir: &Path) -> VmConfig {
    VmConfig {
        id: "unit".into(),
        kind: crate::HypervisorKind::CloudHypervisor,
        state_dir: dir.join("state"),
        kernel: dir.join("missing-kernel"),
        initrd: dir.join("missing-initrd"),
        vcpus: 1,
        memory_mib: 512,
        max_vcpus: 4,
        max_memory_mib: 2100,
        ..VmConfig::default()
    }
}

#[test]
fn plan_and_ceilings_follow_the_config() {
    let dir = Path::new("/run/isola/vm/p");
    let mut c = cfg(Path::new("/t"));
    c.state_dir = dir.into();
    c.kernel_params = " agent.log=debug ".into();
    c.shared_fs = Some(SharedFsConfig {
        virtiofsd_path: "/v".into(),
        shared_dir: "/s".into(),
        cache: "auto".into(),
        sandbox: "none".into(),
        tag: "isolafs".into(),
    });
    let p = plan(&c, &ClhPaths::new(dir));
    assert_eq!(
        p.cmdline,
        format!("{DEFAULT_KERNEL_PARAMS} agent.log=debug")
    );
    // 2100 - 512 = 1588 MiB of room: whole 128 MiB blocks only.
    assert_eq!(p.hotplug_mib, 1536);
    assert_eq!(p.max_vcpus, 4);
    assert_eq!(p.fs, Some((dir.join("virtiofs.sock"), "isolafs".into())));
    assert_eq!(p.vsock_socket, dir.join("vsock.sock"));
    let vm = ClhHypervisor::new(c.clone());
    assert_eq!(
        vm.ceilings,
        Ceilings {
            max_vcpus: 4,
            max_memory_mib: 2048,
            memory_slots: crate::DEFAULT_MEMORY_SLOTS
        }
    );
    c.memory_slots = 0;
    assert_eq!(plan(&c, &ClhPaths::new(dir)).hotplug_mib, 0);
    assert_eq!(ClhHypervisor::new(c).ceilings.memory_slots, 0);
}

#[test]
fn command_line() {
    let p = ClhPaths::new(Path::new("/r/v"));
    assert_eq!(
        vmm_args(&p, 7, false),
        [
            "--api-socket",
            "path=/r/v/api.sock",
            "--event-monitor",
            "fd=7"
        ]
    );
    assert_eq!(
        vmm_args(&p, 7, true).last().map(String::as_str),
        Some("-vv")
    );
    let long = format!("/run/{}", "x".repeat(90));
    let err = ClhPaths::new(Path::new(&long))
        .check_socket_lengths()
        .unwrap_err();
    assert!(err.to_string().contains("shorter state_dir"), "{err}");
}

#[tokio::test]
async fn lifecycle_errors_before_start() {
    let dir = tempfile::tempdir().unwrap();
    let vm = ClhHypervisor::new(cfg(dir.path()));
    assert!(matches!(
        vm.vm_info().await,
        Err(HypervisorError::NotStarted(_))
    ));
    let endpoint = AgentEndpoint::HybridVsock {
        path: dir.path().join("state/vsock.sock"),
        port: 1024,
    };
    crate::lifecycle::assert_unstarted_contract(&vm, endpoint).await;
}

#[tokio::test]
async fn tcg_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let vm = ClhHypervisor::new(VmConfig {
        accelerator: AcceleratorChoice::Tcg,
        ..cfg(dir.path())
    });
    let err = vm.start().await.unwrap_err();
    assert!(matches!(err, HypervisorError::InvalidConfig(_)), "{err:?}");
    assert!(err.to_string().contains("no software emulation"), "{err}");
    assert!(!dir.path().join("state").exists());
    assert!(matches!(
        vm.wait().await,
        Err(HypervisorError::NotRunning(_))
    ));
    assert!(matches!(
        vm.start().await,
        Err(HypervisorError::AlreadyStarted(_))
    ));
}

#[tokio::test]
async fn kernel_vsock_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let vm = ClhHypervisor::new(VmConfig {
        vsock: crate::VsockChoice::VhostKernel,
        ..cfg(dir.path())
    });
    // On a host without hardware KVM the accelerator check comes first.
    match vm.start().await.unwrap_err() {
        HypervisorError::InvalidConfig(m) => assert!(m.contains("hybrid vsock"), "{m}"),
        HypervisorError::AcceleratorUnavailable { .. } => {
            let e = vm.validate().await.unwrap_err();
            assert!(e.to_string().contains("hybrid vsock"), "{e}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(!dir.path().join("state").exists());
}

/// Hosts without hardware KVM (like isola's CI) refuse up front with the reason; hosts with
/// it pass the check and stop at the next one (the missing kernel). Either way, nothing is
/// left behind and no VMM ran.
#[tokio::test]
async fn start_checks_hardware_kvm_first() {
    let facts = crate::accel::probe_host().await;
    let problem = crate::accel::cloud_hypervisor_problem(&facts.cpuinfo, facts.kvm_openable);
    let dir = tempfile::tempdir().unwrap();
    let vm = ClhHypervisor::new(cfg(dir.path()));
    let t0 = Instant::now();
    let err = vm.start().await.unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(2), "refused up front");
    match (&err, problem) {
        (HypervisorError::AcceleratorUnavailable { reason, .. }, Some(problem)) => {
            assert_eq!(reason, &problem);
            assert!(vm.accelerator().is_none());
        }
        (HypervisorError::InvalidConfig(m), None) => {
            assert!(m.contains("missing-kernel"), "{m}");
            assert_eq!(vm.accelerator().map(|a| a.0), Some(Accelerator::Kvm));
        }
        (other, problem) => panic!("unexpected {other:?} (host problem: {problem:?})"),
    }
    assert!(!dir.path().join("state").exists());
    assert!(vm.pids().is_empty());
}
