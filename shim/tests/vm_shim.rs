//! The task service on a real pod VM (no containerd): a container whose rootfs and volume are
//! mounted into the shared directory after virtiofsd started runs and sees them (mount
//! propagation), its output arrives, and everything is gone afterwards; and a VM that dies
//! takes its processes with it (status 255) and leaves nothing behind.
//!
//! Named `vm_*` so nextest runs them one at a time. Needs `make guest` and root.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::ExitSignal;
use containerd_shim_isola_v2::events::EventSink;
use containerd_shim_isola_v2::options::RuntimeOptions;
use containerd_shim_isola_v2::sandbox::VmFactory;
use containerd_shim_isola_v2::service::Service;
use containerd_shim_protos::shim::shim::CreateTaskRequest;
use isola_tests::{processes_mentioning, TestEnv};
use protobuf::MessageDyn;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

#[derive(Default)]
struct Events(Mutex<Vec<&'static str>>);

#[async_trait]
impl EventSink for Events {
    fn publish(&self, topic: &'static str, _event: Box<dyn MessageDyn>) {
        self.0.lock().unwrap().push(topic);
    }
    async fn flush(&self) {}
}

fn service(env: &TestEnv, events: Arc<Events>) -> Arc<Service> {
    let config = env.config.clone();
    Service::new(
        "test",
        Arc::new(VmFactory::real()),
        events,
        Arc::new(move |_o: &RuntimeOptions| Ok(config.clone())),
        Arc::new(ExitSignal::default()),
    )
}

/// A bundle whose rootfs is busybox (static) and whose spec runs `args` with a bind of `volume`
/// at /data.
fn bundle(dir: &Path, args: &[&str], volume: &Path) -> PathBuf {
    let bundle = dir.join("bundle");
    let bin = bundle.join("rootfs/bin");
    std::fs::create_dir_all(&bin).unwrap();
    for d in ["proc", "dev", "sys", "tmp", "data"] {
        std::fs::create_dir_all(bundle.join("rootfs").join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", bin.join("busybox")).expect("busybox-static (/bin/busybox)");
    for applet in ["sh", "cat", "sleep", "ls"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"user": {"uid": 0, "gid": 0}, "args": args, "env": ["PATH=/bin"], "cwd": "/"},
        "root": {"path": "rootfs"},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/data", "type": "bind", "source": volume, "options": ["rbind", "ro"]}
        ],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}]}
    });
    std::fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
    bundle
}

fn fifo(dir: &Path, name: &str) -> String {
    let p = dir.join(name);
    nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    p.display().to_string()
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let d = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&d))
        .map(str::to_string)
        .collect()
}

fn assert_nothing_left(env: &TestEnv) {
    let state = env.dir.path();
    let procs = processes_mentioning(&state.to_string_lossy());
    assert!(procs.is_empty(), "processes left: {procs:?}");
    assert!(
        mounts_under(state).is_empty(),
        "mounts left: {:?}",
        mounts_under(state)
    );
    for sub in ["vm", "shared"] {
        if let Ok(entries) = std::fs::read_dir(state.join(sub)) {
            let left: Vec<_> = entries.flatten().map(|e| e.path()).collect();
            assert!(left.is_empty(), "left in {sub}: {left:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_shim_runs_a_container_on_late_mounts() {
    let env = TestEnv::new();
    let work = env.dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let volume = work.join("volume");
    std::fs::create_dir(&volume).unwrap();
    std::fs::write(volume.join("greeting"), "hello from the host\n").unwrap();
    let bundle = bundle(
        &work,
        &["sh", "-c", "cat /data/greeting; ls /bin/busybox"],
        &volume,
    );
    let stdout = fifo(&work, "stdout");
    let reader = {
        let path = stdout.clone();
        tokio::spawn(async move {
            let mut r = pipe::OpenOptions::new().open_receiver(&path).unwrap();
            let mut out = String::new();
            r.read_to_string(&mut out).await.unwrap();
            out
        })
    };
    let events = Arc::new(Events::default());
    let svc = service(&env, events.clone());
    let req = CreateTaskRequest {
        id: "c1".into(),
        bundle: bundle.display().to_string(),
        stdout,
        ..Default::default()
    };
    svc.create(req).await.expect("create");
    svc.start("c1", "").await.expect("start");
    let exit = tokio::time::timeout(Duration::from_secs(60), svc.wait("c1", ""))
        .await
        .expect("the container exits")
        .unwrap();
    svc.delete("c1", "").await.expect("delete");
    let out = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.status, 0, "output: {out}");
    // The rootfs (a bind made after virtiofsd started) and the volume reached the guest.
    assert_eq!(out, "hello from the host\n/bin/busybox\n");
    assert_eq!(
        *events.0.lock().unwrap(),
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exit",
            "/tasks/delete"
        ]
    );
    assert_nothing_left(&env);
    assert!(volume.join("greeting").exists(), "the volume is untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_shim_reports_a_dead_vm() {
    let env = TestEnv::new();
    let work = env.dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let volume = work.join("volume");
    std::fs::create_dir(&volume).unwrap();
    let bundle = bundle(&work, &["sleep", "1000"], &volume);
    let events = Arc::new(Events::default());
    let svc = service(&env, events.clone());
    let req = CreateTaskRequest {
        id: "c1".into(),
        bundle: bundle.display().to_string(),
        ..Default::default()
    };
    let pid = svc.create(req).await.expect("create");
    svc.start("c1", "").await.expect("start");
    assert!(!mounts_under(env.dir.path()).is_empty());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("killing the VMM");
    let exit = tokio::time::timeout(Duration::from_secs(30), svc.wait("c1", ""))
        .await
        .expect("the exit is reported")
        .unwrap();
    assert_eq!(exit.status, 255);
    // The cleanup runs right after the exit is reported.
    for _ in 0..100 {
        if mounts_under(env.dir.path()).is_empty()
            && processes_mentioning(&env.dir.path().to_string_lossy()).is_empty()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_nothing_left(&env);
    svc.delete("c1", "")
        .await
        .expect("delete after the VM died");
    assert!(events.0.lock().unwrap().contains(&"/tasks/exit"));
}
