//! Each node's state from hand-built API objects.

use serde_json::json;

use super::*;

const IMAGE: &str = "localhost/isola/isola-deploy:2";

fn ds() -> DaemonSet {
    serde_json::from_value(json!({
        "metadata": {"name": "isola-deploy", "namespace": "kube-system", "uid": "ds-uid",
                     "generation": 3},
        "spec": {"selector": {}, "template": {}},
        "status": {"currentNumberScheduled": 3, "desiredNumberScheduled": 3,
                   "numberMisscheduled": 0, "numberReady": 2, "updatedNumberScheduled": 2,
                   "observedGeneration": 3}
    }))
    .unwrap()
}

fn node(name: &str, labelled: bool) -> Node {
    let labels = if labelled {
        json!({"isola.io/runtime": "ready", "zone": "a"})
    } else {
        json!({"zone": "a"})
    };
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels,
                     "annotations": {"isola.io/version": format!("v-{name}")}}
    }))
    .unwrap()
}

fn pod(node: &str, image: &str, ready: bool, container: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": format!("isola-deploy-{node}"),
                     "creationTimestamp": "2026-01-01T00:00:00Z",
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet",
                                          "name": "isola-deploy", "uid": "ds-uid"}]},
        "spec": {"nodeName": node, "containers": [{"name": "installer", "image": image}]},
        "status": {
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
            "containerStatuses": [container]
        }
    }))
    .unwrap()
}

fn running() -> serde_json::Value {
    json!({"name": "installer", "image": IMAGE, "imageID": "", "ready": true,
           "restartCount": 0, "state": {"running": {}}})
}

#[test]
fn ready_needs_the_image_readiness_and_the_label() {
    let pods = [
        pod("a", IMAGE, true, running()),
        pod("b", "localhost/isola/isola-deploy:1", true, running()),
        pod("c", IMAGE, true, running()),
        pod("d", IMAGE, false, running()),
    ];
    let nodes = [
        node("a", true),
        node("b", true),
        node("c", false),
        node("d", true),
    ];
    let d = ds();
    let got = super::nodes(
        IMAGE,
        Mode::Install,
        &BTreeMap::new(),
        Some(&d),
        &pods,
        &nodes,
    );
    let ready: Vec<(&str, bool)> = got.iter().map(|n| (n.name.as_str(), n.ready)).collect();
    assert_eq!(
        ready,
        [("a", true), ("b", false), ("c", false), ("d", false)]
    );
    assert_eq!(got[0].version.as_deref(), Some("v-a"));
    assert_eq!(
        got[1].image.as_deref(),
        Some("localhost/isola/isola-deploy:1")
    );
    assert!(got.iter().all(|n| n.last_error.is_none()), "{got:?}");
}

#[test]
fn after_a_cleanup_the_label_must_be_gone() {
    let pods = [
        pod("a", IMAGE, true, running()),
        pod("b", IMAGE, true, running()),
    ];
    let nodes = [node("a", false), node("b", true)];
    let d = ds();
    let got = super::nodes(
        IMAGE,
        Mode::Cleanup,
        &BTreeMap::new(),
        Some(&d),
        &pods,
        &nodes,
    );
    assert_eq!((got[0].ready, got[1].ready), (true, false));
}

#[test]
fn a_crash_loop_reports_the_last_runs_exit_and_message() {
    let crashing = json!({
        "name": "installer", "image": IMAGE, "imageID": "", "ready": false, "restartCount": 4,
        "state": {"waiting": {"reason": "CrashLoopBackOff",
                              "message": "back-off 40s restarting failed container"}},
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                                     "message": "isola: `isola check --no-boot` failed\n"}}
    });
    let pods = [pod("a", IMAGE, false, crashing)];
    let d = ds();
    let got = super::nodes(
        IMAGE,
        Mode::Install,
        &BTreeMap::new(),
        Some(&d),
        &pods,
        &[node("a", true)],
    );
    assert_eq!(
        got[0].last_error.as_deref(),
        Some(
            "CrashLoopBackOff: back-off 40s restarting failed container; the last run exited 1 \
             (Error): isola: `isola check --no-boot` failed"
        )
    );
    assert!(!got[0].ready);
}

#[test]
fn a_terminated_installer_and_an_image_pull_are_errors_a_first_start_is_not() {
    let d = ds();
    let nodes = [node("a", true)];
    let one = |c: serde_json::Value| {
        let pods = [pod("a", IMAGE, false, c)];
        super::nodes(
            IMAGE,
            Mode::Install,
            &BTreeMap::new(),
            Some(&d),
            &pods,
            &nodes,
        )[0]
        .last_error
        .clone()
    };
    let base = |state: serde_json::Value| {
        json!({"name": "installer", "image": IMAGE, "imageID": "", "ready": false,
               "restartCount": 0, "state": state})
    };
    assert_eq!(
        one(base(
            json!({"terminated": {"exitCode": 2, "message": "no kvm"}})
        ))
        .as_deref(),
        Some("the installer exited 2: no kvm")
    );
    assert_eq!(
        one(base(
            json!({"waiting": {"reason": "ErrImagePull", "message": "not found"}})
        ))
        .as_deref(),
        Some("ErrImagePull: not found")
    );
    assert_eq!(
        one(base(json!({"waiting": {"reason": "ContainerCreating"}}))),
        None
    );
}

#[test]
fn selected_nodes_without_a_pod_are_listed_others_are_not() {
    let selector = BTreeMap::from([("zone".to_string(), "a".to_string())]);
    let mut other: Node = node("x", false);
    other.metadata.labels = None;
    let d = ds();
    let got = super::nodes(
        IMAGE,
        Mode::Install,
        &selector,
        Some(&d),
        &[],
        &[node("a", false), other],
    );
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].name.as_str(), got[0].ready, got[0].image.as_deref()),
        ("a", false, None)
    );
}

#[test]
fn pods_of_another_owner_and_terminating_pods_do_not_count() {
    let mut stranger = pod("a", IMAGE, true, running());
    stranger.metadata.owner_references.as_mut().unwrap()[0].uid = "other".into();
    let d = ds();
    let got = super::nodes(
        IMAGE,
        Mode::Install,
        &BTreeMap::new(),
        Some(&d),
        &[stranger],
        &[node("a", true)],
    );
    assert_eq!(got[0].image, None);

    let mut old = pod("a", "old", true, running());
    old.metadata.deletion_timestamp =
        serde_json::from_value(json!("2026-01-02T00:00:00Z")).unwrap();
    old.metadata.creation_timestamp =
        serde_json::from_value(json!("2026-01-03T00:00:00Z")).unwrap();
    let new = pod("a", IMAGE, true, running());
    let got = super::nodes(
        IMAGE,
        Mode::Install,
        &BTreeMap::new(),
        Some(&d),
        &[old, new],
        &[node("a", true)],
    );
    assert_eq!(got[0].image.as_deref(), Some(IMAGE));
    assert!(got[0].ready);
}

#[test]
fn the_rollout_is_complete_only_when_counted_for_the_current_generation() {
    let mut d = ds();
    assert!(!Rollout::of(&d).complete(), "2 of 3 ready");
    let s = d.status.as_mut().unwrap();
    s.number_ready = 3;
    s.updated_number_scheduled = Some(3);
    assert!(Rollout::of(&d).complete());
    d.metadata.generation = Some(4);
    assert!(!Rollout::of(&d).complete(), "not observed yet");
    d.status = None;
    assert!(!Rollout::of(&d).complete(), "no status yet");
}
