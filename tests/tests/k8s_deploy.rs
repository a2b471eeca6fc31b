//! isola installed from the cluster onto a real kubelet's node, on the private containerd and on
//! CRI-O, the two ways a user does it (docs/kubernetes.md):
//!
//! 1. **The plain DaemonSet** (deploy/isola-deploy-rbac.yaml, deploy/isola-deploy.yaml, a
//!    RuntimeClass like deploy/runtimeclass-deploy.yaml): the node is labelled
//!    `isola.io/runtime=ready` with the version and handler annotations, the runtime's
//!    configuration now registers the handler, an isola pod of that RuntimeClass runs under the
//!    installed shim; deleting the DaemonSet (`--cascade=foreground`) restores the
//!    configuration byte for byte, removes the label and the prefix, leaves no process.
//! 2. **The operator** (deploy/isola-operator-crd.yaml, deploy/isola-operator.yaml and an
//!    IsolaConfig): see `operator` below.
//!
//! Each run gets the test node's settings (the runtime's configuration in the cluster's
//! directory, a restart through the supervisor's pidfile, a prefix under the cluster's
//! directory): `isola_tests::cluster::deploy`.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use isola_tests::cluster::checks::{
    eventually, first_container, kubectl, kubectl_input, pod_json, wait_ready,
};
use isola_tests::cluster::deploy::{
    self, config_snapshot, installed_versions, node_labelled, node_metadata, processes_under,
    NodeSettings, HANDLERS_ANNOTATION, LABEL, VERSION_ANNOTATION,
};
use isola_tests::cluster::{Cluster, Runtime};
use serde_json::{json, Value};

/// How long an install or uninstall may take (a runtime restart, `isola check`; TCG host).
const INSTALL_WITHIN: Duration = Duration::from_secs(240);
const NAMESPACE: &str = "kube-system";
/// The installer pods' label selector (deploy/isola-deploy.yaml).
const INSTALLER_PODS: &str = "app.kubernetes.io/name=isola-deploy";

fn repo_file(rel: &str) -> Result<String> {
    let p = isola_tests::repo_root().join(rel);
    std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
}

/// Every YAML document of a manifest, as JSON values.
fn yaml_docs(text: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for d in serde_yaml::Deserializer::from_str(text) {
        let v: Value = serde::Deserialize::deserialize(d)?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

/// Sets the environment variable `name` of the manifest's installer container.
fn set_env(container: &mut Value, name: &str, value: &str) -> Result<()> {
    let env = container["env"]
        .as_array_mut()
        .context("the installer's env")?;
    match env.iter_mut().find(|e| e["name"] == name) {
        Some(e) => *e = json!({"name": name, "value": value}),
        None => env.push(json!({"name": name, "value": value})),
    }
    Ok(())
}

/// deploy/isola-deploy.yaml with the test node's settings and `handlers`; unprivileged with
/// explicit capabilities where the node cannot run a privileged pod.
fn daemonset(cluster: &Cluster, node: &NodeSettings, handlers: &str) -> Result<Value> {
    let mut ds = yaml_docs(&repo_file("deploy/isola-deploy.yaml")?)?
        .pop()
        .context("the DaemonSet")?;
    let c = &mut ds["spec"]["template"]["spec"]["containers"][0];
    set_env(c, "ISOLA_DEPLOY_RUNTIME", node.runtime)?;
    set_env(
        c,
        "ISOLA_DEPLOY_RUNTIME_CONFIG",
        &node.runtime_config.to_string_lossy(),
    )?;
    set_env(c, "ISOLA_DEPLOY_RESTART", &node.restart)?;
    set_env(c, "ISOLA_DEPLOY_PREFIX", &node.prefix.to_string_lossy())?;
    set_env(
        c,
        "ISOLA_DEPLOY_RUNTIME_SOCKET",
        &node.socket.to_string_lossy(),
    )?;
    set_env(c, "ISOLA_DEPLOY_HANDLERS", handlers)?;
    set_env(c, "ISOLA_DEPLOY_HOST_PID", &node.host_pid.to_string())?;
    set_env(c, "ISOLA_DEPLOY_SHIM_DIR", &node.shim_dir.to_string_lossy())?;
    if cluster.runtime == Runtime::Crio {
        // CRI-O refuses to mount this host's / (a private mount) into a container: only the
        // directories the installer touches, at the same places under /host.
        let paths = deploy::host_paths(cluster)?;
        c["volumeMounts"] = json!(paths
            .iter()
            .enumerate()
            .map(|(i, p)| json!({"name": format!("host-{i}"), "mountPath": format!("/host{p}")}))
            .collect::<Vec<_>>());
        ds["spec"]["template"]["spec"]["volumes"] = json!(paths
            .iter()
            .enumerate()
            .map(|(i, p)| json!({"name": format!("host-{i}"), "hostPath": {"path": p, "type": "Directory"}}))
            .collect::<Vec<_>>());
    }
    let c = &mut ds["spec"]["template"]["spec"]["containers"][0];
    if !deploy::privileged_pods_run(cluster) {
        c["securityContext"] = json!({
            "privileged": false,
            "capabilities": {"add": deploy::INSTALLER_CAPABILITIES},
        });
    }
    Ok(ds)
}

/// deploy/runtimeclass-deploy.yaml as `name` for the handler `name`.
fn runtime_class(name: &str) -> Result<Value> {
    let mut rc = yaml_docs(&repo_file("deploy/runtimeclass-deploy.yaml")?)?
        .pop()
        .context("the RuntimeClass")?;
    rc["metadata"]["name"] = json!(name);
    rc["handler"] = json!(name);
    Ok(rc)
}

async fn apply(cluster: &Cluster, objects: &[Value]) -> Result<()> {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
    kubectl_input(cluster, &["apply", "-f", "-"], Some(&list.to_string())).await?;
    Ok(())
}

/// `kubectl -n kube-system <verb> -l <the installer pods> <rest>`'s output, or its error.
async fn on_installer_pods(cluster: &Cluster, verb: &str, rest: &[&str]) -> String {
    let mut args = vec!["-n", NAMESPACE, verb, "-l", INSTALLER_PODS];
    if verb == "get" {
        args.insert(3, "pods");
    }
    args.extend_from_slice(rest);
    kubectl(cluster, &args)
        .await
        .unwrap_or_else(|e| e.to_string())
}

/// The installer pods' logs and states, for failures.
async fn installer_state(cluster: &Cluster) -> String {
    let pods = on_installer_pods(cluster, "get", &["-o", "wide"]).await;
    let logs = on_installer_pods(cluster, "logs", &["--tail=30", "--prefix"]).await;
    let previous =
        on_installer_pods(cluster, "logs", &["--tail=30", "--prefix", "--previous"]).await;
    let waiting = on_installer_pods(
        cluster,
        "get",
        &["-o", "jsonpath={..state.waiting.message}"],
    )
    .await;
    format!("installer pods (waiting: {waiting}):\n{pods}\ntheir logs:\n{logs}\ntheir previous runs' logs:\n{previous}")
}

/// Waits until the node carries the label (or fails with the installer's state).
async fn wait_labelled(cluster: &Cluster) -> Result<()> {
    let r = eventually(
        "the node labelled isola.io/runtime=ready",
        INSTALL_WITHIN,
        || async { Ok(node_labelled(cluster).await?.then_some(())) },
    )
    .await;
    match r {
        Ok(()) => Ok(()),
        Err(e) => Err(e.context(installer_state(cluster).await)),
    }
}

/// An isola pod of `class` runs in a VM started by the installed shim (under `prefix`).
async fn isola_pod_runs(
    cluster: &Cluster,
    name: &str,
    class: &str,
    node: &NodeSettings,
) -> Result<Value> {
    kubectl_input(
        cluster,
        &["apply", "-f", "-"],
        Some(&deploy::pod(name, class)),
    )
    .await?;
    let pod = wait_ready(cluster, name).await?;
    let shims: Vec<_> = processes_under(&node.prefix)
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("containerd-shim-isola-v2"))
        .collect();
    if shims.is_empty() {
        let all: Vec<_> = isola_tests::processes_mentioning("containerd-shim")
            .into_iter()
            .map(|(pid, cmd)| {
                let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
                format!("{pid} {cmd} (exe {})", exe.display())
            })
            .collect();
        bail!(
            "no shim from {} runs the pod {name}; the shims: {all:#?}; the pod: {}",
            node.prefix.display(),
            pod["spec"]
        );
    }
    let uname = kubectl(cluster, &["exec", name, "--", "uname", "-r"]).await?;
    ensure!(
        uname.trim() != isola_tests::containerd::host_kernel_release(),
        "the pod {name} runs on the host's kernel ({uname})"
    );
    Ok(pod)
}

/// Deletes isola pods and waits until they are gone and no process runs from `prefix` any
/// more (a deleted pod's sandbox, its VM and shim, can outlive the pod object: CRI-O removes it
/// at the kubelet's next garbage collection), as a user drains isola pods before uninstalling.
async fn delete_pods(cluster: &Cluster, names: &[&str], prefix: &std::path::Path) -> Result<()> {
    let mut args = vec!["delete", "pod", "--wait=true", "--timeout=120s"];
    args.extend_from_slice(names);
    kubectl(cluster, &args).await?;
    let t0 = std::time::Instant::now();
    eventually(
        "the deleted pods' VMs gone",
        Duration::from_secs(180),
        || async { Ok(processes_under(prefix).is_empty().then_some(())) },
    )
    .await?;
    eprintln!(
        "the deleted pods' VMs were gone {:.1} s after their pods",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What an uninstall leaves: nothing of isola (configuration as before, no label or
/// annotations, no prefix, no process from it).
async fn assert_uninstalled(
    cluster: &Cluster,
    node: &NodeSettings,
    before: &std::collections::BTreeMap<std::path::PathBuf, Vec<u8>>,
) -> Result<()> {
    ensure!(
        config_snapshot(&node.runtime_config)? == *before,
        "the runtime's configuration {} is not what it was before the install",
        node.runtime_config.display()
    );
    let (labels, annotations) = node_metadata(cluster).await?;
    ensure!(
        labels.get(LABEL).is_none(),
        "the label is still there: {labels}"
    );
    for a in [VERSION_ANNOTATION, HANDLERS_ANNOTATION] {
        ensure!(
            annotations.get(a).is_none(),
            "{a} is still there: {annotations}"
        );
    }
    ensure!(
        !node.prefix.exists(),
        "{} is still there",
        node.prefix.display()
    );
    let links: Vec<_> = std::fs::read_dir(&node.shim_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    ensure!(links.is_empty(), "shim links left: {links:?}");
    let left = processes_under(&node.prefix);
    ensure!(left.is_empty(), "processes from the prefix: {left:?}");
    Ok(())
}

/// The installer pods' names (`pod/<name>` lines), empty when there are none.
async fn installer_pods(cluster: &Cluster) -> Result<String> {
    let names = kubectl(
        cluster,
        &[
            "-n",
            NAMESPACE,
            "get",
            "pods",
            "-l",
            INSTALLER_PODS,
            "-o",
            "name",
        ],
    )
    .await?;
    Ok(names.trim().to_string())
}

/// The plain DaemonSet: install, label, a pod, then deletion uninstalls.
async fn plain_daemonset(cluster: &Cluster) -> Result<()> {
    let node = NodeSettings::of(cluster)?;
    let before = config_snapshot(&node.runtime_config)?;
    let rbac = yaml_docs(&repo_file("deploy/isola-deploy-rbac.yaml")?)?;
    let ds = daemonset(cluster, &node, "isola-ds")?;
    let t0 = std::time::Instant::now();
    apply(cluster, &rbac).await?;
    apply(cluster, &[ds.clone(), runtime_class("isola-ds")?]).await?;
    wait_labelled(cluster).await?;
    eprintln!(
        "plain DaemonSet: node labelled after {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let (_, annotations) = node_metadata(cluster).await?;
    let versions = installed_versions(&node.prefix);
    ensure!(versions.len() == 1, "installed versions: {versions:?}");
    ensure!(
        annotations[VERSION_ANNOTATION] == versions[0].as_str(),
        "version annotation {annotations} vs {versions:?}"
    );
    ensure!(
        annotations[HANDLERS_ANNOTATION] == "isola-ds",
        "{annotations}"
    );
    ensure!(
        config_snapshot(&node.runtime_config)? != before,
        "the handler was not registered in {}",
        node.runtime_config.display()
    );
    // The DaemonSet's pod turns Ready once installed (its readinessProbe, every 5 s).
    eventually(
        "the DaemonSet's pod Ready",
        Duration::from_secs(30),
        || async {
            let ready = kubectl(
                cluster,
                &[
                    "-n",
                    NAMESPACE,
                    "get",
                    "ds",
                    "isola-deploy",
                    "-o",
                    "jsonpath={.status.numberReady}",
                ],
            )
            .await?;
            Ok((ready.trim() == "1").then_some(()))
        },
    )
    .await?;

    isola_pod_runs(cluster, "ds-pod", "isola-ds", &node).await?;
    delete_pods(cluster, &["ds-pod"], &node.prefix).await?;

    // The uninstall runs in the terminating pod, whose log goes with it: followed from here.
    let pod_name = installer_pods(cluster).await?;
    let follow = cluster.kubectl_bg(&["-n", NAMESPACE, "logs", "-f", &pod_name])?;
    let t0 = std::time::Instant::now();
    let ds_text = ds.to_string();
    tokio::task::block_in_place(|| {
        cluster.kubectl_ok(
            &[
                "delete",
                "--cascade=foreground",
                "--timeout=300s",
                "-f",
                "-",
            ],
            Some(&ds_text),
        )
    })?;
    eventually("the installer pods gone", INSTALL_WITHIN, || async {
        Ok(installer_pods(cluster).await?.is_empty().then_some(()))
    })
    .await?;
    eprintln!(
        "plain DaemonSet: uninstalled after {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    assert_uninstalled(cluster, &node, &before)
        .await
        .with_context(|| format!("the installer's log:\n{}", follow.stdout_so_far()))?;
    kubectl(cluster, &["delete", "runtimeclass", "isola-ds"]).await?;
    for o in rbac.iter().rev() {
        kubectl_input(cluster, &["delete", "-f", "-"], Some(&o.to_string())).await?;
    }
    Ok(())
}

/// The IsolaConfig `isola` for the test node: `image`, a RuntimeClass per name in `classes`.
fn isola_config(cluster: &Cluster, node: &NodeSettings, image: &str, classes: &[&str]) -> Value {
    let mut spec = json!({
        "image": image,
        "imagePullPolicy": "Never",
        "node": {
            "runtime": node.runtime,
            "runtimeConfig": node.runtime_config,
            "restart": node.restart,
            "runtimeSocket": node.socket,
            "prefix": node.prefix,
            "hostPid": node.host_pid,
            "shimDir": node.shim_dir,
        },
        "runtimeClasses": classes.iter().map(|c| json!({"name": c})).collect::<Vec<_>>(),
    });
    if !deploy::privileged_pods_run(cluster) {
        spec["installer"] = json!({"capabilities": deploy::INSTALLER_CAPABILITIES});
    }
    if cluster.runtime == Runtime::Crio {
        spec["installer"]["hostPaths"] = json!(deploy::host_paths(cluster).unwrap_or_default());
    }
    json!({
        "apiVersion": "isola.io/v1alpha1",
        "kind": "IsolaConfig",
        "metadata": {"name": "isola"},
        "spec": spec,
    })
}

async fn isola_config_json(cluster: &Cluster) -> Result<Value> {
    Ok(serde_json::from_str(
        &kubectl(cluster, &["get", "isolaconfig", "isola", "-o", "json"]).await?,
    )?)
}

/// The status condition `type` of the IsolaConfig: (status, reason, message).
fn condition(config: &Value, type_: &str) -> Option<(String, String, String)> {
    let c = config["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?;
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Some((s("status"), s("reason"), s("message")))
}

/// The operator's state for failures: its status, its log, the installer's.
async fn operator_state(cluster: &Cluster) -> String {
    let status = kubectl(cluster, &["get", "isolaconfig", "isola", "-o", "yaml"])
        .await
        .unwrap_or_else(|e| e.to_string());
    let log = kubectl(
        cluster,
        &[
            "-n",
            NAMESPACE,
            "logs",
            "deploy/isola-operator",
            "--tail=40",
        ],
    )
    .await
    .unwrap_or_else(|e| e.to_string());
    format!(
        "the IsolaConfig:\n{status}\nthe operator's log:\n{log}\n{}",
        installer_state(cluster).await
    )
}

/// Waits for `probe` on the IsolaConfig; fails with the operator's state.
async fn wait_config<T>(
    cluster: &Cluster,
    what: &str,
    probe: impl Fn(&Value) -> Option<T>,
) -> Result<T> {
    let probe = &probe;
    let r = eventually(what, INSTALL_WITHIN, || async move {
        Ok(probe(&isola_config_json(cluster).await?))
    })
    .await;
    match r {
        Ok(v) => Ok(v),
        Err(e) => Err(e.context(operator_state(cluster).await)),
    }
}

fn is_ready(config: &Value) -> bool {
    condition(config, "Ready").is_some_and(|(s, _, _)| s == "True")
        && config["status"]["observedGeneration"] == config["metadata"]["generation"]
}

/// The operator: a failing install reported and not labelled, then an install, a second
/// RuntimeClass, an upgrade under a running pod, and the IsolaConfig's deletion uninstalling.
async fn operator(cluster: &Cluster) -> Result<()> {
    let node = NodeSettings::of(cluster)?;
    let before = config_snapshot(&node.runtime_config)?;
    let rbac = yaml_docs(&repo_file("deploy/isola-deploy-rbac.yaml")?)?;
    let crd = yaml_docs(&repo_file("deploy/isola-operator-crd.yaml")?)?;
    let manifest = yaml_docs(&repo_file("deploy/isola-operator.yaml")?)?;
    apply(cluster, &crd).await?;
    kubectl(
        cluster,
        &[
            "wait",
            "--for=condition=established",
            "--timeout=60s",
            "crd/isolaconfigs.isola.io",
        ],
    )
    .await?;
    apply(cluster, &rbac).await?;
    apply(cluster, &manifest).await?;

    // A failing install: the image's payload has no guest kernel.
    let t0 = std::time::Instant::now();
    apply(
        cluster,
        &[isola_config(
            cluster,
            &node,
            deploy::IMAGE_BROKEN,
            &["isola-op"],
        )],
    )
    .await?;
    let error = wait_config(cluster, "the broken install's error in the status", |c| {
        let e = c["status"]["nodes"][0]["lastError"].as_str()?;
        (e.contains("vmlinux") && !is_ready(c)).then(|| e.to_string())
    })
    .await?;
    eprintln!(
        "operator: the failing install reported after {:.1} s: {error}",
        t0.elapsed().as_secs_f64()
    );
    let config = isola_config_json(cluster).await?;
    let degraded = condition(&config, "Degraded").context("no Degraded condition")?;
    ensure!(degraded.0 == "True", "Degraded: {degraded:?}");
    ensure!(
        !node_labelled(cluster).await?,
        "a node whose install fails is labelled"
    );
    ensure!(
        config_snapshot(&node.runtime_config)? == before,
        "a failed install changed the runtime's configuration"
    );
    kubectl(cluster, &["get", "runtimeclass", "isola-op"]).await?;
    kubectl_input(
        cluster,
        &["apply", "-f", "-"],
        Some(&deploy::pod("op-pod", "isola-op")),
    )
    .await?;
    eventually(
        "the isola pod unschedulable",
        Duration::from_secs(60),
        || async {
            let pod = pod_json(cluster, "op-pod").await?;
            let unschedulable = pod["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "PodScheduled" && c["reason"] == "Unschedulable");
            Ok((unschedulable && pod["spec"]["nodeName"].is_null()).then_some(()))
        },
    )
    .await?;

    // The good image: installed, labelled, and the waiting pod runs.
    let t0 = std::time::Instant::now();
    apply(
        cluster,
        &[isola_config(cluster, &node, deploy::IMAGE, &["isola-op"])],
    )
    .await?;
    wait_config(cluster, "the IsolaConfig Ready", |c| {
        is_ready(c).then_some(())
    })
    .await?;
    eprintln!("operator: Ready after {:.1} s", t0.elapsed().as_secs_f64());
    ensure!(
        node_labelled(cluster).await?,
        "Ready but the node is not labelled"
    );
    wait_ready(cluster, "op-pod").await?;
    let first = first_container(&isola_pod_runs(cluster, "op-pod", "isola-op", &node).await?);

    // A second RuntimeClass.
    let both = ["isola-op", "isola-op2"];
    apply(
        cluster,
        &[isola_config(cluster, &node, deploy::IMAGE, &both)],
    )
    .await?;
    wait_config(cluster, "the second RuntimeClass", |c| {
        (is_ready(c) && c["status"]["runtimeClasses"] == json!(both)).then_some(())
    })
    .await?;
    let (_, annotations) = node_metadata(cluster).await?;
    ensure!(
        annotations[HANDLERS_ANNOTATION] == "isola-op,isola-op2",
        "{annotations}"
    );
    isola_pod_runs(cluster, "op-pod2", "isola-op2", &node).await?;
    ensure!(
        first_container(&pod_json(cluster, "op-pod").await?) == first,
        "the first pod's container changed with the second RuntimeClass"
    );

    // An upgrade: the running pods keep running in the same VMs.
    let (_, annotations) = node_metadata(cluster).await?;
    let v1 = annotations[VERSION_ANNOTATION]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let t0 = std::time::Instant::now();
    apply(
        cluster,
        &[isola_config(cluster, &node, deploy::IMAGE_V2, &both)],
    )
    .await?;
    wait_config(cluster, "the upgrade", |c| {
        (is_ready(c) && c["status"]["nodes"][0]["image"] == deploy::IMAGE_V2).then_some(())
    })
    .await?;
    eprintln!(
        "operator: upgraded after {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let (_, annotations) = node_metadata(cluster).await?;
    let v2 = annotations[VERSION_ANNOTATION]
        .as_str()
        .unwrap_or_default()
        .to_string();
    ensure!(
        v2 != v1 && !v2.is_empty(),
        "the version annotation: {v1} -> {v2}"
    );
    ensure!(
        first_container(&pod_json(cluster, "op-pod").await?) == first,
        "the pod started before the upgrade was restarted"
    );
    kubectl(cluster, &["exec", "op-pod", "--", "true"]).await?;
    eprintln!(
        "kubectl get isolaconfig isola -o yaml:\n{}",
        kubectl(cluster, &["get", "isolaconfig", "isola", "-o", "yaml"]).await?
    );

    // Deleting the IsolaConfig uninstalls everything (its finalizer).
    delete_pods(cluster, &["op-pod", "op-pod2"], &node.prefix).await?;
    let t0 = std::time::Instant::now();
    let deleted = kubectl(
        cluster,
        &["delete", "isolaconfig", "isola", "--timeout=300s"],
    )
    .await;
    if let Err(e) = deleted {
        return Err(e.context(operator_state(cluster).await));
    }
    eprintln!(
        "operator: uninstalled after {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    assert_uninstalled(cluster, &node, &before).await?;
    for class in both {
        let out = tokio::task::block_in_place(|| cluster.kubectl(&["get", "runtimeclass", class]))?;
        ensure!(
            !out.status.success(),
            "the RuntimeClass {class} is still there"
        );
    }
    let out = tokio::task::block_in_place(|| {
        cluster.kubectl(&["-n", NAMESPACE, "get", "daemonset", "isola-deploy"])
    })?;
    ensure!(
        !out.status.success(),
        "the installer DaemonSet is still there"
    );
    for docs in [&manifest, &rbac, &crd] {
        for o in docs.iter().rev() {
            kubectl_input(cluster, &["delete", "-f", "-"], Some(&o.to_string())).await?;
        }
    }
    Ok(())
}

async fn deploy_on(runtime: Runtime) -> Result<()> {
    let cluster = tokio::task::block_in_place(|| Cluster::start(runtime))?;
    tokio::task::block_in_place(|| deploy::import_images(&cluster))?;
    plain_daemonset(&cluster)
        .await
        .context("the plain DaemonSet")?;
    operator(&cluster).await.context("the operator")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_k8s_deploy_on_containerd() -> Result<()> {
    deploy_on(Runtime::Containerd).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_k8s_deploy_on_crio() -> Result<()> {
    deploy_on(Runtime::Crio).await
}
