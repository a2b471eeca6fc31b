//! The real [`VmFactory`] composition (shared directory, pod network, `BootedVm`, agent) on a
//! fake hypervisor backend and fake pod networking: a boot that fails at any step leaves no
//! network attachment, mount or directory behind and keeps its error's kind up to the ttrpc
//! code; a booted VM keeps hotplug errors typed and stops cleanly.
//!
//! The factory mounts the shared directory: these tests need root and fail without it, saying
//! so (`make test` runs as root).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use isola_agent_proto::health::{health_check_response::ServingStatus, *};
use isola_agent_proto::health_ttrpc;
use isola_config::Config;
use isola_hypervisor::{Accelerator, AgentEndpoint, Hypervisor, HypervisorError, VmConfig, VmExit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use ttrpc::r#async::TtrpcContext;
use ttrpc::Code;

use crate::error::ShimError;
use crate::fake::{FakeNetworking, NetFailure};
use crate::mountinfo;
use crate::network::{NetError, PodInterface, PodNetwork};
use crate::sandbox::{Sandbox, SandboxFactory, VmFactory};

/// Fails the test without root: a test that cannot mount must not pass.
fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test mounts the shared directory and needs root (make test runs as root)"
    );
}

/// Makes the error a failing start returns.
type StartFailure = fn() -> HypervisorError;

/// What the fake backend's `start` does.
#[derive(Clone, Copy)]
enum Start {
    /// Fails with this error.
    Fail(StartFailure),
    /// Succeeds, but nobody serves the agent endpoint.
    Silent,
    /// Succeeds and serves a healthy agent (Health only) over hybrid vsock.
    Serve,
}

/// A hypervisor backend without a VMM.
struct FakeVmm {
    cfg: VmConfig,
    start: Start,
    stops: AtomicUsize,
    exit: watch::Sender<Option<VmExit>>,
    agent: Mutex<Option<(ttrpc::r#async::Server, tokio::task::JoinHandle<()>)>>,
}

impl FakeVmm {
    fn endpoint_path(&self) -> PathBuf {
        self.cfg.state_dir.join("agent.sock")
    }

    /// A ttrpc server with Health behind a hybrid vsock handshake (`CONNECT <port>` / `OK`).
    async fn serve_agent(&self) -> std::io::Result<()> {
        let ttrpc_path = self.cfg.state_dir.join("ttrpc.sock");
        let health = health_ttrpc::create_health(Arc::new(Healthy));
        let mut server = ttrpc::r#async::Server::new()
            .bind(&format!("unix://{}", ttrpc_path.display()))
            .map_err(std::io::Error::other)?
            .register_service(health);
        server.start().await.map_err(std::io::Error::other)?;
        let listener = UnixListener::bind(self.endpoint_path())?;
        let proxy = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(handshake_then_proxy(conn, ttrpc_path.clone()));
            }
        });
        *self.agent.lock().unwrap() = Some((server, proxy));
        Ok(())
    }
}

async fn handshake_then_proxy(mut conn: UnixStream, ttrpc_path: PathBuf) {
    let mut byte = [0u8; 1];
    loop {
        match conn.read(&mut byte).await {
            Ok(1) if byte[0] == b'\n' => break,
            Ok(1) => {}
            _ => return,
        }
    }
    if conn.write_all(b"OK 1\n").await.is_err() {
        return;
    }
    if let Ok(mut upstream) = UnixStream::connect(&ttrpc_path).await {
        let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
    }
}

struct Healthy;

#[async_trait]
impl health_ttrpc::Health for Healthy {
    async fn check(
        &self,
        _ctx: &TtrpcContext,
        _req: CheckRequest,
    ) -> ttrpc::Result<HealthCheckResponse> {
        Ok(HealthCheckResponse {
            status: ServingStatus::SERVING.into(),
            ..Default::default()
        })
    }
}

#[async_trait]
impl Hypervisor for FakeVmm {
    async fn start(&self) -> Result<(), HypervisorError> {
        if let Start::Fail(f) = self.start {
            return Err(f());
        }
        let dir = &self.cfg.state_dir;
        std::fs::create_dir_all(dir).map_err(|source| HypervisorError::StateDir {
            action: "creating",
            path: dir.clone(),
            source,
        })?;
        if let Start::Serve = self.start {
            self.serve_agent()
                .await
                .map_err(|e| HypervisorError::InvalidConfig(format!("fake agent: {e}")))?;
        }
        Ok(())
    }
    async fn stop(&self) -> Result<(), HypervisorError> {
        self.stops.fetch_add(1, Ordering::SeqCst);
        let agent = self.agent.lock().unwrap().take();
        if let Some((mut server, proxy)) = agent {
            proxy.abort();
            let _ = server.shutdown().await;
        }
        let _ = std::fs::remove_dir_all(&self.cfg.state_dir);
        self.exit.send_replace(Some(VmExit {
            code: Some(0),
            signal: None,
        }));
        Ok(())
    }
    async fn wait(&self) -> Result<VmExit, HypervisorError> {
        let mut rx = self.exit.subscribe();
        let exit = rx.wait_for(Option::is_some).await.map(|e| *e);
        match exit {
            Ok(Some(exit)) => Ok(exit),
            _ => Err(HypervisorError::NotRunning(self.cfg.id.clone())),
        }
    }
    async fn kill(&self) -> Result<(), HypervisorError> {
        self.exit.send_replace(Some(VmExit {
            code: None,
            signal: Some(9),
        }));
        Ok(())
    }
    async fn pause(&self) -> Result<(), HypervisorError> {
        Ok(())
    }
    async fn resume(&self) -> Result<(), HypervisorError> {
        Ok(())
    }
    async fn hotplug_vcpus(&self, total: u32) -> Result<u32, HypervisorError> {
        Err(HypervisorError::HotplugLimit {
            vm: self.cfg.id.clone(),
            resource: "vCPUs",
            requested: total.into(),
            limit: self.cfg.max_vcpus.into(),
            hint: "restart the pod with more vCPUs",
        })
    }
    async fn hotplug_memory(&self, _total_mib: u32) -> Result<u32, HypervisorError> {
        Err(HypervisorError::Unsupported("memory hotplug".into()))
    }
    fn agent_endpoint(&self) -> AgentEndpoint {
        AgentEndpoint::HybridVsock {
            path: self.endpoint_path(),
            port: self.cfg.agent_port,
        }
    }
    fn pids(&self) -> Vec<u32> {
        Vec::new()
    }
    fn console_log(&self) -> PathBuf {
        self.cfg.state_dir.join("console.log")
    }
    fn accelerator(&self) -> Option<(Accelerator, String)> {
        None
    }
}

/// A real [`VmFactory`] on fakes, with what it made.
struct Rig {
    tmp: tempfile::TempDir,
    factory: VmFactory,
    networking: Arc<FakeNetworking>,
    vmms: Arc<Mutex<Vec<Arc<FakeVmm>>>>,
}

const NETNS: &str = "/var/run/netns/cni-test";

impl Rig {
    fn new(start: Start) -> Rig {
        require_root();
        let networking = Arc::new(FakeNetworking::default());
        *networking.network.lock().unwrap() = PodNetwork {
            interfaces: vec![PodInterface {
                name: "eth0".into(),
                mac: "0a:58:0a:58:00:07".into(),
                mtu: 1450,
                addrs: Vec::new(),
            }],
            ..Default::default()
        };
        let vmms = Arc::new(Mutex::new(Vec::new()));
        let made = vmms.clone();
        let backend = move |cfg: VmConfig| -> Arc<dyn Hypervisor> {
            let vmm = Arc::new(FakeVmm {
                cfg,
                start,
                stops: AtomicUsize::new(0),
                exit: watch::channel(None).0,
                agent: Mutex::new(None),
            });
            made.lock().unwrap().push(vmm.clone());
            vmm
        };
        Rig {
            tmp: tempfile::tempdir().unwrap(),
            factory: VmFactory::new(Arc::new(backend), networking.clone()),
            networking,
            vmms,
        }
    }

    fn config(&self) -> Config {
        let mut c = Config::default();
        c.runtime.state_dir = self.tmp.path().to_path_buf();
        // Kernel vsock: no readiness wait, the fake's hybrid endpoint is dialed directly.
        c.hypervisor.vsock = isola_config::Vsock::Vhost;
        c.agent.dial_timeout_ms = 300;
        c
    }

    async fn boot(&self) -> Result<Arc<dyn Sandbox>, ShimError> {
        let netns = Path::new(NETNS);
        self.factory.boot(&self.config(), "s1", Some(netns)).await
    }

    fn shared_dir(&self) -> PathBuf {
        self.tmp.path().join("shared/s1")
    }

    fn vm_dir(&self) -> PathBuf {
        self.tmp.path().join("vm/s1")
    }

    fn detached(&self) -> Vec<PathBuf> {
        self.networking.detached.lock().unwrap().clone()
    }

    /// Nothing of the sandbox is left on the host.
    fn assert_nothing_left(&self) {
        let shared = self.shared_dir();
        let mounts = mountinfo::current_mounts_under(self.tmp.path()).unwrap();
        assert!(mounts.is_empty(), "mounts left: {mounts:?}");
        assert!(!shared.exists(), "{} left", shared.display());
        assert!(!self.vm_dir().exists(), "{} left", self.vm_dir().display());
    }

    fn stops(&self) -> Vec<usize> {
        let vmms = self.vmms.lock().unwrap();
        vmms.iter()
            .map(|v| v.stops.load(Ordering::SeqCst))
            .collect()
    }
}

fn expect_err(booted: Result<Arc<dyn Sandbox>, ShimError>) -> ShimError {
    match booted {
        Ok(_) => panic!("the boot succeeded"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn a_vm_that_fails_to_start_detaches_the_network_and_keeps_the_hypervisors_code() {
    let cases: [(StartFailure, Code, &str); 3] = [
        (
            || HypervisorError::AcceleratorUnavailable {
                accelerator: Accelerator::Kvm,
                reason: "no /dev/kvm".into(),
            },
            Code::FAILED_PRECONDITION,
            "no /dev/kvm",
        ),
        (
            || HypervisorError::InvalidConfig("tcg with cloud-hypervisor".into()),
            Code::INVALID_ARGUMENT,
            "tcg with cloud-hypervisor",
        ),
        (
            || HypervisorError::NotRunning("s1".into()),
            Code::INTERNAL,
            "not running",
        ),
    ];
    for (fail, code, says) in cases {
        let rig = Rig::new(Start::Fail(fail));
        let err = expect_err(rig.boot().await);
        assert_eq!(err.code(), code, "{err}");
        let msg = err.to_string();
        assert!(msg.contains(says) && msg.contains("isola check"), "{msg}");
        assert_eq!(rig.detached(), [PathBuf::from(NETNS)], "{msg}");
        rig.assert_nothing_left();
    }
}

#[tokio::test]
async fn an_agent_that_never_answers_stops_the_vm_and_undoes_everything() {
    let rig = Rig::new(Start::Silent);
    let err = expect_err(rig.boot().await);
    assert!(
        matches!(&err, ShimError::Sandbox(e) if matches!(**e, isola_sandbox::SandboxError::Agent { .. })),
        "{err:?}"
    );
    assert_eq!(err.code(), Code::INTERNAL);
    assert!(err.to_string().contains("agent did not answer"), "{err}");
    assert_eq!(rig.stops(), [1], "the VM is stopped once");
    assert_eq!(rig.detached(), [PathBuf::from(NETNS)]);
    rig.assert_nothing_left();
}

#[tokio::test]
async fn a_pod_network_that_cannot_be_attached_keeps_its_code_and_leaves_nothing() {
    let cases: [(NetFailure, Code); 2] = [
        (
            |p| NetError::Netns {
                path: p.to_path_buf(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            },
            Code::FAILED_PRECONDITION,
        ),
        (
            |p| NetError::Netns {
                path: p.to_path_buf(),
                source: std::io::Error::from_raw_os_error(libc::EPERM),
            },
            Code::PERMISSION_DENIED,
        ),
    ];
    for (fail, code) in cases {
        let rig = Rig::new(Start::Serve);
        *rig.networking.fail.lock().unwrap() = Some(fail);
        let err = expect_err(rig.boot().await);
        assert!(matches!(err, ShimError::Network(_)), "{err:?}");
        assert_eq!(err.code(), code, "{err}");
        assert!(err.to_string().contains(NETNS), "{err}");
        assert!(rig.vmms.lock().unwrap().is_empty(), "no VM was made");
        assert!(rig.detached().is_empty(), "nothing was attached");
        rig.assert_nothing_left();
    }
}

#[tokio::test]
async fn no_shared_fs_is_refused_before_anything_is_made() {
    let rig = Rig::new(Start::Serve);
    let mut config = rig.config();
    config.hypervisor.shared_fs = isola_config::SharedFs::None;
    let err = expect_err(
        rig.factory
            .boot(&config, "s1", Some(Path::new(NETNS)))
            .await,
    );
    assert_eq!(err.code(), Code::FAILED_PRECONDITION);
    assert!(rig.networking.attached.lock().unwrap().is_empty());
    rig.assert_nothing_left();
}

#[tokio::test]
async fn a_booted_vm_keeps_hotplug_errors_typed_and_stops_cleanly() {
    let rig = Rig::new(Start::Serve);
    let vm = rig.boot().await.expect("the VM boots on the fake backend");
    assert!(rig.shared_dir().is_dir());
    assert!(vm.endpoint().contains("agent.sock"), "{}", vm.endpoint());
    assert_eq!(vm.shared_dir(), rig.shared_dir());
    assert_eq!(vm.network().unwrap().interfaces[0].name, "eth0");

    let err = vm.hotplug_vcpus(64).await.unwrap_err();
    assert_eq!(err.code(), Code::FAILED_PRECONDITION, "{err}");
    let msg = err.to_string();
    assert!(
        msg.starts_with("CPU hotplug: cannot grow VM s1") && msg.contains("restart the pod"),
        "{msg}"
    );
    let err = vm.hotplug_memory(4096).await.unwrap_err();
    assert_eq!(err.code(), Code::UNIMPLEMENTED, "{err}");

    vm.stop().await.unwrap();
    vm.stop().await.unwrap();
    assert_eq!(rig.stops(), [1], "stop is idempotent");
    assert_eq!(vm.wait().await, "exit code 0");
    assert_eq!(rig.detached(), [PathBuf::from(NETNS)]);
    rig.assert_nothing_left();
}
