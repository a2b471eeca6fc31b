//! The fault suite: each part of a pod fails in turn under a running container that is also
//! exec'ing and streaming output, next to a second, healthy pod. Every time containerd must see
//! the task exit within a bound (printed, and bounded here), no ctr call may hang, `ctr tasks
//! rm` must work, the other pod must be untouched, and nothing may be left on the host.
//!
//! - a helper daemon (virtiofsd, vhost-device-vsock) SIGKILLed: the hypervisor's supervisor
//!   ends the VM at once (neither can be restarted under a live guest);
//! - the VMM frozen (SIGSTOP): the agent watchdog declares the VM dead after
//!   `agent.watchdog_timeout_ms` (3 s here) and kills it.
//!
//! - the shim SIGKILLed: containerd runs the shim's `delete`, which kills the VM its record names.
//!
//! The VMM SIGKILLed is covered in ctr_run.rs.

use std::time::{Duration, Instant};

use isola_tests::containerd::{describe, Containerd};
use isola_tests::{comm, processes_mentioning, TestEnv};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long a container may take to reach RUNNING (a VM boot under TCG, on a shared host).
const BOOT: Duration = Duration::from_secs(120);

/// The watchdog limit of these tests.
const WATCHDOG_MS: u64 = 3_000;

/// How long containerd may take to see the exit after the fault: the watchdog limit plus one
/// period plus the teardown, with room for a loaded CI host.
const SEEN_WITHIN: Duration = Duration::from_secs(20);

/// How long any ctr call may take once the pod is dead.
const CALL_BOUND: Duration = Duration::from_secs(15);

enum Fault {
    Kill(&'static str),
    Freeze(&'static str),
    KillShim,
}

/// The shim serving sandbox `id` (containerd starts it with `-id <id>`).
fn shim_process(id: &str) -> u32 {
    let found: Vec<u32> = processes_mentioning(&format!("-id {id} "))
        .into_iter()
        .map(|(pid, _)| pid)
        .filter(|pid| comm(*pid).starts_with("containerd-shim"))
        .collect();
    assert_eq!(found.len(), 1, "the shim of {id}: {found:?}");
    found[0]
}

fn parent(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // pid (comm) state ppid ...: the comm may hold spaces, so count from its closing paren.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// The pid of the process named `comm_prefix` that belongs to sandbox `id`'s VM and was started
/// by the shim (virtiofsd's sandbox forks a child of the same name: not that one).
fn vm_process(c: &Containerd, id: &str, comm_prefix: &str) -> u32 {
    let vm_dir = c.state_dir().join("vm").join(id);
    let found: Vec<u32> = processes_mentioning(&vm_dir.to_string_lossy())
        .into_iter()
        .map(|(pid, _)| pid)
        .filter(|pid| comm(*pid).starts_with(comm_prefix))
        .filter(|pid| !comm(parent(*pid)).starts_with(comm_prefix))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{comm_prefix} of {id}: {:?}",
        c.vm_processes()
    );
    found[0]
}

fn fault(name: &str, f: Fault) {
    let mut env = TestEnv::new();
    env.config.agent.watchdog_timeout_ms = WATCHDOG_MS;
    let c = Containerd::start_with(env);
    c.import_test_image();
    for id in ["t-victim", "t-other"] {
        let out = c.run_with(&["-d"], id, &["sleep", "1000"], None);
        assert!(out.status.success(), "ctr run -d {id}: {}", describe(&out));
        c.wait_task_status(id, "RUNNING", BOOT);
    }
    // An exec streaming output while the fault hits.
    let mut stream = c.ctr_spawn(&[
        "tasks",
        "exec",
        "--exec-id",
        "stream",
        "t-victim",
        "sh",
        "-c",
        "while :; do echo tick; sleep 0.2; done",
    ]);
    stream.wait_for_stdout(Duration::from_secs(60), |o| o.contains("tick"));

    let (pid, signal, what) = match f {
        Fault::Kill(p) => (vm_process(&c, "t-victim", p), Signal::SIGKILL, p),
        Fault::Freeze(p) => (vm_process(&c, "t-victim", p), Signal::SIGSTOP, p),
        Fault::KillShim => (shim_process("t-victim"), Signal::SIGKILL, "the shim"),
    };
    let t0 = Instant::now();
    kill(Pid::from_raw(pid as i32), signal).expect("signalling the victim");
    // A call made during the fault must come back, not hang.
    let mut exec = c.ctr_spawn(&["tasks", "exec", "--exec-id", "late", "t-victim", "true"]);
    // STOPPED, or already deleted: after a shim's death containerd cleans the task up itself.
    let deadline = Instant::now() + SEEN_WITHIN;
    loop {
        let victim = c.tasks().into_iter().find(|t| t.id == "t-victim");
        if victim.as_ref().map_or(true, |t| t.status == "STOPPED") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: t-victim still {victim:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let seen = t0.elapsed();
    eprintln!(
        "{name}: {what} {signal:?} -> containerd saw the task STOPPED after {} ms",
        seen.as_millis()
    );
    let streamed = stream
        .wait_timeout(CALL_BOUND)
        .unwrap_or_else(|e| panic!("{name}: the streaming exec hung: {e}"));
    assert!(
        !streamed.status.success(),
        "{name}: the streaming exec ended well?"
    );
    let late = exec
        .wait_timeout(CALL_BOUND + SEEN_WITHIN)
        .unwrap_or_else(|e| panic!("{name}: an exec during the fault hung: {e}"));
    assert!(
        !late.status.success(),
        "{name}: an exec into a dead pod succeeded"
    );

    let t1 = Instant::now();
    let rm = c.ctr(&["tasks", "rm", "t-victim"]);
    let gone = String::from_utf8_lossy(&rm.stderr).contains("not found");
    assert!(
        rm.status.success() || gone,
        "{name}: ctr tasks rm: {}",
        describe(&rm)
    );
    let rm = c.ctr(&["containers", "rm", "t-victim"]);
    assert!(
        rm.status.success(),
        "{name}: ctr containers rm: {}",
        describe(&rm)
    );
    assert!(
        t1.elapsed() < CALL_BOUND,
        "{name}: rm took {:?}",
        t1.elapsed()
    );

    // The other pod is untouched.
    let ok = c.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "ok",
        "t-other",
        "echo",
        "alive",
    ]);
    assert!(
        ok.status.success() && String::from_utf8_lossy(&ok.stdout).contains("alive"),
        "{name}: the other pod: {}",
        describe(&ok)
    );
    for args in [
        &["tasks", "kill", "-s", "KILL", "t-other"][..],
        &["tasks", "rm", "-f", "t-other"][..],
        &["containers", "rm", "t-other"][..],
    ] {
        let _ = c.ctr(args);
    }
    c.assert_nothing_left(name);
}

#[test]
fn vm_fault_virtiofsd_killed_ends_the_pod() {
    fault("virtiofsd killed", Fault::Kill("virtiofsd"));
}

#[test]
fn vm_fault_vsock_daemon_killed_ends_the_pod() {
    fault("vhost-device-vsock killed", Fault::Kill("vhost-device"));
}

/// containerd notices the dead shim, marks the task stopped and runs the shim's `delete`, which
/// kills the VM the shim's record names and removes what it left.
#[test]
fn vm_fault_shim_killed_ends_the_pod_and_delete_cleans_up() {
    fault("shim killed", Fault::KillShim);
}

#[test]
fn vm_fault_frozen_vmm_is_declared_dead_by_the_watchdog() {
    fault("qemu frozen", Fault::Freeze("qemu-system"));
}
