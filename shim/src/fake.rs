//! Test doubles: a fake agent, a fake VM and its factory, a recording event sink, and a test
//! environment wiring them to a [`Service`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::ExitSignal;
use containerd_shim_protos::events::task::TaskExit;
use containerd_shim_protos::shim::shim::CreateTaskRequest;
use isola_agent_proto::agent::{
    CpuStats, CreateContainerRequest, CreateSandboxRequest, ExecProcessRequest,
    GuestDetailsResponse, MemoryStats, PidsStats, StatsContainerResponse, StdioConfig,
};
use isola_agent_proto::types::{ARPNeighbor, Interface, Route};
use isola_config::Config;
use protobuf::MessageDyn;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{watch, Notify};
use ttrpc::Code;

use crate::agent::{AgentApi, BoxStream, GuestProcess, ProcessExit, StdioKind};
use crate::error::{Result, ShimError};
use crate::events::EventSink;
use crate::options::RuntimeOptions;
use crate::service::Service;

pub use crate::fake_vm::{FakeFactory, FakeNetworking, FakeSandbox, NetFailure};

type Key = (String, String);

struct FakeProc {
    pid: u32,
    exit: watch::Sender<Option<u32>>,
    stdio: StdioConfig,
    guest: HashMap<StdioKind, DuplexStream>,
    started: bool,
    cat_running: bool,
}

/// A fake agent: records calls, fails on request, and can run processes that behave like
/// `cat` (stdin copied to stdout, exit 0 at stdin EOF).
#[derive(Default)]
pub struct FakeAgent {
    calls: Mutex<Vec<String>>,
    failures: Mutex<HashMap<&'static str, (Code, String)>>,
    procs: Mutex<HashMap<Key, FakeProc>>,
    /// Started processes behave like `cat`.
    pub cat: AtomicBool,
    pub sandbox: Mutex<Option<CreateSandboxRequest>>,
    pub containers: Mutex<HashMap<String, CreateContainerRequest>>,
    dead: Mutex<Option<watch::Sender<bool>>>,
    next_pid: AtomicUsize,
    /// Containers frozen by PauseContainer.
    pub paused: Mutex<HashSet<String>>,
    /// Health.Check never answers (a frozen VM or a hung agent).
    pub frozen: AtomicBool,
    /// UpdateContainer's resources, as JSON, in order.
    pub updates: Mutex<Vec<(String, String)>>,
    oom_queue: Mutex<VecDeque<String>>,
    oom_ready: Notify,
    /// UpdateInterface, UpdateRoutes and AddARPNeighbors requests, in order.
    pub interfaces: Mutex<Vec<Interface>>,
    pub routes: Mutex<Vec<Route>>,
    pub neighbors: Mutex<Vec<ARPNeighbor>>,
    /// What GetGuestDetails answers.
    pub guest: Mutex<GuestDetailsResponse>,
}

impl FakeAgent {
    /// The calls so far, as "Rpc id[/exec]" strings.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    /// Makes `rpc` fail with `code` from now on.
    pub fn fail(&self, rpc: &'static str, code: Code, message: &str) {
        self.failures
            .lock()
            .unwrap()
            .insert(rpc, (code, message.to_string()));
    }

    fn call(&self, rpc: &'static str, what: &str) -> Result<()> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("{rpc} {what}").trim().to_string());
        if self.is_dead() {
            return Err(ShimError::AgentUnreachable {
                rpc,
                message: "ttrpc err: remote stream closed".into(),
            });
        }
        match self.failures.lock().unwrap().get(rpc) {
            Some((code, message)) => Err(ShimError::Agent {
                rpc,
                code: *code,
                message: message.clone(),
            }),
            None => Ok(()),
        }
    }

    fn dead_rx(&self) -> watch::Receiver<bool> {
        let mut slot = self.dead.lock().unwrap();
        slot.get_or_insert_with(|| watch::channel(false).0)
            .subscribe()
    }

    fn is_dead(&self) -> bool {
        *self.dead_rx().borrow()
    }

    /// The VM died: pending and future calls fail, guest streams close.
    pub fn vm_died(&self) {
        let _ = self.dead_rx();
        if let Some(tx) = self.dead.lock().unwrap().as_ref() {
            tx.send_replace(true);
        }
        for p in self.procs.lock().unwrap().values_mut() {
            p.guest.clear();
        }
    }

    /// Makes a process exit with `status` (its output streams close).
    pub fn exit(&self, cid: &str, exec_id: &str, status: u32) {
        let mut procs = self.procs.lock().unwrap();
        if let Some(p) = procs.get_mut(&(cid.to_string(), exec_id.to_string())) {
            p.guest.clear();
            p.exit.send_replace(Some(status));
        }
    }

    /// Takes the guest end of a process's stream (to write "output" or read "input").
    pub fn take_stream(&self, cid: &str, exec_id: &str, kind: StdioKind) -> Option<DuplexStream> {
        let mut procs = self.procs.lock().unwrap();
        procs
            .get_mut(&(cid.to_string(), exec_id.to_string()))?
            .guest
            .remove(&kind)
    }

    /// The guest OOM-kills container `cid`: GetOOMEvent names it and the init exits 137.
    pub fn oom(&self, cid: &str) {
        self.oom_queue.lock().unwrap().push_back(cid.to_string());
        self.oom_ready.notify_one();
        self.exit(cid, "", 137);
    }

    fn register(&self, cid: &str, exec_id: &str, stdio: StdioConfig) {
        let pid = self.next_pid.fetch_add(1, Ordering::SeqCst) as u32 + 1;
        self.procs.lock().unwrap().insert(
            (cid.to_string(), exec_id.to_string()),
            FakeProc {
                pid,
                exit: watch::channel(None).0,
                stdio,
                guest: HashMap::new(),
                started: false,
                cat_running: false,
            },
        );
    }

    /// Runs `cat` for a started process once all its expected streams are attached.
    fn maybe_cat(&self, key: &Key) {
        if !self.cat.load(Ordering::SeqCst) {
            return;
        }
        let mut procs = self.procs.lock().unwrap();
        let Some(p) = procs.get_mut(key) else { return };
        let attached = |k| p.guest.contains_key(&k);
        let ready = p.started
            && !p.cat_running
            && (!p.stdio.stdin || attached(StdioKind::Stdin))
            && (!p.stdio.stdout || attached(StdioKind::Stdout));
        if !ready {
            return;
        }
        p.cat_running = true;
        let input = p.guest.remove(&StdioKind::Stdin);
        let output = p.guest.remove(&StdioKind::Stdout);
        let exit = p.exit.clone();
        tokio::spawn(async move {
            if let (Some(mut input), Some(mut output)) = (input, output) {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match input.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if output.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = output.shutdown().await;
            }
            exit.send_replace(Some(0));
        });
    }
}

#[async_trait]
impl AgentApi for FakeAgent {
    async fn check(&self, timeout: Duration) -> Result<()> {
        if self.frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(timeout).await;
        }
        if self.is_dead() || self.frozen.load(Ordering::SeqCst) {
            return Err(ShimError::Agent {
                rpc: "Check",
                code: Code::DEADLINE_EXCEEDED,
                message: "no answer".into(),
            });
        }
        Ok(())
    }

    async fn create_sandbox(&self, req: CreateSandboxRequest) -> Result<()> {
        self.call("CreateSandbox", &req.sandbox_id)?;
        *self.sandbox.lock().unwrap() = Some(req);
        Ok(())
    }

    async fn destroy_sandbox(&self) -> Result<()> {
        self.call("DestroySandbox", "")
    }

    async fn create_container(&self, req: CreateContainerRequest) -> Result<()> {
        self.call("CreateContainer", &req.container_id)?;
        self.register(&req.container_id, "", req.stdio.clone().unwrap_or_default());
        self.containers
            .lock()
            .unwrap()
            .insert(req.container_id.clone(), req);
        Ok(())
    }

    async fn start_container(&self, cid: &str) -> Result<()> {
        self.call("StartContainer", cid)?;
        let key = (cid.to_string(), String::new());
        match self.procs.lock().unwrap().get_mut(&key) {
            Some(p) => p.started = true,
            None => {
                return Err(ShimError::Agent {
                    rpc: "StartContainer",
                    code: Code::NOT_FOUND,
                    message: format!("no container {cid}"),
                })
            }
        }
        self.maybe_cat(&key);
        Ok(())
    }

    async fn exec_process(&self, req: ExecProcessRequest) -> Result<()> {
        self.call(
            "ExecProcess",
            &format!("{}/{}", req.container_id, req.exec_id),
        )?;
        self.register(
            &req.container_id,
            &req.exec_id,
            req.stdio.clone().unwrap_or_default(),
        );
        let key = (req.container_id.clone(), req.exec_id.clone());
        if let Some(p) = self.procs.lock().unwrap().get_mut(&key) {
            p.started = true;
        }
        self.maybe_cat(&key);
        Ok(())
    }

    async fn signal_process(
        &self,
        cid: &str,
        exec_id: &str,
        signal: u32,
        _all: bool,
    ) -> Result<()> {
        self.call("SignalProcess", &format!("{cid}/{exec_id} {signal}"))?;
        self.exit(cid, exec_id, 128 + signal);
        Ok(())
    }

    async fn wait_process(&self, cid: &str, exec_id: &str) -> Result<ProcessExit> {
        self.call("WaitProcess", &format!("{cid}/{exec_id}"))?;
        let mut rx = {
            let procs = self.procs.lock().unwrap();
            let Some(p) = procs.get(&(cid.to_string(), exec_id.to_string())) else {
                return Err(ShimError::Agent {
                    rpc: "WaitProcess",
                    code: Code::NOT_FOUND,
                    message: "no such process".into(),
                });
            };
            p.exit.subscribe()
        };
        let mut dead = self.dead_rx();
        tokio::select! {
            r = rx.wait_for(Option::is_some) => match r {
                Ok(status) => Ok(ProcessExit { status: status.expect("waited for Some") }),
                Err(_) => Err(ShimError::Agent { rpc: "WaitProcess", code: Code::INTERNAL, message: "gone".into() }),
            },
            _ = dead.wait_for(|d| *d) => Err(ShimError::AgentUnreachable { rpc: "WaitProcess", message: "ttrpc err: remote stream closed".into() }),
        }
    }

    async fn remove_container(&self, cid: &str, _timeout: u32) -> Result<()> {
        self.call("RemoveContainer", cid)?;
        let mut procs = self.procs.lock().unwrap();
        if procs.remove(&(cid.to_string(), String::new())).is_none() {
            return Err(ShimError::Agent {
                rpc: "RemoveContainer",
                code: Code::NOT_FOUND,
                message: "no such container".into(),
            });
        }
        procs.retain(|(c, _), _| c != cid);
        Ok(())
    }

    async fn list_processes(&self, cid: &str) -> Result<Vec<GuestProcess>> {
        self.call("ListProcesses", cid)?;
        let procs = self.procs.lock().unwrap();
        let mut list: Vec<GuestProcess> = procs
            .iter()
            .filter(|((c, _), p)| c == cid && p.exit.borrow().is_none())
            .map(|((_, e), p)| GuestProcess {
                pid: p.pid,
                exec_id: e.clone(),
            })
            .collect();
        list.sort_by_key(|p| p.pid);
        Ok(list)
    }

    async fn resize_pty(&self, cid: &str, exec_id: &str, rows: u32, cols: u32) -> Result<()> {
        self.call("TtyWinResize", &format!("{cid}/{exec_id} {rows}x{cols}"))
    }

    async fn close_stdin(&self, cid: &str, exec_id: &str) -> Result<()> {
        self.call("CloseStdin", &format!("{cid}/{exec_id}"))
    }

    async fn open_stdio(&self, cid: &str, exec_id: &str, kind: StdioKind) -> Result<BoxStream> {
        self.call("OpenStdio", &format!("{cid}/{exec_id} {kind:?}"))?;
        let (host, guest) = tokio::io::duplex(64 * 1024);
        let key = (cid.to_string(), exec_id.to_string());
        {
            let mut procs = self.procs.lock().unwrap();
            let Some(p) = procs.get_mut(&key) else {
                return Err(ShimError::Agent {
                    rpc: "OpenStdio",
                    code: Code::NOT_FOUND,
                    message: "no such process".into(),
                });
            };
            p.guest.insert(kind, guest);
        }
        self.maybe_cat(&key);
        Ok(Box::new(host))
    }

    async fn pause_container(&self, cid: &str) -> Result<()> {
        self.call("PauseContainer", cid)?;
        self.paused.lock().unwrap().insert(cid.to_string());
        Ok(())
    }

    async fn resume_container(&self, cid: &str) -> Result<()> {
        self.call("ResumeContainer", cid)?;
        self.paused.lock().unwrap().remove(cid);
        Ok(())
    }

    async fn stats_container(&self, cid: &str) -> Result<StatsContainerResponse> {
        self.call("StatsContainer", cid)?;
        Ok(StatsContainerResponse {
            cpu: Some(CpuStats {
                usage_usec: 1234,
                user_usec: 1000,
                system_usec: 234,
                ..Default::default()
            })
            .into(),
            memory: Some(MemoryStats {
                usage: 3 << 20,
                usage_limit: 64 << 20,
                ..Default::default()
            })
            .into(),
            pids: Some(PidsStats {
                current: 1,
                limit: 0,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
    }

    async fn update_container(&self, cid: &str, resources_json: Vec<u8>) -> Result<()> {
        self.call("UpdateContainer", cid)?;
        self.updates.lock().unwrap().push((
            cid.to_string(),
            String::from_utf8_lossy(&resources_json).into_owned(),
        ));
        Ok(())
    }

    async fn online_cpu_mem(&self, nb_cpus: u32, memory_mib: u32) -> Result<()> {
        self.call(
            "OnlineCPUMem",
            &format!("{nb_cpus} memory_mib={memory_mib}"),
        )
    }

    async fn update_interface(&self, iface: Interface) -> Result<()> {
        self.call("UpdateInterface", &iface.hw_addr)?;
        self.interfaces.lock().unwrap().push(iface);
        Ok(())
    }

    async fn update_routes(&self, routes: Vec<Route>) -> Result<()> {
        self.call("UpdateRoutes", "")?;
        self.routes.lock().unwrap().extend(routes);
        Ok(())
    }

    async fn add_arp_neighbors(&self, neighbors: Vec<ARPNeighbor>) -> Result<()> {
        self.call("AddARPNeighbors", "")?;
        self.neighbors.lock().unwrap().extend(neighbors);
        Ok(())
    }

    async fn guest_details(&self, _timeout: Duration) -> Result<GuestDetailsResponse> {
        // Not recorded in `calls` (the metrics snapshot asks it on a timer, as the watchdog
        // asks Check), but it fails as asked.
        if self.is_dead() {
            return Err(ShimError::AgentUnreachable {
                rpc: "GetGuestDetails",
                message: "ttrpc err: remote stream closed".into(),
            });
        }
        if let Some((code, message)) = self.failures.lock().unwrap().get("GetGuestDetails") {
            return Err(ShimError::Agent {
                rpc: "GetGuestDetails",
                code: *code,
                message: message.clone(),
            });
        }
        Ok(self.guest.lock().unwrap().clone())
    }

    async fn get_oom_event(&self) -> Result<String> {
        self.call("GetOOMEvent", "")?;
        let mut dead = self.dead_rx();
        loop {
            if let Some(cid) = self.oom_queue.lock().unwrap().pop_front() {
                return Ok(cid);
            }
            tokio::select! {
                _ = self.oom_ready.notified() => {}
                _ = dead.wait_for(|d| *d) => return Err(ShimError::AgentUnreachable {
                    rpc: "GetOOMEvent",
                    message: "ttrpc err: remote stream closed".into(),
                }),
            }
        }
    }
}

/// Records events.
#[derive(Default)]
pub struct FakeEvents {
    pub events: Mutex<Vec<(&'static str, Box<dyn MessageDyn>)>>,
}

impl FakeEvents {
    pub fn topics(&self) -> Vec<&'static str> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _)| *t)
            .collect()
    }

    pub fn exits(&self) -> Vec<TaskExit> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(_, e)| e.downcast_ref::<TaskExit>().cloned())
            .collect()
    }
}

#[async_trait]
impl EventSink for FakeEvents {
    fn publish(&self, topic: &'static str, event: Box<dyn MessageDyn>) {
        self.events.lock().unwrap().push((topic, event));
    }
    async fn flush(&self) {}
}

/// A service on fakes, with a temporary state directory and bundles.
pub struct Env {
    pub tmp: tempfile::TempDir,
    pub service: Arc<Service>,
    pub factory: Arc<FakeFactory>,
    pub events: Arc<FakeEvents>,
    pub exit: Arc<ExitSignal>,
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

impl Env {
    pub fn new() -> Env {
        Self::with_config(|_| {})
    }

    /// An environment whose configuration is the default changed by `adjust`.
    pub fn with_config(adjust: impl Fn(&mut Config) + Send + Sync + 'static) -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let factory = Arc::new(FakeFactory {
            current: Mutex::new(FakeSandbox::new(tmp.path())),
            boots: AtomicUsize::new(0),
            fail: Mutex::new(None),
            booted_with: Mutex::new(None),
            networking: FakeNetworking::default(),
            dir: tmp.path().to_path_buf(),
        });
        let events = Arc::new(FakeEvents::default());
        let exit = Arc::new(ExitSignal::default());
        let state_dir = tmp.path().join("state");
        let service = Service::new(
            "default",
            factory.clone(),
            events.clone(),
            Arc::new(move |_o: &RuntimeOptions| {
                let mut c = Config::default();
                c.runtime.state_dir = state_dir.clone();
                adjust(&mut c);
                Ok(c)
            }),
            exit.clone(),
        );
        Env {
            tmp,
            service,
            factory,
            events,
            exit,
        }
    }

    /// The current fake VM.
    pub fn vm(&self) -> Arc<FakeSandbox> {
        self.factory.current.lock().unwrap().clone()
    }

    /// The current fake agent.
    pub fn agent(&self) -> Arc<FakeAgent> {
        self.vm().agent.clone()
    }

    /// A bundle for container `id` with the given annotations (JSON object) and a rootfs dir.
    pub fn bundle(&self, id: &str, annotations: &str) -> PathBuf {
        let b = self.tmp.path().join("bundles").join(id);
        std::fs::create_dir_all(b.join("rootfs")).unwrap();
        let spec = format!(
            r#"{{"ociVersion":"1.0.2","process":{{"user":{{"uid":0,"gid":0}},"args":["true"],"cwd":"/"}},
               "root":{{"path":"rootfs"}},"hostname":"h-{id}","annotations":{annotations},
               "linux":{{"namespaces":[{{"type":"pid"}},{{"type":"mount"}},{{"type":"network"}}]}}}}"#
        );
        std::fs::write(b.join("config.json"), spec).unwrap();
        b
    }

    /// A CreateTaskRequest for `id` in a fresh bundle, no stdio.
    pub fn request(&self, id: &str, annotations: &str) -> CreateTaskRequest {
        CreateTaskRequest {
            id: id.to_string(),
            bundle: self.bundle(id, annotations).display().to_string(),
            ..Default::default()
        }
    }
}
