//! The node's container runtime restarted from the node, as an installer DaemonSet (like
//! kata-deploy) does after registering a runtime handler: a privileged hostPID pod sends
//! SIGTERM to the pid in the runtime's pidfile (`<cluster dir>/run/containerd.pid` or
//! `crio.pid`), and the runtime's supervisor starts it again, as systemd would
//! (`isola_tests::supervisor`). On containerd and on CRI-O, with an isola pod and a runc pod
//! running:
//! - the runtime is restarted exactly once, with a new pid in the pidfile and a line in its log;
//!   it answers CRI again and the node is Ready (the times are printed);
//! - both pods stay Running with the same containers (same ids, no restarts, a file written
//!   before still there) and the isola pod in the same VM (the same QEMU process);
//! - `kubectl exec` works in both, their output still reaches `kubectl logs`, and a new isola
//!   pod starts;
//! - CRI-O only: a runtime handler added as a drop-in is not usable after a SIGHUP reload
//!   (CRI-O 1.32 lists it but still refuses its pods), only after a restart, so an installer
//!   must restart CRI-O;
//! - once the pods are deleted nothing of the isola pods is left on the host, and once the
//!   cluster is gone nothing mentions its directories and the Service's nat rules are gone.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use isola_tests::cluster::checks::{
    eventually, eventually_none, first_container, kubectl, pod_json, wait_ready,
};
use isola_tests::cluster::workload::{sleeper_pod, Class};
use isola_tests::cluster::{checks, Cluster, Runtime};
use isola_tests::supervisor::read_pidfile;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::VersionRequest;
use serde_json::Value;

/// The pods that must not notice the restart, and the one that does it.
const ISOLA_POD: &str = "keep-isola";
const RUNC_POD: &str = "keep-runc";
const RESTARTER: &str = "restarter";
/// The file in the pidfile's directory that tells the restarter to act.
const TRIGGER: &str = "restart-now";
/// How long the runtime may take to be back and the node Ready (TCG host, two cores).
const BACK_WITHIN: Duration = Duration::from_secs(120);

/// A hostPID runc pod (privileged if `privileged`, as an installer DaemonSet is) that, once
/// [`TRIGGER`] appears in the host directory `run`, sends SIGTERM to the pid in
/// `run/<pidfile>` and stays. Unprivileged, root in the host's PID namespace still has
/// CAP_KILL.
fn restarter_pod(run: &Path, pidfile: &str, privileged: bool) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {RESTARTER}
spec:
  hostPID: true
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {image}
    imagePullPolicy: Never
    securityContext: {{privileged: {privileged}}}
    command:
    - sh
    - -c
    - >-
      trap 'exit 0' TERM;
      while [ ! -e /node-run/{TRIGGER} ]; do sleep 0.2; done;
      pid=$(cat /node-run/{pidfile}); kill -TERM "$pid" && echo "sent TERM to $pid";
      while :; do sleep 1; done
    volumeMounts: [{{name: run, mountPath: /node-run}}]
  volumes:
  - {{name: run, hostPath: {{path: "{run}", type: Directory}}}}
"#,
        image = isola_tests::containerd::TEST_IMAGE,
        run = run.display(),
    )
}

/// The node's Ready condition: (status, lastTransitionTime).
async fn node_ready(cluster: &Cluster) -> Result<(String, String)> {
    let node: Value = serde_json::from_str(
        &kubectl(
            cluster,
            &["get", "node", isola_tests::cluster::NODE, "-o", "json"],
        )
        .await?,
    )?;
    let ready = node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .context("no Ready condition")?;
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    Ok((s(&ready["status"]), s(&ready["lastTransitionTime"])))
}

/// The QEMU process of sandbox `id`'s VM.
fn qemu_pid(state: &Path, id: &str) -> Result<u32> {
    let vm_dir = state.join("vm").join(isola_sandbox::vm_dir_name(id));
    let found: Vec<u32> = isola_tests::processes_mentioning(&vm_dir.to_string_lossy())
        .into_iter()
        .map(|(pid, _)| pid)
        .filter(|pid| isola_tests::comm(*pid).starts_with("qemu-system"))
        .collect();
    ensure!(found.len() == 1, "the QEMU of {id}: {found:?}");
    Ok(found[0])
}

async fn exec(cluster: &Cluster, pod: &str, cmd: &str) -> Result<String> {
    kubectl(cluster, &["exec", pod, "--", "sh", "-c", cmd]).await
}

async fn restart_runtime(cluster: &Cluster) -> Result<()> {
    let interfaces_before = isola_tests::cri_leaks::host_interfaces();
    let engine = cluster.engine.as_ref().context("no runtime")?;
    let daemon = engine.daemon().context("the runtime is not supervised")?;
    let pidfile = cluster.runtime_pidfile();
    let old = daemon.pid().context("the runtime does not run")?;
    ensure!(
        read_pidfile(&pidfile) == Some(old),
        "{} does not name the runtime ({old})",
        pidfile.display()
    );
    let run = pidfile.parent().context("the pidfile's directory")?;
    let pidfile_name = pidfile.file_name().unwrap_or_default().to_string_lossy();
    let privileged = isola_tests::cluster::deploy::privileged_pods_run(cluster);
    if !privileged {
        eprintln!(
            "the restarter pod is not privileged: this host's bounding set lacks a capability \
             and CRI-O gives a privileged container every one"
        );
    }
    let yaml = [
        sleeper_pod(ISOLA_POD, Class::Isola, "memory: 256Mi"),
        sleeper_pod(RUNC_POD, Class::Runc, "memory: 64Mi"),
        restarter_pod(run, &pidfile_name, privileged),
    ]
    .join("---\n");
    checks::kubectl_input(cluster, &["apply", "-f", "-"], Some(&yaml)).await?;
    let mut before = Vec::new();
    for name in [ISOLA_POD, RUNC_POD, RESTARTER] {
        before.push(first_container(&wait_ready(cluster, name).await?));
    }
    let sandboxes = checks::sandbox_ids(cluster, ISOLA_POD).await?;
    ensure!(
        sandboxes.len() == 1,
        "the isola pod's sandboxes: {sandboxes:?}"
    );
    let qemu = qemu_pid(engine.state_dir(), &sandboxes[0])?;
    for pod in [ISOLA_POD, RUNC_POD] {
        exec(cluster, pod, "echo from-before > /tmp/marker").await?;
    }
    let (status, since) = node_ready(cluster).await?;
    ensure!(status == "True", "the node is not Ready before the restart");

    // The restarter pod sends SIGTERM through the pidfile; the supervisor starts a new one.
    let t0 = Instant::now();
    std::fs::write(run.join(TRIGGER), "")?;
    let new = tokio::task::block_in_place(|| daemon.wait_restarted(old, BACK_WITHIN))
        .with_context(|| format!("the runtime was not restarted: {:?}", daemon.ended()))?;
    let restarted = t0.elapsed();
    ensure!(
        read_pidfile(&pidfile) == Some(new),
        "the pidfile does not name the new runtime {new}"
    );
    ensure!(
        !Path::new(&format!("/proc/{old}")).exists(),
        "the old runtime {old} is still there"
    );
    let socket = engine.socket();
    eventually("the runtime answering CRI", BACK_WITHIN, || async {
        let mut client =
            RuntimeServiceClient::new(isola_tests::cri::connect(socket.clone()).await?);
        client.version(VersionRequest::default()).await?;
        Ok(Some(()))
    })
    .await?;
    let answering = t0.elapsed();
    eventually("the node Ready", BACK_WITHIN, || async {
        Ok((node_ready(cluster).await?.0 == "True").then_some(()))
    })
    .await?;
    let ready = t0.elapsed();
    let log = kubectl(cluster, &["logs", RESTARTER]).await?;
    ensure!(
        log.contains(&format!("sent TERM to {old}")),
        "the restarter's log: {log:?}"
    );

    // The pods did not notice.
    for (name, was) in [ISOLA_POD, RUNC_POD, RESTARTER].iter().zip(&before) {
        let pod = pod_json(cluster, name).await?;
        ensure!(
            pod["status"]["phase"] == "Running",
            "{name}: {}",
            pod["status"]
        );
        ensure!(
            &first_container(&pod) == was,
            "{name}: container (id, restarts) {was:?} became {:?}",
            first_container(&pod)
        );
    }
    let qemu_after = qemu_pid(engine.state_dir(), &sandboxes[0])?;
    ensure!(
        qemu_after == qemu,
        "the VM's QEMU was {qemu}, is {qemu_after}"
    );
    for pod in [ISOLA_POD, RUNC_POD] {
        let marker = exec(cluster, pod, "cat /tmp/marker").await?;
        ensure!(marker == "from-before\n", "{pod}: {marker:?}");
    }
    let kernel = exec(cluster, ISOLA_POD, "uname -r").await?;
    ensure!(
        kernel.contains("-isola"),
        "{ISOLA_POD}'s kernel: {kernel:?}"
    );
    let execs = t0.elapsed();
    // Their output still reaches `kubectl logs` (a line every 5 s): the new runtime reads the
    // containers' stdout again.
    for pod in [ISOLA_POD, RUNC_POD] {
        let lines = kubectl(cluster, &["logs", pod]).await?.lines().count();
        eventually(
            &format!("{pod}'s log growing after the restart (from {lines} lines)"),
            Duration::from_secs(30),
            || async {
                let now = kubectl(cluster, &["logs", pod]).await?.lines().count();
                Ok((now >= lines + 2).then_some(()))
            },
        )
        .await?;
    }

    // A new isola pod starts on the restarted runtime.
    let fresh = "after-restart";
    checks::kubectl_input(
        cluster,
        &["apply", "-f", "-"],
        Some(&sleeper_pod(fresh, Class::Isola, "memory: 256Mi")),
    )
    .await?;
    wait_ready(cluster, fresh).await?;
    let kernel = exec(cluster, fresh, "uname -r").await?;
    ensure!(kernel.contains("-isola"), "{fresh}'s kernel: {kernel:?}");
    let mut all_sandboxes = sandboxes;
    all_sandboxes.extend(checks::sandbox_ids(cluster, fresh).await?);

    ensure!(
        daemon.restarts() == 1,
        "restarts: {} (one expected)",
        daemon.restarts()
    );
    ensure!(
        engine
            .log_tail(usize::MAX)
            .contains(&format!("(pid {old}) exited")),
        "no restart line in the runtime's log"
    );
    let (status, since_after) = node_ready(cluster).await?;
    ensure!(status == "True", "the node is not Ready at the end");
    eprintln!(
        "{:?}: SIGTERM -> new runtime {:.2} s, -> answering CRI {:.2} s, -> node Ready {:.2} s, \
         -> both pods checked by exec {:.2} s; the node {} (Ready since {since}, now since \
         {since_after})",
        cluster.runtime,
        restarted.as_secs_f64(),
        answering.as_secs_f64(),
        ready.as_secs_f64(),
        execs.as_secs_f64(),
        if since == since_after {
            "stayed Ready"
        } else {
            "went NotReady and back"
        },
    );

    // CRI-O: a handler added later needs a restart, not a reload.
    if cluster.runtime == Runtime::Crio {
        let reloaded = sighup_reloads_handlers(cluster, new)
            .await
            .context("CRI-O's SIGHUP reload")?;
        all_sandboxes.extend(reloaded);
    }

    // Nothing of the isola pods is left once they are deleted (CRI-O: the VM ends at the
    // kubelet's RemovePodSandbox, from its garbage collection within about a minute).
    kubectl(
        cluster,
        &["delete", "pod", "--all", "--wait=true", "--timeout=120s"],
    )
    .await?;
    let (dir, state, pid) = (engine.dir(), engine.state_dir(), engine.pid());
    for id in all_sandboxes {
        eventually_none("the isola pods' leftovers gone", BACK_WITHIN, || {
            isola_tests::cri_leaks::pod_leftovers(dir, state, &id, pid, &interfaces_before)
        })
        .await?;
    }
    Ok(())
}

/// The handler [`sighup_reloads_handlers`] adds, and its RuntimeClass.
const RELOADED: &str = "isola-reloaded";

/// A pod of RuntimeClass [`RELOADED`] sleeping until SIGTERM.
fn reloaded_pod(name: &str) -> String {
    sleeper_pod(name, Class::Isola, "memory: 256Mi").replace(
        "runtimeClassName: isola\n",
        &format!("runtimeClassName: {RELOADED}\n"),
    )
}

/// CRI-O 1.32 on SIGHUP reloads its configuration, a runtime handler added as a drop-in
/// included (it logs it as valid and `GET /config` lists it), but RunPodSandbox still looks
/// the handler up in the list it started with: a pod of the new handler stays refused ("failed
/// to find runtime handler ... from runtime list") until CRI-O restarts. So an installer must
/// restart CRI-O, not reload it; this checks that (a CRI-O whose reload does reach new pods
/// fails here, the cue to reload instead), then that the restart (through the supervisor,
/// CRI-O pid `pid`) makes the pod run in a VM. Returns the pod's sandboxes.
async fn sighup_reloads_handlers(cluster: &Cluster, pid: u32) -> Result<Vec<String>> {
    let engine = cluster.engine.as_ref().context("no runtime")?;
    let daemon = engine.daemon().context("not supervised")?;
    let conf_d = engine.dir().join("crio.conf.d");
    let isola = std::fs::read_to_string(conf_d.join("50-isola.conf"))?;
    let section = "[crio.runtime.runtimes.isola]";
    ensure!(isola.contains(section), "50-isola.conf: {isola}");
    let rc = format!(
        "apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata:\n  name: {RELOADED}\n\
         handler: {RELOADED}\n"
    );
    checks::kubectl_input(cluster, &["apply", "-f", "-"], Some(&rc)).await?;
    std::fs::write(
        conf_d.join(format!("60-{RELOADED}.conf")),
        isola.replace(section, &format!("[crio.runtime.runtimes.{RELOADED}]")),
    )?;

    let t0 = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )?;
    eventually("CRI-O's reload in its log", Duration::from_secs(30), || {
        let log = engine.log_tail(usize::MAX);
        async move {
            // What CRI-O logs after the signal (logfmt, quotes escaped): the new handler
            // validated, the reload done.
            let after = log
                .rfind("Reloading configuration")
                .map(|i| &log[i..])
                .unwrap_or_default();
            let valid = format!(r#"Found valid runtime \"{RELOADED}\""#);
            Ok(
                (after.contains(&valid) && after.contains("Configuration reload completed"))
                    .then_some(()),
            )
        }
    })
    .await?;
    let reloaded = t0.elapsed();
    ensure!(
        daemon.pid() == Some(pid) && daemon.restarts() == 1,
        "SIGHUP restarted CRI-O: pid {:?}, restarts {}",
        daemon.pid(),
        daemon.restarts()
    );
    // Reloaded, yet the new handler's pod is refused.
    let name = "reloaded";
    checks::kubectl_input(cluster, &["apply", "-f", "-"], Some(&reloaded_pod(name))).await?;
    let selector = format!("involvedObject.name={name},reason=FailedCreatePodSandBox");
    let refusal = eventually(
        "the new handler's pod refused after the reload",
        Duration::from_secs(60),
        || async {
            let events = kubectl(
                cluster,
                &[
                    "get",
                    "events",
                    "--field-selector",
                    &selector,
                    "-o",
                    "jsonpath={.items[*].message}",
                ],
            )
            .await?;
            Ok((!events.trim().is_empty()).then_some(events))
        },
    )
    .await?;
    ensure!(
        refusal.contains(&format!("failed to find runtime handler {RELOADED}")),
        "CRI-O's reload now reaches RunPodSandbox? the pod's events: {refusal}"
    );

    // A restart takes it: the kubelet's next attempt runs the pod.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    tokio::task::block_in_place(|| daemon.wait_restarted(pid, BACK_WITHIN))
        .context("CRI-O not restarted")?;
    wait_ready(cluster, name).await?;
    let kernel = exec(cluster, name, "uname -r").await?;
    ensure!(kernel.contains("-isola"), "{name}'s kernel: {kernel:?}");
    eprintln!(
        "CRI-O SIGHUP: reloaded in {:.2} s, handler {RELOADED} listed, its pod still refused \
         ({}); after a restart it runs in a VM",
        reloaded.as_secs_f64(),
        refusal.trim()
    );
    checks::sandbox_ids(cluster, name).await
}

/// Nothing mentions the cluster's or the runtime's directory once the cluster is gone, and the
/// Service's nat rules are gone.
fn nothing_left(dirs: &[PathBuf]) -> Result<()> {
    for dir in dirs {
        let procs = isola_tests::processes_mentioning_or_in(&dir.to_string_lossy());
        ensure!(procs.is_empty(), "left running: {procs:?}");
        ensure!(!dir.exists(), "{} is still there", dir.display());
    }
    let nat = std::process::Command::new("iptables")
        .args(["-w", "-t", "nat", "-S"])
        .output()?;
    let rules = String::from_utf8_lossy(&nat.stdout);
    ensure!(
        nat.status.success() && !rules.contains("10.96.0.1/32"),
        "nat rules left: {rules}"
    );
    Ok(())
}

async fn restart(runtime: Runtime) {
    let cluster =
        tokio::task::block_in_place(|| Cluster::start(runtime)).expect("starting the cluster");
    if let Err(e) = restart_runtime(&cluster).await {
        let engine = cluster.engine.as_ref().map(|e| e.log_tail(80));
        panic!(
            "{runtime:?}: {e:#}\n{}\n--- the node's runtime ---\n{}",
            cluster.logs_tail(30),
            engine.unwrap_or_default()
        );
    }
    let mut dirs = vec![cluster.dir().to_path_buf()];
    dirs.extend(cluster.engine.as_ref().map(|e| e.dir().to_path_buf()));
    tokio::task::block_in_place(|| drop(cluster));
    if let Err(e) = nothing_left(&dirs) {
        panic!("{runtime:?}, after the cluster: {e:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_k8s_runtime_restart_on_containerd() {
    restart(Runtime::Containerd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_k8s_runtime_restart_on_crio() {
    restart(Runtime::Crio).await;
}
