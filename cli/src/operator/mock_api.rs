//! A mock API server for whole reconciles (kube-rs's client over `tower_test::mock`, as
//! deploy/node_tests.rs uses it): every request answered by a route and recorded.

use http_body_util::BodyExt;
use hyper::{Request, Response, StatusCode};
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::Client;
use serde_json::{json, Value};
use tower_test::mock;

use super::super::crd::IsolaConfig;
use super::super::error::Error;
use super::super::requests::Cluster;
use super::reconcile_one;

pub(super) type Handle = mock::Handle<Request<Body>, Response<Body>>;

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub(super) struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Value,
}

impl Seen {
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// Answers every request with `route`'s answer until the client is dropped; returns them all.
pub(super) async fn serve(
    mut h: Handle,
    route: impl Fn(&Seen) -> (StatusCode, Value),
) -> Vec<Seen> {
    let mut seen = Vec::new();
    while let Some((req, send)) = h.next_request().await {
        let (method, uri) = (req.method().to_string(), req.uri().clone());
        let bytes = req.into_body().collect().await.unwrap().to_bytes();
        let s = Seen {
            method,
            path: uri.path().to_string(),
            query: uri.query().unwrap_or("").to_string(),
            body: if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap()
            },
        };
        let (code, answer) = route(&s);
        send.send_response(
            Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .body(Body::from(answer.to_string().into_bytes()))
                .unwrap(),
        );
        seen.push(s);
    }
    seen
}

/// Runs one reconcile of `cfg` against `route`.
pub(super) async fn reconcile_with(
    cfg: Value,
    route: impl Fn(&Seen) -> (StatusCode, Value) + Send + 'static,
) -> (Result<Action, Error>, Vec<Seen>) {
    let (svc, h) = mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(serve(h, route));
    let cluster = Cluster::new(Client::new(svc, "default"), "kube-system".into());
    let cfg: IsolaConfig = serde_json::from_value(cfg).unwrap();
    let result = reconcile_one(&cfg, &cluster).await;
    drop(cluster);
    (result, server.await.unwrap())
}

pub(super) fn config(name: &str, finalizers: Value, deleting: bool, spec: Value) -> Value {
    let mut v = json!({
        "apiVersion": "isola.io/v1alpha1", "kind": "IsolaConfig",
        "metadata": {"name": name, "uid": "cfg-uid", "resourceVersion": "7", "generation": 2,
                     "finalizers": finalizers},
        "spec": spec
    });
    if deleting {
        v["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    }
    v
}

pub(super) fn spec() -> Value {
    json!({"node": {"runtime": "containerd", "runtimeConfig": "/etc/containerd/config.toml",
                    "restart": "systemd:containerd"}})
}

pub(super) fn meta_list(names: &[&str], labels: Value) -> Value {
    let items: Vec<Value> = names
        .iter()
        .map(|n| {
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                        "metadata": {"name": n, "labels": labels}})
        })
        .collect();
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
           "metadata": {}, "items": items})
}

/// The applied DaemonSet as the API server returns it: with a uid and a status.
pub(super) fn stored_ds(applied: &Value, observed: i64, ready: i32) -> Value {
    let mut ds = applied.clone();
    ds["metadata"]["uid"] = json!("ds-uid");
    ds["metadata"]["generation"] = json!(2);
    ds["status"] = json!({"currentNumberScheduled": 1, "desiredNumberScheduled": 1,
                          "numberMisscheduled": 0, "numberReady": ready,
                          "updatedNumberScheduled": 1, "observedGeneration": observed});
    ds
}

pub(super) fn pods(image: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [{
        "metadata": {"name": "isola-deploy-x", "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "isola-deploy", "uid": "ds-uid"}]},
        "spec": {"nodeName": "node-1", "containers": [{"name": "installer", "image": image}]},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}
    }]})
}

/// The object written, as stored; for the IsolaConfig (whose patches are partial), a whole one.
pub(super) fn echo(s: &Seen) -> (StatusCode, Value) {
    if s.path.contains("/isolaconfigs/") {
        let name = s.path.split('/').nth(5).unwrap_or("isola");
        return (StatusCode::OK, config(name, json!([]), false, spec()));
    }
    (StatusCode::OK, s.body.clone())
}

pub(super) fn not_found() -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "not found",
               "reason": "NotFound", "code": 404}),
    )
}

pub(super) fn ready_of(status_patch: &Seen) -> (String, String, String) {
    let c = status_patch.body["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    let s = |k: &str| c[k].as_str().unwrap().to_string();
    (s("status"), s("reason"), s("message"))
}

pub(super) const DS: &str = "/apis/apps/v1/namespaces/kube-system/daemonsets/isola-deploy";
pub(super) const RCS: &str = "/apis/node.k8s.io/v1/runtimeclasses";
pub(super) const PODS: &str = "/api/v1/namespaces/kube-system/pods";
pub(super) const NODES: &str = "/api/v1/nodes";
pub(super) const CFG: &str = "/apis/isola.io/v1alpha1/isolaconfigs/isola";
pub(super) const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";
