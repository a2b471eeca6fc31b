//! The spec checked before anything is applied: every value the installer would refuse on the
//! node (and crash-loop there, node after node) is refused here instead, once, in the
//! IsolaConfig's status (Ready=False, reason InvalidSpec) with what to write. The checks are the
//! installer's own (`deploy::layout::Handler::parse`, `deploy::restart::Strategy`,
//! `deploy::layout::Layout::new`), so the two cannot disagree.

use std::collections::BTreeSet;
use std::path::Path;

use crate::deploy::layout::{Handler, Layout};
use crate::deploy::restart::Strategy;

use super::crd::IsolaConfigSpec;

/// The image pull policies Kubernetes knows.
const PULL_POLICIES: [&str; 3] = ["Always", "IfNotPresent", "Never"];

/// Every problem with `spec`, one message each; empty when it can be applied.
pub fn problems(spec: &IsolaConfigSpec) -> Vec<String> {
    let mut out = Vec::new();
    if spec.image.trim().is_empty() {
        out.push("spec.image: empty; e.g. localhost/isola/isola-deploy:latest".to_string());
    }
    if let Some(p) = &spec.image_pull_policy {
        if !PULL_POLICIES.contains(&p.as_str()) {
            out.push(format!(
                "spec.imagePullPolicy {p:?}: expected one of {}",
                PULL_POLICIES.join(", ")
            ));
        }
    }
    node(spec, &mut out);
    node_selector(spec, &mut out);
    runtime_classes(spec, &mut out);
    if let Some(caps) = spec
        .installer
        .as_ref()
        .and_then(|i| i.capabilities.as_ref())
    {
        for c in caps {
            if c.is_empty() || !c.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                out.push(format!(
                    "spec.installer.capabilities {c:?}: expected a capability name such as \
                     SYS_ADMIN"
                ));
            }
        }
    }
    out
}

fn node(spec: &IsolaConfigSpec, out: &mut Vec<String>) {
    let n = &spec.node;
    if !["containerd", "crio"].contains(&n.runtime.as_str()) {
        out.push(format!(
            "spec.node.runtime {:?}: expected containerd or crio",
            n.runtime
        ));
    }
    if !Path::new(&n.runtime_config).is_absolute() {
        out.push(format!(
            "spec.node.runtimeConfig {:?}: must be an absolute host path (containerd's \
             config.toml, or CRI-O's drop-in directory)",
            n.runtime_config
        ));
    }
    if let Err(e) = n.restart.parse::<Strategy>() {
        out.push(format!("spec.node.restart: {e}"));
    }
    if let Some(s) = &n.runtime_socket {
        if !Path::new(s).is_absolute() {
            out.push(format!(
                "spec.node.runtimeSocket {s:?}: must be an absolute host path"
            ));
        }
    }
    if let Some(p) = &n.prefix {
        if let Err(e) = Layout::new(Path::new("/host"), Path::new(p)) {
            out.push(format!("spec.node.prefix: {e}"));
        }
    }
    for p in spec
        .installer
        .iter()
        .flat_map(|i| i.host_paths.iter().flatten())
    {
        if !Path::new(p).is_absolute() || p == "/" {
            out.push(format!(
                "spec.installer.hostPaths {p:?}: must be an absolute host directory other than /"
            ));
        }
    }
    if let Some(d) = &n.shim_dir {
        if !Path::new(d).is_absolute() {
            out.push(format!(
                "spec.node.shimDir {d:?}: must be an absolute host path"
            ));
        }
    }
}

/// A label name or value as Kubernetes takes it: at most 63 characters of [A-Za-z0-9-_.],
/// beginning and ending with a letter or digit (a value may be empty).
fn label_part(s: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && edge(s.chars().next())
        && edge(s.chars().last())
}

/// The DaemonSet's pods get `nodeSelector` as it is: a bad key or value would fail the apply,
/// where only the operator's log would show it.
fn node_selector(spec: &IsolaConfigSpec, out: &mut Vec<String>) {
    for (k, v) in &spec.node_selector {
        let (prefix, name) = match k.rsplit_once('/') {
            Some((p, n)) => (Some(p), n),
            None => (None, k.as_str()),
        };
        let prefix_ok = prefix.is_none_or(|p| {
            !p.is_empty() && p.len() <= 253 && p.split('.').all(|l| !l.is_empty() && label_part(l))
        });
        if !prefix_ok || !label_part(name) {
            out.push(format!(
                "spec.nodeSelector key {k:?}: not a label key ([prefix/]name, name at most 63 \
                 characters of letters, digits, '-', '_', '.')"
            ));
        }
        if !v.is_empty() && !label_part(v) {
            out.push(format!(
                "spec.nodeSelector {k}={v:?}: not a label value (at most 63 characters of \
                 letters, digits, '-', '_', '.', beginning and ending with a letter or digit)"
            ));
        }
    }
}

fn runtime_classes(spec: &IsolaConfigSpec, out: &mut Vec<String>) {
    if spec.runtime_classes.is_empty() {
        out.push(
            "spec.runtimeClasses: empty; name at least one (e.g. `- name: isola`), or delete \
             the IsolaConfig to uninstall"
                .to_string(),
        );
    }
    let mut seen = BTreeSet::new();
    for rc in &spec.runtime_classes {
        if !seen.insert(rc.name.as_str()) {
            out.push(format!(
                "spec.runtimeClasses: {:?} is listed twice",
                rc.name
            ));
        }
        if let Err(e) = Handler::parse(&handler_spec(&rc.name, rc.hypervisor.as_deref())) {
            out.push(format!("spec.runtimeClasses {:?}: {e}", rc.name));
        }
    }
}

/// `name[:hypervisor]`, as ISOLA_DEPLOY_HANDLERS takes it.
pub fn handler_spec(name: &str, hypervisor: Option<&str>) -> String {
    match hypervisor {
        Some(h) => format!("{name}:{h}"),
        None => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: serde_json::Value) -> IsolaConfigSpec {
        let mut v = serde_json::json!({
            "node": {
                "runtime": "containerd",
                "runtimeConfig": "/etc/containerd/config.toml",
                "restart": "systemd:containerd"
            }
        });
        for (k, x) in extra.as_object().unwrap() {
            if k == "node" {
                for (nk, nx) in x.as_object().unwrap() {
                    v["node"][nk] = nx.clone();
                }
            } else {
                v[k] = x.clone();
            }
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_defaults_are_valid() {
        let s = spec(serde_json::json!({}));
        assert_eq!(problems(&s), Vec::<String>::new());
        assert_eq!(s.image, "localhost/isola/isola-deploy:latest");
        assert_eq!(s.runtime_classes[0].name, "isola");
    }

    #[test]
    fn usual_node_selectors_are_accepted() {
        let s = spec(serde_json::json!({"nodeSelector": {
            "isola.io/install": "true",
            "kubernetes.io/hostname": "node-1.example",
            "pool": ""
        }}));
        assert_eq!(problems(&s), Vec::<String>::new());
    }

    #[test]
    fn each_bad_value_is_named() {
        let cases = [
            (serde_json::json!({"runtimeClasses": []}), "empty"),
            (
                serde_json::json!({"runtimeClasses": [{"name": "a"}, {"name": "a"}]}),
                "listed twice",
            ),
            (
                serde_json::json!({"runtimeClasses": [{"name": "Isola_1"}]}),
                "not a DNS label",
            ),
            (
                serde_json::json!({"runtimeClasses": [{"name": "a", "hypervisor": "firecracker"}]}),
                "unknown hypervisor",
            ),
            (
                serde_json::json!({"node": {"runtime": "docker"}}),
                "containerd or crio",
            ),
            (
                serde_json::json!({"node": {"runtimeConfig": "etc/config.toml"}}),
                "runtimeConfig",
            ),
            (
                serde_json::json!({"node": {"restart": "reboot"}}),
                "spec.node.restart",
            ),
            (
                serde_json::json!({"node": {"prefix": "opt/isola"}}),
                "spec.node.prefix",
            ),
            (
                serde_json::json!({"node": {"runtimeSocket": "run/x.sock"}}),
                "runtimeSocket",
            ),
            (
                serde_json::json!({"imagePullPolicy": "Sometimes"}),
                "imagePullPolicy",
            ),
            (
                serde_json::json!({"nodeSelector": {"isola.io/install": "yes please"}}),
                "not a label value",
            ),
            (
                serde_json::json!({"nodeSelector": {"-bad": "true"}}),
                "not a label key",
            ),
            (
                serde_json::json!({"installer": {"hostPaths": ["tmp"]}}),
                "hostPaths",
            ),
            (
                serde_json::json!({"installer": {"capabilities": ["sys admin"]}}),
                "capabilities",
            ),
        ];
        for (extra, want) in cases {
            let p = problems(&spec(extra.clone()));
            assert_eq!(p.len(), 1, "{extra}: {p:?}");
            assert!(p[0].contains(want), "{extra}: {p:?} lacks {want:?}");
        }
    }

    #[test]
    fn a_hypervisor_per_class_is_accepted() {
        let s = spec(serde_json::json!({"runtimeClasses": [
            {"name": "isola"}, {"name": "isola-clh", "hypervisor": "cloud-hypervisor"}
        ]}));
        assert_eq!(problems(&s), Vec::<String>::new());
    }
}
