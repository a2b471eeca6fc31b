//! What privileged and NET_ADMIN workloads do inside an isola pod, through containerd's CRI:
//! iptables NAT REDIRECT (iptables-legacy, iptables-nft and nft), a bridge with a veth pair and
//! traffic across it, a TUN device, a FUSE mount, and the pod's sysctls (safe and unsafe ones)
//! as runc applies them. The tools come from the test image `localhost/isola/tools`
//! (scripts/build-test-image.sh: Debian's iproute2, iptables, nftables and bindfs with their
//! libraries on busybox).
//!
//! Tests that boot a VM are `vm_*`; one pod serves many checks.

use std::collections::HashMap;

use anyhow::{ensure, Context, Result};
use isola_tests::cri::{ContainerOptions, CriEnv, Pod, PodOptions, ISOLA, RUNC};
use k8s_cri::v1::{Capability, Device, LinuxContainerSecurityContext};

const TOOLS_IMAGE: &str = "localhost/isola/tools:latest";
const SLEEPER: &[&str] = &["sleep", "100000"];

/// Imports the tools image into the CRI namespace.
fn import_tools(cri: &CriEnv) -> Result<()> {
    let tar = isola_tests::repo_root().join("build/images/tools.tar");
    cri.import_image(&tar)
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

/// iptables NAT: connections to port 8080 of the pod's localhost land on a server at 8081.
const REDIRECT: &str = "(nc -ll -p 8081 -e echo redirected &); sleep 0.5; \
    $IPT -t nat -A OUTPUT -p tcp -d 127.0.0.1 --dport 8080 -j REDIRECT --to-ports 8081; \
    $IPT -t nat -S OUTPUT; nc 127.0.0.1 8080 </dev/null; \
    $IPT -t nat -F OUTPUT";

/// The same with nftables' own syntax.
const NFT_REDIRECT: &str = "(nc -ll -p 8082 -e echo nft-redirected &); sleep 0.5; \
    nft add table ip isola; \
    nft add chain ip isola out '{ type nat hook output priority -100; }'; \
    nft add rule ip isola out ip daddr 127.0.0.1 tcp dport 8090 redirect to :8082; \
    nft list table ip isola; nc 127.0.0.1 8090 </dev/null; nft delete table ip isola";

/// A bridge, a veth pair with one end in a network namespace of its own, traffic across.
/// (Debian's `ip` by its path: the busybox shell would run its own `ip` applet.)
const BRIDGE: &str = "/usr/sbin/ip link add br-t type bridge; /usr/sbin/ip addr add 10.77.0.1/24 dev br-t; \
    /usr/sbin/ip link set br-t up; /usr/sbin/ip link add v-t0 type veth peer name v-t1; \
    /usr/sbin/ip link set v-t0 master br-t; /usr/sbin/ip link set v-t0 up; \
    unshare -n sleep 1000 & P=$!; sleep 0.3; /usr/sbin/ip link set v-t1 netns $P; \
    nsenter -t $P -n /usr/sbin/ip addr add 10.77.0.2/24 dev v-t1; nsenter -t $P -n /usr/sbin/ip link set v-t1 up; \
    nsenter -t $P -n /usr/sbin/ip link set lo up; \
    (nsenter -t $P -n nc -l -p 7000 -e echo across-the-bridge &); sleep 0.5; \
    nc 10.77.0.2 7000 </dev/null; kill $P; /usr/sbin/ip link del br-t; /usr/sbin/ip link del v-t0 2>/dev/null || true";

/// A TUN device with an address, up.
const TUN: &str = "ls -l /dev/net/tun; IP=/usr/sbin/ip; $IP tuntap add dev tun-t mode tun; \
    $IP addr add 10.78.0.1/24 dev tun-t; $IP link set tun-t up; $IP -d link show tun-t; \
    $IP tuntap del dev tun-t mode tun; echo tun-ok";

/// A FUSE file system (bindfs) mounted, read through, unmounted.
const FUSE: &str = "ls -l /dev/fuse; mkdir -p /srv/src /srv/fuse; echo through-fuse > /srv/src/f; \
    bindfs /srv/src /srv/fuse; grep ' /srv/fuse ' /proc/mounts; cat /srv/fuse/f; \
    umount /srv/fuse; echo fuse-ok";

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
    script_ok(cri, &vpn, "NET_ADMIN with /dev/net/tun: tun", TUN, "tun-ok").await?;
    for (cid, who) in [(&privileged, "privileged"), (&net_admin, "NET_ADMIN")] {
        for ipt in ["iptables-legacy", "iptables-nft"] {
            let out = script_ok(
                cri,
                cid,
                &format!("{who}: {ipt} REDIRECT"),
                &format!("IPT={ipt}; {REDIRECT}"),
                "redirected",
            )
            .await?;
            ensure!(out.contains("--to-ports 8081"), "{who}: {ipt}: {out}");
        }
        script_ok(
            cri,
            cid,
            &format!("{who}: nft redirect"),
            NFT_REDIRECT,
            "nft-redirected",
        )
        .await?;
        script_ok(
            cri,
            cid,
            &format!("{who}: bridge and veth"),
            BRIDGE,
            "across-the-bridge",
        )
        .await?;
    }
    // Devices: a privileged container has the guest's own (the host's are not passed).
    script_ok(cri, &privileged, "privileged: tun", TUN, "tun-ok").await?;
    let out = script_ok(cri, &privileged, "privileged: FUSE", FUSE, "fuse-ok").await?;
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
