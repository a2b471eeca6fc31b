//! The `kubernetes` Service reachable as on a node with kube-proxy: the harness runs no
//! kube-proxy, so it does for that one Service what kube-proxy's iptables mode would: a nat
//! chain of its own ([`CHAIN`]) DNATs `<service IP>:443/tcp` to the apiserver's address and
//! port, jumped to from PREROUTING (pods: their traffic is routed through the CNI bridge's
//! address, so it crosses the host's nat table whether or not br_netfilter is loaded; an isola
//! pod's leaves its VM through the tap into the pod's netns and its veth, the same way) and
//! from OUTPUT (the host and hostNetwork pods). conntrack undoes the translation on the replies.
//! A route of the service range over the node link lets the host reach the address even on a
//! host without a default route (it goes with the link).
//!
//! The chain's name is in the host record ([`super::host`]) before the chain exists, so that
//! the teardown, or the next run after a killed one, removes it.

use std::net::Ipv4Addr;

use anyhow::Result;

use super::host::{remove_chains, run};

/// The harness's own nat chain.
pub const CHAIN: &str = "ISOLA-TEST-K8S-SERVICES";
/// The port the `kubernetes` Service serves (the apiserver's `--secure-port` default).
pub const SERVICE_PORT: u16 = 443;
const COMMENT: &str = "isola test cluster: the kubernetes Service";

/// The rules, as `iptables -t nat` arguments: the chain's DNAT, then the jumps to it.
fn rules(service_ip: Ipv4Addr, target: (Ipv4Addr, u16)) -> Vec<Vec<String>> {
    let dnat = format!(
        "-A {CHAIN} -d {service_ip}/32 -p tcp -m tcp --dport {SERVICE_PORT} -j DNAT \
         --to-destination {}:{}",
        target.0, target.1
    );
    let mut rules: Vec<Vec<String>> = vec![dnat.split(' ').map(str::to_string).collect()];
    for hook in ["PREROUTING", "OUTPUT"] {
        rules.push(
            [
                "-I",
                hook,
                "-m",
                "comment",
                "--comment",
                COMMENT,
                "-j",
                CHAIN,
            ]
            .map(str::to_string)
            .to_vec(),
        );
    }
    rules
}

/// Adds the chain, its jumps, and the route of `service_range` over `link`. Whatever this
/// cluster left before (a killed run) goes first.
pub fn route(
    service_ip: Ipv4Addr,
    service_range: &str,
    link: &str,
    target: (Ipv4Addr, u16),
) -> Result<()> {
    remove();
    run(&["iptables", "-w", "-t", "nat", "-N", CHAIN])?;
    for rule in rules(service_ip, target) {
        let mut args = vec!["iptables", "-w", "-t", "nat"];
        args.extend(rule.iter().map(String::as_str));
        run(&args)?;
    }
    run(&["ip", "route", "replace", service_range, "dev", link])?;
    Ok(())
}

/// Removes the jumps and the chain (best effort; nothing to do when they are not there).
pub fn remove() {
    remove_chains("iptables", "nat", &[CHAIN]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_is_translated_to_the_apiserver_from_pods_and_from_the_host() {
        let r = rules(
            Ipv4Addr::new(10, 96, 0, 1),
            (Ipv4Addr::new(10, 99, 255, 1), 41234),
        );
        let line = |r: &Vec<String>| r.join(" ");
        assert_eq!(
            line(&r[0]),
            "-A ISOLA-TEST-K8S-SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 443 -j DNAT \
             --to-destination 10.99.255.1:41234"
        );
        let hooks: Vec<&str> = r[1..].iter().map(|r| r[1].as_str()).collect();
        assert_eq!(hooks, ["PREROUTING", "OUTPUT"]);
        for jump in &r[1..] {
            assert_eq!(jump.last().map(String::as_str), Some(CHAIN));
            assert!(jump.contains(&COMMENT.to_string()), "{jump:?}");
        }
    }
}
