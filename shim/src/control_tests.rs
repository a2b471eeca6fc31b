//! Pids, Pause/Resume, Update, Stats and OOM events against the fake agent and fake VM.

use std::sync::atomic::Ordering;
use std::time::Duration;

use containerd_shim_protos::cgroups_v2::metrics::Metrics;
use containerd_shim_protos::events::task::{TaskOOM, TaskPaused, TaskResumed};
use containerd_shim_protos::topics::*;
use containerd_shim_protos::types::task::Status as TaskStatus;
use protobuf::well_known_types::any::Any;
use protobuf::Message;
use ttrpc::Code;

use crate::control::LINUX_RESOURCES_TYPE_URL;
use crate::error::ShimError;
use crate::fake::Env;
use crate::queries::PROCESS_DETAILS_TYPE_URL;
use crate::stdio::StdioPaths;

const NONE: &str = "{}";
const SH: &[u8] = br#"{"user":{"uid":0,"gid":0},"args":["sh"],"cwd":"/"}"#;

fn code<T: std::fmt::Debug>(r: Result<T, ShimError>) -> Code {
    r.expect_err("expected an error").code()
}

async fn eventually(what: &str, f: impl Fn() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

fn resources(json: &str) -> Any {
    Any {
        type_url: LINUX_RESOURCES_TYPE_URL.into(),
        value: json.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn status(env: &Env, id: &str, exec_id: &str) -> TaskStatus {
    env.service
        .state(id, exec_id)
        .unwrap()
        .status
        .enum_value()
        .unwrap()
}

/// A running container c1 (and its VM).
async fn running(env: &Env) {
    env.service.create(env.request("c1", NONE)).await.unwrap();
    env.service.start("c1", "").await.unwrap();
}

#[tokio::test]
async fn pids_are_guest_pids_with_exec_ids() {
    let env = Env::new();
    let s = &env.service;
    running(&env).await;
    s.exec("c1", "e1", StdioPaths::default(), SH.to_vec())
        .unwrap();
    s.start("c1", "e1").await.unwrap();
    let pids = s.pids("c1").await.unwrap();
    assert_eq!(pids.len(), 2, "{pids:?}");
    assert_eq!(pids[0].pid, 1);
    assert!(pids[0].info.is_none(), "the init has no exec id");
    assert_eq!(pids[1].pid, 2);
    assert_eq!(pids[1].info.type_url, PROCESS_DETAILS_TYPE_URL);
    assert_eq!(pids[1].info.value, [0x0a, 2, b'e', b'1']);
    assert_eq!(code(s.pids("nope").await), Code::NOT_FOUND);
    // An agent error other than Unimplemented reaches the caller.
    env.agent().fail("ListProcesses", Code::INTERNAL, "boom");
    assert_eq!(code(s.pids("c1").await), Code::INTERNAL);
}

#[tokio::test]
async fn pause_and_resume() {
    let env = Env::new();
    let s = &env.service;
    s.create(env.request("c1", NONE)).await.unwrap();
    // Not running yet.
    assert_eq!(code(s.pause("c1").await), Code::FAILED_PRECONDITION);
    assert_eq!(code(s.pause("nope").await), Code::NOT_FOUND);
    s.start("c1", "").await.unwrap();
    s.exec("c1", "e1", StdioPaths::default(), SH.to_vec())
        .unwrap();
    s.start("c1", "e1").await.unwrap();
    assert_eq!(code(s.resume("c1").await), Code::FAILED_PRECONDITION);

    s.pause("c1").await.unwrap();
    assert!(env.agent().paused.lock().unwrap().contains("c1"));
    assert_eq!(status(&env, "c1", ""), TaskStatus::PAUSED);
    assert_eq!(status(&env, "c1", "e1"), TaskStatus::PAUSED);
    assert_eq!(code(s.pause("c1").await), Code::FAILED_PRECONDITION);
    // No exec into a frozen container.
    assert_eq!(
        code(s.exec("c1", "e2", StdioPaths::default(), SH.to_vec())),
        Code::FAILED_PRECONDITION
    );

    s.resume("c1").await.unwrap();
    assert!(env.agent().paused.lock().unwrap().is_empty());
    assert_eq!(status(&env, "c1", ""), TaskStatus::RUNNING);
    assert_eq!(code(s.resume("c1").await), Code::FAILED_PRECONDITION);

    let events = env.events.events.lock().unwrap();
    let paused: Vec<_> = events
        .iter()
        .filter_map(|(t, e)| Some((*t, e.downcast_ref::<TaskPaused>()?.container_id.clone())))
        .collect();
    let resumed: Vec<_> = events
        .iter()
        .filter_map(|(t, e)| Some((*t, e.downcast_ref::<TaskResumed>()?.container_id.clone())))
        .collect();
    assert_eq!(paused, [(TASK_PAUSED_EVENT_TOPIC, "c1".to_string())]);
    assert_eq!(resumed, [(TASK_RESUMED_EVENT_TOPIC, "c1".to_string())]);
}

#[tokio::test]
async fn a_paused_container_that_exits_is_stopped() {
    let env = Env::new();
    let s = &env.service;
    running(&env).await;
    s.pause("c1").await.unwrap();
    // SIGKILL reaches frozen processes.
    s.kill("c1", "", 9, false).await.unwrap();
    assert_eq!(s.wait("c1", "").await.unwrap().status, 137);
    assert_eq!(status(&env, "c1", ""), TaskStatus::STOPPED);
    assert_eq!(code(s.resume("c1").await), Code::FAILED_PRECONDITION);
    assert_eq!(code(s.pause("c1").await), Code::FAILED_PRECONDITION);
    s.delete("c1", "").await.unwrap();
}

#[tokio::test]
async fn pause_failing_in_the_guest_keeps_the_agents_code() {
    let env = Env::new();
    running(&env).await;
    env.agent()
        .fail("PauseContainer", Code::FAILED_PRECONDITION, "not running");
    assert_eq!(
        code(env.service.pause("c1").await),
        Code::FAILED_PRECONDITION
    );
    assert_eq!(status(&env, "c1", ""), TaskStatus::RUNNING);
    assert!(!env.events.topics().contains(&TASK_PAUSED_EVENT_TOPIC));
}

#[tokio::test]
async fn update_sends_the_resources_json() {
    let env = Env::new();
    let s = &env.service;
    running(&env).await;
    let json = r#"{"memory":{"limit":67108864}}"#;
    s.update("c1", Some(&resources(json))).await.unwrap();
    assert_eq!(
        env.agent().updates.lock().unwrap().as_slice(),
        [("c1".to_string(), json.to_string())]
    );
    // 64 MiB fits in the VM's 512: no hotplug, no onlining.
    assert!(env.vm().hotplugs.lock().unwrap().is_empty());
    assert!(!env
        .agent()
        .calls()
        .iter()
        .any(|c| c.starts_with("OnlineCPUMem")));
}

#[tokio::test]
async fn update_errors() {
    let env = Env::new();
    let s = &env.service;
    let json = r#"{"memory":{"limit":67108864}}"#;
    assert_eq!(
        code(s.update("nope", Some(&resources(json))).await),
        Code::NOT_FOUND
    );
    running(&env).await;
    assert_eq!(code(s.update("c1", None).await), Code::INVALID_ARGUMENT);
    assert_eq!(
        code(s.update("c1", Some(&resources("{not json"))).await),
        Code::INVALID_ARGUMENT
    );
    assert_eq!(
        code(
            s.update("c1", Some(&resources(r#"{"memory":{"limit":"lots"}}"#)))
                .await
        ),
        Code::INVALID_ARGUMENT
    );
    let mut windows = resources("{}");
    windows.type_url = "types.containerd.io/opencontainers/runtime-spec/1/WindowsResources".into();
    assert_eq!(
        code(s.update("c1", Some(&windows)).await),
        Code::INVALID_ARGUMENT
    );
    assert!(env.agent().updates.lock().unwrap().is_empty());
    env.agent().exit("c1", "", 0);
    s.wait("c1", "").await.unwrap();
    assert_eq!(
        code(s.update("c1", Some(&resources(json))).await),
        Code::FAILED_PRECONDITION
    );
}

#[tokio::test]
async fn update_beyond_the_vm_without_hotplug_applies_the_limit_inside() {
    let env = Env::new();
    running(&env).await;
    let json = r#"{"memory":{"limit":2147483648},"cpu":{"quota":200000,"period":100000}}"#;
    env.service
        .update("c1", Some(&resources(json)))
        .await
        .unwrap();
    assert_eq!(
        env.vm().hotplugs.lock().unwrap().as_slice(),
        [("vcpus", 2), ("memory", 2048)]
    );
    assert_eq!(env.agent().updates.lock().unwrap().len(), 1);
    assert!(!env
        .agent()
        .calls()
        .iter()
        .any(|c| c.starts_with("OnlineCPUMem")));
}

#[tokio::test]
async fn update_beyond_the_vm_grows_it_then_onlines() {
    let env = Env::new();
    running(&env).await;
    env.vm().can_hotplug.store(true, Ordering::SeqCst);
    let json = r#"{"cpu":{"quota":300000,"period":100000}}"#;
    env.service
        .update("c1", Some(&resources(json)))
        .await
        .unwrap();
    let calls = env.agent().calls();
    let online = calls
        .iter()
        .position(|c| c == "OnlineCPUMem 2 memory_mib=0");
    let update = calls.iter().position(|c| c == "UpdateContainer c1");
    assert!(online.is_some() && online < update, "{calls:?}");
    // Memory too: the VM grows to the limit, and the agent onlines memory and waits for all of
    // the grown VM's memory before the limit is applied.
    let json = r#"{"memory":{"limit":1073741824}}"#;
    env.service
        .update("c1", Some(&resources(json)))
        .await
        .unwrap();
    assert_eq!(
        env.vm().hotplugs.lock().unwrap().as_slice(),
        [("vcpus", 3), ("memory", 1024)]
    );
    assert!(env
        .agent()
        .calls()
        .contains(&"OnlineCPUMem 0 memory_mib=1024".to_string()));
    // The VM is now bigger: the same limit again needs no hotplug.
    env.service
        .update("c1", Some(&resources(json)))
        .await
        .unwrap();
    assert_eq!(env.vm().hotplugs.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn stats_are_cgroup_v2_metrics() {
    let env = Env::new();
    let s = &env.service;
    assert_eq!(code(s.stats("nope").await), Code::NOT_FOUND);
    running(&env).await;
    let any = s.stats("c1").await.unwrap();
    assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
    let m = Metrics::parse_from_bytes(&any.value).unwrap();
    assert_eq!(m.cpu.usage_usec, 1234);
    assert_eq!(m.memory.usage, 3 << 20);
    assert_eq!(m.pids.current, 1);
    env.agent()
        .fail("StatsContainer", Code::NOT_FOUND, "no cgroup");
    assert_eq!(code(s.stats("c1").await), Code::NOT_FOUND);
}

#[tokio::test]
async fn oom_kills_are_published() {
    let env = Env::new();
    let s = &env.service;
    running(&env).await;
    let pod = r#"{"io.kubernetes.cri.sandbox-id":"c1"}"#;
    s.create(env.request("c2", pod)).await.unwrap();
    s.start("c2", "").await.unwrap();
    env.agent().oom("c1");
    assert_eq!(s.wait("c1", "").await.unwrap().status, 137);
    eventually("the OOM event", || {
        env.events.topics().contains(&TASK_OOM_EVENT_TOPIC)
    })
    .await;
    let ooms: Vec<String> = env
        .events
        .events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(_, e)| Some(e.downcast_ref::<TaskOOM>()?.container_id.clone()))
        .collect();
    assert_eq!(ooms, ["c1"]);
    // An OOM in a container the shim does not know is not published; the watcher goes on.
    env.agent().oom("ghost");
    env.agent().oom("c2");
    eventually("the second OOM event", || {
        env.events
            .topics()
            .iter()
            .filter(|t| **t == TASK_OOM_EVENT_TOPIC)
            .count()
            == 2
    })
    .await;
    assert_eq!(s.wait("c2", "").await.unwrap().status, 137);
    // The watcher ends with the VM.
    s.delete("c1", "").await.unwrap();
    s.delete("c2", "").await.unwrap();
    assert!(env.vm().stopped());
}

#[tokio::test]
async fn an_agent_without_oom_events_is_asked_once() {
    let env = Env::new();
    env.agent()
        .fail("GetOOMEvent", Code::UNIMPLEMENTED, "old agent");
    running(&env).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let asked = env
        .agent()
        .calls()
        .iter()
        .filter(|c| c.starts_with("GetOOMEvent"))
        .count();
    assert_eq!(asked, 1);
}

#[tokio::test]
async fn a_silent_agent_is_declared_dead_and_every_process_ends() {
    let env = Env::with_config(|c| c.agent.watchdog_timeout_ms = 300);
    let s = &env.service;
    s.create(env.request("c1", NONE)).await.unwrap();
    s.start("c1", "").await.unwrap();
    env.agent().frozen.store(true, Ordering::SeqCst);
    let t0 = std::time::Instant::now();
    let exit = tokio::time::timeout(Duration::from_secs(5), s.wait("c1", ""))
        .await
        .expect("the watchdog ended the pod")
        .unwrap();
    assert_eq!(exit.status, crate::service::VM_DIED_STATUS);
    // Declared dead after the limit, and long before any RPC deadline.
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(env.events.topics().contains(&TASK_EXIT_EVENT_TOPIC));
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while env.vm().stops.load(Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the dead VM was not torn down"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let again = s.create(env.request("c2", NONE)).await.unwrap_err();
    assert_eq!(again.code(), Code::FAILED_PRECONDITION, "{again}");
}

#[tokio::test]
async fn a_healthy_agent_is_left_alone_by_the_watchdog() {
    let env = Env::with_config(|c| c.agent.watchdog_timeout_ms = 300);
    let s = &env.service;
    s.create(env.request("c1", NONE)).await.unwrap();
    s.start("c1", "").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        s.state("c1", "").unwrap().status.enum_value(),
        Ok(TaskStatus::RUNNING)
    );
    assert_eq!(env.vm().stops.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_metrics_snapshot_counts_rpcs_hotplugs_and_the_guest() {
    use isola_sandbox::shim_metrics::ShimMetrics;

    // A watchdog period of 500 ms: time enough to thaw the agent after one failed check.
    let env = Env::with_config(|c| c.agent.watchdog_timeout_ms = 1500);
    let s = &env.service;
    {
        let agent = env.agent();
        let mut guest = agent.guest.lock().unwrap();
        guest.memory_total_bytes = 512 << 20;
        guest.memory_available_bytes = 400 << 20;
        guest.cpu_seconds = 1.25;
    }
    running(&env).await;
    // Written as soon as the VM is up, next to the record.
    let path = ShimMetrics::path(&env.tmp.path().join("state"), "c1");
    eventually("the first snapshot", || {
        ShimMetrics::read(&path).is_some_and(|m| m.guest.cpu_seconds.is_some())
    })
    .await;
    let first = ShimMetrics::read(&path).unwrap();
    assert_eq!(first.sandbox_id, "c1");
    assert_eq!(first.guest.memory_total_bytes, Some(512 << 20));
    assert_eq!(first.guest.memory_available_bytes, Some(400 << 20));
    assert_eq!(first.rpcs["CreateSandbox"].calls, 1);
    assert_eq!(first.rpcs["GetGuestDetails"].calls, 1);
    assert!(first.written_unix > 0);
    let booted = first.vm.expect("the VM's size");
    assert!(booted.vcpus >= 1 && booted.memory_mib > 0, "{booted:?}");

    // A failing RPC, a hotplug that grows the VM and one the VM cannot do, a failed check.
    env.agent().fail("ListProcesses", Code::NOT_FOUND, "gone");
    assert_eq!(code(s.pids("c1").await), Code::NOT_FOUND);
    env.vm().can_hotplug.store(true, Ordering::SeqCst);
    s.update(
        "c1",
        Some(&resources(r#"{"cpu":{"quota":300000,"period":100000}}"#)),
    )
    .await
    .unwrap();
    // The grown size is in the snapshot at once, not at the next period.
    let grown = ShimMetrics::read(&path).unwrap().vm.unwrap();
    assert_eq!((grown.vcpus, grown.memory_mib), (3, booted.memory_mib));
    env.vm().can_hotplug.store(false, Ordering::SeqCst);
    s.update("c1", Some(&resources(r#"{"memory":{"limit":4294967296}}"#)))
        .await
        .unwrap();
    env.agent().frozen.store(true, Ordering::SeqCst);
    let vm = s.pod.ready().unwrap();
    eventually("a failed watchdog check", || {
        vm.counters.snapshot("c1", 0).watchdog_failed_checks > 0
    })
    .await;
    env.agent().frozen.store(false, Ordering::SeqCst);
    vm.write_metrics(crate::counters::now_unix());
    let m = ShimMetrics::read(&path).unwrap();
    let list = &m.rpcs["ListProcesses"];
    assert_eq!((list.calls, list.errors["NOT_FOUND"]), (1, 1));
    let created = &m.rpcs["CreateContainer"];
    assert_eq!(created.duration.as_ref().unwrap().count(), created.calls);
    assert_eq!(m.rpcs["OnlineCPUMem"].calls, 1);
    assert!(m.rpcs["Check"].errors["DEADLINE_EXCEEDED"] >= 1);
    let events: Vec<_> = m
        .hotplug
        .iter()
        .map(|h| (h.resource.as_str(), h.outcome.as_str(), h.count))
        .collect();
    assert_eq!(
        events,
        [("vcpus", "grown", 1), ("memory", "unsupported", 1)]
    );
    assert!(m.watchdog_failed_checks >= 1);

    // Removed with the record when the pod ends, and not written again.
    s.kill("c1", "", 9, false).await.unwrap();
    s.wait("c1", "").await.unwrap();
    s.delete("c1", "").await.unwrap();
    assert!(!path.exists());
    vm.write_metrics(crate::counters::now_unix());
    assert!(!path.exists(), "no snapshot after the teardown");
}
