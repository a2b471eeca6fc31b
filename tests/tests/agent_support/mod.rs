//! What the real-VM agent tests share: a booted pod VM with a sandbox ([`Pod`]), busybox
//! rootfs trees in its shared directory, OCI specs and processes as JSON, stdio streams.
//!
//! Each `agent_*` test binary uses its own part of this, hence `dead_code` is allowed here.
#![allow(dead_code)]

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
pub const GUEST_SHARED: &str = "/run/isola/shared";
/// Generous: every RPC that starts a process costs a helper exec under TCG.
pub const RPC: Duration = Duration::from_secs(60);

/// An RPC failure as text (the `Debug` form of the ttrpc error, status code included).
pub type RpcResult<T> = Result<T, String>;

pub fn err<E: std::fmt::Debug>(e: E) -> String {
    format!("{e:?}")
}

/// The status code name in a failure (`NOT_FOUND`, ...).
pub fn code(e: &str) -> &str {
    let Some(at) = e.find("code: ") else {
        panic!("expected an RPC status, got {e}")
    };
    let rest = &e[at + "code: ".len()..];
    &rest[..rest.find([',', ' ', ')']).unwrap_or(rest.len())]
}

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A booted VM with a sandbox created, and what the tests need to reach it.
pub struct Pod {
    _env: TestEnv,
    pub vm: BootedVm,
}

impl Pod {
    pub async fn boot(id: &str) -> Pod {
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
    pub fn console(&self) -> String {
        isola_sandbox::console_tail(&self.vm.vm.console_log(), 6000)
    }

    pub fn agent(&self) -> &isola_agent_proto::agent_ttrpc::AgentClient {
        &self.vm.agent.agent
    }

    pub fn client(&self) -> &AgentClient {
        &self.vm.agent
    }

    /// A busybox rootfs for container `cid` in the shared directory.
    pub fn rootfs(&self, cid: &str) {
        let root = self.vm.paths.shared_dir.join(cid).join("rootfs");
        for d in ["bin", "proc", "dev", "sys", "tmp", "etc", "root"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static");
        for applet in [
            "sh", "echo", "cat", "sleep", "tty", "stty", "true", "false", "ls", "id", "hostname",
            "grep", "head", "tail", "dd", "wc", "od",
        ] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
    }

    pub async fn create(&self, cid: &str, args: &[&str], stdio: StdioConfig) -> RpcResult<()> {
        self.create_spec(cid, &spec_json(cid, args), stdio).await
    }

    /// CreateContainer with the spec `spec` (JSON).
    pub async fn create_spec(&self, cid: &str, spec: &str, stdio: StdioConfig) -> RpcResult<()> {
        self.agent()
            .create_container(
                isola_agent_client::context(RPC),
                &CreateContainerRequest {
                    container_id: cid.into(),
                    oci_spec_json: spec.as_bytes().to_vec(),
                    stdio: Some(stdio).into(),
                    ..Default::default()
                },
            )
            .await
            .map(drop)
            .map_err(err)
    }

    pub async fn start(&self, cid: &str) -> RpcResult<()> {
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

    pub async fn exec(
        &self,
        cid: &str,
        eid: &str,
        args: &[&str],
        stdio: StdioConfig,
    ) -> RpcResult<()> {
        self.exec_with(cid, eid, process_json(args), stdio).await
    }

    /// ExecProcess of the process JSON `process`, without stdio.
    pub async fn exec_raw(&self, cid: &str, eid: &str, process: String) -> RpcResult<()> {
        self.exec_with(cid, eid, process, stdio(false, false, false, false))
            .await
    }

    async fn exec_with(
        &self,
        cid: &str,
        eid: &str,
        process: String,
        stdio: StdioConfig,
    ) -> RpcResult<()> {
        let req = ExecProcessRequest {
            container_id: cid.into(),
            exec_id: eid.into(),
            process_json: process.into_bytes(),
            stdio: Some(stdio).into(),
            ..Default::default()
        };
        self.agent()
            .exec_process(isola_agent_client::context(RPC), &req)
            .await
            .map(drop)
            .map_err(err)
    }

    pub async fn wait(&self, cid: &str, eid: &str) -> RpcResult<i32> {
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

    pub async fn signal(&self, cid: &str, eid: &str, signal: u32, all: bool) -> RpcResult<()> {
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

    pub async fn remove(&self, cid: &str, timeout: u32) -> RpcResult<()> {
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

    /// TtyWinResize.
    pub async fn resize(&self, cid: &str, eid: &str, row: u32, column: u32) -> RpcResult<()> {
        let req = TtyWinResizeRequest {
            container_id: cid.into(),
            exec_id: eid.into(),
            row,
            column,
            ..Default::default()
        };
        self.agent()
            .tty_win_resize(isola_agent_client::context(RPC), &req)
            .await
            .map(drop)
            .map_err(err)
    }

    /// Opens one stdio stream of `(cid, eid)`.
    pub async fn stream(&self, cid: &str, eid: &str, kind: Stream) -> Box<dyn Io> {
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
    pub async fn finish(self) {
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

pub fn quote(args: &[&str]) -> String {
    args.iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn process_json(args: &[&str]) -> String {
    format!(
        r#"{{"terminal": false, "user": {{"uid": 0, "gid": 0}}, "args": [{}],
            "env": ["PATH=/bin", "TERM=xterm", "HOME=/root"], "cwd": "/"}}"#,
        quote(args)
    )
}

/// A minimal spec: own PID, mount, IPC and UTS namespaces (the guest's network), the usual
/// pseudo filesystems.
pub fn spec_json(cid: &str, args: &[&str]) -> String {
    spec_json_with(cid, args, &SpecExtras::default())
}

/// What a test adds to the minimal spec.
#[derive(Debug, Default, Clone)]
pub struct SpecExtras {
    /// `linux.resources` as JSON (e.g. `{"memory": {"limit": 33554432}}`).
    pub resources: Option<String>,
    /// A cgroup namespace with cgroup2 mounted at /sys/fs/cgroup, so the container can read
    /// its own cgroup's files.
    pub cgroupns: bool,
}

/// [`spec_json`] with [`SpecExtras`].
pub fn spec_json_with(cid: &str, args: &[&str], extras: &SpecExtras) -> String {
    let cgroup_ns = if extras.cgroupns {
        r#", {"type": "cgroup"}"#
    } else {
        ""
    };
    let cgroup_mount = if extras.cgroupns {
        r#", {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
              "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}"#
    } else {
        ""
    };
    let resources = extras
        .resources
        .as_ref()
        .map(|r| format!(r#", "resources": {r}"#))
        .unwrap_or_default();
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
              "options": ["nosuid", "noexec", "nodev", "ro"]}}{cgroup_mount}
        ],
        "linux": {{
            "namespaces": [{{"type": "pid"}}, {{"type": "mount"}}, {{"type": "ipc"}}, {{"type": "uts"}}{cgroup_ns}],
            "cgroupsPath": "/isola/{cid}"{resources}
        }}
    }}"#,
        process = process_json(args)
    )
}

pub fn stdio(stdin: bool, stdout: bool, stderr: bool, terminal: bool) -> StdioConfig {
    StdioConfig {
        stdin,
        stdout,
        stderr,
        terminal,
        ..Default::default()
    }
}

pub async fn read_all(mut s: Box<dyn Io>) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(RPC, s.read_to_end(&mut out))
        .await
        .expect("the stream ends")
        .expect("reading the stream");
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads from `s` until what was read contains `needle`; returns everything read so far.
pub async fn read_until(s: &mut Box<dyn Io>, needle: &str) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        while !String::from_utf8_lossy(&out).contains(needle) {
            let n = s.read(&mut buf).await.expect("reading the stream");
            assert!(
                n > 0,
                "the stream ended before {needle:?}: {:?}",
                String::from_utf8_lossy(&out)
            );
            out.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(RPC, read)
        .await
        .unwrap_or_else(|_| panic!("no {needle:?} within {RPC:?}"));
    String::from_utf8_lossy(&out).into_owned()
}
