//! The objects the operator applies, built without I/O from the IsolaConfig's spec:
//!
//! - the installer DaemonSet is deploy/isola-deploy.yaml itself (embedded and parsed), with the
//!   spec's image, nodes and runtime settings written into it: everything else (hostPID, the
//!   /host mount, the readinessProbe that gates the rolling update, the termination message
//!   policy, the grace period) is the plain manifest's, so the two never drift;
//! - one RuntimeClass per `spec.runtimeClasses` entry, as deploy/runtimeclass-deploy.yaml.
//!
//! Each carries an ownerReference to the IsolaConfig (controller: true: the controller's
//! `owns` watch maps their changes back to it) and `app.kubernetes.io/managed-by`.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Capabilities, Container, EnvVar, SecurityContext};
use k8s_openapi::api::node::v1::{Overhead, RuntimeClass, Scheduling};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::crd::IsolaConfigSpec;
use super::error::Error;
use super::validate::handler_spec;
use crate::deploy::node::{LABEL, READY};

/// deploy/isola-deploy.yaml, the DaemonSet the operator runs.
pub const MANIFEST: &str = include_str!("../../../deploy/isola-deploy.yaml");
/// The DaemonSet's name (the manifest's; its pods' ISOLA_DEPLOY_DAEMONSET).
pub const DAEMONSET: &str = "isola-deploy";
/// The installer container in it.
pub const CONTAINER: &str = "installer";
/// The label its pods carry (the DaemonSet's selector).
pub const POD_LABEL: (&str, &str) = ("app.kubernetes.io/name", "isola-deploy");
/// Who manages the operator's objects.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "isola-operator");
/// The IsolaConfig a RuntimeClass belongs to (stale ones are found by it).
pub const CONFIG_LABEL: &str = "isola.io/config";
/// The installer's environment variable for the mode.
pub const MODE_ENV: &str = "ISOLA_DEPLOY_MODE";

/// What the installer pods do: install (and wait), or uninstall (and wait).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Install,
    Cleanup,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Install => "install",
            Mode::Cleanup => "cleanup",
        }
    }
}

/// The installer DaemonSet for `spec` in `namespace`, owned by `owner` if given.
///
/// The cleanup DaemonSet has no owner: a foreground deletion of the IsolaConfig (`kubectl
/// delete --cascade=foreground`) makes the garbage collector delete its dependents at once,
/// finalizers or not, and the cleanup pods must run to their end instead.
pub fn daemonset(
    spec: &IsolaConfigSpec,
    namespace: &str,
    owner: Option<OwnerReference>,
    mode: Mode,
) -> Result<DaemonSet, Error> {
    let mut ds: DaemonSet =
        serde_yaml::from_str(MANIFEST).map_err(|e| Error::Manifest(e.to_string()))?;
    ds.metadata.name = Some(DAEMONSET.to_string());
    ds.metadata.namespace = Some(namespace.to_string());
    ds.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
    ds.metadata.owner_references = owner.map(|o| vec![o]);
    let pod = ds
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .ok_or_else(|| Error::Manifest("no spec.template.spec".into()))?;
    pod.node_selector = (!spec.node_selector.is_empty()).then(|| spec.node_selector.clone());
    let c = pod
        .containers
        .iter_mut()
        .find(|c| c.name == CONTAINER)
        .ok_or_else(|| Error::Manifest(format!("no container {CONTAINER}")))?;
    c.image = Some(spec.image.clone());
    c.image_pull_policy = Some(
        spec.image_pull_policy
            .clone()
            .unwrap_or_else(|| "IfNotPresent".into()),
    );
    c.security_context = Some(security_context(spec));
    if let Some(paths) = spec.installer.as_ref().and_then(|i| i.host_paths.as_ref()) {
        host_paths(c, &mut pod.volumes, paths);
    }
    let n = &spec.node;
    let handlers: Vec<String> = spec
        .runtime_classes
        .iter()
        .map(|rc| handler_spec(&rc.name, rc.hypervisor.as_deref()))
        .collect();
    set_env(c, "ISOLA_DEPLOY_RUNTIME", Some(&n.runtime));
    set_env(c, "ISOLA_DEPLOY_RUNTIME_CONFIG", Some(&n.runtime_config));
    set_env(c, "ISOLA_DEPLOY_RESTART", Some(&n.restart));
    set_env(
        c,
        "ISOLA_DEPLOY_RUNTIME_SOCKET",
        n.runtime_socket.as_deref(),
    );
    set_env(
        c,
        "ISOLA_DEPLOY_PREFIX",
        Some(n.prefix.as_deref().unwrap_or("/opt/isola")),
    );
    let host_pid = n.host_pid.map(|p| p.to_string());
    set_env(c, "ISOLA_DEPLOY_HOST_PID", host_pid.as_deref());
    set_env(c, "ISOLA_DEPLOY_SHIM_DIR", n.shim_dir.as_deref());
    set_env(c, "ISOLA_DEPLOY_HANDLERS", Some(&handlers.join(",")));
    let templates = spec.vm_templates.map(|on| on.to_string());
    set_env(c, "ISOLA_DEPLOY_VM_TEMPLATES", templates.as_deref());
    set_env(c, MODE_ENV, Some(mode.as_str()));
    // The operator uninstalls through the cleanup mode (its finalizer), never on a SIGTERM: a
    // pod's termination is then always an update, a drain or the DaemonSet's final deletion
    // after the cleanup.
    set_env(c, "ISOLA_DEPLOY_UNINSTALL_ON_TERM", Some("never"));
    Ok(ds)
}

/// The manifest's `host` volume (the node's / at /host) replaced by one hostPath volume per
/// directory in `paths`, each at /host<path>: the installer's paths stay the same.
fn host_paths(
    c: &mut Container,
    volumes: &mut Option<Vec<k8s_openapi::api::core::v1::Volume>>,
    paths: &[String],
) {
    use k8s_openapi::api::core::v1::{HostPathVolumeSource, Volume, VolumeMount};
    let name = |i: usize| format!("host-{i}");
    let mounts = c.volume_mounts.get_or_insert_with(Vec::new);
    mounts.retain(|m| m.name != "host");
    let volumes = volumes.get_or_insert_with(Vec::new);
    volumes.retain(|v| v.name != "host");
    for (i, p) in paths.iter().enumerate() {
        mounts.push(VolumeMount {
            name: name(i),
            mount_path: format!("/host{}", p.trim_end_matches('/')),
            ..VolumeMount::default()
        });
        volumes.push(Volume {
            name: name(i),
            host_path: Some(HostPathVolumeSource {
                path: p.clone(),
                type_: Some("Directory".into()),
            }),
            ..Volume::default()
        });
    }
}

/// Privileged (the manifest's), or unprivileged with exactly the capabilities asked for.
fn security_context(spec: &IsolaConfigSpec) -> SecurityContext {
    match spec.installer.as_ref().and_then(|i| i.capabilities.clone()) {
        Some(add) => SecurityContext {
            privileged: Some(false),
            capabilities: Some(Capabilities {
                add: Some(add),
                drop: None,
            }),
            ..SecurityContext::default()
        },
        None => SecurityContext {
            privileged: Some(true),
            ..SecurityContext::default()
        },
    }
}

/// Sets `name` to `value` (replacing a valueFrom), appending it when absent; `None` removes it.
fn set_env(c: &mut Container, name: &str, value: Option<&str>) {
    let env = c.env.get_or_insert_with(Vec::new);
    match value {
        None => env.retain(|e| e.name != name),
        Some(v) => match env.iter_mut().find(|e| e.name == name) {
            Some(e) => {
                e.value = Some(v.to_string());
                e.value_from = None;
            }
            None => env.push(EnvVar {
                name: name.to_string(),
                value: Some(v.to_string()),
                value_from: None,
            }),
        },
    }
}

/// The mode a DaemonSet's installer runs in (`None`: not one of ours).
pub fn mode_of(ds: &DaemonSet) -> Option<Mode> {
    let c = ds
        .spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == CONTAINER)?;
    let v = c.env.as_ref()?.iter().find(|e| e.name == MODE_ENV)?;
    match v.value.as_deref() {
        Some("cleanup") => Some(Mode::Cleanup),
        Some("install") | None => Some(Mode::Install),
        Some(_) => None,
    }
}

/// One RuntimeClass per entry, selecting nodes labelled ready, labelled with `config`.
pub fn runtime_classes(
    spec: &IsolaConfigSpec,
    config: &str,
    owner: &OwnerReference,
) -> Vec<RuntimeClass> {
    spec.runtime_classes
        .iter()
        .map(|rc| {
            let pod_fixed: BTreeMap<String, Quantity> = rc
                .overhead
                .iter()
                .flat_map(|o| [("memory", &o.memory), ("cpu", &o.cpu)])
                .filter_map(|(k, v)| Some((k.to_string(), Quantity(v.clone()?))))
                .collect();
            RuntimeClass {
                metadata: ObjectMeta {
                    name: Some(rc.name.clone()),
                    labels: Some(BTreeMap::from([
                        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
                        (CONFIG_LABEL.to_string(), config.to_string()),
                    ])),
                    owner_references: Some(vec![owner.clone()]),
                    ..ObjectMeta::default()
                },
                handler: rc.name.clone(),
                overhead: (!pod_fixed.is_empty()).then_some(Overhead {
                    pod_fixed: Some(pod_fixed),
                }),
                scheduling: Some(Scheduling {
                    node_selector: Some(BTreeMap::from([(LABEL.into(), READY.into())])),
                    tolerations: None,
                }),
            }
        })
        .collect()
}

#[cfg(test)]
#[path = "desired_tests.rs"]
mod tests;
