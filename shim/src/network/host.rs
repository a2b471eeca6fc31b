//! [`HostNetworking`]: the real [`PodNetworking`], on netlink inside the pod netns.

use std::os::fd::OwnedFd;
use std::path::Path;

use async_trait::async_trait;
use futures::TryStreamExt;
use rtnetlink::{Handle, LinkUnspec};

use super::port_forward::{self, PortForwardLink};
use super::scan::{self, LinkFacts};
use super::{netns, tap, Attachment, NetError, PodNetwork, PodNetworking};

/// The ingress qdisc's parent handle (`ffff:`), where the redirect filters hang.
const INGRESS_PARENT: u32 = 0xffff_0000;

/// `protocol all`: ETH_P_ALL in network byte order, as tc passes it.
fn eth_p_all() -> u16 {
    // ETH_P_ALL (0x0003) fits in u16.
    (libc::ETH_P_ALL as u16).to_be()
}

/// Pod networking on the host with tap devices and tc redirects.
#[derive(Debug, Default)]
pub struct HostNetworking;

#[async_trait]
impl PodNetworking for HostNetworking {
    async fn attach(&self, sandbox_id: &str, ns: &Path) -> Result<Attachment, NetError> {
        let sid = sandbox_id.to_string();
        let t0 = std::time::Instant::now();
        let attached = netns::run_in(ns, move || async move {
            let handle = netns::connect()?;
            let (mut network, links) = scan::scan(&handle).await?;
            let mut taps = Vec::new();
            for (i, link) in links.iter().enumerate() {
                match plug(&handle, i, link).await {
                    Ok((fd, forward)) => {
                        taps.push(fd);
                        if forward.is_some() {
                            network.port_forward = forward;
                        }
                    }
                    Err(e) => {
                        drop(taps);
                        for l in &links {
                            unplug(&handle, &l.name).await;
                        }
                        if let Err(e) = port_forward::set_loopback_address(&handle, true).await {
                            tracing::warn!(sandbox_id = %sid, error = %e, "cannot give lo its address back");
                        }
                        return Err(e);
                    }
                }
                tracing::info!(sandbox_id = %sid, veth = %link.name, tap = %tap::tap_name(i), mac = ?link.mac, mtu = link.mtu, "pod interface joined to a tap");
            }
            Ok(Attachment { network, taps })
        })
        .await?;
        tracing::info!(
            sandbox_id,
            netns = %ns.display(),
            taps = attached.taps.len(),
            elapsed_ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX),
            "pod network attached"
        );
        Ok(attached)
    }

    async fn detach(&self, sandbox_id: &str, ns: &Path, net: &PodNetwork) -> Result<(), NetError> {
        if !tokio::fs::try_exists(ns).await.unwrap_or(false) {
            tracing::debug!(sandbox_id, netns = %ns.display(), "pod netns already gone");
            return Ok(());
        }
        let names: Vec<String> = net.interfaces.iter().map(|i| i.name.clone()).collect();
        let forwarded = net.port_forward.is_some();
        netns::run_in(ns, move || async move {
            let handle = netns::connect()?;
            for name in &names {
                unplug(&handle, name).await;
            }
            if forwarded {
                // The rest went with the tap; the netns is CNI's again as CNI left it.
                port_forward::set_loopback_address(&handle, true).await?;
            }
            Ok(())
        })
        .await
    }
}

pub(super) async fn link_index(handle: &Handle, name: &str) -> Result<u32, NetError> {
    let mut s = handle.link().get().match_name(name.to_string()).execute();
    match s.try_next().await {
        Ok(Some(m)) => Ok(m.header.index),
        Ok(None) => Err(NetError::Unusable(format!("link {name} vanished"))),
        Err(e) => Err(NetError::netlink(format!("looking up link {name}"), e)),
    }
}

/// Creates tap `i` for `link`, sets it up with the link's MTU and redirects each way; the
/// first one also carries port-forward connections ([`port_forward`]).
async fn plug(
    handle: &Handle,
    i: usize,
    link: &LinkFacts,
) -> Result<(OwnedFd, Option<PortForwardLink>), NetError> {
    let name = tap::tap_name(i);
    let fd = tap::create(&name)?;
    let tap_index = link_index(handle, &name).await?;
    let mut set = LinkUnspec::new_with_index(tap_index).up();
    if link.mtu > 0 {
        set = set.mtu(link.mtu);
    }
    handle
        .link()
        .set(set.build())
        .execute()
        .await
        .map_err(|e| NetError::netlink(format!("setting up {name}"), e))?;
    // A shim that died before its teardown may have left its qdisc on the veth.
    unplug(handle, &link.name).await;
    for (dev, index) in [(&link.name, link.index), (&name, tap_index)] {
        handle
            .qdisc()
            .add(to_i32(index)?)
            .ingress()
            .execute()
            .await
            .map_err(|e| NetError::netlink(format!("adding the ingress qdisc of {dev}"), e))?;
    }
    for (from, to, from_name) in [
        (link.index, tap_index, &link.name),
        (tap_index, link.index, &name),
    ] {
        handle
            .traffic_filter(to_i32(from)?)
            .add()
            .parent(INGRESS_PARENT)
            .protocol(eth_p_all())
            .redirect(to)
            .map_err(|e| {
                NetError::netlink(format!("building the redirect filter of {from_name}"), e)
            })?
            .execute()
            .await
            .map_err(|e| {
                NetError::netlink(format!("adding the redirect filter of {from_name}"), e)
            })?;
    }
    let guest_mac = link.mac.as_deref().and_then(super::mac_bytes);
    let forward = match guest_mac {
        Some(mac) if i == 0 => {
            let host_mac =
                port_forward::arrange(handle, (&name, tap_index), link.index, &mac).await?;
            Some(PortForwardLink {
                device: link.name.clone(),
                host_mac,
            })
        }
        _ => None,
    };
    Ok((fd, forward))
}

/// Removes the ingress qdisc (and its filters) from link `name`, quietly: absent is fine.
async fn unplug(handle: &Handle, name: &str) {
    let Ok(index) = link_index(handle, name).await else {
        return;
    };
    let Ok(index) = to_i32(index) else { return };
    let mut req = handle.qdisc().del(index);
    let msg = req.message_mut();
    msg.header.parent = rtnetlink::packet_route::tc::TcHandle::INGRESS;
    msg.header.handle = INGRESS_PARENT.into();
    if let Err(e) = req.execute().await {
        tracing::debug!(link = name, error = %e, "no ingress qdisc removed");
    }
}

fn to_i32(index: u32) -> Result<i32, NetError> {
    i32::try_from(index).map_err(|_| NetError::Unusable(format!("link index {index} out of range")))
}
