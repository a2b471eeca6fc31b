//! The pod's shared parts in the guest, for the containers of one pod (see the shim's
//! `pod` module for how the host's spec is translated into them):
//!
//! - **namespace references** `/run/isola/ns/<sandbox>/<type>` in a container's spec name the
//!   namespace of the pod's sandbox (pause) container; they become
//!   `/proc/<sandbox init pid>/ns/<type>` right before the container is created, so app
//!   containers share the pause container's IPC, UTS (and with shareProcessNamespace, PID)
//!   namespaces;
//! - **pod volumes** below `/run/isola/pod/`: `shm` is one tmpfs for the whole pod (its
//!   `/dev/shm`), `empty-dir/<name>` a directory in the guest's memory (the pod's emptyDir
//!   volumes). Both are created on first use and live as long as the VM.
//!
//! Nothing here follows a path the host names beyond these fixed shapes: every other path below
//! the two directories is refused.

use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use nix::mount::{mount, MsFlags};
use oci_spec::runtime::Spec;

use super::spec::check_container_id;
use crate::error::{AgentError, Result};

pub use isola_agent_proto::pod::{ns_file, NS_DIR, POD_DIR};
/// The size of the pod's /dev/shm (what containerd and Docker give by default).
const SHM_OPTIONS: &str = "mode=1777,size=65536k";

/// Serializes creating the pod's volumes (containers may be created concurrently).
static PREPARE: Mutex<()> = Mutex::new(());

/// A pod-level volume a container's spec uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodVolume {
    /// `/run/isola/pod/shm`.
    Shm,
    /// `/run/isola/pod/empty-dir/<name>`.
    EmptyDir(String),
}

impl PodVolume {
    /// Its path in the guest.
    pub fn path(&self) -> PathBuf {
        match self {
            PodVolume::Shm => Path::new(POD_DIR).join("shm"),
            PodVolume::EmptyDir(name) => Path::new(POD_DIR).join("empty-dir").join(name),
        }
    }
}

/// The normal components of `path` below `base`, if it is an absolute path below it made of
/// normal components only.
fn below<'a>(path: &'a Path, base: &str) -> Option<Vec<&'a str>> {
    let rest = path.strip_prefix(base).ok()?;
    rest.components()
        .map(|c| match c {
            Component::Normal(n) => n.to_str(),
            _ => None,
        })
        .collect()
}

/// Replaces the namespace references of container `id`'s spec by the namespaces of the sandbox
/// container they name; `init_pid` gives the pid of a container's init in the guest.
pub fn resolve_namespaces(
    spec: &mut Spec,
    id: &str,
    init_pid: impl Fn(&str) -> Option<i32>,
) -> Result<()> {
    let Some(namespaces) = spec
        .linux_mut()
        .as_mut()
        .and_then(|l| l.namespaces_mut().as_mut())
    else {
        return Ok(());
    };
    for ns in namespaces.iter_mut() {
        let Some(path) = ns.path().clone() else {
            continue;
        };
        if !path.starts_with(NS_DIR) {
            continue;
        }
        let want = ns_file(ns.typ());
        let (sandbox, file) = match below(&path, NS_DIR).as_deref() {
            Some([sandbox, file]) => (sandbox.to_string(), file.to_string()),
            _ => {
                return Err(AgentError::InvalidArgument(format!(
                    "container {id}: namespace reference {} is not {NS_DIR}/<sandbox>/{want}",
                    path.display()
                )))
            }
        };
        check_container_id(&sandbox)?;
        if file != want {
            return Err(AgentError::InvalidArgument(format!(
                "container {id}: {:?} namespace reference {} names a {file} namespace",
                ns.typ(),
                path.display()
            )));
        }
        let pid = init_pid(&sandbox).ok_or_else(|| {
            AgentError::NotFound(format!(
                "container {id} joins the {want} namespace of sandbox container {sandbox}, \
                 which is not running in this VM"
            ))
        })?;
        let resolved = PathBuf::from(format!("/proc/{pid}/ns/{want}"));
        tracing::debug!(container_id = id, sandbox, namespace = want, path = %resolved.display(), "joining the sandbox's namespace");
        ns.set_path(Some(resolved));
    }
    Ok(())
}

/// The pod volumes container `id`'s mounts use; INVALID_ARGUMENT for any other source below
/// [`POD_DIR`].
pub fn pod_volumes(spec: &Spec, id: &str) -> Result<Vec<PodVolume>> {
    let mut volumes = Vec::new();
    for m in spec.mounts().iter().flatten() {
        let Some(source) = m.source().as_deref().filter(|s| s.starts_with(POD_DIR)) else {
            continue;
        };
        let volume = match below(source, POD_DIR).as_deref() {
            Some(["shm"]) => PodVolume::Shm,
            Some(["empty-dir", name]) if valid_volume_name(name) => {
                PodVolume::EmptyDir(name.to_string())
            }
            _ => {
                return Err(AgentError::InvalidArgument(format!(
                    "container {id}: mount source {} is not a pod volume \
                     ({POD_DIR}/shm or {POD_DIR}/empty-dir/<name>)",
                    source.display()
                )))
            }
        };
        if !volumes.contains(&volume) {
            volumes.push(volume);
        }
    }
    Ok(volumes)
}

fn valid_volume_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether `dir` is a mount point (its device differs from its parent's).
fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(d), Some(Ok(p))) = (
        std::fs::symlink_metadata(dir),
        dir.parent().map(std::fs::symlink_metadata),
    ) else {
        return false;
    };
    d.is_dir() && d.dev() != p.dev()
}

/// Creates the pod volumes that do not exist yet.
pub fn prepare_volumes(volumes: &[PodVolume]) -> Result<()> {
    if volumes.is_empty() {
        return Ok(());
    }
    let _guard = PREPARE.lock().unwrap_or_else(|p| p.into_inner());
    for v in volumes {
        let path = v.path();
        std::fs::create_dir_all(&path)
            .map_err(|e| AgentError::io(format!("creating {}", path.display()), e))?;
        match v {
            PodVolume::Shm if !is_mount_point(&path) => {
                mount(
                    Some("shm"),
                    &path,
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                    Some(SHM_OPTIONS),
                )
                .map_err(|e| {
                    AgentError::sys(format!("mounting the pod's shm on {}", path.display()), e)
                })?;
                tracing::info!(path = %path.display(), "pod shm mounted");
            }
            PodVolume::Shm => {}
            PodVolume::EmptyDir(name) => {
                // Like kubelet's emptyDir: writable by whatever user the containers run as.
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))
                    .map_err(|e| AgentError::io(format!("opening up {}", path.display()), e))?;
                tracing::debug!(volume = %name, "pod emptyDir ready");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ttrpc::Code;

    fn spec(namespaces: &str, mounts: &str) -> Spec {
        serde_json::from_str(&format!(
            r#"{{"ociVersion": "1.0.2", "root": {{"path": "/r"}},
                "mounts": [{mounts}], "linux": {{"namespaces": [{namespaces}]}}}}"#
        ))
        .unwrap()
    }

    fn paths(s: &Spec) -> Vec<Option<PathBuf>> {
        s.linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.path().clone())
            .collect()
    }

    #[test]
    fn references_become_the_sandbox_inits_namespaces() {
        let mut s = spec(
            r#"{"type": "ipc", "path": "/run/isola/ns/pod1/ipc"},
               {"type": "uts", "path": "/run/isola/ns/pod1/uts"},
               {"type": "pid"}, {"type": "mount"}"#,
            "",
        );
        resolve_namespaces(&mut s, "app", |id| (id == "pod1").then_some(77)).unwrap();
        assert_eq!(
            paths(&s),
            [
                Some("/proc/77/ns/ipc".into()),
                Some("/proc/77/ns/uts".into()),
                None,
                None
            ]
        );
    }

    #[test]
    fn bad_references_are_refused() {
        let resolve = |ns: &str| {
            let mut s = spec(ns, "");
            resolve_namespaces(&mut s, "app", |_| Some(1))
        };
        for bad in [
            r#"{"type": "ipc", "path": "/run/isola/ns/pod1/uts"}"#,
            r#"{"type": "ipc", "path": "/run/isola/ns/../ns/pod1/ipc"}"#,
            r#"{"type": "ipc", "path": "/run/isola/ns/pod1"}"#,
            r#"{"type": "ipc", "path": "/run/isola/ns/a/b/ipc"}"#,
        ] {
            let e = resolve(bad).unwrap_err();
            assert_eq!(e.code(), Code::INVALID_ARGUMENT, "{bad}: {e}");
        }
        let mut s = spec(r#"{"type": "pid", "path": "/run/isola/ns/gone/pid"}"#, "");
        let e = resolve_namespaces(&mut s, "app", |_| None).unwrap_err();
        assert_eq!(e.code(), Code::NOT_FOUND);
        assert!(e.to_string().contains("gone"), "{e}");
    }

    #[test]
    fn pod_volumes_are_found_and_checked() {
        let s = spec(
            "",
            r#"{"destination": "/dev/shm", "type": "bind", "source": "/run/isola/pod/shm"},
               {"destination": "/a", "type": "bind", "source": "/run/isola/pod/empty-dir/cache"},
               {"destination": "/b", "type": "bind", "source": "/run/isola/pod/empty-dir/cache"},
               {"destination": "/c", "type": "bind", "source": "/run/isola/shared/c/mounts/0"},
               {"destination": "/proc", "type": "proc", "source": "proc"}"#,
        );
        let v = pod_volumes(&s, "c").unwrap();
        assert_eq!(v, [PodVolume::Shm, PodVolume::EmptyDir("cache".into())]);
        assert_eq!(v[1].path(), Path::new("/run/isola/pod/empty-dir/cache"));
        for bad in [
            "/run/isola/pod/other",
            "/run/isola/pod/empty-dir/../../etc",
            "/run/isola/pod/empty-dir/a/b",
            "/run/isola/pod/empty-dir/.x",
            "/run/isola/pod",
        ] {
            let s = spec(
                "",
                &format!(r#"{{"destination": "/x", "type": "bind", "source": "{bad}"}}"#),
            );
            let e = pod_volumes(&s, "c").unwrap_err();
            assert_eq!(e.code(), Code::INVALID_ARGUMENT, "{bad}: {e}");
        }
    }

    #[test]
    fn mount_points_are_told_from_directories() {
        let d = tempfile::tempdir().unwrap();
        assert!(!is_mount_point(d.path()));
        assert!(is_mount_point(Path::new("/proc")));
    }
}
