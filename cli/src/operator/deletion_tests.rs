//! Each step of a deletion against a mock API server: the cleanup mode applied and waited
//! for, then the DaemonSet deleted and the finalizer removed.

use std::time::Duration;

use hyper::StatusCode;
use kube::runtime::controller::Action;
use serde_json::json;

use super::mock_api::*;
use super::FINALIZER;

#[tokio::test]
async fn deletion_runs_the_cleanup_mode_and_waits() {
    let (result, seen) = reconcile_with(config("isola", json!([FINALIZER]), true, spec()), |s| {
        match (s.method.as_str(), s.path.as_str()) {
            ("GET", RCS) => (StatusCode::OK, meta_list(&["isola"], json!({}))),
            ("DELETE", _) => (
                StatusCode::OK,
                json!({"kind": "Status", "status": "Success"}),
            ),
            ("GET", DS) => (
                StatusCode::OK,
                stored_ds(
                    &json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
                "metadata": {"name": "isola-deploy"}, "spec": {"selector": {}, "template": {}}}),
                    2,
                    1,
                ),
            ),
            // Applied, not yet observed by the DaemonSet controller.
            ("PATCH", DS) => (StatusCode::OK, stored_ds(&s.body, 1, 1)),
            ("GET", PODS) => (StatusCode::OK, pods("localhost/isola/isola-deploy:latest")),
            ("GET", NODES) => (
                StatusCode::OK,
                meta_list(&["node-1"], json!({"isola.io/runtime": "ready"})),
            ),
            _ => echo(s),
        }
    })
    .await;
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(10)));
    let lines: Vec<String> = seen.iter().map(Seen::line).collect();
    assert_eq!(
        &lines[..4],
        [
            format!("GET {RCS}"),
            format!("DELETE {RCS}/isola"),
            format!("GET {DS}"),
            format!("PATCH {DS}")
        ]
    );
    let env = seen[3].body["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .clone();
    assert!(env.contains(&json!({"name": "ISOLA_DEPLOY_MODE", "value": "cleanup"})));
    let status = seen
        .iter()
        .find(|s| s.path == format!("{CFG}/status"))
        .unwrap();
    let (_, reason, message) = ready_of(status);
    assert_eq!(reason, "Uninstalling");
    assert!(message.contains("waiting for node-1"), "{message}");
    assert!(!lines.contains(&format!("DELETE {DS}")));
    assert!(
        !lines.contains(&format!("PATCH {CFG}")),
        "the finalizer stays"
    );
}

#[tokio::test]
async fn deletion_ends_with_the_daemonset_and_the_finalizer_once_clean() {
    let (result, seen) = reconcile_with(
        config("isola", json!(["other", FINALIZER]), true, spec()),
        |s| {
            match (s.method.as_str(), s.path.as_str()) {
                ("GET", RCS) => (StatusCode::OK, meta_list(&[], json!({}))),
                ("DELETE", _) => (
                    StatusCode::OK,
                    json!({"kind": "Status", "status": "Success"}),
                ),
                ("GET", DS) => (
                    StatusCode::OK,
                    stored_ds(
                        &json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
                "metadata": {"name": "isola-deploy"}, "spec": {"selector": {}, "template": {}}}),
                        2,
                        1,
                    ),
                ),
                ("PATCH", DS) => (StatusCode::OK, stored_ds(&s.body, 2, 1)),
                ("GET", PODS) => (StatusCode::OK, pods("localhost/isola/isola-deploy:latest")),
                // The cleanup pod is Ready and the label gone.
                ("GET", NODES) => (StatusCode::OK, meta_list(&["node-1"], json!({}))),
                _ => echo(s),
            }
        },
    )
    .await;
    assert_eq!(result.unwrap(), Action::await_change());
    let lines: Vec<String> = seen.iter().map(Seen::line).collect();
    assert_eq!(
        &lines[lines.len() - 2..],
        [format!("DELETE {DS}"), format!("PATCH {CFG}")]
    );
    assert_eq!(
        seen.last().unwrap().body,
        json!({"metadata": {"resourceVersion": "7", "finalizers": ["other"]}})
    );
}

#[tokio::test]
async fn a_daemonset_the_garbage_collector_took_is_made_again_without_owner() {
    // A foreground deletion: the DaemonSet is gone, but the status says node-1 is installed.
    let mut cfg = config("isola", json!([FINALIZER]), true, spec());
    cfg["status"] = json!({"nodes": [{"name": "node-1", "ready": true, "version": "v1"}]});
    let (result, seen) = reconcile_with(cfg, |s| match (s.method.as_str(), s.path.as_str()) {
        ("GET", RCS) => (StatusCode::OK, meta_list(&[], json!({}))),
        ("GET", DS) => not_found(),
        ("PATCH", DS) => (StatusCode::OK, stored_ds(&s.body, 1, 0)),
        ("GET", PODS) => (
            StatusCode::OK,
            json!({"apiVersion": "v1", "kind": "PodList",
                                                 "metadata": {}, "items": []}),
        ),
        ("GET", NODES) => (
            StatusCode::OK,
            meta_list(&["node-1"], json!({"isola.io/runtime": "ready"})),
        ),
        _ => echo(s),
    })
    .await;
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(10)));
    let apply = seen
        .iter()
        .find(|s| s.line() == format!("PATCH {DS}"))
        .expect("applied");
    assert_eq!(apply.body["metadata"].get("ownerReferences"), None);
    assert!(
        !seen.iter().any(|s| s.line() == format!("PATCH {CFG}")),
        "the finalizer stays"
    );
}

#[tokio::test]
async fn nothing_installed_lets_the_config_go_at_once() {
    let (result, seen) =
        reconcile_with(
            config("isola", json!([FINALIZER]), true, spec()),
            |s| match (s.method.as_str(), s.path.as_str()) {
                ("GET", RCS) => (StatusCode::OK, meta_list(&[], json!({}))),
                ("GET", DS) => not_found(),
                ("GET", NODES) => (StatusCode::OK, meta_list(&["node-1"], json!({}))),
                _ => echo(s),
            },
        )
        .await;
    assert_eq!(result.unwrap(), Action::await_change());
    let lines: Vec<String> = seen.iter().map(Seen::line).collect();
    assert_eq!(
        lines,
        [
            format!("GET {RCS}"),
            format!("GET {DS}"),
            format!("GET {NODES}"),
            format!("PATCH {CFG}")
        ]
    );
}

#[tokio::test]
async fn a_config_without_our_finalizer_is_left_to_go() {
    let (result, seen) = reconcile_with(config("isola", json!([]), true, spec()), echo).await;
    assert_eq!(result.unwrap(), Action::await_change());
    assert!(seen.is_empty(), "{seen:?}");
}
