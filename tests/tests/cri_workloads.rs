//! What privileged and NET_ADMIN workloads do inside an isola pod, through containerd's CRI:
//! iptables NAT REDIRECT (iptables-legacy, iptables-nft and nft), a bridge with a veth pair and
//! traffic across it, a TUN device, a FUSE mount, and the pod's sysctls (safe and unsafe ones)
//! as runc applies them. The tools come from the test image `localhost/isola/tools`
//! (scripts/build-test-image.sh: Debian's iproute2, iptables, nftables and bindfs with their
//! libraries on busybox); the scripts are shared with the `ctr` tests
//! (`isola_tests::workload_scripts`, tests/tests/ctr_workloads.rs).
//!
//! Tests that boot a VM are `vm_*`; one pod serves many checks.

use std::collections::HashMap;

use anyhow::{ensure, Context, Result};
use isola_tests::cri::{ContainerOptions, CriEnv, Pod, PodOptions, ISOLA, RUNC};
use isola_tests::workload_scripts::{
    redirect_with, BRIDGE, BRIDGE_MARKER, FUSE, FUSE_MARKER, NFT_REDIRECT, NFT_REDIRECT_MARKER,
    REDIRECT_MARKER, TOOLS_IMAGE, TUN, TUN_MARKER,
};
use k8s_cri::v1::{Capability, Device, LinuxContainerSecurityContext};

const SLEEPER: &[&str] = &["sleep", "100000"];

/// Imports the tools image into the CRI namespace.
fn import_tools(cri: &CriEnv) -> Result<()> {
    cri.import_image(&isola_tests::workload_scripts::tools_tar())
}

fn tools(security: LinuxContainerSecurityContext) -> ContainerOptions {
    ContainerOptions {
        image: Some(TOOLS_IMAGE.into()),
        security,
        ..ContainerOptions::cmd(SLEEPER)
    }
}

/// Runs the shell script `script` in `cid`; its output, which must end with `marker`.
async fn script_ok(
    cri: &CriEnv,
    cid: &str,
    what: &str,
    script: &str,
    marker: &str,
) -> Result<String> {
    let out = cri.exec_sync(cid, &["sh", "-ec", script], 120).await?;
    ensure!(
        out.exit_code == 0 && out.stdout.trim_end().ends_with(marker),
        "{what}: exit {}\nstdout:\n{}\nstderr:\n{}",
        out.exit_code,
        out.stdout,
        out.stderr
    );
    Ok(out.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_cri_privileged_and_net_admin_workloads_run_in_the_pods_kernel() {
    let cri = CriEnv::start().await.expect("starting containerd");
    let result = workloads(&cri).await;
    cri.check(result);
}

async fn workloads(cri: &CriEnv) -> Result<()> {
    import_tools(cri)?;
    let pod = cri
        .run_pod(
            "workloads",
            ISOLA,
            PodOptions {
                privileged: true,
                ..Default::default()
            },
        )
        .await?;
    let privileged = cri
        .create_start_container(
            &pod,
            "privileged",
            tools(LinuxContainerSecurityContext {
                privileged: true,
                ..Default::default()
            }),
        )
        .await?;
    let net_admin = cri
        .create_start_container(
            &pod,
            "net-admin",
            tools(LinuxContainerSecurityContext {
                capabilities: Some(Capability {
                    add_capabilities: vec!["NET_ADMIN".into(), "SYS_ADMIN".into()],
                    ..Default::default()
                }),
                ..Default::default()
            }),
        )
        .await?;
    // The pod's interfaces are the CNI's, as under runc: no device a built-in driver adds.
    let links = cri.exec_ok(&net_admin, &["ls", "/sys/class/net"]).await?;
    let links: Vec<&str> = links.split_whitespace().collect();
    ensure!(links == ["eth0", "lo"], "the pod's interfaces: {links:?}");
    // A VPN sidecar's way: NET_ADMIN and the TUN device asked for by path.
    let vpn = cri
        .create_start_container(
            &pod,
            "vpn",
            ContainerOptions {
                devices: vec![Device {
                    container_path: "/dev/net/tun".into(),
                    host_path: "/dev/net/tun".into(),
                    permissions: "rwm".into(),
                }],
                ..tools(LinuxContainerSecurityContext {
                    capabilities: Some(Capability {
                        add_capabilities: vec!["NET_ADMIN".into()],
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            },
        )
        .await?;
    script_ok(
        cri,
        &vpn,
        "NET_ADMIN with /dev/net/tun: tun",
        TUN,
        TUN_MARKER,
    )
    .await?;
    for (cid, who) in [(&privileged, "privileged"), (&net_admin, "NET_ADMIN")] {
        for ipt in ["iptables-legacy", "iptables-nft"] {
            let out = script_ok(
                cri,
                cid,
                &format!("{who}: {ipt} REDIRECT"),
                &redirect_with(ipt),
                REDIRECT_MARKER,
            )
            .await?;
            ensure!(out.contains("--to-ports 8081"), "{who}: {ipt}: {out}");
        }
        script_ok(
            cri,
            cid,
            &format!("{who}: nft redirect"),
            NFT_REDIRECT,
            NFT_REDIRECT_MARKER,
        )
        .await?;
        script_ok(
            cri,
            cid,
            &format!("{who}: bridge and veth"),
            BRIDGE,
            BRIDGE_MARKER,
        )
        .await?;
    }
    // Devices: a privileged container has the guest's own (the host's are not passed).
    script_ok(cri, &privileged, "privileged: tun", TUN, TUN_MARKER).await?;
    let out = script_ok(cri, &privileged, "privileged: FUSE", FUSE, FUSE_MARKER).await?;
    ensure!(
        out.contains("through-fuse") && out.contains("/srv/fuse fuse"),
        "{out}"
    );
    let kernel = cri.exec_ok(&privileged, &["uname", "-r"]).await?;
    ensure!(kernel.contains("isola"), "not the guest kernel: {kernel}");
    let unprivileged = cri
        .exec_sync(&net_admin, &["ls", "/dev/net/tun"], 60)
        .await
        .context("ls /dev/net/tun")?;
    ensure!(
        unprivileged.exit_code != 0,
        "an unprivileged container got the guest's devices: {unprivileged:?}"
    );

    cri.stop_and_remove_pod(&pod.id).await?;
    cri.assert_pod_gone(&pod.id).await;
    Ok(())
}

/// Sysctls a pod may set: Kubernetes' safe set and some it calls unsafe (namespaced all).
fn sysctls() -> HashMap<String, String> {
    [
        ("kernel.shm_rmid_forced", "1"),
        ("net.ipv4.ip_local_port_range", "20000\t30000"),
        ("net.ipv4.tcp_syncookies", "0"),
        ("net.ipv4.ping_group_range", "0\t2147483647"),
        ("net.ipv4.ip_unprivileged_port_start", "80"),
        ("net.ipv4.tcp_keepalive_time", "600"),
        ("net.core.somaxconn", "1024"),
        ("net.ipv4.ip_forward", "1"),
        ("kernel.msgmax", "65536"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

async fn read_sysctls(cri: &CriEnv, pod: &Pod, keys: &[String]) -> Result<HashMap<String, String>> {
    let cid = cri
        .create_start_container(pod, "reader", ContainerOptions::cmd(SLEEPER))
        .await?;
    let mut got = HashMap::new();
    for key in keys {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        got.insert(
            key.clone(),
            cri.exec_ok(&cid, &["cat", &path])
                .await?
                .trim_end()
                .to_string(),
        );
    }
    Ok(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_cri_pod_sysctls_apply_in_the_guest_like_runc() {
    let cri = CriEnv::start().await.expect("starting containerd");
    let result = pod_sysctls(&cri).await;
    cri.check(result);
}

async fn pod_sysctls(cri: &CriEnv) -> Result<()> {
    // The same sysctls under both runtimes; the guest kernel also has BBR (this host's may not).
    let mut ours_wanted = sysctls();
    ours_wanted.insert("net.ipv4.tcp_congestion_control".into(), "bbr".into());
    let keys: Vec<String> = ours_wanted.keys().cloned().collect();
    let pod = cri
        .run_pod(
            "sysctls",
            ISOLA,
            PodOptions {
                sysctls: ours_wanted.clone(),
                ..Default::default()
            },
        )
        .await?;
    let ours = read_sysctls(cri, &pod, &keys).await?;
    ensure!(
        ours == ours_wanted,
        "isola pod:\n{ours:?}\nwanted:\n{ours_wanted:?}"
    );
    let runc_pod = cri
        .run_pod(
            "sysctls-runc",
            RUNC,
            PodOptions {
                sysctls: sysctls(),
                ..Default::default()
            },
        )
        .await?;
    let common: Vec<String> = sysctls().keys().cloned().collect();
    let theirs = read_sysctls(cri, &runc_pod, &common).await?;
    ensure!(theirs == sysctls(), "runc pod:\n{theirs:?}");
    cri.stop_and_remove_pod(&runc_pod.id).await?;
    cri.stop_and_remove_pod(&pod.id).await?;
    cri.assert_pod_gone(&pod.id).await;
    Ok(())
}
