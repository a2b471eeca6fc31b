//! Pod semantics in the guest spec (pure): what a container's namespaces and pod-level mounts
//! become when the whole pod shares one VM, as in Kata Containers.
//!
//! The role of a container comes from the annotations containerd's CRI plugin (or CRI-O) puts
//! in its spec: the pod's sandbox ("pause") container, an app container of a pod, or a
//! container of its own (`ctr run`).
//!
//! - **network**: a namespace *path* on the host (CNI's pod netns, or the pause's) means the
//!   pod's network, which is the guest's own network namespace: the entry is removed, so the
//!   container stays in the guest's root netns where the pod's interfaces are configured. A
//!   network namespace without a path (a new, empty one) is kept.
//! - **ipc, uts, pid** of an app container whose host spec joins another namespace by path (the
//!   pause container's): the guest spec names [`guest_ns_ref`] `/run/isola/ns/<sandbox>/<type>`,
//!   which the agent resolves to the sandbox container's namespace in the guest. Without a path
//!   the container gets a new namespace of its own (PID: unless shareProcessNamespace).
//! - **other namespace paths** (mount, user, cgroup; anything in a container that is not part of
//!   a pod) name host namespaces that mean nothing in the guest: the path is dropped and a new
//!   namespace is made.
//! - **`/dev/shm`** binds of pod containers (the sandbox's shm on the host) become binds of
//!   [`GUEST_POD_SHM`], one tmpfs in the guest for the whole pod (the agent mounts it).
//! - **emptyDir volumes** (a host source `.../kubernetes.io~empty-dir/<name>`) become binds of
//!   `/run/isola/pod/empty-dir/<name>`, a directory in the guest's memory shared by the pod's
//!   containers; nothing is written to the host's directory.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Mount, Spec};

use crate::error::{Result, ShimError};
use crate::options::{validate_id, CRIO_SANDBOX_ID, CRI_SANDBOX_ID};

/// containerd's CRI annotation telling a sandbox from an app container.
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// The same, as CRI-O sets it.
pub const CRIO_CONTAINER_TYPE: &str = "io.kubernetes.cri-o.ContainerType";
pub use isola_agent_proto::pod::{
    ns_file, EMPTY_DIRS as GUEST_EMPTY_DIRS, NS_DIR as GUEST_NS_DIR, POD_DIR as GUEST_POD_DIR,
    POD_SHM as GUEST_POD_SHM,
};
/// The directory kubelet keeps a pod's emptyDir volumes in, on the host.
const EMPTY_DIR_PLUGIN: &str = "kubernetes.io~empty-dir";

/// What a container is to its pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodRole {
    /// Not part of a CRI pod (e.g. `ctr run`).
    Standalone,
    /// The pod's sandbox (pause) container.
    Sandbox,
    /// An app container of the pod whose sandbox container is `sandbox_id`.
    Container { sandbox_id: String },
}

/// Refuses a pod that asks for the host's network namespace (`hostNetwork: true`: the CRI
/// sandbox spec then has no network namespace at all): its VM cannot share the host's network,
/// and running it with a guest network of its own would silently give it another network.
pub fn check_pod_network(spec: &Spec, role: &PodRole, cid: &str) -> Result<()> {
    if *role != PodRole::Sandbox {
        return Ok(());
    }
    let has_netns = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|n| n.iter().any(|n| n.typ() == LinuxNamespaceType::Network));
    if has_netns {
        return Ok(());
    }
    Err(ShimError::Unimplemented(format!(
        "pod {cid} asks for the host's network namespace (hostNetwork: true): a pod in its own \
         VM cannot share the host's network; run it with another RuntimeClass (e.g. runc)"
    )))
}

impl PodRole {
    /// The role from the spec's annotations. An app container must name a valid sandbox id.
    pub fn of(spec: &Spec, cid: &str) -> Result<PodRole> {
        let empty = HashMap::new();
        let a = spec.annotations().as_ref().unwrap_or(&empty);
        let kind = a
            .get(CRI_CONTAINER_TYPE)
            .or_else(|| a.get(CRIO_CONTAINER_TYPE))
            .map(String::as_str);
        let sandbox = a
            .get(CRI_SANDBOX_ID)
            .or_else(|| a.get(CRIO_SANDBOX_ID))
            .filter(|s| !s.is_empty());
        match (kind, sandbox) {
            (Some("sandbox"), _) => Ok(PodRole::Sandbox),
            (_, Some(sid)) if sid == cid => Ok(PodRole::Sandbox),
            (_, Some(sid)) => {
                validate_id("sandbox id", sid)?;
                Ok(PodRole::Container {
                    sandbox_id: sid.clone(),
                })
            }
            (Some("container"), None) => Err(ShimError::InvalidArgument(format!(
                "container {cid} is a pod's app container ({CRI_CONTAINER_TYPE}=container) \
                 but names no sandbox ({CRI_SANDBOX_ID})"
            ))),
            _ => Ok(PodRole::Standalone),
        }
    }

    /// Whether the container belongs to a pod.
    pub fn in_pod(&self) -> bool {
        !matches!(self, PodRole::Standalone)
    }
}

/// The guest reference to namespace `typ` of sandbox container `sandbox_id`.
pub fn guest_ns_ref(sandbox_id: &str, typ: LinuxNamespaceType) -> PathBuf {
    Path::new(GUEST_NS_DIR).join(sandbox_id).join(ns_file(typ))
}

/// Rewrites the namespaces of `spec` for `role` (see the module docs); notes what was dropped.
pub fn translate_namespaces(spec: &mut Spec, role: &PodRole, dropped: &mut Vec<String>) {
    let Some(namespaces) = spec
        .linux_mut()
        .as_mut()
        .and_then(|l| l.namespaces_mut().as_mut())
    else {
        return;
    };
    namespaces.retain(|ns| !(ns.typ() == LinuxNamespaceType::Network && ns.path().is_some()));
    for ns in namespaces.iter_mut() {
        let Some(path) = ns.path().clone() else {
            continue;
        };
        let shared = matches!(
            ns.typ(),
            LinuxNamespaceType::Ipc | LinuxNamespaceType::Uts | LinuxNamespaceType::Pid
        );
        match role {
            PodRole::Container { sandbox_id } if shared => {
                ns.set_path(Some(guest_ns_ref(sandbox_id, ns.typ())));
            }
            _ => {
                dropped.push(format!(
                    "{:?} namespace path {} (a host namespace; a new one is made)",
                    ns.typ(),
                    path.display()
                ));
                ns.set_path(None);
            }
        }
    }
}

/// Where a bind mount of a pod's container lives in the guest instead of being shared from
/// the host, if it is a pod-level volume: the pod's `/dev/shm`, or an emptyDir.
pub fn pod_volume_source(m: &Mount, source: &Path, role: &PodRole) -> Result<Option<PathBuf>> {
    if role.in_pod() && m.destination() == Path::new("/dev/shm") {
        return Ok(Some(PathBuf::from(GUEST_POD_SHM)));
    }
    let Some(name) = empty_dir_name(source) else {
        return Ok(None);
    };
    let valid = !name.is_empty()
        && name.len() <= 253
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !valid {
        return Err(ShimError::InvalidArgument(format!(
            "emptyDir volume {name:?} (from {}) is not a valid volume name",
            source.display()
        )));
    }
    Ok(Some(Path::new(GUEST_EMPTY_DIRS).join(name)))
}

/// `<name>` of a host path `.../kubernetes.io~empty-dir/<name>` (kubelet's layout), if it is one.
fn empty_dir_name(source: &Path) -> Option<&str> {
    let mut components = source.components().rev();
    let name = match components.next()? {
        Component::Normal(n) => n.to_str()?,
        _ => return None,
    };
    match components.next()? {
        Component::Normal(p) if p == EMPTY_DIR_PLUGIN => Some(name),
        _ => None,
    }
}

#[cfg(test)]
#[path = "pod_tests.rs"]
mod tests;
