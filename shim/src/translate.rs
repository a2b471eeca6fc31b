//! From the OCI spec containerd wrote for the host to the spec the guest agent runs (pure).
//!
//! - `root.path` becomes the container's rootfs in the guest's view of the shared directory;
//! - bind mounts become binds of `<shared>/<cid>/mounts/<n>` (shared by the host, see
//!   [`crate::mounts`]), destinations and options kept; device nodes are never shared;
//! - pod semantics (namespaces shared with the pod's sandbox container, the pod's network,
//!   `/dev/shm` and emptyDir volumes in the guest) are [`crate::pod`]'s;
//! - host-only parts are dropped or mapped: `linux.cgroupsPath` becomes `/isola/<cid>`,
//!   `linux.devices` (host device numbers; the kernel-numbered virtual devices the guest has,
//!   `/dev/net/tun` and `/dev/fuse`, are kept, and binds of them become guest devices), hooks
//!   (host binaries), AppArmor/SELinux labels
//!   (host policy), Intel RDT, host network devices, and per-device block I/O limits (host
//!   device numbers).

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxDevice, LinuxDeviceBuilder, LinuxDeviceType, Mount, MountBuilder, Process, Spec,
};

use crate::error::{Result, ShimError};
use crate::mounts::{HostBind, SourceKind};
use crate::pod::{self, PodRole};

/// Where the guest agent mounts the sandbox's shared directory.
pub const GUEST_SHARED_DIR: &str = "/run/isola/shared";

/// The guest path of container `cid`'s rootfs.
pub fn guest_rootfs(cid: &str) -> PathBuf {
    Path::new(GUEST_SHARED_DIR).join(cid).join("rootfs")
}

/// The guest path of container `cid`'s shared bind number `index`.
pub fn guest_bind(cid: &str, index: usize) -> PathBuf {
    Path::new(GUEST_SHARED_DIR)
        .join(cid)
        .join("mounts")
        .join(index.to_string())
}

/// The guest cgroup of container `cid`.
pub fn guest_cgroup(cid: &str) -> PathBuf {
    Path::new("/isola").join(cid)
}

/// The result of [`translate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Translated {
    /// The spec for the guest.
    pub spec: Spec,
    /// Host paths the host must share for the spec's binds.
    pub binds: Vec<HostBind>,
    /// What was left out, one line each, for the log.
    pub dropped: Vec<String>,
}

/// Whether an OCI mount is a bind mount.
pub fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"))
}

/// Translates `spec` (from `bundle`) for container `cid`. `classify` tells what a bind source
/// on the host is ([`SourceKind::of`] in production).
pub fn translate(
    spec: &Spec,
    cid: &str,
    bundle: &Path,
    classify: &dyn Fn(&Path) -> SourceKind,
) -> Result<Translated> {
    let mut spec = spec.clone();
    let mut dropped = Vec::new();
    if spec.process().is_none() {
        return Err(ShimError::InvalidArgument(format!(
            "the spec of container {cid} has no process: nothing to run"
        )));
    }
    let Some(root) = spec.root_mut() else {
        return Err(ShimError::InvalidArgument(format!(
            "the spec of container {cid} has no root: a container needs a root filesystem"
        )));
    };
    root.set_path(guest_rootfs(cid));

    let role = PodRole::of(&spec, cid)?;
    pod::check_pod_network(&spec, &role, cid)?;
    let binds = translate_mounts(&mut spec, cid, bundle, &role, classify, &mut dropped)?;
    pod::translate_namespaces(&mut spec, &role, &mut dropped);

    if spec.hooks().is_some() {
        dropped.push("hooks (host binaries cannot run in the guest)".into());
        spec.set_hooks(None);
    }
    if let Some(process) = spec.process_mut() {
        drop_host_policy(process, &mut dropped);
    }
    if let Some(linux) = spec.linux_mut() {
        linux.set_cgroups_path(Some(guest_cgroup(cid)));
        let (kept, host): (Vec<_>, Vec<_>) = linux
            .devices()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .partition(is_guest_device);
        if !host.is_empty() {
            dropped.push(format!(
                "{} linux.devices (host device numbers)",
                host.len()
            ));
        }
        linux.set_devices((!kept.is_empty()).then_some(kept));
        if linux.intel_rdt().is_some() {
            dropped.push("Intel RDT (host resource)".into());
            linux.set_intel_rdt(None);
        }
        if linux.net_devices().is_some() {
            dropped.push("linux.netDevices (host interfaces)".into());
            linux.set_net_devices(None);
        }
        if linux.mount_label().is_some() {
            dropped.push("SELinux mount label (host policy)".into());
            linux.set_mount_label(None);
        }
        if let Some(io) = linux
            .resources_mut()
            .as_mut()
            .and_then(|r| r.block_io_mut().as_mut())
        {
            let per_device = io.weight_device().is_some()
                || io.throttle_read_bps_device().is_some()
                || io.throttle_write_bps_device().is_some()
                || io.throttle_read_iops_device().is_some()
                || io.throttle_write_iops_device().is_some();
            if per_device {
                dropped.push("per-device block I/O limits (host device numbers)".into());
                io.set_weight_device(None);
                io.set_throttle_read_bps_device(None);
                io.set_throttle_write_bps_device(None);
                io.set_throttle_read_iops_device(None);
                io.set_throttle_write_iops_device(None);
            }
        }
    }
    Ok(Translated {
        spec,
        binds,
        dropped,
    })
}

/// The process spec of exec `exec_id` for the guest: `terminal` as containerd asked, the
/// host's LSM policy left out ([`drop_host_policy`]); returns it as JSON with what was left out.
pub fn exec_process(json: &[u8], exec_id: &str, terminal: bool) -> Result<(Vec<u8>, Vec<String>)> {
    let mut process: Process = serde_json::from_slice(json).map_err(|e| {
        ShimError::InvalidArgument(format!(
            "the process spec of exec {exec_id} is malformed: {e}"
        ))
    })?;
    process.set_terminal(Some(terminal));
    let mut dropped = Vec::new();
    drop_host_policy(&mut process, &mut dropped);
    let json = serde_json::to_vec(&process)
        .map_err(|e| ShimError::Internal(format!("serializing the exec spec: {e}")))?;
    Ok((json, dropped))
}

/// Drops what a process spec says of the host's LSM policy (AppArmor profile, SELinux
/// label): the guest kernel has neither, and the VM boundary stands in for them. Used for the
/// init's process and for every exec's.
pub fn drop_host_policy(process: &mut Process, dropped: &mut Vec<String>) {
    if let Some(profile) = process.apparmor_profile().clone() {
        dropped.push(format!("AppArmor profile {profile} (host policy)"));
        process.set_apparmor_profile(None);
    }
    if process.selinux_label().is_some() {
        dropped.push("SELinux process label (host policy)".into());
        process.set_selinux_label(None);
    }
}

fn translate_mounts(
    spec: &mut Spec,
    cid: &str,
    bundle: &Path,
    role: &PodRole,
    classify: &dyn Fn(&Path) -> SourceKind,
    dropped: &mut Vec<String>,
) -> Result<Vec<HostBind>> {
    let Some(mounts) = spec.mounts().clone() else {
        return Ok(Vec::new());
    };
    let mut binds = Vec::new();
    let mut guest_devices = Vec::new();
    let mut out = Vec::with_capacity(mounts.len());
    for m in mounts {
        if !is_bind(&m) {
            out.push(m);
            continue;
        }
        let dest = m.destination().display().to_string();
        let Some(source) = m.source().clone() else {
            return Err(ShimError::InvalidArgument(format!(
                "bind mount to {dest} in container {cid} has no source"
            )));
        };
        let source = if source.is_relative() {
            bundle.join(source)
        } else {
            source
        };
        if let Some(guest_source) = pod::pod_volume_source(&m, &source, role)? {
            out.push(guest_mount(
                &m,
                guest_source,
                m.options().clone().unwrap_or_default(),
            )?);
            continue;
        }
        let kind = classify(&source);
        match kind {
            SourceKind::Missing => {
                return Err(ShimError::InvalidArgument(format!(
                "bind mount source {} (for {dest} in container {cid}) does not exist on the host",
                source.display()
            )))
            }
            SourceKind::Device => {
                match guest_device_at(&source, m.destination()) {
                    Some(device) => guest_devices.push(device),
                    None => dropped.push(format!(
                        "bind of device {} to {dest} (host device numbers)",
                        source.display()
                    )),
                }
                continue;
            }
            SourceKind::Dir | SourceKind::File => {}
        }
        let options = m.options().clone().unwrap_or_default();
        let index = binds.len();
        binds.push(HostBind {
            index,
            source,
            kind,
            recursive: options.iter().any(|o| o == "rbind"),
            readonly: options.iter().any(|o| o == "ro"),
        });
        out.push(guest_mount(&m, guest_bind(cid, index), options)?);
    }
    spec.set_mounts(Some(out));
    if !guest_devices.is_empty() {
        if let Some(linux) = spec.linux_mut() {
            let mut devices = linux.devices().clone().unwrap_or_default();
            devices.extend(guest_devices);
            linux.set_devices(Some(devices));
        }
    }
    Ok(binds)
}

/// Device nodes whose numbers the kernel fixes, so that the host's and the guest's are the
/// same device, and which the guest kernel has: a pod that asks for one (CRI `devices`, a
/// device plugin, a hostPath of the node) gets the guest's. The host's other devices mean
/// nothing in the guest.
const GUEST_DEVICES: [(&str, i64, i64); 2] = [("/dev/net/tun", 10, 200), ("/dev/fuse", 10, 229)];

/// Whether `d` is one of [`GUEST_DEVICES`] (by kind and numbers, wherever it is mounted).
fn is_guest_device(d: &LinuxDevice) -> bool {
    d.typ() == LinuxDeviceType::C
        && GUEST_DEVICES
            .iter()
            .any(|(_, major, minor)| d.major() == *major && d.minor() == *minor)
}

/// The guest's device node at `dest` for a bind of the host's `source`, if it is one of
/// [`GUEST_DEVICES`].
fn guest_device_at(source: &Path, dest: &Path) -> Option<LinuxDevice> {
    let (_, major, minor) = GUEST_DEVICES
        .iter()
        .find(|(p, _, _)| source == Path::new(p))?;
    LinuxDeviceBuilder::default()
        .path(dest)
        .typ(LinuxDeviceType::C)
        .major(*major)
        .minor(*minor)
        .file_mode(0o666u32)
        .build()
        .ok()
}

/// The guest's bind of `source` in place of the host's bind `m`.
fn guest_mount(m: &Mount, source: PathBuf, options: Vec<String>) -> Result<Mount> {
    let mut guest = MountBuilder::default()
        .destination(m.destination().clone())
        .typ("bind")
        .source(source)
        .options(options)
        .build()
        .map_err(|e| {
            ShimError::Internal(format!(
                "building the guest mount for {}: {e}",
                m.destination().display()
            ))
        })?;
    guest.set_uid_mappings(m.uid_mappings().clone());
    guest.set_gid_mappings(m.gid_mappings().clone());
    Ok(guest)
}

#[cfg(test)]
#[path = "translate_tests.rs"]
mod tests;
