//! The node label and the DaemonSet question against a mock API server (kube-rs's client over
//! `tower_test::mock`): the exact requests sent, and API errors as messages saying what to do.

use std::time::Duration;

use http_body_util::BodyExt;
use hyper::{Request, Response, StatusCode};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};
use tower_test::mock;

use super::daemonset::{self, Answer};
use super::node::KubeHook;
use super::register::Runtime;
use super::{Installed, NodeHook};

type Handle = mock::Handle<Request<Body>, Response<Body>>;

fn client() -> (Client, Handle) {
    let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(svc, "kube-system"), handle)
}

fn hook() -> (KubeHook, Handle) {
    let (c, h) = client();
    let mut hook = KubeHook::new(c, "node-1");
    hook.retry_delay = Duration::from_millis(1);
    (hook, h)
}

/// One request as the server saw it: method, path with query, content type, accept, body.
#[derive(Debug)]
struct Seen {
    method: String,
    uri: String,
    content_type: String,
    accept: String,
    body: Value,
}

/// Answers the next request with `status` and `answer`, returning what was asked.
async fn answer(h: &mut Handle, status: StatusCode, answer: Value) -> Seen {
    let (req, send) = h.next_request().await.expect("a request");
    let seen = Seen {
        method: req.method().to_string(),
        uri: req.uri().to_string(),
        content_type: header(&req, "content-type"),
        accept: header(&req, "accept"),
        body: Value::Null,
    };
    let bytes = req.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    send.send_response(
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(answer.to_string().into_bytes()))
            .unwrap(),
    );
    Seen { body, ..seen }
}

fn header(req: &Request<Body>, name: &str) -> String {
    req.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

fn node_meta() -> Value {
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
           "metadata": {"name": "node-1"}})
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
           "reason": reason, "code": code})
}

fn installed() -> Installed {
    Installed {
        version: "0.1.0-abc123".into(),
        handlers: vec!["isola".into(), "isola-clh:cloud-hypervisor".into()],
        runtime: Runtime::Containerd,
        registered_now: true,
    }
}

// kube-rs starts the query with `?&` (the empty pair is ignored by the API server).
const NODE_PATH: &str = "/api/v1/nodes/node-1?&fieldManager=isola-deploy";

// The hook is synchronous (the installer is) and blocks in place: a multi-threaded runtime, as
// the CLI's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_and_unready_send_merge_patches_of_metadata() {
    let (hook, mut h) = hook();
    let server = tokio::spawn(async move {
        let ready = answer(&mut h, StatusCode::OK, node_meta()).await;
        let unready = answer(&mut h, StatusCode::OK, node_meta()).await;
        (ready, unready)
    });
    hook.ready(&installed()).unwrap();
    hook.unready().unwrap();
    let (ready, unready) = server.await.unwrap();

    for s in [&ready, &unready] {
        assert_eq!(s.method, "PATCH");
        assert_eq!(s.uri, NODE_PATH);
        assert_eq!(s.content_type, "application/merge-patch+json");
        assert!(
            s.accept.contains("as=PartialObjectMetadata"),
            "metadata only in the answer: {}",
            s.accept
        );
    }
    assert_eq!(
        ready.body,
        json!({"metadata": {
            "labels": {"isola.io/runtime": "ready"},
            "annotations": {"isola.io/version": "0.1.0-abc123",
                            "isola.io/handlers": "isola,isola-clh"}}})
    );
    assert_eq!(
        unready.body,
        json!({"metadata": {
            "labels": {"isola.io/runtime": null},
            "annotations": {"isola.io/version": null, "isola.io/handlers": null}}})
    );
}

#[tokio::test]
async fn preflight_is_a_dry_run_of_the_label() {
    let (hook, mut h) = hook();
    let server = tokio::spawn(async move { answer(&mut h, StatusCode::OK, node_meta()).await });
    hook.preflight().await.unwrap();
    let s = server.await.unwrap();
    assert_eq!(s.method, "PATCH");
    assert_eq!(
        s.uri,
        "/api/v1/nodes/node-1?&dryRun=All&fieldManager=isola-deploy"
    );
    assert_eq!(s.body["metadata"]["labels"]["isola.io/runtime"], "ready");
}

async fn label_error(code: u16, reason: &str, message: &str) -> String {
    let (hook, mut h) = hook();
    let st = StatusCode::from_u16(code).unwrap();
    let body = status(code, reason, message);
    let server = tokio::spawn(async move { answer(&mut h, st, body).await });
    let e = hook.label(&installed()).await.unwrap_err();
    server.await.unwrap();
    format!("{e:#}")
}

#[tokio::test]
async fn a_missing_node_says_which_name_to_give() {
    let e = label_error(404, "NotFound", "nodes \"node-1\" not found").await;
    assert!(e.contains("no node `node-1`"), "{e}");
    assert!(e.contains("--node-name (ISOLA_DEPLOY_NODE_NAME)"), "{e}");
}

#[tokio::test]
async fn forbidden_says_which_permission_is_missing() {
    let msg = "nodes \"node-1\" is forbidden: User \"system:serviceaccount:kube-system:isola-deploy\" cannot patch resource \"nodes\"";
    let e = label_error(403, "Forbidden", msg).await;
    assert!(
        e.contains("the service account needs `patch` on `nodes`"),
        "{e}"
    );
    assert!(
        e.contains("cannot patch resource"),
        "the server's words: {e}"
    );
}

#[tokio::test]
async fn an_overloaded_server_is_tried_again_then_given_up() {
    let (once, mut h) = hook();
    let server = tokio::spawn(async move {
        let busy = status(503, "ServiceUnavailable", "etcd leader changed");
        answer(&mut h, StatusCode::SERVICE_UNAVAILABLE, busy).await;
        answer(&mut h, StatusCode::OK, node_meta()).await
    });
    once.unlabel().await.unwrap();
    assert_eq!(
        server.await.unwrap().body["metadata"]["labels"],
        json!({"isola.io/runtime": null})
    );

    let (again, mut h) = hook();
    let server = tokio::spawn(async move {
        let mut n = 0;
        while let Some((_, send)) = h.next_request().await {
            n += 1;
            let busy = status(503, "ServiceUnavailable", "etcd leader changed");
            send.send_response(
                Response::builder()
                    .status(503)
                    .body(Body::from(busy.to_string().into_bytes()))
                    .unwrap(),
            );
        }
        n
    });
    let e = format!("{:#}", again.unlabel().await.unwrap_err());
    drop(again);
    assert_eq!(server.await.unwrap(), super::kube_api::ATTEMPTS);
    assert!(
        e.contains("503") && e.contains("etcd leader changed"),
        "{e}"
    );
}

async fn ask(code: StatusCode, body: Value) -> (anyhow::Result<Answer>, Seen) {
    let (c, mut h) = client();
    let server = tokio::spawn(async move { answer(&mut h, code, body).await });
    let a = daemonset::ask(c, None, "isola-deploy", Duration::from_millis(1)).await;
    (a, server.await.unwrap())
}

fn ds_meta(deleting: bool) -> Value {
    let mut m = json!({"name": "isola-deploy", "namespace": "kube-system"});
    if deleting {
        m["deletionTimestamp"] = json!("2026-01-02T03:04:05Z");
        m["finalizers"] = json!(["foregroundDeletion"]);
    }
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": m})
}

#[tokio::test]
async fn should_uninstall_only_when_the_daemonset_is_gone_or_deleting() {
    let (a, seen) = ask(StatusCode::OK, ds_meta(false)).await;
    assert_eq!(a.unwrap(), Answer::Exists);
    assert_eq!(seen.method, "GET");
    assert_eq!(
        seen.uri,
        "/apis/apps/v1/namespaces/kube-system/daemonsets/isola-deploy"
    );
    assert!(seen.accept.contains("as=PartialObjectMetadata"));

    let (a, _) = ask(StatusCode::OK, ds_meta(true)).await;
    let a = a.unwrap();
    assert_eq!(a, Answer::Deleting("2026-01-02T03:04:05+00:00".into()));
    assert!(a.uninstall());

    let gone = status(
        404,
        "NotFound",
        "daemonsets.apps \"isola-deploy\" not found",
    );
    let (a, _) = ask(StatusCode::NOT_FOUND, gone).await;
    let a = a.unwrap();
    assert_eq!(a, Answer::Gone);
    assert!(a.uninstall());
    assert!(!Answer::Exists.uninstall());
}

#[tokio::test]
async fn should_uninstall_errors_name_the_missing_permission() {
    let denied = status(403, "Forbidden", "cannot get resource \"daemonsets\"");
    let (a, _) = ask(StatusCode::FORBIDDEN, denied).await;
    let e = format!("{:#}", a.unwrap_err());
    assert!(
        e.contains("needs `get` on `daemonsets` (apps)") && e.contains("kube-system/isola-deploy"),
        "{e}"
    );
}
