//! The real agent binary, run as an ordinary process serving on a Unix socket, reached through a
//! fake hybrid vsock proxy by the real client: the whole host->agent path except the VM.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use isola_agent_client::AgentClient;
use isola_agent_proto::agent::{
    ContainerRequest, CopyFileRequest, GuestDetailsRequest, StartContainerRequest,
};
use isola_agent_proto::types::Empty;
use isola_agent_proto::AgentEndpoint;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::process::{Child, Command};

struct Agent {
    _child: Child,
    _dir: tempfile::TempDir,
    endpoint: AgentEndpoint,
}

/// A hybrid vsock proxy: answers `CONNECT 1024` by connecting to the agent's Unix socket.
async fn proxy(listener: UnixListener, agent: PathBuf) {
    while let Ok((stream, _)) = listener.accept().await {
        let agent = agent.clone();
        tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(stream);
            let mut line = String::new();
            if reader.read_line(&mut line).await.is_err() || line != "CONNECT 1024\n" {
                return;
            }
            let mut host = reader.into_inner();
            // Not listening yet: close, as vhost-device-vsock does.
            let Ok(mut guest) = UnixStream::connect(&agent).await else {
                return;
            };
            if host.write_all(b"OK 7777\n").await.is_err() {
                return;
            }
            let _ = tokio::io::copy_bidirectional(&mut host, &mut guest).await;
        });
    }
}

async fn start_agent(delay_proxy: Duration) -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_isola-agent"))
        .env(
            "ISOLA_AGENT_CMDLINE",
            format!("quiet agent.log=debug agent.listen=unix:{}", sock.display()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let vsock = dir.path().join("vm.vsock");
    let listener = UnixListener::bind(&vsock).unwrap();
    let s = sock.clone();
    tokio::spawn(async move {
        tokio::time::sleep(delay_proxy).await;
        proxy(listener, s).await
    });
    Agent {
        _child: child,
        endpoint: AgentEndpoint::HybridVsock {
            path: vsock,
            port: 1024,
        },
        _dir: dir,
    }
}

fn code(e: &ttrpc::Error) -> ttrpc::Code {
    match e {
        ttrpc::Error::RpcStatus(s) => s.code(),
        other => panic!("expected an RPC status, got {other:?}"),
    }
}

#[tokio::test]
async fn check_and_version_answer() {
    let agent = start_agent(Duration::ZERO).await;
    let client = AgentClient::connect(&agent.endpoint, Duration::from_secs(20))
        .await
        .unwrap();
    client.check(Duration::from_secs(2)).await.unwrap();
    let v = client.version(Duration::from_secs(2)).await.unwrap();
    assert_eq!(v.protocol_version, isola_agent_proto::PROTOCOL_VERSION);
    assert_eq!(v.agent_version, env!("CARGO_PKG_VERSION"));
    assert!(!v.kernel_release.is_empty());
}

#[tokio::test]
async fn guest_details_report_this_machine() {
    let agent = start_agent(Duration::ZERO).await;
    let client = AgentClient::connect(&agent.endpoint, Duration::from_secs(20))
        .await
        .unwrap();
    let d = client
        .agent
        .get_guest_details(
            isola_agent_client::context(Duration::from_secs(2)),
            &GuestDetailsRequest::default(),
        )
        .await
        .unwrap();
    assert!(d.online_cpus >= 1);
    assert!(d.memory_total_bytes > 0);
}

#[tokio::test]
async fn unbuilt_rpcs_answer_unimplemented_and_the_agent_survives() {
    let agent = start_agent(Duration::ZERO).await;
    let client = AgentClient::connect(&agent.endpoint, Duration::from_secs(20))
        .await
        .unwrap();
    let err = client
        .agent
        .copy_file(
            isola_agent_client::context(Duration::from_secs(2)),
            &CopyFileRequest::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&err), ttrpc::Code::UNIMPLEMENTED);
    assert!(format!("{err:?}").contains("CopyFile"));
    client.check(Duration::from_secs(2)).await.unwrap();
}

#[tokio::test]
async fn container_rpcs_answer_with_status_codes() {
    let agent = start_agent(Duration::ZERO).await;
    let client = AgentClient::connect(&agent.endpoint, Duration::from_secs(20))
        .await
        .unwrap();
    let err = client
        .agent
        .start_container(
            isola_agent_client::context(Duration::from_secs(2)),
            &StartContainerRequest {
                container_id: "nope".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(code(&err), ttrpc::Code::NOT_FOUND);
    assert!(format!("{err:?}").contains("nope"), "{err:?}");
    let ctx = || isola_agent_client::context(Duration::from_secs(2));
    let nope = ContainerRequest {
        container_id: "nope".into(),
        ..Default::default()
    };
    let stats = client
        .agent
        .stats_container(ctx(), &nope)
        .await
        .unwrap_err();
    assert_eq!(code(&stats), ttrpc::Code::NOT_FOUND, "{stats:?}");
    let pause = client
        .agent
        .pause_container(ctx(), &nope)
        .await
        .unwrap_err();
    assert_eq!(code(&pause), ttrpc::Code::NOT_FOUND, "{pause:?}");
    let state = client
        .agent
        .get_container_state(ctx(), &nope)
        .await
        .unwrap_err();
    assert_eq!(code(&state), ttrpc::Code::NOT_FOUND, "{state:?}");
    // No OOM event: the long poll answers before the caller's timeout, taking nothing.
    let oom = client
        .agent
        .get_oom_event(
            isola_agent_client::context(Duration::from_secs(1)),
            &Empty::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&oom), ttrpc::Code::DEADLINE_EXCEEDED, "{oom:?}");
    assert!(format!("{oom:?}").contains("GetOOMEvent"), "{oom:?}");
    client.check(Duration::from_secs(2)).await.unwrap();
}

#[tokio::test]
async fn client_waits_for_a_late_agent() {
    let agent = start_agent(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    AgentClient::connect(&agent.endpoint, Duration::from_secs(20))
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(500));
}

#[tokio::test]
async fn unreachable_agent_fails_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = AgentEndpoint::HybridVsock {
        path: Path::new(dir.path()).join("nobody.vsock"),
        port: 1024,
    };
    let started = std::time::Instant::now();
    let err = AgentClient::connect(&endpoint, Duration::from_millis(500))
        .await
        .err()
        .expect("nothing listens");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(err.to_string().contains("nobody.vsock"), "{err}");
}
