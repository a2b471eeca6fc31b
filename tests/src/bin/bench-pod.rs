//! `make bench`, the Kubernetes part: pod start to container running through containerd's CRI
//! API — RunPodSandbox, CreateContainer, StartContainer — for the `isola` and `runc` runtime
//! handlers side by side (alternating runs, one private containerd, CNI networking included),
//! and their ratio. Each pod is stopped and removed between runs (not timed). Then the same
//! pod start with `[factory] template = true` (a second private containerd: every pod VM a
//! clone of a VM template, which its warm-up run builds), against the cold isola runs.
//!
//!   bench-pod [runs]      (after make build guest images; ISOLA_SHIM_DIR picks the shim)

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use isola_tests::bench::{list, median};
use isola_tests::cri::{ContainerOptions, CriEnv, PodOptions, ISOLA, RUNC};
use isola_tests::TestEnv;

const SLEEPER: [&str; 3] = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"];

/// One pod start: RunPodSandbox until StartContainer of its one container returned.
async fn pod_start(cri: &CriEnv, name: &str, handler: &str) -> Result<Duration> {
    let t0 = Instant::now();
    let pod = cri.run_pod(name, handler, PodOptions::default()).await?;
    cri.create_start_container(&pod, "app", ContainerOptions::cmd(&SLEEPER))
        .await?;
    let took = t0.elapsed();
    cri.stop_and_remove_pod(&pod.id)
        .await
        .with_context(|| format!("removing pod {name}"))?;
    Ok(took)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let runs: usize = match std::env::args().nth(1) {
        Some(a) => a.parse().context("the argument is the number of runs")?,
        None => 5,
    };
    // Cold boots first (templates are on by default), then clones below.
    let mut env = TestEnv::new();
    env.config.factory.template = false;
    let cri = CriEnv::start_with(Some(env)).await?;
    // Warm-up (not counted): snapshots unpacked, page cache filled, CNI's first allocation.
    for handler in [RUNC, ISOLA] {
        pod_start(&cri, &format!("warm-{handler}"), handler).await?;
    }
    let (mut isola, mut runc) = (Vec::new(), Vec::new());
    for i in 0..runs {
        runc.push(
            pod_start(&cri, &format!("runc-{i}"), RUNC)
                .await?
                .as_secs_f64(),
        );
        isola.push(
            pod_start(&cri, &format!("isola-{i}"), ISOLA)
                .await?
                .as_secs_f64(),
        );
    }
    let (mi, mr) = (median(isola.clone()), median(runc.clone()));
    println!("bench-pod: pod start to container running (CRI RunPodSandbox + CreateContainer + StartContainer, {runs} runs each)");
    println!("  isola   median {mi:.3} s   [{}]", list(&isola, 3));
    println!("  runc    median {mr:.3} s   [{}]", list(&runc, 3));
    println!("  ratio isola/runc {:.2}", mi / mr);
    drop(cri);

    let mut env = TestEnv::new();
    env.config.factory.template = true;
    let cri = CriEnv::start_with(Some(env)).await?;
    pod_start(&cri, "warm-template", ISOLA).await?;
    let mut templated = Vec::new();
    for i in 0..runs {
        templated.push(
            pod_start(&cri, &format!("template-{i}"), ISOLA)
                .await?
                .as_secs_f64(),
        );
    }
    let mt = median(templated.clone());
    println!(
        "  isola, VM template   median {mt:.3} s   [{}]",
        list(&templated, 3)
    );
    println!(
        "  ratio template/cold boot {:.2}   ratio template/runc {:.2}",
        mt / mi,
        mt / mr
    );
    Ok(())
}
