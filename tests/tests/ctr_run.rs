//! isola through containerd, the way a user meets it: `ctr run --runtime io.containerd.isola.v2`
//! against a private containerd (tests/src/containerd.rs) with the locally built busybox image
//! (`make images`). Every container runs in its own VM (TCG here), so these are `vm_*` tests and
//! nextest runs them one at a time.
//!
//! Each test checks what the user sees (ctr's output and exit status, containerd's view of the
//! task) and then that nothing is left on the host: no shim, QEMU, virtiofsd or
//! vhost-device-vsock process, no mount, no socket or per-sandbox directory in isola's state
//! directory.

use std::process::Output;
use std::time::Duration;

use isola_tests::containerd::{
    describe, host_kernel_release, pseudo_random_bytes, Containerd, CtrChild, RUNTIME, TEST_IMAGE,
};
use isola_tests::TestEnv;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long a container may take to reach RUNNING (a VM boot under TCG, on a shared host).
const BOOT: Duration = Duration::from_secs(120);

fn started() -> Containerd {
    let c = Containerd::start();
    c.import_test_image();
    c
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `ctr run` (foreground, `--rm`) in the background, for tests that act on the running task.
fn spawn_run(c: &Containerd, id: &str, cmd: &[&str]) -> CtrChild {
    let args = c.run_args(&["--rm"], id, cmd);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    c.ctr_spawn(&args)
}

/// The VMMs' pids (QEMU, or Cloud Hypervisor with `ISOLA_TEST_HYPERVISOR`).
fn qemu_pids(c: &Containerd) -> Vec<u32> {
    c.vm_processes()
        .into_iter()
        .filter(|(_, comm)| comm.starts_with(isola_tests::test_vmm_comm()))
        .map(|(pid, _)| pid)
        .collect()
}

#[test]
fn vm_ctr_run_output_comes_from_the_guest_kernel() {
    let c = started();
    let out = c.run(
        "t-uname",
        &["sh", "-c", "uname -r; echo to-stderr >&2; echo to-stdout"],
    );
    assert!(out.status.success(), "ctr run: {}", describe(&out));
    let so = stdout(&out);
    let mut lines = so.lines();
    let guest = lines.next().unwrap_or_default().trim().to_string();
    assert_eq!(
        guest,
        isola_tests::guest_kernel_release(),
        "uname -r in the container is the guest image's kernel: {}",
        describe(&out)
    );
    assert_ne!(
        guest,
        host_kernel_release(),
        "the container ran on the host kernel"
    );
    assert_eq!(lines.next(), Some("to-stdout"), "{}", describe(&out));
    assert!(
        !so.contains("to-stderr"),
        "stderr went to stdout: {}",
        describe(&out)
    );
    assert!(stderr(&out).contains("to-stderr"), "{}", describe(&out));
    c.assert_nothing_left("ctr run --rm");
}

#[test]
fn vm_ctr_run_exits_with_the_task_exit_code() {
    let c = started();
    let ok = c.run("t-exit0", &["sh", "-c", "exit 0"]);
    assert_eq!(ok.status.code(), Some(0), "{}", describe(&ok));
    let three = c.run("t-exit3", &["sh", "-c", "echo before; exit 3"]);
    assert_eq!(three.status.code(), Some(3), "{}", describe(&three));
    assert_eq!(stdout(&three), "before\n");
    c.assert_nothing_left("two ctr run --rm");
}

#[test]
fn vm_ctr_task_kill_sigkill_gives_137() {
    let c = started();
    let mut run = spawn_run(&c, "t-kill9", &["sleep", "1000"]);
    c.wait_running("t-kill9", &mut run, BOOT);
    let k = c.ctr(&["tasks", "kill", "-s", "SIGKILL", "t-kill9"]);
    assert!(k.status.success(), "ctr tasks kill: {}", describe(&k));
    let out = run.wait(Duration::from_secs(60));
    assert_eq!(
        out.status.code(),
        Some(137),
        "128 + SIGKILL: {}",
        describe(&out)
    );
    c.assert_nothing_left("SIGKILL and ctr run --rm");
}

#[test]
fn vm_ctr_task_kill_sigterm_ends_a_sleep() {
    let c = started();
    // The container's first process is PID 1 of its PID namespace, which (as under runc) gets
    // only the signals it handles: the shell traps TERM, and the trap ends the sleep. "ready"
    // says the trap is set.
    let mut run = spawn_run(
        &c,
        "t-term",
        &[
            "sh",
            "-c",
            "trap 'echo got TERM; kill $pid; exit 143' TERM; sleep 1000 & pid=$!; echo ready; wait",
        ],
    );
    c.wait_running("t-term", &mut run, BOOT);
    run.wait_for_stdout(BOOT, |o| o.contains("ready"));
    let k = c.ctr(&["tasks", "kill", "t-term"]);
    assert!(k.status.success(), "ctr tasks kill: {}", describe(&k));
    let out = run.wait(Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(143), "{}", describe(&out));
    assert!(stdout(&out).contains("got TERM"), "{}", describe(&out));
    c.assert_nothing_left("SIGTERM and ctr run --rm");
}

#[test]
fn vm_ctr_run_stdin_round_trips_10_mib_through_cat() {
    let c = started();
    let data = pseudo_random_bytes(10 << 20, 0x1501a);
    let out = c.run_with(&["--rm"], "t-cat", &["cat"], Some(data.clone()));
    assert!(
        out.status.success(),
        "ctr run cat: {}",
        describe(&Output {
            stdout: Vec::new(),
            ..out.clone()
        })
    );
    if out.stdout != data {
        let first_diff = out
            .stdout
            .iter()
            .zip(&data)
            .position(|(a, b)| a != b)
            .unwrap_or(out.stdout.len().min(data.len()));
        panic!(
            "stdout differs from stdin: {} bytes out for {} in, first difference at byte {}",
            out.stdout.len(),
            data.len(),
            first_diff
        );
    }
    c.assert_nothing_left("ctr run --rm cat");
}

#[test]
fn vm_two_containers_run_in_two_vms_at_once() {
    let c = started();
    let cmd = [
        "sh",
        "-c",
        "cat /proc/sys/kernel/random/boot_id; exec sleep 1000",
    ];
    let mut a = spawn_run(&c, "t-two-a", &cmd);
    let mut b = spawn_run(&c, "t-two-b", &cmd);
    c.wait_running("t-two-a", &mut a, BOOT);
    c.wait_running("t-two-b", &mut b, BOOT);
    // Both have printed their boot id: both run at once.
    let boot_id = |o: &str| o.lines().next().is_some_and(|l| l.trim().len() == 36);
    a.wait_for_stdout(BOOT, boot_id);
    b.wait_for_stdout(BOOT, boot_id);
    let qemus = qemu_pids(&c);
    assert_eq!(
        qemus.len(),
        2,
        "one QEMU per container: {:?}",
        c.vm_processes()
    );
    for id in ["t-two-a", "t-two-b"] {
        let k = c.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
        assert!(k.status.success(), "ctr tasks kill {id}: {}", describe(&k));
    }
    let (oa, ob) = (
        a.wait(Duration::from_secs(60)),
        b.wait(Duration::from_secs(60)),
    );
    assert_eq!(oa.status.code(), Some(137), "{}", describe(&oa));
    assert_eq!(ob.status.code(), Some(137), "{}", describe(&ob));
    let (ba, bb) = (stdout(&oa), stdout(&ob));
    assert_eq!(ba.trim().len(), 36, "a boot id: {}", describe(&oa));
    assert_eq!(bb.trim().len(), 36, "a boot id: {}", describe(&ob));
    assert_ne!(ba, bb, "two containers, one kernel");
    c.assert_nothing_left("two containers");
}

#[test]
fn vm_detached_run_then_ctr_rm_leaves_nothing() {
    let c = started();
    let out = c.run_with(&["-d"], "t-rm", &["sh", "-c", "exit 5"], None);
    assert!(out.status.success(), "ctr run -d: {}", describe(&out));
    c.wait_task_status("t-rm", "STOPPED", BOOT);
    // Its only container has exited, so the pod has ended: the VM and its daemons go at once,
    // before the task is deleted (the shim stays for that).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let vm = c.vm_processes();
        if vm.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the VM of an ended pod still runs: {vm:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(c.tasks().len(), 1, "the task stays until ctr tasks rm");
    let rm = c.ctr(&["tasks", "rm", "t-rm"]);
    assert!(rm.status.success(), "ctr tasks rm: {}", describe(&rm));
    assert!(
        stderr(&rm).contains("exit code 5"),
        "ctr tasks rm reports the exit code: {}",
        describe(&rm)
    );
    let rm = c.ctr(&["containers", "rm", "t-rm"]);
    assert!(rm.status.success(), "ctr containers rm: {}", describe(&rm));
    assert!(c.containers().is_empty());
    c.assert_nothing_left("ctr tasks rm and ctr containers rm");
}

#[test]
fn vm_killed_qemu_stops_the_task_and_the_shim_cleans_up() {
    let c = started();
    let mut events = c.ctr_spawn(&["events"]);
    std::thread::sleep(Duration::from_millis(300));
    let out = c.run_with(&["-d"], "t-qemu", &["sleep", "1000"], None);
    assert!(out.status.success(), "ctr run -d: {}", describe(&out));
    c.wait_task_status("t-qemu", "RUNNING", BOOT);
    let qemus = qemu_pids(&c);
    assert_eq!(
        qemus.len(),
        1,
        "the container's QEMU: {:?}",
        c.vm_processes()
    );
    kill(Pid::from_raw(qemus[0] as i32), Signal::SIGKILL).expect("killing QEMU");

    c.wait_task_status("t-qemu", "STOPPED", Duration::from_secs(30));
    // The exit event has been published by now; give ctr events a moment to print it.
    std::thread::sleep(Duration::from_millis(500));
    let _ = kill(Pid::from_raw(events.id() as i32), Signal::SIGTERM);
    let ev = stdout(&events.wait(Duration::from_secs(10)));
    let exit = ev
        .lines()
        .find(|l| l.contains("/tasks/exit") && l.contains("\"t-qemu\""))
        .unwrap_or_else(|| panic!("no /tasks/exit event for t-qemu in:\n{ev}"));
    let status: u32 = exit
        .split("\"exit_status\":")
        .nth(1)
        .and_then(|s| s.split(|ch: char| !ch.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert_ne!(status, 0, "a VM crash is a non-zero exit: {exit}");

    let rm = c.ctr(&["tasks", "rm", "t-qemu"]);
    assert!(rm.status.success(), "ctr tasks rm: {}", describe(&rm));
    let rm = c.ctr(&["containers", "rm", "t-qemu"]);
    assert!(rm.status.success(), "ctr containers rm: {}", describe(&rm));
    c.assert_nothing_left("a killed QEMU, ctr tasks rm and ctr containers rm");
}

/// `ctr run` with a runtime spec from a file (no image: the spec is all there is).
fn run_spec(c: &Containerd, id: &str, spec: &str) -> Output {
    let path = c.dir().join(format!("{id}.json"));
    std::fs::write(&path, spec).unwrap();
    let fifo = c.fifo_dir();
    let out = c.ctr(&[
        "run",
        "--runtime",
        RUNTIME,
        "--fifo-dir",
        &fifo.to_string_lossy(),
        "--rm",
        "--config",
        &path.to_string_lossy(),
        id,
    ]);
    // A failed create may leave the container record (containerd's, not the shim's).
    let _ = c.ctr(&["containers", "rm", id]);
    out
}

#[test]
fn vm_invalid_spec_fails_clearly_and_leaks_nothing() {
    let c = started();
    // ctr only passes on JSON that decodes as a runtime spec; what reaches the shim's
    // config.json is malformed for a runtime: no process at all, or a process without args.
    let out = run_spec(&c, "t-noproc", r#"{"ociVersion": "1.0.2"}"#);
    assert!(!out.status.success(), "a spec without a process ran");
    assert!(
        stderr(&out).to_lowercase().contains("process"),
        "the error says what is wrong with the spec: {}",
        describe(&out)
    );
    c.assert_nothing_left("a spec without a process");

    let out = run_spec(
        &c,
        "t-noargs",
        r#"{"ociVersion": "1.0.2", "process": {"cwd": "/", "args": []}, "root": {"path": "rootfs"}}"#,
    );
    assert!(!out.status.success(), "a process without args ran");
    assert!(
        stderr(&out).to_lowercase().contains("args"),
        "the error says what is wrong with the spec: {}",
        describe(&out)
    );
    c.assert_nothing_left("a process without args");
}

#[test]
fn vm_missing_rootfs_fails_clearly_and_leaks_nothing() {
    let c = started();
    let missing = c.dir().join("no-such-rootfs");
    let fifo = c.fifo_dir();
    let out = c.ctr(&[
        "run",
        "--runtime",
        RUNTIME,
        "--fifo-dir",
        &fifo.to_string_lossy(),
        "--rm",
        "--rootfs",
        &missing.to_string_lossy(),
        "t-norootfs",
        "sh",
    ]);
    let _ = c.ctr(&["containers", "rm", "t-norootfs"]);
    assert!(!out.status.success(), "a container without a rootfs ran");
    let err = stderr(&out);
    assert!(
        err.contains("no-such-rootfs") || err.to_lowercase().contains("rootfs"),
        "the error names the rootfs: {}",
        describe(&out)
    );
    c.assert_nothing_left("a missing rootfs");
}

#[test]
fn vm_unusable_kernel_fails_clearly_and_leaks_nothing() {
    let mut env = TestEnv::new();
    let bogus = env.dir.path().join("not-a-kernel");
    std::fs::write(&bogus, b"this is not a kernel image").unwrap();
    env.config.hypervisor.kernel = bogus;
    env.config.agent.dial_timeout_ms = 5_000;
    let c = Containerd::start_with(env);
    c.import_test_image();
    let out = c.run("t-badkernel", &["true"]);
    let _ = c.ctr(&["containers", "rm", "t-badkernel"]);
    assert!(
        !out.status.success(),
        "a VM with a bogus kernel ran a container"
    );
    let err = stderr(&out);
    assert!(
        err.contains("not-a-kernel") || err.contains("did not answer") || err.contains("qemu"),
        "the error says what failed: {}",
        describe(&out)
    );
    c.assert_nothing_left("a VM that cannot boot");
}

/// The harness and the test image on their own, with runc: no VM, so not a `vm_` test. When
/// this fails, the isola tests above cannot pass whatever the shim does.
#[test]
fn ctr_harness_runs_the_test_image_under_runc_and_cleans_up() {
    let c = started();
    let out = c.run_with_runtime(
        "io.containerd.runc.v2",
        &["--rm"],
        "t-runc",
        &["sh", "-c", "echo hi; cat; exit 3"],
        Some(b"from stdin\n".to_vec()),
    );
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    assert_eq!(stdout(&out), "hi\nfrom stdin\n");
    assert_eq!(
        c.ctr(&["images", "ls", "-q"]).stdout,
        format!("{TEST_IMAGE}\n").into_bytes()
    );
    let dir = c.dir().to_path_buf();
    drop(c);
    assert!(!dir.exists(), "{} is removed", dir.display());
    let left = isola_tests::processes_mentioning(&dir.to_string_lossy());
    assert!(left.is_empty(), "processes left: {left:?}");
}
