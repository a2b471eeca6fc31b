//! What an exec'd process gets in a real pod VM (TCG here), driven over ttrpc as the shim
//! drives it: the security settings its process spec leaves out come from its container (the
//! seccomp filter always), and programs are found as runc finds them, also without `PATH`.

mod agent_support;

use agent_support::*;
use isola_agent_proto::agent::stdio_stream_header::Stream;
use isola_agent_proto::agent::*;
use isola_tests::probe::{field, DENIED_BY_PROFILE, PROBE};

/// The container's security settings: CAP_CHOWN and CAP_KILL only, 77 open files,
/// no_new_privs, an OOM score, and a filter refusing chmod with EOPNOTSUPP.
const SECURITY: &str = r#""capabilities": {"bounding": ["CAP_CHOWN", "CAP_KILL"],
        "effective": ["CAP_CHOWN", "CAP_KILL"], "permitted": ["CAP_CHOWN", "CAP_KILL"]},
    "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 77, "soft": 77}],
    "noNewPrivileges": true, "oomScoreAdj": 123, "cwd": "/""#;
const SECCOMP: &str = r#""linux": {
    "seccomp": {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["chmod", "fchmod", "fchmodat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 95}]},"#;

/// Runs exec `eid` with the process JSON `process` in `cid`; returns its exit code and output.
async fn run(pod: &Pod, cid: &str, eid: &str, process: String) -> (i32, String) {
    let req = ExecProcessRequest {
        container_id: cid.into(),
        exec_id: eid.into(),
        process_json: process.into_bytes(),
        stdio: Some(stdio(false, true, true, false)).into(),
        ..Default::default()
    };
    pod.agent()
        .exec_process(isola_agent_client::context(RPC), &req)
        .await
        .map_err(err)
        .unwrap_or_else(|e| panic!("ExecProcess {eid}: {e}"));
    let out = pod.stream(cid, eid, Stream::STDOUT).await;
    let errs = pod.stream(cid, eid, Stream::STDERR).await;
    let code = pod.wait(cid, eid).await.unwrap();
    let mut text = read_all(out).await;
    text.push_str(&read_all(errs).await);
    (code, text)
}

/// A process JSON without any security setting.
fn bare(args: &[&str], env: &str) -> String {
    format!(
        r#"{{"user": {{"uid": 0, "gid": 0}}, "args": [{}], "env": [{env}], "cwd": "/"}}"#,
        quote(args)
    )
}

fn applets(pod: &Pod, cid: &str, names: &[&str]) {
    let bin = pod.vm.paths.shared_dir.join(cid).join("rootfs/bin");
    for a in names {
        std::os::unix::fs::symlink("busybox", bin.join(a)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_a_bare_exec_inherits_its_containers_security_settings() {
    let pod = Pod::boot("t-inherit").await;
    pod.rootfs("c1");
    applets(&pod, "c1", &["chmod", "touch", "rm"]);
    let tmp = pod.vm.paths.shared_dir.join("c1/rootfs/tmp");
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let spec = spec_json("c1", &["sleep", "1000"])
        .replacen(r#""cwd": "/""#, SECURITY, 1)
        .replacen(r#""linux": {"#, SECCOMP, 1);
    pod.create_spec("c1", &spec, stdio(false, false, false, false))
        .await
        .expect("CreateContainer");
    pod.start("c1").await.unwrap();

    let path = r#""PATH=/bin""#;
    let (code, out) = run(&pod, "c1", "bare", bare(&["sh", "-c", PROBE], path)).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(field(&out, "Seccomp"), "2", "{out}");
    assert_eq!(field(&out, "NoNewPrivs"), "1", "{out}");
    // CAP_CHOWN (0) and CAP_KILL (5).
    assert_eq!(field(&out, "CapEff"), "0000000000000021", "{out}");
    assert_eq!(field(&out, "CapBnd"), "0000000000000021", "{out}");
    assert_eq!(field(&out, "nofile"), "77", "{out}");
    assert_eq!(field(&out, "oom"), "123", "{out}");
    assert!(field(&out, "chmod").contains(DENIED_BY_PROFILE), "{out}");

    // What the exec says wins, but the filter is always the container's: here no
    // no_new_privs and no CAP_SYS_ADMIN, so the agent installs it with CAP_SYS_ADMIN held
    // for the moment and drops it again.
    let own = format!(
        r#"{{"user": {{"uid": 1000, "gid": 1000}}, "args": ["sh", "-c", {probe:?}],
            "env": [{path}], "cwd": "/", "noNewPrivileges": false,
            "capabilities": {{"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"],
                              "permitted": ["CAP_KILL"]}},
            "rlimits": [{{"type": "RLIMIT_NOFILE", "hard": 66, "soft": 66}}]}}"#,
        probe = PROBE
    );
    let (code, out) = run(&pod, "c1", "own", own).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(field(&out, "Seccomp"), "2", "{out}");
    assert_eq!(field(&out, "NoNewPrivs"), "0", "{out}");
    // uid 1000 keeps no effective capability across execve; the bounding set is the exec's.
    assert_eq!(field(&out, "CapEff"), "0000000000000000", "{out}");
    assert_eq!(field(&out, "CapBnd"), "0000000000000020", "{out}");
    assert_eq!(field(&out, "nofile"), "66", "{out}");
    assert!(field(&out, "chmod").contains(DENIED_BY_PROFILE), "{out}");

    pod.remove("c1", 1)
        .await
        .expect("remove with a timeout kills");
    pod.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_programs_are_found_without_path_like_runc() {
    let pod = Pod::boot("t-path").await;
    pod.rootfs("c1");
    // The container itself has no PATH: a bare name still runs (the default search path).
    let spec = spec_json("c1", &["sleep", "1000"]).replacen(r#""PATH=/bin", "#, "", 1);
    assert!(!spec.contains("PATH="), "{spec}");
    pod.create_spec("c1", &spec, stdio(false, false, false, false))
        .await
        .expect("CreateContainer without PATH");
    pod.start("c1").await.unwrap();

    // The environment stays as the spec says: no PATH is added.
    let (code, out) = run(&pod, "c1", "e1", bare(&["busybox", "env"], r#""A=1""#)).await;
    assert_eq!((code, out.as_str()), (0, "A=1\n"));
    let (code, out) = run(&pod, "c1", "e2", bare(&["/bin/echo", "absolute"], "")).await;
    assert_eq!((code, out.as_str()), (0, "absolute\n"));
    // A PATH that exists is used, and only it.
    let e = pod
        .exec_raw("c1", "e3", bare(&["echo", "x"], r#""PATH=/nowhere""#))
        .await
        .unwrap_err();
    assert!(
        e.contains("\\\"echo\\\": executable file not found in $PATH (PATH=/nowhere)"),
        "{e}"
    );
    let e = pod
        .exec_raw("c1", "e4", bare(&["missing-tool"], ""))
        .await
        .unwrap_err();
    assert!(e.contains("missing-tool") && e.contains("no PATH"), "{e}");

    pod.remove("c1", 1)
        .await
        .expect("remove with a timeout kills");
    pod.finish().await;
}
