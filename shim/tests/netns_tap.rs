//! The host side of pod networking in a throwaway network namespace: a "CNI" veth with an
//! address, a default route and a permanent neighbour; `HostNetworking::attach` must scan them,
//! create a tap with the veth's MTU and redirect each way with tc (a frame sent to the veth
//! arrives on the tap descriptor); dropping the descriptor removes the tap; `detach` removes
//! the qdiscs. Needs root and iproute2 (`ip`, `tc`).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use containerd_shim_isola_v2::network::{HostNetworking, PodNetworking};

/// Runs a command, returning stdout; panics with stderr on failure.
fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ok(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Two network namespaces (the pod's and a peer standing in for the CNI bridge), deleted on
/// drop, also when the test fails.
struct Netns {
    pod: String,
    peer: String,
}

impl Netns {
    fn new() -> Netns {
        let id = std::process::id();
        let ns = Netns {
            pod: format!("isola-t{id}-pod"),
            peer: format!("isola-t{id}-peer"),
        };
        for n in [&ns.pod, &ns.peer] {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
            run(&["ip", "netns", "add", n]);
        }
        ns
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.pod)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in [&self.pod, &self.peer] {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

/// Reads one frame from the (non-blocking) tap within `timeout`.
fn read_frame(tap: &OwnedFd, timeout: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        // SAFETY: reads into a buffer we own, of the length given, from an open descriptor.
        let n = unsafe { libc::read(tap.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if let Ok(n) = usize::try_from(n) {
            if n > 0 {
                buf.truncate(n);
                return Some(buf);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[tokio::test]
async fn netns_tap_joined_to_the_veth_with_tc() {
    if !nix::unistd::Uid::effective().is_root() {
        panic!("this test needs root (network namespaces, tap devices)");
    }
    let ns = Netns::new();
    let (pod, peer) = (ns.pod.as_str(), ns.peer.as_str());
    run(&[
        "ip", "-n", pod, "link", "add", "eth0", "mtu", "1400", "type", "veth", "peer", "name",
        "peer0", "netns", peer,
    ]);
    run(&[
        "ip",
        "-n",
        pod,
        "link",
        "set",
        "eth0",
        "address",
        "0a:58:0a:63:00:07",
    ]);
    run(&[
        "ip",
        "-n",
        pod,
        "addr",
        "add",
        "10.99.0.7/24",
        "dev",
        "eth0",
    ]);
    run(&["ip", "-n", pod, "link", "set", "eth0", "up"]);
    run(&["ip", "-n", pod, "link", "set", "lo", "up"]);
    run(&[
        "ip",
        "-n",
        pod,
        "route",
        "add",
        "default",
        "via",
        "10.99.0.1",
    ]);
    run(&[
        "ip",
        "-n",
        pod,
        "neigh",
        "add",
        "10.99.0.1",
        "lladdr",
        "0a:58:0a:63:00:01",
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    run(&[
        "ip",
        "-n",
        peer,
        "addr",
        "add",
        "10.99.0.1/24",
        "dev",
        "peer0",
    ]);
    run(&["ip", "-n", peer, "link", "set", "peer0", "up"]);

    let net = HostNetworking;
    let t0 = Instant::now();
    let attached = net.attach("t", &ns.path()).await.unwrap();
    eprintln!("attach (scan, tap, tc) took {:?}", t0.elapsed());
    let n = &attached.network;
    assert_eq!(n.interfaces.len(), 1, "{n:?}");
    let eth0 = &n.interfaces[0];
    assert_eq!(
        (eth0.name.as_str(), eth0.mac.as_str(), eth0.mtu),
        ("eth0", "0a:58:0a:63:00:07", 1400)
    );
    assert_eq!(
        eth0.addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["10.99.0.7/24"]
    );
    let default = n
        .routes
        .iter()
        .find(|r| r.dest.is_none() || r.dest.is_some_and(|d| d.prefix == 0));
    assert_eq!(
        default
            .and_then(|r| r.gateway)
            .map(|g| g.to_string())
            .as_deref(),
        Some("10.99.0.1"),
        "{:?}",
        n.routes
    );
    assert!(
        n.routes
            .iter()
            .any(|r| r.dest.map(|d| d.to_string()).as_deref() == Some("10.99.0.0/24")),
        "{:?}",
        n.routes
    );
    assert_eq!(n.neighbors.len(), 1, "{:?}", n.neighbors);
    assert_eq!(n.neighbors[0].mac, "0a:58:0a:63:00:01");
    assert_eq!(attached.taps.len(), 1);

    let tap = run(&["ip", "-n", pod, "-d", "link", "show", "tap0_isola"]);
    assert!(
        tap.contains("mtu 1400") && tap.contains("tun") && tap.contains("UP"),
        "{tap}"
    );
    for (dev, to) in [("eth0", "tap0_isola"), ("tap0_isola", "eth0")] {
        let f = run(&["tc", "-n", pod, "filter", "show", "dev", dev, "ingress"]);
        assert!(
            f.contains("u32") && f.contains("protocol all"),
            "{dev}: {f}"
        );
        assert!(
            f.contains(&format!("mirred (Egress Redirect to device {to})")),
            "{dev}: {f}"
        );
    }

    port_forward_path(pod, n);

    // A frame for the pod (the peer's ARP request for 10.99.0.7) arrives on the tap.
    let tap_fd = attached.taps.into_iter().next().unwrap();
    nix::fcntl::fcntl(
        &tap_fd,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .unwrap();
    cluster_cannot_reach_the_loopback(peer, &tap_fd);
    let mut ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            peer,
            "ping",
            "-c",
            "3",
            "-i",
            "0.3",
            "-W",
            "1",
            "10.99.0.7",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let frame = read_frame(&tap_fd, Duration::from_secs(5));
    let _ = ping.kill();
    let _ = ping.wait();
    assert!(
        frame.is_some_and(|f| f.len() > 14),
        "no frame reached the tap"
    );

    // Not persistent: gone with its last descriptor.
    drop(tap_fd);
    let deadline = Instant::now() + Duration::from_secs(5);
    while ok(&["ip", "-n", pod, "link", "show", "tap0_isola"]) {
        assert!(
            Instant::now() < deadline,
            "tap0_isola outlived its descriptor"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    net.detach("t", &ns.path(), n).await.unwrap();
    let q = run(&["tc", "-n", pod, "qdisc", "show", "dev", "eth0"]);
    assert!(!q.contains("ingress"), "{q}");
    let lo = run(&["ip", "-n", pod, "-4", "addr", "show", "dev", "lo"]);
    assert!(lo.contains("127.0.0.1/8"), "lo got its address back: {lo}");
    // A netns that is already gone is fine.
    drop(ns);
    net.detach("t", &PathBuf::from("/var/run/netns/isola-gone"), n)
        .await
        .unwrap();
}

/// The host side of port-forward (shim/src/network/port_forward.rs): the netns's 127.0.0.1
/// leads to the tap, the guest's answers reach the netns's stack, the tap's MAC is reported.
fn port_forward_path(pod: &str, n: &containerd_shim_isola_v2::network::PodNetwork) {
    let link = n.port_forward.as_ref().expect("a port-forward link");
    assert_eq!(link.device, "eth0");
    let tap = run(&["ip", "-n", pod, "link", "show", "tap0_isola"]);
    assert!(tap.contains(&link.host_mac), "{tap} / {link:?}");
    let lo = run(&["ip", "-n", pod, "-4", "addr", "show", "dev", "lo"]);
    assert!(!lo.contains("127.0.0.1"), "lo still has 127.0.0.1: {lo}");
    let route = run(&["ip", "-n", pod, "route", "get", "127.0.0.1"]);
    assert!(
        route.contains("dev tap0_isola") && route.contains("src 169.254.233.1"),
        "{route}"
    );
    let neigh = run(&["ip", "-n", pod, "neigh", "show", "dev", "tap0_isola"]);
    assert!(
        neigh.contains("127.0.0.1 lladdr 0a:58:0a:63:00:07 PERMANENT"),
        "{neigh}"
    );
    let localnet = run(&[
        "ip",
        "netns",
        "exec",
        pod,
        "cat",
        "/proc/sys/net/ipv4/conf/tap0_isola/route_localnet",
    ]);
    assert_eq!(localnet.trim(), "1");
    let f = run(&["tc", "-n", pod, "filter", "show", "dev", "eth0", "ingress"]);
    assert_eq!(
        f.matches("mirred (Egress Redirect to device lo)").count(),
        2,
        "{f}"
    );
    let f = run(&[
        "tc",
        "-n",
        pod,
        "filter",
        "show",
        "dev",
        "tap0_isola",
        "ingress",
    ]);
    assert!(f.contains("flowid 1:1"), "{f}");
}

/// A peer on the cluster network sends to 127.0.0.2 through the pod's veth (as an attacker
/// would, CVE-2020-8558): nothing of it reaches the tap, while the same peer's datagrams for
/// the pod still do.
fn cluster_cannot_reach_the_loopback(peer: &str, tap: &OwnedFd) {
    run(&[
        "ip",
        "-n",
        peer,
        "route",
        "add",
        "127.0.0.2/32",
        "dev",
        "peer0",
    ]);
    // The pod's MAC for both destinations (no guest answers ARP here).
    for ip in ["127.0.0.2", "10.99.0.7"] {
        let args = [
            "neigh",
            "replace",
            ip,
            "lladdr",
            "0a:58:0a:63:00:07",
            "dev",
            "peer0",
        ];
        run(&[&["ip", "-n", peer][..], &args, &["nud", "permanent"]].concat());
    }
    run(&[
        "ip",
        "netns",
        "exec",
        peer,
        "sysctl",
        "-qw",
        "net.ipv4.conf.peer0.route_localnet=1",
    ]);
    // UDP datagrams (not every host has ping).
    let send = |to: &str| {
        let code = format!(
            "import socket\nfor _ in range(3):\n    \
             socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('{to}', 9))"
        );
        run(&["ip", "netns", "exec", peer, "python3", "-c", &code]);
    };
    // Frames to the tap whose IPv4 destination is `to`, for up to `wait`.
    let frames_to = |to: [u8; 4], wait: Duration| {
        let deadline = Instant::now() + wait;
        let mut n = 0;
        while let Some(f) = read_frame(tap, deadline.saturating_duration_since(Instant::now())) {
            // After the 10-byte virtio-net header the tap was opened with (IFF_VNET_HDR).
            if f.len() >= 44 && f[22..24] == [0x08, 0x00] && f[40..44] == to {
                n += 1;
            }
        }
        n
    };
    send("127.0.0.2");
    assert_eq!(
        frames_to([127, 0, 0, 2], Duration::from_secs(1)),
        0,
        "a packet for 127.0.0.2 from the cluster reached the guest's tap"
    );
    send("10.99.0.7");
    assert!(
        frames_to([10, 99, 0, 7], Duration::from_secs(2)) > 0,
        "the peer's datagrams to the pod never reached the tap"
    );
}
