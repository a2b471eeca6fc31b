//! Pods through CRI-O (1.32, from ../shared/k8s) with isola's handler exactly as
//! `isola install crio` writes it: CRI-O drives `containerd-shim-isola-v2` as a
//! `runtime_type = "vm"` runtime, with its own expectations (no containerd to publish events
//! to, the `features` action, its pinned namespaces, its own pod annotations). The lifecycle of
//! a user's first `crictl` session: run a pod, create and start a container, read its log, exec
//! in it (sync and streaming), stop and remove everything, and nothing is left on the host; the
//! VM sized from the pod's resources as CRI-O declares them; isola's pod annotations reaching
//! the runtime.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use isola_tests::cri::{ContainerOptions, CriEnv, PodOptions, ISOLA};
use k8s_cri::v1::{ContainerStatsRequest, LinuxContainerResources};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_crio_runs_a_pod_in_its_own_vm() {
    let cri = CriEnv::start_crio().await.expect("starting CRI-O");
    let result = lifecycle(&cri).await;
    cri.check(result);
}

async fn lifecycle(cri: &CriEnv) -> Result<()> {
    // CRI-O took the handler (it drops a handler whose configuration it does not accept, e.g.
    // allowed_annotations outside its own list).
    let log = cri.engine.log_tail(100_000);
    let refused = "Runtime handler \"isola\" is being ignored";
    ensure!(!log.contains(refused), "CRI-O: {refused}:\n{log}");
    // Declared pod resources, as kubelet sends them: 1.5 CPUs and 200 MiB.
    let declared = PodOptions {
        resources: Some(LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 150_000,
            memory_limit_in_bytes: 200 << 20,
            ..Default::default()
        }),
        ..Default::default()
    };
    let pod = cri.run_pod("crio", ISOLA, declared).await?;
    let cid = cri
        .create_start_container(
            &pod,
            "app",
            ContainerOptions::cmd(&["sh", "-c", "echo hello-from-crio; uname -r; sleep 100000"]),
        )
        .await?;
    cri.wait_log_contains(&cid, "hello-from-crio", Duration::from_secs(60))
        .await?;
    let log = cri.container_log(&cid).await?;
    ensure!(log.contains("-isola"), "not the guest kernel: {log}");
    ensure!(cri.qemu_processes(&pod.id).len() == 1, "one VM for the pod");
    // 2 vCPUs + the configured overhead of 1; 200 MiB + 256 MiB.
    let cpus = cri
        .exec_ok(&cid, &["sh", "-c", "grep -c ^processor /proc/cpuinfo"])
        .await?;
    ensure!(cpus.trim() == "3", "vCPUs: {cpus}");
    let mem = cri
        .exec_ok(
            &cid,
            &["sh", "-c", "awk '/^MemTotal:/ { print $2 }' /proc/meminfo"],
        )
        .await?;
    let mib = mem.trim().parse::<u64>().context("MemTotal")? / 1024;
    ensure!(
        (380..=456).contains(&mib),
        "a VM of 456 MiB shows {mib} MiB"
    );
    let out = cri
        .exec_ok(&cid, &["sh", "-c", "echo exec-ok; id -u"])
        .await?;
    ensure!(out == "exec-ok\n0\n", "{out:?}");
    let streamed = cri
        .exec_stream(&cid, &["sh", "-c", "echo out; echo err >&2; exit 3"])
        .await?;
    ensure!(
        (
            streamed.exit_code,
            streamed.stdout.as_str(),
            streamed.stderr.as_str()
        ) == (3, "out\n", "err\n"),
        "{streamed:?}"
    );
    // Stats as CRI-O asks the runtime for them.
    let stats = cri
        .client()
        .container_stats(ContainerStatsRequest {
            container_id: cid.clone(),
        })
        .await
        .context("ContainerStats")?
        .into_inner()
        .stats
        .context("no stats")?;
    let memory = stats
        .memory
        .and_then(|m| m.working_set_bytes)
        .map(|v| v.value);
    ensure!(memory.is_some_and(|m| m > 0), "memory stats: {memory:?}");
    let cpu = stats
        .cpu
        .and_then(|c| c.usage_core_nano_seconds)
        .map(|v| v.value);
    ensure!(cpu.is_some_and(|c| c > 0), "cpu stats: {cpu:?}");
    // An exit status, as CRI-O learns it from the shim.
    let short = cri
        .create_start_container(
            &pod,
            "short",
            ContainerOptions::cmd(&["sh", "-c", "exit 7"]),
        )
        .await?;
    let exited = cri
        .wait_container_exited(&short, Duration::from_secs(60))
        .await?;
    ensure!(exited.exit_code == 7, "{exited:?}");
    cri.stop_and_remove_pod(&pod.id).await?;
    cri.assert_pod_gone(&pod.id).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_crio_passes_isolas_pod_annotations_to_the_runtime() {
    let cri = CriEnv::start_crio().await.expect("starting CRI-O");
    let result = annotations(&cri).await;
    cri.check(result);
}

async fn annotations(cri: &CriEnv) -> Result<()> {
    // Not enabled in this node's configuration: the runtime refuses the pod, naming the key.
    let opts = PodOptions {
        annotations: HashMap::from([(
            "io.isola.config.hypervisor.vcpus".to_string(),
            "3".to_string(),
        )]),
        ..Default::default()
    };
    let err = match cri.run_pod("annotated", ISOLA, opts).await {
        Ok(pod) => anyhow::bail!("a pod with a disabled annotation started: {}", pod.id),
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        err.contains("pod.enable_annotations") && err.contains("hypervisor.vcpus"),
        "{err}"
    );
    let vms: Vec<_> = std::fs::read_dir(cri.engine.state_dir().join("vm"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    ensure!(vms.is_empty(), "VM directories of a refused pod: {vms:?}");
    Ok(())
}
