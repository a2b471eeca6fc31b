//! Pod networking, host side: the pod network namespace CNI prepared, carried into the VM.
//!
//! The model is Kata Containers' `tcfilter`: for each CNI interface (a veth) of the pod netns,
//! a tap device is created *in that netns* and joined to the veth with tc: an ingress qdisc on
//! both and a u32 match-all filter with `mirred egress redirect` each way, so every frame
//! arriving on one leaves on the other. QEMU gets the tap's descriptor and a virtio-net device
//! with the veth's MAC and MTU, and the agent gives the guest NIC the veth's addresses, routes
//! and neighbours ([`guest`]). Nothing on the host routes or bridges for the pod; the veth keeps
//! its addresses (CNI's view stays true) and the guest answers for them.
//!
//! The tap is not persistent: it lives as long as a descriptor to it is open, and QEMU holds
//! the only one, so a crashed VM leaves no tap behind. Stopping the sandbox removes the tc
//! ingress qdisc (and with it the filters) from the veth ([`PodNetworking::detach`]).
//!
//! All netlink work runs on a dedicated thread that enters the netns and drives its own
//! current-thread tokio runtime ([`netns`]); the shim's executor never blocks on it.
//! Netlink is spoken with `rtnetlink` (rust-netlink, the crate Kata's Rust agent uses): typed
//! messages for links, addresses, routes, neighbours and tc, including the u32 + mirred
//! redirect filter, rather than shelling out to `ip`/`tc` or hand-rolled netlink.

pub mod guest;
mod host;
pub mod netns;
pub mod port_forward;
mod scan;
mod tap;

use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

pub use host::HostNetworking;

/// Failures of the host-side network set-up.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Entering the pod's network namespace failed.
    #[error("entering the pod network namespace {}: {source}", path.display())]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A netlink request failed.
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    /// Another system call failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The netns holds nothing the VM could use.
    #[error("{0}")]
    Unusable(String),
}

impl NetError {
    pub(crate) fn netlink(what: impl Into<String>, source: rtnetlink::Error) -> Self {
        NetError::Netlink {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        NetError::Io {
            what: what.into(),
            source,
        }
    }

    /// The pod network namespace itself does not exist (any more).
    pub fn netns_missing(&self) -> bool {
        matches!(self, NetError::Netns { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }

    /// The kind of the OS error behind this failure, where there is one (a netlink error
    /// carries the kernel's errno).
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        match self {
            NetError::Netns { source, .. } | NetError::Io { source, .. } => Some(source.kind()),
            NetError::Netlink {
                source: rtnetlink::Error::NetlinkError(m),
                ..
            } => Some(m.to_io().kind()),
            NetError::Netlink { .. } | NetError::Unusable(_) => None,
        }
    }
}

/// An address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A pod interface (the CNI veth) as the guest NIC should look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterface {
    /// The name in the netns (`eth0`), also given to the guest NIC.
    pub name: String,
    /// `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    pub mtu: u32,
    /// Addresses, IPv6 link-local ones excepted (the guest derives its own from the MAC).
    pub addrs: Vec<IpNet>,
}

/// A route of the pod netns's main table through a pod interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRoute {
    /// None: the default route.
    pub dest: Option<IpNet>,
    pub gateway: Option<IpAddr>,
    pub source: Option<IpAddr>,
    /// The kernel's `rtm_scope` (0 universe, 253 link, ...).
    pub scope: u8,
    /// The interface's name.
    pub device: String,
    pub ipv6: bool,
}

/// A permanent neighbour entry on a pod interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNeighbor {
    pub ip: IpAddr,
    pub mac: String,
    pub device: String,
}

/// What the pod netns holds, as the guest should see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodNetwork {
    pub interfaces: Vec<PodInterface>,
    pub routes: Vec<PodRoute>,
    pub neighbors: Vec<PodNeighbor>,
    /// The way from the netns's `127.0.0.1` into the guest's, for CRI PortForward
    /// ([`port_forward`]); None until the host side is arranged.
    pub port_forward: Option<port_forward::PortForwardLink>,
}

/// A pod netns joined to taps for the VM.
#[derive(Debug)]
pub struct Attachment {
    pub network: PodNetwork,
    /// One tap per interface, in order: hand them to the VMM and drop them.
    pub taps: Vec<OwnedFd>,
}

/// The host-side network set-up, behind a trait so the task service's tests run without
/// network namespaces.
#[async_trait]
pub trait PodNetworking: Send + Sync {
    /// Scans `netns` and joins each pod interface to a new tap with tc.
    async fn attach(&self, sandbox_id: &str, netns: &Path) -> Result<Attachment, NetError>;
    /// Removes what `attach` added to the netns (the taps go with the VMM's descriptors).
    /// A netns that is already gone is not an error.
    async fn detach(
        &self,
        sandbox_id: &str,
        netns: &Path,
        net: &PodNetwork,
    ) -> Result<(), NetError>;
}

/// The network namespace the spec joins by path (CRI's pod netns), if any. A spec that asks for
/// a new netns (no path), or none at all, gets no network devices.
pub fn netns_path(spec: &Spec) -> Option<PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|ns| ns.typ() == LinuxNamespaceType::Network)?
        .path()
        .clone()
        .filter(|p| !p.as_os_str().is_empty())
}

/// The bytes of `aa:bb:cc:dd:ee:ff`, None for anything else.
pub fn mac_bytes(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        let p = parts.next().filter(|p| p.len() == 2)?;
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// `aa:bb:cc:dd:ee:ff` for a 6-byte hardware address, None for anything else.
pub fn mac_string(bytes: &[u8]) -> Option<String> {
    (bytes.len() == 6).then(|| {
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(namespaces: &str) -> Spec {
        serde_json::from_str(&format!(
            r#"{{"ociVersion":"1.0.2","linux":{{"namespaces":{namespaces}}}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn netns_from_the_spec() {
        let s = spec(r#"[{"type":"pid"},{"type":"network","path":"/var/run/netns/cni-1"}]"#);
        assert_eq!(netns_path(&s), Some(PathBuf::from("/var/run/netns/cni-1")));
        assert_eq!(netns_path(&spec(r#"[{"type":"network"}]"#)), None);
        assert_eq!(netns_path(&spec(r#"[{"type":"pid"}]"#)), None);
        let none: Spec = serde_json::from_str(r#"{"ociVersion":"1.0.2"}"#).unwrap();
        assert_eq!(netns_path(&none), None);
    }

    #[test]
    fn macs() {
        assert_eq!(
            mac_string(&[0x02, 0x42, 0xac, 0x11, 0, 2]).as_deref(),
            Some("02:42:ac:11:00:02")
        );
        assert_eq!(mac_string(&[1, 2, 3]), None);
        assert_eq!(
            mac_bytes("02:42:ac:11:00:02"),
            Some([0x02, 0x42, 0xac, 0x11, 0, 2])
        );
        for bad in [
            "02:42:ac:11:00",
            "02:42:ac:11:00:02:03",
            "2:42:ac:11:00:02",
            "zz:42:ac:11:00:02",
        ] {
            assert_eq!(mac_bytes(bad), None, "{bad}");
        }
    }
}

#[cfg(test)]
mod service_tests;
