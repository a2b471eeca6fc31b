//! Pod networking, guest side: the NIC the host plugged (virtio-net with the pod interface's
//! MAC) gets its name, MTU and addresses, the routes and permanent neighbours of the pod netns
//! (UpdateInterface, UpdateRoutes, AddARPNeighbors; ListInterfaces, ListRoutes).
//!
//! This module turns the host's protobuf messages into checked values (pure, unit-tested): the
//! host is trusted more than the workload, but a malformed request still gets
//! INVALID_ARGUMENT naming the bad field rather than a netlink error. [`ops`] applies them
//! over rtnetlink (the same crate the shim uses on the host).
//!
//! Conventions shared with the shim (`shim/src/network/guest.rs`): `IPAddress.mask` is the
//! prefix length in decimal; `Route.dest` is `addr/prefix`, empty for the default route.

pub mod ops;

use std::net::IpAddr;

use isola_agent_proto::types::{ARPNeighbor, IPAddress, IPFamily, Interface, Route};

use crate::error::{AgentError, Result};

/// At most this many addresses, routes or neighbours in one request.
pub const MAX_ITEMS: usize = 1024;

fn invalid(msg: String) -> AgentError {
    AgentError::InvalidArgument(msg)
}

/// A MAC address `aa:bb:cc:dd:ee:ff` (either case) as bytes.
pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let bad = || {
        invalid(format!(
            "invalid MAC address {s:?}: want six hex octets aa:bb:cc:dd:ee:ff"
        ))
    };
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        let p = parts.next().ok_or_else(bad)?;
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(out)
}

/// `aa:bb:cc:dd:ee:ff` of 6 bytes; None for other lengths.
pub fn format_mac(b: &[u8]) -> Option<String> {
    (b.len() == 6).then(|| {
        b.iter()
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    })
}

/// An address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn max_prefix(addr: &IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

fn parse_ip(what: &str, s: &str) -> Result<IpAddr> {
    s.trim()
        .parse()
        .map_err(|_| invalid(format!("invalid {what} {s:?}: not an IPv4 or IPv6 address")))
}

fn parse_prefix(what: &str, s: &str, addr: &IpAddr) -> Result<u8> {
    let max = max_prefix(addr);
    match s.trim().parse::<u8>() {
        Ok(p) if p <= max => Ok(p),
        _ => Err(invalid(format!(
            "invalid prefix length {s:?} of {what} {addr}: want 0..={max}"
        ))),
    }
}

fn check_family(what: &str, addr: &IpAddr, family: IPFamily) -> Result<()> {
    let v6 = family == IPFamily::V6;
    if addr.is_ipv6() != v6 {
        return Err(invalid(format!(
            "{what} {addr} does not match family {family:?}"
        )));
    }
    Ok(())
}

/// An `IPAddress`: address, prefix length in `mask` (empty: a host address).
pub fn parse_address(a: &IPAddress) -> Result<Cidr> {
    let addr = parse_ip("address", &a.address)?;
    check_family("address", &addr, a.family.enum_value_or_default())?;
    let prefix = if a.mask.trim().is_empty() {
        max_prefix(&addr)
    } else {
        parse_prefix("address", &a.mask, &addr)?
    };
    Ok(Cidr { addr, prefix })
}

/// A checked interface request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfaceSpec {
    pub mac: [u8; 6],
    /// The name to give the link; None keeps the kernel's.
    pub name: Option<String>,
    /// None keeps the current MTU.
    pub mtu: Option<u32>,
    pub addrs: Vec<Cidr>,
    /// Accept 127.0.0.0/8 on the link (`route_localnet`), for the host's port-forward path.
    pub localnet: bool,
}

/// Whether `name` is a usable interface name (what the kernel's `dev_valid_name` accepts).
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
}

pub fn parse_interface(i: &Interface) -> Result<IfaceSpec> {
    if i.hw_addr.is_empty() {
        return Err(invalid(
            "the interface has no hw_addr: the guest NIC is found by its MAC".into(),
        ));
    }
    let mac = parse_mac(&i.hw_addr)?;
    let name = match i.name.trim() {
        "" => None,
        n if valid_ifname(n) => Some(n.to_string()),
        n => return Err(invalid(format!("invalid interface name {n:?}"))),
    };
    let mtu = match i.mtu {
        0 => None,
        m @ 68..=65535 => Some(m as u32),
        m => return Err(invalid(format!("invalid MTU {m}: want 68..=65535"))),
    };
    if i.ip_addresses.len() > MAX_ITEMS {
        return Err(invalid(format!("more than {MAX_ITEMS} addresses")));
    }
    let addrs = i
        .ip_addresses
        .iter()
        .map(parse_address)
        .collect::<Result<_>>()?;
    Ok(IfaceSpec {
        mac,
        name,
        mtu,
        addrs,
        localnet: i.localnet,
    })
}

/// A checked route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// None: the default route.
    pub dest: Option<Cidr>,
    pub gateway: Option<IpAddr>,
    pub source: Option<IpAddr>,
    pub device: String,
    pub scope: u8,
    pub ipv6: bool,
}

pub fn parse_route(r: &Route) -> Result<RouteSpec> {
    let family = r.family.enum_value_or_default();
    let dest = match r.dest.trim() {
        "" | "default" => None,
        d => {
            let (a, p) = d.split_once('/').unwrap_or((d, ""));
            let addr = parse_ip("route destination", a)?;
            check_family("route destination", &addr, family)?;
            let prefix = if p.is_empty() {
                max_prefix(&addr)
            } else {
                parse_prefix("route destination", p, &addr)?
            };
            Some(Cidr { addr, prefix }).filter(|c| c.prefix > 0)
        }
    };
    let opt_ip = |what: &str, s: &str| -> Result<Option<IpAddr>> {
        if s.trim().is_empty() {
            return Ok(None);
        }
        let ip = parse_ip(what, s)?;
        check_family(what, &ip, family)?;
        Ok(Some(ip))
    };
    let gateway = opt_ip("gateway", &r.gateway)?;
    let source = opt_ip("route source", &r.source)?;
    if !valid_ifname(&r.device) {
        return Err(invalid(format!(
            "route to {} names no valid device ({:?})",
            r.dest, r.device
        )));
    }
    let scope =
        u8::try_from(r.scope).map_err(|_| invalid(format!("invalid route scope {}", r.scope)))?;
    if dest.is_none() && gateway.is_none() && scope == 0 {
        return Err(invalid(format!(
            "a default route via {} needs a gateway",
            r.device
        )));
    }
    Ok(RouteSpec {
        dest,
        gateway,
        source,
        device: r.device.clone(),
        scope,
        ipv6: family == IPFamily::V6,
    })
}

/// A checked permanent neighbour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighborSpec {
    pub ip: IpAddr,
    pub mac: [u8; 6],
    pub device: String,
}

pub fn parse_neighbor(n: &ARPNeighbor) -> Result<NeighborSpec> {
    let Some(to) = n.to_ip_address.as_ref() else {
        return Err(invalid("a neighbour without to_ip_address".into()));
    };
    let ip = parse_address(to)?.addr;
    let mac = parse_mac(&n.ll_address)?;
    if !valid_ifname(&n.device) {
        return Err(invalid(format!(
            "neighbour {ip} names no valid device ({:?})",
            n.device
        )));
    }
    Ok(NeighborSpec {
        ip,
        mac,
        device: n.device.clone(),
    })
}

/// Checks a list's length before parsing each item.
pub fn parse_all<T, U>(items: &[T], what: &str, f: impl Fn(&T) -> Result<U>) -> Result<Vec<U>> {
    if items.len() > MAX_ITEMS {
        return Err(invalid(format!("more than {MAX_ITEMS} {what}")));
    }
    items.iter().map(f).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(a: &str, mask: &str, v6: bool) -> IPAddress {
        IPAddress {
            family: if v6 { IPFamily::V6 } else { IPFamily::V4 }.into(),
            address: a.into(),
            mask: mask.into(),
            ..Default::default()
        }
    }

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("0A:58:0a:58:00:07").unwrap(),
            [0x0a, 0x58, 0x0a, 0x58, 0, 7]
        );
        for bad in [
            "",
            "0a:58:0a:58:00",
            "0a:58:0a:58:00:07:08",
            "0a:58:0a:58:00:7",
            "0a:58:0a:58:00:zz",
            "0a-58-0a-58-00-07",
        ] {
            let e = parse_mac(bad).unwrap_err();
            assert!(
                matches!(e, AgentError::InvalidArgument(_)) && e.to_string().contains("MAC"),
                "{bad}: {e}"
            );
        }
        assert_eq!(
            format_mac(&[0x0a, 0x58, 0x0a, 0x58, 0, 7]).as_deref(),
            Some("0a:58:0a:58:00:07")
        );
    }

    #[test]
    fn interfaces() {
        let mut i = Interface {
            name: "eth0".into(),
            hw_addr: "0a:58:0a:58:00:07".into(),
            mtu: 1450,
            ip_addresses: vec![addr("10.88.0.7", "16", false), addr("fd00::7", "64", true)],
            ..Default::default()
        };
        let s = parse_interface(&i).unwrap();
        assert_eq!(s.name.as_deref(), Some("eth0"));
        assert_eq!(s.mtu, Some(1450));
        assert_eq!(
            s.addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["10.88.0.7/16", "fd00::7/64"]
        );

        i.ip_addresses = vec![addr("10.88.0.7", "33", false)];
        assert!(parse_interface(&i)
            .unwrap_err()
            .to_string()
            .contains("prefix length"));
        i.ip_addresses = vec![addr("10.88.0.x", "16", false)];
        assert!(parse_interface(&i)
            .unwrap_err()
            .to_string()
            .contains("10.88.0.x"));
        i.ip_addresses = vec![addr("10.88.0.7", "16", true)];
        assert!(parse_interface(&i)
            .unwrap_err()
            .to_string()
            .contains("family"));
        i.ip_addresses = vec![addr("10.88.0.7", "", false)];
        assert_eq!(parse_interface(&i).unwrap().addrs[0].prefix, 32);
        i.mtu = 10;
        assert!(parse_interface(&i).unwrap_err().to_string().contains("MTU"));
        i.mtu = 0;
        i.name = "a/b".into();
        assert!(parse_interface(&i)
            .unwrap_err()
            .to_string()
            .contains("name"));
        i.name = String::new();
        i.hw_addr = String::new();
        assert!(parse_interface(&i)
            .unwrap_err()
            .to_string()
            .contains("hw_addr"));
    }

    fn route(dest: &str, gw: &str, scope: u32) -> Route {
        Route {
            dest: dest.into(),
            gateway: gw.into(),
            device: "eth0".into(),
            scope,
            ..Default::default()
        }
    }

    #[test]
    fn routes() {
        let d = parse_route(&route("", "10.88.0.1", 0)).unwrap();
        assert_eq!(
            (d.dest, d.gateway),
            (None, Some("10.88.0.1".parse().unwrap()))
        );
        let l = parse_route(&route("10.88.0.0/16", "", 253)).unwrap();
        assert_eq!(l.dest.unwrap().to_string(), "10.88.0.0/16");
        assert_eq!(l.scope, 253);
        assert_eq!(
            parse_route(&route("0.0.0.0/0", "10.88.0.1", 0))
                .unwrap()
                .dest,
            None
        );
        assert!(parse_route(&route("", "", 0))
            .unwrap_err()
            .to_string()
            .contains("gateway"));
        assert!(parse_route(&route("10.88.0.0/40", "", 253)).is_err());
        assert!(parse_route(&route("", "fe80::1", 0))
            .unwrap_err()
            .to_string()
            .contains("family"));
        assert!(parse_route(&route("10.0.0.0/8", "", 300))
            .unwrap_err()
            .to_string()
            .contains("scope"));
        let mut r = route("10.0.0.0/8", "", 253);
        r.device = String::new();
        assert!(parse_route(&r).unwrap_err().to_string().contains("device"));
    }

    #[test]
    fn neighbors() {
        let n = ARPNeighbor {
            to_ip_address: Some(addr("10.88.0.1", "32", false)).into(),
            device: "eth0".into(),
            ll_address: "0a:58:0a:58:00:01".into(),
            state: 0x80,
            ..Default::default()
        };
        assert_eq!(
            parse_neighbor(&n).unwrap().ip,
            "10.88.0.1".parse::<IpAddr>().unwrap()
        );
        let mut bad = n.clone();
        bad.ll_address = "nope".into();
        assert!(parse_neighbor(&bad)
            .unwrap_err()
            .to_string()
            .contains("MAC"));
        let mut bad = n;
        bad.to_ip_address = None.into();
        assert!(parse_neighbor(&bad).is_err());
        let many = vec![0u8; MAX_ITEMS + 1];
        assert!(parse_all(&many, "routes", |_| Ok(())).is_err());
    }
}
