//! What a workload gets from the guest kernel and the guest agent through plain containerd
//! (`ctr`, no CRI), side by side with runc in the same private containerd:
//!
//! - a privileged container (`ctr run --privileged`) uses iptables (legacy and nft) REDIRECT,
//!   nft, a bridge with a veth pair and traffic across, a TUN device and a FUSE mount, with the
//!   scripts the CRI tests use (`isola_tests::workload_scripts`);
//! - a container whose OCI spec has no environment at all (so no `PATH`), which `ctr` only
//!   makes with `ctr run --config <spec.json>`: absolute and bare program names, for the
//!   container's process and for `ctr tasks exec`.
//!
//! Each isola container runs in its own VM (TCG here), so these are `vm_*` tests.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use isola_tests::containerd::{describe, Containerd, NAMESPACE, RUNTIME, TEST_IMAGE};
use isola_tests::workload_scripts::{
    redirect_with, tools_tar, BRIDGE, BRIDGE_MARKER, FUSE, FUSE_MARKER, NFT_REDIRECT,
    NFT_REDIRECT_MARKER, REDIRECT_MARKER, TOOLS_IMAGE, TUN, TUN_MARKER,
};
use serde_json::{json, Value};

/// How long a container may take to reach RUNNING (a VM boot under TCG, on a shared host).
const BOOT: Duration = Duration::from_secs(120);
const RUNC: &str = "io.containerd.runc.v2";

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `ctr tasks exec --exec-id <exec_id> <id> <args...>`.
fn exec(c: &Containerd, id: &str, exec_id: &str, args: &[&str]) -> Output {
    let mut all = vec!["tasks", "exec", "--exec-id", exec_id, id];
    all.extend_from_slice(args);
    c.ctr(&all)
}

/// [`exec`] that must succeed; its stdout.
fn exec_ok(c: &Containerd, id: &str, exec_id: &str, args: &[&str]) -> String {
    let out = exec(c, id, exec_id, args);
    assert!(
        out.status.success(),
        "{id}: {}: {}",
        args.join(" "),
        describe(&out)
    );
    stdout(&out)
}

/// `ctr run -d --privileged` of the tools image with `runtime`, sleeping; waits until it runs.
fn run_privileged(c: &Containerd, runtime: &str, id: &str) {
    let fifo = c.fifo_dir().to_string_lossy().into_owned();
    let out = c.ctr(&[
        "run",
        "-d",
        "--runtime",
        runtime,
        "--fifo-dir",
        &fifo,
        "--privileged",
        TOOLS_IMAGE,
        id,
        "sleep",
        "100000",
    ]);
    assert!(out.status.success(), "ctr run -d {id}: {}", describe(&out));
    c.wait_task_status(id, "RUNNING", BOOT);
}

/// The network interfaces container `id` sees.
fn links(c: &Containerd, id: &str) -> Vec<String> {
    exec_ok(c, id, &format!("{id}-links"), &["ls", "/sys/class/net"])
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// `/sys/class/net/lo/flags` of an `lo` that is up (IFF_LOOPBACK | IFF_UP).
const LO_UP: &str = "0x9";

/// The flags of `lo` in container `id` (`n`: for an exec id of its own).
fn lo_flags(c: &Containerd, id: &str, n: u32) -> String {
    let flags = exec_ok(
        c,
        id,
        &format!("{id}-lo{n}"),
        &["cat", "/sys/class/net/lo/flags"],
    );
    flags.trim().to_string()
}

/// runc brings `lo` up in a network namespace it creates; so does isola's agent.
#[test]
fn vm_ctr_a_new_network_namespace_has_loopback_up_like_runc() {
    let c = Containerd::start();
    c.import_test_image();
    for runtime in [RUNC, RUNTIME] {
        c.run_detached(runtime, &[], "t-lo", &["sleep", "100000"], BOOT);
        let flags = lo_flags(&c, "t-lo", 0);
        let ping = exec(
            &c,
            "t-lo",
            "ping",
            &["ping", "-c", "1", "-W", "5", "127.0.0.1"],
        );
        c.kill_and_remove("t-lo");
        assert_eq!(flags, LO_UP, "{runtime}: the flags of lo");
        assert!(
            ping.status.success(),
            "{runtime}: ping 127.0.0.1: {}",
            describe(&ping)
        );
    }
    c.assert_nothing_left("removing the containers");
}

#[test]
fn vm_ctr_privileged_container_runs_network_and_device_workloads_like_runc() {
    let c = Containerd::start();
    assert_eq!(c.import_image(&tools_tar()), TOOLS_IMAGE);
    run_privileged(&c, RUNTIME, "w-isola");
    run_privileged(&c, RUNC, "w-runc");

    // Everything happens in the guest's kernel: its release, and no interface of the host's.
    let kernel = exec_ok(&c, "w-isola", "uname", &["uname", "-r"]);
    assert_eq!(kernel.trim(), isola_tests::guest_kernel_release());
    assert_eq!(links(&c, "w-isola"), ["lo"], "isola's interfaces");
    // The runc container is the host kernel's: the scripts below may only run there because
    // `ctr run` without --net-host gives it a network namespace of its own (only `lo`), so its
    // iptables/nft rules, bridge, veth and TUN links are that namespace's and go with it, and
    // its FUSE mount stays in its own mount namespace. Checked first: if it ever shared the
    // host's network namespace, the test stops here, before touching anything.
    let host_netns = std::fs::read_link("/proc/self/ns/net").expect("the host's netns");
    let runc_netns = exec_ok(&c, "w-runc", "netns", &["readlink", "/proc/self/ns/net"]);
    assert_ne!(
        Path::new(runc_netns.trim()),
        host_netns,
        "the runc container shares the host's network namespace: not running the scripts there"
    );
    assert_eq!(links(&c, "w-runc"), ["lo"], "runc's interfaces");
    assert_eq!(lo_flags(&c, "w-runc", 0), LO_UP, "runc's lo");
    assert_eq!(lo_flags(&c, "w-isola", 0), LO_UP, "isola's lo");

    let scripts: Vec<(&str, String, &str, Vec<&str>)> = vec![
        (
            "iptables-legacy REDIRECT",
            redirect_with("iptables-legacy"),
            REDIRECT_MARKER,
            vec!["--to-ports 8081"],
        ),
        (
            "iptables-nft REDIRECT",
            redirect_with("iptables-nft"),
            REDIRECT_MARKER,
            vec!["--to-ports 8081"],
        ),
        (
            "nft redirect",
            NFT_REDIRECT.into(),
            NFT_REDIRECT_MARKER,
            vec!["redirect to :8082"],
        ),
        ("bridge and veth", BRIDGE.into(), BRIDGE_MARKER, vec![]),
        (
            "TUN",
            TUN.into(),
            TUN_MARKER,
            vec!["tun-t:", "tun type tun"],
        ),
        (
            "FUSE",
            FUSE.into(),
            FUSE_MARKER,
            vec!["/srv/fuse fuse", "through-fuse"],
        ),
    ];
    for id in ["w-isola", "w-runc"] {
        for (n, (what, script, marker, wanted)) in scripts.iter().enumerate() {
            let out = exec(&c, id, &format!("s{n}"), &["sh", "-ec", script]);
            let text = stdout(&out);
            assert!(
                out.status.success() && text.trim_end().ends_with(marker),
                "{id}: {what}: {}",
                describe(&out)
            );
            for w in wanted {
                assert!(text.contains(w), "{id}: {what}: no {w:?} in:\n{text}");
            }
        }
    }

    c.kill_and_remove("w-isola");
    c.kill_and_remove("w-runc");
    c.assert_nothing_left("removing the privileged containers");
}

/// The image's rootfs, mounted by containerd at `<private dir>/rootfs-<tag>` for a container
/// run with `--config` (ctr then takes no image and prepares no snapshot).
fn mount_rootfs(c: &Containerd, tag: &str) -> PathBuf {
    let target = c.dir().join(format!("rootfs-{tag}"));
    std::fs::create_dir(&target).expect("creating the rootfs mount point");
    let t = target.to_string_lossy().into_owned();
    let out = c.ctr(&["images", "mount", "--rw", TEST_IMAGE, &t]);
    assert!(out.status.success(), "ctr images mount: {}", describe(&out));
    assert!(target.join("bin/busybox").is_file(), "{}", target.display());
    target
}

fn unmount_rootfs(c: &Containerd, target: &Path) {
    let t = target.to_string_lossy().into_owned();
    let out = c.ctr(&["images", "unmount", "--rm", &t]);
    assert!(
        out.status.success(),
        "ctr images unmount: {}",
        describe(&out)
    );
}

/// `ctr oci spec` (containerd's default spec, with no `process.env` at all) for container `id`
/// with `rootfs`, running `args` with an empty environment; written next to the rootfs.
fn spec_file(c: &Containerd, base: &Value, id: &str, rootfs: &Path, args: &[&str]) -> String {
    let mut spec = base.clone();
    spec["root"] = json!({ "path": rootfs });
    // `ctr oci spec` names the namespace's own cgroup, the parent of every other container's.
    spec["linux"]["cgroupsPath"] = json!(format!("/{NAMESPACE}/{id}"));
    spec["process"]["args"] = json!(args);
    spec["process"]["env"] = json!([]);
    let path = c.dir().join(format!("spec-{id}.json"));
    std::fs::write(&path, spec.to_string()).expect("writing the spec");
    path.to_string_lossy().into_owned()
}

/// `ctr run [--rm|-d] --config <spec> <id>` with `runtime`.
fn run_config(c: &Containerd, runtime: &str, mode: &str, spec: &str, id: &str) -> Output {
    let fifo = c.fifo_dir().to_string_lossy().into_owned();
    c.ctr(&[
        "run",
        mode,
        "--runtime",
        runtime,
        "--fifo-dir",
        &fifo,
        "--config",
        spec,
        id,
    ])
}

/// Prints the marker, the environment the shell was started with (one entry a line), `end`.
/// (busybox sh sets a `PATH` variable of its own when it got none, so `$PATH` cannot tell; and
/// it execs the last command of `-c` in its place, so that must not be the one reading it.)
fn env_script(marker: &str) -> String {
    format!("echo {marker}; tr '\\0' '\\n' </proc/$$/environ; echo end")
}

/// runc 1.1 (Debian 12's) looks a bare name up in the process's own `PATH` only, and with none
/// refuses it; isola searches the default `PATH` then (agent/src/libct/lookup.rs). So runc
/// either runs it as isola does (a runc that searches the default too) or refuses it thus.
fn runc_like(what: &str, ours: &str, runc: &Output) {
    if runc.status.success() {
        assert_eq!(ours, stdout(runc), "{what}: isola's output and runc's");
    } else {
        let err = stderr(runc);
        assert!(
            err.contains("executable file not found in $PATH"),
            "{what}: runc failed otherwise: {}",
            describe(runc)
        );
        eprintln!(
            "{what}: runc refuses a bare name without PATH: {}",
            err.trim()
        );
    }
}

#[test]
fn vm_ctr_a_spec_without_path_runs_absolute_and_bare_names() {
    let c = Containerd::start();
    c.import_test_image();
    let base = c.ctr(&["oci", "spec"]);
    assert!(base.status.success(), "ctr oci spec: {}", describe(&base));
    let base: Value = serde_json::from_slice(&base.stdout).expect("ctr oci spec is JSON");
    assert!(
        base["process"]["env"].is_null(),
        "ctr's default spec has an environment: {base}"
    );

    let mut outputs = Vec::new();
    for (runtime, tag) in [(RUNTIME, "isola"), (RUNC, "runc")] {
        let rootfs = mount_rootfs(&c, tag);
        // (a) An absolute path: the environment stays empty but for the HOME both add.
        let id = format!("abs-{tag}");
        let spec = spec_file(
            &c,
            &base,
            &id,
            &rootfs,
            &["/bin/sh", "-c", &env_script("abs-ok")],
        );
        let abs = run_config(&c, runtime, "--rm", &spec, &id);
        assert!(abs.status.success(), "{id}: {}", describe(&abs));
        assert_eq!(stdout(&abs), "abs-ok\nHOME=/root\nend\n", "{id}");

        // (b) A bare name.
        let id = format!("bare-{tag}");
        let spec = spec_file(
            &c,
            &base,
            &id,
            &rootfs,
            &["sh", "-c", &env_script("bare-ok")],
        );
        let bare = run_config(&c, runtime, "--rm", &spec, &id);
        // A task that never started leaves its container (ctr run --rm removes it only after).
        if c.containers().contains(&id) {
            let rm = c.ctr(&["containers", "rm", &id]);
            assert!(
                rm.status.success(),
                "ctr containers rm {id}: {}",
                describe(&rm)
            );
        }

        // (c) Execs into a running container whose spec has no environment: ctr tasks exec
        // takes the container's process (so no PATH) with other arguments.
        let id = format!("sleep-{tag}");
        let spec = spec_file(&c, &base, &id, &rootfs, &["/bin/sleep", "100000"]);
        let run = run_config(&c, runtime, "-d", &spec, &id);
        assert!(run.status.success(), "{id}: {}", describe(&run));
        c.wait_task_status(&id, "RUNNING", BOOT);
        let info = c.ctr(&["containers", "info", &id]);
        let info: Value = serde_json::from_slice(&info.stdout).expect("ctr containers info");
        let env = &info["Spec"]["process"]["env"];
        assert!(
            env.as_array().is_none_or(|e| e.is_empty()),
            "{id}: containerd's spec has an environment: {env}"
        );
        let exec_abs = exec_ok(
            &c,
            &id,
            "e-abs",
            &["/bin/sh", "-c", &env_script("exec-abs-ok")],
        );
        assert_eq!(exec_abs, "exec-abs-ok\nHOME=/root\nend\n", "{id}");
        let exec_bare = exec(
            &c,
            &id,
            "e-bare",
            &["sh", "-c", &env_script("exec-bare-ok")],
        );
        c.kill_and_remove(&id);
        unmount_rootfs(&c, &rootfs);
        outputs.push((bare, exec_bare));
    }

    let (isola_bare, isola_exec) = &outputs[0];
    let (runc_bare, runc_exec) = &outputs[1];
    // isola finds `sh` in the default PATH, for the container's process and for an exec, and
    // leaves the environment as the spec says.
    assert!(
        isola_bare.status.success(),
        "bare-isola: {}",
        describe(isola_bare)
    );
    assert_eq!(stdout(isola_bare), "bare-ok\nHOME=/root\nend\n");
    assert!(
        isola_exec.status.success(),
        "exec into sleep-isola: {}",
        describe(isola_exec)
    );
    assert_eq!(stdout(isola_exec), "exec-bare-ok\nHOME=/root\nend\n");
    runc_like(
        "a bare name as the container's process",
        &stdout(isola_bare),
        runc_bare,
    );
    runc_like("a bare name in an exec", &stdout(isola_exec), runc_exec);

    c.assert_nothing_left("removing the containers without PATH");
}
