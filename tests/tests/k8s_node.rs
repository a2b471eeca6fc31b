//! isola on a real Kubernetes node: a single-node 1.32 cluster (tests/src/cluster) with the
//! kubelet on a private containerd, then on CRI-O, isola's RuntimeClass from
//! deploy/runtimeclass.yaml. What a user tries first: a `runtimeClassName: isola` pod runs in
//! its own VM (the guest kernel seen from inside), a pod without it runs under runc on the same
//! node, the RuntimeClass overhead shows in the pod spec and the VM follows requests/limits
//! plus overhead; the `kubernetes` Service answers in-cluster clients from both pods and from
//! the host; then every kubectl feature of [`isola_tests::cluster::checks`] on an isola pod and
//! a runc pod side by side; deleting the pods leaves nothing on the host.
//!
//! The second handler `isola-clh` (Cloud Hypervisor, registered by `isola install --handler
//! isola-clh --hypervisor cloud-hypervisor`) with deploy/runtimeclass-clh.yaml: its pod runs in a
//! Cloud Hypervisor guest where the node has hardware KVM, and elsewhere (this CI) the kubelet
//! reports the refusal with its reason on the pod.
//!
//! One cluster per runtime serves the whole test (a cluster start costs seconds); the two
//! runtimes' clusters take turns (one node per host).

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use isola_tests::cluster::{checks, Cluster, Runtime};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};

const NS: &str = "default";

/// A pod running `command` in the test image, with `runtime_class` if given.
fn pod(
    name: &str,
    runtime_class: Option<&str>,
    command: &[&str],
    resources: serde_json::Value,
) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "runtimeClassName": runtime_class,
            "terminationGracePeriodSeconds": 2,
            "containers": [{
                "name": "main",
                "image": isola_tests::containerd::TEST_IMAGE,
                "imagePullPolicy": "Never",
                "command": command,
                "resources": resources,
            }],
        }
    }))
    .expect("a pod")
}

async fn wait_running(pods: &Api<Pod>, name: &str) -> Result<Pod> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let p = pods.get(name).await?;
        let phase = p
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        match phase.as_str() {
            "Running" => return Ok(p),
            "Failed" | "Succeeded" => bail!("pod {name} is {phase}: {:?}", p.status),
            _ => {}
        }
        if Instant::now() > deadline {
            bail!("pod {name} is not Running after 180 s: {:?}", p.status);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn out(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

async fn node(runtime: Runtime) {
    let cluster =
        tokio::task::block_in_place(|| Cluster::start(runtime)).expect("starting the cluster");
    let mut result = runtimeclass(&cluster).await.context("RuntimeClass");
    if result.is_ok() {
        result = second_handler(&cluster)
            .await
            .context("the isola-clh handler");
    }
    if result.is_ok() {
        result = checks::workloads(&cluster).await;
    }
    if let Err(e) = result {
        let engine = cluster.engine.as_ref().map(|e| e.log_tail(60));
        if let Some(e) = cluster.engine.as_ref() {
            let kept = std::env::temp_dir().join(format!("isola-k8s-{runtime:?}-runtime.log"));
            if std::fs::write(&kept, e.log_tail(usize::MAX)).is_ok() {
                eprintln!("the node runtime's whole log: {}", kept.display());
            }
        }
        panic!(
            "{runtime:?}: {e:#}\n{}\n--- the node's runtime ---\n{}",
            cluster.logs_tail(30),
            engine.unwrap_or_default()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_k8s_node_on_containerd() {
    node(Runtime::Containerd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_k8s_node_on_crio() {
    node(Runtime::Crio).await;
}

async fn runtimeclass(cluster: &Cluster) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(cluster.client().await?, NS);
    let sleeper = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"];
    let limits = serde_json::json!({"limits": {"cpu": "1", "memory": "128Mi"}});
    pods.create(
        &PostParams::default(),
        &pod("in-vm", Some("isola"), &sleeper, limits),
    )
    .await
    .context("creating the isola pod")?;
    pods.create(
        &PostParams::default(),
        &pod("in-runc", None, &sleeper, serde_json::json!({})),
    )
    .await
    .context("creating the runc pod")?;
    let vm = wait_running(&pods, "in-vm").await?;
    wait_running(&pods, "in-runc").await?;

    // The RuntimeClass's overhead is in the pod spec.
    let overhead = vm
        .spec
        .as_ref()
        .and_then(|s| s.overhead.clone())
        .context("no overhead")?;
    ensure!(
        overhead.contains_key("memory") && overhead.contains_key("cpu"),
        "{overhead:?}"
    );

    // The guest kernel inside, the node's kernel under runc.
    let uname = |name: &str| cluster.kubectl(&["exec", name, "--", "uname", "-r"]);
    let in_vm = out(&uname("in-vm")?);
    let in_runc = out(&uname("in-runc")?);
    ensure!(
        in_vm.contains("-isola"),
        "the isola pod's kernel: {in_vm:?}"
    );
    ensure!(
        !in_runc.contains("-isola") && !in_runc.is_empty(),
        "the runc pod's kernel: {in_runc:?}"
    );

    // The VM follows the limits (1 CPU, 128 MiB) plus isola's configured overhead.
    let cpus = out(&cluster.kubectl(&[
        "exec",
        "in-vm",
        "--",
        "grep",
        "-c",
        "^processor",
        "/proc/cpuinfo",
    ])?);
    ensure!(
        cpus.trim() == "2",
        "vCPUs of a pod limited to 1 CPU: {cpus:?}"
    );

    for name in ["in-runc", "in-vm"] {
        service_from_pod(cluster, name)
            .with_context(|| format!("the kubernetes Service from pod {name}"))?;
    }
    service_from_host(cluster)
        .await
        .context("the kubernetes Service from the host")?;

    for name in ["in-vm", "in-runc"] {
        pods.delete(name, &DeleteParams::default()).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while !pods.list(&Default::default()).await?.items.is_empty() {
        ensure!(Instant::now() < deadline, "pods not deleted after 120 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

/// What an in-cluster client does, with the test image's tools: the Service's address from the
/// environment the kubelet gives, a TCP connection to it, then an HTTPS request with the pod's
/// service-account token (busybox's `ssl_client` speaks TLS over the socket `nc -e` hands it;
/// it checks no certificate, [`service_from_host`] does): a SelfSubjectReview, which any
/// authenticated user may create, answers with the user the token names.
const IN_CLUSTER_CLIENT: &str = r#"
echo "service=$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"
nc -w 10 "$KUBERNETES_SERVICE_HOST" "$KUBERNETES_SERVICE_PORT" -e true && echo tcp-connected
TOKEN=$(cat /var/run/secrets/kubernetes.io/serviceaccount/token)
BODY='{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}'
printf 'POST /apis/authentication.k8s.io/v1/selfsubjectreviews HTTP/1.0\r\nHost: kubernetes.default.svc\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %s\r\n\r\n%s' "$TOKEN" "${#BODY}" "$BODY" > /tmp/request
nc -w 10 "$KUBERNETES_SERVICE_HOST" "$KUBERNETES_SERVICE_PORT" -e sh -c 'exec 3<&0 4>&1 </tmp/request >/tmp/response; exec ssl_client -s 4 -r 3 -n kubernetes.default.svc'
echo "--- response"
cat /tmp/response
"#;

/// Pod `name` reaches the apiserver through the `kubernetes` Service and is authenticated as its
/// service account.
fn service_from_pod(cluster: &Cluster, name: &str) -> Result<()> {
    let (ip, port) = cluster.service_address();
    let o = cluster.kubectl(&["exec", name, "--", "sh", "-c", IN_CLUSTER_CLIENT])?;
    let text = out(&o);
    ensure!(
        text.contains(&format!("service={ip}:{port}\n")),
        "the kubelet's KUBERNETES_SERVICE_HOST/PORT: {text:?}"
    );
    ensure!(
        text.contains("tcp-connected\n"),
        "no TCP connection to {ip}:{port}: {text:?} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let response = text.split("--- response\n").nth(1).unwrap_or_default();
    let status = response.lines().next().unwrap_or_default();
    ensure!(
        status.starts_with("HTTP/1.") && status.contains(" 201 "),
        "the SelfSubjectReview over HTTPS: {response:?} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    ensure!(
        response.contains("\"username\":\"system:serviceaccount:default:default\""),
        "the token's user: {response:?}"
    );
    eprintln!("pod {name}: HTTPS to {ip}:{port} with its token: {status}");
    Ok(())
}

/// The host (OUTPUT path) reaches the apiserver at the Service's address, and the apiserver's
/// certificate is valid for that address (rustls checks the IP SAN).
async fn service_from_host(cluster: &Cluster) -> Result<()> {
    let (ip, port) = cluster.service_address();
    let kc = kube::config::Kubeconfig::read_from(cluster.kubeconfig())?;
    let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    config.cluster_url = format!("https://{ip}:{port}").parse()?;
    let client = kube::Client::try_from(config)?;
    let version = client
        .apiserver_version()
        .await
        .with_context(|| format!("GET https://{ip}:{port}/version"))?;
    ensure!(version.minor == "32", "{version:?}");
    Ok(())
}

/// The pod events' messages.
fn pod_events(cluster: &Cluster, name: &str) -> Result<String> {
    let selector = format!("involvedObject.name={name}");
    let o = cluster.kubectl(&[
        "get",
        "events",
        "--field-selector",
        &selector,
        "-o",
        "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
    ])?;
    Ok(out(&o))
}

async fn second_handler(cluster: &Cluster) -> Result<()> {
    let rc = isola_tests::repo_root().join("deploy/runtimeclass-clh.yaml");
    let applied = cluster.kubectl(&["apply", "-f", &rc.to_string_lossy()])?;
    ensure!(applied.status.success(), "kubectl apply: {}", out(&applied));
    let pods: Api<Pod> = Api::namespaced(cluster.client().await?, NS);
    let sleeper = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"];
    pods.create(
        &PostParams::default(),
        &pod("in-clh", Some("isola-clh"), &sleeper, serde_json::json!({})),
    )
    .await
    .context("creating the isola-clh pod")?;
    let host = isola_hypervisor::accel::probe_host().await;
    match isola_hypervisor::accel::cloud_hypervisor_problem(&host.cpuinfo, host.kvm_openable) {
        None => {
            wait_running(&pods, "in-clh").await?;
            let uname = out(&cluster.kubectl(&["exec", "in-clh", "--", "uname", "-r"])?);
            ensure!(
                uname.contains("-isola"),
                "the isola-clh pod's kernel: {uname:?}"
            );
        }
        Some(reason) => {
            eprintln!("no hardware KVM on this node: the isola-clh pod must be refused ({reason})");
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let events = pod_events(cluster, "in-clh")?;
                if events.contains("FailedCreatePodSandBox")
                    && events.contains("Cloud Hypervisor needs hardware KVM")
                {
                    break;
                }
                ensure!(
                    Instant::now() < deadline,
                    "no FailedCreatePodSandBox event with the reason after 120 s; events:\n{events}"
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let phase = pods.get("in-clh").await?.status.and_then(|s| s.phase);
            ensure!(phase.as_deref() == Some("Pending"), "{phase:?}");
        }
    }
    pods.delete("in-clh", &DeleteParams::default()).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !pods.list(&Default::default()).await?.items.is_empty() {
        ensure!(
            Instant::now() < deadline,
            "the isola-clh pod not deleted after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}
