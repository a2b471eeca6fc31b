//! deploy/*.yaml against the code: the deploy RuntimeClasses select the label the hook sets,
//! and the service account may do exactly what `node` and `daemonset` ask of the API server.

use serde_yaml::Value;

use super::node::{LABEL, READY};

fn docs(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn one(text: &str) -> Value {
    let mut d = docs(text);
    assert_eq!(d.len(), 1);
    d.remove(0)
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind}");
    found[0]
}

#[test]
fn the_deploy_runtimeclasses_are_the_plain_ones_plus_the_label() {
    for (plain, deploy) in [
        (
            include_str!("../../../deploy/runtimeclass.yaml"),
            include_str!("../../../deploy/runtimeclass-deploy.yaml"),
        ),
        (
            include_str!("../../../deploy/runtimeclass-clh.yaml"),
            include_str!("../../../deploy/runtimeclass-clh-deploy.yaml"),
        ),
    ] {
        let (plain, mut deploy) = (one(plain), one(deploy));
        assert!(
            plain.get("scheduling").is_none(),
            "the plain one runs anywhere"
        );
        let selector = deploy["scheduling"]["nodeSelector"].clone();
        let mut want = serde_yaml::Mapping::new();
        want.insert(LABEL.into(), READY.into());
        assert_eq!(selector, Value::Mapping(want));
        deploy.as_mapping_mut().unwrap().remove("scheduling");
        assert_eq!(deploy, plain, "otherwise the same RuntimeClass");
    }
}

#[test]
fn the_service_account_may_patch_nodes_and_get_its_daemonset_only() {
    let rbac = docs(include_str!("../../../deploy/isola-deploy-rbac.yaml"));
    let ds = docs(include_str!("../../../deploy/isola-deploy.yaml"));
    assert_eq!(
        ds.len(),
        1,
        "the DaemonSet alone: deleting it keeps the RBAC"
    );
    let ds = &ds[0];
    assert_eq!(ds["kind"], "DaemonSet");
    let name = ds["metadata"]["name"].as_str().unwrap();
    let ns = ds["metadata"]["namespace"].as_str().unwrap();
    let pod = &ds["spec"]["template"]["spec"];
    let env = pod["containers"][0]["env"].as_sequence().unwrap();
    let var = |n: &str| env.iter().find(|e| e["name"] == n).unwrap().clone();
    assert_eq!(var("ISOLA_DEPLOY_DAEMONSET")["value"], name);
    assert_eq!(
        var("ISOLA_DEPLOY_NODE_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );

    let sa = of_kind(&rbac, "ServiceAccount");
    assert_eq!(pod["serviceAccountName"], sa["metadata"]["name"]);
    assert_eq!(sa["metadata"]["namespace"], ns);
    let rules = |kind: &str| serde_yaml::to_string(&of_kind(&rbac, kind)["rules"]).unwrap();
    assert_eq!(
        rules("ClusterRole"),
        "- apiGroups:\n  - ''\n  resources:\n  - nodes\n  verbs:\n  - patch\n"
    );
    assert_eq!(
        rules("Role"),
        format!(
            "- apiGroups:\n  - apps\n  resources:\n  - daemonsets\n  resourceNames:\n  - {name}\n  \
             verbs:\n  - get\n"
        )
    );
    assert_eq!(of_kind(&rbac, "Role")["metadata"]["namespace"], ns);
    for binding in ["ClusterRoleBinding", "RoleBinding"] {
        let b = of_kind(&rbac, binding);
        assert_eq!(b["subjects"][0]["name"], sa["metadata"]["name"]);
        assert_eq!(b["subjects"][0]["namespace"], ns);
    }
}
