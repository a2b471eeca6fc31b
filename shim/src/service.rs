//! The task service's logic, independent of ttrpc (the glue is in [`crate::task`]): one
//! sandbox VM per shim, booted by the first Create, stopped after the last Delete or when it
//! dies on its own (its lifecycle is [`crate::podvm`]'s).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_shim::ExitSignal;
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskStart,
};
use containerd_shim_protos::shim::shim::CreateTaskRequest;
use containerd_shim_protos::topics;
use containerd_shim_protos::types::mount::Mount as ContainerdMount;
use isola_agent_proto::agent::{CreateContainerRequest, ExecProcessRequest};
use isola_config::Config;
use oci_spec::runtime::Spec;
use ttrpc::Code;

use crate::error::{Result, ShimError};
use crate::events::EventSink;
use crate::mounts::{RootfsMount, SourceKind};
use crate::options::{self, RuntimeOptions};
use crate::persist::{self, BundleRecord};
use crate::podvm::{PodVm, PodVmCell};
use crate::rlimits;
use crate::sandbox::SandboxFactory;
use crate::state::{Containers, ExitInfo, Process, Status};
use crate::stdio::{ProcessIo, StdioPaths};
use crate::translate;

/// Exit status given to processes whose VM died under them.
pub const VM_DIED_STATUS: u32 = 255;
/// After a process exited, how long its output may stay silent before copying is abandoned.
pub const OUTPUT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Loads the runtime configuration for the first container of a sandbox.
pub type ConfigLoader = Arc<dyn Fn(&RuntimeOptions) -> Result<Config> + Send + Sync>;

/// The task service.
pub struct Service {
    namespace: String,
    factory: Arc<dyn SandboxFactory>,
    pub(crate) events: Arc<dyn EventSink>,
    load_config: ConfigLoader,
    exit: Arc<ExitSignal>,
    pub(crate) containers: Mutex<Containers>,
    /// The sandbox VM and its phase.
    pub(crate) pod: PodVmCell,
    /// The sandbox's id once known, for log fields.
    sandbox_name: Mutex<String>,
}

fn ts(t: std::time::SystemTime) -> protobuf::well_known_types::timestamp::Timestamp {
    protobuf::well_known_types::timestamp::Timestamp::from(t)
}

impl Service {
    /// A service booting sandboxes with `factory` and publishing to `events`.
    pub fn new(
        namespace: &str,
        factory: Arc<dyn SandboxFactory>,
        events: Arc<dyn EventSink>,
        load_config: ConfigLoader,
        exit: Arc<ExitSignal>,
    ) -> Arc<Service> {
        Arc::new(Service {
            namespace: namespace.to_string(),
            factory,
            events,
            load_config,
            exit,
            containers: Mutex::new(Containers::default()),
            pod: PodVmCell::default(),
            sandbox_name: Mutex::new(String::new()),
        })
    }

    /// The containerd namespace served.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The sandbox id, once the first Create named it (for log fields); empty before.
    pub fn sandbox_name(&self) -> String {
        self.sandbox_name.lock().unwrap().clone()
    }

    // ---- Create ----

    /// Creates container `req.id`, booting the sandbox VM first if this is its first
    /// container. Returns the pid given to containerd.
    pub async fn create(self: &Arc<Self>, req: CreateTaskRequest) -> Result<u32> {
        let t0 = std::time::Instant::now();
        options::validate_id("container id", &req.id)?;
        if !req.checkpoint.is_empty() {
            return Err(ShimError::Unimplemented(format!(
                "restoring container {} from a checkpoint: {}",
                req.id,
                crate::task::CHECKPOINT_UNSUPPORTED
            )));
        }
        let bundle = PathBuf::from(&req.bundle);
        let spec = load_spec(&bundle)?;
        let sandbox_id = options::sandbox_id(&req.id, spec.annotations().as_ref());
        options::validate_id("sandbox id", &sandbox_id)?;
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        self.containers.lock().unwrap().reserve(
            &req.id,
            bundle.clone(),
            Process::new("", stdio.clone(), Vec::new()),
        )?;
        tracing::Span::current().record("sandbox_id", sandbox_id.as_str());
        let result = self
            .create_reserved(&req, &bundle, &spec, &sandbox_id, &stdio)
            .await;
        match result {
            Ok((pid, io)) => {
                let mut containers = self.containers.lock().unwrap();
                if let Some(c) = containers.get_any_mut(&req.id) {
                    c.pid = pid;
                    c.init.io = Some(Arc::new(io));
                    c.busy = false;
                }
                self.events.publish(
                    topics::TASK_CREATE_EVENT_TOPIC,
                    Box::new(TaskCreate {
                        container_id: req.id.clone(),
                        bundle: req.bundle.clone(),
                        rootfs: req.rootfs.clone(),
                        io: Some(TaskIO {
                            stdin: req.stdin.clone(),
                            stdout: req.stdout.clone(),
                            stderr: req.stderr.clone(),
                            terminal: req.terminal,
                            ..Default::default()
                        })
                        .into(),
                        checkpoint: String::new(),
                        pid,
                        ..Default::default()
                    }),
                );
                // With the VM's boot when this is the pod's first container ("VM ready" says
                // how long that took).
                tracing::info!(
                    elapsed_ms = t0.elapsed().as_millis() as u64,
                    "container created"
                );
                Ok(pid)
            }
            Err(e) => {
                tracing::warn!(error = %e, "create failed");
                let empty = {
                    let mut containers = self.containers.lock().unwrap();
                    containers.remove(&req.id);
                    containers.is_empty()
                };
                if empty {
                    self.stop_sandbox().await;
                } else {
                    self.stop_if_pod_ended();
                }
                Err(e)
            }
        }
    }

    async fn create_reserved(
        self: &Arc<Self>,
        req: &CreateTaskRequest,
        bundle: &Path,
        spec: &Spec,
        sandbox_id: &str,
        stdio: &StdioPaths,
    ) -> Result<(u32, ProcessIo)> {
        let cid = req.id.as_str();
        let mut translated = translate::translate(spec, cid, bundle, &SourceKind::of)?;
        for note in &translated.dropped {
            tracing::info!("not passed to the guest: {note}");
        }
        if let Some(process) = translated.spec.process_mut() {
            rlimits::fill(process, &rlimits::of_this_process());
        }
        let rootfs: Vec<RootfsMount> = req.rootfs.iter().map(rootfs_mount).collect();
        let bundle_rootfs = bundle_rootfs(spec, bundle);
        if rootfs.is_empty() && !bundle_rootfs.is_dir() {
            return Err(ShimError::InvalidArgument(format!(
                "container {cid} has no rootfs: containerd passed no rootfs mounts and {} is not a directory",
                bundle_rootfs.display()
            )));
        }
        let options = RuntimeOptions::from_any(req.options.as_ref())?;
        if sandbox_id != cid && self.sandbox_exited(sandbox_id) {
            return Err(ShimError::FailedPrecondition(format!(
                "the sandbox container {sandbox_id} of this pod has exited, so the pod is stopped: create the pod again"
            )));
        }
        let sandbox = self.ensure_sandbox(sandbox_id, spec, &options).await?;
        let oci_spec_json = serde_json::to_vec(&translated.spec)
            .map_err(|e| ShimError::Internal(format!("serializing the guest spec: {e}")))?;
        tracing::debug!(spec = %String::from_utf8_lossy(&oci_spec_json), "guest spec");

        sandbox
            .vm
            .share_container(cid, rootfs, bundle_rootfs, translated.binds.clone())
            .await?;
        let create = CreateContainerRequest {
            container_id: cid.to_string(),
            exec_id: String::new(),
            oci_spec_json,
            storages: Vec::new(),
            stdio: Some(stdio.config()).into(),
            ..Default::default()
        };
        if let Err(e) = sandbox.agent.create_container(create).await {
            self.unshare(&sandbox, cid).await;
            return Err(e);
        }
        let io = match ProcessIo::attach(sandbox.agent.as_ref(), cid, "", stdio).await {
            Ok(io) => io,
            Err(e) => {
                if let Err(re) = sandbox.agent.remove_container(cid, 0).await {
                    tracing::warn!(error = %re, "removing a container whose stdio failed");
                }
                self.unshare(&sandbox, cid).await;
                return Err(e);
            }
        };
        let record = BundleRecord {
            container_id: cid.to_string(),
            sandbox_id: sandbox_id.to_string(),
            sandbox_record: sandbox.record.clone(),
        };
        if let Err(e) = record.save(bundle) {
            tracing::warn!(error = %e, "recording the sandbox in the bundle");
        }
        Ok((sandbox.vm.pid(), io))
    }

    fn sandbox_exited(&self, sandbox_id: &str) -> bool {
        let containers = self.containers.lock().unwrap();
        containers
            .get(sandbox_id)
            .is_ok_and(|s| s.init.status == Status::Stopped)
    }

    /// The sandbox, booting it (VM + CreateSandbox) for the first container.
    async fn ensure_sandbox(
        self: &Arc<Self>,
        sandbox_id: &str,
        spec: &Spec,
        options: &RuntimeOptions,
    ) -> Result<Arc<PodVm>> {
        let boot = || async {
            *self.sandbox_name.lock().unwrap() = sandbox_id.to_string();
            let config = (self.load_config)(options)?;
            let (config, sizing) =
                config.for_pod(spec.annotations().as_ref().unwrap_or(&HashMap::new()))?;
            tracing::info!(
                vcpus = config.hypervisor.vcpus,
                memory_mib = config.hypervisor.memory_mib,
                declared_vcpus = ?sizing.declared_vcpus,
                declared_memory_mib = ?sizing.declared_memory_mib,
                overrides = ?sizing.overrides,
                "sizing the sandbox VM"
            );
            PodVm::boot(self.factory.as_ref(), &config, sandbox_id, spec).await
        };
        let (vm, booted) = self.pod.get_or_boot(sandbox_id, boot).await?;
        if booted {
            self.watch_vm(vm.clone());
            self.watch_oom(vm.clone());
            self.watch_pod(vm.clone());
        }
        Ok(vm)
    }

    /// Watches the VM: if it exits while we did not stop it, every process is marked exited
    /// and the sandbox is cleaned up ([`PodVmCell::exited`]).
    fn watch_vm(self: &Arc<Self>, vm: Arc<PodVm>) {
        let this = Arc::downgrade(self);
        let span = tracing::info_span!(parent: None, "vm", sandbox_id = %vm.id);
        let task = async move {
            let exit = vm.vm.wait().await;
            let Some(this) = this.upgrade() else { return };
            let crashed = || this.mark_all_exited(VM_DIED_STATUS);
            this.pod.exited(&vm, exit, crashed).await;
        };
        tokio::spawn(tracing::Instrument::instrument(task, span));
    }

    fn mark_all_exited(&self, status: u32) {
        let mut containers = self.containers.lock().unwrap();
        // Containers being created or deleted are not containerd's tasks (yet, any more).
        for c in containers.all_mut().filter(|c| !c.busy) {
            let mut execs: Vec<_> = c.execs.values_mut().collect();
            execs.sort_by(|a, b| a.exec_id.cmp(&b.exec_id));
            for p in execs {
                if p.set_exited(status) {
                    self.publish_exit(&c.id, &p.exec_id, c.pid, p.exit());
                }
            }
            if c.init.set_exited(status) {
                self.publish_exit(&c.id, "", c.pid, c.init.exit());
            }
        }
    }

    pub(crate) fn publish_exit(&self, cid: &str, exec_id: &str, pid: u32, exit: Option<ExitInfo>) {
        let Some(exit) = exit else { return };
        tracing::info!(
            container_id = cid,
            exec_id,
            status = exit.status,
            "process exited"
        );
        self.events.publish(
            topics::TASK_EXIT_EVENT_TOPIC,
            Box::new(TaskExit {
                container_id: cid.to_string(),
                id: if exec_id.is_empty() { cid } else { exec_id }.to_string(),
                pid,
                exit_status: exit.status,
                exited_at: Some(ts(exit.at)).into(),
                ..Default::default()
            }),
        );
    }

    /// Stops the VM and removes everything it left on the host. Idempotent.
    ///
    /// Returns only once the teardown is complete, also when another one (after a VM crash)
    /// was in progress ([`PodVmCell::stop`]): the shim can never answer the last Delete, or
    /// exit, with mounts or processes still being removed.
    pub async fn stop_sandbox(&self) {
        self.pod.stop().await;
    }

    /// Stops the VM in the background once the pod has ended ([`Containers::pod_ended`]).
    /// Its containers stay for State, Wait and Delete. With CRI they can stay undeleted long
    /// after the pod stopped (a finished Job's pod until the kubelet collects it), and the VM
    /// would hold its memory all that time.
    pub(crate) fn stop_if_pod_ended(self: &Arc<Self>) {
        if self.pod.ready().is_none() {
            return;
        }
        let sandbox_id = self.sandbox_name();
        if !self.containers.lock().unwrap().pod_ended(&sandbox_id) {
            return;
        }
        tracing::info!(
            "the pod's sandbox container and every process in it have exited: stopping the VM"
        );
        let this = self.clone();
        tokio::spawn(async move { this.stop_sandbox().await });
    }

    async fn unshare(&self, sandbox: &PodVm, cid: &str) {
        if let Err(e) = sandbox.vm.unshare_container(cid).await {
            tracing::warn!(container_id = cid, error = %e, "removing the container's shared files");
        }
    }

    // ---- Start, exec, exits ----

    /// Starts a created process; returns the pid given to containerd.
    pub async fn start(self: &Arc<Self>, id: &str, exec_id: &str) -> Result<u32> {
        let t0 = std::time::Instant::now();
        self.containers.lock().unwrap().begin_start(id, exec_id)?;
        let result = self.start_begun(id, exec_id).await;
        let mut containers = self.containers.lock().unwrap();
        let container = containers.get_mut(id)?;
        let pid = container.pid;
        let p = container.process_mut(exec_id)?;
        p.starting = false;
        let (sandbox, io) = result?;
        if p.status != Status::Created {
            // The VM died while we were starting it.
            return Err(ShimError::FailedPrecondition(format!(
                "container {id}: the sandbox VM died during start"
            )));
        }
        p.status = Status::Running;
        if let Some(io) = io {
            if p.stdin_closed {
                io.close_stdin();
            }
            p.io = Some(io);
        }
        if exec_id.is_empty() {
            self.events.publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: id.to_string(),
                    pid,
                    ..Default::default()
                }),
            );
        } else {
            self.events.publish(
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                Box::new(TaskExecStarted {
                    container_id: id.to_string(),
                    exec_id: exec_id.to_string(),
                    pid,
                    ..Default::default()
                }),
            );
        }
        tracing::info!(elapsed_ms = t0.elapsed().as_millis() as u64, "started");
        if !p.watching {
            p.watching = true;
            self.watch_exit(sandbox, id.to_string(), exec_id.to_string());
        }
        Ok(pid)
    }

    async fn start_begun(
        &self,
        id: &str,
        exec_id: &str,
    ) -> Result<(Arc<PodVm>, Option<Arc<ProcessIo>>)> {
        let sandbox = self.pod.live()?;
        if exec_id.is_empty() {
            sandbox.agent.start_container(id).await?;
            return Ok((sandbox, None));
        }
        let (stdio, process_json) = {
            let containers = self.containers.lock().unwrap();
            let p = containers.get(id)?.process(exec_id)?;
            (p.stdio.clone(), p.spec_json.clone())
        };
        let req = ExecProcessRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            process_json,
            stdio: Some(stdio.config()).into(),
            ..Default::default()
        };
        let t0 = std::time::Instant::now();
        sandbox.agent.exec_process(req).await?;
        let t1 = std::time::Instant::now();
        let attached = ProcessIo::attach(sandbox.agent.as_ref(), id, exec_id, &stdio).await;
        tracing::debug!(
            exec_process_ms = (t1 - t0).as_millis() as u64,
            attach_ms = t1.elapsed().as_millis() as u64,
            "exec started"
        );
        match attached {
            Ok(io) => Ok((sandbox, Some(Arc::new(io)))),
            Err(e) => {
                let _ = sandbox.agent.signal_process(id, exec_id, 9, false).await;
                Err(e)
            }
        }
    }

    /// Waits for a started process in the guest, then for its output, then records the exit.
    fn watch_exit(self: &Arc<Self>, sandbox: Arc<PodVm>, id: String, exec_id: String) {
        let this = Arc::downgrade(self);
        let span = tracing::info_span!(parent: None, "exit", sandbox_id = %sandbox.id);
        let task = async move {
            let waited = sandbox.agent.wait_process(&id, &exec_id).await;
            let Some(this) = this.upgrade() else { return };
            let status = match waited {
                Ok(exit) => exit.status,
                // The VM is dead or stopping: whoever ended it reports the exits.
                Err(_) if !this.pod.is_current(&sandbox) => return,
                Err(e) => {
                    tracing::warn!(container_id = %id, exec_id = %exec_id, error = %e, "waiting for the process failed; reporting status {VM_DIED_STATUS}");
                    VM_DIED_STATUS
                }
            };
            let io = {
                let containers = this.containers.lock().unwrap();
                containers
                    .get(&id)
                    .and_then(|c| c.process(&exec_id))
                    .ok()
                    .and_then(|p| p.io.clone())
            };
            if let Some(io) = io {
                if !io.wait_outputs(OUTPUT_IDLE_TIMEOUT).await {
                    tracing::warn!(container_id = %id, exec_id = %exec_id, "the process exited but its output stayed open and silent for {OUTPUT_IDLE_TIMEOUT:?}; not waiting for more");
                }
            }
            let mut containers = this.containers.lock().unwrap();
            if let Ok(c) = containers.get_mut(&id) {
                let pid = c.pid;
                if let Ok(p) = c.process_mut(&exec_id) {
                    if p.set_exited(status) {
                        this.publish_exit(&id, &exec_id, pid, p.exit());
                    }
                }
            }
            drop(containers);
            this.stop_if_pod_ended();
        };
        tokio::spawn(tracing::Instrument::instrument(task, span));
    }

    /// Registers an exec process (started by [`start`](Self::start)).
    pub fn exec(
        &self,
        id: &str,
        exec_id: &str,
        stdio: StdioPaths,
        process_json: Vec<u8>,
    ) -> Result<()> {
        options::validate_id("exec id", exec_id)?;
        let (json, dropped) = translate::exec_process(&process_json, exec_id, stdio.terminal)?;
        if !dropped.is_empty() {
            tracing::info!(
                container_id = id,
                exec_id,
                ?dropped,
                "not passed to the guest"
            );
        }
        let mut containers = self.containers.lock().unwrap();
        let c = containers.get_mut(id)?;
        if c.init.status != Status::Running {
            return Err(ShimError::FailedPrecondition(format!(
                "container {id} is not running: exec needs a running container"
            )));
        }
        if c.paused {
            return Err(ShimError::FailedPrecondition(format!(
                "container {id} is paused: resume it before exec"
            )));
        }
        if c.execs.contains_key(exec_id) {
            return Err(ShimError::AlreadyExists(format!(
                "exec {exec_id} of container {id}"
            )));
        }
        c.execs
            .insert(exec_id.to_string(), Process::new(exec_id, stdio, json));
        self.events.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                ..Default::default()
            }),
        );
        Ok(())
    }

    // ---- Kill, Delete, Shutdown ----

    /// Signals a process (or all processes of the container).
    pub async fn kill(
        self: &Arc<Self>,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<()> {
        {
            let containers = self.containers.lock().unwrap();
            let p = containers.get(id)?.process(exec_id)?;
            if p.status == Status::Stopped {
                return Err(ShimError::NotFound(format!(
                    "process {id}/{exec_id}: it has already exited"
                )));
            }
            if !exec_id.is_empty() && p.status == Status::Created {
                return Err(ShimError::NotFound(format!(
                    "exec {exec_id} of container {id}: it has not started"
                )));
            }
        }
        let sandbox = self.pod.live().map_err(|_| {
            ShimError::NotFound(format!("process {id}/{exec_id}: the sandbox VM is gone"))
        })?;
        sandbox
            .agent
            .signal_process(id, exec_id, signal, all)
            .await?;
        // A created container that never started can be killed too: its exit must still be
        // reported, so watch for it as Start would have.
        let watch = {
            let mut containers = self.containers.lock().unwrap();
            match containers.get_mut(id).and_then(|c| c.process_mut(exec_id)) {
                Ok(p) if p.status == Status::Created && !p.starting && !p.watching => {
                    p.watching = true;
                    true
                }
                _ => false,
            }
        };
        if watch {
            self.watch_exit(sandbox, id.to_string(), exec_id.to_string());
        }
        Ok(())
    }

    /// Deletes a stopped (or never started) process; the container with its init process.
    /// Returns the pid and the exit.
    pub async fn delete(self: &Arc<Self>, id: &str, exec_id: &str) -> Result<(u32, ExitInfo)> {
        if !exec_id.is_empty() {
            let mut containers = self.containers.lock().unwrap();
            let c = containers.get_mut(id)?;
            let p = c.process(exec_id)?;
            if p.status == Status::Running || p.starting {
                return Err(ShimError::FailedPrecondition(format!(
                    "exec {exec_id} of container {id} is running: kill it first"
                )));
            }
            let info = p.delete_info();
            let pid = c.pid;
            c.execs.remove(exec_id);
            tracing::info!(status = info.status, "exec deleted");
            return Ok((pid, info));
        }
        {
            let mut containers = self.containers.lock().unwrap();
            let c = containers.get_mut(id)?;
            if c.init.status == Status::Running || c.init.starting {
                return Err(ShimError::FailedPrecondition(format!(
                    "container {id} is running: kill it and wait for it to exit before deleting it"
                )));
            }
            c.busy = true;
        }
        if let Some(sandbox) = self.pod.ready().as_ref() {
            match sandbox.agent.remove_container(id, 0).await {
                Ok(()) => {}
                Err(ShimError::Agent {
                    code: Code::NOT_FOUND,
                    ..
                }) => {}
                // The container has exited; with its agent gone the guest side goes with the
                // VM (the watchdog or the last Delete stops it). Refusing would leave a task
                // containerd can never delete.
                Err(e @ ShimError::AgentUnreachable { .. }) => {
                    tracing::warn!(error = %e, "the guest agent is unreachable: deleting the container on the host side only");
                }
                // The VM is being stopped under this call (the pod ended): it takes the
                // container's guest side with it.
                Err(e) if !self.pod.is_current(sandbox) => {
                    tracing::debug!(error = %e, "the sandbox VM stopped during the delete");
                }
                Err(e) => {
                    if let Some(c) = self.containers.lock().unwrap().get_any_mut(id) {
                        c.busy = false;
                    }
                    return Err(e);
                }
            }
            self.unshare(sandbox, id).await;
        }
        let (container, empty) = {
            let mut containers = self.containers.lock().unwrap();
            let c = containers.remove(id);
            (c, containers.is_empty())
        };
        let Some(mut container) = container else {
            return Err(ShimError::NotFound(format!("container {id}")));
        };
        if let Some(io) = container.init.io.take() {
            io.abort();
        }
        persist::remove_file_quietly(&container.bundle.join(persist::BUNDLE_RECORD));
        let info = container.init.delete_info();
        self.events.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: id.to_string(),
                id: id.to_string(),
                pid: container.pid,
                exit_status: info.status,
                exited_at: Some(ts(info.at)).into(),
                ..Default::default()
            }),
        );
        tracing::info!("container deleted");
        if empty {
            self.stop_sandbox().await;
        } else {
            // The last container that kept the pod from having ended may be this one.
            self.stop_if_pod_ended();
        }
        Ok((container.pid, info))
    }

    /// Shutdown: with containers left (and not `now`) this does nothing; otherwise the sandbox
    /// is stopped and the shim told to exit.
    pub async fn shutdown(&self, now: bool) -> Result<()> {
        if !now && !self.containers.lock().unwrap().is_empty() {
            return Ok(());
        }
        if now {
            self.mark_all_exited(VM_DIED_STATUS);
        }
        self.stop_sandbox().await;
        self.events.flush().await;
        self.exit.signal();
        Ok(())
    }
}

fn load_spec(bundle: &Path) -> Result<Spec> {
    let path = bundle.join("config.json");
    Spec::load(&path).map_err(|e| {
        ShimError::InvalidArgument(format!("reading the OCI spec {}: {e}", path.display()))
    })
}

fn bundle_rootfs(spec: &Spec, bundle: &Path) -> PathBuf {
    let root = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .unwrap_or_else(|| "rootfs".into());
    if root.is_relative() {
        bundle.join(root)
    } else {
        root
    }
}

fn rootfs_mount(m: &ContainerdMount) -> RootfsMount {
    RootfsMount {
        fstype: m.type_.clone(),
        source: m.source.clone(),
        options: m.options.clone(),
    }
}
