//! deploy/isola-operator*.yaml and deploy/isolaconfig-example.yaml against the code: the CRD
//! file is the generated one, the operator's RBAC is exactly what the controller asks of the
//! API server, and the DaemonSet it builds keeps what the plain manifest's install relies on.

use std::collections::BTreeSet;

use serde_yaml::Value;

use super::crd::{self, IsolaConfig};
use super::desired::{self, Mode};
use super::validate;

const OPERATOR: &str = include_str!("../../../deploy/isola-operator.yaml");

fn docs(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind}");
    found[0]
}

/// (apiGroup, resource, verb) of every rule.
fn grants(role: &Value) -> BTreeSet<(String, String, String)> {
    let s = |v: &Value| v.as_str().unwrap().to_string();
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_sequence().unwrap() {
        assert!(rule.get("resourceNames").is_none());
        for g in rule["apiGroups"].as_sequence().unwrap() {
            for r in rule["resources"].as_sequence().unwrap() {
                for v in rule["verbs"].as_sequence().unwrap() {
                    assert!(out.insert((s(g), s(r), s(v))), "{g:?} {r:?} {v:?} twice");
                }
            }
        }
    }
    out
}

fn set(of: &[(&str, &str, &[&str])]) -> BTreeSet<(String, String, String)> {
    of.iter()
        .flat_map(|(g, r, vs)| {
            vs.iter()
                .map(move |v| (g.to_string(), r.to_string(), v.to_string()))
        })
        .collect()
}

#[test]
fn the_crd_file_is_the_generated_one() {
    let generated = crd::crd_yaml().unwrap();
    assert!(
        generated == include_str!("../../../deploy/isola-operator-crd.yaml"),
        "deploy/isola-operator-crd.yaml is stale: regenerate it with \
         `cargo run -p isola -- operator crd > deploy/isola-operator-crd.yaml`"
    );
}

#[test]
fn the_operators_rbac_is_what_the_controller_calls() {
    let d = docs(OPERATOR);
    let cluster = set(&[
        // Controller::new's watch, the startup list, the finalizer patch (update: kubectl
        // edit-style tools and the API's own finalizer handling).
        (
            "isola.io",
            "isolaconfigs",
            &["get", "list", "watch", "patch", "update"],
        ),
        ("isola.io", "isolaconfigs/status", &["patch", "update"]),
        // blockOwnerDeletion on the owned objects.
        ("isola.io", "isolaconfigs/finalizers", &["update"]),
        // owns() watch, apply (create or patch), the prune's list and delete.
        (
            "node.k8s.io",
            "runtimeclasses",
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        // list_metadata of the nodes for status.nodes.
        ("", "nodes", &["get", "list", "watch"]),
        // The Recorder's events for the IsolaConfig.
        ("events.k8s.io", "events", &["create", "patch"]),
    ]);
    assert_eq!(grants(of_kind(&d, "ClusterRole")), cluster);
    let namespaced = set(&[
        // owns() watch, get_opt, apply, delete at the end of the uninstall.
        (
            "apps",
            "daemonsets",
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        // The installer pods' state for status.nodes.
        ("", "pods", &["get", "list", "watch"]),
    ]);
    assert_eq!(grants(of_kind(&d, "Role")), namespaced);

    let sa = of_kind(&d, "ServiceAccount");
    let ns = sa["metadata"]["namespace"].clone();
    assert_eq!(ns, "kube-system", "the operator's default namespace");
    assert_eq!(of_kind(&d, "Role")["metadata"]["namespace"], ns);
    for binding in ["ClusterRoleBinding", "RoleBinding"] {
        let b = of_kind(&d, binding);
        assert_eq!(b["subjects"][0]["name"], sa["metadata"]["name"]);
        assert_eq!(b["subjects"][0]["namespace"], ns);
        assert_eq!(b["roleRef"]["name"], "isola-operator");
    }
    let dep = of_kind(&d, "Deployment");
    assert_eq!(dep["spec"]["replicas"], 1, "no leader election");
    assert_eq!(dep["spec"]["strategy"]["type"], "Recreate");
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], sa["metadata"]["name"]);
    let c = &pod["containers"][0];
    let cmd: Vec<&str> = c["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(&cmd[..3], ["/payload/bin/isola", "operator", "run"]);
    assert_eq!(c["image"], crd::DEFAULT_IMAGE);
}

#[test]
fn the_operators_daemonset_keeps_what_the_install_relies_on() {
    let example: IsolaConfig =
        serde_yaml::from_str(include_str!("../../../deploy/isolaconfig-example.yaml")).unwrap();
    let owner = k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        api_version: "isola.io/v1alpha1".into(),
        kind: "IsolaConfig".into(),
        name: "isola".into(),
        uid: "u".into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let ds = desired::daemonset(&example.spec, "kube-system", Some(owner), Mode::Install).unwrap();
    let v: Value = serde_yaml::to_value(&ds).unwrap();
    let pod = &v["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    let rbac = docs(include_str!("../../../deploy/isola-deploy-rbac.yaml"));
    assert_eq!(
        pod["serviceAccountName"],
        of_kind(&rbac, "ServiceAccount")["metadata"]["name"]
    );
    let c = &pod["containers"][0];
    assert_eq!(c["name"], desired::CONTAINER);
    assert_eq!(c["terminationMessagePolicy"], "FallbackToLogsOnError");
    assert_eq!(
        c["readinessProbe"]["exec"]["command"][1],
        "/tmp/isola-deploy.ready"
    );
    assert_eq!(c["volumeMounts"][0]["mountPath"], "/host");
    assert_eq!(pod["volumes"][0]["hostPath"]["path"], "/");
    let strategy = &v["spec"]["updateStrategy"];
    assert_eq!(strategy["rollingUpdate"]["maxUnavailable"], 1);
    assert_eq!(strategy["rollingUpdate"]["maxSurge"], 0);
    assert_eq!(
        v["spec"]["selector"]["matchLabels"][desired::POD_LABEL.0],
        desired::POD_LABEL.1
    );
    let env = c["env"].as_sequence().unwrap();
    let var = |n: &str| env.iter().find(|e| e["name"] == n).unwrap()["value"].clone();
    assert_eq!(var("ISOLA_DEPLOY_DAEMONSET"), desired::DAEMONSET);
}

#[test]
fn the_example_is_the_singleton_and_valid() {
    let example: IsolaConfig =
        serde_yaml::from_str(include_str!("../../../deploy/isolaconfig-example.yaml")).unwrap();
    assert_eq!(example.metadata.name.as_deref(), Some(crd::NAME));
    assert_eq!(validate::problems(&example.spec), Vec::<String>::new());
    assert_eq!(example.spec.node.restart, "systemd:containerd");
}
