//! Containers in the guest: the registry and each container's lifecycle.
//!
//! ```text
//! CreateContainer ──> Created ──StartContainer──> Running ──(init exits)──> stopped
//!        │               │                         │  ▲                         │
//!        └─(failure: everything undone)   Pause    ▼  │ Resume    RemoveContainer (kills a
//!                                               (paused)          created one; a running one
//!                                                                 only with a timeout) ──> gone
//! ```
//!
//! A container is its bundle (`/run/isola/containers/<id>/config.json`, the spec as checked by
//! [`spec`]), libcontainer's state (`/run/isola/libcontainer/<id>`), its cgroup, the storages
//! mounted for it, and its processes: the init and the execs, each a [`Process`]. Lifecycle
//! operations on one container (create, start, exec, remove) are serialized by a per-container
//! lock; signals, waits, stdio and resizes never take it. The Task queries and controls on an
//! existing container (processes, pause/resume, stats, resource updates, state) are in
//! [`task`]; each container's OOM kills are watched from creation to removal ([`OomWatcher`]).
//! What the containers of one pod share (the sandbox container's namespaces, the pod's shm and
//! emptyDir volumes) is [`pod`]'s.

mod devices;
mod hugepages;
mod inherit;
mod loopback;
mod pod;
pub mod spec;
mod sysctl;
mod task;

pub use task::{unix_nanos, ContainerStatus};

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use isola_agent_proto::types::Storage;
use tokio::sync::watch;

use crate::cgroups;
use crate::error::{AgentError, Result};
use crate::libct::{seccomp, Op, Runtime};
use crate::oom::OomWatcher;
use crate::process::{ExitInfo, Process};
use crate::pty::ConsoleSocket;
use crate::reaper::Reaper;
use crate::stdio::{ProcessSide, StdioWanted};
use crate::storage;

/// Where bundles are written.
pub const CONTAINERS_DIR: &str = "/run/isola/containers";
/// How long a killed container may take to die.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How long an exited exec stays known (WaitProcess after the exit, duplicate-id checks).
const EXEC_RETENTION: Duration = Duration::from_secs(600);
/// At most this many exited execs are kept per container (oldest forgotten first).
const EXEC_KEEP_EXITED: usize = 256;

/// Forgets exited execs older than `retention`, and the oldest beyond `keep`, so that a
/// long-running container with periodic execs (probes) does not grow without bound. Running
/// execs are always kept.
fn prune_execs(
    execs: &mut HashMap<String, Arc<Process>>,
    now: std::time::SystemTime,
    retention: Duration,
    keep: usize,
) {
    execs.retain(|_, p| match p.exit() {
        Some(exit) => now
            .duration_since(exit.at)
            .map_or(true, |age| age < retention),
        None => true,
    });
    let mut exited: Vec<(std::time::SystemTime, String)> = execs
        .iter()
        .filter_map(|(id, p)| p.exit().map(|e| (e.at, id.clone())))
        .collect();
    if exited.len() > keep {
        exited.sort();
        for (_, id) in &exited[..exited.len() - keep] {
            execs.remove(id);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Creating,
    Created,
    Running,
    Removed,
}

struct State {
    phase: Phase,
    execs: HashMap<String, Arc<Process>>,
    /// Storages mounted for this container, in mount order.
    mounts: Vec<PathBuf>,
    /// Frozen by PauseContainer.
    paused: bool,
}

/// One container.
pub struct Container {
    pub id: String,
    /// The init's exec id as the host named it (normally empty).
    init_exec_id: String,
    bundle: PathBuf,
    /// The container's cgroup directory (from `linux.cgroupsPath`).
    cgroup_dir: Option<PathBuf>,
    /// What its exec'd processes inherit (security settings, the seccomp filter).
    exec_defaults: inherit::ExecDefaults,
    pub init: Arc<Process>,
    state: Mutex<State>,
    /// Serializes create/start/exec/remove.
    op: tokio::sync::Mutex<()>,
}

impl Container {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn phase(&self) -> Phase {
        self.lock().phase
    }

    /// The process named by `exec_id`: empty (or the init's own exec id) is the init.
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() || exec_id == self.init_exec_id {
            return Ok(self.init.clone());
        }
        self.lock()
            .execs
            .get(exec_id)
            .cloned()
            .ok_or_else(|| AgentError::ProcessNotFound {
                container: self.id.clone(),
                exec: exec_id.to_string(),
            })
    }

    /// SIGKILLs everything in the container (best effort), and thaws a paused one so that
    /// nothing stays frozen (frozen processes die of SIGKILL anyway).
    fn kill_all(&self) {
        if let Some(dir) = self.cgroup_dir.as_ref().filter(|d| d.exists()) {
            if let Err(e) = cgroups::signal_all(dir, libc::SIGKILL) {
                tracing::warn!(container_id = %self.id, error = %e, "killing the container's cgroup failed");
            }
            if std::mem::take(&mut self.lock().paused) {
                if let Err(e) = std::fs::write(dir.join("cgroup.freeze"), "0") {
                    tracing::warn!(container_id = %self.id, error = %e, "thawing the container failed");
                }
            }
        }
        let _ = self.init.signal(libc::SIGKILL);
    }
}

/// What CreateContainer asks for.
pub struct CreateRequest {
    pub id: String,
    pub init_exec_id: String,
    pub spec_json: Vec<u8>,
    pub storages: Vec<Storage>,
    pub stdio: StdioWanted,
}

/// All containers of the sandbox.
pub struct Containers {
    map: Mutex<HashMap<String, Arc<Container>>>,
    /// Bumped whenever a process appears (stdio attaches wait on it).
    changed: watch::Sender<u64>,
    runtime: Runtime,
    reaper: Reaper,
    bundles_dir: PathBuf,
    oom: OomWatcher,
}

impl Containers {
    pub fn new(runtime: Runtime, reaper: Reaper, bundles_dir: impl Into<PathBuf>) -> Containers {
        Containers {
            map: Mutex::new(HashMap::new()),
            changed: watch::Sender::new(0),
            runtime,
            reaper,
            bundles_dir: bundles_dir.into(),
            oom: OomWatcher::new(),
        }
    }

    /// The OOM events of all containers (GetOOMEvent).
    pub fn oom(&self) -> &OomWatcher {
        &self.oom
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<Container>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The container `id`, NOT_FOUND if there is none.
    pub fn get(&self, id: &str) -> Result<Arc<Container>> {
        self.map()
            .get(id)
            .cloned()
            .ok_or_else(|| AgentError::ContainerNotFound(id.to_string()))
    }

    /// The process `(id, exec_id)`, NOT_FOUND if there is none.
    pub fn process(&self, id: &str, exec_id: &str) -> Result<Arc<Process>> {
        self.get(id)?.process(exec_id)
    }

    /// The process `(id, exec_id)`, waiting up to `wait` for it to be created.
    pub async fn wait_for_process(
        &self,
        id: &str,
        exec_id: &str,
        wait: Duration,
    ) -> Option<Arc<Process>> {
        let mut changed = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Ok(p) = self.process(id, exec_id) {
                return Some(p);
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => continue,
                _ => return None,
            }
        }
    }

    /// CreateContainer.
    pub async fn create(&self, req: CreateRequest) -> Result<()> {
        spec::check_container_id(&req.id)?;
        let mut cs = spec::container_spec(&req.spec_json, &req.id, req.stdio.terminal)?;
        let dropped = hugepages::keep_supported(&mut cs.spec, &hugepages::guest_sizes());
        if !dropped.is_empty() {
            tracing::debug!(container_id = %req.id, ?dropped, "huge-page limits on sizes the guest lacks left out");
        }
        let wanted = StdioWanted {
            terminal: cs.terminal,
            ..req.stdio
        };
        let (init, side) = Process::new(&req.id, "", wanted)?;
        let container = Arc::new(Container {
            id: req.id.clone(),
            init_exec_id: req.init_exec_id.clone(),
            bundle: self.bundles_dir.join(&req.id),
            cgroup_dir: cgroups::dir(Path::new(cgroups::CGROUP_ROOT), &cs.cgroup_path),
            exec_defaults: inherit::ExecDefaults::of(&cs.spec),
            init,
            state: Mutex::new(State {
                phase: Phase::Creating,
                execs: HashMap::new(),
                mounts: Vec::new(),
                paused: false,
            }),
            op: tokio::sync::Mutex::new(()),
        });
        let _op = container.op.lock().await;
        {
            let mut map = self.map();
            if map.contains_key(&req.id) {
                return Err(AgentError::AlreadyExists(format!(
                    "container {:?} already exists",
                    req.id
                )));
            }
            map.insert(req.id.clone(), container.clone());
        }
        self.bump();
        match self.create_inner(&container, cs, &req.storages, side).await {
            Ok(()) => {
                container.lock().phase = Phase::Created;
                if let Some(dir) = &container.cgroup_dir {
                    self.oom.watch(&req.id, dir);
                }
                tracing::info!(container_id = %req.id, pid = container.init.pid().map(|p| p.as_raw()), "container created");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(container_id = %req.id, error = %e, "creating the container failed; undoing");
                self.discard(&container).await;
                Err(e)
            }
        }
    }

    async fn create_inner(
        &self,
        c: &Arc<Container>,
        mut cs: spec::ContainerSpec,
        storages: &[Storage],
        side: Option<ProcessSide>,
    ) -> Result<()> {
        pod::resolve_namespaces(&mut cs.spec, &c.id, |sandbox| {
            self.get(sandbox)
                .ok()
                .and_then(|s| s.init.pid())
                .map(|p| p.as_raw())
        })?;
        pod::prepare_volumes(&pod::pod_volumes(&cs.spec, &c.id)?)?;
        let net_sysctls = sysctl::take_net(&mut cs.spec, &c.id)?;
        sysctl::apply(&net_sysctls, Path::new("/proc/sys"), &c.id)?;
        if devices::is_privileged(&cs.spec) {
            devices::allow_all(&mut cs.spec);
            let added = devices::add(&mut cs.spec, devices::guest_devices(Path::new("/dev")));
            tracing::info!(container_id = %c.id, added, "privileged: given the guest's device nodes");
        }
        for s in storages {
            let mount_point = storage::mount_storage(s)?;
            c.lock().mounts.push(mount_point);
        }
        let root = cs
            .spec
            .root()
            .as_ref()
            .map(|r| r.path().clone())
            .unwrap_or_default();
        if !root.is_dir() {
            return Err(AgentError::InvalidArgument(format!(
                "container {}: root.path {} is not a directory in the guest",
                c.id,
                root.display()
            )));
        }
        std::fs::create_dir_all(&c.bundle)
            .map_err(|e| AgentError::io(format!("creating bundle {}", c.bundle.display()), e))?;
        let json = serde_json::to_vec(&cs.spec)
            .map_err(|e| AgentError::Runtime(format!("encoding the spec: {e}")))?;
        let config = c.bundle.join("config.json");
        std::fs::write(&config, json)
            .map_err(|e| AgentError::io(format!("writing {}", config.display()), e))?;
        let console = cs.terminal.then(ConsoleSocket::bind).transpose()?;
        let op = Op::Create {
            id: c.id.clone(),
            bundle: c.bundle.clone(),
            console_socket: console.as_ref().map(|s| s.path().to_path_buf()),
            stdio: side.is_some(),
        };
        self.run_for(&c.init, op, side, console).await?;
        if loopback::wants_new_netns(&cs.spec) {
            let pid = c.init.pid().ok_or_else(|| {
                AgentError::Runtime(format!("container {}: its init has no pid", c.id))
            })?;
            loopback::up_in_netns_of(pid, &c.id).await?;
        }
        Ok(())
    }

    /// Runs a helper that creates `process`, then watches it and wires its terminal.
    async fn run_for(
        &self,
        process: &Arc<Process>,
        op: Op,
        side: Option<ProcessSide>,
        console: Option<ConsoleSocket>,
    ) -> Result<()> {
        let fds: Vec<BorrowedFd<'_>> = side.iter().flatten().map(|f| f.as_fd()).collect();
        let since = Instant::now();
        let pid = self.runtime.run(op, &fds).await?;
        // The process has its own copies now; ours would keep its pipes open.
        drop(fds);
        drop(side);
        let pid = pid.ok_or_else(|| AgentError::Runtime("the helper reported no pid".into()))?;
        process.started(&self.reaper, pid, since);
        if let Some(console) = console {
            let master = console.receive_master().await?;
            process.set_master(master)?;
        }
        Ok(())
    }

    /// Undoes a failed creation: kills what was started, removes state, bundle and mounts.
    async fn discard(&self, c: &Arc<Container>) {
        c.kill_all();
        if self.runtime.root().join(&c.id).exists() {
            if let Err(e) = self.runtime.run(Op::Delete { id: c.id.clone() }, &[]).await {
                tracing::warn!(container_id = %c.id, error = %e, "removing libcontainer state failed");
            }
        }
        self.forget(c);
    }

    /// The last step of removal: bundle, mounts, registry.
    fn forget(&self, c: &Arc<Container>) {
        if let Err(e) = std::fs::remove_dir_all(&c.bundle) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(container_id = %c.id, error = %e, "removing the bundle failed");
            }
        }
        let (mounts, execs) = {
            let mut st = c.lock();
            st.phase = Phase::Removed;
            (
                std::mem::take(&mut st.mounts),
                std::mem::take(&mut st.execs),
            )
        };
        self.oom.unwatch(&c.id);
        for m in mounts.iter().rev() {
            storage::unmount(m);
        }
        c.init.abandon();
        for p in execs.values() {
            p.abandon();
        }
        let mut map = self.map();
        if map.get(&c.id).is_some_and(|x| Arc::ptr_eq(x, c)) {
            map.remove(&c.id);
        }
    }

    /// StartContainer.
    pub async fn start(&self, id: &str) -> Result<()> {
        let c = self.get(id)?;
        let _op = c.op.lock().await;
        match c.phase() {
            Phase::Removed => return Err(AgentError::ContainerNotFound(id.to_string())),
            Phase::Running => {
                return Err(AgentError::FailedPrecondition(format!(
                    "container {id:?} is already started"
                )))
            }
            Phase::Creating => {
                return Err(AgentError::FailedPrecondition(format!(
                    "container {id:?} is still being created"
                )))
            }
            Phase::Created => {}
        }
        if let Some(exit) = c.init.exit() {
            return Err(AgentError::FailedPrecondition(format!(
                "container {id:?} has stopped before it was started (status {})",
                exit.code
            )));
        }
        self.runtime
            .run(Op::Start { id: id.to_string() }, &[])
            .await?;
        c.lock().phase = Phase::Running;
        tracing::info!(container_id = id, "container started");
        Ok(())
    }

    /// ExecProcess.
    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process_json: &[u8],
        wanted: StdioWanted,
    ) -> Result<()> {
        let c = self.get(id)?;
        spec::check_exec_id(exec_id)?;
        let oci_process = spec::exec_process(
            process_json,
            id,
            exec_id,
            wanted.terminal,
            &c.exec_defaults.process,
        )?;
        let wanted = StdioWanted {
            terminal: oci_process.terminal().unwrap_or(false),
            ..wanted
        };
        let _op = c.op.lock().await;
        match c.phase() {
            Phase::Removed => return Err(AgentError::ContainerNotFound(id.to_string())),
            Phase::Creating | Phase::Created => {
                return Err(AgentError::FailedPrecondition(format!(
                    "container {id:?} is not started"
                )))
            }
            Phase::Running => {}
        }
        if let Some(exit) = c.init.exit() {
            return Err(AgentError::FailedPrecondition(format!(
                "container {id:?} has stopped (status {})",
                exit.code
            )));
        }
        if c.lock().paused {
            return Err(AgentError::FailedPrecondition(format!(
                "container {id:?} is paused; resume it first"
            )));
        }
        let taken = || {
            AgentError::AlreadyExists(format!(
                "container {id:?} already has a process with exec id {exec_id:?}"
            ))
        };
        if exec_id == c.init_exec_id {
            return Err(taken());
        }
        let (process, side) = Process::new(id, exec_id, wanted)?;
        {
            let mut st = c.lock();
            prune_execs(
                &mut st.execs,
                std::time::SystemTime::now(),
                EXEC_RETENTION,
                EXEC_KEEP_EXITED,
            );
            // An exited exec's id is free again: the host asks for it only once it has
            // deleted the old process (containerd and runc let `--exec-id` be reused so).
            if st.execs.get(exec_id).is_some_and(|p| p.exit().is_none()) {
                return Err(taken());
            }
            st.execs.insert(exec_id.to_string(), process.clone());
        }
        self.bump();
        match self.exec_inner(&c, &process, oci_process, side).await {
            Ok(()) => {
                tracing::info!(
                    container_id = id,
                    exec_id,
                    pid = process.pid().map(|p| p.as_raw()),
                    "exec started"
                );
                Ok(())
            }
            Err(e) => {
                c.lock().execs.remove(exec_id);
                process.abandon();
                Err(e)
            }
        }
    }

    async fn exec_inner(
        &self,
        c: &Arc<Container>,
        process: &Arc<Process>,
        mut oci_process: oci_spec::runtime::Process,
        side: Option<ProcessSide>,
    ) -> Result<()> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = c.bundle.join(format!("exec-{n}.json"));
        let seccomp_path = c.bundle.join(format!("exec-{n}.seccomp.json"));
        let seccomp = seccomp::plan(&mut oci_process, c.exec_defaults.seccomp.as_ref());
        let terminal = process.terminal();
        let result = async {
            write_json(&path, &oci_process)?;
            if let Some(s) = &seccomp {
                write_json(&seccomp_path, s)?;
            }
            let console = terminal.then(ConsoleSocket::bind).transpose()?;
            let op = Op::Exec {
                id: c.id.clone(),
                process: path.clone(),
                console_socket: console.as_ref().map(|s| s.path().to_path_buf()),
                stdio: side.is_some(),
                seccomp: seccomp.is_some().then(|| seccomp_path.clone()),
            };
            self.run_for(process, op, side, console).await
        }
        .await;
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&seccomp_path);
        result
    }

    /// SignalProcess.
    pub fn signal(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let c = self.get(id)?;
        let process = c.process(exec_id)?;
        let signal = i32::try_from(signal)
            .map_err(|_| AgentError::InvalidArgument(format!("signal {signal} is not valid")))?;
        if all {
            if let Some(dir) = c.cgroup_dir.as_ref().filter(|d| d.exists()) {
                let n = cgroups::signal_all(dir, signal).map_err(|e| {
                    AgentError::io(format!("signalling the processes of {}", dir.display()), e)
                })?;
                tracing::debug!(
                    container_id = id,
                    signal,
                    processes = n,
                    "signalled the container's cgroup"
                );
                return Ok(());
            }
        }
        process.signal(signal)
    }

    /// WaitProcess: the exit, once the process's output is flushed.
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<ExitInfo> {
        let process = self.process(id, exec_id)?;
        Ok(process.wait().await)
    }

    /// CloseStdin.
    pub fn close_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        self.process(id, exec_id)?.stdio.stdin.close();
        Ok(())
    }

    /// TtyWinResize.
    pub fn resize(&self, id: &str, exec_id: &str, rows: u32, columns: u32) -> Result<()> {
        self.process(id, exec_id)?.resize(rows, columns)
    }

    /// RemoveContainer. A created (never started) container is killed. A running one is
    /// FAILED_PRECONDITION unless `timeout` > 0: then it gets `timeout` seconds to exit, and is
    /// killed after that.
    pub async fn remove(&self, id: &str, timeout: u32) -> Result<()> {
        let c = self.get(id)?;
        let _op = c.op.lock().await;
        let phase = c.phase();
        if phase == Phase::Removed {
            return Err(AgentError::ContainerNotFound(id.to_string()));
        }
        if c.init.exit().is_none() {
            if phase == Phase::Running {
                if timeout == 0 {
                    return Err(AgentError::FailedPrecondition(format!(
                        "container {id:?} is running; stop it first or remove it with a timeout"
                    )));
                }
                // A paused container cannot exit by itself.
                if !c.lock().paused {
                    c.init
                        .exited_within(Duration::from_secs(u64::from(timeout)))
                        .await;
                }
            }
            if c.init.exit().is_none() {
                tracing::info!(
                    container_id = id,
                    "killing the container before removing it"
                );
                c.kill_all();
                if !c.init.exited_within(KILL_WAIT).await {
                    return Err(AgentError::DeadlineExceeded(format!(
                        "container {id:?} did not die within {KILL_WAIT:?} of SIGKILL"
                    )));
                }
            }
        }
        // Whatever outlived the init (execs in a shared PID namespace) goes too; libcontainer's
        // delete removes the cgroup.
        if c.cgroup_dir
            .as_ref()
            .is_some_and(|d| cgroups::is_populated(d))
            || c.lock().paused
        {
            c.kill_all();
        }
        // Its last OOM kills are counted before libcontainer removes the cgroup.
        self.oom.unwatch(id);
        match self
            .runtime
            .run(Op::Delete { id: id.to_string() }, &[])
            .await
        {
            Ok(_) | Err(AgentError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        self.forget(&c);
        tracing::info!(container_id = id, "container removed");
        Ok(())
    }

    /// DestroySandbox: kills every container, then removes each. Returns the failures.
    pub async fn remove_all(&self) -> Vec<AgentError> {
        let all: Vec<Arc<Container>> = self.map().values().cloned().collect();
        for c in &all {
            c.kill_all();
        }
        let mut errors = Vec::new();
        for c in all {
            if let Err(e) = self.remove(&c.id, KILL_WAIT.as_secs() as u32).await {
                errors.push(e);
            }
        }
        errors
    }
}

/// Writes `value` as JSON to `path` (a file of the bundle the helper reads).
fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let json = serde_json::to_vec(value)
        .map_err(|e| AgentError::Runtime(format!("encoding {}: {e}", path.display())))?;
    std::fs::write(path, json).map_err(|e| AgentError::io(format!("writing {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ttrpc::Code;

    fn containers() -> Containers {
        let reaper = Reaper::default();
        let runtime = Runtime::new(reaper.clone(), "/nonexistent/libcontainer", "info");
        Containers::new(runtime, reaper, "/nonexistent/containers")
    }

    #[tokio::test]
    async fn unknown_ids_are_not_found() {
        let cs = containers();
        assert_eq!(cs.start("nope").await.unwrap_err().code(), Code::NOT_FOUND);
        assert_eq!(
            cs.remove("nope", 0).await.unwrap_err().code(),
            Code::NOT_FOUND
        );
        assert_eq!(
            cs.wait("nope", "").await.unwrap_err().code(),
            Code::NOT_FOUND
        );
        assert_eq!(
            cs.signal("nope", "", 9, false).unwrap_err().code(),
            Code::NOT_FOUND
        );
        assert_eq!(
            cs.exec("nope", "e", b"{}", StdioWanted::default())
                .await
                .unwrap_err()
                .code(),
            Code::NOT_FOUND
        );
        assert!(cs
            .wait_for_process("nope", "", Duration::from_millis(50))
            .await
            .is_none());
    }

    #[test]
    fn exited_execs_are_pruned_running_ones_kept() {
        let mut execs = HashMap::new();
        for id in ["running", "old", "a", "b", "c"] {
            let (p, _) = Process::new("c", id, StdioWanted::default()).unwrap();
            if id != "running" {
                p.abandon();
            }
            execs.insert(id.to_string(), p);
        }
        let now = std::time::SystemTime::now();
        // Everything exited just now: within retention, only the count bound applies.
        prune_execs(&mut execs, now, Duration::from_secs(600), 10);
        assert_eq!(execs.len(), 5);
        prune_execs(&mut execs, now, Duration::from_secs(600), 2);
        assert_eq!(execs.len(), 3);
        assert!(execs.contains_key("running"));
        // Later than the retention: only the running one stays.
        prune_execs(
            &mut execs,
            now + Duration::from_secs(601),
            Duration::from_secs(600),
            10,
        );
        assert_eq!(execs.keys().collect::<Vec<_>>(), ["running"]);
    }

    #[tokio::test]
    async fn bad_requests_are_invalid_before_anything_is_created() {
        let cs = containers();
        let req = |id: &str, json: &[u8]| CreateRequest {
            id: id.into(),
            init_exec_id: String::new(),
            spec_json: json.to_vec(),
            storages: Vec::new(),
            stdio: StdioWanted::default(),
        };
        let e = cs.create(req("c1", b"{oops")).await.unwrap_err();
        assert_eq!(e.code(), Code::INVALID_ARGUMENT);
        assert!(
            e.to_string().contains("not a valid OCI runtime spec"),
            "{e}"
        );
        let e = cs.create(req("bad/id", b"{}")).await.unwrap_err();
        assert_eq!(e.code(), Code::INVALID_ARGUMENT);
        // Nothing was registered.
        assert!(cs.get("c1").is_err());
    }
}
