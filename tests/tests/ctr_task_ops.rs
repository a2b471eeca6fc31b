//! The rest of containerd's Task API through `ctr`, against a private containerd (see
//! tests/src/containerd.rs): exec (with and without a terminal, several at once, kill of an
//! exec), pause/resume, metrics, ps, update, OOM and checkpoint. Each container runs in its own
//! VM (TCG here), so these are `vm_*` tests.
//!
//! containerd 1.6's ctr has no `tasks update`: the update test sends the Task API's Update to
//! the shim's own ttrpc socket (the address containerd recorded for the task), encoded by hand
//! below, which is what containerd's tasks service does with `ctr task update` in later versions.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Output;
use std::time::{Duration, Instant};

use isola_tests::containerd::{describe, Containerd, CtrChild, NAMESPACE, RUNTIME};

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

/// `ctr run -d` of `cmd` with extra options; waits until the task runs.
fn run_detached(c: &Containerd, opts: &[&str], id: &str, cmd: &[&str]) {
    c.run_detached(RUNTIME, opts, id, cmd, BOOT);
}

/// Kills and removes a detached task and its container, then checks nothing is left.
fn remove(c: &Containerd, id: &str) {
    c.kill_and_remove(id);
    c.assert_nothing_left(id);
}

fn exec_args<'a>(c: &'a str, exec_id: &'a str, cmd: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["tasks", "exec", "--exec-id", exec_id, c];
    args.extend_from_slice(cmd);
    args
}

/// `ctr tasks metrics <id>` as (metric, value) pairs.
fn metrics(c: &Containerd, id: &str) -> Vec<(String, String)> {
    let out = c.ctr(&["tasks", "metrics", id]);
    assert!(
        out.status.success(),
        "ctr tasks metrics: {}",
        describe(&out)
    );
    stdout(&out)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (k, v) = (f.next()?, f.next()?);
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

fn metric(all: &[(String, String)], name: &str) -> u64 {
    all.iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {name} in ctr tasks metrics: {all:?}"))
}

/// Waits until `ctr tasks ps <id>` lists exec `exec_id` (by its ProcessDetails).
fn wait_in_ps(c: &Containerd, id: &str, exec_id: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ps = c.ctr(&["tasks", "ps", id]);
        if stdout(&ps).contains(&format!("ExecID:{exec_id},")) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "exec {exec_id} never showed in ctr tasks ps: {}",
            describe(&ps)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn vm_ctr_task_exec_with_and_without_tty() {
    let c = started();
    run_detached(&c, &[], "t-exec", &["sleep", "1000"]);

    // Without a terminal: stdout and stderr apart, the exec's own exit code.
    let out = c.ctr(&exec_args(
        "t-exec",
        "e-plain",
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
    ));
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    assert_eq!(stdout(&out), "out\n", "{}", describe(&out));
    assert!(stderr(&out).contains("err"), "{}", describe(&out));
    // ctr deletes an exec when it ends: its id can be used again, as under runc.
    let again = c.ctr(&exec_args("t-exec", "e-plain", &["echo", "again"]));
    assert!(
        again.status.success() && stdout(&again) == "again\n",
        "reusing an exec id: {}",
        describe(&again)
    );

    // With a terminal: the process sees a tty.
    let (code, term) = c.ctr_on_pty(
        &[
            "tasks",
            "exec",
            "-t",
            "--exec-id",
            "e-tty",
            "t-exec",
            "sh",
            "-c",
            "[ -t 0 ] && [ -t 1 ] && echo is-a-tty; exit 4",
        ],
        Duration::from_secs(120),
    );
    assert_eq!(code, Some(4), "terminal output: {term:?}");
    assert!(term.contains("is-a-tty"), "terminal output: {term:?}");

    // ctr's own terminal size reaches the process (ResizePty -> the guest pty).
    let (code, term) = c.ctr_on_sized_pty(
        &[
            "tasks",
            "exec",
            "-t",
            "--exec-id",
            "e-size",
            "t-exec",
            "sh",
            "-c",
            "sleep 1; stty size",
        ],
        Duration::from_secs(120),
        Some((37, 91)),
    );
    assert_eq!(code, Some(0), "terminal output: {term:?}");
    assert!(term.contains("37 91"), "terminal output: {term:?}");

    // Several at once, each with its own exit code and output.
    let mut running: Vec<(u8, CtrChild)> = (10..13u8)
        .map(|n| {
            let id = format!("e-many-{n}");
            let script = format!("sleep 1; echo many-{n}; exit {n}");
            let args = exec_args("t-exec", &id, &["sh", "-c", &script]);
            (n, c.ctr_spawn(&args))
        })
        .collect();
    for (n, child) in running.iter_mut() {
        let out = child.wait(Duration::from_secs(120));
        assert_eq!(out.status.code(), Some(i32::from(*n)), "{}", describe(&out));
        assert_eq!(stdout(&out), format!("many-{n}\n"), "{}", describe(&out));
    }

    // An exec killed by its exec id: its ctr (which waits for it and deletes it) sees 137, the
    // container goes on.
    let mut long = c.ctr_spawn(&exec_args("t-exec", "e-long", &["sleep", "1000"]));
    wait_in_ps(&c, "t-exec", "e-long");
    let k = c.ctr(&[
        "tasks",
        "kill",
        "--exec-id",
        "e-long",
        "-s",
        "SIGKILL",
        "t-exec",
    ]);
    assert!(
        k.status.success(),
        "ctr tasks kill --exec-id: {}",
        describe(&k)
    );
    let out = long.wait(Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(137), "{}", describe(&out));
    assert_eq!(c.task_status("t-exec").as_deref(), Some("RUNNING"));
    // ctr deleted it: it is gone from the shim too.
    let k = c.ctr(&["tasks", "kill", "--exec-id", "e-long", "t-exec"]);
    assert!(
        !k.status.success(),
        "killing a deleted exec: {}",
        describe(&k)
    );

    // A detached exec, killed, then deleted by id.
    let d = c.ctr(&[
        "tasks",
        "exec",
        "-d",
        "--exec-id",
        "e-det",
        "t-exec",
        "sleep",
        "1000",
    ]);
    assert!(d.status.success(), "ctr tasks exec -d: {}", describe(&d));
    wait_in_ps(&c, "t-exec", "e-det");
    let k = c.ctr(&[
        "tasks",
        "kill",
        "--exec-id",
        "e-det",
        "-s",
        "SIGKILL",
        "t-exec",
    ]);
    assert!(k.status.success(), "{}", describe(&k));
    // ctr tasks rm --exec-id waits for the exit and reports it as its own status.
    let rm = c.ctr(&["tasks", "rm", "--exec-id", "e-det", "t-exec"]);
    assert_eq!(
        rm.status.code(),
        Some(137),
        "ctr tasks rm --exec-id: {}",
        describe(&rm)
    );
    let ps = c.ctr(&["tasks", "ps", "t-exec"]);
    assert!(!stdout(&ps).contains("e-det"), "{}", describe(&ps));
    remove(&c, "t-exec");
}

#[test]
fn vm_ctr_task_pause_stops_a_counter_and_resume_restarts_it() {
    let c = started();
    let args = c.run_args(
        &["--rm"],
        "t-pause",
        &[
            "sh",
            "-c",
            "i=0; while true; do i=$((i+1)); echo $i; sleep 0.2; done",
        ],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut run = c.ctr_spawn(&args);
    c.wait_running("t-pause", &mut run, BOOT);
    run.wait_for_stdout(BOOT, |o| o.lines().count() >= 3);

    let p = c.ctr(&["tasks", "pause", "t-pause"]);
    assert!(p.status.success(), "ctr tasks pause: {}", describe(&p));
    assert_eq!(c.task_status("t-pause").as_deref(), Some("PAUSED"));
    // Output in flight when the freeze hit may still arrive: settle, then count.
    std::thread::sleep(Duration::from_secs(1));
    let frozen = run.stdout_so_far().lines().count();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        run.stdout_so_far().lines().count(),
        frozen,
        "the counter went on while paused"
    );
    let again = c.ctr(&["tasks", "pause", "t-pause"]);
    assert!(
        !again.status.success(),
        "pausing a paused task: {}",
        describe(&again)
    );

    let r = c.ctr(&["tasks", "resume", "t-pause"]);
    assert!(r.status.success(), "ctr tasks resume: {}", describe(&r));
    assert_eq!(c.task_status("t-pause").as_deref(), Some("RUNNING"));
    run.wait_for_stdout(Duration::from_secs(30), |o| o.lines().count() >= frozen + 3);

    let k = c.ctr(&["tasks", "kill", "-s", "SIGKILL", "t-pause"]);
    assert!(k.status.success(), "{}", describe(&k));
    let out = run.wait(Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(137), "{}", describe(&out));
    c.assert_nothing_left("pause and resume");
}

#[test]
fn vm_ctr_task_metrics_and_ps() {
    let c = started();
    run_detached(
        &c,
        &[],
        "t-metrics",
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; exec sleep 1000",
        ],
    );
    let m = metrics(&c, "t-metrics");
    assert!(metric(&m, "memory.usage") > 0, "{m:?}");
    assert!(metric(&m, "cpu.usage_usec") > 0, "{m:?}");
    assert!(metric(&m, "pids.current") >= 1, "{m:?}");

    let ps = c.ctr(&["tasks", "ps", "t-metrics"]);
    assert!(ps.status.success(), "ctr tasks ps: {}", describe(&ps));
    let pids: Vec<u32> = stdout(&ps)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(!pids.is_empty(), "{}", describe(&ps));
    // Guest pids: the container's init is 1 in the guest's PID namespace of the container, or
    // some small number in the guest; never the VMM's host pid that ctr tasks ls shows.
    let host_pid = c
        .tasks()
        .into_iter()
        .find(|t| t.id == "t-metrics")
        .map(|t| t.pid)
        .unwrap();
    assert!(!pids.contains(&host_pid), "{pids:?} vs {host_pid}");
    remove(&c, "t-metrics");
}

/// The shim's ttrpc socket for task `id` (containerd records it in the task's bundle).
fn shim_socket(c: &Containerd, id: &str) -> std::path::PathBuf {
    let file = c
        .dir()
        .join("state/io.containerd.runtime.v2.task")
        .join(NAMESPACE)
        .join(id)
        .join("address");
    let address = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
    let path = address.trim();
    let path = path.split_once("://").map(|(_, p)| p).unwrap_or(path);
    std::path::PathBuf::from(path)
}

fn pb_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn pb_bytes(out: &mut Vec<u8>, field: u64, data: &[u8]) {
    pb_varint(out, (field << 3) | 2);
    pb_varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

fn pb_read_varint(b: &[u8], i: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let byte = b[*i];
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return v;
        }
        shift += 7;
    }
}

/// The length-delimited fields and varints of one protobuf message: (field, varint, bytes).
fn pb_fields(b: &[u8]) -> Vec<(u64, u64, Vec<u8>)> {
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let key = pb_read_varint(b, &mut i);
        match key & 7 {
            0 => out.push((key >> 3, pb_read_varint(b, &mut i), Vec::new())),
            2 => {
                let n = pb_read_varint(b, &mut i) as usize;
                out.push((key >> 3, 0, b[i..i + n].to_vec()));
                i += n;
            }
            other => panic!("unexpected wire type {other}"),
        }
    }
    out
}

/// Sends the Task API's Update with OCI `LinuxResources` JSON straight to the shim; returns
/// the ttrpc status (code, message), (0, "") for OK.
fn shim_update(c: &Containerd, id: &str, resources_json: &str) -> (u64, String) {
    let mut any = Vec::new();
    pb_bytes(
        &mut any,
        1,
        b"types.containerd.io/opencontainers/runtime-spec/1/LinuxResources",
    );
    pb_bytes(&mut any, 2, resources_json.as_bytes());
    let mut update = Vec::new();
    pb_bytes(&mut update, 1, id.as_bytes());
    pb_bytes(&mut update, 2, &any);
    let mut req = Vec::new();
    pb_bytes(&mut req, 1, b"containerd.task.v2.Task");
    pb_bytes(&mut req, 2, b"Update");
    pb_bytes(&mut req, 3, &update);
    let mut frame = Vec::new();
    frame.extend_from_slice(&(req.len() as u32).to_be_bytes());
    frame.extend_from_slice(&1u32.to_be_bytes()); // stream id
    frame.extend_from_slice(&[1, 0]); // request, no flags
    frame.extend_from_slice(&req);
    let mut s = UnixStream::connect(shim_socket(c, id)).expect("connecting to the shim");
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s.write_all(&frame).unwrap();
    let mut header = [0u8; 10];
    s.read_exact(&mut header).expect("the shim's answer");
    let len = u32::from_be_bytes(header[..4].try_into().unwrap()) as usize;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    let status = pb_fields(&body)
        .into_iter()
        .find(|(f, _, _)| *f == 1)
        .map(|(_, _, b)| b)
        .unwrap_or_default();
    let mut code = 0;
    let mut message = String::new();
    for (f, v, b) in pb_fields(&status) {
        match f {
            1 => code = v,
            2 => message = String::from_utf8_lossy(&b).into_owned(),
            _ => {}
        }
    }
    (code, message)
}

#[test]
fn vm_task_update_raises_a_memory_limit() {
    let c = started();
    run_detached(
        &c,
        &["--memory-limit", "33554432"],
        "t-update",
        &["sleep", "1000"],
    );
    let m = metrics(&c, "t-update");
    assert_eq!(metric(&m, "memory.usage_limit"), 33554432, "{m:?}");

    let (code, msg) = shim_update(&c, "t-update", r#"{"memory":{"limit":67108864}}"#);
    assert_eq!((code, msg.as_str()), (0, ""), "Update");
    let m = metrics(&c, "t-update");
    assert_eq!(metric(&m, "memory.usage_limit"), 67108864, "{m:?}");

    // Past the VM's memory (512 MiB): the VM grows by memory hotplug, the guest onlines it and
    // the container gets the new limit.
    let (code, msg) = shim_update(&c, "t-update", r#"{"memory":{"limit":1073741824}}"#);
    assert_eq!((code, msg.as_str()), (0, ""), "Update past the VM's memory");
    let m = metrics(&c, "t-update");
    assert_eq!(metric(&m, "memory.usage_limit"), 1073741824, "{m:?}");
    let out = c.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "meminfo",
        "t-update",
        "cat",
        "/proc/meminfo",
    ]);
    let meminfo = String::from_utf8_lossy(&out.stdout).into_owned();
    let total_kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in {}", describe(&out)));
    assert!(
        total_kib > 900 * 1024,
        "the guest did not grow past its initial 512 MiB: MemTotal {total_kib} kB"
    );
    // `isola ps` shows the grown VM at once.
    let ps = std::process::Command::new(isola_tests::containerd::shim_dir().join("isola"))
        .arg("--config")
        .arg(c.isola_config())
        .args(["ps", "--json"])
        .output()
        .expect("running isola ps");
    let listed: serde_json::Value = serde_json::from_slice(&ps.stdout)
        .unwrap_or_else(|e| panic!("isola ps --json: {e}: {}", describe(&ps)));
    let pod = listed
        .as_array()
        .and_then(|a| a.iter().find(|p| p["sandbox_id"] == "t-update"))
        .unwrap_or_else(|| panic!("t-update not in {listed}"));
    let mib = pod["memory_mib"].as_u64().unwrap_or(0);
    assert!(mib >= 1024, "isola ps shows {mib} MiB: {pod}");

    // Malformed resources: InvalidArgument (3).
    let (code, msg) = shim_update(&c, "t-update", r#"{"memory":{"limit":"lots"}}"#);
    assert_eq!(code, 3, "{msg}");
    remove(&c, "t-update");
}

#[test]
fn vm_ctr_run_oom_gives_137_and_an_oom_event() {
    let c = started();
    let mut events = c.ctr_spawn(&["events"]);
    std::thread::sleep(Duration::from_millis(300));
    let out = c.run_with(
        &["--rm", "--memory-limit", "33554432"],
        "t-oom",
        &["sh", "-c", "head -c 200m /dev/zero | tail"],
        None,
    );
    assert_eq!(out.status.code(), Some(137), "{}", describe(&out));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !events
        .stdout_so_far()
        .lines()
        .any(|l| l.contains("/tasks/oom") && l.contains("t-oom"))
    {
        assert!(
            Instant::now() < deadline,
            "no /tasks/oom event for t-oom in:\n{}",
            events.stdout_so_far()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(events.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = events.wait(Duration::from_secs(10));
    c.assert_nothing_left("an OOM kill");
}

#[test]
fn vm_ctr_task_checkpoint_is_unsupported() {
    let c = started();
    run_detached(&c, &[], "t-ckpt", &["sleep", "1000"]);
    let out = c.ctr(&["tasks", "checkpoint", "t-ckpt"]);
    assert!(
        !out.status.success(),
        "a checkpoint was taken: {}",
        describe(&out)
    );
    assert!(
        stderr(&out).contains("checkpoint/restore is not supported by isola"),
        "{}",
        describe(&out)
    );
    // ctr pauses around a checkpoint and resumes after it: the task runs on.
    assert_eq!(c.task_status("t-ckpt").as_deref(), Some("RUNNING"));
    remove(&c, "t-ckpt");
}
