//! The descriptors behind the VM's network devices while QEMU is being spawned: the caller's
//! tap descriptors and, where the host has it, one `/dev/vhost-net` descriptor per device.
//! Dropped once QEMU runs, so that QEMU holds the only reference to each tap.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use super::args::NetPlan;
use crate::{HypervisorError, NetDevice};

/// The kernel's vhost-net device node.
pub const VHOST_NET_DEV: &str = "/dev/vhost-net";

/// Refuses network devices QEMU would misread (a MAC is spliced into its option string).
pub fn validate(devices: &[NetDevice]) -> Result<(), HypervisorError> {
    match devices.iter().find(|d| !crate::net::valid_mac(&d.mac)) {
        Some(d) => Err(HypervisorError::InvalidConfig(format!(
            "network device MAC {:?} is not six colon-separated hex octets",
            d.mac
        ))),
        None => Ok(()),
    }
}

/// Open descriptors for QEMU's network devices.
#[derive(Debug, Default)]
pub struct NetFds {
    devices: Vec<NetDevice>,
    vhost: Vec<Option<OwnedFd>>,
}

impl NetFds {
    /// Takes `devices` and opens a vhost-net descriptor for each when `/dev/vhost-net` exists
    /// (without it, QEMU moves the packets itself).
    pub async fn open(devices: Vec<NetDevice>, sandbox: &str) -> Self {
        let mut vhost = Vec::with_capacity(devices.len());
        let present =
            !devices.is_empty() && tokio::fs::try_exists(VHOST_NET_DEV).await.unwrap_or(false);
        for _ in &devices {
            vhost.push(if present {
                open_vhost(sandbox).await
            } else {
                None
            });
        }
        Self { devices, vhost }
    }

    /// Opens new vhost-net descriptors (a QEMU that used the old ones owned them until it died).
    pub async fn renew_vhost(&mut self, sandbox: &str) {
        for v in self.vhost.iter_mut().filter(|v| v.is_some()) {
            *v = open_vhost(sandbox).await;
        }
    }

    /// The devices as the command line describes them.
    pub fn plans(&self) -> Vec<NetPlan> {
        self.devices
            .iter()
            .zip(&self.vhost)
            .map(|(d, v)| NetPlan {
                mac: d.mac.clone(),
                mtu: d.mtu,
                tap_fd: d.tap_fd(),
                vhost_fd: v.as_ref().map(AsRawFd::as_raw_fd),
            })
            .collect()
    }

    /// Every descriptor QEMU must inherit.
    pub fn inherited(&self) -> Vec<RawFd> {
        self.plans()
            .iter()
            .flat_map(|p| std::iter::once(p.tap_fd).chain(p.vhost_fd))
            .collect()
    }
}

async fn open_vhost(sandbox: &str) -> Option<OwnedFd> {
    let res = tokio::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(Path::new(VHOST_NET_DEV))
        .await;
    match res {
        Ok(f) => Some(OwnedFd::from(f.into_std().await)),
        Err(e) => {
            tracing::warn!(sandbox, error = %e, "cannot open {VHOST_NET_DEV}; networking without vhost");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn plans_carry_the_descriptor_numbers() {
        let tap = Arc::new(OwnedFd::from(std::fs::File::open("/dev/null").unwrap()));
        let dev = NetDevice {
            mac: "02:00:00:00:00:01".into(),
            mtu: 1500,
            tap: tap.clone(),
        };
        validate(std::slice::from_ref(&dev)).unwrap();
        let fds = NetFds::open(vec![dev], "t").await;
        let plans = fds.plans();
        assert_eq!(plans.len(), 1);
        assert_eq!(plans[0].tap_fd, tap.as_raw_fd());
        assert_eq!(
            plans[0].vhost_fd.is_some(),
            Path::new(VHOST_NET_DEV).exists()
        );
        assert_eq!(fds.inherited()[0], tap.as_raw_fd());
        assert!(NetFds::open(Vec::new(), "t").await.inherited().is_empty());

        let bad = NetDevice {
            mac: "02:00:00:00:00:01,vhost=on".into(),
            mtu: 0,
            tap,
        };
        let err = validate(&[bad]).unwrap_err().to_string();
        assert!(err.contains("MAC"), "{err}");
    }
}
