//! Whole reconciles against a mock API server: the requests sent, in order, for an install, a
//! new IsolaConfig, an invalid spec and a second IsolaConfig.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::StatusCode;
use kube::runtime::controller::Action;
use serde_json::{json, Value};

use super::mock_api::*;
use super::FINALIZER;

#[tokio::test]
async fn an_install_applies_prunes_and_reports_ready() {
    let applied = Arc::new(Mutex::new(Value::Null));
    let keep = applied.clone();
    let (result, seen) = reconcile_with(
        config("isola", json!([FINALIZER]), false, spec()),
        move |s| match (s.method.as_str(), s.path.as_str()) {
            ("PATCH", DS) => {
                *keep.lock().unwrap() = s.body.clone();
                (StatusCode::OK, stored_ds(&s.body, 2, 1))
            }
            ("PATCH", p) if p.starts_with(RCS) => (StatusCode::OK, s.body.clone()),
            ("GET", RCS) => (
                StatusCode::OK,
                meta_list(&["isola", "isola-old"], json!({"isola.io/config": "isola"})),
            ),
            ("DELETE", _) => (
                StatusCode::OK,
                json!({"kind": "Status", "status": "Success"}),
            ),
            ("GET", PODS) => (StatusCode::OK, pods("localhost/isola/isola-deploy:latest")),
            ("GET", NODES) => (
                StatusCode::OK,
                meta_list(&["node-1"], json!({"isola.io/runtime": "ready"})),
            ),
            _ => echo(s),
        },
    )
    .await;
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(60)));
    let lines: Vec<String> = seen.iter().map(Seen::line).collect();
    assert_eq!(
        lines,
        [
            format!("PATCH {DS}"),
            format!("PATCH {RCS}/isola"),
            format!("GET {RCS}"),
            format!("DELETE {RCS}/isola-old"),
            format!("GET {PODS}"),
            format!("GET {NODES}"),
            format!("PATCH {CFG}/status"),
            format!("POST {EVENTS}"),
        ]
    );
    assert!(
        seen[0].query.contains("fieldManager=isola-operator")
            && seen[0].query.contains("force=true")
    );
    assert!(
        seen[2]
            .query
            .contains("labelSelector=isola.io%2Fconfig%3Disola"),
        "{}",
        seen[2].query
    );
    let ds = applied.lock().unwrap().clone();
    assert_eq!(ds["metadata"]["ownerReferences"][0]["uid"], "cfg-uid");
    assert_eq!(
        ds["metadata"]["ownerReferences"][0]["blockOwnerDeletion"],
        true
    );
    let (status, reason, _) = ready_of(&seen[6]);
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Installed"));
    assert_eq!(seen[6].body["status"]["runtimeClasses"], json!(["isola"]));
    assert_eq!(seen[6].body["status"]["nodes"][0]["ready"], true);
    assert_eq!(seen[7].body["reason"], "Installed");
}

#[tokio::test]
async fn a_new_config_gets_the_finalizer_first_guarded_by_its_version() {
    let (_, seen) = reconcile_with(config("isola", json!([]), false, spec()), |s| {
        match (s.method.as_str(), s.path.as_str()) {
            ("PATCH", CFG) => (
                StatusCode::CONFLICT,
                json!({"kind": "Status", "code": 409,
                "status": "Failure", "reason": "Conflict", "message": "changed"}),
            ),
            _ => echo(s),
        }
    })
    .await;
    assert_eq!(
        seen.len(),
        1,
        "nothing applied after a failed finalizer patch"
    );
    assert_eq!(
        seen[0].body,
        json!({"metadata": {"resourceVersion": "7", "finalizers": [FINALIZER]}})
    );
}

#[tokio::test]
async fn an_invalid_spec_applies_nothing_and_says_why() {
    let mut bad = spec();
    bad["node"]["runtime"] = json!("docker");
    let (result, seen) = reconcile_with(
        config("isola", json!([FINALIZER]), false, bad),
        |s| match (s.method.as_str(), s.path.as_str()) {
            ("GET", DS) => not_found(),
            ("GET", NODES) => (StatusCode::OK, meta_list(&[], json!({}))),
            _ => echo(s),
        },
    )
    .await;
    result.unwrap();
    let lines: Vec<String> = seen.iter().map(Seen::line).collect();
    assert_eq!(
        lines,
        [
            format!("GET {DS}"),
            format!("GET {NODES}"),
            format!("PATCH {CFG}/status"),
            format!("POST {EVENTS}")
        ]
    );
    let (status, reason, message) = ready_of(&seen[2]);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "InvalidSpec"));
    assert!(message.contains("docker"), "{message}");
}

#[tokio::test]
async fn another_config_is_only_told_it_is_ignored() {
    let (result, seen) = reconcile_with(config("second", json!([]), false, spec()), echo).await;
    assert_eq!(result.unwrap(), Action::await_change());
    assert_eq!(
        seen[0].line(),
        "PATCH /apis/isola.io/v1alpha1/isolaconfigs/second/status"
    );
    assert_eq!(ready_of(&seen[0]).1, "IgnoredName");
    assert!(seen
        .iter()
        .all(|s| s.method != "PATCH" || s.path.ends_with("/status")));
}
