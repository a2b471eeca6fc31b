//! The forwarder against a fake event service on a Unix socket that is stopped and started
//! again on the same path, as containerd is when it restarts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use containerd_shim_protos::api::Empty;
use containerd_shim_protos::events::task::{TaskExit, TaskOOM};
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::{create_events, Events};
use containerd_shim_protos::ttrpc::r#async::{Server, TtrpcContext};
use containerd_shim_protos::{topics, ttrpc};
use protobuf::Message;

use super::{envelope, EventSink, RemoteEvents};

/// What the fake event service received: (topic, namespace, container id of a TaskExit).
type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

struct Recorder(Seen);

#[async_trait]
impl Events for Recorder {
    async fn forward(&self, _: &TtrpcContext, req: ForwardRequest) -> ttrpc::Result<Empty> {
        let env = req.envelope();
        let id = TaskExit::parse_from_bytes(&env.event().value)
            .map(|e| e.container_id)
            .unwrap_or_default();
        self.0
            .lock()
            .unwrap()
            .push((env.topic().into(), env.namespace().into(), id));
        Ok(Empty::new())
    }
}

fn serve(path: &std::path::Path, seen: &Seen) -> Server {
    let _ = std::fs::remove_file(path);
    let services: HashMap<_, _> = create_events(Arc::new(Recorder(seen.clone())));
    Server::new()
        .bind(&format!("unix://{}", path.display()))
        .expect("binding the fake event service")
        .register_service(services)
}

fn exit(id: &str) -> Box<TaskExit> {
    Box::new(TaskExit {
        container_id: id.into(),
        exit_status: 137,
        ..Default::default()
    })
}

async fn wait_for(seen: &Seen, n: usize) -> Vec<(String, String, String)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = seen.lock().unwrap().clone();
        if got.len() >= n || tokio::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn envelopes_carry_topic_namespace_time_and_the_event() {
    let at = UNIX_EPOCH + Duration::new(1_700_000_000, 42);
    let env = envelope(topics::TASK_OOM_EVENT_TOPIC, "k8s.io", &TaskOOM::new(), at).unwrap();
    assert_eq!(env.topic(), "/tasks/oom");
    assert_eq!(env.namespace(), "k8s.io");
    assert_eq!(env.timestamp().seconds, 1_700_000_000);
    assert_eq!(env.timestamp().nanos, 42);
    assert_eq!(env.event().type_url, "containerd.events.TaskOOM");
    let env = envelope(
        topics::TASK_EXIT_EVENT_TOPIC,
        "ns",
        exit("c1").as_ref(),
        SystemTime::now(),
    )
    .unwrap();
    assert_eq!(
        TaskExit::parse_from_bytes(&env.event().value)
            .unwrap()
            .container_id,
        "c1"
    );
}

/// containerd's event service goes away and comes back on the same socket: the events
/// published in between and after reach the new one, in order.
#[tokio::test]
async fn events_reach_a_restarted_event_service() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("containerd.sock.ttrpc");
    let seen: Seen = Arc::default();
    let mut server = serve(&path, &seen);
    server.start().await.unwrap();

    let events = RemoteEvents::new(&path.display().to_string(), "isola-test".into());
    events.publish(topics::TASK_EXIT_EVENT_TOPIC, exit("before"));
    let got = wait_for(&seen, 1).await;
    assert_eq!(
        got,
        [(
            "/tasks/exit".to_string(),
            "isola-test".to_string(),
            "before".to_string()
        )]
    );

    // containerd dies: its connections close, its socket goes.
    server.shutdown().await.unwrap();
    drop(server);
    let _ = std::fs::remove_file(&path);
    events.publish(topics::TASK_EXIT_EVENT_TOPIC, exit("while-down"));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A new containerd on the same address.
    let mut server = serve(&path, &seen);
    server.start().await.unwrap();
    events.publish(topics::TASK_EXIT_EVENT_TOPIC, exit("after"));
    let got = wait_for(&seen, 3).await;
    let ids: Vec<&str> = got.iter().map(|(_, _, id)| id.as_str()).collect();
    assert_eq!(ids, ["before", "while-down", "after"], "{got:?}");
    server.shutdown().await.unwrap();
}
