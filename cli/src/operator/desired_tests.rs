//! The DaemonSet and RuntimeClasses built from a spec.

use k8s_openapi::api::core::v1::Container;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use super::*;

fn owner() -> OwnerReference {
    OwnerReference {
        api_version: "isola.io/v1alpha1".into(),
        kind: "IsolaConfig".into(),
        name: "isola".into(),
        uid: "uid-1".into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn spec(extra: serde_json::Value) -> IsolaConfigSpec {
    let mut v = serde_json::json!({
        "node": {
            "runtime": "crio",
            "runtimeConfig": "/etc/crio/crio.conf.d",
            "restart": "signal:/run/crio/crio.pid:HUP"
        }
    });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    serde_json::from_value(v).unwrap()
}

fn installer(ds: &DaemonSet) -> &Container {
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    pod.containers.iter().find(|c| c.name == CONTAINER).unwrap()
}

fn env(ds: &DaemonSet, name: &str) -> Option<String> {
    let e = installer(ds).env.as_ref().unwrap();
    let found: Vec<_> = e.iter().filter(|e| e.name == name).collect();
    assert!(found.len() <= 1, "{name} once");
    found.first().map(|e| e.value.clone().unwrap())
}

#[test]
fn the_daemonset_is_the_manifest_with_the_spec_written_in() {
    let s = spec(serde_json::json!({
        "image": "registry.example/isola-deploy:1.2",
        "nodeSelector": {"isola.io/install": "true"},
        "runtimeClasses": [
            {"name": "isola"},
            {"name": "isola-clh", "hypervisor": "cloud-hypervisor"}
        ]
    }));
    let ds = daemonset(&s, "isola-system", Some(owner()), Mode::Install).unwrap();
    assert_eq!(ds.metadata.name.as_deref(), Some("isola-deploy"));
    assert_eq!(ds.metadata.namespace.as_deref(), Some("isola-system"));
    assert_eq!(
        ds.metadata.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
        "isola-operator"
    );
    assert_eq!(ds.metadata.owner_references, Some(vec![owner()]));
    let c = installer(&ds);
    assert_eq!(
        c.image.as_deref(),
        Some("registry.example/isola-deploy:1.2")
    );
    assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
    assert_eq!(c.security_context.as_ref().unwrap().privileged, Some(true));
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(
        pod.node_selector.as_ref().unwrap()["isola.io/install"],
        "true"
    );
    assert_eq!(env(&ds, "ISOLA_DEPLOY_RUNTIME").as_deref(), Some("crio"));
    assert_eq!(
        env(&ds, "ISOLA_DEPLOY_RUNTIME_CONFIG").as_deref(),
        Some("/etc/crio/crio.conf.d")
    );
    assert_eq!(
        env(&ds, "ISOLA_DEPLOY_RESTART").as_deref(),
        Some("signal:/run/crio/crio.pid:HUP")
    );
    assert_eq!(env(&ds, "ISOLA_DEPLOY_RUNTIME_SOCKET"), None);
    assert_eq!(
        env(&ds, "ISOLA_DEPLOY_PREFIX").as_deref(),
        Some("/opt/isola")
    );
    assert_eq!(
        env(&ds, "ISOLA_DEPLOY_HANDLERS").as_deref(),
        Some("isola,isola-clh:cloud-hypervisor")
    );
    assert_eq!(env(&ds, "ISOLA_DEPLOY_MODE").as_deref(), Some("install"));
    assert_eq!(
        env(&ds, "ISOLA_DEPLOY_UNINSTALL_ON_TERM").as_deref(),
        Some("never")
    );
    assert_eq!(mode_of(&ds), Some(Mode::Install));
    // The node name still comes from the pod's own spec.
    let node = c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.name == "ISOLA_DEPLOY_NODE_NAME")
        .unwrap();
    assert!(node.value_from.is_some());
}

#[test]
fn cleanup_mode_socket_prefix_and_pull_policy_are_written() {
    let mut s = spec(serde_json::json!({"imagePullPolicy": "Always"}));
    s.node.runtime_socket = Some("/run/crio/crio.sock".into());
    s.node.prefix = Some("/var/lib/isola".into());
    let ds = daemonset(&s, "kube-system", None, Mode::Cleanup).unwrap();
    assert_eq!(env(&ds, "ISOLA_DEPLOY_MODE").as_deref(), Some("cleanup"));
    assert_eq!(mode_of(&ds), Some(Mode::Cleanup));
    assert_eq!(ds.metadata.owner_references, None);
    assert_eq!(
        env(&ds, "ISOLA_DEPLOY_RUNTIME_SOCKET").as_deref(),
        Some("/run/crio/crio.sock")
    );
    assert_eq!(
        env(&ds, "ISOLA_DEPLOY_PREFIX").as_deref(),
        Some("/var/lib/isola")
    );
    assert_eq!(installer(&ds).image_pull_policy.as_deref(), Some("Always"));
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.node_selector, None, "empty: every node");
}

#[test]
fn vm_templates_are_passed_to_the_installer_only_when_set() {
    let ds = daemonset(
        &spec(serde_json::json!({})),
        "kube-system",
        None,
        Mode::Install,
    )
    .unwrap();
    assert_eq!(
        env(&ds, "ISOLA_DEPLOY_VM_TEMPLATES"),
        None,
        "the payload's default"
    );
    let off = spec(serde_json::json!({"vmTemplates": false}));
    let ds = daemonset(&off, "kube-system", None, Mode::Install).unwrap();
    assert_eq!(
        env(&ds, "ISOLA_DEPLOY_VM_TEMPLATES").as_deref(),
        Some("false")
    );
}

#[test]
fn capabilities_replace_privileged() {
    let s = spec(serde_json::json!({"installer": {"capabilities": ["SYS_ADMIN", "KILL"]}}));
    let ds = daemonset(&s, "kube-system", Some(owner()), Mode::Install).unwrap();
    let sc = installer(&ds).security_context.clone().unwrap();
    assert_eq!(sc.privileged, Some(false));
    let caps = sc.capabilities.unwrap();
    assert_eq!(caps.add, Some(vec!["SYS_ADMIN".into(), "KILL".into()]));
    assert_eq!(caps.drop, None);
}

#[test]
fn runtime_classes_select_ready_nodes_and_carry_the_overhead() {
    let s = spec(serde_json::json!({"runtimeClasses": [
        {"name": "isola", "overhead": {"memory": "200Mi", "cpu": "250m"}},
        {"name": "isola-clh", "hypervisor": "cloud-hypervisor", "overhead": {"memory": "150Mi"}},
        {"name": "bare"}
    ]}));
    let rcs = runtime_classes(&s, "isola", &owner());
    let v = serde_json::to_value(&rcs).unwrap();
    assert_eq!(
        v[0],
        serde_json::json!({
            "apiVersion": "node.k8s.io/v1",
            "kind": "RuntimeClass",
            "metadata": {
                "name": "isola",
                "labels": {
                    "app.kubernetes.io/managed-by": "isola-operator",
                    "isola.io/config": "isola"
                },
                "ownerReferences": [serde_json::to_value(owner()).unwrap()]
            },
            "handler": "isola",
            "overhead": {"podFixed": {"memory": "200Mi", "cpu": "250m"}},
            "scheduling": {"nodeSelector": {"isola.io/runtime": "ready"}}
        })
    );
    assert_eq!(v[1]["handler"], "isola-clh");
    assert_eq!(
        v[1]["overhead"],
        serde_json::json!({"podFixed": {"memory": "150Mi"}})
    );
    assert!(v[2].get("overhead").is_none());
}

#[test]
fn the_default_runtime_class_is_deploy_runtimeclass_deploy_yaml() {
    let s = spec(serde_json::json!({}));
    let mut built = serde_json::to_value(&runtime_classes(&s, "isola", &owner())[0]).unwrap();
    built["metadata"] = serde_json::json!({"name": "isola"});
    let plain: serde_json::Value =
        serde_yaml::from_str(include_str!("../../../deploy/runtimeclass-deploy.yaml")).unwrap();
    assert_eq!(built, plain);
}

#[test]
fn host_paths_replace_the_whole_root() {
    let s = spec(serde_json::json!({
        "installer": {"hostPaths": ["/tmp", "/proc/"]},
        "node": {
            "runtime": "containerd",
            "runtimeConfig": "/tmp/c/config.toml",
            "restart": "none",
            "hostPid": 42,
            "shimDir": "/tmp/c/bin"
        }
    }));
    let ds = daemonset(&s, "kube-system", None, Mode::Install).unwrap();
    let mounts: Vec<(String, String)> = installer(&ds)
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.clone(), m.mount_path.clone()))
        .collect();
    assert_eq!(
        mounts,
        [
            ("host-0".to_string(), "/host/tmp".to_string()),
            ("host-1".to_string(), "/host/proc".to_string())
        ]
    );
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let sources: Vec<_> = pod
        .volumes
        .iter()
        .flatten()
        .map(|v| v.host_path.as_ref().unwrap().path.clone())
        .collect();
    assert_eq!(sources, ["/tmp", "/proc/"]);
    assert_eq!(env(&ds, "ISOLA_DEPLOY_HOST_PID").as_deref(), Some("42"));
    assert_eq!(
        env(&ds, "ISOLA_DEPLOY_SHIM_DIR").as_deref(),
        Some("/tmp/c/bin")
    );
    // Without: the manifest's / at /host.
    let plain = daemonset(
        &spec(serde_json::json!({})),
        "kube-system",
        None,
        Mode::Install,
    )
    .unwrap();
    let m = installer(&plain).volume_mounts.as_ref().unwrap();
    assert!(m
        .iter()
        .any(|m| m.name == "host" && m.mount_path == "/host"));
    assert_eq!(env(&plain, "ISOLA_DEPLOY_HOST_PID"), None);
}
