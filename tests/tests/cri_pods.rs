//! Kubernetes pods through containerd's CRI API (tests/src/cri.rs): a whole pod — pause
//! container and app containers — in one VM, sharing the pod's UTS, IPC and network namespaces,
//! with CRI's mounts (hostname, hosts, resolv.conf, /dev/shm), hostPath-style binds (rw and ro),
//! an emptyDir-style volume living in the guest, logs in each container's CRI log file,
//! ExecSync and streaming Exec, and nothing left on the host after StopPodSandbox +
//! RemovePodSandbox.
//!
//! Tests that boot a VM are `vm_*` (nextest runs them one at a time); one pod serves many
//! assertions to keep the file's running time modest.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use isola_tests::cri::{ContainerOptions, CriEnv, PodOptions, ISOLA, RUNC};

const LOG_WAIT: Duration = Duration::from_secs(30);

/// A container that logs one line to each stream, then sleeps (and ends on SIGTERM).
fn logger(name: &str) -> ContainerOptions {
    ContainerOptions::cmd(&[
        "sh",
        "-c",
        &format!(
            "echo {name}-says-out; echo {name}-says-err >&2; trap 'exit 0' TERM; \
             while :; do sleep 1; done"
        ),
    ])
}

/// The namespace of `kind` (`uts`, `ipc`, `pid`, `net`) a process exec'd in `cid` sees.
async fn ns(cri: &CriEnv, cid: &str, kind: &str) -> Result<String> {
    Ok(cri
        .exec_ok(cid, &["readlink", &format!("/proc/self/ns/{kind}")])
        .await?
        .trim()
        .to_string())
}

/// A host directory for hostPath- or emptyDir-style volumes, inside the private containerd
/// directory (removed with it).
fn host_dir(cri: &CriEnv, rel: &str) -> Result<std::path::PathBuf> {
    let d = cri.engine.dir().join("volumes").join(rel);
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}

fn listing(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_cri_pod_runs_two_containers_in_one_vm() {
    let cri = CriEnv::start().await.expect("starting containerd");
    let result = two_containers_in_one_vm(&cri).await;
    cri.check(result);
}

async fn two_containers_in_one_vm(cri: &CriEnv) -> Result<()> {
    let rw = host_dir(cri, "rw")?;
    let ro = host_dir(cri, "ro")?;
    std::fs::write(ro.join("given"), "from-host\n")?;
    let empty = host_dir(cri, "pods/uid-1/volumes/kubernetes.io~empty-dir/scratch")?;

    let pod = cri
        .run_pod(
            "duo",
            ISOLA,
            PodOptions {
                hostname: Some("isola-pod".into()),
                ..Default::default()
            },
        )
        .await?;
    let a = cri
        .create_start_container(
            &pod,
            "alpha",
            logger("alpha")
                .mount(&rw, "/data", false)
                .mount(&ro, "/config", true)
                .mount(&empty, "/scratch", false),
        )
        .await?;
    let b = cri
        .create_start_container(
            &pod,
            "beta",
            logger("beta").mount(&empty, "/scratch", false),
        )
        .await?;

    // One VM for the whole pod.
    let qemus = cri.qemu_processes(&pod.id);
    assert_eq!(
        qemus.len(),
        1,
        "QEMU processes of pod {}: {qemus:?}",
        pod.id
    );

    // Both run, and each one's output is in its own log file, on the right stream.
    for (cid, name, other) in [(&a, "alpha", "beta"), (&b, "beta", "alpha")] {
        let status = cri.container_status(cid).await?;
        assert_eq!(status.state, 1, "{name} is not RUNNING: {status:?}");
        cri.wait_log_contains(cid, &format!("{name}-says-err"), LOG_WAIT)
            .await?;
        cri.wait_log_contains(cid, &format!("{name}-says-out"), LOG_WAIT)
            .await?;
        let out = cri.container_log_stream(cid, "stdout").await?;
        assert_eq!(out, vec![format!("{name}-says-out")], "{name}'s stdout log");
        let err = cri.container_log_stream(cid, "stderr").await?;
        assert_eq!(err, vec![format!("{name}-says-err")], "{name}'s stderr log");
        let log = cri.container_log(cid).await?;
        assert!(
            !log.contains(other),
            "{name}'s log has {other}'s output: {log}"
        );
    }

    // A third container that ends on its own: its exit status and output reach CRI.
    let once = cri
        .create_start_container(
            &pod,
            "once",
            ContainerOptions::cmd(&["sh", "-c", "echo once-done; exit 7"]),
        )
        .await?;
    let status = cri.wait_container_exited(&once, LOG_WAIT).await?;
    assert_eq!(status.exit_code, 7, "{status:?}");
    assert_eq!(cri.container_log(&once).await?, "once-done");
    assert_eq!(cri.qemu_processes(&pod.id).len(), 1, "still one VM");

    // ExecSync in each: output, stderr and exit status come back.
    let out = cri
        .exec_sync(&a, &["sh", "-c", "echo out-a; echo err-a >&2; exit 3"], 60)
        .await?;
    assert_eq!(
        (out.exit_code, out.stdout.as_str(), out.stderr.as_str()),
        (3, "out-a\n", "err-a\n")
    );
    assert_eq!(cri.exec_ok(&b, &["echo", "in-beta"]).await?, "in-beta\n");
    // Streaming Exec (containerd's streaming server, websocket v4.channel.k8s.io).
    let out = cri
        .exec_stream(&b, &["sh", "-c", "echo streamed; echo on-err >&2; exit 5"])
        .await?;
    assert_eq!(
        (out.exit_code, out.stdout.as_str(), out.stderr.as_str()),
        (5, "streamed\n", "on-err\n")
    );

    // UTS, IPC and network are the pod's; PID is each container's own (no shareProcessNamespace).
    for kind in ["uts", "ipc", "net"] {
        let (na, nb) = (ns(cri, &a, kind).await?, ns(cri, &b, kind).await?);
        assert_eq!(
            na, nb,
            "the {kind} namespace is not shared by the pod's containers"
        );
    }
    assert_ne!(
        ns(cri, &a, "pid").await?,
        ns(cri, &b, "pid").await?,
        "containers share a PID namespace without shareProcessNamespace"
    );
    for cid in [&a, &b] {
        assert_eq!(cri.exec_ok(cid, &["hostname"]).await?.trim(), "isola-pod");
        let f = cri.exec_ok(cid, &["cat", "/etc/hostname"]).await?;
        assert_eq!(f.trim(), "isola-pod", "/etc/hostname");
        let resolv = cri.exec_ok(cid, &["cat", "/etc/resolv.conf"]).await?;
        assert!(
            resolv.contains("search isola.test"),
            "resolv.conf: {resolv}"
        );
        let hosts = cri.exec_ok(cid, &["cat", "/etc/hosts"]).await?;
        assert!(hosts.contains("localhost"), "/etc/hosts: {hosts}");
    }

    // /dev/shm is one tmpfs in the guest for the whole pod (IPC), not on the host.
    cri.exec_ok(&a, &["sh", "-c", "echo shm-from-alpha > /dev/shm/seg"])
        .await?;
    assert_eq!(
        cri.exec_ok(&b, &["cat", "/dev/shm/seg"]).await?,
        "shm-from-alpha\n"
    );
    let shm_type = cri
        .exec_ok(
            &b,
            &["sh", "-c", "awk '$2==\"/dev/shm\"{print $3}' /proc/mounts"],
        )
        .await?;
    assert_eq!(shm_type.trim(), "tmpfs", "/dev/shm in the guest");

    // hostPath-style binds: a write to the rw one shows on the host; the ro one refuses writes.
    cri.exec_ok(&a, &["sh", "-c", "echo written-in-guest > /data/out"])
        .await?;
    assert_eq!(
        std::fs::read_to_string(rw.join("out")).context("the rw mount's file on the host")?,
        "written-in-guest\n"
    );
    assert_eq!(
        cri.exec_ok(&a, &["cat", "/config/given"]).await?,
        "from-host\n"
    );
    let w = cri
        .exec_sync(&a, &["sh", "-c", "echo x > /config/new"], 60)
        .await?;
    assert_ne!(
        w.exit_code, 0,
        "a write to a read-only mount succeeded: {w:?}"
    );
    assert!(
        w.stderr.contains("Read-only"),
        "the refused write says why: {w:?}"
    );
    assert!(!ro.join("new").exists(), "the ro write reached the host");

    // emptyDir-style volume: shared by the pod's containers, living in the guest.
    cri.exec_ok(&a, &["sh", "-c", "echo scratch-from-alpha > /scratch/note"])
        .await?;
    assert_eq!(
        cri.exec_ok(&b, &["cat", "/scratch/note"]).await?,
        "scratch-from-alpha\n"
    );
    assert!(
        listing(&empty).is_empty(),
        "the emptyDir's files are on the host: {:?}",
        listing(&empty)
    );

    // Stop and remove: nothing of the pod is left; its containers are gone with it.
    let netns = cri.pod_netns(&pod.id).await?;
    assert!(
        netns.exists(),
        "the pod's netns {} is missing",
        netns.display()
    );
    cri.stop_and_remove_pod(&pod.id).await?;
    cri.assert_pod_gone(&pod.id).await;
    assert!(!netns.exists(), "{} is left", netns.display());
    let err = cri
        .create_container(&pod, "late", logger("late"))
        .await
        .expect_err("a container in a removed pod was created");
    let status = err.downcast_ref::<tonic::Status>().context("a CRI error")?;
    assert_eq!(status.code(), tonic::Code::NotFound, "{err:#}");
    ensure!(
        status.message().contains(&pod.id),
        "the error names the pod: {err:#}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_unknown_runtime_handler_is_refused() -> Result<()> {
    let cri = CriEnv::start().await?;
    let err = cri
        .run_pod("nohandler", "no-such-handler", PodOptions::default())
        .await
        .expect_err("a pod with an unknown handler ran");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("no-such-handler"),
        "the error names the handler: {msg}"
    );
    // hostNetwork cannot be honoured by a VM: refused (Unimplemented) before a VM boots.
    let host_net = PodOptions {
        host_network: true,
        ..Default::default()
    };
    let err = cri
        .run_pod("hostnet", ISOLA, host_net)
        .await
        .expect_err("a hostNetwork pod ran in a VM");
    let msg = format!("{err:#}");
    assert!(msg.contains("hostNetwork"), "the error says why: {msg}");
    assert!(cri
        .engine
        .containerd()
        .expect("containerd")
        .vm_processes()
        .is_empty());
    Ok(())
}

/// The harness itself, with runc: the same calls work without a VM (a baseline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_runc_pod_baseline() -> Result<()> {
    let cri = CriEnv::start().await?;
    let pod = cri.run_pod("base", RUNC, PodOptions::default()).await?;
    let c = cri
        .create_start_container(&pod, "solo", logger("solo"))
        .await?;
    cri.wait_log_contains(&c, "solo-says-out", LOG_WAIT).await?;
    assert_eq!(cri.exec_ok(&c, &["hostname"]).await?.trim(), "base");
    let ip = cri.pod_ip(&pod.id).await?;
    assert!(ip.starts_with("10.89.0."), "pod IP {ip}");
    cri.stop_and_remove_pod(&pod.id).await?;
    cri.assert_pod_gone(&pod.id).await;
    Ok(())
}

/// shareProcessNamespace: the app container joins the pause container's PID namespace in the
/// guest, so the pause process is its PID 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_cri_pod_shares_the_pid_namespace_when_asked() {
    let cri = CriEnv::start().await.expect("starting containerd");
    let result = shared_pid_namespace(&cri).await;
    cri.check(result);
}

async fn shared_pid_namespace(cri: &CriEnv) -> Result<()> {
    let pod = cri
        .run_pod(
            "pidshare",
            ISOLA,
            PodOptions {
                share_pid: true,
                ..Default::default()
            },
        )
        .await?;
    let c = cri
        .create_start_container(&pod, "app", logger("app"))
        .await?;
    let init = cri
        .exec_ok(&c, &["sh", "-c", "tr '\\0' ' ' < /proc/1/cmdline"])
        .await?;
    assert!(
        init.starts_with("/bin/sh -c trap 'exit 0' TERM INT;"),
        "PID 1 is the pause container: {init:?}"
    );
    let ps = cri.exec_ok(&c, &["ps", "-o", "args"]).await?;
    assert!(
        ps.contains("app-says-out"),
        "the app's own shell is listed: {ps}"
    );
    cri.stop_and_remove_pod(&pod.id).await?;
    cri.assert_pod_gone(&pod.id).await;
    Ok(())
}

/// A test that ends with its pods still there (a failed assertion) leaves no network behind:
/// dropping the environment stops and removes them through CRI, so CNI releases their netns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_dropping_the_environment_removes_left_pods() -> Result<()> {
    let cri = CriEnv::start().await?;
    let pod = cri.run_pod("left", RUNC, PodOptions::default()).await?;
    let netns = cri.pod_netns(&pod.id).await?;
    assert!(
        netns.exists(),
        "the pod's netns {} is missing",
        netns.display()
    );
    drop(cri);
    assert!(!netns.exists(), "{} is left", netns.display());
    Ok(())
}
