//! `make bench`, the node part: pod create → Running through a real kubelet (the tests'
//! single-node cluster on a private containerd), an isola pod and a runc pod alternately on
//! the same node, and their ratio; then, for one idle isola pod, the memory the kubelet sees
//! (its summary API) against the host memory the pod really costs (PSS of its shim, QEMU,
//! virtiofsd and vsock daemon) and the RuntimeClass overhead the scheduler reserves.
//!
//!   bench-k8s [runs]      (after make build guest images k8s; ISOLA_SHIM_DIR picks the shim)

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use isola_tests::bench::{list, median};
use isola_tests::cluster::workload::{self, Class};
use isola_tests::cluster::{Cluster, Runtime, NODE};
use serde_json::Value;

fn pod_yaml(name: &str, isola: bool) -> String {
    let class = if isola { Class::Isola } else { Class::Runc };
    workload::sleeper_pod(name, class, "")
}

fn kubectl(cluster: &Cluster, args: &[&str], input: Option<String>) -> Result<String> {
    cluster.kubectl_ok(args, input.as_deref())
}

fn phase(cluster: &Cluster, name: &str) -> Result<String> {
    kubectl(
        cluster,
        &["get", "pod", name, "-o", "jsonpath={.status.phase}"],
        None,
    )
}

/// Creates pod `name` and times create → phase Running (polled every 50 ms).
fn create_to_running(cluster: &Cluster, name: &str, isola: bool) -> Result<Duration> {
    let t0 = Instant::now();
    kubectl(cluster, &["create", "-f", "-"], Some(pod_yaml(name, isola)))?;
    loop {
        if phase(cluster, name)? == "Running" {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > Duration::from_secs(300) {
            bail!("pod {name} is not Running after 300 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn delete(cluster: &Cluster, name: &str) -> Result<()> {
    kubectl(
        cluster,
        &["delete", "pod", name, "--wait=true", "--timeout=180s"],
        None,
    )
    .map(|_| ())
}

/// PSS (KiB) of a process (0 when it is gone).
fn pss_kib(pid: u32) -> u64 {
    isola_tests::bench::pss_kib(pid).unwrap_or(0)
}

/// The memory of an idle isola pod: what the kubelet's summary API reports, the host PSS of
/// the pod's processes, and the RuntimeClass overhead.
fn memory(cluster: &Cluster) -> Result<()> {
    let name = "bench-idle";
    create_to_running(cluster, name, true)?;
    std::thread::sleep(Duration::from_secs(15));
    let path = format!("/api/v1/nodes/{NODE}/proxy/stats/summary");
    let summary: Value = serde_json::from_str(&kubectl(cluster, &["get", "--raw", &path], None)?)?;
    let pod = summary["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["podRef"]["name"] == name)
        .context("the idle pod is not in the summary")?;
    let mib = |v: &Value| v.as_u64().unwrap_or(0) as f64 / 1048576.0;
    let containers: f64 = pod["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| mib(&c["memory"]["workingSetBytes"]))
        .sum();
    let sandbox = sandbox_of(cluster, name)?;
    let pids: Vec<u32> = isola_tests::cri_leaks::pod_processes(&sandbox)
        .into_iter()
        .map(|(pid, _)| pid)
        .collect();
    // A clone's guest RAM its guest has not touched is in no process's PSS.
    let host_kib: u64 = pids.iter().map(|&pid| pss_kib(pid)).sum::<u64>()
        + isola_tests::bench::unmapped_memfd_kib(&pids);
    let overhead = kubectl(
        cluster,
        &[
            "get",
            "runtimeclass",
            "isola",
            "-o",
            "jsonpath={.overhead.podFixed.memory}",
        ],
        None,
    )?;
    println!("bench-k8s: idle isola pod memory: the kubelet sees pod {:.1} MiB, containers {containers:.1} MiB; host memory of the pod's processes (PSS + guest RAM no process maps) {:.1} MiB; RuntimeClass overhead {overhead}",
        mib(&pod["memory"]["workingSetBytes"]),
        host_kib as f64 / 1024.0);
    delete(cluster, name)
}

/// The CRI sandbox id of pod `name`.
fn sandbox_of(cluster: &Cluster, name: &str) -> Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let ids = rt.block_on(isola_tests::cluster::checks::sandbox_ids(cluster, name))?;
    ids.into_iter()
        .next()
        .with_context(|| format!("no sandbox for pod {name}"))
}

fn main() -> Result<()> {
    let runs: usize = match std::env::args().nth(1) {
        Some(a) => a.parse().context("the argument is the number of runs")?,
        None => 5,
    };
    let cluster = Cluster::start(Runtime::Containerd)?;
    // Warm-up (not counted): the first pod of each kind on a fresh node.
    for (name, isola) in [("warm-runc", false), ("warm-isola", true)] {
        create_to_running(&cluster, name, isola)?;
        delete(&cluster, name)?;
    }
    let (mut isola, mut runc) = (Vec::new(), Vec::new());
    for i in 0..runs {
        for (kind, is_isola) in [("runc", false), ("isola", true)] {
            let name = format!("bench-{kind}-{i}");
            let took = create_to_running(&cluster, &name, is_isola)?.as_secs_f64();
            if is_isola {
                isola.push(took);
            } else {
                runc.push(took);
            }
            delete(&cluster, &name)?;
        }
    }
    let (mi, mr) = (median(isola.clone()), median(runc.clone()));
    println!("bench-k8s: pod create → Running through the kubelet (containerd node, {runs} runs each, alternating)");
    println!("  isola   median {mi:.2} s   [{}]", list(&isola, 2));
    println!("  runc    median {mr:.2} s   [{}]", list(&runc, 2));
    println!(
        "k8s pod create → Running: isola {mi:.2} s vs runc {mr:.2} s, ratio {:.2}",
        mi / mr
    );
    memory(&cluster)?;
    Ok(())
}
