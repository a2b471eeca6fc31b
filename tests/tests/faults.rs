//! The fault suite: each part of a pod fails in turn under a running container that is also
//! exec'ing and streaming output, next to a second, healthy pod. Every time containerd must see
//! the task exit within a bound (printed, and bounded here), no ctr call may hang, `ctr tasks
//! rm` must work, the other pod must be untouched, and nothing may be left on the host.
//!
//! - a helper daemon (virtiofsd, vhost-device-vsock) SIGKILLed: the hypervisor's supervisor
//!   ends the VM at once (neither can be restarted under a live guest);
//! - the VMM frozen (SIGSTOP): the agent watchdog declares the VM dead after
//!   `agent.watchdog_timeout_ms` (3 s here) and kills it;
//! - the agent frozen inside a running guest (cgroup freezer, from the debug console): the same
//!   watchdog;
//! - the guest kernel going away under the agent (`reboot -f` from the debug console, what a
//!   panic or the death of PID 1 amounts to): the VMM exits;
//! - the shim SIGKILLed: containerd runs the shim's `delete`, which kills the VM its record names.
//!
//! The VMM SIGKILLed is covered in ctr_run.rs, containerd killed and restarted in
//! fault_containerd.rs.

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
    /// The agent (the guest's PID 1) frozen in the guest through the debug console.
    FreezeAgent,
    /// The guest kernel restarts under the agent (`reboot -f` in the debug console): what a
    /// guest panic or the agent's death amounts to, the VMM exits.
    GuestReboot,
}

/// Freezes the guest's PID 1 — the agent — with the cgroup v2 freezer: moved into a cgroup of
/// its own (its containers and this shell stay where they are), which is then frozen. Signals
/// cannot do it: the kernel ignores SIGKILL and SIGSTOP sent to an init from inside.
const FREEZE_AGENT: &str = "mkdir /sys/fs/cgroup/isola-fault && \
    echo 1 > /sys/fs/cgroup/isola-fault/cgroup.procs && \
    echo 1 > /sys/fs/cgroup/isola-fault/cgroup.freeze\n";

/// Starts `isola debug console <id>` with `script` on its stdin; the session itself ends when
/// the VM does (the frozen agent no longer carries its output).
fn debug_console(c: &Containerd, id: &str, script: &str) -> std::process::Child {
    use std::io::Write;
    let mut child = std::process::Command::new(isola_tests::containerd::shim_dir().join("isola"))
        .arg("--config")
        .arg(c.isola_config())
        .args(["debug", "console", id])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("running isola debug console");
    let mut stdin = child.stdin.take().expect("its stdin");
    stdin.write_all(script.as_bytes()).expect("writing to it");
    child
}

/// Whether the agent of sandbox `id` answers: a quick exec.
fn agent_answers(c: &Containerd, id: &str, exec_id: &str) -> bool {
    c.ctr(&["tasks", "exec", "--exec-id", exec_id, id, "true"])
        .status
        .success()
}

/// The pid of the process named `comm_prefix` that belongs to sandbox `id`'s VM and was started
/// by the shim (virtiofsd's sandbox forks a child of the same name: not that one).
fn vm_process(c: &Containerd, id: &str, comm_prefix: &str) -> u32 {
    let vm_dir = c.state_dir().join("vm").join(id);
    let found: Vec<u32> = processes_mentioning(&vm_dir.to_string_lossy())
        .into_iter()
        .map(|(pid, _)| pid)
        .filter(|pid| comm(*pid).starts_with(comm_prefix))
        .filter(|pid| !comm(isola_tests::parent_pid(*pid)).starts_with(comm_prefix))
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
    env.config.agent.debug_console = matches!(f, Fault::FreezeAgent | Fault::GuestReboot);
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

    let mut console = None;
    let (t0, what) = match f {
        Fault::Kill(p) => (signal(vm_process(&c, "t-victim", p), Signal::SIGKILL), p),
        Fault::Freeze(p) => (signal(vm_process(&c, "t-victim", p), Signal::SIGSTOP), p),
        Fault::KillShim => (
            signal(isola_tests::shim_serving("t-victim"), Signal::SIGKILL),
            "the shim",
        ),
        Fault::GuestReboot => {
            let mut shell = debug_console(&c, "t-victim", "echo rebooting-now; reboot -f\n");
            // From the shell's last word: the reboot follows it at once.
            let stdout = shell.stdout.take().expect("the console's output");
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if line.contains("rebooting-now") {
                        let _ = tx.send(Instant::now());
                    }
                }
            });
            let t0 = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("the debug console's shell did not start within 60 s");
            console = Some(shell);
            (t0, "the guest kernel (reboot -f)")
        }
        Fault::FreezeAgent => {
            assert!(agent_answers(&c, "t-victim", "before"), "the agent answers");
            console = Some(debug_console(&c, "t-victim", FREEZE_AGENT));
            // The freeze lands once the shell has run the script: from the first exec that
            // no longer comes back, the agent is frozen.
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut n = 0;
            loop {
                let t = Instant::now();
                let mut probe = c.ctr_spawn(&[
                    "tasks",
                    "exec",
                    "--exec-id",
                    &format!("probe{n}"),
                    "t-victim",
                    "true",
                ]);
                n += 1;
                if probe.wait_timeout(Duration::from_secs(2)).is_err() {
                    break (t, "the agent (cgroup freeze)");
                }
                assert!(
                    Instant::now() < deadline,
                    "the debug console did not freeze the agent within 60 s"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    // A call made during the fault must come back, not hang.
    let mut exec = c.ctr_spawn(&["tasks", "exec", "--exec-id", "late", "t-victim", "true"]);
    // STOPPED, or already deleted: after a shim's death containerd cleans the task up itself.
    let deadline = Instant::now() + SEEN_WITHIN;
    loop {
        let victim = c.tasks().into_iter().find(|t| t.id == "t-victim");
        if victim.as_ref().is_none_or(|t| t.status == "STOPPED") {
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
        "{name}: {what} -> containerd saw the task STOPPED after {} ms",
        seen.as_millis()
    );
    if let Some(mut console) = console {
        let deadline = Instant::now() + CALL_BOUND;
        while console
            .try_wait()
            .expect("waiting for the console")
            .is_none()
        {
            assert!(
                Instant::now() < deadline,
                "{name}: the debug console outlived the VM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
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
    // The guest goes down a little after the shell's last word (reboot -f syncs first, then
    // the kernel shuts its devices down): an exec can still finish in that window. It has come
    // back either way, which is the point; every other fault kills the pod at once.
    if !matches!(f, Fault::GuestReboot) {
        assert!(
            !late.status.success(),
            "{name}: an exec into a dead pod succeeded: {}",
            describe(&late)
        );
    }

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

/// Sends `signal` to `pid`; when it was sent.
fn signal(pid: u32, signal: Signal) -> Instant {
    let t0 = Instant::now();
    kill(Pid::from_raw(pid as i32), signal).expect("signalling the victim");
    t0
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

/// The agent stops answering while the VM runs on (its containers keep running): the watchdog
/// declares the VM dead, as for a frozen VMM.
#[test]
fn vm_fault_frozen_agent_is_declared_dead_by_the_watchdog() {
    fault("agent frozen", Fault::FreezeAgent);
}

/// The guest kernel goes away under the agent — as on a panic, or the agent (PID 1) dying: the
/// VMM exits (`-no-reboot`) and the pod ends as for a killed VMM. Measured from the moment the
/// command is sent to the debug console (the shell's start included).
#[test]
fn vm_fault_guest_reboot_ends_the_pod() {
    fault("guest rebooted", Fault::GuestReboot);
}
