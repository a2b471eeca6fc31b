//! What a VM template and its clones add to QEMU (pure, like [`super::args`]).
//!
//! QEMU 7.2 refuses to migrate a VM with vhost-user devices ("non-migratable device"), and a
//! clone's NICs and vsock are its own anyway. So a template is booted without the devices a
//! pod needs from the host (vsock, virtio-fs, NICs): it gets empty PCIe root ports instead,
//! one per device, and each clone plugs its own devices into them after the restore. The
//! guest's PCIe hotplug driver (`pciehp`) finds them; the agent waits for each (the vsock
//! transport before it announces itself, the virtio-fs tag before it mounts, a NIC by its MAC).

use serde_json::{json, Map, Value};

use super::args::{QemuPlan, VsockPlan};

/// The root ports of a template: vsock, virtio-fs, then [`MAX_CLONE_NICS`] NICs.
pub const ROOT_PORTS: usize = 2 + MAX_CLONE_NICS;

/// How many NICs a clone can have; a pod with more boots cold.
pub const MAX_CLONE_NICS: usize = 2;

/// The id of root port `i`.
pub fn port_id(i: usize) -> String {
    format!("isola-rp{i}")
}

/// The arguments a template and its clones add to the machine: the root ports (chassis numbers
/// from 1, in order, so that a template and its clones have the same PCI topology), with ACPI
/// PCI hotplug instead of native PCIe hotplug, whose guest driver waits 100 ms for each plugged
/// device's link (measured: the agent of a clone answers 40 ms sooner, 0.17 s after `cont`
/// instead of 0.21 s).
pub fn machine_args() -> Vec<String> {
    let mut a = vec![
        "-global".to_owned(),
        "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=on".to_owned(),
    ];
    for i in 0..ROOT_PORTS {
        a.push("-device".to_owned());
        a.push(format!(
            "pcie-root-port,id={},chassis={},slot=0",
            port_id(i),
            i + 1
        ));
    }
    a
}

/// Why `plan` cannot be restored from a template, or None when it can.
pub fn unsupported(plan: &QemuPlan) -> Option<String> {
    if plan.machine_type != "q35" {
        return Some(format!(
            "machine type {} (templates need q35's PCIe hotplug)",
            plan.machine_type
        ));
    }
    if plan.net.len() > MAX_CLONE_NICS {
        return Some(format!(
            "{} network devices (a clone has room for {MAX_CLONE_NICS})",
            plan.net.len()
        ));
    }
    None
}

/// The `device_add` arguments that give a restored clone its devices, in the order they are
/// plugged: vsock first (the agent announces itself over it), then virtio-fs, then the NICs.
pub fn hotplugged(plan: &QemuPlan) -> Vec<Value> {
    let mut devices = Vec::with_capacity(2 + plan.net.len());
    devices.push(match &plan.vsock {
        VsockPlan::VhostUser { .. } => json!({
            "driver": "vhost-user-vsock-pci", "id": "isola-vsock", "chardev": "vsock0",
            "bus": port_id(0),
        }),
        VsockPlan::VhostKernel { cid } => json!({
            "driver": "vhost-vsock-pci", "id": "isola-vsock", "guest-cid": cid,
            "bus": port_id(0),
        }),
    });
    if let Some(fs) = &plan.shared_fs {
        devices.push(json!({
            "driver": "vhost-user-fs-pci", "id": "isola-fs", "chardev": "fs0", "tag": fs.tag,
            "bus": port_id(1),
        }));
    }
    for (i, n) in plan.net.iter().enumerate() {
        let mut nic = Map::new();
        nic.insert("driver".into(), "virtio-net-pci".into());
        nic.insert("id".into(), format!("isola-net{i}").into());
        nic.insert("netdev".into(), format!("net{i}").into());
        nic.insert("mac".into(), n.mac.clone().into());
        nic.insert("romfile".into(), "".into());
        if n.mtu > 0 {
            nic.insert("host_mtu".into(), n.mtu.into());
        }
        nic.insert("bus".into(), port_id(2 + i).into());
        devices.push(Value::Object(nic));
    }
    devices
}

#[cfg(test)]
mod tests {
    use super::super::args::{build, tests::plan, Boot, NetPlan};
    use super::*;

    fn nic(mac: &str, mtu: u32, fd: i32) -> NetPlan {
        NetPlan {
            mac: mac.into(),
            mtu,
            tap_fd: fd,
            vhost_fd: None,
        }
    }

    #[test]
    fn a_template_has_root_ports_and_no_host_device() {
        let mut p = plan();
        p.net = vec![nic("02:00:00:00:00:01", 1500, 3)];
        p.boot = Boot::Template {
            ram: "/t/ram".into(),
        };
        let a = build(&p);
        let i = a.iter().position(|x| x == "-object").unwrap();
        assert_eq!(
            a[i + 1],
            "memory-backend-file,id=mem,size=512M,share=on,mem-path=/t/ram"
        );
        for dev in [
            "vsock",
            "vhost-user-fs",
            "virtio-net",
            "-chardev",
            "-netdev",
        ] {
            assert!(!a.iter().any(|x| x.contains(dev)), "{dev} in {a:?}");
        }
        let ports: Vec<_> = a
            .iter()
            .filter(|x| x.starts_with("pcie-root-port"))
            .collect();
        assert_eq!(ports.len(), ROOT_PORTS);
        assert_eq!(ports[0], "pcie-root-port,id=isola-rp0,chassis=1,slot=0");
        assert!(!a.iter().any(|x| x == "-incoming"));
    }

    #[test]
    fn a_clone_has_the_templates_machine_plus_backends_and_waits_for_the_stream() {
        let mut p = plan();
        p.net = vec![nic("02:00:00:00:00:01", 1400, 3)];
        p.boot = Boot::Template {
            ram: "/t/ram".into(),
        };
        let template = build(&p);
        p.boot = Boot::Restore {
            ram: "/vm/ram".into(),
        };
        let clone = build(&p);
        // The clone's arguments are the template's plus backends and -incoming, with its own
        // RAM file.
        let extra: Vec<_> = clone
            .iter()
            .filter(|x| !template.contains(x))
            .map(String::as_str)
            .collect();
        assert_eq!(
            extra,
            [
                "memory-backend-file,id=mem,size=512M,share=on,mem-path=/vm/ram",
                "-chardev",
                "socket,id=vsock0,path=/run/sb1/vhost-vsock.sock",
                "-chardev",
                "socket,id=fs0,path=/run/sb1/virtiofs.sock",
                "-netdev",
                "tap,id=net0,fd=3",
                "-S",
                "-incoming",
                "defer"
            ]
        );
        assert!(
            !clone.iter().any(|x| x.starts_with("vhost-user-")),
            "{clone:?}"
        );
    }

    #[test]
    fn hotplugged_devices_go_to_their_own_ports_in_order() {
        let mut p = plan();
        p.net = vec![
            nic("02:00:00:00:00:01", 1400, 3),
            nic("02:00:00:00:00:02", 0, 4),
        ];
        let d = hotplugged(&p);
        assert_eq!(d.len(), 4);
        assert_eq!(d[0]["driver"], "vhost-user-vsock-pci");
        assert_eq!(d[0]["bus"], "isola-rp0");
        assert_eq!(d[1]["driver"], "vhost-user-fs-pci");
        assert_eq!(d[1]["tag"], "isola");
        assert_eq!(d[1]["bus"], "isola-rp1");
        assert_eq!(d[2]["netdev"], "net0");
        assert_eq!(d[2]["mac"], "02:00:00:00:00:01");
        assert_eq!(d[2]["host_mtu"], 1400);
        assert_eq!(d[2]["bus"], "isola-rp2");
        assert!(d[3].get("host_mtu").is_none());
        assert_eq!(d[3]["bus"], "isola-rp3");

        p.vsock = VsockPlan::VhostKernel { cid: 7 };
        p.shared_fs = None;
        p.net.clear();
        let d = hotplugged(&p);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0]["driver"], "vhost-vsock-pci");
        assert_eq!(d[0]["guest-cid"], 7);
    }

    #[test]
    fn microvm_and_too_many_nics_cannot_be_cloned() {
        let mut p = plan();
        assert_eq!(unsupported(&p), None);
        p.net = (0..=MAX_CLONE_NICS as i32)
            .map(|i| nic("02:00:00:00:00:01", 0, 3 + i))
            .collect();
        assert!(unsupported(&p).unwrap().contains("3 network devices"));
        p.net.clear();
        p.machine_type = "microvm".into();
        assert!(unsupported(&p).unwrap().contains("q35"));
    }
}
