//! What a user tries first on a node with isola, each check run on an isola pod and on a runc
//! pod of the same node ([`workload`]): kubectl logs (`-f`, `--previous`), exec (`-it` in a
//! terminal), attach, cp, port-forward, the kubelet's summary stats, probes, restarts, an init
//! container and two app containers sharing an emptyDir, hostPath, ConfigMap and Secret (and
//! their updates), the downward API, pod-to-pod traffic, graceful termination, and nothing left
//! on the host once the pods are deleted.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{ListPodSandboxRequest, PodSandboxFilter};
use serde_json::Value;

use super::workload::{self, Class, CLASSES};
use super::Cluster;

/// How long a pod may take to become Ready (two VMs boot at once under TCG).
const READY_TIMEOUT: Duration = Duration::from_secs(240);

/// `kubectl <args>` (blocking, off the async workers), failing with its output.
pub async fn kubectl(cluster: &Cluster, args: &[&str]) -> Result<String> {
    kubectl_input(cluster, args, None).await
}

/// `kubectl <args>` with `input` on stdin.
pub async fn kubectl_input(
    cluster: &Cluster,
    args: &[&str],
    input: Option<&str>,
) -> Result<String> {
    tokio::task::block_in_place(|| cluster.kubectl_ok(args, input))
}

/// `kubectl exec <pod> -c <container> -- <cmd>`'s stdout.
async fn exec(cluster: &Cluster, pod: &str, container: &str, cmd: &[&str]) -> Result<String> {
    let mut args = vec!["exec", pod, "-c", container, "--"];
    args.extend_from_slice(cmd);
    kubectl(cluster, &args).await
}

/// `kubectl get pod <name> -o json`.
pub async fn pod_json(cluster: &Cluster, name: &str) -> Result<Value> {
    let out = kubectl(cluster, &["get", "pod", name, "-o", "json"]).await?;
    Ok(serde_json::from_str(&out)?)
}

/// (container id, restart count) of a pod's first container: the same two after an event
/// mean the container was neither replaced nor restarted.
pub fn first_container(pod: &Value) -> (String, u64) {
    let c = &pod["status"]["containerStatuses"][0];
    (
        c["containerID"].as_str().unwrap_or_default().to_string(),
        c["restartCount"].as_u64().unwrap_or(u64::MAX),
    )
}

/// The restart count of `container` in a pod's status.
fn restarts(pod: &Value, container: &str) -> u64 {
    pod["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == container)
        .and_then(|c| c["restartCount"].as_u64())
        .unwrap_or(0)
}

/// Polls `probe` every 250 ms until it yields a value; fails after `timeout` with the last
/// error.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        match probe().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() > deadline {
            bail!("{what}: not after {timeout:?} (last error: {last})");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Polls `left` (what is still there) until it is empty; fails after `timeout` naming what
/// was still there.
pub async fn eventually_none(
    what: &str,
    timeout: Duration,
    left: impl Fn() -> Vec<String>,
) -> Result<()> {
    eventually(what, timeout, || {
        let left = left();
        async move {
            if left.is_empty() {
                Ok(Some(()))
            } else {
                bail!("still there: {}", left.join("; "))
            }
        }
    })
    .await
}

/// Waits until pod `name` is Ready; returns its JSON (or fails with what kubectl describes).
pub async fn wait_ready(cluster: &Cluster, name: &str) -> Result<Value> {
    let ready = poll_ready(cluster, name).await;
    if ready.is_err() {
        let describe = kubectl(cluster, &["describe", "pod", name]).await;
        let logs = kubectl(cluster, &["logs", name, "--all-containers"]).await;
        let logs: Vec<String> = logs
            .unwrap_or_else(|e| format!("{e:#}"))
            .lines()
            .filter(|l| !l.starts_with("tick "))
            .map(str::to_string)
            .collect();
        return ready.with_context(|| format!("{describe:#?}\nlogs (ticks left out): {logs:#?}"));
    }
    ready
}

async fn poll_ready(cluster: &Cluster, name: &str) -> Result<Value> {
    eventually(&format!("pod {name} Ready"), READY_TIMEOUT, || async {
        let pod = pod_json(cluster, name).await?;
        let ready = pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        if pod["status"]["phase"] == "Failed" {
            bail!("pod {name} failed: {}", pod["status"]);
        }
        Ok(ready.then_some(pod))
    })
    .await
}

/// The CRI sandbox ids of pod `name` (what the leak check looks for on the host).
pub async fn sandbox_ids(cluster: &Cluster, name: &str) -> Result<Vec<String>> {
    let engine = cluster.engine.as_ref().context("no runtime")?;
    let mut client = RuntimeServiceClient::new(crate::cri::connect(engine.socket()).await?);
    let filter = PodSandboxFilter {
        label_selector: [("io.kubernetes.pod.name".to_string(), name.to_string())].into(),
        ..Default::default()
    };
    let items = client
        .list_pod_sandbox(ListPodSandboxRequest {
            filter: Some(filter),
        })
        .await?
        .into_inner()
        .items;
    Ok(items.into_iter().map(|p| p.id).collect())
}

/// Runs every check; the pods are created here and deleted at the end.
pub async fn workloads(cluster: &Cluster) -> Result<()> {
    let interfaces_before = crate::cri_leaks::host_interfaces();
    kubectl_input(
        cluster,
        &["apply", "-f", "-"],
        Some(&workload::config_objects("v1")),
    )
    .await?;
    let t0 = Instant::now();
    for class in CLASSES {
        let host = class.host_dir(cluster.dir());
        std::fs::create_dir_all(&host)?;
        std::fs::write(host.join("from-host"), format!("host-{}\n", class.name()))?;
        let yaml = format!(
            "{}---\n{}",
            workload::full_pod(class, &host),
            workload::crasher_pod(class)
        );
        kubectl_input(cluster, &["apply", "-f", "-"], Some(&yaml)).await?;
    }
    let mut ips = Vec::new();
    for class in CLASSES {
        let pod = wait_ready(cluster, &class.full_pod()).await?;
        eprintln!(
            "{} Ready after {:.1} s",
            class.full_pod(),
            t0.elapsed().as_secs_f64()
        );
        ips.push(
            pod["status"]["podIP"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    let sandboxes = sandbox_ids(cluster, &Class::Isola.full_pod()).await?;
    ensure!(!sandboxes.is_empty(), "no CRI sandbox for the isola pod");

    for class in CLASSES {
        let ctx = |what: &str| format!("{what} ({} pod)", class.name());
        volumes(cluster, class).await.context(ctx("volumes"))?;
        logs(cluster, class).await.context(ctx("kubectl logs"))?;
        exec_tty(cluster, class).context(ctx("kubectl exec -it"))?;
        attach(cluster, class).context(ctx("kubectl attach"))?;
        copy(cluster, class).await.context(ctx("kubectl cp"))?;
        port_forward(cluster, class).context(ctx("kubectl port-forward"))?;
        stats(cluster, class).await.context(ctx("summary stats"))?;
    }
    pod_to_pod(cluster, &ips).await.context("pod-to-pod")?;
    config_updates(cluster)
        .await
        .context("ConfigMap/Secret updates")?;
    for class in CLASSES {
        let ctx = |what: &str| format!("{what} ({} pod)", class.name());
        probes(cluster, class).await.context(ctx("probes"))?;
        crash_restarts(cluster, class)
            .await
            .context(ctx("restarts"))?;
    }
    termination(cluster).await.context("graceful termination")?;

    // The pod's VM and its daemons end with the pod: the shim stops the VM once the sandbox
    // container and every process have exited (StopPodSandbox), with either engine.
    let engine = cluster.engine.as_ref().context("no runtime")?;
    const VM_PARTS: [&str; 4] = [
        "qemu-system-x86",
        "cloud-hyperviso",
        "virtiofsd",
        "vhost-device-vs",
    ];
    for id in &sandboxes {
        eventually_none("the isola pod's VM gone", Duration::from_secs(30), || {
            crate::cri_leaks::pod_processes(id)
                .into_iter()
                .filter(|(pid, _)| VM_PARTS.contains(&crate::comm(*pid).as_str()))
                .map(|(pid, cmd)| format!("{pid}: {cmd}"))
                .collect()
        })
        .await?;
    }
    // Nothing else of it is left either. CRI-O deletes the containers, and so lets the shim
    // exit, only at RemovePodSandbox, which the kubelet sends from its garbage collection (once
    // a minute): the shim of a deleted pod can outlive it by up to about a minute there.
    let (dir, state, pid) = (engine.dir(), engine.state_dir(), engine.pid());
    for id in sandboxes {
        eventually_none(
            "the isola pod's leftovers gone",
            Duration::from_secs(120),
            || crate::cri_leaks::pod_leftovers(dir, state, &id, pid, &interfaces_before),
        )
        .await?;
    }
    Ok(())
}

/// init + emptyDir shared by two containers, ConfigMap, Secret, downward API, hostPath.
async fn volumes(cluster: &Cluster, class: Class) -> Result<()> {
    let pod = class.full_pod();
    let pod = pod.as_str();
    let read = |path: &'static str| async move { exec(cluster, pod, "web", &["cat", path]).await };
    ensure!(read("/shared/init.txt").await? == "from-init\n", "init");
    // The side container replaces the file by a rename, so a read sees all of it or none.
    let side = eventually("side.txt", Duration::from_secs(20), || async {
        Ok(Some(read("/shared/side.txt").await?))
    })
    .await?;
    ensure!(side == "from-init\n", "the side container's file: {side:?}");
    ensure!(read("/etc/config/greeting").await? == "v1", "ConfigMap");
    ensure!(read("/etc/secret/password").await? == "v1", "Secret");
    ensure!(read("/etc/podinfo/name").await? == pod, "downward name");
    let labels = read("/etc/podinfo/labels").await?;
    ensure!(
        labels.contains(&format!("class=\"{}\"", class.name())),
        "{labels:?}"
    );
    let env = exec(cluster, pod, "web", &["sh", "-c", "echo $POD_NAME"]).await?;
    ensure!(env.trim() == pod, "POD_NAME={env:?}");
    // hostPath both ways.
    let from_host = read("/host/from-host").await?;
    ensure!(
        from_host == format!("host-{}\n", class.name()),
        "{from_host:?}"
    );
    exec(
        cluster,
        pod,
        "web",
        &["sh", "-c", "echo from-pod > /host/from-pod"],
    )
    .await?;
    let back = std::fs::read_to_string(class.host_dir(cluster.dir()).join("from-pod"))?;
    ensure!(back == "from-pod\n", "{back:?}");
    Ok(())
}

/// `kubectl logs` and `kubectl logs -f`.
async fn logs(cluster: &Cluster, class: Class) -> Result<()> {
    let pod = class.full_pod();
    let all = kubectl(cluster, &["logs", &pod, "-c", "web"]).await?;
    ensure!(all.contains("tick 1\n"), "{all:?}");
    let mut follow = cluster.kubectl_bg(&["logs", "-f", "--tail=1", &pod, "-c", "web"])?;
    let seen = tokio::task::block_in_place(|| {
        follow.wait_for_stdout(Duration::from_secs(30), |s| s.matches("tick").count() >= 3)
    });
    let n: Vec<u64> = seen
        .lines()
        .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
        .collect();
    ensure!(
        n.windows(2).all(|w| w[1] == w[0] + 1),
        "followed lines out of order: {seen:?}"
    );
    Ok(())
}

/// `kubectl exec -it` in a terminal (util-linux `script` gives kubectl one); the process runs
/// under the container's RuntimeDefault seccomp filter, as the container does.
fn exec_tty(cluster: &Cluster, class: Class) -> Result<()> {
    let kubectl = super::bin_dir()?.join("kubectl");
    let line = format!(
        "{} exec -it {} -c web -- sh -c 'tty; stty size; sed -n \"s/^Seccomp:[[:space:]]*/seccomp=/p\" /proc/self/status; echo in-a-tty'",
        kubectl.display(),
        class.full_pod()
    );
    let mut cmd = Command::new("script");
    cmd.env("KUBECONFIG", cluster.kubeconfig())
        .args(["-qec", &line, "/dev/null"]);
    let out = crate::ctr_child::run_with_deadline(&mut cmd, None, Duration::from_secs(60))
        .map_err(anyhow::Error::msg)?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && text.contains("/dev/pts/") && text.contains("in-a-tty"),
        "{}",
        crate::containerd::describe(&out)
    );
    // Seccomp mode 2: a filter (0 would be none: an exec escaping the container's profile).
    // Printed as one word: the terminal may turn the status file's tab into anything, and a
    // line may start with a stray NUL from the pty.
    ensure!(
        text.contains("seccomp=2") && !text.contains("seccomp=0"),
        "the exec'd process has no seccomp filter:\n{text}"
    );
    Ok(())
}

/// `kubectl attach -i` to a container reading its stdin.
fn attach(cluster: &Cluster, class: Class) -> Result<()> {
    let pod = class.full_pod();
    let mut child = cluster.kubectl_bg_input(
        &["attach", "-i", &pod, "-c", "echoer"],
        format!("hello-{}\n", class.name()).into_bytes(),
    )?;
    let want = format!("got:hello-{}", class.name());
    child.wait_for_stdout(Duration::from_secs(60), |s| s.contains(&want));
    Ok(())
}

/// `kubectl cp` into the pod and back out.
async fn copy(cluster: &Cluster, class: Class) -> Result<()> {
    let pod = class.full_pod();
    let dir = cluster.dir().join(format!("cp-{}", class.name()));
    std::fs::create_dir_all(&dir)?;
    let data = crate::ctr_child::pseudo_random_bytes(300 << 10, 11);
    std::fs::write(dir.join("in.bin"), &data)?;
    let local = dir.join("in.bin").display().to_string();
    let remote = format!("{pod}:/tmp/cp.bin");
    kubectl(cluster, &["cp", &local, &remote, "-c", "web"]).await?;
    let sum = exec(cluster, &pod, "web", &["md5sum", "/tmp/cp.bin"]).await?;
    ensure!(sum.starts_with(&md5_hex(&data)), "in the pod: {sum}");
    let out = dir.join("out.bin").display().to_string();
    kubectl(cluster, &["cp", &remote, &out, "-c", "web"]).await?;
    ensure!(
        std::fs::read(&out)? == data,
        "the copy back differs from the original"
    );
    Ok(())
}

/// The md5 of `data` as busybox md5sum prints it (computed by the host's md5sum).
fn md5_hex(data: &[u8]) -> String {
    let out = crate::ctr_child::run_with_deadline(
        &mut Command::new("md5sum"),
        Some(data.to_vec()),
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("md5sum: {e}"));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// `kubectl port-forward pod/<name> :8080` and an HTTP GET through it.
///
/// On CRI-O the isola pod gets an empty answer: CRI-O 1.32 serves PortForward for
/// `runtime_type = "vm"` handlers with a function that returns at once (runtime_vm.go,
/// `PortForwardContainer`), without dialing anything or calling the shim, so nothing isola
/// does reaches it (Kata on CRI-O is in the same place). The check asserts exactly that, so
/// that a CRI-O that forwards shows up here.
fn port_forward(cluster: &Cluster, class: Class) -> Result<()> {
    let crio_vm = cluster.runtime == super::Runtime::Crio && class == Class::Isola;
    let target = format!("pod/{}", class.full_pod());
    let mut child = cluster.kubectl_bg(&["port-forward", &target, ":8080"])?;
    let out = child.wait_for_stdout(Duration::from_secs(30), |s| s.contains("Forwarding from"));
    let port: u16 = out
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix("Forwarding from 127.0.0.1:")?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .with_context(|| format!("no port in {out:?}"))?;
    let exchange = || -> std::io::Result<String> {
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", port))?;
        conn.set_read_timeout(Some(Duration::from_secs(30)))?;
        conn.write_all(b"GET /healthz HTTP/1.0\r\n\r\n")?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer)?;
        Ok(answer)
    };
    for _ in 0..3 {
        let answer = exchange();
        if crio_vm {
            // Nothing forwarded: kubectl closes the local connection, with a FIN or a RST.
            let nothing = match &answer {
                Ok(a) => a.is_empty(),
                Err(e) => matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::BrokenPipe
                ),
            };
            ensure!(nothing, "CRI-O forwarded to a VM pod: {answer:?}");
            eprintln!("port-forward to the isola pod on CRI-O: no data (CRI-O's VM runtime type does not forward)");
            continue;
        }
        let answer = answer?;
        ensure!(
            answer.starts_with("HTTP/1.") && answer.ends_with("\r\n\r\nok\n"),
            "{answer:?}"
        );
    }
    Ok(())
}

/// The kubelet's summary API (what `kubectl top` and the metrics server read) has the pod's
/// containers with CPU and memory.
async fn stats(cluster: &Cluster, class: Class) -> Result<()> {
    let pod = class.full_pod();
    let path = format!("/api/v1/nodes/{}/proxy/stats/summary", super::NODE);
    let summary = eventually("stats in the summary", Duration::from_secs(60), || async {
        let s: Value = serde_json::from_str(&kubectl(cluster, &["get", "--raw", &path]).await?)?;
        let p = s["pods"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["podRef"]["name"] == pod.as_str())
            .cloned();
        let has_web = p.as_ref().is_some_and(|p| {
            p["containers"].as_array().into_iter().flatten().any(|c| {
                c["name"] == "web"
                    && c["memory"]["workingSetBytes"].as_u64().unwrap_or(0) > 0
                    && c["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap_or(0) > 0
            })
        });
        Ok(p.filter(|_| has_web))
    })
    .await?;
    let mib = |v: &Value| v.as_u64().unwrap_or(0) as f64 / (1024.0 * 1024.0);
    eprintln!(
        "{pod}: the kubelet sees memory working set {:.1} MiB (pod), web {:.1} MiB",
        mib(&summary["memory"]["workingSetBytes"]),
        summary["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == "web")
            .map(|c| mib(&c["memory"]["workingSetBytes"]))
            .unwrap_or(0.0)
    );
    Ok(())
}

/// Each pod reaches the other's HTTP server by pod IP (busybox nc: Debian's static busybox
/// `wget` crashes in glibc's resolver, under runc too).
async fn pod_to_pod(cluster: &Cluster, ips: &[String]) -> Result<()> {
    for (i, class) in CLASSES.iter().enumerate() {
        let other = &ips[(i + 1) % ips.len()];
        let get = format!("printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' | nc -w 10 {other} 8080");
        let got = exec(cluster, &class.full_pod(), "web", &["sh", "-c", &get]).await?;
        ensure!(
            got.starts_with("HTTP/1.") && got.ends_with("\r\n\r\nok\n"),
            "{} pod fetching http://{other}:8080/healthz: {got:?}",
            class.name()
        );
    }
    Ok(())
}

/// A new ConfigMap and Secret reach both pods' mounted files.
async fn config_updates(cluster: &Cluster) -> Result<()> {
    kubectl_input(
        cluster,
        &["apply", "-f", "-"],
        Some(&workload::config_objects("v2")),
    )
    .await?;
    for class in CLASSES {
        let pod = class.full_pod();
        eventually(
            &format!("v2 in {pod}"),
            Duration::from_secs(120),
            || async {
                let c = exec(cluster, &pod, "web", &["cat", "/etc/config/greeting"]).await?;
                let s = exec(cluster, &pod, "web", &["cat", "/etc/secret/password"]).await?;
                Ok((c == "v2" && s == "v2").then_some(()))
            },
        )
        .await?;
    }
    Ok(())
}

/// Breaking the exec liveness probe restarts `web`; the readiness probe (HTTP) follows.
async fn probes(cluster: &Cluster, class: Class) -> Result<()> {
    let pod = class.full_pod();
    let before = restarts(&pod_json(cluster, &pod).await?, "web");
    exec(cluster, &pod, "web", &["rm", "/www/healthz"]).await?;
    eventually(
        "a restart by the liveness probe",
        Duration::from_secs(90),
        || async {
            let p = pod_json(cluster, &pod).await?;
            Ok((restarts(&p, "web") > before).then_some(()))
        },
    )
    .await?;
    wait_ready(cluster, &pod).await?;
    let previous = kubectl(cluster, &["logs", "--previous", &pod, "-c", "web"]).await?;
    ensure!(previous.contains("tick 0\n"), "{previous:?}");
    Ok(())
}

/// A crashing container is restarted; `--previous` shows the run before.
async fn crash_restarts(cluster: &Cluster, class: Class) -> Result<()> {
    let pod = class.crasher_pod();
    eventually("a restart", Duration::from_secs(120), || async {
        Ok((restarts(&pod_json(cluster, &pod).await?, "main") >= 1).then_some(()))
    })
    .await?;
    eventually("--previous logs", Duration::from_secs(30), || async {
        let out = kubectl(cluster, &["logs", "--previous", &pod]).await?;
        Ok(out.starts_with("run-").then_some(()))
    })
    .await?;
    let last_state = &pod_json(cluster, &pod).await?["status"]["containerStatuses"][0]["lastState"]
        ["terminated"];
    ensure!(last_state["exitCode"] == 3, "{last_state}");
    Ok(())
}

/// Deleting the pods delivers SIGTERM (the trap writes into the hostPath) well within the
/// grace period.
async fn termination(cluster: &Cluster) -> Result<()> {
    let t0 = Instant::now();
    let names: Vec<String> = CLASSES
        .iter()
        .flat_map(|c| [c.full_pod(), c.crasher_pod()])
        .collect();
    let mut args = vec!["delete", "pod", "--wait=true", "--timeout=120s"];
    args.extend(names.iter().map(String::as_str));
    kubectl(cluster, &args).await?;
    let took = t0.elapsed();
    for class in CLASSES {
        let term =
            std::fs::read_to_string(class.host_dir(cluster.dir()).join("term")).unwrap_or_default();
        ensure!(
            term == "got-TERM\n",
            "{} pod: no SIGTERM seen: {term:?}",
            class.name()
        );
    }
    ensure!(
        took < Duration::from_secs(40),
        "deleting took {took:?}, about the whole 45 s grace period: SIGTERM did not end the pod"
    );
    let left: BTreeSet<String> = kubectl(cluster, &["get", "pods", "-o", "name"])
        .await?
        .lines()
        .map(str::to_string)
        .collect();
    ensure!(left.is_empty(), "pods left: {left:?}");
    Ok(())
}
