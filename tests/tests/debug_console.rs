//! `isola debug console <sandbox>` against pods of a private containerd: with
//! `[agent] debug_console = true` a shell in the guest, outside the containers (the guest's
//! PID 1 and kernel); without it a refusal naming the key, the pod untouched. Nothing is left
//! on the host afterwards (the shell binary copied into the shared directory included).

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use isola_tests::containerd::{describe, shim_dir, Containerd};
use isola_tests::TestEnv;

const BOOT: Duration = Duration::from_secs(120);
const CONSOLE: Duration = Duration::from_secs(60);

/// Runs `isola --config <config> debug console <id>` with `input` on stdin (a pipe), within
/// [`CONSOLE`].
fn debug_console(config: &Path, id: &str, input: &str) -> Output {
    let mut child = Command::new(shim_dir().join("isola"))
        .arg("--config")
        .arg(config)
        .args(["debug", "console", id])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running isola");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let (mut stdout, mut stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + CONSOLE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let status = child.wait().unwrap();
            panic!(
                "isola debug console did not end within {CONSOLE:?} ({status}); output so far: {}",
                String::from_utf8_lossy(&out.join().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn remove_pod(c: &Containerd, id: &str) {
    let _ = c.ctr(&["tasks", "kill", "-s", "KILL", id]);
    let _ = c.ctr(&["tasks", "rm", "-f", id]);
    let _ = c.ctr(&["containers", "rm", id]);
}

#[test]
fn vm_debug_console_opens_a_shell_in_the_guest() {
    let mut env = TestEnv::new();
    env.config.agent.debug_console = true;
    let c = Containerd::start_with(env);
    c.import_test_image();
    let id = "t-dbg-on";
    let out = c.run_with(&["-d"], id, &["sleep", "1000"], None);
    assert!(out.status.success(), "ctr run -d: {}", describe(&out));
    c.wait_task_status(id, "RUNNING", BOOT);
    let shell = c
        .state_dir()
        .join("shared")
        .join(id)
        .join(".isola-debug/busybox");
    assert!(
        shell.is_file(),
        "the shell is in the shared directory: {}",
        shell.display()
    );

    let out = debug_console(
        c.isola_config(),
        id,
        "echo marker-$((6*7)); cat /proc/1/comm; uname -r; exit\n",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "isola debug console: {}",
        describe(&out)
    );
    assert!(text.contains("marker-42"), "{text}");
    // Outside every container: PID 1 is the guest's init (the agent, the initrd's /init), not
    // the container's `sleep`; the kernel is the guest's.
    assert!(
        text.lines().any(|l| l.trim() == "init"),
        "the guest's PID 1: {text}"
    );
    let release = isola_tests::guest_kernel_release();
    assert!(
        text.lines().any(|l| l.trim() == release),
        "the guest kernel {release}: {text}"
    );
    // The pod runs on.
    assert_eq!(c.task_status(id).as_deref(), Some("RUNNING"));

    remove_pod(&c, id);
    c.assert_nothing_left("a pod with the debug console");
}

#[test]
fn vm_debug_console_is_refused_unless_configured() {
    let c = Containerd::start();
    c.import_test_image();
    let id = "t-dbg-off";
    let out = c.run_with(&["-d"], id, &["sleep", "1000"], None);
    assert!(out.status.success(), "ctr run -d: {}", describe(&out));
    c.wait_task_status(id, "RUNNING", BOOT);
    assert!(
        !c.state_dir()
            .join("shared")
            .join(id)
            .join(".isola-debug")
            .exists(),
        "no shell without the debug console"
    );

    // The configuration does not enable it.
    let out = debug_console(c.isola_config(), id, "echo marker-$((6*7))\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(err.contains("[agent] debug_console = true"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("marker-42"));

    // Enabled now, but the pod was started without it.
    let mut cfg = c.env().config.clone();
    cfg.runtime.state_dir = c.state_dir().to_path_buf();
    cfg.agent.debug_console = true;
    let enabled = c.dir().join("debug-enabled.toml");
    std::fs::write(&enabled, toml::to_string(&cfg).unwrap()).unwrap();
    let out = debug_console(&enabled, id, "echo marker-$((6*7))\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        err.contains("this pod was started without the debug console")
            && err.contains("restart the pod"),
        "{err}"
    );

    // An unknown sandbox is named.
    let out = debug_console(c.isola_config(), "t-dbg-nope", "");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("t-dbg-nope") && err.contains("isola ps"),
        "{err}"
    );

    // The pod is unaffected.
    assert_eq!(c.task_status(id).as_deref(), Some("RUNNING"));
    let exec = c.ctr(&["tasks", "exec", "--exec-id", "e1", id, "echo", "still-here"]);
    assert!(
        String::from_utf8_lossy(&exec.stdout).contains("still-here"),
        "{}",
        describe(&exec)
    );

    remove_pod(&c, id);
    c.assert_nothing_left("a pod without the debug console");
}

/// Counts (and kills) the container factories in pod `id`'s guest through the debug console.
fn kill_factories(c: &Containerd, id: &str) -> usize {
    let out = debug_console(
        c.isola_config(),
        id,
        "for p in /proc/[0-9]*; do if grep -q isola-container-factory $p/cmdline 2>/dev/null; \
         then echo killed-${p#/proc/}; kill -9 ${p#/proc/}; fi; done; exit\n",
    );
    assert!(
        out.status.success(),
        "isola debug console: {}",
        describe(&out)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.trim().starts_with("killed-"))
        .count()
}

/// A pod with `[agent] container_factory = factory`: execs work before and after its guest's
/// container factories (as many as `expected`) are killed.
fn execs_with_the_factory(factory: bool, expected: usize) {
    let mut env = TestEnv::new();
    env.config.agent.debug_console = true;
    env.config.agent.container_factory = factory;
    let c = Containerd::start_with(env);
    c.import_test_image();
    let id = if factory { "t-factory" } else { "t-no-factory" };
    let out = c.run_with(&["-d"], id, &["sleep", "1000"], None);
    assert!(out.status.success(), "ctr run -d: {}", describe(&out));
    c.wait_task_status(id, "RUNNING", BOOT);
    let exec = |exec_id: &str| {
        let out = c.ctr(&[
            "tasks",
            "exec",
            "--exec-id",
            exec_id,
            id,
            "sh",
            "-c",
            "echo $((6*7))",
        ]);
        assert!(out.status.success(), "exec {exec_id}: {}", describe(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "42",
            "exec {exec_id}"
        );
    };
    exec("before");
    assert_eq!(
        kill_factories(&c, id),
        expected,
        "container factories in the guest"
    );
    exec("after");
    exec("again");
    assert_eq!(c.task_status(id).as_deref(), Some("RUNNING"));
    remove_pod(&c, id);
    c.assert_nothing_left("a pod whose container factory was killed");
}

/// The guest's container factory (see agent/src/libct/factory.rs) runs in a real pod, and when
/// it dies the pod goes on: execs fall back to a helper exec'd per operation.
#[test]
fn vm_exec_goes_on_when_the_container_factory_is_killed() {
    execs_with_the_factory(true, 1);
}

/// `[agent] container_factory = false`: no factory in the guest, every operation execs a helper.
#[test]
fn vm_container_factory_off_runs_every_operation_in_a_helper() {
    execs_with_the_factory(false, 0);
}
