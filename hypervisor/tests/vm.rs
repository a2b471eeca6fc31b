//! Real-VM tests: boot a guest under QEMU (TCG unless KVM is usable) with virtio-fs and
//! vsock helpers, and check lifecycle and cleanup.
//!
//! The guest images come from `ISOLA_TEST_KERNEL` / `ISOLA_TEST_INITRD`, defaulting to
//! `build/guest/{vmlinux,initrd.img}` in the workspace. A missing image fails the test with
//! a message saying so. The tests are named `vm_*` so the nextest configuration can run them
//! in a serial group (each boots a VM; on 2 cores under TCG they would starve each other).
//!
//! The binaries are found on PATH unless overridden: `ISOLA_TEST_QEMU`,
//! `ISOLA_TEST_VIRTIOFSD`, `ISOLA_TEST_VHOST_VSOCK`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use isola_hypervisor::qemu::QemuHypervisor;
use isola_hypervisor::{AgentEndpoint, Hypervisor, VmConfig};

mod support;

use support::{assert_cleaned_up, comm, config, init_tracing, processes_mentioning};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_start_query_stop_cleans_up() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "vm-start-stop");
    let state_dir = cfg.state_dir.clone();
    let vm = QemuHypervisor::new(cfg);

    let t0 = Instant::now();
    vm.start().await.expect("start");
    eprintln!("start() to QMP ready: {} ms", t0.elapsed().as_millis());

    let (accel, reason) = vm.accelerator().expect("accelerator known after start");
    eprintln!("accelerator: {accel:?} ({reason})");
    let status = vm.query_status().await.unwrap();
    assert!(status.running, "{status:?}");
    assert_eq!(status.status, "running");

    let pids = vm.pids();
    let comms: Vec<String> = pids.iter().map(|p| comm(*p)).collect();
    assert!(comms[0].starts_with("qemu"), "VMM pid first: {comms:?}");
    assert!(
        comms.iter().any(|c| c.starts_with("virtiofsd")),
        "{comms:?}"
    );
    if let AgentEndpoint::HybridVsock { path, port } = vm.agent_endpoint() {
        assert_eq!(port, 1024);
        assert!(path.starts_with(&state_dir));
        assert!(
            comms.iter().any(|c| c.starts_with("vhost-device")),
            "{comms:?}"
        );
    }
    assert!(vm.console_log().starts_with(&state_dir));
    assert!(!processes_mentioning(&state_dir.display().to_string()).is_empty());

    let t1 = Instant::now();
    vm.stop().await.expect("stop");
    eprintln!("stop(): {} ms", t1.elapsed().as_millis());
    assert_cleaned_up(&state_dir);
    // QMP quit makes QEMU exit normally.
    let exit = vm.wait().await.unwrap();
    assert_eq!(exit.code, Some(0), "{exit:?}");
    assert!(vm.pids().is_empty());
    // Idempotent.
    vm.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_sigkilled_qemu_is_noticed() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "vm-sigkill");
    let state_dir = cfg.state_dir.clone();
    let vm = std::sync::Arc::new(QemuHypervisor::new(cfg));
    vm.start().await.expect("start");
    let qemu_pid = vm.pids()[0];
    assert!(comm(qemu_pid).starts_with("qemu"));

    // Several concurrent waiters all see the exit.
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let vm = vm.clone();
            tokio::spawn(async move { vm.wait().await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let killed_at = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(qemu_pid).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(1), vm.wait())
        .await
        .expect("wait() did not notice the SIGKILL within 1 s")
        .unwrap();
    eprintln!(
        "SIGKILL noticed after {} ms",
        killed_at.elapsed().as_millis()
    );
    assert_eq!(exit.signal, Some(9), "{exit:?}");
    assert_eq!(exit.code, None);
    for w in waiters {
        let got = tokio::time::timeout(Duration::from_secs(1), w)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got, exit);
    }
    // After the exit: same result again, and control calls report the VM is gone.
    assert_eq!(vm.wait().await.unwrap(), exit);
    assert!(vm.pause().await.is_err());
    assert!(!vm.pids().contains(&qemu_pid));

    vm.stop().await.expect("stop after crash");
    assert_cleaned_up(&state_dir);
}

/// A helper daemon that dies under a running VM ends it (none can be restarted under a live
/// guest): the VMM is killed at once and `wait()` reports it; `kill()` does the same on demand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_a_dead_helper_daemon_or_kill_ends_the_vm() {
    init_tracing();
    for victim in ["virtiofsd", "vhost-device", "kill()"] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), "vm-helper-dies");
        cfg.vsock = isola_hypervisor::VsockChoice::VhostUser;
        let state_dir = cfg.state_dir.clone();
        let vm = QemuHypervisor::new(cfg);
        vm.start().await.expect("start");
        let t0 = Instant::now();
        if victim == "kill()" {
            vm.kill().await.unwrap();
        } else {
            let pid = vm
                .pids()
                .into_iter()
                .find(|p| comm(*p).starts_with(victim))
                .unwrap_or_else(|| panic!("no {victim} among {:?}", vm.pids()));
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
        }
        let exit = tokio::time::timeout(Duration::from_secs(2), vm.wait())
            .await
            .unwrap_or_else(|_| panic!("{victim}: the VM did not end within 2 s"))
            .unwrap();
        eprintln!(
            "{victim}: the VM ended after {} ms ({exit})",
            t0.elapsed().as_millis()
        );
        assert_eq!(exit.signal, Some(9), "{victim}: {exit:?}");
        assert!(matches!(
            vm.kill().await,
            Err(isola_hypervisor::HypervisorError::NotRunning(_))
        ));
        vm.stop().await.expect("stop after the helper died");
        assert_cleaned_up(&state_dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_pause_resume() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), "vm-pause");
    cfg.shared_fs = None; // also covers the no-virtio-fs path
    let state_dir = cfg.state_dir.clone();
    let vm = QemuHypervisor::new(cfg);
    vm.start().await.expect("start");

    vm.pause().await.unwrap();
    let st = vm.query_status().await.unwrap();
    assert!(!st.running, "{st:?}");
    assert_eq!(st.status, "paused");

    vm.resume().await.unwrap();
    let st = vm.query_status().await.unwrap();
    assert!(st.running, "{st:?}");
    assert_eq!(st.status, "running");

    // A paused VM stops just as well.
    vm.pause().await.unwrap();
    vm.stop().await.unwrap();
    assert_cleaned_up(&state_dir);
}

/// Environment variable that turns [`vm_owner_helper`] into a VM owner.
const OWNER_STATE_ENV: &str = "ISOLA_TEST_OWNER_STATE";

/// Runs in a child process started by [`vm_children_die_with_owner`]: starts a VM with the
/// given state directory, says so on stdout, and waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process for vm_children_die_with_owner, which runs it itself"]
async fn vm_owner_helper() {
    let Some(state) = std::env::var_os(OWNER_STATE_ENV).map(PathBuf::from) else {
        panic!("{OWNER_STATE_ENV} not set: this is a helper for vm_children_die_with_owner");
    };
    let base = state.parent().unwrap();
    let cfg = VmConfig {
        state_dir: state.clone(),
        ..config(base, "vm-owner")
    };
    let vm = QemuHypervisor::new(cfg);
    vm.start().await.expect("start");
    println!("OWNER-READY");
    tokio::time::sleep(Duration::from_secs(120)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_children_die_with_owner() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    init_tracing();
    // Fail early, in this process, if the images are missing.
    let dir = tempfile::tempdir().unwrap();
    let _ = config(dir.path(), "probe");
    let state = dir.path().join("state");
    let needle = state.display().to_string();
    let mut owner = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "vm_owner_helper", "--nocapture"])
        .env(OWNER_STATE_ENV, &state)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(owner.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("OWNER-READY") {
                return true;
            }
        }
        false
    })
    .await
    .expect("owner did not start its VM within 60 s");
    assert!(ready, "owner exited before starting its VM");
    let children = processes_mentioning(&needle);
    assert!(
        children.len() >= 2,
        "expected qemu and helpers: {children:?}"
    );

    owner.start_kill().unwrap();
    owner.wait().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left = processes_mentioning(&needle);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "children outlived their owner: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_qemu_startup_failure_is_reported_and_cleaned_up() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let cfg = VmConfig {
        machine_type: "no-such-machine".into(),
        ..config(dir.path(), "vm-bad-machine")
    };
    let state_dir = cfg.state_dir.clone();
    let vm = QemuHypervisor::new(cfg);
    let err = vm.start().await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            isola_hypervisor::HypervisorError::VmmExitedEarly { .. }
        ),
        "{err:?}"
    );
    assert!(
        msg.contains("unsupported machine type"),
        "stderr not in the error: {msg}"
    );
    assert_cleaned_up(&state_dir);
    vm.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_cancelled_start_leaves_nothing_after_stop() {
    init_tracing();
    let mut cancelled_any = false;
    // Cancel start() at a few points: validation, daemons starting, QEMU starting.
    for delay_ms in [10, 30, 60] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), &format!("vm-cancel-{delay_ms}"));
        let state_dir = cfg.state_dir.clone();
        let needle = state_dir.display().to_string();
        let vm = QemuHypervisor::new(cfg);
        let res = tokio::time::timeout(Duration::from_millis(delay_ms), vm.start()).await;
        if res.is_ok() {
            // Finished within the delay on this machine: nothing was cancelled.
            vm.stop().await.unwrap();
            assert_cleaned_up(&state_dir);
            continue;
        }
        cancelled_any = true;
        assert!(matches!(
            vm.wait().await,
            Err(isola_hypervisor::HypervisorError::NotRunning(_))
        ));
        // Whatever was spawned dies with the dropped future.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !processes_mentioning(&needle).is_empty() {
            assert!(
                Instant::now() < deadline,
                "{:?}",
                processes_mentioning(&needle)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(vm.pids().is_empty());
        vm.stop().await.unwrap();
        assert_cleaned_up(&state_dir);
    }
    assert!(
        cancelled_any,
        "start() always finished before being cancelled"
    );
}
