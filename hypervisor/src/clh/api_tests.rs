//! The API client against a fake Cloud Hypervisor: answers, refusals, a VMM that dies
//! mid-call, one that never answers, oversized and malformed answers, descriptor passing.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

use super::api::{ApiClient, ApiError, MAX_RESPONSE};
use super::config::{NetConfig, ResizeRequest, VmState};

/// What the fake does with one connection.
#[derive(Clone)]
enum Behaviour {
    /// Reads the request, answers these bytes.
    Answer(Vec<u8>),
    /// Reads the request, closes.
    Hangup,
    /// Reads the request, never answers.
    Silent,
}

fn http(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nServer: Cloud Hypervisor API\r\nConnection: keep-alive\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A fake API server on a fresh socket: serves every connection with `b`, and reports each
/// request's text on the channel.
fn fake(
    b: Behaviour,
) -> (
    tempfile::TempDir,
    PathBuf,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&req).contains("\r\n\r\n") {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let _ = tx.send(String::from_utf8_lossy(&req).into_owned());
            match &b {
                Behaviour::Answer(bytes) => {
                    let _ = s.write_all(bytes).await;
                }
                Behaviour::Hangup => drop(s),
                Behaviour::Silent => {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            }
        }
    });
    (dir, path, rx)
}

#[tokio::test]
async fn typed_answers_and_request_shape() {
    let (_d, path, mut reqs) = fake(Behaviour::Answer(http(
        "200 ",
        r#"{"build_version":"v49.0.0","version":"49.0.0","pid":7,"features":["kvm"]}"#,
    )));
    let ping = ApiClient::new(&path).ping().await.unwrap();
    assert_eq!((ping.version.as_str(), ping.pid), ("49.0.0", Some(7)));
    let req = reqs.recv().await.unwrap();
    assert!(
        req.starts_with("GET /api/v1/vmm.ping HTTP/1.1\r\n"),
        "{req}"
    );
}

#[tokio::test]
async fn put_with_body_and_no_content_answer() {
    let (_d, path, mut reqs) = fake(Behaviour::Answer(http("204 ", "")));
    let api = ApiClient::new(&path);
    api.resize(&ResizeRequest {
        desired_vcpus: Some(2),
        ..ResizeRequest::default()
    })
    .await
    .unwrap();
    let req = reqs.recv().await.unwrap();
    assert!(
        req.starts_with("PUT /api/v1/vm.resize HTTP/1.1\r\n"),
        "{req}"
    );
    assert!(
        req.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{req}"
    );
    api.boot().await.unwrap();
    assert!(reqs
        .recv()
        .await
        .unwrap()
        .starts_with("PUT /api/v1/vm.boot "));
}

#[tokio::test]
async fn refusals_carry_the_vmm_text() {
    let (_d, path, _r) = fake(Behaviour::Answer(http(
        "500 ",
        "Error from API: The VM could not boot: VM is not created",
    )));
    let err = ApiClient::new(&path).boot().await.unwrap_err();
    match &err {
        ApiError::Status {
            endpoint,
            status,
            message,
        } => {
            assert_eq!((*endpoint, *status), ("vm.boot", 500));
            assert!(message.contains("VM is not created"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("HTTP 500"), "{err}");
    // An empty refusal still says something.
    let (_d2, path2, _r2) = fake(Behaviour::Answer(http("404 ", "")));
    let err = ApiClient::new(&path2).pause().await.unwrap_err();
    assert!(err.to_string().contains("Not Found"), "{err}");
}

#[tokio::test]
async fn a_vmm_dying_mid_call_is_an_error_not_a_hang() {
    let (_d, path, _r) = fake(Behaviour::Hangup);
    let err = ApiClient::new(&path).info().await.unwrap_err();
    assert!(
        matches!(
            err,
            ApiError::Http {
                endpoint: "vm.info",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("did the VMM exit"), "{err}");
}

#[tokio::test]
async fn a_silent_vmm_times_out() {
    let (_d, path, _r) = fake(Behaviour::Silent);
    let api = ApiClient::new(&path).with_timeout(Duration::from_millis(200));
    let t0 = std::time::Instant::now();
    let err = api.shutdown_vmm().await.unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert!(
        matches!(
            err,
            ApiError::Timeout {
                endpoint: "vmm.shutdown",
                timeout_ms: 200
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn oversized_and_malformed_answers() {
    let huge = "x".repeat(MAX_RESPONSE + 1);
    let (_d, path, _r) = fake(Behaviour::Answer(http("200 ", &huge)));
    let err = ApiClient::new(&path).info().await.unwrap_err();
    assert!(matches!(err, ApiError::Body { .. }), "{err:?}");
    let (_d2, path2, _r2) = fake(Behaviour::Answer(http("200 ", r#"{"state":"Exploded"}"#)));
    let err = ApiClient::new(&path2).info().await.unwrap_err();
    assert!(
        matches!(
            err,
            ApiError::Decode {
                endpoint: "vm.info",
                ..
            }
        ),
        "{err:?}"
    );
    let (_d3, path3, _r3) = fake(Behaviour::Answer(b"this is not HTTP\r\n\r\n".to_vec()));
    let err = ApiClient::new(&path3).ping().await.unwrap_err();
    assert!(matches!(err, ApiError::Http { .. }), "{err:?}");
}

#[tokio::test]
async fn no_socket_is_a_connect_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = ApiClient::new(dir.path().join("gone.sock"))
        .ping()
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    assert!(err.to_string().contains("gone.sock"), "{err}");
}

#[tokio::test]
async fn add_net_sends_the_tap_descriptor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let server = tokio::task::spawn_blocking(move || {
        let (s, _) = listener.accept().unwrap();
        let mut data = vec![0u8; 8192];
        let mut iov = [std::io::IoSliceMut::new(&mut data)];
        let mut space = nix::cmsg_space!([RawFd; 4]);
        let msg = recvmsg::<UnixAddr>(s.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty())
            .unwrap();
        let mut fds = Vec::new();
        for c in msg.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(f) = c {
                fds.extend(f);
            }
        }
        let n = msg.bytes;
        let text = String::from_utf8_lossy(&data[..n]).into_owned();
        std::io::Write::write_all(&mut &s, &http("204 ", "")).unwrap();
        // SAFETY: received just now, owned by nobody else.
        let owned: Vec<OwnedFd> = fds
            .into_iter()
            .map(|f| unsafe { OwnedFd::from_raw_fd(f) })
            .collect();
        (text, owned)
    });
    let tap = tempfile::tempfile().unwrap();
    let net = NetConfig {
        mac: "02:00:00:00:00:01".into(),
        mtu: None,
        num_queues: 2,
        queue_size: 256,
        id: "net0".into(),
        fds: Some(vec![99]),
    };
    ApiClient::new(&path)
        .add_net(&net, tap.as_raw_fd())
        .await
        .unwrap();
    let (text, fds) = server.await.unwrap();
    assert!(text.starts_with("PUT /api/v1/vm.add-net "), "{text}");
    assert!(
        text.contains(r#""id":"net0""#) && !text.contains("fds"),
        "{text}"
    );
    assert_eq!(
        fds.len(),
        1,
        "the tap descriptor travelled with the request"
    );
    let same = |a: &OwnedFd| {
        let (x, y) = (
            nix::sys::stat::fstat(a).unwrap(),
            nix::sys::stat::fstat(&tap).unwrap(),
        );
        (x.st_dev, x.st_ino) == (y.st_dev, y.st_ino)
    };
    assert!(same(&fds[0]));
}

#[test]
fn states_parse() {
    let s: VmState = serde_json::from_str(r#""Paused""#).unwrap();
    assert_eq!(s, VmState::Paused);
}
