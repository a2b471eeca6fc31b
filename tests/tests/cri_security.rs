//! What Kubernetes' security settings do to a pod's processes through containerd's CRI, under
//! isola and, side by side, under runc on this host: seccomp profiles (RuntimeDefault and a
//! Localhost profile) on the container and on ExecSync and streaming Exec (what `kubectl exec`
//! does), with the container's user, capabilities and no_new_privs (execs on a terminal are
//! ctr_security.rs's: this harness's streaming Exec with a terminal gets no output back from
//! containerd 1.6, under runc as under isola); and images without `PATH`, for the pod sandbox (the test pause image has no
//! `Env` at all) and for app containers.
//!
//! Tests that boot a VM are `vm_*`; one pair of pods serves many assertions.

use anyhow::{ensure, Result};
use isola_tests::cri::{ContainerOptions, CriEnv, Pod, PodOptions, ISOLA, RUNC};
use isola_tests::probe::{
    caps, confinement, field, CHMOD_DENIED_PROFILE, DENIED_BY_PROFILE, PROBE,
};
use k8s_cri::v1::security_profile::ProfileType;
use k8s_cri::v1::{Capability, Int64Value, LinuxContainerSecurityContext, SecurityProfile};

const SLEEPER: &[&str] = &["sleep", "100000"];
/// CAP_SYS_ADMIN's bit in the capability sets.
const SYS_ADMIN: u64 = 1 << 21;
/// CAP_NET_ADMIN's bit.
const NET_ADMIN: u64 = 1 << 12;

fn profile(kind: ProfileType, localhost_ref: &str) -> Option<SecurityProfile> {
    Some(SecurityProfile {
        profile_type: kind as i32,
        localhost_ref: localhost_ref.into(),
    })
}

/// The containers each pod gets: RuntimeDefault as root with NET_ADMIN added; the Localhost
/// profile as uid 1000 with every capability dropped but KILL; the Localhost profile with
/// no_new_privs.
fn containers(localhost: &str) -> Vec<(&'static str, LinuxContainerSecurityContext)> {
    vec![
        (
            "default",
            LinuxContainerSecurityContext {
                seccomp: profile(ProfileType::RuntimeDefault, ""),
                capabilities: Some(Capability {
                    add_capabilities: vec!["NET_ADMIN".into()],
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
        (
            "local",
            LinuxContainerSecurityContext {
                seccomp: profile(ProfileType::Localhost, localhost),
                run_as_user: Some(Int64Value { value: 1000 }),
                capabilities: Some(Capability {
                    drop_capabilities: vec!["ALL".into()],
                    add_capabilities: vec!["KILL".into()],
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
        (
            "nnp",
            LinuxContainerSecurityContext {
                seccomp: profile(ProfileType::Localhost, localhost),
                no_new_privs: true,
                ..Default::default()
            },
        ),
    ]
}

async fn start_containers(
    cri: &CriEnv,
    pod: &Pod,
    localhost: &str,
) -> Result<Vec<(&'static str, String)>> {
    let mut out = Vec::new();
    for (name, security) in containers(localhost) {
        let opts = ContainerOptions {
            security,
            ..ContainerOptions::cmd(SLEEPER)
        };
        out.push((name, cri.create_start_container(pod, name, opts).await?));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_cri_every_process_runs_under_the_containers_seccomp_profile_like_runc() {
    let cri = CriEnv::start().await.expect("starting containerd");
    let result = seccomp_profiles(&cri).await;
    cri.check(result);
}

async fn seccomp_profiles(cri: &CriEnv) -> Result<()> {
    let localhost = cri.engine.dir().join("chmod-denied.json");
    std::fs::write(&localhost, CHMOD_DENIED_PROFILE)?;
    let localhost = localhost.to_string_lossy().into_owned();
    // The test pause image has no Env: both sandboxes start without PATH.
    let pod = cri.run_pod("sec", ISOLA, PodOptions::default()).await?;
    let runc_pod = cri.run_pod("sec-runc", RUNC, PodOptions::default()).await?;
    let ours = start_containers(cri, &pod, &localhost).await?;
    let theirs = start_containers(cri, &runc_pod, &localhost).await?;

    for ((name, cid), (_, runc_cid)) in ours.iter().zip(&theirs) {
        let sync = cri.exec_ok(cid, &["sh", "-c", PROBE]).await?;
        let stream = cri.exec_stream(cid, &["sh", "-c", PROBE]).await?;
        ensure!(stream.exit_code == 0, "{name}: streaming exec: {stream:?}");
        // The container's own process (pid 1 of its PID namespace) has the filter too.
        let init = cri
            .exec_ok(cid, &["grep", "Seccomp:", "/proc/1/status"])
            .await?;
        ensure!(init.contains('2'), "{name}: the container's init: {init}");
        for (how, out) in [("ExecSync", &sync), ("Exec", &stream.stdout)] {
            ensure!(
                out.contains("Seccomp:"),
                "{name}, {how}: no probe output: {out:?} (streamed: {stream:?})"
            );
            ensure!(field(out, "Seccomp") == "2", "{name}, {how}:\n{out}");
            ensure!(
                caps(out, "CapEff") & SYS_ADMIN == 0,
                "{name}, {how}: SYS_ADMIN kept:\n{out}"
            );
            ensure!(
                caps(out, "CapBnd") & SYS_ADMIN == 0,
                "{name}, {how}:\n{out}"
            );
            let chmod = field(out, "chmod");
            if *name == "default" {
                ensure!(chmod == "allowed", "{name}, {how}:\n{out}");
                ensure!(
                    caps(out, "CapEff") & NET_ADMIN != 0,
                    "{name}, {how}:\n{out}"
                );
            } else {
                ensure!(chmod.contains(DENIED_BY_PROFILE), "{name}, {how}:\n{out}");
            }
        }
        match *name {
            "local" => ensure!(field(&sync, "uid") == "1000", "{sync}"),
            "nnp" => ensure!(field(&sync, "NoNewPrivs") == "1", "{sync}"),
            _ => ensure!(field(&sync, "NoNewPrivs") == "0", "{sync}"),
        }
        // Exactly what runc gives the same container.
        let runc = cri.exec_ok(runc_cid, &["sh", "-c", PROBE]).await?;
        ensure!(
            runc.contains("Seccomp:"),
            "{name}: runc's probe said nothing: {runc:?}"
        );
        ensure!(
            confinement(&sync) == confinement(&runc),
            "{name}: isola:\n{sync}\nrunc:\n{runc}"
        );
    }
    // RuntimeDefault refuses new user namespaces to a container without CAP_SYS_ADMIN.
    let (_, default) = &ours[0];
    let unshare = cri
        .exec_sync(default, &["unshare", "-U", "true"], 60)
        .await?;
    ensure!(
        unshare.exit_code != 0,
        "unshare -U under RuntimeDefault: {unshare:?}"
    );

    cri.stop_and_remove_pod(&pod.id).await?;
    cri.stop_and_remove_pod(&runc_pod.id).await?;
    cri.assert_pod_gone(&pod.id).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_cri_images_without_path_run_like_runc() {
    let cri = CriEnv::start().await.expect("starting containerd");
    let result = without_path(&cri).await;
    cri.check(result);
}

/// The environment of the pod sandbox container's OCI spec (containerd's verbose status).
async fn sandbox_env(cri: &CriEnv, pod: &Pod) -> Result<Vec<String>> {
    let (_, info) = cri.pod_status(&pod.id).await?;
    let info: serde_json::Value = serde_json::from_str(info.get("info").map_or("{}", |s| s))?;
    let env = &info["runtimeSpec"]["process"]["env"];
    Ok(env
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect())
}

async fn without_path(cri: &CriEnv) -> Result<()> {
    let noenv = isola_tests::repo_root().join("build/images/busybox-noenv.tar");
    cri.import_image(&noenv)?;
    let image = Some("localhost/isola/busybox-noenv:latest".to_string());
    // The sandbox image has no Env, and containerd adds none to a sandbox's spec: the pause
    // container starts without PATH (its entrypoint is absolute), under isola as under runc.
    let pod = cri.run_pod("noenv", ISOLA, PodOptions::default()).await?;
    let runc_pod = cri
        .run_pod("noenv-runc", RUNC, PodOptions::default())
        .await?;
    for p in [&pod, &runc_pod] {
        let env = sandbox_env(cri, p).await?;
        ensure!(
            !env.iter().any(|e| e.starts_with("PATH=")),
            "{}: the sandbox spec has a PATH: {env:?}",
            p.handler
        );
        let (status, _) = cri.pod_status(&p.id).await?;
        ensure!(
            status.state == 0,
            "{}: the pod is not ready: {status:?}",
            p.handler
        );
    }
    // App containers from an image without Env (containerd gives them its default PATH), and
    // a program found nowhere: the same outcome under both runtimes.
    let mut envs = Vec::new();
    for p in [&pod, &runc_pod] {
        let opts = ContainerOptions {
            image: image.clone(),
            ..ContainerOptions::cmd(&["sleep", "100000"])
        };
        let cid = cri.create_start_container(p, "bare", opts).await?;
        envs.push(cri.exec_ok(&cid, &["sh", "-c", "echo $PATH"]).await?);
        let missing = ContainerOptions {
            image: image.clone(),
            ..ContainerOptions::cmd(&["no-such-program"])
        };
        let e = match cri.create_start_container(p, "missing", missing).await {
            Ok(cid) => anyhow::bail!("{}: a missing program started as {cid}", p.handler),
            Err(e) => format!("{e:#}"),
        };
        ensure!(
            e.contains("no-such-program") && e.contains("not found"),
            "{}: {e}",
            p.handler
        );
    }
    ensure!(
        envs[0] == envs[1],
        "PATH under isola {:?}, under runc {:?}",
        envs[0],
        envs[1]
    );

    cri.stop_and_remove_pod(&pod.id).await?;
    cri.stop_and_remove_pod(&runc_pod.id).await?;
    cri.assert_pod_gone(&pod.id).await;
    Ok(())
}
