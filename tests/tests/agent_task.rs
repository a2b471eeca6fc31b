//! The guest side of containerd's Task service beyond create/start/exec/wait in a real pod VM:
//! ListProcesses, Pause/ResumeContainer, StatsContainer, UpdateContainer, GetContainerState,
//! OnlineCPUMem and GetOOMEvent, driven over ttrpc as the shim drives them.

mod agent_support;

use std::time::Duration;

use agent_support::*;
use isola_agent_proto::agent::container_state_response::Status;
use isola_agent_proto::agent::stdio_stream_header::Stream;
use isola_agent_proto::agent::*;
use isola_agent_proto::types::Empty;
use tokio::io::AsyncReadExt;

const MIB: u64 = 1 << 20;

impl Pod {
    fn req(&self, cid: &str) -> ContainerRequest {
        ContainerRequest {
            container_id: cid.into(),
            ..Default::default()
        }
    }

    async fn state(&self, cid: &str) -> RpcResult<ContainerStateResponse> {
        self.agent()
            .get_container_state(isola_agent_client::context(RPC), &self.req(cid))
            .await
            .map_err(err)
    }

    async fn status(&self, cid: &str) -> Status {
        self.state(cid)
            .await
            .expect("GetContainerState")
            .status
            .enum_value()
            .expect("a known status")
    }

    async fn pause(&self, cid: &str) -> RpcResult<()> {
        self.agent()
            .pause_container(isola_agent_client::context(RPC), &self.req(cid))
            .await
            .map(drop)
            .map_err(err)
    }

    async fn resume(&self, cid: &str) -> RpcResult<()> {
        self.agent()
            .resume_container(isola_agent_client::context(RPC), &self.req(cid))
            .await
            .map(drop)
            .map_err(err)
    }

    async fn stats(&self, cid: &str) -> RpcResult<StatsContainerResponse> {
        self.agent()
            .stats_container(isola_agent_client::context(RPC), &self.req(cid))
            .await
            .map_err(err)
    }

    async fn update(&self, cid: &str, resources: &str) -> RpcResult<()> {
        let req = UpdateContainerRequest {
            container_id: cid.into(),
            resources_json: resources.as_bytes().to_vec(),
            ..Default::default()
        };
        self.agent()
            .update_container(isola_agent_client::context(RPC), &req)
            .await
            .map(drop)
            .map_err(err)
    }

    async fn processes(&self, cid: &str) -> RpcResult<Vec<ProcessInfo>> {
        let req = ListProcessesRequest {
            container_id: cid.into(),
            ..Default::default()
        };
        self.agent()
            .list_processes(isola_agent_client::context(RPC), &req)
            .await
            .map(|r| r.processes)
            .map_err(err)
    }

    async fn oom_event(&self, wait: Duration) -> RpcResult<String> {
        self.agent()
            .get_oom_event(isola_agent_client::context(wait), &Empty::default())
            .await
            .map(|e| e.container_id)
            .map_err(err)
    }

    /// Runs `args` as exec `eid` in `cid` and returns its stdout once it exited with 0.
    async fn exec_output(&self, cid: &str, eid: &str, args: &[&str]) -> String {
        self.exec(cid, eid, args, stdio(false, true, false, false))
            .await
            .expect("ExecProcess");
        let out = self.stream(cid, eid, Stream::STDOUT).await;
        assert_eq!(self.wait(cid, eid).await.unwrap(), 0, "{args:?}");
        read_all(out).await
    }
}

/// Reads whatever arrives on `s` within `idle` of the last byte (nothing: empty).
async fn drain(s: &mut Box<dyn Io>, idle: Duration) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(idle, s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_task_processes_stats_update_pause_and_state() {
    let pod = Pod::boot("t-task").await;

    // A ticking container with a memory limit, able to read its own cgroup files.
    pod.rootfs("tick");
    let spec = spec_json_with(
        "tick",
        &[
            "sh",
            "-c",
            "i=0; while true; do i=$((i+1)); echo t$i; sleep 0.2; done",
        ],
        &SpecExtras {
            resources: Some(format!(r#"{{"memory": {{"limit": {}}}}}"#, 64 * MIB)),
            cgroupns: true,
        },
    );
    pod.create_spec("tick", &spec, stdio(false, true, false, false))
        .await
        .expect("CreateContainer");
    let created = pod.state("tick").await.unwrap();
    assert_eq!(created.status.enum_value(), Ok(Status::CREATED));
    assert!(created.pid > 0, "{created:?}");
    // Only a running container can be paused.
    let early = pod.pause("tick").await.unwrap_err();
    assert_eq!(code(&early), "FAILED_PRECONDITION", "{early}");
    let mut out = pod.stream("tick", "", Stream::STDOUT).await;
    pod.start("tick").await.unwrap();
    assert_eq!(pod.status("tick").await, Status::RUNNING);
    read_until(&mut out, "t2\n").await;

    // ListProcesses: the init (its pid as GetContainerState says, empty exec id), an exec
    // under its id, each with its command line.
    pod.exec(
        "tick",
        "nap",
        &["sleep", "30"],
        stdio(false, false, false, false),
    )
    .await
    .unwrap();
    let ps = pod.processes("tick").await.expect("ListProcesses");
    let init = ps
        .iter()
        .find(|p| p.pid == created.pid)
        .unwrap_or_else(|| panic!("the init in {ps:?}"));
    assert_eq!(init.exec_id, "");
    assert!(init.command.starts_with("sh -c i=0;"), "{init:?}");
    let nap = ps
        .iter()
        .find(|p| p.exec_id == "nap")
        .unwrap_or_else(|| panic!("the exec in {ps:?}"));
    assert_eq!(nap.command, "sleep 30");
    assert_eq!(code(&pod.processes("nope").await.unwrap_err()), "NOT_FOUND");

    // StatsContainer from the cgroup; no pids limit is u64::MAX.
    let s = pod.stats("tick").await.expect("StatsContainer");
    assert!(s.memory.usage > 0, "{s:?}");
    assert_eq!(s.memory.usage_limit, 64 * MIB);
    assert!(s.pids.current >= 2, "{s:?}");
    assert_eq!(s.pids.limit, u64::MAX);
    assert!(s.cpu.usage_usec > 0, "{s:?}");
    assert_eq!(s.memory.oom_kill_events, 0);

    // UpdateContainer: what the stats and the container's own cgroup files then say.
    pod.update(
        "tick",
        &format!(
            r#"{{"cpu": {{"shares": 512, "quota": 20000, "period": 100000}},
                "memory": {{"limit": {}, "reservation": {}}}, "pids": {{"limit": 64}}}}"#,
            96 * MIB,
            16 * MIB
        ),
    )
    .await
    .expect("UpdateContainer");
    let s = pod.stats("tick").await.unwrap();
    assert_eq!(s.memory.usage_limit, 96 * MIB);
    assert_eq!(s.pids.limit, 64);
    let files = pod
        .exec_output(
            "tick",
            "cg",
            &[
                "cat",
                "/sys/fs/cgroup/cpu.max",
                "/sys/fs/cgroup/cpu.weight",
                "/sys/fs/cgroup/memory.low",
                "/sys/fs/cgroup/pids.max",
            ],
        )
        .await;
    // runc's shares -> weight mapping: 512 shares are weight 59.
    assert_eq!(files, format!("20000 100000\n59\n{}\n64\n", 16 * MIB));
    let bad = pod.update("tick", "{nope").await.unwrap_err();
    assert_eq!(code(&bad), "INVALID_ARGUMENT", "{bad}");
    let bad = pod
        .update("tick", r#"{"memory": {"limit": 1000000, "swap": 10}}"#)
        .await
        .unwrap_err();
    assert_eq!(code(&bad), "INVALID_ARGUMENT", "{bad}");

    // Pause: the ticks stop, execs are refused, stats still answer; resume: they go on.
    pod.pause("tick").await.expect("PauseContainer");
    assert_eq!(pod.status("tick").await, Status::PAUSED);
    drain(&mut out, Duration::from_millis(500)).await;
    let silent = drain(&mut out, Duration::from_millis(1500)).await;
    assert_eq!(silent, "", "a paused container prints nothing");
    let again = pod.pause("tick").await.unwrap_err();
    assert_eq!(code(&again), "FAILED_PRECONDITION", "{again}");
    let exec = pod
        .exec(
            "tick",
            "frozen",
            &["true"],
            stdio(false, false, false, false),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&exec), "FAILED_PRECONDITION", "{exec}");
    pod.stats("tick")
        .await
        .expect("stats of a paused container");
    pod.resume("tick").await.expect("ResumeContainer");
    assert_eq!(pod.status("tick").await, Status::RUNNING);
    let more = read_until(&mut out, "\n").await;
    assert!(more.starts_with('t'), "ticks after resume: {more:?}");
    let again = pod.resume("tick").await.unwrap_err();
    assert_eq!(code(&again), "FAILED_PRECONDITION", "{again}");

    // A paused container is removed (killed) without waiting out the timeout.
    pod.pause("tick").await.unwrap();
    let started = std::time::Instant::now();
    pod.remove("tick", 30)
        .await
        .expect("removing a paused container");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(code(&pod.state("tick").await.unwrap_err()), "NOT_FOUND");
    assert_eq!(code(&pod.pause("tick").await.unwrap_err()), "NOT_FOUND");

    // A stopped container says so, with its exit.
    pod.rootfs("done");
    pod.create(
        "done",
        &["sh", "-c", "exit 4"],
        stdio(false, false, false, false),
    )
    .await
    .unwrap();
    pod.start("done").await.unwrap();
    assert_eq!(pod.wait("done", "").await.unwrap(), 4);
    let st = pod.state("done").await.unwrap();
    assert_eq!(st.status.enum_value(), Ok(Status::STOPPED));
    assert_eq!(st.exit_status, 4);
    assert!(st.exited_at_unix_nanos > 0);
    let stopped = pod
        .update("done", r#"{"pids": {"limit": 5}}"#)
        .await
        .unwrap_err();
    assert_eq!(code(&stopped), "FAILED_PRECONDITION", "{stopped}");
    pod.remove("done", 0).await.unwrap();

    // OnlineCPUMem with nothing hot-plugged succeeds.
    pod.agent()
        .online_cpu_mem(
            isola_agent_client::context(RPC),
            &OnlineCPUMemRequest::default(),
        )
        .await
        .expect("OnlineCPUMem");

    pod.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_oom_kills_are_reported_and_queued() {
    let pod = Pod::boot("t-oom").await;
    // tail keeps its whole input (it has no newline) until the 16 MiB limit kills it.
    let hog = |cid: &str| {
        spec_json_with(
            cid,
            &["sh", "-c", "head -c 200m /dev/zero | tail"],
            &SpecExtras {
                resources: Some(format!(r#"{{"memory": {{"limit": {}}}}}"#, 16 * MIB)),
                cgroupns: false,
            },
        )
    };
    // Somebody is already waiting when the first OOM kill happens.
    let pending = {
        let agent = pod.agent().clone();
        tokio::spawn(async move {
            agent
                .get_oom_event(isola_agent_client::context(RPC * 2), &Empty::default())
                .await
        })
    };
    for cid in ["hog1", "hog2"] {
        pod.rootfs(cid);
        pod.create_spec(cid, &hog(cid), stdio(false, false, false, false))
            .await
            .unwrap();
        pod.start(cid).await.unwrap();
        assert_eq!(pod.wait(cid, "").await.unwrap(), 137, "{cid} is OOM-killed");
    }
    let first = pending.await.unwrap().expect("GetOOMEvent");
    assert_eq!(first.container_id, "hog1");
    // The second happened while nobody was waiting; removing the container does not lose it.
    let s = pod.stats("hog2").await.unwrap();
    assert!(s.memory.oom_kill_events >= 1, "{s:?}");
    pod.remove("hog2", 0).await.unwrap();
    assert_eq!(pod.oom_event(RPC).await.unwrap(), "hog2");
    // Nothing else: the long poll answers before the caller's timeout.
    let none = pod.oom_event(Duration::from_secs(2)).await.unwrap_err();
    assert_eq!(code(&none), "DEADLINE_EXCEEDED", "{none}");
    pod.remove("hog1", 0).await.unwrap();
    pod.finish().await;
}
