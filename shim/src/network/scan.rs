//! Reading the pod netns over netlink ([`scan`]) and choosing what the guest gets (pure:
//! [`choose_links`], [`keep_route`], unit-tested).

use std::collections::HashMap;
use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, RouteMessageBuilder};

use super::tap::TAP_SUFFIX;
use super::{mac_string, IpNet, NetError, PodInterface, PodNeighbor, PodNetwork, PodRoute};

/// At most this many links, addresses, routes or neighbours are read from a netns (a pod
/// netns has a handful; the bound keeps a hostile one from growing the shim).
const MAX_ENTRIES: usize = 4096;

/// What matters of one link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkFacts {
    pub index: u32,
    pub name: String,
    pub mac: Option<String>,
    pub mtu: u32,
    pub loopback: bool,
    /// `veth`, `tun`, ... when the kernel says.
    pub kind: Option<String>,
}

impl LinkFacts {
    fn of(msg: &LinkMessage) -> Self {
        let mut f = LinkFacts {
            index: msg.header.index,
            name: String::new(),
            mac: None,
            mtu: 0,
            loopback: msg.header.flags.contains(LinkFlags::Loopback),
            kind: None,
        };
        for a in &msg.attributes {
            match a {
                LinkAttribute::IfName(n) => f.name = n.clone(),
                LinkAttribute::Address(b) => f.mac = mac_string(b),
                LinkAttribute::Mtu(m) => f.mtu = *m,
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Kind(k) = i {
                            f.kind = Some(match k {
                                InfoKind::Veth => "veth".to_string(),
                                InfoKind::Tun => "tun".to_string(),
                                other => format!("{other:?}").to_ascii_lowercase(),
                            });
                        }
                    }
                }
                _ => {}
            }
        }
        f
    }
}

/// The links the VM gets: Ethernet-like (6-byte MAC), not loopback, not one of our taps,
/// not a tun/tap at all; in index order.
pub fn choose_links(links: &[LinkFacts]) -> Vec<LinkFacts> {
    let mut chosen: Vec<LinkFacts> = links
        .iter()
        .filter(|l| {
            !l.loopback
                && l.mac.as_deref().is_some_and(|m| m != "00:00:00:00:00:00")
                && !l.name.ends_with(TAP_SUFFIX)
                && l.kind.as_deref() != Some("tun")
        })
        .cloned()
        .collect();
    chosen.sort_by_key(|l| l.index);
    chosen
}

/// IPv6 link-local (fe80::/10): the guest makes its own.
fn is_link_local(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// A main-table unicast route, as read: (table, kind, route).
pub fn route_of(msg: &RouteMessage, names: &HashMap<u32, String>) -> Option<(u32, PodRoute)> {
    if msg.header.kind != RouteType::Unicast {
        return None;
    }
    let mut table = u32::from(msg.header.table);
    let mut r = PodRoute {
        dest: None,
        gateway: None,
        source: None,
        scope: u8::from(msg.header.scope),
        device: String::new(),
        ipv6: msg.header.address_family == AddressFamily::Inet6,
    };
    for a in &msg.attributes {
        match a {
            RouteAttribute::Destination(d) => {
                r.dest = route_ip(d).map(|addr| IpNet {
                    addr,
                    prefix: msg.header.destination_prefix_length,
                })
            }
            RouteAttribute::Gateway(g) => r.gateway = route_ip(g),
            RouteAttribute::PrefSource(s) => r.source = route_ip(s),
            RouteAttribute::Oif(i) => r.device = names.get(i)?.clone(),
            RouteAttribute::Table(t) => table = *t,
            _ => {}
        }
    }
    if r.device.is_empty() {
        return None;
    }
    Some((table, r))
}

/// Whether a route read from the netns goes to the guest: main table, a default route or a
/// destination outside IPv6 link-local and multicast (the guest kernel makes those itself).
pub fn keep_route(table: u32, r: &PodRoute) -> bool {
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return false;
    }
    match r.dest {
        None => true,
        Some(d) if d.prefix == 0 => true,
        Some(d) => {
            !is_link_local(&d.addr) && !matches!(d.addr, IpAddr::V6(v6) if v6.is_multicast())
        }
    }
}

fn bounded<T>(v: &mut Vec<T>, item: T, what: &str) -> Result<(), NetError> {
    if v.len() >= MAX_ENTRIES {
        return Err(NetError::Unusable(format!(
            "the pod network namespace has more than {MAX_ENTRIES} {what}"
        )));
    }
    v.push(item);
    Ok(())
}

/// Reads the current thread's netns: the pod interfaces (with their link indexes), routes and
/// permanent neighbours.
pub async fn scan(handle: &Handle) -> Result<(PodNetwork, Vec<LinkFacts>), NetError> {
    let mut links = Vec::new();
    let mut s = handle.link().get().execute();
    while let Some(m) = s
        .try_next()
        .await
        .map_err(|e| NetError::netlink("listing links", e))?
    {
        bounded(&mut links, LinkFacts::of(&m), "links")?;
    }
    let chosen = choose_links(&links);
    let names: HashMap<u32, String> = chosen.iter().map(|l| (l.index, l.name.clone())).collect();

    let mut addrs: HashMap<u32, Vec<IpNet>> = HashMap::new();
    let mut s = handle.address().get().execute();
    let mut count = Vec::new();
    while let Some(m) = s
        .try_next()
        .await
        .map_err(|e| NetError::netlink("listing addresses", e))?
    {
        bounded(&mut count, (), "addresses")?;
        if !names.contains_key(&m.header.index) {
            continue;
        }
        for a in &m.attributes {
            if let AddressAttribute::Address(ip) = a {
                if !is_link_local(ip) {
                    addrs.entry(m.header.index).or_default().push(IpNet {
                        addr: *ip,
                        prefix: m.header.prefix_len,
                    });
                }
            }
        }
    }

    let mut routes = Vec::new();
    for family in [
        RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
        RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
    ] {
        let mut s = handle.route().get(family).execute();
        while let Some(m) = s
            .try_next()
            .await
            .map_err(|e| NetError::netlink("listing routes", e))?
        {
            if let Some((table, r)) = route_of(&m, &names) {
                if keep_route(table, &r) {
                    bounded(&mut routes, r, "routes")?;
                }
            }
        }
    }

    let mut neighbors = Vec::new();
    for v in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut s = handle.neighbours().get().set_address_family(v).execute();
        while let Some(m) = s
            .try_next()
            .await
            .map_err(|e| NetError::netlink("listing neighbours", e))?
        {
            let Some(device) = names.get(&m.header.ifindex) else {
                continue;
            };
            if m.header.state != NeighbourState::Permanent {
                continue;
            }
            let mut ip = None;
            let mut mac = None;
            for a in &m.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                        ip = Some(IpAddr::V4(*v4))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                        ip = Some(IpAddr::V6(*v6))
                    }
                    NeighbourAttribute::LinkLayerAddress(b) => mac = mac_string(b),
                    _ => {}
                }
            }
            if let (Some(ip), Some(mac)) = (ip, mac) {
                bounded(
                    &mut neighbors,
                    PodNeighbor {
                        ip,
                        mac,
                        device: device.clone(),
                    },
                    "neighbours",
                )?;
            }
        }
    }

    let interfaces = chosen
        .iter()
        .map(|l| PodInterface {
            name: l.name.clone(),
            mac: l.mac.clone().unwrap_or_default(),
            mtu: l.mtu,
            addrs: addrs.remove(&l.index).unwrap_or_default(),
        })
        .collect();
    Ok((
        PodNetwork {
            interfaces,
            routes,
            neighbors,
            port_forward: None,
        },
        chosen,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str, mac: Option<&str>, kind: Option<&str>) -> LinkFacts {
        LinkFacts {
            index,
            name: name.into(),
            mac: mac.map(Into::into),
            mtu: 1500,
            loopback: name == "lo",
            kind: kind.map(Into::into),
        }
    }

    #[test]
    fn the_veth_is_chosen_not_lo_taps_or_tunnels() {
        let links = [
            link(1, "lo", Some("00:00:00:00:00:00"), None),
            link(3, "eth0", Some("0a:58:0a:58:00:07"), Some("veth")),
            link(4, "tap0_isola", Some("9e:00:00:00:00:01"), Some("tun")),
            link(5, "tun1", Some("9e:00:00:00:00:02"), Some("tun")),
            link(6, "ipip0", None, Some("ipip")),
            link(2, "eth1", Some("0a:58:0a:59:00:07"), Some("veth")),
        ];
        let names: Vec<_> = choose_links(&links).into_iter().map(|l| l.name).collect();
        assert_eq!(names, ["eth1", "eth0"]);
        assert!(choose_links(&links[..1]).is_empty());
    }

    fn route(dest: Option<&str>, prefix: u8) -> PodRoute {
        PodRoute {
            dest: dest.map(|d| IpNet {
                addr: d.parse().unwrap(),
                prefix,
            }),
            gateway: None,
            source: None,
            scope: 0,
            device: "eth0".into(),
            ipv6: dest.is_some_and(|d| d.contains(':')),
        }
    }

    #[test]
    fn routes_kept() {
        assert!(keep_route(254, &route(None, 0)));
        assert!(keep_route(254, &route(Some("10.88.0.0"), 16)));
        assert!(keep_route(254, &route(Some("fd00::"), 64)));
        assert!(keep_route(254, &route(Some("::"), 0)));
        assert!(
            !keep_route(255, &route(Some("10.88.0.7"), 32)),
            "local table"
        );
        assert!(!keep_route(254, &route(Some("fe80::"), 64)));
        assert!(!keep_route(254, &route(Some("ff00::"), 8)));
    }
}
