//! Containers in a real pod VM (TCG here): the agent side of `ctr run`, driven over ttrpc and
//! the stdio streams exactly as the shim drives it.
//!
//! The rootfs is a busybox tree the host writes into the VM's shared directory (virtio-fs);
//! each test boots one VM and groups several checks, since a boot costs seconds under TCG.

use std::time::Duration;

use isola_agent_client::AgentClient;
use isola_agent_proto::agent::stdio_stream_header::Stream;
use isola_agent_proto::agent::*;
use isola_agent_proto::types::Storage;
use isola_agent_proto::{stdio_header, STDIO_PORT};
use isola_hypervisor::AgentEndpoint;
use isola_sandbox::{BootedVm, SHARED_FS_TAG};
use isola_tests::TestEnv;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Where the agent mounts the shared directory.
const GUEST_SHARED: &str = "/run/isola/shared";
/// Generous: every RPC that starts a process costs a helper exec under TCG.
const RPC: Duration = Duration::from_secs(60);

/// An RPC failure as text (the `Debug` form of the ttrpc error, status code included).
type RpcResult<T> = Result<T, String>;

fn err<E: std::fmt::Debug>(e: E) -> String {
    format!("{e:?}")
}

/// The status code name in a failure (`NOT_FOUND`, ...).
fn code(e: &str) -> &str {
    let Some(at) = e.find("code: ") else {
        panic!("expected an RPC status, got {e}")
    };
    let rest = &e[at + "code: ".len()..];
    &rest[..rest.find([',', ' ', ')']).unwrap_or(rest.len())]
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A booted VM with a sandbox created, and what the tests need to reach it.
struct Pod {
    _env: TestEnv,
    vm: BootedVm,
}

impl Pod {
    async fn boot(id: &str) -> Pod {
        let mut env = TestEnv::new();
        // ISOLA_TEST_AGENT_LOG=debug puts the agent's (and libcontainer's) debug log on the
        // guest console, which failures print (and ISOLA_TEST_CONSOLE=1 prints at the end).
        if let Ok(level) = std::env::var("ISOLA_TEST_AGENT_LOG") {
            env.config.agent.log_level = match level.as_str() {
                "trace" => isola_config::LogLevel::Trace,
                "debug" => isola_config::LogLevel::Debug,
                _ => isola_config::LogLevel::Info,
            };
        }
        let vm = BootedVm::boot(&env.config, id).await.expect("VM boots");
        let pod = Pod { _env: env, vm };
        pod.agent()
            .create_sandbox(
                isola_agent_client::context(RPC),
                &CreateSandboxRequest {
                    sandbox_id: id.into(),
                    hostname: "pod".into(),
                    storages: vec![Storage {
                        driver: "virtiofs".into(),
                        source: SHARED_FS_TAG.into(),
                        mount_point: GUEST_SHARED.into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            )
            .await
            .expect("CreateSandbox");
        pod
    }

    /// The end of the guest console log (the agent logs there).
    fn console(&self) -> String {
        isola_sandbox::console_tail(&self.vm.vm.console_log(), 6000)
    }

    fn agent(&self) -> &isola_agent_proto::agent_ttrpc::AgentClient {
        &self.vm.agent.agent
    }

    fn client(&self) -> &AgentClient {
        &self.vm.agent
    }

    /// A busybox rootfs for container `cid` in the shared directory.
    fn rootfs(&self, cid: &str) {
        let root = self.vm.paths.shared_dir.join(cid).join("rootfs");
        for d in ["bin", "proc", "dev", "sys", "tmp", "etc", "root"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static");
        for applet in [
            "sh", "echo", "cat", "sleep", "tty", "stty", "true", "false", "ls", "id", "hostname",
            "grep",
        ] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
    }

    async fn create(&self, cid: &str, args: &[&str], stdio: StdioConfig) -> RpcResult<()> {
        self.agent()
            .create_container(
                isola_agent_client::context(RPC),
                &CreateContainerRequest {
                    container_id: cid.into(),
                    oci_spec_json: spec_json(cid, args).into_bytes(),
                    stdio: Some(stdio).into(),
                    ..Default::default()
                },
            )
            .await
            .map(drop)
            .map_err(err)
    }

    async fn start(&self, cid: &str) -> RpcResult<()> {
        let req = StartContainerRequest {
            container_id: cid.into(),
            ..Default::default()
        };
        self.agent()
            .start_container(isola_agent_client::context(RPC), &req)
            .await
            .map(drop)
            .map_err(err)
    }

    async fn exec(&self, cid: &str, eid: &str, args: &[&str], stdio: StdioConfig) -> RpcResult<()> {
        let req = ExecProcessRequest {
            container_id: cid.into(),
            exec_id: eid.into(),
            process_json: process_json(args).into_bytes(),
            stdio: Some(stdio).into(),
            ..Default::default()
        };
        self.agent()
            .exec_process(isola_agent_client::context(RPC), &req)
            .await
            .map(drop)
            .map_err(err)
    }

    async fn wait(&self, cid: &str, eid: &str) -> RpcResult<i32> {
        let req = WaitProcessRequest {
            container_id: cid.into(),
            exec_id: eid.into(),
            ..Default::default()
        };
        let resp = self
            .agent()
            .wait_process(isola_agent_client::context(RPC), &req)
            .await
            .map_err(err)?;
        assert!(resp.exited_at_unix_nanos > 0, "an exit time: {resp:?}");
        Ok(resp.status)
    }

    async fn signal(&self, cid: &str, eid: &str, signal: u32, all: bool) -> RpcResult<()> {
        let req = SignalProcessRequest {
            container_id: cid.into(),
            exec_id: eid.into(),
            signal,
            all,
            ..Default::default()
        };
        self.agent()
            .signal_process(isola_agent_client::context(RPC), &req)
            .await
            .map(drop)
            .map_err(err)
    }

    async fn remove(&self, cid: &str, timeout: u32) -> RpcResult<()> {
        let req = RemoveContainerRequest {
            container_id: cid.into(),
            timeout,
            ..Default::default()
        };
        self.agent()
            .remove_container(isola_agent_client::context(RPC), &req)
            .await
            .map(drop)
            .map_err(err)
    }

    /// Opens one stdio stream of `(cid, eid)`.
    async fn stream(&self, cid: &str, eid: &str, kind: Stream) -> Box<dyn Io> {
        let mut s: Box<dyn Io> = match self.vm.vm.agent_endpoint() {
            AgentEndpoint::HybridVsock { path, .. } => Box::new(
                isola_agent_client::dial::hybrid_once(&path, STDIO_PORT)
                    .await
                    .expect("stdio port reachable"),
            ),
            AgentEndpoint::Vsock { cid: guest, .. } => Box::new(
                isola_agent_client::dial::vsock_once(guest, STDIO_PORT)
                    .await
                    .expect("stdio port reachable"),
            ),
        };
        let header = StdioStreamHeader {
            container_id: cid.into(),
            exec_id: eid.into(),
            stream: kind.into(),
            ..Default::default()
        };
        s.write_all(&stdio_header::encode(&header)).await.unwrap();
        s
    }

    /// Destroys the sandbox, stops the VM and removes what the test put in the shared dir.
    async fn finish(self) {
        self.agent()
            .destroy_sandbox(
                isola_agent_client::context(RPC),
                &DestroySandboxRequest::default(),
            )
            .await
            .expect("DestroySandbox");
        if std::env::var_os("ISOLA_TEST_CONSOLE").is_some() {
            let log = isola_sandbox::console_tail(&self.vm.vm.console_log(), 256 * 1024);
            eprintln!("--- guest console ---\n{log}");
        }
        let shared = self.vm.paths.shared_dir.clone();
        if let Ok(entries) = std::fs::read_dir(&shared) {
            for e in entries.flatten() {
                std::fs::remove_dir_all(e.path()).unwrap();
            }
        }
        self.vm.stop().await.expect("stop");
        assert!(
            !shared.exists(),
            "shared directory left: {}",
            shared.display()
        );
    }
}

impl Drop for Pod {
    /// A failed check shows the end of the guest console (where the agent logs).
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- guest console (end) ---\n{}", self.console());
        }
    }
}

fn quote(args: &[&str]) -> String {
    args.iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn process_json(args: &[&str]) -> String {
    format!(
        r#"{{"terminal": false, "user": {{"uid": 0, "gid": 0}}, "args": [{}],
            "env": ["PATH=/bin", "TERM=xterm", "HOME=/root"], "cwd": "/"}}"#,
        quote(args)
    )
}

/// A minimal spec: own PID, mount, IPC and UTS namespaces (the guest's network), the usual
/// pseudo filesystems.
fn spec_json(cid: &str, args: &[&str]) -> String {
    format!(
        r#"{{
        "ociVersion": "1.0.2",
        "root": {{"path": "{GUEST_SHARED}/{cid}/rootfs"}},
        "hostname": "{cid}",
        "process": {process},
        "mounts": [
            {{"destination": "/proc", "type": "proc", "source": "proc"}},
            {{"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
              "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}},
            {{"destination": "/dev/pts", "type": "devpts", "source": "devpts",
              "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}},
            {{"destination": "/sys", "type": "sysfs", "source": "sysfs",
              "options": ["nosuid", "noexec", "nodev", "ro"]}}
        ],
        "linux": {{
            "namespaces": [{{"type": "pid"}}, {{"type": "mount"}}, {{"type": "ipc"}}, {{"type": "uts"}}],
            "cgroupsPath": "/isola/{cid}"
        }}
    }}"#,
        process = process_json(args)
    )
}

fn stdio(stdin: bool, stdout: bool, stderr: bool, terminal: bool) -> StdioConfig {
    StdioConfig {
        stdin,
        stdout,
        stderr,
        terminal,
        ..Default::default()
    }
}

async fn read_all(mut s: Box<dyn Io>) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(RPC, s.read_to_end(&mut out))
        .await
        .expect("the stream ends")
        .expect("reading the stream");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_containers_output_exit_codes_signals_and_errors() {
    let pod = Pod::boot("t-ctr").await;

    // Unknown ids are NOT_FOUND; a bad spec is INVALID_ARGUMENT.
    assert_eq!(code(&pod.start("nope").await.unwrap_err()), "NOT_FOUND");
    assert_eq!(code(&pod.wait("nope", "").await.unwrap_err()), "NOT_FOUND");
    assert_eq!(
        code(&pod.signal("nope", "", 9, false).await.unwrap_err()),
        "NOT_FOUND"
    );
    assert_eq!(code(&pod.remove("nope", 0).await.unwrap_err()), "NOT_FOUND");
    let bad = pod
        .agent()
        .create_container(
            isola_agent_client::context(RPC),
            &CreateContainerRequest {
                container_id: "bad".into(),
                oci_spec_json: b"{this is not json".to_vec(),
                ..Default::default()
            },
        )
        .await
        .map_err(err)
        .unwrap_err();
    assert_eq!(code(&bad), "INVALID_ARGUMENT", "{bad:?}");
    assert!(bad.contains("not a valid OCI runtime spec"), "{bad}");

    // Output on stdout and stderr, an exit code; streams attached before start.
    pod.rootfs("c1");
    pod.create(
        "c1",
        &["sh", "-c", "echo hello; echo oops >&2; exit 3"],
        stdio(false, true, true, false),
    )
    .await
    .expect("CreateContainer");
    let dup = pod
        .create("c1", &["true"], stdio(false, false, false, false))
        .await
        .unwrap_err();
    assert_eq!(code(&dup), "ALREADY_EXISTS", "{dup:?}");
    let out = pod.stream("c1", "", Stream::STDOUT).await;
    let err = pod.stream("c1", "", Stream::STDERR).await;
    pod.start("c1").await.expect("StartContainer");
    let again = pod.start("c1").await.unwrap_err();
    assert_eq!(code(&again), "FAILED_PRECONDITION", "{again:?}");
    assert_eq!(pod.wait("c1", "").await.unwrap(), 3);
    // WaitProcess answered only after the output was flushed: both streams are complete.
    assert_eq!(read_all(out).await, "hello\n");
    assert_eq!(read_all(err).await, "oops\n");
    // Many waiters, after the exit too.
    let (a, b) = tokio::join!(pod.wait("c1", ""), pod.wait("c1", ""));
    assert_eq!((a.unwrap(), b.unwrap()), (3, 3));
    pod.remove("c1", 0)
        .await
        .expect("removing an exited container");
    assert_eq!(code(&pod.wait("c1", "").await.unwrap_err()), "NOT_FOUND");

    // A long-running container: execs, signals, removal rules.
    pod.rootfs("c2");
    pod.create("c2", &["sleep", "100"], stdio(false, false, false, false))
        .await
        .unwrap();
    let early = pod
        .exec("c2", "e0", &["true"], stdio(false, false, false, false))
        .await
        .unwrap_err();
    assert_eq!(
        code(&early),
        "FAILED_PRECONDITION",
        "exec before start: {early:?}"
    );
    pod.start("c2").await.unwrap();
    let busy = pod.remove("c2", 0).await.unwrap_err();
    assert_eq!(code(&busy), "FAILED_PRECONDITION", "{busy:?}");

    pod.exec(
        "c2",
        "e7",
        &["sh", "-c", "exit 7"],
        stdio(false, false, false, false),
    )
    .await
    .expect("ExecProcess");
    assert_eq!(pod.wait("c2", "e7").await.unwrap(), 7);
    let dup = pod
        .exec("c2", "e7", &["true"], stdio(false, false, false, false))
        .await
        .unwrap_err();
    assert_eq!(code(&dup), "ALREADY_EXISTS", "{dup:?}");
    assert_eq!(
        code(&pod.wait("c2", "nope").await.unwrap_err()),
        "NOT_FOUND"
    );

    pod.exec(
        "c2",
        "say",
        &["sh", "-c", "echo from-exec; hostname"],
        stdio(false, true, false, false),
    )
    .await
    .unwrap();
    let said = pod.stream("c2", "say", Stream::STDOUT).await;
    assert_eq!(pod.wait("c2", "say").await.unwrap(), 0);
    assert_eq!(read_all(said).await, "from-exec\nc2\n");

    // Container processes start with default signal dispositions (none ignored, SIGPIPE
    // included), whatever the agent's own are.
    pod.exec(
        "c2",
        "sig",
        &["grep", "SigIgn", "/proc/self/status"],
        stdio(false, true, false, false),
    )
    .await
    .unwrap();
    let sig = pod.stream("c2", "sig", Stream::STDOUT).await;
    assert_eq!(pod.wait("c2", "sig").await.unwrap(), 0);
    assert_eq!(read_all(sig).await, "SigIgn:\t0000000000000000\n");

    pod.exec(
        "c2",
        "term",
        &["sleep", "100"],
        stdio(false, false, false, false),
    )
    .await
    .unwrap();
    pod.signal("c2", "term", 15, false).await.expect("SIGTERM");
    assert_eq!(pod.wait("c2", "term").await.unwrap(), 128 + 15);

    pod.signal("c2", "", 9, false).await.expect("SIGKILL");
    assert_eq!(pod.wait("c2", "").await.unwrap(), 128 + 9);
    let gone = pod.signal("c2", "", 9, false).await.unwrap_err();
    assert_eq!(
        code(&gone),
        "NOT_FOUND",
        "signalling an exited process: {gone:?}"
    );
    let stopped = pod
        .exec("c2", "late", &["true"], stdio(false, false, false, false))
        .await
        .unwrap_err();
    assert_eq!(code(&stopped), "FAILED_PRECONDITION", "{stopped:?}");
    pod.remove("c2", 0).await.unwrap();

    // A running container removed with a timeout is killed; a created one simply goes.
    pod.rootfs("c3");
    pod.create("c3", &["sleep", "100"], stdio(false, false, false, false))
        .await
        .unwrap();
    pod.start("c3").await.unwrap();
    pod.remove("c3", 1)
        .await
        .expect("remove with a timeout kills");
    pod.rootfs("c4");
    pod.create("c4", &["sleep", "100"], stdio(false, false, false, false))
        .await
        .unwrap();
    pod.remove("c4", 0)
        .await
        .expect("a created container can be removed");
    assert_eq!(code(&pod.start("c4").await.unwrap_err()), "NOT_FOUND");

    // A missing executable fails CreateContainer with a message saying so.
    pod.rootfs("c5");
    let missing = pod
        .create("c5", &["nonexistent"], stdio(false, false, false, false))
        .await
        .unwrap_err();
    assert!(missing.contains("nonexistent"), "{missing}");
    assert_eq!(code(&pod.start("c5").await.unwrap_err()), "NOT_FOUND");

    pod.client()
        .check(Duration::from_secs(5))
        .await
        .expect("the agent is fine");
    pod.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_container_stdin_and_terminals() {
    let pod = Pod::boot("t-tty").await;

    // stdin round trip through cat, EOF included; stdout attached after start.
    pod.rootfs("cat");
    pod.create("cat", &["cat"], stdio(true, true, false, false))
        .await
        .unwrap();
    let mut input = pod.stream("cat", "", Stream::STDIN).await;
    pod.start("cat").await.unwrap();
    let out = pod.stream("cat", "", Stream::STDOUT).await;
    input.write_all(b"ping\n").await.unwrap();
    input.write_all(b"pong\n").await.unwrap();
    input.shutdown().await.unwrap();
    assert_eq!(pod.wait("cat", "").await.unwrap(), 0);
    assert_eq!(read_all(out).await, "ping\npong\n");
    drop(input);
    pod.remove("cat", 0).await.unwrap();

    // CloseStdin ends a reader without the host closing its stream.
    pod.rootfs("cl");
    pod.create(
        "cl",
        &["sh", "-c", "cat; echo closed"],
        stdio(true, true, false, false),
    )
    .await
    .unwrap();
    let out = pod.stream("cl", "", Stream::STDOUT).await;
    let _input = pod.stream("cl", "", Stream::STDIN).await;
    pod.start("cl").await.unwrap();
    pod.agent()
        .close_stdin(
            isola_agent_client::context(RPC),
            &CloseStdinRequest {
                container_id: "cl".into(),
                ..Default::default()
            },
        )
        .await
        .expect("CloseStdin");
    assert_eq!(pod.wait("cl", "").await.unwrap(), 0);
    assert_eq!(read_all(out).await, "closed\n");
    pod.remove("cl", 0).await.unwrap();

    // A terminal: tty names the container's pty.
    pod.rootfs("tty");
    pod.create("tty", &["tty"], stdio(false, true, false, true))
        .await
        .unwrap();
    let out = pod.stream("tty", "", Stream::STDOUT).await;
    pod.start("tty").await.unwrap();
    assert_eq!(pod.wait("tty", "").await.unwrap(), 0);
    let text = read_all(out).await;
    let name = text.trim_end();
    assert!(
        name.starts_with("/dev/pts/") && name["/dev/pts/".len()..].parse::<u32>().is_ok(),
        "tty printed {text:?}"
    );
    assert!(text.ends_with("\r\n"), "terminal line endings: {text:?}");
    pod.remove("tty", 0).await.unwrap();

    // An interactive terminal exec: input through the pty, window size, output.
    pod.rootfs("sh");
    pod.create("sh", &["sleep", "100"], stdio(false, false, false, false))
        .await
        .unwrap();
    pod.start("sh").await.unwrap();
    pod.exec(
        "sh",
        "it",
        &["sh", "-c", "read line; stty size; echo got:$line"],
        stdio(true, true, false, true),
    )
    .await
    .unwrap();
    let out = pod.stream("sh", "it", Stream::STDOUT).await;
    let mut input = pod.stream("sh", "it", Stream::STDIN).await;
    pod.agent()
        .tty_win_resize(
            isola_agent_client::context(RPC),
            &TtyWinResizeRequest {
                container_id: "sh".into(),
                exec_id: "it".into(),
                row: 33,
                column: 77,
                ..Default::default()
            },
        )
        .await
        .expect("TtyWinResize");
    input.write_all(b"go\n").await.unwrap();
    assert_eq!(pod.wait("sh", "it").await.unwrap(), 0);
    let text = read_all(out).await;
    assert!(text.contains("33 77"), "stty size after resize: {text:?}");
    assert!(text.contains("got:go"), "{text:?}");
    let no_tty = pod
        .agent()
        .tty_win_resize(
            isola_agent_client::context(RPC),
            &TtyWinResizeRequest {
                container_id: "sh".into(),
                row: 1,
                column: 1,
                ..Default::default()
            },
        )
        .await
        .map_err(err)
        .unwrap_err();
    assert_eq!(code(&no_tty), "FAILED_PRECONDITION", "{no_tty:?}");
    // Signal every process of the container.
    pod.signal("sh", "", 9, true).await.expect("SIGKILL all");
    assert_eq!(pod.wait("sh", "").await.unwrap(), 137);

    // DestroySandbox (in finish) removes what is left.
    pod.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_probe_tty() {
    let pod = Pod::boot("t-probe").await;
    pod.rootfs("p");
    pod.create("p", &["sh"], stdio(true, true, false, true))
        .await
        .unwrap();
    let mut out = pod.stream("p", "", Stream::STDOUT).await;
    let mut input = pod.stream("p", "", Stream::STDIN).await;
    pod.start("p").await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    input.write_all(b"echo hi\n").await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    pod.exec("p", "x", &["sh"], stdio(true, true, false, true))
        .await
        .unwrap();
    let mut xout = pod.stream("p", "x", Stream::STDOUT).await;
    let mut xin = pod.stream("p", "x", Stream::STDIN).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    xin.write_all(b"echo xx; exit\n").await.unwrap();
    assert_eq!(pod.wait("p", "x").await.unwrap(), 0);
    let mut bytes = Vec::new();
    xout.read_to_end(&mut bytes).await.unwrap();
    eprintln!("exec raw {:?}", bytes);
    eprintln!("exec raw {:?}", String::from_utf8_lossy(&bytes));
    input.write_all(b"exit\n").await.unwrap();
    let st = pod.wait("p", "").await.unwrap();
    let mut bytes = Vec::new();
    out.read_to_end(&mut bytes).await.unwrap();
    eprintln!("status {st} raw {:?}", bytes);
    eprintln!("status {st} raw {:?}", String::from_utf8_lossy(&bytes));
    pod.finish().await;
}
