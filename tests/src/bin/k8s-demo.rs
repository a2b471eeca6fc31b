//! `make k8s-demo`: the tests' single-node Kubernetes (tests/src/cluster) for a person to try,
//! with one isola pod and one runc pod running. It writes what to type (an
//! `export KUBECONFIG=` line first) to `<info-file>` once the pods run, then keeps the cluster
//! until SIGTERM or SIGINT (`make k8s-demo-stop`), when it takes everything down as a test
//! run does: pods, kubelet, control plane, runtime, and the host put back.
//!
//!   k8s-demo containerd|crio <info-file>      (scripts/k8s-demo.sh runs it in the background)

use std::time::Duration;

use anyhow::{bail, Context, Result};
use isola_tests::cluster::workload::{self, Class};
use isola_tests::cluster::{Cluster, Runtime};

fn instructions(cluster: &Cluster, runtime: Runtime) -> String {
    let kubectl = isola_tests::cluster::bin_dir()
        .map(|d| d.join("kubectl").display().to_string())
        .unwrap_or_else(|_| "kubectl".into());
    format!(
        "A single-node Kubernetes 1.32 with isola runs ({runtime:?} on the node).\n\
         \n\
         export KUBECONFIG={kc}\n\
         alias kubectl={kubectl}\n\
         \n\
         kubectl get pods -o wide                    # demo-isola (in a VM) and demo-runc\n\
         kubectl exec demo-isola -- uname -r         # the guest kernel (…-isola)\n\
         kubectl exec demo-runc -- uname -r          # the node's kernel\n\
         kubectl logs -f demo-isola\n\
         kubectl get runtimeclass isola -o yaml      # deploy/runtimeclass.yaml\n\
         \n\
         Its state and logs: {dir}\n\
         Stop it (everything goes, the host is put back): make k8s-demo-stop\n",
        kc = cluster.kubeconfig().display(),
        dir = cluster.dir().display(),
    )
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let runtime = match args.next().as_deref() {
        Some("containerd") | None => Runtime::Containerd,
        Some("crio") => Runtime::Crio,
        Some(other) => bail!("the runtime is containerd or crio, not {other:?}"),
    };
    let info = args
        .next()
        .context("usage: k8s-demo containerd|crio <info-file>")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let cluster = Cluster::start(runtime)?;
    let pods = format!(
        "{}---\n{}",
        workload::sleeper_pod("demo-isola", Class::Isola, "cpu: \"1\", memory: 256Mi"),
        workload::sleeper_pod("demo-runc", Class::Runc, "")
    );
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&pods))?;
    cluster.kubectl_ok(
        &[
            "wait",
            "--for=condition=Ready",
            "pod/demo-isola",
            "pod/demo-runc",
            "--timeout=300s",
        ],
        None,
    )?;
    let text = instructions(&cluster, runtime);
    std::fs::write(&info, &text).with_context(|| format!("writing {info}"))?;
    print!("{text}");
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        anyhow::Ok(())
    })?;
    eprintln!("stopping the cluster");
    let _ = std::fs::remove_file(&info);
    drop(cluster);
    std::thread::sleep(Duration::from_millis(100));
    Ok(())
}
