//! Creating a tap device (in the calling thread's network namespace).

use std::os::fd::{AsRawFd, OwnedFd};

use super::NetError;

/// The clone device tap devices are made from.
const TUN_DEV: &str = "/dev/net/tun";

/// Suffix of isola's tap names (`tap0_isola`): tells our taps from the pod's own interfaces.
pub const TAP_SUFFIX: &str = "_isola";

/// The tap name for pod interface number `index`.
pub fn tap_name(index: usize) -> String {
    format!("tap{index}{TAP_SUFFIX}")
}

/// Creates tap `name` (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, not persistent) and returns its
/// descriptor: the device exists as long as a descriptor to it is open. Blocking (an open and
/// an ioctl): call it from the namespace thread.
pub fn create(name: &str) -> Result<OwnedFd, NetError> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(NetError::Unusable(format!("invalid tap name {name:?}")));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(TUN_DEV)
        .map_err(|e| NetError::io(format!("opening {TUN_DEV}"), e))?;
    // SAFETY: ifreq is plain old data (bytes and a union of integers); all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // The flags fit in a c_short (0x0002 | 0x1000 | 0x4000).
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `req` is, on an open
    // /dev/net/tun descriptor; both outlive the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if rc != 0 {
        return Err(NetError::io(
            format!("creating tap {name} (TUNSETIFF)"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(OwnedFd::from(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_ifnamsiz() {
        assert_eq!(tap_name(0), "tap0_isola");
        assert!(tap_name(99).len() < libc::IFNAMSIZ);
        assert!(create("").is_err());
        assert!(create("a-name-far-too-long-for-linux").is_err());
    }
}
