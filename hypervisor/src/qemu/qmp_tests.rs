//! QMP client tests against a fake QMP server on a Unix socket.

use std::path::PathBuf;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

use super::*;

const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}"#;
const EVENT: &str = r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RTC_CHANGE", "data": {"offset": 0}}"#;

/// What the fake server answers to one request: the raw lines to send back.
type Handler = fn(command: &str, id: &Value) -> Vec<String>;

/// Starts a fake QMP server that sends `greeting`, then answers each request line with
/// `handler`. Returns the socket path (inside `dir`).
fn fake_server(dir: &tempfile::TempDir, greeting: &'static str, handler: Handler) -> PathBuf {
    let path = dir.path().join("qmp.sock");
    let listener = UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (r, mut w) = stream.into_split();
        w.write_all(format!("{greeting}\n").as_bytes())
            .await
            .unwrap();
        let mut lines = BufReader::new(r).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let req: Value = serde_json::from_str(&line).unwrap();
            let cmd = req["execute"].as_str().unwrap().to_owned();
            for reply in handler(&cmd, &req["id"]) {
                if w.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
            }
            if cmd == "quit" {
                return;
            }
        }
    });
    path
}

fn ret(id: &Value, v: &str) -> String {
    format!("{{\"return\": {v}, \"id\": {id}}}\n")
}

fn standard(cmd: &str, id: &Value) -> Vec<String> {
    match cmd {
        "qmp_capabilities" => vec![ret(id, "{}")],
        "query-status" => vec![
            format!("{EVENT}\n"),
            "\n".into(),
            format!("{EVENT}\n"),
            ret(id, r#"{"status": "running", "singlestep": false, "running": true}"#),
        ],
        "stop" | "cont" => vec![ret(id, "{}")],
        "quit" => vec![ret(id, "{}"), r#"{"event": "SHUTDOWN"}"#.to_owned() + "\n"],
        _ => vec![format!(
            "{{\"error\": {{\"class\": \"CommandNotFound\", \"desc\": \"The command {cmd} has not been found\"}}, \"id\": {id}}}\n"
        )],
    }
}

const T: Duration = Duration::from_secs(2);

#[tokio::test]
async fn handshake_status_events_and_quit() {
    let dir = tempfile::tempdir().unwrap();
    let path = fake_server(&dir, GREETING, standard);
    let mut c = QmpClient::connect(&path, T, "t").await.unwrap();
    let st = c.query_status().await.unwrap();
    assert_eq!(
        st,
        VmStatus {
            running: true,
            status: "running".into()
        }
    );
    c.stop().await.unwrap();
    c.cont().await.unwrap();
    c.quit().await.unwrap();
}

#[tokio::test]
async fn error_reply() {
    let dir = tempfile::tempdir().unwrap();
    let path = fake_server(&dir, GREETING, standard);
    let mut c = QmpClient::connect(&path, T, "t").await.unwrap();
    let err = c.execute("frobnicate", None).await.unwrap_err();
    match &err {
        QmpError::Command {
            command,
            class,
            desc,
        } => {
            assert_eq!(command, "frobnicate");
            assert_eq!(class, "CommandNotFound");
            assert!(desc.contains("has not been found"));
        }
        other => panic!("unexpected {other:?}"),
    }
    // The connection is still usable.
    assert!(c.query_status().await.unwrap().running);
}

#[tokio::test]
async fn oversized_line_rejected_then_recovers() {
    fn big(cmd: &str, id: &Value) -> Vec<String> {
        match cmd {
            "query-status" => vec![
                // An oversized event, sent in pieces, then the real answer.
                format!("{{\"event\": \"X\", \"data\": \"{}", "a".repeat(3000)),
                format!("{}\"}}\n", "b".repeat(3000)),
                ret(id, r#"{"status": "paused", "running": false}"#),
            ],
            _ => standard(cmd, id),
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = fake_server(&dir, GREETING, big);
    let stream = UnixStream::connect(&path).await.unwrap();
    let mut c = QmpClient::handshake(stream, T, 1024, "t").await.unwrap();
    let err = c.query_status().await.unwrap_err();
    assert!(
        matches!(err, QmpError::LineTooLong { limit: 1024, .. }),
        "{err:?}"
    );
    // The rest of the long line is skipped and the next command works; the reply to the
    // failed query-status arrives late and is skipped by its id.
    c.stop().await.unwrap();
}

#[tokio::test]
async fn oversized_greeting_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let greeting: &'static str =
        Box::leak(format!("{{\"QMP\": \"{}\"}}", "x".repeat(5000)).into_boxed_str());
    let path = fake_server(&dir, greeting, standard);
    let stream = UnixStream::connect(&path).await.unwrap();
    let err = QmpClient::handshake(stream, T, 1024, "t")
        .await
        .unwrap_err();
    assert!(matches!(err, QmpError::LineTooLong { .. }), "{err:?}");
}

#[tokio::test]
async fn bad_greeting() {
    let dir = tempfile::tempdir().unwrap();
    let path = fake_server(&dir, r#"{"hello": 1}"#, standard);
    let err = QmpClient::connect(&path, T, "t").await.unwrap_err();
    assert!(matches!(err, QmpError::Malformed { .. }), "{err:?}");
    let dir = tempfile::tempdir().unwrap();
    let path = fake_server(&dir, "not json at all", standard);
    let err = QmpClient::connect(&path, T, "t").await.unwrap_err();
    assert!(err.to_string().contains("not json at all"), "{err}");
}

#[tokio::test]
async fn timeout_then_stale_reply_skipped() {
    fn slow(cmd: &str, id: &Value) -> Vec<String> {
        match cmd {
            // No answer at all to the first query-status (id isola-2)...
            "query-status" if id == "isola-2" => vec![],
            // ...and its late answer arrives just before the next command's answer.
            "stop" => vec![
                ret(
                    &Value::from("isola-2"),
                    r#"{"status": "running", "running": true}"#,
                ),
                ret(id, "{}"),
            ],
            _ => standard(cmd, id),
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = fake_server(&dir, GREETING, slow);
    let mut c = QmpClient::connect(&path, Duration::from_millis(300), "t")
        .await
        .unwrap();
    let err = c.query_status().await.unwrap_err();
    assert!(matches!(err, QmpError::Timeout { .. }), "{err:?}");
    c.stop().await.unwrap();
    assert!(c.query_status().await.unwrap().running);
}

#[tokio::test]
async fn eof_is_closed() {
    fn hangup(cmd: &str, id: &Value) -> Vec<String> {
        match cmd {
            "qmp_capabilities" => vec![ret(id, "{}")],
            // Returning without answering "quit" closes the connection (see fake_server).
            _ => vec![],
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = fake_server(&dir, GREETING, hangup);
    let mut c = QmpClient::connect(&path, T, "t").await.unwrap();
    // quit treats the close as success.
    c.quit().await.unwrap();
    let err = c.query_status().await.unwrap_err();
    assert!(
        matches!(err, QmpError::Closed { .. } | QmpError::Io { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn connect_to_missing_socket() {
    let dir = tempfile::tempdir().unwrap();
    let err = QmpClient::connect(&dir.path().join("nope"), T, "t")
        .await
        .unwrap_err();
    assert!(matches!(err, QmpError::Connect { .. }), "{err:?}");
}

#[tokio::test]
async fn hotplug_queries_parse_and_reject_malformed_replies() {
    fn hp(cmd: &str, id: &Value) -> Vec<String> {
        match cmd {
            "query-hotpluggable-cpus" if id == "isola-2" => vec![ret(
                id,
                r#"[{"props": {"core-id": 1, "thread-id": 0, "socket-id": 0}, "vcpus-count": 1, "type": "qemu64-x86_64-cpu"},
                    {"props": {"core-id": 0, "thread-id": 0, "socket-id": 0}, "vcpus-count": 1, "qom-path": "/machine/peripheral/cpu-0", "type": "qemu64-x86_64-cpu"}]"#
                    .replace('\n', "")
                    .as_str(),
            )],
            "query-hotpluggable-cpus" => vec![ret(id, r#"[{"props": {}}]"#)],
            "query-memory-devices" if id == "isola-4" => vec![ret(
                id,
                r#"[{"type": "dimm", "data": {"id": "dimm-0", "size": 268435456, "slot": 0}}]"#,
            )],
            "query-memory-devices" => vec![ret(id, r#"{"not": "a list"}"#)],
            _ => standard(cmd, id),
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = fake_server(&dir, GREETING, hp);
    let mut c = QmpClient::connect(&path, T, "t").await.unwrap();
    let cpus = c.query_hotpluggable_cpus().await.unwrap();
    assert_eq!(cpus.len(), 2);
    assert_eq!(cpus[0].driver, "qemu64-x86_64-cpu");
    assert_eq!(
        (cpus[0].prop("core-id"), cpus[0].qom_path.as_deref()),
        (1, None)
    );
    assert_eq!(cpus[1].device_id(), Some("cpu-0"));
    let err = c.query_hotpluggable_cpus().await.unwrap_err();
    assert!(matches!(err, QmpError::Malformed { .. }), "{err:?}");
    let mem = c.query_memory_devices().await.unwrap();
    assert_eq!(
        mem,
        [MemoryDevice {
            kind: "dimm".into(),
            id: Some("dimm-0".into()),
            size: 256 << 20
        }]
    );
    let err = c.query_memory_devices().await.unwrap_err();
    assert!(err.to_string().contains("not an array"), "{err}");
}
