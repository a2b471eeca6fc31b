//! Shell scripts that exercise a kernel's network and device features from inside a container:
//! iptables NAT REDIRECT (legacy and nft), nft, a bridge with a veth pair, a TUN device, a FUSE
//! mount. They need the tools image `localhost/isola/tools` (scripts/build-test-image.sh:
//! Debian's iproute2, iptables, nftables and bindfs on busybox), are run with `sh -ec`, and each
//! ends by printing its [`Script::marker`] once everything it did worked; they clean up after
//! themselves (rules flushed, links deleted, FUSE unmounted), so they can run again in the same
//! network namespace.
//!
//! Used through containerd's CRI (tests/tests/cri_workloads.rs) and through `ctr`
//! (tests/tests/ctr_workloads.rs).

/// The tools image the scripts need.
pub const TOOLS_IMAGE: &str = "localhost/isola/tools:latest";

/// The tools image's tarball (`make images`). Panics with a clear message when it is missing.
pub fn tools_tar() -> std::path::PathBuf {
    let tar = crate::repo_root().join("build/images/tools.tar");
    assert!(
        tar.is_file(),
        "{} is missing: run `make images` first",
        tar.display()
    );
    tar
}

/// iptables NAT: connections to port 8080 of the container's localhost land on a server at
/// 8081. `$IPT` is the iptables binary (`iptables-legacy` or `iptables-nft`): prefix the
/// script with `IPT=...;`, or use [`redirect_with`].
pub const REDIRECT: &str = "(nc -ll -p 8081 -e echo redirected &); sleep 0.5; \
    $IPT -t nat -A OUTPUT -p tcp -d 127.0.0.1 --dport 8080 -j REDIRECT --to-ports 8081; \
    $IPT -t nat -S OUTPUT; nc 127.0.0.1 8080 </dev/null; \
    $IPT -t nat -F OUTPUT";
/// What [`REDIRECT`] prints last.
pub const REDIRECT_MARKER: &str = "redirected";

/// [`REDIRECT`] with the iptables binary `ipt`.
pub fn redirect_with(ipt: &str) -> String {
    format!("IPT={ipt}; {REDIRECT}")
}

/// The same with nftables' own syntax.
pub const NFT_REDIRECT: &str = "(nc -ll -p 8082 -e echo nft-redirected &); sleep 0.5; \
    nft add table ip isola; \
    nft add chain ip isola out '{ type nat hook output priority -100; }'; \
    nft add rule ip isola out ip daddr 127.0.0.1 tcp dport 8090 redirect to :8082; \
    nft list table ip isola; nc 127.0.0.1 8090 </dev/null; nft delete table ip isola";
/// What [`NFT_REDIRECT`] prints last.
pub const NFT_REDIRECT_MARKER: &str = "nft-redirected";

/// A bridge, a veth pair with one end in a network namespace of its own, traffic across.
/// (Debian's `ip` by its path: the busybox shell would run its own `ip` applet.)
pub const BRIDGE: &str = "/usr/sbin/ip link add br-t type bridge; /usr/sbin/ip addr add 10.77.0.1/24 dev br-t; \
    /usr/sbin/ip link set br-t up; /usr/sbin/ip link add v-t0 type veth peer name v-t1; \
    /usr/sbin/ip link set v-t0 master br-t; /usr/sbin/ip link set v-t0 up; \
    unshare -n sleep 1000 & P=$!; sleep 0.3; /usr/sbin/ip link set v-t1 netns $P; \
    nsenter -t $P -n /usr/sbin/ip addr add 10.77.0.2/24 dev v-t1; nsenter -t $P -n /usr/sbin/ip link set v-t1 up; \
    nsenter -t $P -n /usr/sbin/ip link set lo up; \
    (nsenter -t $P -n nc -l -p 7000 -e echo across-the-bridge &); sleep 0.5; \
    nc 10.77.0.2 7000 </dev/null; kill $P; /usr/sbin/ip link del br-t; /usr/sbin/ip link del v-t0 2>/dev/null || true";
/// What [`BRIDGE`] prints last.
pub const BRIDGE_MARKER: &str = "across-the-bridge";

/// A TUN device with an address, up.
pub const TUN: &str = "ls -l /dev/net/tun; IP=/usr/sbin/ip; $IP tuntap add dev tun-t mode tun; \
    $IP addr add 10.78.0.1/24 dev tun-t; $IP link set tun-t up; $IP -d link show tun-t; \
    $IP tuntap del dev tun-t mode tun; echo tun-ok";
/// What [`TUN`] prints last.
pub const TUN_MARKER: &str = "tun-ok";

/// A FUSE file system (bindfs) mounted, read through, unmounted.
pub const FUSE: &str =
    "ls -l /dev/fuse; mkdir -p /srv/src /srv/fuse; echo through-fuse > /srv/src/f; \
    bindfs /srv/src /srv/fuse; grep ' /srv/fuse ' /proc/mounts; cat /srv/fuse/f; \
    umount /srv/fuse; echo fuse-ok";
/// What [`FUSE`] prints last.
pub const FUSE_MARKER: &str = "fuse-ok";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_script_prints_its_marker() {
        for (script, marker) in [
            (REDIRECT, REDIRECT_MARKER),
            (NFT_REDIRECT, NFT_REDIRECT_MARKER),
            (BRIDGE, BRIDGE_MARKER),
            (TUN, TUN_MARKER),
            (FUSE, FUSE_MARKER),
        ] {
            assert!(script.contains(marker), "{script}");
        }
        assert!(redirect_with("iptables-nft").starts_with("IPT=iptables-nft; "));
    }
}
