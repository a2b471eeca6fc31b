//! Real-VM tests of the Cloud Hypervisor backend: boot, agent reachable over its hybrid vsock,
//! hotplug, pause/resume, a killed VMM, and nothing left after stop.
//!
//! Cloud Hypervisor has no software emulation, so these need hardware KVM (vmx/svm). They are
//! `#[ignore]`d with that reason; `make test` runs them (`--run-ignored only`) on hosts that
//! have it and prints why it skips them elsewhere. What runs everywhere: the API contract
//! tests (clh_contract.rs) and the backend's unit tests.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use isola_hypervisor::clh::config::VmState;
use isola_hypervisor::clh::ClhHypervisor;
use isola_hypervisor::{Accelerator, AgentEndpoint, Hypervisor, HypervisorError, HypervisorKind};
use support::{assert_cleaned_up, comm, config, init_tracing};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn clh_config(dir: &std::path::Path, id: &str) -> isola_hypervisor::VmConfig {
    let mut cfg = config(dir, id);
    cfg.kind = HypervisorKind::CloudHypervisor;
    cfg.cloud_hypervisor_path = std::env::var_os("ISOLA_TEST_CLOUD_HYPERVISOR")
        .map(Into::into)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../shared/tools/cloud-hypervisor/cloud-hypervisor")
        });
    cfg.max_vcpus = 2;
    cfg.max_memory_mib = 2048;
    cfg
}

/// Connects to the agent's port over the hybrid vsock socket, retrying while the guest boots.
async fn agent_answers(vm: &ClhHypervisor, within: Duration) {
    let AgentEndpoint::HybridVsock { path, port } = vm.agent_endpoint() else {
        panic!("Cloud Hypervisor's vsock is hybrid");
    };
    let deadline = Instant::now() + within;
    loop {
        if let Ok(mut s) = tokio::net::UnixStream::connect(&path).await {
            s.write_all(format!("CONNECT {port}\n").as_bytes())
                .await
                .unwrap();
            let mut line = String::new();
            let mut r = BufReader::new(s);
            if r.read_line(&mut line).await.is_ok() && line.starts_with("OK ") {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not accept on vsock port {port}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs hardware KVM (vmx/svm): Cloud Hypervisor has no software emulation"]
async fn vm_clh_boot_agent_stop_cleans_up() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let cfg = clh_config(dir.path(), "vm-clh-start");
    let state_dir = cfg.state_dir.clone();
    let vm = ClhHypervisor::new(cfg);
    vm.start().await.expect("start");
    assert_eq!(vm.accelerator().map(|a| a.0), Some(Accelerator::Kvm));
    let comms: Vec<String> = vm.pids().iter().map(|p| comm(*p)).collect();
    assert!(
        comms[0].starts_with("cloud-hyper"),
        "VMM pid first: {comms:?}"
    );
    assert!(
        comms.iter().any(|c| c.starts_with("virtiofsd")),
        "{comms:?}"
    );
    assert_eq!(vm.vm_info().await.unwrap().state, VmState::Running);
    agent_answers(&vm, Duration::from_secs(30)).await;
    let console = std::fs::read_to_string(vm.console_log()).unwrap_or_default();
    assert!(
        console.contains("Linux version"),
        "serial console captured: {console}"
    );
    vm.stop().await.expect("stop");
    assert_cleaned_up(&state_dir);
    assert_eq!(vm.wait().await.unwrap().code, Some(0));
    vm.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs hardware KVM (vmx/svm): Cloud Hypervisor has no software emulation"]
async fn vm_clh_hotplug_pause_resume() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let cfg = clh_config(dir.path(), "vm-clh-hotplug");
    let state_dir = cfg.state_dir.clone();
    let vm = ClhHypervisor::new(cfg);
    vm.start().await.expect("start");
    agent_answers(&vm, Duration::from_secs(30)).await;
    assert_eq!(vm.hotplug_vcpus(2).await.unwrap(), 2);
    assert_eq!(vm.hotplug_vcpus(2).await.unwrap(), 2, "idempotent");
    assert!(matches!(
        vm.hotplug_vcpus(3).await,
        Err(HypervisorError::HotplugLimit { .. })
    ));
    assert_eq!(vm.hotplug_memory(700).await.unwrap(), 768);
    assert!(matches!(
        vm.hotplug_memory(512).await,
        Err(HypervisorError::ShrinkUnsupported { .. })
    ));
    let info = vm.vm_info().await.unwrap();
    assert_eq!(info.config.cpus.boot_vcpus, 2);
    assert_eq!(info.memory_actual_size, Some(768 << 20));
    vm.pause().await.unwrap();
    assert_eq!(vm.vm_info().await.unwrap().state, VmState::Paused);
    vm.resume().await.unwrap();
    assert_eq!(vm.vm_info().await.unwrap().state, VmState::Running);
    vm.pause().await.unwrap();
    vm.stop().await.unwrap();
    assert_cleaned_up(&state_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs hardware KVM (vmx/svm): Cloud Hypervisor has no software emulation"]
async fn vm_clh_killed_vmm_is_noticed() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let cfg = clh_config(dir.path(), "vm-clh-kill");
    let state_dir = cfg.state_dir.clone();
    let vm = Arc::new(ClhHypervisor::new(cfg));
    vm.start().await.expect("start");
    let pid = vm.pids()[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(1), vm.wait())
        .await
        .expect("wait() noticed the SIGKILL within 1 s")
        .unwrap();
    assert_eq!(exit.signal, Some(9), "{exit:?}");
    assert!(vm.pause().await.is_err());
    vm.stop().await.expect("stop after crash");
    assert_cleaned_up(&state_dir);
}
