//! `isola deploy` and the API server, end to end: the real binary with `--node-name` and a
//! kubeconfig pointing at a fake API server (plain HTTP on 127.0.0.1) that records what it is
//! sent: the dry run before anything is installed, the label once ready, its removal before
//! the runtime's configuration is restored, and `should-uninstall`'s exit status.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

/// One request: method, path and query, body; and `note`, what the responder saw then.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    uri: String,
    body: String,
    note: String,
}

type Responder = dyn Fn(&str, &str) -> (u16, String, String) + Send + Sync;

/// A fake API server: each request is answered by `respond(method, uri)` -> (status, body,
/// note). Returns its address and what it has seen.
fn api_server(respond: Box<Responder>) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let mut parts = line.split_whitespace();
            let (method, uri) = (
                parts.next().unwrap_or("").to_string(),
                parts.next().unwrap_or("").to_string(),
            );
            let mut len = 0;
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            let (status, answer, note) = respond(&method, &uri);
            log.lock().unwrap().push(Seen {
                method,
                uri,
                body: String::from_utf8(body).unwrap(),
                note,
            });
            let _ = write!(
                conn,
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    (addr, seen)
}

fn kubeconfig(dir: &Path, server: &str) -> String {
    let p = dir.join("kubeconfig");
    fs::write(
        &p,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n\
             users:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: x\n  context:\n    \
             cluster: c\n    user: u\n    namespace: kube-system\ncurrent-context: x\n"
        ),
    )
    .unwrap();
    p.to_str().unwrap().to_string()
}

fn meta(name: &str, extra: &str) -> String {
    format!(
        r#"{{"apiVersion":"meta.k8s.io/v1","kind":"PartialObjectMetadata","metadata":{{"name":"{name}"{extra}}}}}"#
    )
}

fn status(code: u16, reason: &str, message: &str) -> String {
    format!(
        r#"{{"kind":"Status","apiVersion":"v1","status":"Failure","message":"{message}","reason":"{reason}","code":{code}}}"#
    )
}

fn isola(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_isola"))
        .args(args)
        .env_remove("ISOLA_DEPLOY_NODE_NAME")
        .env_remove("ISOLA_DEPLOY_KUBECONFIG")
        .envs(env.iter().copied())
        .output()
        .expect("running isola");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A scratch node (containerd configuration `ORIGINAL`) and a payload with this build's isola.
fn node() -> (tempfile::TempDir, tempfile::TempDir) {
    let host = tempfile::tempdir().unwrap();
    let pl = tempfile::tempdir().unwrap();
    let p = pl.path();
    fs::create_dir_all(p.join("bin")).unwrap();
    fs::create_dir_all(p.join("share/isola")).unwrap();
    fs::copy(env!("CARGO_BIN_EXE_isola"), p.join("bin/isola")).unwrap();
    fs::write(p.join("bin/containerd-shim-isola-v2"), "shim").unwrap();
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/configuration.toml");
    fs::copy(cfg, p.join("share/isola/configuration.toml")).unwrap();
    for f in ["vmlinux", "initrd.img"] {
        fs::write(p.join("share/isola").join(f), f).unwrap();
    }
    fs::create_dir_all(host.path().join("etc/containerd")).unwrap();
    fs::create_dir_all(host.path().join("proc")).unwrap();
    fs::write(host.path().join(CONFIG), ORIGINAL).unwrap();
    (host, pl)
}

const CONFIG: &str = "etc/containerd/config.toml";
const ORIGINAL: &str = "version = 2\n";

fn env<'a>(host: &'a Path, pl: &'a Path, kc: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("ISOLA_DEPLOY_HOST_ROOT", host.to_str().unwrap()),
        ("ISOLA_DEPLOY_RUNTIME", "containerd"),
        ("ISOLA_DEPLOY_RUNTIME_CONFIG", "/etc/containerd/config.toml"),
        ("ISOLA_DEPLOY_PAYLOAD", pl.to_str().unwrap()),
        ("ISOLA_DEPLOY_RESTART", "none"),
        ("ISOLA_DEPLOY_NO_CHECK", "true"),
        ("ISOLA_DEPLOY_NODE_NAME", "node-1"),
        ("ISOLA_DEPLOY_KUBECONFIG", kc),
    ]
}

#[test]
fn install_labels_the_node_once_ready_and_uninstall_unlabels_it_first() {
    let (host, pl) = node();
    let cfg = host.path().join(CONFIG);
    let watched = cfg.clone();
    let (server, seen) = api_server(Box::new(move |_, _| {
        // What the node's containerd configuration is at the moment of each request.
        let now = fs::read_to_string(&watched).unwrap();
        let note = if now == ORIGINAL {
            "original"
        } else {
            "registered"
        };
        (200, meta("node-1", ""), note.to_string())
    }));
    let kc = kubeconfig(host.path(), &server);
    let env = env(host.path(), pl.path(), &kc);

    let (ok, out) = isola(&["deploy", "install"], &env);
    assert!(ok, "{out}");
    assert!(
        out.contains("node node-1: labelled isola.io/runtime=ready"),
        "{out}"
    );
    let s = seen.lock().unwrap().clone();
    assert_eq!(s.len(), 2, "{s:?}");
    assert_eq!(s[0].method, "PATCH");
    assert_eq!(
        s[0].uri,
        "/api/v1/nodes/node-1?&dryRun=All&fieldManager=isola-deploy"
    );
    assert_eq!(
        s[0].note, "original",
        "the dry run comes before anything is installed"
    );
    assert_eq!(s[1].uri, "/api/v1/nodes/node-1?&fieldManager=isola-deploy");
    assert_eq!(s[1].note, "registered", "labelled once registered");
    let body: serde_json::Value = serde_json::from_str(&s[1].body).unwrap();
    assert_eq!(body["metadata"]["labels"]["isola.io/runtime"], "ready");
    let version = fs::read_link(host.path().join("opt/isola/current")).unwrap();
    assert_eq!(
        Path::new("versions").join(
            body["metadata"]["annotations"]["isola.io/version"]
                .as_str()
                .unwrap()
        ),
        version
    );
    assert_eq!(
        body["metadata"]["annotations"]["isola.io/handlers"],
        "isola"
    );

    let (ok, out) = isola(&["deploy", "uninstall"], &env);
    assert!(ok, "{out}");
    assert_eq!(fs::read_to_string(&cfg).unwrap(), ORIGINAL);
    let s = seen.lock().unwrap().clone();
    assert_eq!(s.len(), 3, "no dry run for uninstall: {s:?}");
    assert_eq!(s[2].method, "PATCH");
    assert_eq!(
        s[2].note, "registered",
        "unlabelled before the configuration is restored"
    );
    let body: serde_json::Value = serde_json::from_str(&s[2].body).unwrap();
    assert_eq!(
        body["metadata"]["labels"]["isola.io/runtime"],
        serde_json::Value::Null
    );
    assert!(body["metadata"]["labels"]
        .as_object()
        .unwrap()
        .contains_key("isola.io/runtime"));
}

#[test]
fn a_forbidden_label_stops_install_before_it_touches_the_node() {
    let (host, pl) = node();
    let (server, seen) = api_server(Box::new(|_, _| {
        let msg = "nodes \\\"node-1\\\" is forbidden: cannot patch resource \\\"nodes\\\"";
        (403, status(403, "Forbidden", msg), String::new())
    }));
    let kc = kubeconfig(host.path(), &server);
    let (ok, out) = isola(&["deploy", "install"], &env(host.path(), pl.path(), &kc));
    assert!(!ok, "{out}");
    assert!(
        out.contains("the service account needs `patch` on `nodes`"),
        "{out}"
    );
    assert_eq!(seen.lock().unwrap().len(), 1, "the dry run only");
    assert!(!host.path().join("opt/isola").exists(), "nothing installed");
    assert_eq!(
        fs::read_to_string(host.path().join(CONFIG)).unwrap(),
        ORIGINAL
    );
}

#[test]
fn should_uninstall_answers_with_its_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let ask = |code: u16, answer: String| {
        let (server, seen) =
            api_server(Box::new(move |_, _| (code, answer.clone(), String::new())));
        let kc = kubeconfig(dir.path(), &server);
        let env = [
            ("ISOLA_DEPLOY_DAEMONSET", "isola-deploy"),
            ("ISOLA_DEPLOY_KUBECONFIG", kc.as_str()),
        ];
        let r = isola(&["deploy", "should-uninstall"], &env);
        let s = seen.lock().unwrap().clone();
        assert_eq!(s[0].method, "GET");
        assert_eq!(
            s[0].uri,
            "/apis/apps/v1/namespaces/kube-system/daemonsets/isola-deploy"
        );
        r
    };
    let (yes, out) = ask(404, status(404, "NotFound", "daemonsets.apps not found"));
    assert!(
        yes && out.contains("yes: the DaemonSet isola-deploy is gone"),
        "{out}"
    );
    let deleting = r#","deletionTimestamp":"2026-01-02T03:04:05Z""#;
    let (yes, out) = ask(200, meta("isola-deploy", deleting));
    assert!(yes && out.contains("being deleted"), "{out}");
    let (yes, out) = ask(200, meta("isola-deploy", ""));
    assert!(
        !yes && out.contains("no: the DaemonSet isola-deploy is still there"),
        "{out}"
    );
    let (yes, out) = ask(403, status(403, "Forbidden", "cannot get resource"));
    assert!(!yes, "{out}");
    assert!(
        out.contains("keeping isola installed") && out.contains("`get` on `daemonsets`"),
        "{out}"
    );
}
