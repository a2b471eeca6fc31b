//! Pod sizing through containerd's CRI API: the VM follows the pod's declared resources (the
//! `io.kubernetes.cri.sandbox-*` annotations containerd derives from the pod sandbox's
//! `linux.resources`) plus the configured overhead, `io.isola.config.*` annotations set the
//! exact size where the configuration enables them, anything else is refused before a VM
//! boots, and container limits are enforced in the guest. Sizes are read from /proc and the
//! cgroup files inside the guest.

use std::collections::HashMap;

use anyhow::{ensure, Context, Result};
use isola_tests::cri::{ContainerOptions, CriEnv, PodOptions, ISOLA};
use isola_tests::TestEnv;
use k8s_cri::v1::LinuxContainerResources;

const SLEEPER: [&str; 3] = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"];

/// vCPUs and MemTotal (MiB) as the guest reports them to a container.
async fn guest_size(cri: &CriEnv, cid: &str) -> Result<(u32, u64)> {
    let cpus = cri
        .exec_ok(cid, &["sh", "-c", "grep -c ^processor /proc/cpuinfo"])
        .await?;
    let mem = cri
        .exec_ok(
            cid,
            &["sh", "-c", "awk '/^MemTotal:/ { print $2 }' /proc/meminfo"],
        )
        .await?;
    let cpus = cpus
        .trim()
        .parse()
        .with_context(|| format!("cpu count {cpus:?}"))?;
    let mem_kib: u64 = mem
        .trim()
        .parse()
        .with_context(|| format!("MemTotal {mem:?}"))?;
    Ok((cpus, mem_kib / 1024))
}

/// MemTotal is the VM's memory minus what the guest kernel keeps for itself.
fn assert_memory_near(got_mib: u64, vm_mib: u64) -> Result<()> {
    ensure!(
        got_mib <= vm_mib && got_mib * 100 >= vm_mib * 85,
        "the guest sees {got_mib} MiB of memory; a VM of {vm_mib} MiB was expected"
    );
    Ok(())
}

fn annotations(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_cri_pod_sizing_follows_resources_and_annotations() -> Result<()> {
    let mut env = TestEnv::new();
    env.config.pod.enable_annotations =
        vec!["hypervisor.vcpus".into(), "hypervisor.memory_mib".into()];
    let overhead_vcpus = env.config.pod.overhead_vcpus;
    let overhead_mib = env.config.pod.overhead_memory_mib;
    let cri = CriEnv::start_with(Some(env)).await?;

    // Declared pod resources: 1.5 CPUs and 200 MiB → ⌈1.5⌉ + overhead vCPUs, 200 + overhead MiB.
    let declared = PodOptions {
        resources: Some(LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 150_000,
            memory_limit_in_bytes: 200 << 20,
            ..Default::default()
        }),
        ..Default::default()
    };
    let pod = cri.run_pod("declared", ISOLA, declared).await?;
    let limited = ContainerOptions {
        resources: Some(LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        }),
        ..ContainerOptions::cmd(&SLEEPER)
    };
    let cid = cri.create_start_container(&pod, "app", limited).await?;
    let (cpus, mem) = guest_size(&cri, &cid).await?;
    ensure!(
        cpus == 2 + overhead_vcpus,
        "a pod declaring 1.5 CPUs got {cpus} vCPUs (overhead {overhead_vcpus})"
    );
    assert_memory_near(mem, 200 + overhead_mib)?;
    // The container's own limit is enforced by its cgroup in the guest.
    let limit = cri
        .exec_ok(
            &cid,
            &[
                "sh",
                "-c",
                "cat /sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup)/memory.max",
            ],
        )
        .await?;
    ensure!(
        limit.trim() == (64u64 << 20).to_string(),
        "the container's memory.max in the guest is {limit:?}, not its 64 MiB limit"
    );
    cri.stop_and_remove_pod(&pod.id).await?;
    cri.assert_pod_gone(&pod.id).await;

    // Enabled annotations set the exact size.
    let exact = PodOptions {
        annotations: annotations(&[
            ("io.isola.config.hypervisor.vcpus", "2"),
            ("io.isola.config.hypervisor.memory_mib", "640"),
        ]),
        ..Default::default()
    };
    let pod = cri.run_pod("exact", ISOLA, exact).await?;
    let cid = cri
        .create_start_container(&pod, "app", ContainerOptions::cmd(&SLEEPER))
        .await?;
    let (cpus, mem) = guest_size(&cri, &cid).await?;
    ensure!(
        cpus == 2,
        "io.isola.config.hypervisor.vcpus=2 gave {cpus} vCPUs"
    );
    assert_memory_near(mem, 640)?;
    cri.stop_and_remove_pod(&pod.id).await?;
    cri.assert_pod_gone(&pod.id).await;

    // An annotation the configuration does not enable fails the pod, and leaves nothing.
    let refused = PodOptions {
        annotations: annotations(&[("io.isola.config.hypervisor.kernel_params", "quiet")]),
        ..Default::default()
    };
    let err = cri
        .run_pod("refused", ISOLA, refused)
        .await
        .expect_err("a pod with a disabled annotation must not start");
    let msg = format!("{err:#}");
    ensure!(
        msg.contains("pod.enable_annotations") && msg.contains("kernel_params"),
        "the error does not say what to do: {msg}"
    );
    let unknown = PodOptions {
        annotations: annotations(&[("io.isola.config.hypervisor.path", "/bin/sh")]),
        ..Default::default()
    };
    let err = cri
        .run_pod("unknown", ISOLA, unknown)
        .await
        .expect_err("a pod with an unknown isola annotation must not start");
    ensure!(
        format!("{err:#}").contains("no such overridable setting"),
        "{err:#}"
    );
    // Refused before booting: no VM ran, so no VM state exists for any pod.
    let vms = cri.engine.state_dir().join("vm");
    let left: Vec<_> = std::fs::read_dir(&vms)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    ensure!(left.is_empty(), "refused pods left VM state: {left:?}");
    Ok(())
}
