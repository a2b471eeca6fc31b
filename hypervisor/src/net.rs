//! Network devices handed to a VM: a tap device the caller opened (in the pod's network
//! namespace), the MAC and MTU the guest NIC gets.
//!
//! The caller owns the decision of where the tap lives and how it is joined to the pod's
//! network (isola's shim redirects between the CNI veth and the tap with tc); the backend only
//! passes the open file descriptor to the VMM. A tap created without `TUNSETPERSIST` lives as
//! long as a descriptor to it is open: once the VMM holds the only one, the device disappears
//! with the VMM, also when it crashes.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

/// One virtio-net device backed by an already open tap descriptor.
#[derive(Debug, Clone)]
pub struct NetDevice {
    /// The MAC address the guest NIC gets, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// The guest NIC's MTU (advertised to the guest with virtio-net's `host_mtu`); 0 = QEMU's
    /// default.
    pub mtu: u32,
    /// The tap device, opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`. Shared so the
    /// configuration stays cloneable; the backend drops its copies once the VMM runs.
    pub tap: Arc<OwnedFd>,
}

impl NetDevice {
    /// The tap descriptor's number in this process (it keeps that number in the VMM).
    pub fn tap_fd(&self) -> RawFd {
        self.tap.as_raw_fd()
    }
}

impl PartialEq for NetDevice {
    fn eq(&self, other: &Self) -> bool {
        self.mac == other.mac && self.mtu == other.mtu && self.tap_fd() == other.tap_fd()
    }
}

impl Eq for NetDevice {}

/// Whether `mac` is six colon-separated hex octets (what QEMU's `mac=` takes).
pub fn valid_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        assert!(valid_mac("02:42:ac:11:00:02"));
        assert!(valid_mac("AA:BB:CC:DD:EE:FF"));
        assert!(!valid_mac("02:42:ac:11:00"));
        assert!(!valid_mac("02:42:ac:11:00:2"));
        assert!(!valid_mac("02:42:ac:11:00:zz"));
        assert!(!valid_mac("02:42:ac:11:00:02,x=y"));
    }
}
