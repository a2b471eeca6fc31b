//! A real pod VM (TCG here) booted from the configuration, with its agent answering.

use std::time::{Duration, Instant};

use isola_agent_proto::agent::GuestDetailsRequest;
use isola_sandbox::BootedVm;
use isola_tests::{comm, processes_mentioning, TestEnv};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn assert_nothing_left(env: &TestEnv, id: &str) {
    let state = env.dir.path().to_string_lossy().to_string();
    let left = processes_mentioning(&state);
    assert!(left.is_empty(), "processes left behind: {left:?}");
    let vm_dir = env.dir.path().join("vm").join(id);
    assert!(
        !vm_dir.exists(),
        "VM state directory left: {}",
        vm_dir.display()
    );
    let shared = env.dir.path().join("shared").join(id);
    assert!(
        !shared.exists(),
        "shared directory left: {}",
        shared.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_boots_and_agent_answers_check() {
    let mut env = TestEnv::new();
    // A boot, console included (a clone's console starts at its restore; tests/templates.rs).
    env.config.factory.template = false;
    let vm = BootedVm::boot(&env.config, "t-check")
        .await
        .expect("VM boots");
    vm.agent.check(Duration::from_secs(5)).await.expect("Check");
    let v = vm.agent.version(Duration::from_secs(5)).await.unwrap();
    assert_eq!(v.protocol_version, isola_agent_proto::PROTOCOL_VERSION);
    assert_eq!(
        v.kernel_release,
        isola_tests::guest_kernel_release(),
        "guest kernel is the image's"
    );
    let d = vm
        .agent
        .agent
        .get_guest_details(
            isola_agent_client::context(Duration::from_secs(5)),
            &GuestDetailsRequest::default(),
        )
        .await
        .unwrap();
    assert_eq!(d.online_cpus, env.config.hypervisor.vcpus);
    let mib = d.memory_total_bytes / (1024 * 1024);
    assert!(
        mib > 256 && mib <= env.config.hypervisor.memory_mib,
        "guest memory {mib} MiB vs configured {}",
        env.config.hypervisor.memory_mib
    );
    // The guest console reaches its (size-capped) log on the host.
    let console = isola_sandbox::console_tail(&vm.vm.console_log(), 64 * 1024);
    assert!(console.contains("agent ready"), "console log:\n{console}");
    // The host-side processes exist while the VM runs ...
    let running = processes_mentioning(&env.dir.path().to_string_lossy());
    let names: Vec<String> = running.iter().map(|(p, _)| comm(*p)).collect();
    assert!(
        names.iter().any(|n| n.starts_with("qemu-system")),
        "{names:?}"
    );
    vm.stop().await.expect("stop");
    // ... and none after stop.
    assert_nothing_left(&env, "t-check");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_killed_qemu_is_noticed_within_a_second_and_cleaned_up() {
    let env = TestEnv::new();
    let vm = BootedVm::boot(&env.config, "t-kill")
        .await
        .expect("VM boots");
    let qemu = vm
        .vm
        .pids()
        .into_iter()
        .find(|p| comm(*p).starts_with("qemu-system"))
        .expect("a qemu pid among the VM's pids");
    let waiter = {
        let vm = vm.vm.clone();
        tokio::spawn(async move { vm.wait().await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let killed_at = Instant::now();
    kill(Pid::from_raw(qemu as i32), Signal::SIGKILL).unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(1), waiter)
        .await
        .expect("wait() returns within a second of the kill")
        .unwrap()
        .unwrap();
    assert!(killed_at.elapsed() < Duration::from_secs(1));
    assert_eq!(exit.signal, Some(9), "{exit:?}");
    // The agent is gone with its VM.
    assert!(vm.agent.check(Duration::from_millis(500)).await.is_err());
    vm.stop().await.expect("stop after a crash");
    assert_nothing_left(&env, "t-kill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_unusable_kernel_fails_clearly_and_leaks_nothing() {
    let mut env = TestEnv::new();
    let bogus = env.dir.path().join("not-a-kernel");
    std::fs::write(&bogus, b"this is not a kernel image").unwrap();
    env.config.hypervisor.kernel = bogus;
    env.config.agent.dial_timeout_ms = 5_000;
    let err = match BootedVm::boot(&env.config, "t-bad").await {
        Ok(_) => panic!("a VM with a bogus kernel must not boot"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("not-a-kernel") || err.contains("did not answer") || err.contains("qemu"),
        "error says what failed: {err}"
    );
    assert_nothing_left(&env, "t-bad");
}
