//! The pod VM's lifecycle, in one place.
//!
//! [`PodVmCell`] holds the VM's [`Phase`]: no VM yet, booting, ready, stopping, stopped (the
//! next Create boots a new one), or dead with how it exited (it exited on its own; the shim
//! takes no new containers). The phase changes only through the methods of a [`Transition`],
//! each of which checks the phase it starts from and refuses with [`IllegalTransition`]
//! otherwise. [`PodVm`] is the running VM as the task service uses it, booted and torn down
//! here.
//!
//! A transition holds the cell's gate for as long as it takes: a Create arriving during a boot
//! waits for it (and then uses that VM), and a Delete or Shutdown arriving during a teardown
//! (ours, or the one after a crash) waits until it is complete, so the shim never answers the
//! last Delete, or exits, with mounts or processes still being removed. Everything else reads
//! the phase without waiting ([`PodVmCell::live`], [`PodVmCell::is_current`]).

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use isola_agent_proto::agent::CreateSandboxRequest;
use isola_agent_proto::types::Storage;
use isola_config::Config;
use oci_spec::runtime::Spec;
use tokio::sync::watch;

use crate::agent::AgentApi;
use crate::control::VmSize;
use crate::counters::{Counters, CountingAgent};
use crate::error::{Result, ShimError};
use crate::persist::{self, ProcId, SandboxRecord};
use crate::sandbox::{Sandbox, SandboxFactory};
use crate::service::VM_DIED_STATUS;
use crate::translate::GUEST_SHARED_DIR;
use isola_agent_proto::AgentEndpoint;
use isola_sandbox::shim_metrics::{ShimMetrics, VmFigures};

/// The running pod VM: the VM, its agent, its size and its cleanup record.
pub(crate) struct PodVm {
    /// The sandbox id.
    pub id: String,
    pub vm: Arc<dyn Sandbox>,
    pub agent: Arc<dyn AgentApi>,
    /// What the VM has: as booted, then grown by hotplug.
    pub size: Mutex<VmSize>,
    /// The [`SandboxRecord`] `delete` cleans up from after a dead shim.
    pub record: PathBuf,
    /// The agent watchdog's limit and period (`[agent] watchdog_timeout_ms`); None = off.
    pub watchdog: Option<(std::time::Duration, std::time::Duration)>,
    /// The shim's counters for this VM ([`crate::counters`]); `agent` counts into them.
    pub counters: Arc<Counters>,
    /// Where the [`ShimMetrics`] snapshot is written.
    pub metrics: PathBuf,
    /// Set by the teardown: no snapshot is written after it removed the file.
    metrics_closed: Mutex<bool>,
}

impl std::fmt::Debug for PodVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodVm")
            .field("id", &self.id)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// Random bytes handed to every guest at CreateSandbox (clones of a VM template must not share
/// their RNG state; see the agent's reseed.rs).
const GUEST_ENTROPY_BYTES: usize = 64;

impl PodVm {
    /// Boots sandbox `sandbox_id`'s VM from `config` for the pod whose first container has
    /// `spec`, has the agent create the sandbox (the shared directory, the hostname, the pod
    /// network) and records it for cleanup. On failure the VM is stopped again.
    pub async fn boot(
        factory: &dyn SandboxFactory,
        config: &Config,
        sandbox_id: &str,
        spec: &Spec,
    ) -> Result<PodVm> {
        tracing::info!("booting the sandbox VM");
        let vm = factory.boot_pod(config, sandbox_id, spec).await?;
        let counters = Arc::new(Counters::default());
        let agent: Arc<dyn AgentApi> = Arc::new(CountingAgent::new(vm.agent(), counters.clone()));
        let storage = Storage {
            driver: "virtiofs".into(),
            source: isola_sandbox::SHARED_FS_TAG.into(),
            fstype: "virtiofs".into(),
            mount_point: GUEST_SHARED_DIR.into(),
            ..Default::default()
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut entropy = vec![0u8; GUEST_ENTROPY_BYTES];
        if let Err(e) = getrandom::fill(&mut entropy) {
            tracing::warn!(error = %e, "no host randomness for the guest; it keeps its own");
            entropy.clear();
        }
        let req = CreateSandboxRequest {
            sandbox_id: sandbox_id.to_string(),
            hostname: spec.hostname().clone().unwrap_or_default(),
            storages: vec![storage],
            host_time_sec: i64::try_from(now.as_secs()).unwrap_or(0),
            host_time_nsec: now.subsec_nanos(),
            entropy,
            ..Default::default()
        };
        let mut created = agent.create_sandbox(req).await;
        if let (Ok(()), Some(net)) = (&created, vm.network()) {
            created = crate::network::guest::configure(agent.as_ref(), &net).await;
        }
        if let Err(e) = created {
            let _ = vm.stop().await;
            return Err(e);
        }
        let record_path = SandboxRecord::path(&config.runtime.state_dir, sandbox_id);
        let timings = vm.boot_timings();
        let (vsock_socket, vsock_cid) = match vm.agent_endpoint() {
            Some(AgentEndpoint::HybridVsock { path, .. }) => (Some(path), None),
            Some(AgentEndpoint::Vsock { cid, .. }) => (None, Some(cid)),
            None => (None, None),
        };
        let record = SandboxRecord {
            sandbox_id: sandbox_id.to_string(),
            shim: ProcId::current(),
            processes: vm.processes().into_iter().filter_map(ProcId::of).collect(),
            vm_dir: vm.vm_dir(),
            shared_dir: vm.shared_dir(),
            hypervisor: config.hypervisor.kind.to_string(),
            vcpus: config.hypervisor.vcpus,
            memory_mib: config.hypervisor.memory_mib,
            vmm_ready_ms: Some(millis(timings.vmm_ready)),
            agent_ready_ms: Some(millis(timings.agent_ready)),
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            debug_console: config.agent.debug_console,
            vsock_socket,
            vsock_cid,
        };
        if let Err(e) = record.save(&record_path) {
            tracing::warn!(error = %e, "recording the sandbox for cleanup");
        }
        tracing::info!(endpoint = %vm.endpoint(), pid = vm.pid(), "sandbox ready");
        let size = VmSize {
            vcpus: config.hypervisor.vcpus,
            memory_mib: config.hypervisor.memory_mib,
        };
        let mut pod = PodVm::new(sandbox_id, vm, agent, size, record_path, counters);
        pod.watchdog = config
            .agent
            .watchdog_timeout()
            .map(|t| (t, config.agent.watchdog_period()));
        Ok(pod)
    }

    /// A running VM of `size` with its record at `record` (the snapshot goes next to it) and
    /// no watchdog.
    pub fn new(
        id: &str,
        vm: Arc<dyn Sandbox>,
        agent: Arc<dyn AgentApi>,
        size: VmSize,
        record: PathBuf,
        counters: Arc<Counters>,
    ) -> PodVm {
        let metrics = ShimMetrics::path_for_record(&record)
            .unwrap_or_else(|| record.with_extension("metrics.json"));
        PodVm {
            id: id.to_string(),
            vm,
            agent,
            size: Mutex::new(size),
            record,
            watchdog: None,
            counters,
            metrics,
            metrics_closed: Mutex::new(false),
        }
    }

    /// Writes the metrics snapshot as of `now_unix`, unless the teardown removed it already.
    pub fn write_metrics(&self, now_unix: u64) {
        let closed = self.metrics_closed.lock().unwrap();
        if *closed {
            return;
        }
        let mut snapshot = self.counters.snapshot(&self.id, now_unix);
        let size = *self.size.lock().unwrap();
        snapshot.vm = Some(VmFigures {
            vcpus: size.vcpus,
            memory_mib: size.memory_mib,
        });
        if let Err(e) = snapshot.save(&self.metrics) {
            tracing::debug!(error = %e, "writing the metrics snapshot");
        }
    }

    /// Removes the metrics snapshot for good.
    pub fn close_metrics(&self) {
        let mut closed = self.metrics_closed.lock().unwrap();
        *closed = true;
        ShimMetrics::remove(&self.metrics);
    }

    /// Stops the VM and removes what it left on the host, its record and metrics snapshot
    /// included.
    async fn teardown(&self) {
        self.close_metrics();
        if let Err(e) = self.vm.stop().await {
            tracing::warn!(error = %e, "stopping the sandbox");
        }
        persist::remove_file_quietly(&self.record);
    }
}

/// Whole milliseconds of `d`, saturating.
fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Where the pod VM is in its life.
#[derive(Clone)]
pub(crate) enum Phase {
    /// No VM yet: the first Create boots one.
    Empty,
    /// A Create is booting it.
    Booting,
    /// Running, its agent connected and the sandbox created.
    Ready(Arc<PodVm>),
    /// We are stopping it: its exit is expected.
    Stopping,
    /// It exited on its own (`exit` says how): its processes were marked exited and the shim
    /// takes no new containers.
    Dead { exit: String },
    /// Stopped after the last Delete or a Shutdown: the next Create boots a new one.
    Stopped,
}

impl Phase {
    /// The phase's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Empty => "empty",
            Phase::Booting => "booting",
            Phase::Ready(_) => "ready",
            Phase::Stopping => "stopping",
            Phase::Dead { .. } => "dead",
            Phase::Stopped => "stopped",
        }
    }
}

impl std::fmt::Debug for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Phase::Ready(vm) => write!(f, "Ready({})", vm.id),
            Phase::Dead { exit } => write!(f, "Dead({exit})"),
            other => f.write_str(other.name()),
        }
    }
}

/// A phase change the current phase does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the pod VM cannot {action} while it is {phase}")]
pub(crate) struct IllegalTransition {
    /// What was asked ("start booting", ...).
    pub action: &'static str,
    /// The phase it was in.
    pub phase: &'static str,
}

impl From<IllegalTransition> for ShimError {
    fn from(e: IllegalTransition) -> Self {
        ShimError::FailedPrecondition(e.to_string())
    }
}

/// The owner of the pod VM's phase; see the module docs.
pub(crate) struct PodVmCell {
    phase: watch::Sender<Phase>,
    /// Held by the one [`Transition`] in progress.
    gate: tokio::sync::Mutex<()>,
}

impl Default for PodVmCell {
    fn default() -> Self {
        PodVmCell {
            phase: watch::Sender::new(Phase::Empty),
            gate: tokio::sync::Mutex::new(()),
        }
    }
}

impl PodVmCell {
    /// The running VM, if the phase is [`Phase::Ready`].
    pub fn ready(&self) -> Option<Arc<PodVm>> {
        match &*self.phase.borrow() {
            Phase::Ready(vm) => Some(vm.clone()),
            _ => None,
        }
    }

    /// The running VM, for calls on existing processes: FailedPrecondition when there is none.
    pub fn live(&self) -> Result<Arc<PodVm>> {
        self.ready().ok_or_else(|| {
            ShimError::FailedPrecondition(
                "the sandbox VM is not running (it died or was stopped): delete the containers and create the pod again".into(),
            )
        })
    }

    /// Whether `vm` is still the running VM: false once it is stopping, stopped or dead, and
    /// for an earlier VM of the shim. Watchers of a VM stop when this turns false.
    pub fn is_current(&self, vm: &Arc<PodVm>) -> bool {
        matches!(&*self.phase.borrow(), Phase::Ready(v) if Arc::ptr_eq(v, vm))
    }

    /// Waits for the transition in progress, if any, and starts one.
    pub async fn transition(&self) -> Transition<'_> {
        Transition {
            _gate: self.gate.lock().await,
            phase: &self.phase,
        }
    }

    /// The running VM of sandbox `sandbox_id`, or one booted with `boot` when there is none
    /// yet (or it was stopped); true when this call booted it. A VM that died, or that serves
    /// another sandbox, is FailedPrecondition.
    pub async fn get_or_boot<F, Fut>(&self, sandbox_id: &str, boot: F) -> Result<(Arc<PodVm>, bool)>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<PodVm>>,
    {
        let mut t = self.transition().await;
        match t.phase() {
            Phase::Dead { .. } => {
                return Err(ShimError::FailedPrecondition(format!(
                    "the VM of sandbox {sandbox_id} died: delete its containers and create the pod again"
                )))
            }
            Phase::Ready(vm) if vm.id != sandbox_id => {
                return Err(ShimError::FailedPrecondition(format!(
                    "this shim serves sandbox {}, not {sandbox_id}: the container was routed to the wrong shim",
                    vm.id
                )))
            }
            Phase::Ready(vm) => return Ok((vm, false)),
            _ => {}
        }
        t.begin_boot()?;
        match boot().await {
            Ok(vm) => {
                let vm = Arc::new(vm);
                t.booted(vm.clone())?;
                Ok((vm, true))
            }
            Err(e) => {
                t.boot_failed()?;
                Err(e)
            }
        }
    }

    /// Stops the running VM and removes everything it left on the host; returns once that is
    /// done, also when another stop (or the teardown after a crash) was in progress. Nothing to
    /// do without a running VM.
    pub async fn stop(&self) {
        let mut t = self.transition().await;
        let Ok(vm) = t.begin_stop() else { return };
        tracing::info!("stopping the sandbox VM");
        vm.teardown().await;
        if let Err(e) = t.stopped() {
            tracing::error!(error = %e, "after stopping the sandbox VM");
        }
    }

    /// `vm` exited, as `exit` says. Unless that was expected (we stopped it, or it is no longer
    /// the running VM), it is dead: `crashed` runs (the task service marks every process
    /// exited) and the VM is torn down, both before a waiting Delete or Shutdown goes on.
    /// Returns whether it was a crash.
    pub async fn exited(&self, vm: &Arc<PodVm>, exit: String, crashed: impl FnOnce()) -> bool {
        let mut t = self.transition().await;
        if t.died(vm, exit.clone()).is_err() {
            return false;
        }
        tracing::error!(exit = %exit, "the sandbox VM exited unexpectedly: every process is marked exited with status {VM_DIED_STATUS}");
        crashed();
        vm.teardown().await;
        true
    }
}

/// The one phase change in progress: holds the cell's gate. Dropped half-way through a boot
/// or a stop (its future abandoned), it leaves no VM: booting becomes empty, stopping stopped.
pub(crate) struct Transition<'a> {
    _gate: tokio::sync::MutexGuard<'a, ()>,
    phase: &'a watch::Sender<Phase>,
}

impl Transition<'_> {
    /// The phase this transition starts from (or has reached).
    pub fn phase(&self) -> Phase {
        self.phase.borrow().clone()
    }

    fn refuse(&self, action: &'static str) -> IllegalTransition {
        IllegalTransition {
            action,
            phase: self.phase.borrow().name(),
        }
    }

    /// Empty or stopped → booting.
    pub fn begin_boot(&mut self) -> Result<(), IllegalTransition> {
        if !matches!(&*self.phase.borrow(), Phase::Empty | Phase::Stopped) {
            return Err(self.refuse("start booting"));
        }
        self.phase.send_replace(Phase::Booting);
        Ok(())
    }

    /// Booting → ready with `vm`.
    pub fn booted(&mut self, vm: Arc<PodVm>) -> Result<(), IllegalTransition> {
        if !matches!(&*self.phase.borrow(), Phase::Booting) {
            return Err(self.refuse("become ready"));
        }
        self.phase.send_replace(Phase::Ready(vm));
        Ok(())
    }

    /// Booting → empty: the boot failed and left nothing behind.
    pub fn boot_failed(&mut self) -> Result<(), IllegalTransition> {
        if !matches!(&*self.phase.borrow(), Phase::Booting) {
            return Err(self.refuse("fail a boot"));
        }
        self.phase.send_replace(Phase::Empty);
        Ok(())
    }

    /// Ready → stopping; returns the VM to tear down.
    pub fn begin_stop(&mut self) -> Result<Arc<PodVm>, IllegalTransition> {
        let running = match &*self.phase.borrow() {
            Phase::Ready(vm) => Some(vm.clone()),
            _ => None,
        };
        let vm = running.ok_or_else(|| self.refuse("start stopping"))?;
        self.phase.send_replace(Phase::Stopping);
        Ok(vm)
    }

    /// Stopping → stopped: the teardown is complete.
    pub fn stopped(&mut self) -> Result<(), IllegalTransition> {
        if !matches!(&*self.phase.borrow(), Phase::Stopping) {
            return Err(self.refuse("finish stopping"));
        }
        self.phase.send_replace(Phase::Stopped);
        Ok(())
    }

    /// Ready with `vm` → dead: it exited on its own. Refused when `vm` is not the running VM
    /// (we stopped it, or it is an earlier one): its exit was expected.
    pub fn died(&mut self, vm: &Arc<PodVm>, exit: String) -> Result<(), IllegalTransition> {
        if !matches!(&*self.phase.borrow(), Phase::Ready(v) if Arc::ptr_eq(v, vm)) {
            return Err(self.refuse("die (this VM is not the running one)"));
        }
        self.phase.send_replace(Phase::Dead { exit });
        Ok(())
    }
}

impl Drop for Transition<'_> {
    fn drop(&mut self) {
        self.phase.send_if_modified(|p| {
            let after = match p {
                Phase::Booting => Phase::Empty,
                Phase::Stopping => Phase::Stopped,
                _ => return false,
            };
            *p = after;
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ttrpc::Code;

    use super::*;
    use crate::fake::FakeSandbox;

    fn pod_vm(id: &str, dir: &std::path::Path) -> (Arc<PodVm>, Arc<FakeSandbox>) {
        let fake = FakeSandbox::new(dir);
        let vm = PodVm::new(
            id,
            fake.clone(),
            fake.agent.clone(),
            VmSize {
                vcpus: 1,
                memory_mib: 512,
            },
            dir.join(format!("{id}.json")),
            Arc::default(),
        );
        (Arc::new(vm), fake)
    }

    fn phase(cell: &PodVmCell) -> &'static str {
        cell.phase.borrow().name()
    }

    fn refused(action: &'static str, phase: &'static str) -> IllegalTransition {
        IllegalTransition { action, phase }
    }

    #[tokio::test]
    async fn transitions_check_the_phase_they_start_from() {
        let tmp = tempfile::tempdir().unwrap();
        let (vm, _) = pod_vm("pod", tmp.path());
        let (other, _) = pod_vm("pod", tmp.path());
        let cell = PodVmCell::default();
        let mut t = cell.transition().await;
        assert_eq!(t.phase().name(), "empty");
        assert_eq!(t.booted(vm.clone()), Err(refused("become ready", "empty")));
        assert_eq!(t.boot_failed(), Err(refused("fail a boot", "empty")));
        assert_eq!(
            t.begin_stop().map(|_| ()),
            Err(refused("start stopping", "empty"))
        );
        assert_eq!(t.stopped(), Err(refused("finish stopping", "empty")));
        assert!(t.died(&vm, "x".into()).is_err());

        t.begin_boot().unwrap();
        assert_eq!(t.begin_boot(), Err(refused("start booting", "booting")));
        t.booted(vm.clone()).unwrap();
        assert!(cell.is_current(&vm) && !cell.is_current(&other));
        assert_eq!(t.begin_boot(), Err(refused("start booting", "ready")));
        assert_eq!(
            t.died(&other, "x".into()),
            Err(refused("die (this VM is not the running one)", "ready"))
        );

        assert!(Arc::ptr_eq(&t.begin_stop().unwrap(), &vm));
        assert_eq!(phase(&cell), "stopping");
        assert!(!cell.is_current(&vm), "a stopping VM's exit is expected");
        assert!(t.died(&vm, "x".into()).is_err());
        t.stopped().unwrap();
        assert_eq!(phase(&cell), "stopped");

        // A stopped VM is followed by a new one; a dead one by none.
        t.begin_boot().unwrap();
        t.booted(other.clone()).unwrap();
        assert!(t.died(&vm, "x".into()).is_err(), "an earlier VM");
        t.died(&other, "killed by signal 9".into()).unwrap();
        assert!(
            matches!(cell.phase.borrow().clone(), Phase::Dead { exit } if exit == "killed by signal 9")
        );
        assert_eq!(t.begin_boot(), Err(refused("start booting", "dead")));
        assert!(t.begin_stop().is_err());
        assert!(cell.ready().is_none());
    }

    #[tokio::test]
    async fn an_abandoned_transition_leaves_no_vm() {
        let tmp = tempfile::tempdir().unwrap();
        let (vm, _) = pod_vm("pod", tmp.path());
        let cell = PodVmCell::default();
        cell.transition().await.begin_boot().unwrap();
        assert_eq!(phase(&cell), "empty");
        let mut t = cell.transition().await;
        t.begin_boot().unwrap();
        t.booted(vm).unwrap();
        t.begin_stop().unwrap();
        drop(t);
        assert_eq!(phase(&cell), "stopped");
    }

    #[tokio::test]
    async fn a_create_during_a_boot_waits_for_it_and_uses_that_vm() {
        let tmp = tempfile::tempdir().unwrap();
        let (vm, _) = pod_vm("pod", tmp.path());
        let vm = Arc::into_inner(vm).unwrap();
        let cell = Arc::new(PodVmCell::default());
        let go = Arc::new(tokio::sync::Notify::new());
        let first = tokio::spawn({
            let (cell, go) = (cell.clone(), go.clone());
            async move {
                let boot = || async move {
                    go.notified().await;
                    Ok(vm)
                };
                cell.get_or_boot("pod", boot)
                    .await
                    .map(|(v, b)| (v.id.clone(), b))
            }
        });
        while phase(&cell) != "booting" {
            tokio::task::yield_now().await;
        }
        let second = tokio::spawn({
            let cell = cell.clone();
            async move {
                let boot = || async { panic!("the second Create boots no VM") };
                cell.get_or_boot("pod", boot)
                    .await
                    .map(|(v, b)| (v.id.clone(), b))
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!second.is_finished(), "waits for the boot");
        go.notify_one();
        assert_eq!(first.await.unwrap().unwrap(), ("pod".to_string(), true));
        assert_eq!(second.await.unwrap().unwrap(), ("pod".to_string(), false));

        let other = cell
            .get_or_boot("other", || async { panic!("no boot") })
            .await
            .unwrap_err();
        assert_eq!(other.code(), Code::FAILED_PRECONDITION);
        assert!(
            other.to_string().contains("serves sandbox pod, not other"),
            "{other}"
        );
    }

    #[tokio::test]
    async fn a_failed_boot_leaves_the_cell_empty_for_the_next_create() {
        let tmp = tempfile::tempdir().unwrap();
        let cell = PodVmCell::default();
        let err = cell
            .get_or_boot("pod", || async {
                Err(ShimError::InvalidArgument("no kernel".into()))
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::INVALID_ARGUMENT, "the boot's own error");
        assert_eq!(phase(&cell), "empty");
        let (vm, _) = pod_vm("pod", tmp.path());
        let vm = Arc::into_inner(vm).unwrap();
        let (_, booted) = cell.get_or_boot("pod", || async { Ok(vm) }).await.unwrap();
        assert!(booted);
    }

    #[tokio::test]
    async fn a_crash_is_torn_down_and_refuses_new_containers() {
        let tmp = tempfile::tempdir().unwrap();
        let (vm, fake) = pod_vm("pod", tmp.path());
        let cell = PodVmCell::default();
        let booted = Arc::into_inner(vm).unwrap();
        let (vm, _) = cell
            .get_or_boot("pod", || async { Ok(booted) })
            .await
            .unwrap();
        let mut crashed = 0;
        assert!(
            cell.exited(&vm, "killed by signal 9".into(), || crashed += 1)
                .await
        );
        assert_eq!(crashed, 1);
        assert!(fake.stopped(), "torn down");
        assert_eq!(phase(&cell), "dead");
        let err = cell.live().unwrap_err();
        assert_eq!(err.code(), Code::FAILED_PRECONDITION);
        let err = cell
            .get_or_boot("pod", || async { panic!("no boot after a crash") })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FAILED_PRECONDITION);
        assert!(
            err.to_string()
                .contains("the VM of sandbox pod died: delete its containers"),
            "{err}"
        );
        cell.stop().await;
        assert_eq!(phase(&cell), "dead", "stays dead: nothing more to stop");
        assert_eq!(fake.stops.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_exit_we_caused_is_expected_and_a_new_vm_can_follow() {
        let tmp = tempfile::tempdir().unwrap();
        let (vm, fake) = pod_vm("pod", tmp.path());
        let cell = PodVmCell::default();
        let booted = Arc::into_inner(vm).unwrap();
        let (vm, _) = cell
            .get_or_boot("pod", || async { Ok(booted) })
            .await
            .unwrap();
        cell.stop().await;
        assert!(fake.stopped());
        assert_eq!(phase(&cell), "stopped");
        assert!(
            !cell
                .exited(&vm, "stopped".into(), || panic!("not a crash"))
                .await
        );
        assert_eq!(phase(&cell), "stopped");

        let (next, _) = pod_vm("pod", tmp.path());
        let next = Arc::into_inner(next).unwrap();
        let (next, booted) = cell
            .get_or_boot("pod", || async { Ok(next) })
            .await
            .unwrap();
        assert!(booted && cell.is_current(&next) && !cell.is_current(&vm));
        // The first VM's watcher, late: the second VM lives on.
        assert!(
            !cell
                .exited(&vm, "stopped".into(), || panic!("not a crash"))
                .await
        );
        assert!(cell.is_current(&next));
    }

    #[tokio::test]
    async fn stop_waits_for_the_transition_in_progress() {
        let tmp = tempfile::tempdir().unwrap();
        let (vm, fake) = pod_vm("pod", tmp.path());
        let cell = Arc::new(PodVmCell::default());
        let mut t = cell.transition().await;
        t.begin_boot().unwrap();
        t.booted(vm.clone()).unwrap();
        let stop = tokio::spawn({
            let cell = cell.clone();
            async move { cell.stop().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!stop.is_finished() && !fake.stopped());
        drop(t);
        stop.await.unwrap();
        assert!(fake.stopped());
        assert_eq!(phase(&cell), "stopped");
    }
}
