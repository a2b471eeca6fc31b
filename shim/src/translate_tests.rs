use super::*;
use oci_spec::runtime::LinuxNamespaceType;

/// A spec shaped like what containerd's CRI writes (trimmed).
const CRI_SPEC: &str = r#"{
  "ociVersion": "1.0.2-dev",
  "process": {
    "user": {"uid": 0, "gid": 0},
    "args": ["sh", "-c", "echo hi"],
    "env": ["PATH=/bin"],
    "cwd": "/",
    "apparmorProfile": "cri-containerd.apparmor.d",
    "selinuxLabel": "system_u:system_r:container_t:s0"
  },
  "root": {"path": "rootfs", "readonly": true},
  "hostname": "pod",
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid","noexec","nodev"]},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid","strictatime","mode=755","size=65536k"]},
    {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/cri/sandboxes/s1/hosts", "options": ["rbind","rprivate","rw"]},
    {"destination": "/data", "source": "/srv/data", "options": ["rbind","ro"]},
    {"destination": "/dev/kmsg", "type": "bind", "source": "/dev/kmsg", "options": ["rbind"]},
    {"destination": "/rel", "type": "bind", "source": "relative", "options": ["bind"]}
  ],
  "hooks": {"prestart": [{"path": "/usr/bin/hook"}]},
  "annotations": {"io.kubernetes.cri.sandbox-id": "s1"},
  "linux": {
    "cgroupsPath": "kubepods-besteffort-pod1.slice:cri-containerd:c1",
    "resources": {
      "devices": [{"allow": false, "access": "rwm"}],
      "blockIO": {"weight": 10, "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 100}]}
    },
    "namespaces": [
      {"type": "pid"},
      {"type": "ipc", "path": "/proc/42/ns/ipc"},
      {"type": "network", "path": "/var/run/netns/cni-1"},
      {"type": "mount"}
    ],
    "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}],
    "mountLabel": "system_u:object_r:container_file_t:s0",
    "maskedPaths": ["/proc/kcore"]
  }
}"#;

fn classify(path: &Path) -> SourceKind {
    match path.to_str().unwrap() {
        "/var/lib/cri/sandboxes/s1/hosts" => SourceKind::File,
        "/srv/data" | "/bundle/relative" => SourceKind::Dir,
        "/dev/kmsg" => SourceKind::Device,
        _ => SourceKind::Missing,
    }
}

fn spec(json: &str) -> Spec {
    serde_json::from_str(json).unwrap()
}

fn translated() -> Translated {
    translate(&spec(CRI_SPEC), "c1", Path::new("/bundle"), &classify).unwrap()
}

#[test]
fn root_points_at_the_shared_rootfs() {
    let t = translated();
    let root = t.spec.root().as_ref().unwrap();
    assert_eq!(root.path(), Path::new("/run/isola/shared/c1/rootfs"));
    assert_eq!(root.readonly(), Some(true));
}

#[test]
fn binds_are_shared_and_other_mounts_kept() {
    let t = translated();
    assert_eq!(
        t.binds,
        [
            HostBind {
                index: 0,
                source: "/var/lib/cri/sandboxes/s1/hosts".into(),
                kind: SourceKind::File,
                recursive: true,
                readonly: false,
            },
            HostBind {
                index: 1,
                source: "/srv/data".into(),
                kind: SourceKind::Dir,
                recursive: true,
                readonly: true,
            },
            HostBind {
                index: 2,
                source: "/bundle/relative".into(),
                kind: SourceKind::Dir,
                recursive: false,
                readonly: false,
            },
        ]
    );
    let mounts = t.spec.mounts().as_ref().unwrap();
    let dests: Vec<_> = mounts
        .iter()
        .map(|m| m.destination().display().to_string())
        .collect();
    // The device bind is gone; the order of the rest is kept.
    assert_eq!(dests, ["/proc", "/dev", "/etc/hosts", "/data", "/rel"]);
    assert_eq!(mounts[0].source().as_deref(), Some(Path::new("proc")));
    assert_eq!(
        mounts[2].source().as_deref(),
        Some(Path::new("/run/isola/shared/c1/mounts/0"))
    );
    assert_eq!(
        mounts[3].source().as_deref(),
        Some(Path::new("/run/isola/shared/c1/mounts/1"))
    );
    assert_eq!(mounts[3].typ().as_deref(), Some("bind"));
    assert_eq!(mounts[3].options().as_ref().unwrap(), &["rbind", "ro"]);
    assert!(
        t.dropped.iter().any(|d| d.contains("/dev/kmsg")),
        "{:?}",
        t.dropped
    );
}

#[test]
fn host_only_parts_are_dropped_or_mapped() {
    let t = translated();
    let linux = t.spec.linux().as_ref().unwrap();
    assert_eq!(
        linux.cgroups_path().as_deref(),
        Some(Path::new("/isola/c1"))
    );
    // /dev/fuse has the same numbers in the guest, which has it: kept.
    let devices = linux.devices().as_ref().unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].path(), Path::new("/dev/fuse"));
    assert!(linux.mount_label().is_none());
    // An app container of pod s1: the pod's network is the guest's (no netns entry), IPC is
    // the sandbox container's (see pod_tests.rs).
    let ns = linux.namespaces().as_ref().unwrap();
    let types: Vec<_> = ns.iter().map(|n| n.typ()).collect();
    assert_eq!(
        types,
        [
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Mount
        ]
    );
    let paths: Vec<_> = ns.iter().map(|n| n.path().clone()).collect();
    assert_eq!(
        paths,
        [None, Some(PathBuf::from("/run/isola/ns/s1/ipc")), None]
    );
    let io = linux
        .resources()
        .as_ref()
        .unwrap()
        .block_io()
        .as_ref()
        .unwrap();
    assert_eq!(io.weight(), Some(10));
    assert!(io.throttle_read_bps_device().is_none());
    // Cgroup device rules are about device numbers the guest shares (null, zero, ...): kept.
    assert_eq!(
        linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .as_ref()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(linux.masked_paths().as_ref().unwrap(), &["/proc/kcore"]);
    assert!(t.spec.hooks().is_none());
    let process = t.spec.process().as_ref().unwrap();
    assert!(process.apparmor_profile().is_none());
    assert!(process.selinux_label().is_none());
    assert_eq!(process.args().as_ref().unwrap(), &["sh", "-c", "echo hi"]);
    assert_eq!(t.spec.hostname().as_deref(), Some("pod"));
    assert_eq!(
        t.spec
            .annotations()
            .as_ref()
            .unwrap()
            .get("io.kubernetes.cri.sandbox-id")
            .map(String::as_str),
        Some("s1")
    );
    for what in ["hooks", "AppArmor", "/dev/kmsg", "block I/O"] {
        assert!(
            t.dropped.iter().any(|d| d.contains(what)),
            "{what}: {:?}",
            t.dropped
        );
    }
}

#[test]
fn the_result_serializes_for_the_agent() {
    let t = translated();
    let json = serde_json::to_value(&t.spec).unwrap();
    assert_eq!(json["root"]["path"], "/run/isola/shared/c1/rootfs");
    assert_eq!(json["linux"]["cgroupsPath"], "/isola/c1");
    assert!(json["linux"]["namespaces"][0].get("path").is_none());
    assert_eq!(
        json["linux"]["namespaces"][1]["path"],
        "/run/isola/ns/s1/ipc"
    );
}

#[test]
fn a_missing_bind_source_is_an_invalid_argument() {
    let json = CRI_SPEC.replace("/srv/data", "/srv/gone");
    let err = translate(&spec(&json), "c1", Path::new("/bundle"), &classify).unwrap_err();
    assert!(matches!(err, ShimError::InvalidArgument(_)), "{err}");
    assert!(err.to_string().contains("/srv/gone"), "{err}");
}

#[test]
fn a_spec_without_root_or_process_is_an_invalid_argument() {
    let mut s = spec(CRI_SPEC);
    s.set_root(None);
    let err = translate(&s, "c1", Path::new("/b"), &classify).unwrap_err();
    assert!(err.to_string().contains("no root"), "{err}");
    let mut s = spec(CRI_SPEC);
    s.set_process(None);
    let err = translate(&s, "c1", Path::new("/b"), &classify).unwrap_err();
    assert!(matches!(err, ShimError::InvalidArgument(_)), "{err}");
}

#[test]
fn a_minimal_spec_passes_through() {
    let s = spec(
        r#"{"ociVersion": "1.0.2", "process": {"user": {"uid": 0, "gid": 0}, "cwd": "/"}, "root": {"path": "rootfs"}}"#,
    );
    let t = translate(&s, "x", Path::new("/b"), &classify).unwrap();
    assert!(t.binds.is_empty());
    assert!(t.dropped.is_empty());
    assert!(t.spec.mounts().is_none());
}

#[test]
fn an_exec_process_loses_host_policy_and_keeps_its_security_settings() {
    let json = br#"{"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0},
        "apparmorProfile": "cri-containerd.apparmor.d", "selinuxLabel": "system_u:r:t:s0",
        "noNewPrivileges": true, "capabilities": {"bounding": ["CAP_KILL"]},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 8, "soft": 8}]}"#;
    let (out, dropped) = super::exec_process(json, "e1", true).unwrap();
    let p: Process = serde_json::from_slice(&out).unwrap();
    assert_eq!(p.terminal(), Some(true));
    assert_eq!(p.apparmor_profile(), &None);
    assert_eq!(p.selinux_label(), &None);
    assert_eq!(dropped.len(), 2, "{dropped:?}");
    assert_eq!(p.no_new_privileges(), Some(true));
    assert!(p.capabilities().is_some());
    assert_eq!(p.rlimits().as_ref().map(Vec::len), Some(1));
    let err = super::exec_process(b"{", "e2", false).unwrap_err();
    assert!(matches!(err, ShimError::InvalidArgument(_)), "{err}");
    assert!(err.to_string().contains("e2"), "{err}");
}

#[test]
fn host_devices_are_dropped_and_guest_devices_kept_or_made_from_binds() {
    let json = CRI_SPEC.replace(
        r#""devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}]"#,
        r#""devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229},
                       {"path": "/dev/sda", "type": "b", "major": 8, "minor": 0},
                       {"path": "/dev/nvidia0", "type": "c", "major": 195, "minor": 0}]"#,
    );
    assert_ne!(json, CRI_SPEC, "the test spec changed");
    let mut s = spec(&json);
    let mut mounts = s.mounts().clone().unwrap();
    for (src, dst) in [("/dev/net/tun", "/dev/net/tun"), ("/dev/kvm", "/dev/kvm")] {
        mounts.push(
            oci_spec::runtime::MountBuilder::default()
                .destination(dst)
                .typ("bind")
                .source(src)
                .options(vec!["rbind".to_string(), "rw".to_string()])
                .build()
                .unwrap(),
        );
    }
    s.set_mounts(Some(mounts));
    let classify_dev = |p: &Path| {
        if p.starts_with("/dev") {
            SourceKind::Device
        } else {
            classify(p)
        }
    };
    let t = translate(&s, "c1", Path::new("/bundle"), &classify_dev).unwrap();
    let devices = t.spec.linux().as_ref().unwrap().devices().clone().unwrap();
    let got: Vec<_> = devices
        .iter()
        .map(|d| {
            (
                d.path().to_string_lossy().into_owned(),
                d.major(),
                d.minor(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("/dev/fuse".to_string(), 10, 229),
            ("/dev/net/tun".to_string(), 10, 200)
        ]
    );
    let mounts = t.spec.mounts().as_ref().unwrap();
    assert!(mounts
        .iter()
        .all(|m| !m.destination().starts_with("/dev/net")
            && m.destination() != Path::new("/dev/kvm")));
    assert!(
        t.dropped.iter().any(|d| d.contains("2 linux.devices")),
        "{:?}",
        t.dropped
    );
    assert!(
        t.dropped.iter().any(|d| d.contains("/dev/kvm")),
        "{:?}",
        t.dropped
    );
}
