//! Pod networking through containerd's CRI API (tests/src/cri.rs: CNI `bridge` + `host-local`
//! on 10.89.0.0/24): the pod netns's veth is joined to a tap with tc, the guest NIC has the
//! veth's MAC, MTU, address and routes; a TCP server in a pod answers the host at the pod IP;
//! two pods reach each other; a pod reaches the host (the bridge's address); after
//! StopPodSandbox + RemovePodSandbox no QEMU or tap is left.
//!
//! `vm_*`: nextest runs it alone. Needs root, `make guest images`, iproute2 and nsenter.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use isola_tests::cri::{ContainerOptions, CriEnv, PodOptions, CNI_GATEWAY, ISOLA};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a first connection may take (guest boot and ARP under TCG).
const NET_WAIT: Duration = Duration::from_secs(60);

/// A container serving `body` over HTTP on port 8080 (busybox httpd).
fn web_server(body: &str) -> ContainerOptions {
    ContainerOptions::cmd(&[
        "sh",
        "-c",
        &format!("mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p 8080 -h /www"),
    ])
}

fn idle() -> ContainerOptions {
    ContainerOptions::cmd(&["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"])
}

/// Runs `args` in the network namespace `netns` (a path), returning stdout.
fn in_netns(netns: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(args)
        .output()
        .context("running nsenter")?;
    ensure!(
        out.status.success(),
        "{args:?} in {}: {}",
        netns.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The value after `key` in whitespace-separated `text` (`link/ether <mac>`, `mtu <n>`).
fn after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let mut words = text.split_whitespace();
    words.find(|w| *w == key)?;
    words.next()
}

/// HTTP GET `http://addr/` from the host, retried until `NET_WAIT`; returns the response.
async fn http_get(addr: &str) -> Result<String> {
    let deadline = Instant::now() + NET_WAIT;
    loop {
        let attempt = async {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
            let mut out = Vec::new();
            s.take(64 * 1024).read_to_end(&mut out).await?;
            anyhow::Ok(String::from_utf8_lossy(&out).into_owned())
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(resp)) if !resp.is_empty() => return Ok(resp),
            other => {
                if Instant::now() >= deadline {
                    bail!("GET http://{addr}/ from the host: {other:?}");
                }
                eprintln!("GET http://{addr}/ from the host: {other:?}; retrying");
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Retries `cmd` in container `cid` until it exits 0 (bounded); returns its stdout.
async fn exec_until_ok(cri: &CriEnv, cid: &str, cmd: &[impl AsRef<str>]) -> Result<String> {
    let cmd: Vec<&str> = cmd.iter().map(AsRef::as_ref).collect();
    let cmd = cmd.as_slice();
    let deadline = Instant::now() + NET_WAIT;
    loop {
        let out = cri.exec_sync(cid, cmd, 20).await;
        match out {
            Ok(out) if out.exit_code == 0 => return Ok(out.stdout),
            other if Instant::now() >= deadline => bail!("{cmd:?} in {cid}: {other:?}"),
            Err(e) => eprintln!("{cmd:?}: {:?}; retrying", e.downcast_ref::<tonic::Status>()),
            other => eprintln!("{cmd:?}: {other:?}; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A command for a pod: HTTP GET `http://addr/` with busybox nc (Debian's static busybox
/// `wget` crashes in glibc's resolver), printing the response.
fn http_get_in_pod(addr: &str) -> Vec<String> {
    let (host, port) = addr.rsplit_once(':').unwrap_or((addr, "80"));
    vec![
        "sh".into(),
        "-c".into(),
        format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {host} {port}"),
    ]
}

/// A one-shot HTTP server on the host's side of the CNI bridge; returns its address.
async fn host_server(body: &'static str) -> Result<String> {
    let listener = tokio::net::TcpListener::bind((CNI_GATEWAY, 0))
        .await
        .with_context(|| format!("listening on {CNI_GATEWAY}"))?;
    let addr = listener.local_addr()?.to_string();
    tokio::spawn(async move {
        // Bounded: a few connections (wget retries), then the server ends with the test.
        for _ in 0..8 {
            let Ok(Ok((mut s, _))) = tokio::time::timeout(NET_WAIT * 2, listener.accept()).await
            else {
                return;
            };
            let mut buf = [0u8; 1024];
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
            let resp = format!(
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        }
    });
    Ok(addr)
}

// Current-thread: `CriEnv::start` then starts containerd on the test's own thread, which lives
// as long as the test (containerd has a parent-death signal; under a multi-thread runtime it is
// started inside `block_in_place`, whose thread may later end as an idle blocking-pool thread).
#[tokio::test(flavor = "current_thread")]
async fn vm_cri_pods_reach_the_host_and_each_other() -> Result<()> {
    let cri = CriEnv::start().await?;

    let a = cri.run_pod("net-a", ISOLA, PodOptions::default()).await?;
    let web = cri
        .create_start_container(&a, "web", web_server("hello-from-pod-a"))
        .await?;
    let ip_a = cri.pod_ip(&a.id).await?;
    let netns_a = cri.pod_netns(&a.id).await?;

    // Host side: the veth is joined to the tap with tc redirects both ways.
    let veth = in_netns(&netns_a, &["ip", "-o", "link", "show", "eth0"])?;
    let mac = after(&veth, "link/ether").context("veth MAC")?.to_string();
    let mtu = after(&veth, "mtu").context("veth MTU")?.to_string();
    let tap = in_netns(&netns_a, &["ip", "-o", "link", "show", "tap0_isola"])?;
    assert_eq!(after(&tap, "mtu"), Some(mtu.as_str()), "tap MTU: {tap}");
    for dev in ["eth0", "tap0_isola"] {
        let f = in_netns(&netns_a, &["tc", "filter", "show", "dev", dev, "ingress"])?;
        assert!(f.contains("Egress Redirect"), "tc on {dev}: {f}");
    }

    // Guest side: the NIC has the veth's MAC and MTU, the pod IP and the default route.
    let link = cri
        .exec_ok(&web, &["ip", "-o", "link", "show", "eth0"])
        .await?;
    assert_eq!(after(&link, "link/ether"), Some(mac.as_str()), "{link}");
    assert_eq!(after(&link, "mtu"), Some(mtu.as_str()), "{link}");
    let addrs = cri
        .exec_ok(&web, &["ip", "-o", "-4", "addr", "show", "eth0"])
        .await?;
    assert!(addrs.contains(&format!("inet {ip_a}/")), "{addrs}");
    let routes = cri.exec_ok(&web, &["ip", "route"]).await?;
    assert!(
        routes.contains(&format!("default via {CNI_GATEWAY}")),
        "{routes}"
    );

    // The host reaches the server at the pod IP.
    let t0 = Instant::now();
    let resp = http_get(&format!("{ip_a}:8080")).await?;
    assert!(resp.contains("hello-from-pod-a"), "{resp}");
    eprintln!("host -> pod HTTP answered after {:?}", t0.elapsed());

    // The pod reaches the host (the bridge's address).
    let host = host_server("hello-from-host").await?;
    let got = exec_until_ok(&cri, &web, &http_get_in_pod(&host)).await?;
    assert!(got.ends_with("hello-from-host"), "{got}");

    // A second pod reaches the first.
    let b = cri.run_pod("net-b", ISOLA, PodOptions::default()).await?;
    let client = cri.create_start_container(&b, "client", idle()).await?;
    let ip_b = cri.pod_ip(&b.id).await?;
    assert_ne!(ip_a, ip_b);
    let got = exec_until_ok(&cri, &client, &http_get_in_pod(&format!("{ip_a}:8080"))).await?;
    assert!(got.contains("hello-from-pod-a"), "{got}");
    // And back: pod A pings pod B.
    exec_until_ok(&cri, &web, &["ping", "-c", "1", "-W", "2", ip_b.as_str()]).await?;

    // What the network set-up cost (the shims' own measurements, from containerd's log).
    for line in cri.engine.log_tail(2000).lines() {
        if line.contains("pod network attached") || line.contains("guest network configured") {
            eprintln!("{line}");
        }
    }

    // Only QEMU holds the tap: the shim dropped its descriptor once QEMU ran.
    let holders = tap_holders(&a.id);
    assert_eq!(
        holders.len(),
        1,
        "/dev/net/tun holders of pod A: {holders:?}"
    );
    assert_eq!(cri.qemu_processes(&a.id), holders);

    // A VM that dies takes its tap with it (nothing holds it any more).
    let netns_b = cri.pod_netns(&b.id).await?;
    let qemu_b = cri.qemu_processes(&b.id);
    assert_eq!(qemu_b.len(), 1);
    let pid = nix::unistd::Pid::from_raw(i32::try_from(qemu_b[0])?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while in_netns(&netns_b, &["ip", "-o", "link"])?.contains("tap0_isola") {
        ensure!(Instant::now() < deadline, "pod B's tap outlived its QEMU");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // containerd learns of the crash from the shim's TaskExit events: wait for that before
    // removing the pod (RemovePodSandbox refuses a container it still thinks is running).
    while cri.container_status(&client).await?.state == 1 {
        ensure!(
            Instant::now() < deadline,
            "pod B's container still RUNNING after its VM died"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for pod in [&a, &b] {
        cri.stop_and_remove_pod(&pod.id).await?;
        cri.assert_pod_gone(&pod.id).await;
        assert!(cri.qemu_processes(&pod.id).is_empty());
    }
    // CNI removed the netns; had it not, the tap would be gone with QEMU anyway.
    if netns_a.exists() {
        let links = in_netns(&netns_a, &["ip", "-o", "link"])?;
        assert!(!links.contains("tap0_isola"), "{links}");
    }
    Ok(())
}

/// Processes of pod `pod_id` with `/dev/net/tun` open.
fn tap_holders(pod_id: &str) -> Vec<u32> {
    isola_tests::processes_mentioning(pod_id)
        .into_iter()
        .map(|(pid, _)| pid)
        .filter(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|fd| {
                    std::fs::read_link(fd.path()).is_ok_and(|l| l == Path::new("/dev/net/tun"))
                })
        })
        .collect()
}
