//! The pod network as the agent's protocol describes it (pure, unit-tested), and pushing it
//! into the guest after CreateSandbox.
//!
//! Conventions (agent-proto/proto/types.proto): `IPAddress.mask` is the prefix length in
//! decimal; `Route.dest` is `addr/prefix`, empty for the default route; neighbours are
//! permanent (`NUD_PERMANENT`).

use isola_agent_proto::types::{ARPNeighbor, IPAddress, IPFamily, Interface, Route};

use std::net::IpAddr;

use super::{port_forward, IpNet, PodNetwork};
use crate::agent::AgentApi;
use crate::error::Result;

/// `NUD_PERMANENT` from linux/neighbour.h.
pub const NUD_PERMANENT: i32 = 0x80;
/// `RT_SCOPE_LINK`.
const SCOPE_LINK: u8 = 253;

fn family(ipv6: bool) -> IPFamily {
    if ipv6 {
        IPFamily::V6
    } else {
        IPFamily::V4
    }
}

fn ip_address(n: &IpNet) -> IPAddress {
    IPAddress {
        family: family(n.addr.is_ipv6()).into(),
        address: n.addr.to_string(),
        mask: n.prefix.to_string(),
        ..Default::default()
    }
}

/// The interfaces, routes and neighbours to send, in the order the agent needs them. With a
/// port-forward link, its NIC accepts loopback traffic and has a route and a permanent
/// neighbour for the host's [`port_forward::PEER`].
pub fn describe(net: &PodNetwork) -> (Vec<Interface>, Vec<Route>, Vec<ARPNeighbor>) {
    let forward = net.port_forward.as_ref();
    let interfaces = net
        .interfaces
        .iter()
        .map(|i| Interface {
            device: i.name.clone(),
            name: i.name.clone(),
            ip_addresses: i.addrs.iter().map(ip_address).collect(),
            mtu: u64::from(i.mtu),
            hw_addr: i.mac.clone(),
            localnet: forward.is_some_and(|f| f.device == i.name),
            ..Default::default()
        })
        .collect();
    let peer = IpAddr::V4(port_forward::PEER);
    let peer_route = forward.map(|f| super::PodRoute {
        dest: Some(IpNet {
            addr: peer,
            prefix: 32,
        }),
        gateway: None,
        source: None,
        scope: SCOPE_LINK,
        device: f.device.clone(),
        ipv6: false,
    });
    let peer_neighbor = forward.map(|f| super::PodNeighbor {
        ip: peer,
        mac: f.host_mac.clone(),
        device: f.device.clone(),
    });
    // Routes without a gateway first: a gateway must be reachable when its route is added.
    let mut routes: Vec<&super::PodRoute> = net.routes.iter().chain(&peer_route).collect();
    routes.sort_by_key(|r| r.gateway.is_some());
    let routes = routes
        .into_iter()
        .map(|r| Route {
            dest: r.dest.map(|d| d.to_string()).unwrap_or_default(),
            gateway: r.gateway.map(|g| g.to_string()).unwrap_or_default(),
            device: r.device.clone(),
            source: r.source.map(|s| s.to_string()).unwrap_or_default(),
            scope: u32::from(r.scope),
            family: family(r.ipv6).into(),
            ..Default::default()
        })
        .collect();
    let neighbors = net
        .neighbors
        .iter()
        .chain(&peer_neighbor)
        .map(|n| ARPNeighbor {
            to_ip_address: Some(ip_address(&IpNet {
                addr: n.ip,
                prefix: if n.ip.is_ipv6() { 128 } else { 32 },
            }))
            .into(),
            device: n.device.clone(),
            ll_address: n.mac.clone(),
            state: NUD_PERMANENT,
            ..Default::default()
        })
        .collect();
    (interfaces, routes, neighbors)
}

/// Configures the guest: each interface, then the routes, then the neighbours.
pub async fn configure(agent: &dyn AgentApi, net: &PodNetwork) -> Result<()> {
    let t0 = std::time::Instant::now();
    let (interfaces, routes, neighbors) = describe(net);
    let counts = (interfaces.len(), routes.len(), neighbors.len());
    for i in interfaces {
        agent.update_interface(i).await?;
    }
    if !routes.is_empty() {
        agent.update_routes(routes).await?;
    }
    if !neighbors.is_empty() {
        agent.add_arp_neighbors(neighbors).await?;
    }
    tracing::info!(
        interfaces = counts.0,
        routes = counts.1,
        neighbors = counts.2,
        elapsed_ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX),
        "guest network configured"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{PodInterface, PodNeighbor, PodRoute};

    /// What CNI's bridge + host-local plugins leave in a pod netns.
    pub fn cni_bridge_pod() -> PodNetwork {
        PodNetwork {
            port_forward: None,
            interfaces: vec![PodInterface {
                name: "eth0".into(),
                mac: "0a:58:0a:58:00:07".into(),
                mtu: 1500,
                addrs: vec![
                    IpNet {
                        addr: "10.88.0.7".parse().unwrap(),
                        prefix: 16,
                    },
                    IpNet {
                        addr: "fd00:88::7".parse().unwrap(),
                        prefix: 64,
                    },
                ],
            }],
            routes: vec![
                PodRoute {
                    dest: None,
                    gateway: Some("10.88.0.1".parse().unwrap()),
                    source: None,
                    scope: 0,
                    device: "eth0".into(),
                    ipv6: false,
                },
                PodRoute {
                    dest: Some(IpNet {
                        addr: "10.88.0.0".parse().unwrap(),
                        prefix: 16,
                    }),
                    gateway: None,
                    source: Some("10.88.0.7".parse().unwrap()),
                    scope: 253,
                    device: "eth0".into(),
                    ipv6: false,
                },
            ],
            neighbors: vec![PodNeighbor {
                ip: "10.88.0.1".parse().unwrap(),
                mac: "0a:58:0a:58:00:01".into(),
                device: "eth0".into(),
            }],
        }
    }

    #[test]
    fn described_for_the_agent() {
        let (ifs, routes, neighbors) = describe(&cni_bridge_pod());
        assert_eq!(ifs.len(), 1);
        let i = &ifs[0];
        assert_eq!(
            (i.name.as_str(), i.hw_addr.as_str(), i.mtu),
            ("eth0", "0a:58:0a:58:00:07", 1500)
        );
        let addrs: Vec<_> = i
            .ip_addresses
            .iter()
            .map(|a| {
                (
                    a.family.enum_value_or_default(),
                    a.address.as_str(),
                    a.mask.as_str(),
                )
            })
            .collect();
        assert_eq!(
            addrs,
            [
                (IPFamily::V4, "10.88.0.7", "16"),
                (IPFamily::V6, "fd00:88::7", "64")
            ]
        );
        // The link route before the default route through its gateway.
        let r: Vec<_> = routes
            .iter()
            .map(|r| {
                (
                    r.dest.as_str(),
                    r.gateway.as_str(),
                    r.source.as_str(),
                    r.scope,
                )
            })
            .collect();
        assert_eq!(
            r,
            [
                ("10.88.0.0/16", "", "10.88.0.7", 253),
                ("", "10.88.0.1", "", 0)
            ]
        );
        assert_eq!(neighbors.len(), 1);
        assert_eq!(neighbors[0].ll_address, "0a:58:0a:58:00:01");
        assert_eq!(neighbors[0].state, NUD_PERMANENT);
        assert_eq!(neighbors[0].to_ip_address.mask, "32");
    }

    #[test]
    fn a_port_forward_link_opens_the_guest_nic_to_the_hosts_peer() {
        let mut pod = cni_bridge_pod();
        assert!(!describe(&pod).0[0].localnet, "no link, no localnet");
        pod.port_forward = Some(port_forward::PortForwardLink {
            device: "eth0".into(),
            host_mac: "02:00:00:00:00:aa".into(),
        });
        let (ifs, routes, neighbors) = describe(&pod);
        assert!(ifs[0].localnet);
        let peer = routes
            .iter()
            .position(|r| r.dest == "169.254.233.1/32")
            .expect("a route to the peer");
        assert_eq!(
            (routes[peer].device.as_str(), routes[peer].scope),
            ("eth0", 253)
        );
        assert!(routes[peer].gateway.is_empty());
        let via_gateway = routes.iter().position(|r| !r.gateway.is_empty()).unwrap();
        assert!(peer < via_gateway, "link routes first: {routes:?}");
        let n = neighbors
            .iter()
            .find(|n| n.to_ip_address.address == "169.254.233.1")
            .expect("a neighbour for the peer");
        assert_eq!(
            (n.ll_address.as_str(), n.state),
            ("02:00:00:00:00:aa", NUD_PERMANENT)
        );
        assert_eq!(neighbors.len(), 2, "the pod's own neighbour stays");
    }

    #[test]
    fn nothing_to_describe() {
        let (i, r, n) = describe(&PodNetwork::default());
        assert!(i.is_empty() && r.is_empty() && n.is_empty());
    }
}
