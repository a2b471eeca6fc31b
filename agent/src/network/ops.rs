//! Applying checked network requests over rtnetlink, in the agent's own network namespace.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use futures::TryStreamExt;
use isola_agent_proto::types::{IPAddress, IPFamily, Interface, Route};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteScope, RouteType,
};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use super::{format_mac, Cidr, IfaceSpec, NeighborSpec, RouteSpec};
use crate::error::{AgentError, Result};

/// How long UpdateInterface waits for the NIC with the requested MAC to appear (the virtio-net
/// driver loads in the background at boot; see `crate::boot`).
pub const NIC_WAIT: Duration = Duration::from_secs(10);

/// At most this many links, addresses or routes are read in one dump.
const MAX_DUMP: usize = 4096;

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> AgentError {
    let what = what.into();
    move |e| match e {
        rtnetlink::Error::NetlinkError(m) => AgentError::io(what, m.to_io()),
        other => AgentError::io(what, std::io::Error::other(other.to_string())),
    }
}

/// A netlink connection whose driver runs on the current runtime.
fn connect() -> Result<Handle> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| AgentError::io("opening a netlink socket", e))?;
    tokio::spawn(conn);
    Ok(handle)
}

async fn links(h: &Handle) -> Result<Vec<LinkMessage>> {
    let mut out = Vec::new();
    let mut s = h.link().get().execute();
    while let Some(m) = s.try_next().await.map_err(nl("listing links"))? {
        if out.len() >= MAX_DUMP {
            break;
        }
        out.push(m);
    }
    Ok(out)
}

fn link_name(m: &LinkMessage) -> String {
    m.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

fn link_mac(m: &LinkMessage) -> Option<String> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(b) => format_mac(b),
        _ => None,
    })
}

fn link_mtu(m: &LinkMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(v) => Some(*v),
            _ => None,
        })
        .unwrap_or(0)
}

/// Waits (bounded) for the link with `mac` and returns its index.
async fn wait_for_mac(h: &Handle, mac: &str, wait: Duration) -> Result<u32> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let found = links(h)
            .await?
            .into_iter()
            .find(|m| link_mac(m).as_deref() == Some(mac));
        if let Some(m) = found {
            return Ok(m.header.index);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(AgentError::NotFound(format!(
                "no network interface with MAC {mac} appeared within {} s",
                wait.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn index_of(h: &Handle, name: &str) -> Result<u32> {
    let mut s = h.link().get().match_name(name.to_string()).execute();
    match s.try_next().await {
        Ok(Some(m)) => Ok(m.header.index),
        Ok(None) | Err(rtnetlink::Error::NetlinkError(_)) => Err(AgentError::InvalidArgument(
            format!("no network interface named {name:?} in the guest"),
        )),
        Err(e) => Err(nl(format!("looking up {name}"))(e)),
    }
}

async fn set_up(h: &Handle, index: u32, what: &str) -> Result<()> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(nl(format!("bringing {what} up")))
}

fn is_link_local(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

async fn addresses(h: &Handle) -> Result<Vec<AddressMessage>> {
    let mut out = Vec::new();
    let mut s = h.address().get().execute();
    while let Some(m) = s.try_next().await.map_err(nl("listing addresses"))? {
        if out.len() >= MAX_DUMP {
            break;
        }
        out.push(m);
    }
    Ok(out)
}

fn address_of(m: &AddressMessage) -> Option<Cidr> {
    m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(Cidr {
            addr: *ip,
            prefix: m.header.prefix_len,
        }),
        _ => None,
    })
}

/// Configures the NIC with `spec.mac`: name and MTU (while down), addresses (exactly those
/// requested, IPv6 link-local kept), up; loopback up too. Returns the interface as it is now.
pub async fn update_interface(spec: IfaceSpec) -> Result<Interface> {
    let h = connect()?;
    let mac = format_mac(&spec.mac).unwrap_or_default();
    let index = wait_for_mac(&h, &mac, NIC_WAIT).await?;
    if let Ok(lo) = index_of(&h, "lo").await {
        set_up(&h, lo, "lo").await?;
    }
    if spec.name.is_some() || spec.mtu.is_some() {
        let mut msg = LinkUnspec::new_with_index(index).down();
        if let Some(name) = &spec.name {
            msg = msg.name(name.clone());
        }
        if let Some(mtu) = spec.mtu {
            msg = msg.mtu(mtu);
        }
        h.link()
            .set(msg.build())
            .execute()
            .await
            .map_err(nl(format!("setting the name/MTU of the NIC {mac}")))?;
    }
    let wanted: HashSet<Cidr> = spec.addrs.iter().copied().collect();
    for m in addresses(&h).await? {
        if m.header.index != index {
            continue;
        }
        if let Some(a) = address_of(&m) {
            if !is_link_local(&a.addr) && !wanted.contains(&a) {
                h.address()
                    .del(m)
                    .execute()
                    .await
                    .map_err(nl(format!("removing address {a}")))?;
            }
        }
    }
    for a in &spec.addrs {
        h.address()
            .add(index, a.addr, a.prefix)
            .replace()
            .execute()
            .await
            .map_err(nl(format!("adding address {a} to the NIC {mac}")))?;
    }
    announce_on_up().await;
    set_up(&h, index, &mac).await?;
    let now = list(&h)
        .await?
        .into_iter()
        .find(|i| i.hw_addr == mac)
        .ok_or_else(|| AgentError::NotFound(format!("the NIC {mac} vanished")))?;
    if spec.localnet {
        accept_localnet(&now.name).await?;
    }
    tracing::info!(%mac, name = ?spec.name, mtu = ?spec.mtu, addrs = ?spec.addrs, localnet = spec.localnet, "network interface configured");
    Ok(now)
}

/// Lets IPv4 packets to and from 127.0.0.0/8 through link `name` (`route_localnet`): the
/// host's port-forward connections arrive addressed to 127.0.0.1 and are answered from it.
async fn accept_localnet(name: &str) -> Result<()> {
    if !super::valid_ifname(name) {
        return Err(AgentError::InvalidArgument(format!(
            "invalid interface name {name:?}"
        )));
    }
    let path = format!("/proc/sys/net/ipv4/conf/{name}/route_localnet");
    tokio::fs::write(&path, b"1")
        .await
        .map_err(|e| AgentError::io(format!("writing {path}"), e))
}

/// `arp_notify`: the kernel sends a gratuitous ARP when a NIC comes up, so the pod network
/// (the CNI bridge, the host) learns at once that the pod's address now answers at this MAC,
/// rather than after its neighbour entries time out (a reused pod IP had another MAC before).
const ARP_NOTIFY: &str = "/proc/sys/net/ipv4/conf/all/arp_notify";

async fn announce_on_up() {
    if let Err(e) = tokio::fs::write(ARP_NOTIFY, b"1").await {
        tracing::warn!(error = %e, "cannot enable {ARP_NOTIFY}");
    }
}

/// Every link with its addresses.
pub async fn list_interfaces() -> Result<Vec<Interface>> {
    list(&connect()?).await
}

async fn list(h: &Handle) -> Result<Vec<Interface>> {
    let mut by_index: HashMap<u32, Vec<IPAddress>> = HashMap::new();
    for m in addresses(h).await? {
        if let Some(a) = address_of(&m) {
            by_index.entry(m.header.index).or_default().push(IPAddress {
                family: family(a.addr.is_ipv6()).into(),
                address: a.addr.to_string(),
                mask: a.prefix.to_string(),
                ..Default::default()
            });
        }
    }
    Ok(links(h)
        .await?
        .iter()
        .map(|m| Interface {
            device: link_name(m),
            name: link_name(m),
            ip_addresses: by_index.remove(&m.header.index).unwrap_or_default(),
            mtu: u64::from(link_mtu(m)),
            hw_addr: link_mac(m).unwrap_or_default(),
            ..Default::default()
        })
        .collect())
}

fn family(v6: bool) -> IPFamily {
    if v6 {
        IPFamily::V6
    } else {
        IPFamily::V4
    }
}

async fn main_routes(h: &Handle) -> Result<Vec<RouteMessage>> {
    let mut out = Vec::new();
    for q in [
        RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
        RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
    ] {
        let mut s = h.route().get(q).execute();
        while let Some(m) = s.try_next().await.map_err(nl("listing routes"))? {
            if out.len() >= MAX_DUMP {
                break;
            }
            let table = m
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(m.header.table));
            if table == u32::from(RouteHeader::RT_TABLE_MAIN) && m.header.kind == RouteType::Unicast
            {
                out.push(m);
            }
        }
    }
    Ok(out)
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn oif(m: &RouteMessage) -> Option<u32> {
    m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

fn dest(m: &RouteMessage) -> Option<IpAddr> {
    m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(d) => route_ip(d),
        _ => None,
    })
}

/// Replaces the main-table routes through the devices `routes` name with exactly `routes`
/// (IPv6 link-local and multicast routes stay: the kernel owns them). Routes without a gateway
/// go first so gateways are reachable.
pub async fn update_routes(mut routes: Vec<RouteSpec>) -> Result<Vec<Route>> {
    let h = connect()?;
    let mut index: HashMap<String, u32> = HashMap::new();
    for r in &routes {
        if !index.contains_key(&r.device) {
            index.insert(r.device.clone(), index_of(&h, &r.device).await?);
        }
    }
    let devices: HashSet<u32> = index.values().copied().collect();
    for m in main_routes(&h).await? {
        let keep = dest(&m)
            .is_some_and(|d| is_link_local(&d) || matches!(d, IpAddr::V6(v6) if v6.is_multicast()));
        if keep || !oif(&m).is_some_and(|i| devices.contains(&i)) {
            continue;
        }
        h.route()
            .del(m)
            .execute()
            .await
            .map_err(nl("removing a route"))?;
    }
    routes.sort_by_key(|r| r.gateway.is_some());
    for r in &routes {
        let msg = route_message(r, index[&r.device])?;
        h.route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(nl(format!(
                "adding the route to {} via {:?} dev {}",
                r.dest.map_or("default".into(), |d| d.to_string()),
                r.gateway,
                r.device
            )))?;
    }
    tracing::info!(routes = routes.len(), "routes replaced");
    list_routes_with(&h).await
}

fn route_message(r: &RouteSpec, oif: u32) -> Result<RouteMessage> {
    let unspecified: IpAddr = if r.ipv6 {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    };
    let (addr, prefix) = r.dest.map_or((unspecified, 0), |d| (d.addr, d.prefix));
    fn bad(e: impl std::fmt::Display) -> AgentError {
        AgentError::InvalidArgument(format!("route: {e}"))
    }
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(addr, prefix)
        .map_err(bad)?
        .output_interface(oif)
        .scope(RouteScope::from(r.scope));
    if let Some(g) = r.gateway {
        b = b.gateway(g).map_err(bad)?;
    }
    if let Some(s) = r.source {
        b = b.pref_source(s).map_err(bad)?;
    }
    Ok(b.build())
}

/// The main-table routes.
pub async fn list_routes() -> Result<Vec<Route>> {
    list_routes_with(&connect()?).await
}

async fn list_routes_with(h: &Handle) -> Result<Vec<Route>> {
    let names: HashMap<u32, String> = links(h)
        .await?
        .iter()
        .map(|m| (m.header.index, link_name(m)))
        .collect();
    Ok(main_routes(h)
        .await?
        .iter()
        .map(|m| {
            let ip = |f: fn(&RouteAttribute) -> Option<&RouteAddress>| {
                m.attributes
                    .iter()
                    .find_map(f)
                    .and_then(route_ip)
                    .map(|i| i.to_string())
                    .unwrap_or_default()
            };
            let d = dest(m);
            Route {
                dest: d
                    .map(|d| format!("{d}/{}", m.header.destination_prefix_length))
                    .unwrap_or_default(),
                gateway: ip(|a| match a {
                    RouteAttribute::Gateway(g) => Some(g),
                    _ => None,
                }),
                source: ip(|a| match a {
                    RouteAttribute::PrefSource(s) => Some(s),
                    _ => None,
                }),
                device: oif(m)
                    .and_then(|i| names.get(&i).cloned())
                    .unwrap_or_default(),
                scope: u32::from(u8::from(m.header.scope)),
                family: family(
                    m.header.address_family == rtnetlink::packet_route::AddressFamily::Inet6,
                )
                .into(),
                ..Default::default()
            }
        })
        .collect())
}

/// Adds (or replaces) permanent neighbour entries.
pub async fn add_neighbors(neighbors: Vec<NeighborSpec>) -> Result<()> {
    let h = connect()?;
    for n in &neighbors {
        let index = index_of(&h, &n.device).await?;
        h.neighbours()
            .add(index, n.ip)
            .link_layer_address(&n.mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(nl(format!("adding neighbour {} on {}", n.ip, n.device)))?;
    }
    tracing::info!(neighbors = neighbors.len(), "permanent neighbours added");
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Against the real kernel, in a network namespace of the test thread's own (root only).

    use super::*;
    use crate::network::{parse_interface, parse_neighbor, parse_route};
    use isola_agent_proto::types::ARPNeighbor;
    use rtnetlink::LinkVeth;

    /// Runs `f` on a thread in a fresh network namespace with a current-thread runtime.
    fn in_new_netns<F, Fut>(f: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("unshare(CLONE_NEWNET) needs root");
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(f());
        })
        .join()
        .unwrap();
    }

    fn addr(a: &str, mask: &str) -> IPAddress {
        IPAddress {
            address: a.into(),
            mask: mask.into(),
            ..Default::default()
        }
    }

    #[test]
    fn netns_interface_routes_and_neighbours_applied() {
        in_new_netns(|| async {
            let h = connect().unwrap();
            // Stands in for the virtio-net NIC, under the kernel's name.
            // (A veth: the dummy driver may be missing on the host.)
            h.link()
                .add(LinkVeth::new("ens3", "peer0").build())
                .execute()
                .await
                .unwrap();
            let mac = LinkUnspec::new_with_name("ens3").address(vec![0x0a, 0x58, 0x0a, 0x58, 0, 7]);
            h.link().set(mac.build()).execute().await.unwrap();
            let peer = LinkUnspec::new_with_name("peer0").up();
            h.link().set(peer.build()).execute().await.unwrap();

            let iface = Interface {
                name: "eth0".into(),
                hw_addr: "0A:58:0A:58:00:07".into(),
                mtu: 1450,
                ip_addresses: vec![addr("10.88.0.7", "16")],
                ..Default::default()
            };
            let got = update_interface(parse_interface(&iface).unwrap())
                .await
                .unwrap();
            assert_eq!(
                (got.name.as_str(), got.mtu, got.hw_addr.as_str()),
                ("eth0", 1450, "0a:58:0a:58:00:07")
            );
            assert!(
                got.ip_addresses
                    .iter()
                    .any(|a| a.address == "10.88.0.7" && a.mask == "16"),
                "{got:?}"
            );
            // Again with another address: exactly the requested ones remain.
            let mut again = iface.clone();
            again.ip_addresses = vec![addr("10.88.0.8", "16")];
            let got = update_interface(parse_interface(&again).unwrap())
                .await
                .unwrap();
            let v4: Vec<_> = got
                .ip_addresses
                .iter()
                .filter(|a| !a.address.contains(':'))
                .map(|a| a.address.clone())
                .collect();
            assert_eq!(v4, ["10.88.0.8"]);
            let lo = list_interfaces()
                .await
                .unwrap()
                .into_iter()
                .find(|i| i.name == "lo")
                .unwrap();
            assert!(
                lo.ip_addresses.iter().any(|a| a.address == "127.0.0.1"),
                "lo is up: {lo:?}"
            );

            let routes = [
                Route {
                    dest: String::new(),
                    gateway: "10.88.0.1".into(),
                    device: "eth0".into(),
                    ..Default::default()
                },
                Route {
                    dest: "10.88.0.0/16".into(),
                    device: "eth0".into(),
                    scope: 253,
                    source: "10.88.0.8".into(),
                    ..Default::default()
                },
                Route {
                    dest: "192.168.5.0/24".into(),
                    gateway: "10.88.0.254".into(),
                    device: "eth0".into(),
                    ..Default::default()
                },
            ];
            let specs: Vec<_> = routes.iter().map(|r| parse_route(r).unwrap()).collect();
            let listed = update_routes(specs).await.unwrap();
            let brief = |rs: &[Route]| {
                let mut v: Vec<_> = rs
                    .iter()
                    .filter(|r| r.family.enum_value_or_default() == IPFamily::V4)
                    .map(|r| (r.dest.clone(), r.gateway.clone(), r.device.clone()))
                    .collect();
                v.sort();
                v
            };
            let s = |x: &str| x.to_string();
            assert_eq!(
                brief(&listed),
                [
                    (s(""), s("10.88.0.1"), s("eth0")),
                    (s("10.88.0.0/16"), s(""), s("eth0")),
                    (s("192.168.5.0/24"), s("10.88.0.254"), s("eth0")),
                ]
            );
            // Replacing drops what is no longer asked for.
            let listed = update_routes(specs_of(&routes[..2])).await.unwrap();
            assert_eq!(brief(&listed).len(), 2, "{listed:?}");
            assert_eq!(brief(&list_routes().await.unwrap()).len(), 2);

            let n = ARPNeighbor {
                to_ip_address: Some(addr("10.88.0.1", "32")).into(),
                device: "eth0".into(),
                ll_address: "0a:58:0a:58:00:01".into(),
                ..Default::default()
            };
            add_neighbors(vec![parse_neighbor(&n).unwrap()])
                .await
                .unwrap();
            // Idempotent.
            add_neighbors(vec![parse_neighbor(&n).unwrap()])
                .await
                .unwrap();

            // A MAC that never appears: NotFound after the (shortened) wait.
            let err = wait_for_mac(&h, "02:00:00:00:00:99", Duration::from_millis(200))
                .await
                .unwrap_err();
            assert!(matches!(err, AgentError::NotFound(_)), "{err}");
            let mut bad = n;
            bad.device = "nope0".into();
            let err = add_neighbors(vec![parse_neighbor(&bad).unwrap()])
                .await
                .unwrap_err();
            assert!(err.to_string().contains("nope0"), "{err}");
        });
    }

    fn specs_of(routes: &[Route]) -> Vec<RouteSpec> {
        routes.iter().map(|r| parse_route(r).unwrap()).collect()
    }
}
