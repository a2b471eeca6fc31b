//! `make bench`, the density part: N isola pods through containerd's CRI API (RunPodSandbox +
//! CreateContainer + StartContainer of a sleeper), started one after another and then all at
//! once, with the wall time of each; then, while the N concurrent pods are up and idle, the
//! host memory they cost (the PSS of each pod's shim and every process under it: QEMU,
//! virtiofsd, vhost-device-vsock; plus the pages of their memfds none of them maps, which a
//! clone's RAM copy has until its guest touches them), per pod, and how many such idle pods
//! would fit in the host's MemAvailable (computed, the host is not filled). Every pod is
//! stopped and removed at the end and checked to have left nothing behind.
//!
//! With `template` as second argument every pod VM is a clone of a VM template
//! (`[factory] template = true`; the warm-up pod builds it), and the lines say so.
//!
//!   bench-density [pods] [template]   (default 20; after make build guest images;
//!                                      ISOLA_SHIM_DIR picks the shim)

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::future::join_all;
use isola_tests::bench::{
    children_map, mem_available_kib, process_name, pss_kib, unmapped_memfd_kib, with_descendants,
};
use isola_tests::cri::{ContainerOptions, CriEnv, Pod, PodOptions, ISOLA};

const SLEEPER: [&str; 3] = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"];

/// How long the pods idle after the last start before their memory is read.
const SETTLE: Duration = Duration::from_secs(5);

/// One pod start: RunPodSandbox until StartContainer of its one container returned.
async fn start_pod(cri: &CriEnv, name: &str) -> Result<Pod> {
    let pod = cri
        .run_pod(name, ISOLA, PodOptions::default())
        .await
        .with_context(|| format!("starting pod {name}"))?;
    cri.create_start_container(&pod, "app", ContainerOptions::cmd(&SLEEPER))
        .await
        .with_context(|| format!("starting the container of pod {name}"))?;
    Ok(pod)
}

/// Stops and removes `pods` one after another.
async fn remove_pods(cri: &CriEnv, pods: &[Pod]) -> Result<()> {
    for pod in pods {
        cri.stop_and_remove_pod(&pod.id)
            .await
            .with_context(|| format!("removing pod {}", pod.id))?;
    }
    Ok(())
}

/// The shim serving pod `pod_id` (containerd starts it with `-id <id>`).
fn shim_of(pod_id: &str) -> Result<u32> {
    let found: Vec<u32> = isola_tests::processes_mentioning(&format!("-id {pod_id} "))
        .into_iter()
        .map(|(pid, _)| pid)
        .filter(|pid| isola_tests::comm(*pid).starts_with("containerd-shim"))
        .collect();
    match found[..] {
        [pid] => Ok(pid),
        _ => bail!("pod {pod_id}: expected one shim, found {found:?}"),
    }
}

/// PSS of the pods' processes, KiB, by kind, and their guest RAM that no process maps.
#[derive(Debug, Default)]
struct PodMemory {
    qemu: u64,
    virtiofsd: u64,
    vsock: u64,
    shim: u64,
    other: u64,
    /// A clone's RAM copy its guest has not touched yet (see [`unmapped_memfd_kib`]).
    unmapped_ram: u64,
    processes: usize,
}

impl PodMemory {
    fn total(&self) -> u64 {
        self.qemu + self.virtiofsd + self.vsock + self.shim + self.other + self.unmapped_ram
    }

    fn add(&mut self, name: &str, kib: u64) {
        let slot = if name.starts_with("qemu") {
            &mut self.qemu
        } else if name.starts_with("virtiofsd") {
            &mut self.virtiofsd
        } else if name.starts_with("vhost-device-vs") {
            &mut self.vsock
        } else if name.starts_with("containerd-shim") {
            &mut self.shim
        } else {
            &mut self.other
        };
        *slot += kib;
        self.processes += 1;
    }
}

/// The PSS of every process of `pods` (each pod's shim and all its descendants), and the
/// pages of their memfds that none of them maps.
fn pods_memory(pods: &[Pod]) -> Result<PodMemory> {
    let children = children_map();
    let mut mem = PodMemory::default();
    for pod in pods {
        let shim = shim_of(&pod.id)?;
        let tree = with_descendants(&children, shim);
        // A process of the pod outside the shim's tree would go uncounted: say so.
        for (pid, cmd) in isola_tests::cri_leaks::pod_processes(&pod.id) {
            if !tree.contains(&pid) && !isola_tests::comm(pid).starts_with("containerd") {
                eprintln!(
                    "bench-density: process {pid} of pod {} is not under its shim {shim}: {cmd}",
                    pod.id
                );
            }
        }
        mem.unmapped_ram += unmapped_memfd_kib(&tree);
        for pid in tree {
            let name = process_name(pid);
            match pss_kib(pid) {
                Some(kib) => mem.add(&name, kib),
                None => eprintln!("bench-density: no PSS for process {pid} ({name})"),
            }
        }
    }
    Ok(mem)
}

/// Waits up to `timeout` until none of `pods` left anything on the host.
async fn check_gone(cri: &CriEnv, pods: &[Pod], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut left = Vec::new();
        for pod in pods {
            left.extend(cri.pod_leftovers(&pod.id).await);
        }
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{} pods left behind after {timeout:?}:\n  {}",
                pods.len(),
                left.join("\n  ")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let n: usize = match std::env::args().nth(1) {
        Some(a) => a.parse().context("the argument is the number of pods")?,
        None => 20,
    };
    if n == 0 {
        bail!("the number of pods must be at least 1");
    }
    let template = match std::env::args().nth(2).as_deref() {
        None => false,
        Some("template") => true,
        Some(other) => bail!("the second argument can only be `template`, not {other:?}"),
    };
    let t_all = Instant::now();
    // Both explicit: templates are on by default.
    let mut env = isola_tests::TestEnv::new();
    env.config.factory.template = template;
    let cri = CriEnv::start_with(Some(env)).await?;
    let how = if template { ", VM templates" } else { "" };
    // Warm-up (not counted): snapshots unpacked, page cache filled, CNI's first allocation.
    eprintln!("bench-density: warm-up pod");
    let warm = start_pod(&cri, "density-warm").await?;
    remove_pods(&cri, std::slice::from_ref(&warm)).await?;
    let mut all = vec![warm];

    eprintln!("bench-density: {n} pods one after another");
    let t0 = Instant::now();
    let mut serial_pods = Vec::with_capacity(n);
    for i in 0..n {
        serial_pods.push(start_pod(&cri, &format!("density-serial-{i}")).await?);
    }
    let serial = t0.elapsed().as_secs_f64();
    remove_pods(&cri, &serial_pods).await?;
    all.extend(serial_pods);

    let available = mem_available_kib().context("reading MemAvailable from /proc/meminfo")?;
    eprintln!("bench-density: {n} pods at once");
    let t0 = Instant::now();
    let started = join_all((0..n).map(|i| {
        let cri = &cri;
        async move {
            let r = start_pod(cri, &format!("density-concurrent-{i}")).await;
            let took = t0.elapsed().as_secs_f64();
            match &r {
                Ok(_) => eprintln!("bench-density: pod {i} started after {took:.1} s"),
                Err(e) => eprintln!("bench-density: pod {i} failed after {took:.1} s: {e:#}"),
            }
            r
        }
    }))
    .await;
    let concurrent = t0.elapsed().as_secs_f64();
    let (mut pods, mut failed, mut first_error) = (Vec::with_capacity(n), 0, None);
    for r in started {
        match r {
            Ok(pod) => pods.push(pod),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        // Dropping the CriEnv removes the pods that did start.
        return Err(e.context(format!(
            "{failed} of {n} pods started at once failed ({} started within {concurrent:.1} s)",
            pods.len()
        )));
    }

    tokio::time::sleep(SETTLE).await;
    let mem = tokio::task::block_in_place(|| pods_memory(&pods))?;
    eprintln!(
        "bench-density: {} processes of {n} pods, {:.1} MiB in all (PSS and unmapped guest RAM)",
        mem.processes,
        mib(mem.total())
    );
    remove_pods(&cri, &pods).await?;
    all.extend(pods);
    check_gone(&cri, &all, Duration::from_secs(30)).await?;

    let per_pod = |kib: u64| mib(kib) / n as f64;
    let pss_pod_kib = mem.total() as f64 / n as f64;
    let fit = if pss_pod_kib > 0.0 {
        (available as f64 / pss_pod_kib).floor() as u64
    } else {
        0
    };
    println!("bench-density: {n} isola pods through CRI (RunPodSandbox + CreateContainer + StartContainer){how}");
    println!(
        "  serial       {serial:.3} s for {n} pods ({:.3} s each)",
        serial / n as f64
    );
    println!("  concurrent   {concurrent:.3} s for {n} pods at once");
    println!("  ratio concurrent/serial {:.2}", concurrent / serial);
    println!(
        "PSS per pod at {n} pods{how}: {:.1} MiB",
        per_pod(mem.total())
    );
    println!(
        "  (sum of PSS of every process of the {n} pods: qemu {:.1} MiB, virtiofsd {:.1} MiB, vhost-device-vsock {:.1} MiB, shim {:.1} MiB, other {:.1} MiB; guest RAM no process maps {:.1} MiB; per pod)",
        per_pod(mem.qemu),
        per_pod(mem.virtiofsd),
        per_pod(mem.vsock),
        per_pod(mem.shim),
        per_pod(mem.other),
        per_pod(mem.unmapped_ram)
    );
    println!(
        "  idle pods that fit in this host's MemAvailable ({:.0} MiB): {fit}",
        mib(available)
    );
    eprintln!(
        "bench-density: done in {:.1} s",
        t_all.elapsed().as_secs_f64()
    );
    Ok(())
}
