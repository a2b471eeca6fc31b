//! The task service's state machine against a fake agent and a fake VM.

use std::sync::atomic::Ordering;
use std::time::Duration;

use containerd_shim_protos::topics::*;
use containerd_shim_protos::types::task::Status as TaskStatus;
use ttrpc::Code;

use crate::error::ShimError;
use crate::fake::Env;
use crate::persist::{BundleRecord, SandboxRecord};
use crate::stdio::StdioPaths;

const NONE: &str = "{}";

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

/// Containers that name sandbox "pod" (itself the first of them).
const POD: &str = r#"{"io.kubernetes.cri.sandbox-id":"pod"}"#;

/// Creates and starts `ids` in pod "pod", in order.
async fn running_in_pod(env: &Env, ids: &[&str]) {
    for id in ids {
        env.service.create(env.request(id, POD)).await.unwrap();
        env.service.start(id, "").await.unwrap();
    }
}

/// Shutdown with no container left: the shim exits.
async fn shut_down(env: &Env) {
    env.service.shutdown(false).await.unwrap();
    tokio::time::timeout(Duration::from_secs(1), env.exit.wait())
        .await
        .unwrap();
}

#[tokio::test]
async fn create_start_wait_delete() {
    let env = Env::new();
    let s = &env.service;
    let req = env.request("c1", NONE);
    let bundle = std::path::PathBuf::from(&req.bundle);
    let pid = s.create(req).await.unwrap();
    assert_eq!(pid, 4242);
    assert_eq!(
        s.state("c1", "").unwrap().status.enum_value(),
        Ok(TaskStatus::CREATED)
    );
    let agent = env.agent();
    let sandbox = agent.sandbox.lock().unwrap().clone().unwrap();
    assert_eq!(sandbox.sandbox_id, "c1");
    assert_eq!(sandbox.hostname, "h-c1");
    assert_eq!(sandbox.storages[0].driver, "virtiofs");
    assert_eq!(sandbox.storages[0].source, isola_sandbox::SHARED_FS_TAG);
    assert_eq!(sandbox.storages[0].mount_point, "/run/isola/shared");
    let created = agent.containers.lock().unwrap()["c1"].clone();
    let spec: serde_json::Value = serde_json::from_slice(&created.oci_spec_json).unwrap();
    assert_eq!(spec["root"]["path"], "/run/isola/shared/c1/rootfs");
    assert_eq!(BundleRecord::load(&bundle).unwrap().sandbox_id, "c1");
    let record = SandboxRecord::path(&env.tmp.path().join("state"), "c1");
    assert!(record.exists());
    // What `isola ps` and `isola monitor` read: the VM as booted and how long that took.
    let rec = SandboxRecord::load(&record).unwrap();
    assert_eq!(rec.hypervisor, "qemu");
    assert!(rec.vcpus >= 1 && rec.memory_mib >= 128, "{rec:?}");
    assert_eq!(
        (rec.vmm_ready_ms, rec.agent_ready_ms),
        (Some(12), Some(345))
    );
    assert!(rec.created_unix > 1_600_000_000);

    assert_eq!(s.start("c1", "").await.unwrap(), 4242);
    assert_eq!(
        s.state("c1", "").unwrap().status.enum_value(),
        Ok(TaskStatus::RUNNING)
    );
    agent.exit("c1", "", 3);
    let exit = s.wait("c1", "").await.unwrap();
    assert_eq!(exit.status, 3);
    let st = s.state("c1", "").unwrap();
    assert_eq!(
        (st.status.enum_value(), st.exit_status),
        (Ok(TaskStatus::STOPPED), 3)
    );

    // Its only container has exited, so the pod has ended: the VM stops before any Delete.
    eventually("the VM stopped", || env.vm().stopped()).await;
    let (pid, exit) = s.delete("c1", "").await.unwrap();
    assert_eq!((pid, exit.status), (4242, 3));
    assert_eq!(
        env.events.topics(),
        [
            TASK_CREATE_EVENT_TOPIC,
            TASK_START_EVENT_TOPIC,
            TASK_EXIT_EVENT_TOPIC,
            TASK_DELETE_EVENT_TOPIC
        ]
    );
    let calls = agent.calls();
    for expected in [
        "CreateSandbox c1",
        "CreateContainer c1",
        "StartContainer c1",
    ] {
        assert!(
            calls.iter().any(|c| c == expected),
            "{expected} in {calls:?}"
        );
    }
    // The VM took the container's guest side with it; the records are gone with the container.
    assert!(
        !calls.iter().any(|c| c.starts_with("RemoveContainer")),
        "{calls:?}"
    );
    assert!(!record.exists());
    assert!(!bundle.join(crate::persist::BUNDLE_RECORD).exists());
    assert_eq!(code(s.state("c1", "")), Code::NOT_FOUND);
}

#[tokio::test]
async fn one_vm_per_sandbox() {
    let env = Env::new();
    let s = &env.service;
    let pod = r#"{"io.kubernetes.cri.sandbox-id":"pod"}"#;
    s.create(env.request("pod", pod)).await.unwrap();
    s.create(env.request("app", pod)).await.unwrap();
    assert_eq!(env.factory.boots.load(Ordering::SeqCst), 1);
    // A container of another pod cannot join this shim's VM.
    let other = env.request("x", r#"{"io.kubernetes.cri.sandbox-id":"other"}"#);
    assert_eq!(code(s.create(other).await), Code::FAILED_PRECONDITION);
    s.delete("app", "").await.unwrap();
    assert!(
        !env.vm().stopped(),
        "the pod's sandbox container is still there"
    );
    s.delete("pod", "").await.unwrap();
    assert!(env.vm().stopped());
}

#[tokio::test]
async fn error_codes() {
    let env = Env::new();
    let s = &env.service;
    // Unknown container or exec.
    assert_eq!(code(s.state("nope", "")), Code::NOT_FOUND);
    assert_eq!(code(s.start("nope", "").await), Code::NOT_FOUND);
    assert_eq!(code(s.kill("nope", "", 9, false).await), Code::NOT_FOUND);
    assert_eq!(code(s.wait("nope", "").await), Code::NOT_FOUND);
    assert_eq!(code(s.delete("nope", "").await), Code::NOT_FOUND);
    s.create(env.request("c1", NONE)).await.unwrap();
    assert_eq!(code(s.state("c1", "e1")), Code::NOT_FOUND);
    assert_eq!(code(s.start("c1", "e1").await), Code::NOT_FOUND);
    // Duplicate.
    assert_eq!(
        code(s.create(env.request("c1", NONE)).await),
        Code::ALREADY_EXISTS
    );
    // Start of started, delete of running.
    s.start("c1", "").await.unwrap();
    assert_eq!(code(s.start("c1", "").await), Code::FAILED_PRECONDITION);
    assert_eq!(code(s.delete("c1", "").await), Code::FAILED_PRECONDITION);
    // Malformed requests.
    let mut bad = env.request("c2", NONE);
    bad.id = "../evil".into();
    assert_eq!(code(s.create(bad).await), Code::INVALID_ARGUMENT);
    let mut bad = env.request("c3", NONE);
    std::fs::write(
        std::path::Path::new(&bad.bundle).join("config.json"),
        "{not json",
    )
    .unwrap();
    assert_eq!(code(s.create(bad.clone()).await), Code::INVALID_ARGUMENT);
    bad.bundle = env.tmp.path().join("no-bundle").display().to_string();
    assert_eq!(code(s.create(bad).await), Code::INVALID_ARGUMENT);
    let norootfs = env.request("c4", NONE);
    std::fs::remove_dir(std::path::Path::new(&norootfs.bundle).join("rootfs")).unwrap();
    let err = s.create(norootfs).await.unwrap_err();
    assert_eq!(err.code(), Code::INVALID_ARGUMENT);
    assert!(err.to_string().contains("no rootfs"), "{err}");
    let mut ckpt = env.request("c5", NONE);
    ckpt.checkpoint = "/ckpt".into();
    assert_eq!(code(s.create(ckpt).await), Code::UNIMPLEMENTED);
    // The failed creates left nothing.
    for id in ["c2", "c3", "c4", "c5"] {
        assert_eq!(code(s.state(id, "")), Code::NOT_FOUND, "{id}");
    }
    // Exec errors.
    let json = br#"{"user":{"uid":0,"gid":0},"args":["sh"],"cwd":"/"}"#.to_vec();
    s.exec("c1", "e1", StdioPaths::default(), json.clone())
        .unwrap();
    assert!(matches!(
        s.exec("c1", "e1", StdioPaths::default(), json.clone()),
        Err(ShimError::AlreadyExists(_))
    ));
    assert!(matches!(
        s.exec("c1", "e2", StdioPaths::default(), b"{".to_vec()),
        Err(ShimError::InvalidArgument(_))
    ));
    assert!(matches!(
        s.exec("nope", "e3", StdioPaths::default(), json),
        Err(ShimError::NotFound(_))
    ));
    assert_eq!(
        code(s.kill("c1", "e1", 9, false).await),
        Code::NOT_FOUND,
        "exec not started"
    );
}

#[tokio::test]
async fn agent_codes_are_preserved() {
    let env = Env::new();
    let s = &env.service;
    s.create(env.request("c1", NONE)).await.unwrap();
    env.agent()
        .fail("StartContainer", Code::PERMISSION_DENIED, "seccomp says no");
    let err = s.start("c1", "").await.unwrap_err();
    assert_eq!(err.code(), Code::PERMISSION_DENIED);
    assert!(err.to_string().contains("seccomp says no"), "{err}");
    // A failed start can be retried.
    assert_eq!(
        s.state("c1", "").unwrap().status.enum_value(),
        Ok(TaskStatus::CREATED)
    );
    env.agent()
        .fail("CreateContainer", Code::INVALID_ARGUMENT, "bad spec");
    let same_pod = r#"{"io.kubernetes.cri.sandbox-id":"c1"}"#;
    let err = s.create(env.request("c2", same_pod)).await.unwrap_err();
    assert_eq!(err.code(), Code::INVALID_ARGUMENT);
    assert!(env.vm().was_unshared("c2"));
    assert!(!env.vm().stopped(), "c1 still uses the VM");
}

#[tokio::test]
async fn a_failed_first_create_stops_the_vm() {
    let env = Env::new();
    env.agent()
        .fail("CreateContainer", Code::INTERNAL, "youki failed");
    let err = env
        .service
        .create(env.request("c1", NONE))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("youki failed"), "{err}");
    assert!(env.vm().stopped());
    assert!(!SandboxRecord::path(&env.tmp.path().join("state"), "c1").exists());
    // A boot failure is reported with what to do.
    *env.factory.fail.lock().unwrap() = Some("no kernel".into());
    let err = env
        .service
        .create(env.request("c2", NONE))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::INTERNAL);
    assert!(err.to_string().contains("no kernel"), "{err}");
}

#[tokio::test]
async fn kill_forwards_the_signal() {
    let env = Env::new();
    let s = &env.service;
    s.create(env.request("c1", NONE)).await.unwrap();
    s.start("c1", "").await.unwrap();
    s.kill("c1", "", 9, false).await.unwrap();
    assert_eq!(s.wait("c1", "").await.unwrap().status, 137);
    assert!(env
        .agent()
        .calls()
        .contains(&"SignalProcess c1/ 9".to_string()));
    // Killing an exited process: NotFound, which containerd ignores.
    assert_eq!(code(s.kill("c1", "", 9, false).await), Code::NOT_FOUND);
}

#[tokio::test]
async fn vm_death_exits_every_process() {
    let env = Env::new();
    let s = &env.service;
    let pod = r#"{"io.kubernetes.cri.sandbox-id":"pod"}"#;
    s.create(env.request("pod", pod)).await.unwrap();
    s.create(env.request("app", pod)).await.unwrap();
    s.start("pod", "").await.unwrap();
    s.start("app", "").await.unwrap();
    let json = br#"{"user":{"uid":0,"gid":0},"args":["sh"],"cwd":"/"}"#.to_vec();
    s.exec("app", "e1", StdioPaths::default(), json).unwrap();
    s.start("app", "e1").await.unwrap();

    env.vm().kill();
    for (id, exec) in [("pod", ""), ("app", ""), ("app", "e1")] {
        assert_eq!(s.wait(id, exec).await.unwrap().status, 255, "{id}/{exec}");
    }
    eventually("the sandbox cleanup", || env.vm().stopped()).await;
    let exits = env.events.exits();
    assert_eq!(exits.len(), 3, "{exits:?}");
    assert!(exits.iter().all(|e| e.exit_status == 255));
    let mut ids: Vec<_> = exits
        .iter()
        .map(|e| (e.container_id.clone(), e.id.clone()))
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            ("app".into(), "app".into()),
            ("app".into(), "e1".into()),
            ("pod".into(), "pod".into())
        ]
    );
    // Calls on the dead sandbox fail cleanly; deletes work without the agent.
    assert_eq!(code(s.kill("app", "", 9, false).await), Code::NOT_FOUND);
    assert_eq!(
        code(s.create(env.request("late", pod)).await),
        Code::FAILED_PRECONDITION
    );
    s.delete("app", "e1").await.unwrap();
    s.delete("app", "").await.unwrap();
    s.delete("pod", "").await.unwrap();
    assert!(!env
        .agent()
        .calls()
        .iter()
        .any(|c| c.starts_with("RemoveContainer")));
    shut_down(&env).await;
}

#[tokio::test]
async fn exec_lifecycle() {
    let env = Env::new();
    let s = &env.service;
    s.create(env.request("c1", NONE)).await.unwrap();
    let json = br#"{"user":{"uid":0,"gid":0},"args":["sh"],"cwd":"/"}"#.to_vec();
    assert_eq!(
        code(
            s.exec("c1", "e1", StdioPaths::default(), json.clone())
                .map(|_| ())
        ),
        Code::FAILED_PRECONDITION,
        "exec needs a running container"
    );
    s.start("c1", "").await.unwrap();
    s.exec("c1", "e1", StdioPaths::default(), json).unwrap();
    assert_eq!(
        s.state("c1", "e1").unwrap().status.enum_value(),
        Ok(TaskStatus::CREATED)
    );
    s.start("c1", "e1").await.unwrap();
    assert_eq!(code(s.delete("c1", "e1").await), Code::FAILED_PRECONDITION);
    env.agent().exit("c1", "e1", 7);
    assert_eq!(s.wait("c1", "e1").await.unwrap().status, 7);
    assert_eq!(s.delete("c1", "e1").await.unwrap().1.status, 7);
    assert_eq!(code(s.state("c1", "e1")), Code::NOT_FOUND);
    let exits = env.events.exits();
    assert_eq!(
        (exits[0].container_id.as_str(), exits[0].id.as_str()),
        ("c1", "e1")
    );
    assert_eq!(
        env.events.topics(),
        [
            TASK_CREATE_EVENT_TOPIC,
            TASK_START_EVENT_TOPIC,
            TASK_EXEC_ADDED_EVENT_TOPIC,
            TASK_EXEC_STARTED_EVENT_TOPIC,
            TASK_EXIT_EVENT_TOPIC
        ]
    );
    let created = env.agent().calls();
    assert!(
        created.contains(&"ExecProcess c1/e1".to_string()),
        "{created:?}"
    );
}

#[tokio::test]
async fn shutdown_waits_for_the_last_container() {
    let env = Env::new();
    let s = &env.service;
    s.create(env.request("c1", NONE)).await.unwrap();
    s.shutdown(false).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(50), env.exit.wait())
            .await
            .is_err()
    );
    assert!(!env.vm().stopped());
    s.shutdown(true).await.unwrap();
    tokio::time::timeout(Duration::from_secs(1), env.exit.wait())
        .await
        .unwrap();
    assert!(env.vm().stopped());
}

#[tokio::test]
async fn pids_and_connect() {
    let env = Env::new();
    let s = &env.service;
    s.create(env.request("c1", NONE)).await.unwrap();
    assert_eq!(s.pids("c1").await.unwrap()[0].pid, 1, "the guest pid");
    env.agent()
        .fail("ListProcesses", Code::UNIMPLEMENTED, "later");
    assert_eq!(s.pids("c1").await.unwrap()[0].pid, 4242);
    assert_eq!(s.task_pid("c1").unwrap(), 4242);
}

#[tokio::test]
async fn binds_reach_the_sandbox() {
    let env = Env::new();
    let req = env.request("c1", NONE);
    let bundle = std::path::Path::new(&req.bundle);
    let vol = env.tmp.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    spec["mounts"] = serde_json::json!([
        {"destination": "/data", "type": "bind", "source": vol, "options": ["rbind", "ro"]}
    ]);
    std::fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
    env.service.create(req).await.unwrap();
    let binds = env.vm().binds.lock().unwrap().clone();
    assert_eq!(binds.len(), 1);
    assert!(binds[0].readonly && binds[0].recursive);
    let created = env.agent().containers.lock().unwrap()["c1"].clone();
    let guest: serde_json::Value = serde_json::from_slice(&created.oci_spec_json).unwrap();
    assert_eq!(
        guest["mounts"][0]["source"],
        "/run/isola/shared/c1/mounts/0"
    );
}

#[tokio::test]
async fn killing_a_created_container_reports_its_exit() {
    let env = Env::new();
    let s = &env.service;
    s.create(env.request("c1", NONE)).await.unwrap();
    s.kill("c1", "", 9, false).await.unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(5), s.wait("c1", ""))
        .await
        .expect("the exit of a killed created container is reported")
        .unwrap();
    assert_eq!(exit.status, 137);
    assert_eq!(env.events.exits().len(), 1);
    s.delete("c1", "").await.unwrap();
}

#[tokio::test]
async fn the_pod_sizes_its_vm() {
    let env = Env::new();
    let pod = r#"{"io.kubernetes.cri.container-type":"sandbox","io.kubernetes.cri.sandbox-id":"pod",
        "io.kubernetes.cri.sandbox-cpu-quota":"200000","io.kubernetes.cri.sandbox-cpu-period":"100000",
        "io.kubernetes.cri.sandbox-memory":"536870912"}"#;
    env.service.create(env.request("pod", pod)).await.unwrap();
    let booted = env.factory.booted_with.lock().unwrap().clone().unwrap();
    let overhead = isola_config::PodConfig::default();
    assert_eq!(booted.hypervisor.vcpus, 2 + overhead.overhead_vcpus);
    assert_eq!(
        booted.hypervisor.memory_mib,
        512 + overhead.overhead_memory_mib
    );
}

#[tokio::test]
async fn a_refused_annotation_fails_the_pod_before_any_vm_boots() {
    let env = Env::new();
    let not_enabled =
        r#"{"io.kubernetes.cri.sandbox-id":"pod","io.isola.config.hypervisor.vcpus":"4"}"#;
    let err = env
        .service
        .create(env.request("pod", not_enabled))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FAILED_PRECONDITION);
    assert!(err.to_string().contains("pod.enable_annotations"), "{err}");
    let unknown = r#"{"io.kubernetes.cri.sandbox-id":"pod","io.isola.config.qemu":"x"}"#;
    assert_eq!(
        code(env.service.create(env.request("pod", unknown)).await),
        Code::INVALID_ARGUMENT
    );
    assert_eq!(env.factory.boots.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn delete_goes_on_when_the_agent_is_unreachable() {
    let env = Env::new();
    let s = &env.service;
    running_in_pod(&env, &["pod", "app"]).await;
    env.agent().exit("app", "", 3);
    assert_eq!(s.wait("app", "").await.unwrap().status, 3);
    // A guest agent answering with an error keeps the container (Delete can be retried).
    env.agent()
        .fail("RemoveContainer", Code::INTERNAL, "umount busy");
    assert_eq!(code(s.delete("app", "").await), Code::INTERNAL);
    assert!(s.state("app", "").is_ok());
    // The agent's connection gone while the VMM still runs: the exited container is deleted
    // on the host side, nothing of it is left, and the VM stays for the pod's sandbox.
    env.agent().vm_died();
    let (_, exit) = s.delete("app", "").await.unwrap();
    assert_eq!(exit.status, 3);
    assert_eq!(code(s.state("app", "")), Code::NOT_FOUND);
    assert!(env.vm().was_unshared("app"));
    assert!(env.events.topics().contains(&TASK_DELETE_EVENT_TOPIC));
}

#[tokio::test]
async fn the_vm_stops_once_the_pod_has_ended() {
    let env = Env::new();
    let s = &env.service;
    running_in_pod(&env, &["pod", "app", "job"]).await;
    // An app container ending leaves the pod running; deleting it removes it in the guest.
    env.agent().exit("job", "", 0);
    assert_eq!(s.wait("job", "").await.unwrap().status, 0);
    s.delete("job", "").await.unwrap();
    assert!(env
        .agent()
        .calls()
        .contains(&"RemoveContainer job".to_string()));
    assert!(env.vm().was_unshared("job"));
    running_in_pod(&env, &["job"]).await;
    env.agent().exit("job", "", 0);
    assert_eq!(s.wait("job", "").await.unwrap().status, 0);
    // The sandbox container ending first (pause crashed) leaves the VM to the running app.
    env.agent().exit("pod", "", 2);
    assert_eq!(s.wait("pod", "").await.unwrap().status, 2);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!env.vm().stopped(), "app still runs in the VM");
    assert_eq!(
        s.state("app", "").unwrap().status.enum_value(),
        Ok(TaskStatus::RUNNING)
    );
    // A pod whose sandbox container has exited is stopped: nothing more is created in it.
    let err = s.create(env.request("late", POD)).await.unwrap_err();
    assert_eq!(err.code(), Code::FAILED_PRECONDITION);
    assert!(err.to_string().contains("create the pod again"), "{err}");
    // The last process ends: the VM goes at once, though no container was deleted.
    s.kill("app", "", 15, false).await.unwrap();
    assert_eq!(s.wait("app", "").await.unwrap().status, 128 + 15);
    eventually("the VM stopped", || env.vm().stopped()).await;
    for id in ["app", "job", "pod"] {
        assert_eq!(
            s.state(id, "").unwrap().status.enum_value(),
            Ok(TaskStatus::STOPPED),
            "{id}"
        );
    }
    let exits = env.events.exits();
    let ids: Vec<&str> = exits.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(
        ids,
        ["job", "job", "pod", "app"],
        "one exit per process: {exits:?}"
    );
    s.delete("job", "").await.unwrap();
    s.delete("app", "").await.unwrap();
    s.delete("pod", "").await.unwrap();
    shut_down(&env).await;
}

#[tokio::test]
async fn a_pod_with_a_created_container_keeps_its_vm() {
    let env = Env::new();
    let s = &env.service;
    running_in_pod(&env, &["pod"]).await;
    s.create(env.request("app", POD)).await.unwrap();
    env.agent().exit("pod", "", 0);
    assert_eq!(s.wait("pod", "").await.unwrap().status, 0);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!env.vm().stopped(), "app is created, not ended");
    // Deleting the container that kept the pod alive ends it.
    s.delete("app", "").await.unwrap();
    eventually("the VM stopped", || env.vm().stopped()).await;
    assert!(s.state("pod", "").is_ok());
}
