//! CPU and memory hotplug on a real pod VM (TCG here): QEMU plugs them over QMP, the guest
//! sees them.

use std::time::{Duration, Instant};

use isola_agent_proto::agent::{GuestDetailsRequest, GuestDetailsResponse, OnlineCPUMemRequest};
use isola_hypervisor::HypervisorError;
use isola_sandbox::BootedVm;
use isola_tests::TestEnv;

const RPC: Duration = Duration::from_secs(5);

async fn details(vm: &BootedVm) -> GuestDetailsResponse {
    vm.agent
        .agent
        .get_guest_details(
            isola_agent_client::context(RPC),
            &GuestDetailsRequest::default(),
        )
        .await
        .expect("GetGuestDetails")
}

/// OnlineCPUMem, with room for the agent's own bounded wait (10 s) for what was announced.
async fn online_cpu_mem(vm: &BootedVm, req: OnlineCPUMemRequest) {
    vm.agent
        .agent
        .online_cpu_mem(isola_agent_client::context(Duration::from_secs(15)), &req)
        .await
        .unwrap_or_else(|e| panic!("OnlineCPUMem {req:?}: {e}"));
}

/// Polls GetGuestDetails until `ok` holds or `within` passes; returns the last answer.
async fn details_until(
    vm: &BootedVm,
    within: Duration,
    ok: impl Fn(&GuestDetailsResponse) -> bool,
) -> GuestDetailsResponse {
    let deadline = Instant::now() + within;
    loop {
        let d = details(vm).await;
        if ok(&d) || Instant::now() > deadline {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_hotplug_one_vcpu_and_256_mib() {
    let mut env = TestEnv::new();
    // KERN_INFO on the console (after the default `quiet`), for the kernel's
    // "CPU1 has been hot-added" line: the guest-side evidence for the vCPU that does not
    // need the agent.
    env.config.hypervisor.kernel_params = "loglevel=7".into();
    assert_eq!(
        (
            env.config.hypervisor.vcpus,
            env.config.hypervisor.memory_mib
        ),
        (1, 512),
        "the test assumes the default boot size"
    );
    let vm = BootedVm::boot(&env.config, "t-hotplug")
        .await
        .expect("VM boots");
    let before = details(&vm).await;
    assert_eq!(before.online_cpus, 1);
    assert_eq!(
        before.mem_block_size_bytes,
        128 << 20,
        "x86_64 memory blocks"
    );

    {
        // Host side: QEMU plugs them, and reports them plugged (a repeated call re-reads
        // QEMU's state: query-hotpluggable-cpus / query-memory-devices).
        assert_eq!(vm.vm.hotplug_vcpus(2).await.expect("hot-add a vCPU"), 2);
        assert_eq!(vm.vm.hotplug_vcpus(2).await.unwrap(), 2);
        assert_eq!(
            vm.vm.hotplug_memory(768).await.expect("hot-add 256 MiB"),
            768
        );
        assert_eq!(vm.vm.hotplug_memory(768).await.unwrap(), 768);
        // Refusals are typed and leave the VM as it was.
        let err = vm.vm.hotplug_vcpus(1).await.unwrap_err();
        assert!(
            matches!(err, HypervisorError::ShrinkUnsupported { current: 2, .. }),
            "{err}"
        );
        let err = vm.vm.hotplug_vcpus(10_000).await.unwrap_err();
        assert!(matches!(err, HypervisorError::HotplugLimit { .. }), "{err}");

        // Guest side, memory: the guest adds the new blocks a moment after QEMU's device_add
        // returned (and its kernel onlines them, memhp_default_state=online). OnlineCPUMem
        // with the VM's new size answers only once all of it is there and online: read once
        // right after, MemTotal has grown, with no polling.
        online_cpu_mem(
            &vm,
            OnlineCPUMemRequest {
                memory_mib: 768,
                ..Default::default()
            },
        )
        .await;
        let grown = 256 * 1024 * 1024;
        let after = details(&vm).await;
        assert!(
            after.memory_total_bytes >= before.memory_total_bytes + grown,
            "guest MemTotal {} -> {} bytes after hot-adding 256 MiB",
            before.memory_total_bytes,
            after.memory_total_bytes
        );

        // Guest side, CPUs: the kernel took the ACPI hot-add ...
        let console = vm.vm.console_log();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !isola_sandbox::console_tail(&console, 64 * 1024).contains("CPU1 has been hot-added")
        {
            assert!(
                Instant::now() < deadline,
                "the guest kernel did not report the hot-added CPU; console:\n{}",
                isola_sandbox::console_tail(&console, 8 * 1024)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // ... and the CPU arrives offline: the agent's OnlineCPUMem onlines it.
        online_cpu_mem(
            &vm,
            OnlineCPUMemRequest {
                nb_cpus: 1,
                ..Default::default()
            },
        )
        .await;
        let d = details_until(&vm, Duration::from_secs(20), |d| d.online_cpus == 2).await;
        assert_eq!(d.online_cpus, 2, "online vCPUs after OnlineCPUMem");
    }
    vm.stop().await.expect("stop");
}

/// Every DIMM is one more memory region the vhost-user daemons (vhost-device-vsock,
/// virtiofsd) must map: fill all slots and check that QEMU takes them and the agent, reached
/// over vhost-user vsock, still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_hotplug_memory_fills_every_slot() {
    let env = TestEnv::new();
    let vm = BootedVm::boot(&env.config, "t-hpslots")
        .await
        .expect("VM boots");
    let before = details(&vm).await;
    let slots = isola_hypervisor::DEFAULT_MEMORY_SLOTS;
    let mut total = u32::try_from(env.config.hypervisor.memory_mib).unwrap();
    for n in 1..=slots {
        total += 128;
        let got = vm.vm.hotplug_memory(total).await;
        assert_eq!(got.unwrap_or_else(|e| panic!("DIMM {n}: {e}")), total);
    }
    let err = vm.vm.hotplug_memory(total + 128).await.unwrap_err();
    assert!(
        matches!(
            err,
            HypervisorError::HotplugLimit {
                resource: "memory slots",
                ..
            }
        ),
        "{err}"
    );
    let grown = u64::from(slots) * 128 * 1024 * 1024;
    let after = details_until(&vm, Duration::from_secs(30), |d| {
        d.memory_total_bytes >= before.memory_total_bytes + grown
    })
    .await;
    assert!(
        after.memory_total_bytes >= before.memory_total_bytes + grown,
        "guest MemTotal {} -> {} bytes after {slots} DIMMs of 128 MiB",
        before.memory_total_bytes,
        after.memory_total_bytes
    );
    vm.agent.check(RPC).await.expect("agent still answers");
    vm.stop().await.expect("stop");
}
