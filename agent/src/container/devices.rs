//! Device nodes of a privileged container: the guest's own.
//!
//! Under runc a privileged container gets every device node of the host and a device cgroup
//! that allows them all. isola's runtime is registered with `privileged_without_host_devices`
//! (the host's devices are the host's, and their numbers mean nothing in the guest), so such a
//! container arrives with the allow-all rule and no nodes. The agent gives it the nodes of the
//! guest's `/dev` instead, found as runc finds the host's (every character and block device,
//! `pts`, `shm`, `mqueue` and `fd` left out, symlinks not followed): `/dev/net/tun` for VPNs,
//! `/dev/fuse` for FUSE file systems, `/dev/loop*` for image mounts, ... all of which belong to
//! the pod's own kernel.
//!
//! A container counts as privileged here when its device cgroup allows every device (a rule
//! `{"allow": true, "access": "rwm"}` with no type or numbers, what containerd and CRI-O write
//! for `privileged: true` and `ctr run --privileged`), or when it has CAP_SYS_ADMIN and no
//! masked or read-only paths: containerd 1.6 with `privileged_without_host_devices` writes a
//! privileged container that way, without the allow-all rule (1.7 added an option for it). Such
//! a container also gets the allow-all rule, as under runc. Any other container chose its
//! devices, and they stay as they are.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxDevice, LinuxDeviceBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType, Spec,
};

/// Directories under /dev runc does not take devices from.
const SKIPPED_DIRS: [&str; 4] = ["pts", "shm", "mqueue", "fd"];
/// How deep below /dev to look (`/dev/net/tun`, `/dev/cpu/0/...`).
const MAX_DEPTH: usize = 4;
/// At most this many nodes (a guest's /dev has a few dozen).
const MAX_DEVICES: usize = 4096;

/// Whether the spec's device cgroup allows every device (privileged).
pub fn allows_all(spec: &Spec) -> bool {
    let Some(rules) = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.devices().as_ref())
    else {
        return false;
    };
    rules.iter().any(|r| {
        r.allow()
            && matches!(r.typ(), None | Some(LinuxDeviceType::A))
            && r.major().is_none()
            && r.minor().is_none()
            && r.access()
                .as_deref()
                .is_some_and(|a| a.contains('r') && a.contains('w') && a.contains('m'))
    })
}

/// Whether the container is privileged (see the module docs).
pub fn is_privileged(spec: &Spec) -> bool {
    if allows_all(spec) {
        return true;
    }
    let sys_admin = spec
        .process()
        .as_ref()
        .and_then(|p| p.capabilities().as_ref())
        .and_then(|c| c.bounding().as_ref())
        .is_some_and(|b| b.contains(&Capability::SysAdmin));
    let linux = spec.linux().as_ref();
    let none = |paths: Option<&Vec<String>>| paths.map_or(true, |p| p.is_empty());
    sys_admin
        && none(linux.and_then(|l| l.masked_paths().as_ref()))
        && none(linux.and_then(|l| l.readonly_paths().as_ref()))
}

/// Makes the device cgroup allow every device (privileged), unless it already does.
pub fn allow_all(spec: &mut Spec) {
    if allows_all(spec) {
        return;
    }
    let Some(linux) = spec.linux_mut() else {
        return;
    };
    let mut resources = linux.resources().clone().unwrap_or_default();
    let mut rules = resources.devices().clone().unwrap_or_default();
    if let Ok(rule) = LinuxDeviceCgroupBuilder::default()
        .allow(true)
        .access("rwm")
        .build()
    {
        rules.push(rule);
    }
    resources.set_devices(Some(rules));
    linux.set_resources(Some(resources));
}

/// The character and block devices below `dev`, as container paths under `/dev`.
pub fn guest_devices(dev: &Path) -> Vec<LinuxDevice> {
    let mut found = Vec::new();
    walk(dev, Path::new("/dev"), 0, &mut found);
    found.sort_by(|a, b| a.path().cmp(b.path()));
    found
}

fn walk(dir: &Path, as_path: &Path, depth: usize, found: &mut Vec<LinuxDevice>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if found.len() >= MAX_DEVICES {
            return;
        }
        let name = e.file_name();
        let Ok(meta) = e.path().symlink_metadata() else {
            continue;
        };
        let ft = meta.file_type();
        let target = as_path.join(&name);
        if ft.is_dir() {
            let skipped = depth == 0 && SKIPPED_DIRS.iter().any(|d| name == *d);
            if !skipped && depth + 1 < MAX_DEPTH {
                walk(&e.path(), &target, depth + 1, found);
            }
            continue;
        }
        // The console is the container's own (libcontainer sets it up); never the guest's.
        if depth == 0 && name == "console" {
            continue;
        }
        let typ = if ft.is_char_device() {
            LinuxDeviceType::C
        } else if ft.is_block_device() {
            LinuxDeviceType::B
        } else {
            continue;
        };
        let rdev = meta.rdev();
        let device = LinuxDeviceBuilder::default()
            .path(target)
            .typ(typ)
            .major(nix::sys::stat::major(rdev) as i64)
            .minor(nix::sys::stat::minor(rdev) as i64)
            .file_mode(meta.mode() & 0o7777)
            .uid(meta.uid())
            .gid(meta.gid())
            .build();
        if let Ok(d) = device {
            found.push(d);
        }
    }
}

/// Adds to `spec` each of `devices` whose path it does not list yet; returns how many.
pub fn add(spec: &mut Spec, devices: Vec<LinuxDevice>) -> usize {
    let Some(linux) = spec.linux_mut() else {
        return 0;
    };
    let mut list = linux.devices().clone().unwrap_or_default();
    let have: Vec<PathBuf> = list.iter().map(|d| d.path().clone()).collect();
    let before = list.len();
    list.extend(devices.into_iter().filter(|d| !have.contains(d.path())));
    let added = list.len() - before;
    linux.set_devices(Some(list));
    added
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(devices: &str) -> Spec {
        serde_json::from_str(&format!(
            r#"{{"ociVersion": "1.0.2", "linux": {{"resources": {{"devices": {devices}}}}}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn only_an_allow_everything_rule_is_privileged() {
        assert!(allows_all(&spec(
            r#"[{"allow": false, "access": "rwm"}, {"allow": true, "access": "rwm"}]"#
        )));
        assert!(allows_all(&spec(
            r#"[{"allow": true, "type": "a", "access": "rwm"}]"#
        )));
        // containerd's default for unprivileged containers: deny all, then a few.
        assert!(!allows_all(&spec(
            r#"[{"allow": false, "access": "rwm"},
                {"allow": true, "type": "c", "major": 10, "minor": 200, "access": "rwm"}]"#
        )));
        assert!(!allows_all(&spec(
            r#"[{"allow": true, "type": "c", "access": "rwm"}]"#
        )));
        assert!(!allows_all(&spec(r#"[{"allow": true, "access": "r"}]"#)));
        let bare: Spec = serde_json::from_str(r#"{"ociVersion": "1.0.2", "linux": {}}"#).unwrap();
        assert!(!allows_all(&bare));
    }

    #[test]
    fn containerd_16s_privileged_without_host_devices_counts_as_privileged() {
        let spec = |caps: &str, masked: &str| -> Spec {
            serde_json::from_str(&format!(
                r#"{{"ociVersion": "1.0.2",
                    "process": {{"args": ["sh"], "cwd": "/", "user": {{"uid": 0, "gid": 0}},
                                 "capabilities": {{"bounding": {caps}}}}},
                    "linux": {{"maskedPaths": {masked},
                               "resources": {{"devices": [{{"allow": false, "access": "rwm"}}]}}}}}}"#
            ))
            .unwrap()
        };
        let mut privileged = spec(r#"["CAP_SYS_ADMIN", "CAP_NET_ADMIN"]"#, "[]");
        assert!(is_privileged(&privileged));
        assert!(!allows_all(&privileged));
        allow_all(&mut privileged);
        assert!(allows_all(&privileged));
        // CAP_SYS_ADMIN alone, with the default masked paths: not privileged.
        assert!(!is_privileged(&spec(
            r#"["CAP_SYS_ADMIN"]"#,
            r#"["/proc/kcore"]"#
        )));
        assert!(!is_privileged(&spec(r#"["CAP_NET_ADMIN"]"#, "[]")));
    }

    #[test]
    fn the_guests_dev_is_walked_as_runc_walks_the_hosts() {
        // This test runs on the host: its /dev has null, a net/tun perhaps, pts to skip.
        let found = guest_devices(Path::new("/dev"));
        let null = found
            .iter()
            .find(|d| d.path() == Path::new("/dev/null"))
            .expect("/dev/null");
        assert_eq!(
            (null.typ(), null.major(), null.minor()),
            (LinuxDeviceType::C, 1, 3)
        );
        assert!(found.iter().all(|d| !d.path().starts_with("/dev/pts")));
        assert!(found.iter().all(|d| d.path() != Path::new("/dev/console")));
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/file"), "").unwrap();
        std::os::unix::fs::symlink("/dev/null", dir.path().join("link")).unwrap();
        assert!(
            guest_devices(dir.path()).is_empty(),
            "files and symlinks are no devices"
        );
    }

    #[test]
    fn devices_the_spec_lists_are_kept() {
        let mut s = spec(r#"[{"allow": true, "access": "rwm"}]"#);
        let mine = LinuxDeviceBuilder::default()
            .path("/dev/fuse")
            .typ(LinuxDeviceType::C)
            .major(10)
            .minor(229)
            .file_mode(0o600u32)
            .build()
            .unwrap();
        assert_eq!(add(&mut s, vec![mine.clone()]), 1);
        let guest = guest_devices(Path::new("/dev"));
        let n = guest.len();
        let added = add(&mut s, guest);
        let listed = s.linux().as_ref().unwrap().devices().as_ref().unwrap();
        assert_eq!(
            listed
                .iter()
                .filter(|d| d.path() == Path::new("/dev/fuse"))
                .count(),
            1
        );
        assert_eq!(
            listed[0], mine,
            "the spec's own entry stays first and unchanged"
        );
        assert!(added + 1 >= n, "{added} of {n}");
    }
}
