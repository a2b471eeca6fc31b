//! `kubectl port-forward` into the pod VM: the pod netns's `127.0.0.1` leads to the guest's.
//!
//! containerd and CRI-O serve CRI PortForward by dialing `localhost:<port>` inside the pod's
//! network namespace on the host. Under runc that is the workload's own loopback; here the
//! workload is in the guest, so isola routes the host netns's `127.0.0.1` into the VM, over the
//! pod's first tap, with nothing but routing (no proxy, no netfilter):
//!
//! ```text
//!  pod netns (host)                                     guest (the pod's netns)
//!  dial 127.0.0.1:P ─ route 127.0.0.1/32 dev tap0 ──▶ eth0 (route_localnet) ─▶ lo 127.0.0.1:P
//!  src PEER           neigh 127.0.0.1 = guest MAC      route PEER/32 dev eth0, neigh PEER = tap0
//!  tap0 ingress: src 127/8 dst PEER ─▶ host stack   ◀── answer from 127.0.0.1:P to PEER
//!  veth ingress: anything to or from 127/8 is discarded (the cluster never reaches the loopback)
//! ```
//!
//! The host side gives the tap [`PEER`] and `route_localnet`, takes `127.0.0.1` off the netns's
//! `lo` and routes it to the tap, with a permanent neighbour entry (the guest NIC's MAC);
//! a tc filter on the tap's ingress hands the guest's answers (from 127/8 to [`PEER`]) to the
//! netns's own stack ahead of the redirect to the veth. The guest side ([`super::guest`]) is a
//! route and a neighbour for [`PEER`] and `route_localnet` on the NIC. So every TCP port the
//! workload listens on at `127.0.0.1` or a wildcard address is reachable at once, data flows
//! both ways with TCP's own flow control and half-close, and a port nothing listens on answers
//! with a reset: containerd reports "connection refused", exactly as under runc.
//!
//! `route_localnet` on the guest NIC would also accept 127/8 packets from the cluster network,
//! the exposure kube-proxy had in CVE-2020-8558: the veth's ingress discards every IPv4
//! packet to or from 127.0.0.0/8 before it is redirected into the VM.
//!
//! Not covered: IPv6 `[::1]` (Linux never routes it off the loopback; containerd tries IPv4
//! first, so only a workload listening on `[::1]` alone is unreachable), and UDP, which CRI
//! PortForward does not carry at all.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirror, TcActionMirrorOption,
    TcActionOption, TcActionType, TcFilterU32Option, TcHandle, TcMirror, TcMirrorActionType,
    TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use rtnetlink::{Handle, RouteMessageBuilder};

use super::NetError;

/// The host side's address on the tap, the peer of every port-forward connection in the
/// guest: a link-local address that no cloud metadata service or CNI plugin is known to use.
pub const PEER: Ipv4Addr = Ipv4Addr::new(169, 254, 233, 1);

/// Where the forwarded connections go.
const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// The ingress qdisc's parent handle (`ffff:`).
const INGRESS_PARENT: u32 = 0xffff_0000;
/// tc priorities of isola's port-forward filters: ahead of the redirects (which the kernel
/// numbers from 49152 down).
const PRIO_PASS: u16 = 1;
const PRIO_DROP_TO: u16 = 1;
const PRIO_DROP_FROM: u16 = 2;
/// Offsets of the IPv4 source and destination in the network header (u32 offsets are
/// relative to it).
const IPV4_SRC: i32 = 12;
const IPV4_DST: i32 = 16;

/// What the guest needs for its side (see [`super::guest::describe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortForwardLink {
    /// The guest NIC (named as the pod interface) the forwarded connections arrive on.
    pub device: String,
    /// The tap's MAC, the guest's neighbour entry for [`PEER`].
    pub host_mac: String,
}

/// A u32 key matching the IPv4 network `net`/`prefix` at `offset`.
fn ipv4_key(net: Ipv4Addr, prefix: u8, offset: i32) -> TcU32Key {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    };
    let mut key = TcU32Key::default();
    key.mask = mask;
    key.val = u32::from(net) & mask;
    key.off = offset;
    key
}

/// A terminal u32 selector matching all of `keys`.
fn selector(keys: Vec<TcU32Key>) -> TcU32Selector {
    let mut sel = TcU32Selector::default();
    sel.flags = TcU32SelectorFlags::Terminal;
    sel.nkeys = u8::try_from(keys.len()).unwrap_or(u8::MAX);
    sel.keys = keys;
    sel
}

/// The filter on the tap's ingress: the guest's answers to [`PEER`] go to the netns's own
/// stack. A u32 match with a class and no action ends classification with TC_ACT_OK, so the
/// redirect to the veth behind it never sees them.
pub fn pass_answers() -> Vec<TcFilterU32Option> {
    vec![
        TcFilterU32Option::Selector(selector(vec![
            ipv4_key(Ipv4Addr::new(127, 0, 0, 0), 8, IPV4_SRC),
            ipv4_key(PEER, 32, IPV4_DST),
        ])),
        TcFilterU32Option::ClassId(TcHandle { major: 1, minor: 1 }),
    ]
}

/// The filters on the veth's ingress: nothing from the cluster to or from 127/8 reaches the
/// guest. They redirect such packets to the netns's `lo` (index `lo`), where the kernel
/// discards them as martians (the netns enables `route_localnet` on the tap only): tc's
/// `mirred` is all isola needs from the host kernel, whose `gact` (the usual "drop") is
/// optional and missing on some node kernels.
pub fn discard_loopback(lo: u32) -> [(u16, Vec<TcFilterU32Option>); 2] {
    let net = Ipv4Addr::new(127, 0, 0, 0);
    let discard = |offset| {
        vec![
            TcFilterU32Option::Selector(selector(vec![ipv4_key(net, 8, offset)])),
            TcFilterU32Option::Action(vec![redirect_to(lo)]),
        ]
    };
    [
        (PRIO_DROP_TO, discard(IPV4_DST)),
        (PRIO_DROP_FROM, discard(IPV4_SRC)),
    ]
}

/// tc's `mirred egress redirect dev <index>`.
fn redirect_to(index: u32) -> TcAction {
    let mut mirror = TcMirror::default();
    mirror.generic = TcActionGeneric::default();
    mirror.generic.action = TcActionType::Stolen;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = index;
    let mut action = TcAction::default();
    action.tab = 1;
    action.attributes = vec![
        TcActionAttribute::Kind(TcActionMirror::KIND.to_string()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
    ];
    action
}

/// `protocol ip` in network byte order.
fn eth_p_ip() -> u16 {
    (libc::ETH_P_IP as u16).to_be()
}

async fn add_filter(
    handle: &Handle,
    index: u32,
    prio: u16,
    options: Vec<TcFilterU32Option>,
    what: &str,
) -> Result<(), NetError> {
    let index = i32::try_from(index)
        .map_err(|_| NetError::Unusable(format!("link index {index} out of range")))?;
    handle
        .traffic_filter(index)
        .add()
        .parent(INGRESS_PARENT)
        .priority(prio)
        .protocol(eth_p_ip())
        .u32(&options)
        .map_err(|e| NetError::netlink(format!("building {what}"), e))?
        .execute()
        .await
        .map_err(|e| NetError::netlink(format!("adding {what}"), e))
}

/// Arranges the host side on `tap` (whose ingress qdisc exists) for the guest NIC with
/// `guest_mac`, behind `veth`; returns the tap's MAC for the guest's side.
pub async fn arrange(
    handle: &Handle,
    tap: (&str, u32),
    veth: u32,
    guest_mac: &[u8],
) -> Result<String, NetError> {
    let (tap_name, tap_index) = tap;
    // Filters first: the veth must discard loopback traffic before anything accepts it.
    let lo = super::host::link_index(handle, "lo").await?;
    for (prio, filter) in discard_loopback(lo) {
        add_filter(handle, veth, prio, filter, "the veth's loopback filter").await?;
    }
    add_filter(
        handle,
        tap_index,
        PRIO_PASS,
        pass_answers(),
        "the tap's port-forward filter",
    )
    .await?;
    let conf = format!("/proc/sys/net/ipv4/conf/{tap_name}/route_localnet");
    tokio::fs::write(&conf, b"1")
        .await
        .map_err(|e| NetError::io(format!("writing {conf}"), e))?;
    handle
        .address()
        .add(tap_index, IpAddr::V4(PEER), 32)
        .replace()
        .execute()
        .await
        .map_err(|e| NetError::netlink(format!("adding {PEER}/32 to {tap_name}"), e))?;
    handle
        .neighbours()
        .add(tap_index, IpAddr::V4(LOOPBACK))
        .link_layer_address(guest_mac)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .map_err(|e| {
            NetError::netlink(format!("adding the guest as {LOOPBACK} on {tap_name}"), e)
        })?;
    set_loopback_address(handle, false).await?;
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(LOOPBACK, 32)
        .output_interface(tap_index)
        .pref_source(PEER)
        .scope(RouteScope::Link)
        .build();
    handle
        .route()
        .add(route)
        .replace()
        .execute()
        .await
        .map_err(|e| NetError::netlink(format!("routing {LOOPBACK} to {tap_name}"), e))?;
    link_mac(handle, tap_index).await
}

/// Gives the netns's `lo` its `127.0.0.1/8` back (`present`) or takes it away; quiet when it
/// is already so.
pub async fn set_loopback_address(handle: &Handle, present: bool) -> Result<(), NetError> {
    let lo = super::host::link_index(handle, "lo").await?;
    let mut current = None;
    let mut addrs = handle.address().get().set_link_index_filter(lo).execute();
    while let Some(m) = addrs
        .try_next()
        .await
        .map_err(|e| NetError::netlink("listing the addresses of lo", e))?
    {
        let is_lo = m
            .attributes
            .iter()
            .any(|a| matches!(a, AddressAttribute::Address(IpAddr::V4(ip)) if *ip == LOOPBACK));
        if is_lo {
            current = Some(m);
        }
    }
    match (current, present) {
        (Some(m), false) => handle
            .address()
            .del(m)
            .execute()
            .await
            .map_err(|e| NetError::netlink(format!("taking {LOOPBACK} off lo"), e)),
        (None, true) => handle
            .address()
            .add(lo, IpAddr::V4(LOOPBACK), 8)
            .execute()
            .await
            .map_err(|e| NetError::netlink(format!("giving lo {LOOPBACK}/8 back"), e)),
        _ => Ok(()),
    }
}

/// The MAC of link `index` as `aa:bb:cc:dd:ee:ff`.
async fn link_mac(handle: &Handle, index: u32) -> Result<String, NetError> {
    use rtnetlink::packet_route::link::LinkAttribute;
    let mut links = handle.link().get().match_index(index).execute();
    let link = links
        .try_next()
        .await
        .map_err(|e| NetError::netlink(format!("reading link {index}"), e))?
        .ok_or_else(|| NetError::Unusable(format!("link {index} vanished")))?;
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(mac) => super::mac_string(mac),
            _ => None,
        })
        .ok_or_else(|| NetError::Unusable(format!("link {index} has no MAC address")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_networks_in_host_order() {
        let k = ipv4_key(Ipv4Addr::new(127, 1, 2, 3), 8, IPV4_SRC);
        assert_eq!((k.val, k.mask, k.off), (0x7f00_0000, 0xff00_0000, 12));
        let k = ipv4_key(PEER, 32, IPV4_DST);
        assert_eq!((k.val, k.mask, k.off), (u32::from(PEER), u32::MAX, 16));
        assert_eq!(ipv4_key(PEER, 0, 16).mask, 0);
    }

    fn keys(options: &[TcFilterU32Option]) -> Vec<(u32, u32, i32)> {
        options
            .iter()
            .find_map(|o| match o {
                TcFilterU32Option::Selector(s) => {
                    assert_eq!(usize::from(s.nkeys), s.keys.len());
                    assert_eq!(s.flags, TcU32SelectorFlags::Terminal);
                    Some(s.keys.iter().map(|k| (k.val, k.mask, k.off)).collect())
                }
                _ => None,
            })
            .expect("a selector")
    }

    #[test]
    fn answers_pass_to_the_stack_with_a_class_and_no_action() {
        let pass = pass_answers();
        assert_eq!(
            keys(&pass),
            [
                (0x7f00_0000, 0xff00_0000, 12),
                (u32::from(PEER), u32::MAX, 16)
            ]
        );
        assert!(pass
            .iter()
            .any(|o| matches!(o, TcFilterU32Option::ClassId(_))));
        assert!(!pass
            .iter()
            .any(|o| matches!(o, TcFilterU32Option::Action(_))));
    }

    #[test]
    fn the_cluster_never_reaches_the_loopback() {
        let [to, from] = discard_loopback(1);
        assert_eq!(keys(&to.1), [(0x7f00_0000, 0xff00_0000, 16)]);
        assert_eq!(keys(&from.1), [(0x7f00_0000, 0xff00_0000, 12)]);
        for (prio, filter) in [&to, &from] {
            // Ahead of the redirect into the VM, which the kernel numbers from 49152 down.
            assert!(*prio < 49152);
            let action = filter
                .iter()
                .find_map(|o| match o {
                    TcFilterU32Option::Action(a) => Some(a[0].clone()),
                    _ => None,
                })
                .expect("an action");
            let m = action
                .attributes
                .iter()
                .find_map(|a| match a {
                    TcActionAttribute::Options(o) => match &o[0] {
                        TcActionOption::Mirror(TcActionMirrorOption::Parms(m)) => Some(m.clone()),
                        _ => None,
                    },
                    _ => None,
                })
                .expect("mirred parameters");
            assert_eq!((m.ifindex, m.eaction), (1, TcMirrorActionType::EgressRedir));
        }
    }

    #[test]
    fn the_peer_is_link_local_and_no_known_service_address() {
        assert!(PEER.is_link_local());
        assert_ne!(PEER, Ipv4Addr::new(169, 254, 169, 254));
        assert_ne!(PEER, Ipv4Addr::new(169, 254, 1, 1));
    }
}
