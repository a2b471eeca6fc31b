use super::*;
use crate::mounts::SourceKind;
use crate::translate::translate;

/// A pod's spec as containerd's CRI writes it, for container `cid` of type `kind`.
fn pod_spec(cid: &str, kind: &str, namespaces: &str, mounts: &str) -> Spec {
    let json = format!(
        r#"{{
  "ociVersion": "1.0.2-dev",
  "process": {{"user": {{"uid": 0, "gid": 0}}, "args": ["sh"], "cwd": "/"}},
  "root": {{"path": "rootfs"}},
  "hostname": "web",
  "mounts": [{mounts}],
  "annotations": {{
    "io.kubernetes.cri.container-type": "{kind}",
    "io.kubernetes.cri.sandbox-id": "pod1",
    "io.kubernetes.cri.container-name": "{cid}"
  }},
  "linux": {{"namespaces": [{namespaces}]}}
}}"#
    );
    serde_json::from_str(&json).unwrap()
}

const SANDBOX_NS: &str = r#"{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
    {"type": "network", "path": "/var/run/netns/cni-1234"}"#;
const APP_NS: &str = r#"{"type": "pid"}, {"type": "ipc", "path": "/proc/42/ns/ipc"},
    {"type": "uts", "path": "/proc/42/ns/uts"}, {"type": "mount"},
    {"type": "network", "path": "/proc/42/ns/net"}"#;

fn classify(path: &Path) -> SourceKind {
    if path.starts_with("/host") {
        SourceKind::Dir
    } else {
        SourceKind::File
    }
}

fn namespaces(spec: &Spec) -> Vec<(LinuxNamespaceType, Option<PathBuf>)> {
    spec.linux()
        .as_ref()
        .unwrap()
        .namespaces()
        .as_ref()
        .unwrap()
        .iter()
        .map(|n| (n.typ(), n.path().clone()))
        .collect()
}

fn mount_sources(spec: &Spec) -> Vec<(String, String)> {
    spec.mounts()
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m.destination().display().to_string(),
                m.source().as_ref().unwrap().display().to_string(),
            )
        })
        .collect()
}

#[test]
fn roles_come_from_the_cri_annotations() {
    let s = pod_spec("pod1", "sandbox", "", "");
    assert_eq!(PodRole::of(&s, "pod1").unwrap(), PodRole::Sandbox);
    let s = pod_spec("app", "container", "", "");
    assert_eq!(
        PodRole::of(&s, "app").unwrap(),
        PodRole::Container {
            sandbox_id: "pod1".into()
        }
    );
    let plain: Spec = serde_json::from_str(r#"{"ociVersion": "1.0.2"}"#).unwrap();
    assert_eq!(PodRole::of(&plain, "c").unwrap(), PodRole::Standalone);
    let crio: Spec = serde_json::from_str(
        r#"{"annotations": {"io.kubernetes.cri-o.ContainerType": "container",
            "io.kubernetes.cri-o.SandboxID": "p2"}}"#,
    )
    .unwrap();
    assert_eq!(
        PodRole::of(&crio, "c").unwrap(),
        PodRole::Container {
            sandbox_id: "p2".into()
        }
    );
}

#[test]
fn an_app_container_without_a_usable_sandbox_is_refused() {
    let lonely: Spec = serde_json::from_str(
        r#"{"annotations": {"io.kubernetes.cri.container-type": "container"}}"#,
    )
    .unwrap();
    let err = PodRole::of(&lonely, "c").unwrap_err();
    assert!(err.to_string().contains("names no sandbox"), "{err}");
    let bad: Spec =
        serde_json::from_str(r#"{"annotations": {"io.kubernetes.cri.sandbox-id": "../../etc"}}"#)
            .unwrap();
    assert!(matches!(
        PodRole::of(&bad, "c"),
        Err(ShimError::InvalidArgument(_))
    ));
}

#[test]
fn the_sandbox_keeps_new_namespaces_and_the_guest_network() {
    let t = translate(
        &pod_spec("pod1", "sandbox", SANDBOX_NS, ""),
        "pod1",
        Path::new("/b"),
        &classify,
    )
    .unwrap();
    assert_eq!(
        namespaces(&t.spec),
        [
            (LinuxNamespaceType::Pid, None),
            (LinuxNamespaceType::Ipc, None),
            (LinuxNamespaceType::Uts, None),
            (LinuxNamespaceType::Mount, None),
        ]
    );
    assert_eq!(t.spec.hostname().as_deref(), Some("web"));
}

#[test]
fn app_containers_join_the_sandbox_namespaces_in_the_guest() {
    let t = translate(
        &pod_spec("app", "container", APP_NS, ""),
        "app",
        Path::new("/b"),
        &classify,
    )
    .unwrap();
    assert_eq!(
        namespaces(&t.spec),
        [
            (LinuxNamespaceType::Pid, None),
            (
                LinuxNamespaceType::Ipc,
                Some("/run/isola/ns/pod1/ipc".into())
            ),
            (
                LinuxNamespaceType::Uts,
                Some("/run/isola/ns/pod1/uts".into())
            ),
            (LinuxNamespaceType::Mount, None),
        ]
    );
}

#[test]
fn share_process_namespace_joins_the_sandbox_pid_namespace() {
    let ns = APP_NS.replace(
        r#"{"type": "pid"}"#,
        r#"{"type": "pid", "path": "/proc/42/ns/pid"}"#,
    );
    let t = translate(
        &pod_spec("app", "container", &ns, ""),
        "app",
        Path::new("/b"),
        &classify,
    )
    .unwrap();
    assert_eq!(
        namespaces(&t.spec)[0],
        (
            LinuxNamespaceType::Pid,
            Some("/run/isola/ns/pod1/pid".into())
        )
    );
}

#[test]
fn host_namespace_paths_outside_a_pod_are_dropped() {
    let mut s = pod_spec("c", "container", APP_NS, "");
    s.set_annotations(None);
    let t = translate(&s, "c", Path::new("/b"), &classify).unwrap();
    assert!(namespaces(&t.spec).iter().all(|(_, p)| p.is_none()));
    assert!(!namespaces(&t.spec)
        .iter()
        .any(|(t, _)| *t == LinuxNamespaceType::Network));
    assert!(
        t.dropped.iter().any(|d| d.contains("/proc/42/ns/ipc")),
        "{:?}",
        t.dropped
    );
}

#[test]
fn a_new_network_namespace_without_a_path_is_kept() {
    let mut s = pod_spec("c", "container", r#"{"type": "network"}"#, "");
    s.set_annotations(None);
    let t = translate(&s, "c", Path::new("/b"), &classify).unwrap();
    assert_eq!(namespaces(&t.spec), [(LinuxNamespaceType::Network, None)]);
}

const CRI_MOUNTS: &str = r#"
  {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/c/sandboxes/pod1/hosts", "options": ["rbind", "rprivate", "rw"]},
  {"destination": "/dev/shm", "type": "bind", "source": "/run/c/sandboxes/pod1/shm", "options": ["rbind", "rprivate", "rw"]},
  {"destination": "/cache", "type": "bind", "source": "/host/pods/u1/volumes/kubernetes.io~empty-dir/cache", "options": ["rbind", "rprivate", "rw"]},
  {"destination": "/data", "type": "bind", "source": "/host/data", "options": ["rbind", "rprivate", "ro"]}
"#;

#[test]
fn shm_and_empty_dirs_live_in_the_guest_other_binds_are_shared() {
    let t = translate(
        &pod_spec("app", "container", APP_NS, CRI_MOUNTS),
        "app",
        Path::new("/b"),
        &classify,
    )
    .unwrap();
    assert_eq!(
        mount_sources(&t.spec),
        [
            ("/etc/hosts".into(), "/run/isola/shared/app/mounts/0".into()),
            ("/dev/shm".into(), "/run/isola/pod/shm".into()),
            ("/cache".into(), "/run/isola/pod/empty-dir/cache".into()),
            ("/data".into(), "/run/isola/shared/app/mounts/1".into()),
        ]
    );
    let shared: Vec<_> = t.binds.iter().map(|b| b.source.clone()).collect();
    assert_eq!(
        shared,
        [
            PathBuf::from("/var/lib/c/sandboxes/pod1/hosts"),
            PathBuf::from("/host/data")
        ]
    );
    assert!(t.binds[1].readonly);
    let mounts = t.spec.mounts().as_ref().unwrap();
    assert_eq!(mounts[2].typ().as_deref(), Some("bind"));
    assert_eq!(
        mounts[2].options().as_ref().unwrap(),
        &["rbind", "rprivate", "rw"]
    );
}

#[test]
fn a_standalone_containers_dev_shm_bind_is_shared_from_the_host() {
    let mut s = pod_spec("c", "container", "", CRI_MOUNTS);
    s.set_annotations(None);
    let t = translate(&s, "c", Path::new("/b"), &classify).unwrap();
    assert_eq!(mount_sources(&t.spec)[1].1, "/run/isola/shared/c/mounts/1");
}

#[test]
fn empty_dir_names_are_checked() {
    let m = |src: &str| {
        let m: Mount =
            serde_json::from_str(&format!(r#"{{"destination": "/v", "source": "{src}"}}"#))
                .unwrap();
        pod_volume_source(&m, Path::new(src), &PodRole::Sandbox)
    };
    assert_eq!(
        m("/k/volumes/kubernetes.io~empty-dir/a.b_c-1").unwrap(),
        Some(PathBuf::from("/run/isola/pod/empty-dir/a.b_c-1"))
    );
    assert_eq!(m("/k/volumes/kubernetes.io~configmap/x").unwrap(), None);
    assert_eq!(m("/k/volumes/kubernetes.io~empty-dir").unwrap(), None);
    assert_eq!(m("/k/kubernetes.io~empty-dir/x/deeper").unwrap(), None);
    assert!(m("/k/volumes/kubernetes.io~empty-dir/.hidden").is_err());
    assert!(m("/k/volumes/kubernetes.io~empty-dir/sp ace").is_err());
}

#[test]
fn a_host_network_pod_is_refused_before_anything_runs() {
    let host_net = r#"{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}"#;
    let spec = pod_spec("pod1", "sandbox", host_net, "");
    let err = check_pod_network(&spec, &PodRole::Sandbox, "pod1").unwrap_err();
    assert_eq!(err.code(), ttrpc::Code::UNIMPLEMENTED);
    assert!(err.to_string().contains("hostNetwork"), "{err}");
    // A pod network, or a plain container with the host's network, is fine.
    let spec = pod_spec("pod1", "sandbox", SANDBOX_NS, "");
    check_pod_network(&spec, &PodRole::Sandbox, "pod1").unwrap();
    let spec = pod_spec("c1", "container", host_net, "");
    check_pod_network(&spec, &PodRole::Standalone, "c1").unwrap();
}
