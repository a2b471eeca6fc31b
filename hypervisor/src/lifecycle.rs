//! The lifecycle every backend shares: one VM is started once, runs, and is stopped (also
//! after its VMM died), never restarted. [`Core`] owns the phase, the exit, the pids and the
//! teardown order; a backend only says how to launch its VMM and how to ask it to quit
//! ([`Launcher`]).
//!
//! Phases: `New` → (start) → `Running` → (stop) → `Stopped`. A failed start tears down what
//! it spawned and ends in `Stopped`; a start future dropped midway (cancelled) leaves
//! `Stopped { leftover_dir }` so the next stop removes the state directory. The VMM's exit is
//! published on an [`ExitWatch`] whatever the phase.
//!
//! While the VM runs, a supervisor task watches every helper daemon: none of them can be
//! restarted under a running guest (virtiofsd holds the FUSE session's inode and file handle
//! state, the vsock daemon the guest's connections, and QEMU 7.2 cannot reconnect a vhost-user
//! frontend to a new backend), so the death of one ends the VM — the VMM is SIGKILLed and the
//! VM's exit is handled as a crash by its owner.

use std::path::{Path, PathBuf};
use std::sync::{Mutex as StdMutex, MutexGuard as StdMutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::Mutex;

use crate::daemons::Daemon;
use crate::vmm::{self, ExitState, ExitWatch, KillHandle, VmmProcess};
use crate::{Accelerator, HypervisorError, VmExit};

/// How long a graceful quit (request plus VMM exit) may take before SIGKILL.
pub(crate) const QUIT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a SIGKILLed VMM may take to be reaped.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a helper daemon gets after SIGTERM before SIGKILL.
const DAEMON_GRACE: Duration = Duration::from_secs(1);

/// Everything a started VM owns; a backend's launch fills it as it goes, so whatever was
/// spawned before a failure is torn down.
#[derive(Default)]
pub(crate) struct Running {
    /// The VMM, once spawned.
    pub vmm: Option<VmmProcess>,
    /// Helper daemons (virtiofsd, vhost-device-vsock).
    pub daemons: Vec<Daemon>,
    /// Background tasks tied to the VMM (event readers), aborted at teardown.
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

enum Phase {
    New,
    Running(Running),
    /// `leftover_dir`: a cancelled `start()` may have left the state directory behind.
    Stopped {
        leftover_dir: bool,
    },
}

/// Facts readable without async locks, for the synchronous trait methods.
#[derive(Default)]
struct Info {
    started: bool,
    accelerator: Option<(Accelerator, String)>,
    template: Option<String>,
    vmm_pid: Option<u32>,
    daemon_pids: Vec<u32>,
}

/// What a backend adds to [`Core`].
#[async_trait]
pub(crate) trait Launcher: Send + Sync {
    /// Validates, creates the state directory, starts daemons and the VMM, and brings the VM
    /// up, pushing what it spawned into `run` as it goes (recording pids with
    /// [`Core::add_daemon_pid`] / [`Core::set_vmm_pid`]). On error the core tears `run` down.
    async fn launch(&self, core: &Core, run: &mut Running) -> Result<(), HypervisorError>;

    /// Asks the running VMM to quit (QMP `quit`, `vmm.shutdown`); the core waits for the exit
    /// within [`QUIT_TIMEOUT`] and SIGKILLs after it. False when it could not even ask (no
    /// control channel): the core kills at once.
    async fn request_quit(&self) -> bool;

    /// The VMM's stderr log, quoted when it had died abnormally.
    fn vmm_log(&self) -> &Path;
}

/// The shared lifecycle of one VM.
pub(crate) struct Core {
    id: String,
    state_dir: PathBuf,
    /// Serializes start and stop.
    phase: Mutex<Phase>,
    exit: ExitWatch,
    info: StdMutex<Info>,
    /// Kills the running VMM (set once started).
    kill: StdMutex<Option<KillHandle>>,
}

/// How long, after a daemon's exit, the supervisor waits to learn how the VMM ended (for the
/// log line only: the VM is ended at once).
const VMM_EXIT_GRACE: Duration = Duration::from_millis(500);

/// Watches the helper daemons of a running VM: the first one to exit ends the VM at once. A VM
/// powering off closes the daemons' sockets and they may be seen to exit before the VMM: when
/// the VMM then turns out to have exited by itself (not by our kill), the daemon only followed
/// it and that is no error.
async fn supervise(
    id: String,
    daemons: Vec<(
        &'static str,
        u32,
        tokio::sync::watch::Receiver<Option<VmExit>>,
    )>,
    mut vmm_exit: tokio::sync::watch::Receiver<Option<VmExit>>,
    kill: KillHandle,
) -> bool {
    if daemons.is_empty() {
        return false;
    }
    let waits = daemons.into_iter().map(|(name, pid, mut rx)| {
        Box::pin(async move {
            let exit = rx.wait_for(Option::is_some).await.ok().and_then(|e| *e);
            (name, pid, exit)
        })
    });
    let ((name, pid, exit), _, _) = futures::future::select_all(waits).await;
    let exit = exit.map_or_else(|| "unknown exit".to_owned(), |e| e.to_string());
    kill.kill();
    let vmm = tokio::time::timeout(VMM_EXIT_GRACE, vmm_exit.wait_for(Option::is_some))
        .await
        .ok()
        .and_then(|r| r.ok().and_then(|e| *e));
    if followed_the_vmm(vmm) {
        tracing::debug!(sandbox = %id, daemon = name, pid, %exit, "a helper daemon exited after the VMM");
        return false;
    }
    tracing::error!(sandbox = %id, daemon = name, pid, %exit, "a helper daemon of the VM exited: the VM cannot work without it and is ended");
    true
}

/// Whether the VMM's exit (if it showed) was its own, not a signal's (our kill is SIGKILL).
fn followed_the_vmm(vmm: Option<VmExit>) -> bool {
    vmm.is_some_and(|e| e.signal.is_none())
}

/// Keeps the bookkeeping straight when a `start()` future is dropped midway: its local
/// [`Running`] is dropped with it, which kills whatever was spawned (kill-on-drop), so the VM
/// is marked as gone and the next `stop()` removes the state directory.
struct CancelGuard<'a> {
    core: &'a Core,
    armed: bool,
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut info = self.core.info();
            info.vmm_pid = None;
            info.daemon_pids.clear();
            drop(info);
            self.core.exit.set(ExitState::Lost);
        }
    }
}

impl Core {
    /// The lifecycle of VM `id` whose state directory is `state_dir`.
    pub fn new(id: &str, state_dir: &Path) -> Self {
        Self {
            id: id.to_owned(),
            state_dir: state_dir.to_owned(),
            phase: Mutex::new(Phase::New),
            exit: ExitWatch::default(),
            info: StdMutex::new(Info::default()),
            kill: StdMutex::new(None),
        }
    }

    fn info(&self) -> StdMutexGuard<'_, Info> {
        // A poisoned lock only means another thread panicked mid-update of plain data.
        self.info.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the accelerator chosen by a launch.
    pub fn set_accelerator(&self, accelerator: (Accelerator, String)) {
        self.info().accelerator = Some(accelerator);
    }

    /// Records a started helper daemon's pid.
    pub fn add_daemon_pid(&self, pid: u32) {
        self.info().daemon_pids.push(pid);
    }

    /// Forgets the daemons' pids (their launch attempt was abandoned and they were stopped).
    pub fn forget_daemons(&self) {
        self.info().daemon_pids.clear();
    }

    /// Records the VMM's pid once its control channel answers.
    pub fn set_vmm_pid(&self, pid: u32) {
        self.info().vmm_pid = Some(pid);
    }

    /// Ok when the VM runs; [`HypervisorError::NotStarted`] before `start`,
    /// [`HypervisorError::NotRunning`] once its VMM exited or it was stopped.
    pub fn ensure_running(&self) -> Result<(), HypervisorError> {
        match self.exit.state() {
            ExitState::Pending if self.info().started => Ok(()),
            ExitState::Pending => Err(HypervisorError::NotStarted(self.id.clone())),
            _ => Err(HypervisorError::NotRunning(self.id.clone())),
        }
    }

    /// Starts the VM with `launcher` (once).
    pub async fn start(&self, launcher: &impl Launcher) -> Result<(), HypervisorError> {
        let mut phase = self.phase.lock().await;
        if !matches!(*phase, Phase::New) {
            return Err(HypervisorError::AlreadyStarted(self.id.clone()));
        }
        self.info().started = true;
        // Until start() completes, a cancellation leaves a stopped VM with a directory to remove.
        *phase = Phase::Stopped { leftover_dir: true };
        let mut guard = CancelGuard {
            core: self,
            armed: true,
        };
        let t0 = Instant::now();
        let mut run = Running::default();
        let res = launcher.launch(self, &mut run).await;
        guard.armed = false;
        match res {
            Ok(()) => {
                if let Some(vmm) = &run.vmm {
                    self.exit.follow(vmm);
                    let watched = run
                        .daemons
                        .iter()
                        .map(|d| (d.name(), d.pid(), d.exit_receiver()))
                        .collect();
                    let supervisor = supervise(
                        self.id.clone(),
                        watched,
                        vmm.exit_receiver(),
                        vmm.kill_handle(),
                    );
                    run.tasks.push(tokio::spawn(async move {
                        supervisor.await;
                    }));
                    *self.kill.lock().unwrap_or_else(|e| e.into_inner()) = Some(vmm.kill_handle());
                }
                *phase = Phase::Running(run);
                tracing::info!(sandbox = %self.id, elapsed_ms = t0.elapsed().as_millis(), "VM started");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(sandbox = %self.id, error = %e, "VM start failed; cleaning up");
                let exit = run.vmm.as_ref().and_then(VmmProcess::exited);
                if let Err(te) = self.teardown(launcher, run, false).await {
                    tracing::warn!(sandbox = %self.id, error = %te, "cleanup after failed start");
                }
                self.info().vmm_pid = None;
                self.exit
                    .set(exit.map_or(ExitState::Lost, ExitState::Exited));
                *phase = Phase::Stopped {
                    leftover_dir: false,
                };
                Err(e)
            }
        }
    }

    /// Stops the VM: graceful quit, then SIGKILL; daemons; state directory. Idempotent.
    pub async fn stop(&self, launcher: &impl Launcher) -> Result<(), HypervisorError> {
        let mut phase = self.phase.lock().await;
        let stopped = Phase::Stopped {
            leftover_dir: false,
        };
        let run = match std::mem::replace(&mut *phase, stopped) {
            Phase::Running(run) => run,
            Phase::Stopped { leftover_dir: true } => {
                return vmm::remove_state_dir(&self.state_dir).await
            }
            Phase::New | Phase::Stopped { .. } => return Ok(()),
        };
        let t0 = Instant::now();
        let res = self.teardown(launcher, run, true).await;
        self.info().vmm_pid = None;
        tracing::info!(
            sandbox = %self.id,
            elapsed_ms = t0.elapsed().as_millis(),
            ok = res.is_ok(),
            "VM stopped"
        );
        res
    }

    /// Tears down whatever `run` holds: the VMM (asked to quit first if `graceful` and it still
    /// runs), its tasks, the daemons, the state directory. Every step runs; the first error is
    /// returned. A VMM that had died abnormally gets its stderr logged.
    async fn teardown(
        &self,
        launcher: &impl Launcher,
        mut run: Running,
        graceful: bool,
    ) -> Result<(), HypervisorError> {
        let mut first_err: Option<HypervisorError> = None;
        // First the supervisor and event readers: the daemons exit with the VMM on purpose now.
        for task in run.tasks.drain(..) {
            task.abort();
        }
        if let Some(mut vmm) = run.vmm.take() {
            let mut exit = vmm.exited();
            if let Some(e) = exit.filter(|e| graceful && e.code != Some(0)) {
                // It died on its own: keep its last words before the state dir goes away.
                let stderr_tail = crate::process::tail_file(launcher.vmm_log()).await;
                tracing::warn!(sandbox = %self.id, vmm = vmm.name(), exit = %e, %stderr_tail, "the VMM had exited abnormally");
            }
            if exit.is_none() && graceful {
                let quit = async {
                    if launcher.request_quit().await {
                        vmm.wait_exit(QUIT_TIMEOUT).await
                    } else {
                        None
                    }
                };
                exit = tokio::time::timeout(QUIT_TIMEOUT, quit)
                    .await
                    .ok()
                    .flatten();
            }
            if exit.is_none() {
                tracing::info!(sandbox = %self.id, vmm = vmm.name(), pid = vmm.pid(), "killing the VMM");
                if let Err(e) = vmm.kill(KILL_TIMEOUT).await {
                    first_err.get_or_insert(e);
                }
            }
        }
        let stops = run.daemons.into_iter().map(|d| d.stop(DAEMON_GRACE));
        for res in futures::future::join_all(stops).await {
            if let Err(e) = res {
                first_err.get_or_insert(e.into());
            }
        }
        self.info().daemon_pids.clear();
        if let Err(e) = vmm::remove_state_dir(&self.state_dir).await {
            first_err.get_or_insert(e);
        }
        first_err.map_or(Ok(()), Err)
    }

    /// SIGKILLs the running VMM at once; the VM then ends like a crash.
    pub fn kill(&self) -> Result<(), HypervisorError> {
        self.ensure_running()?;
        if let Some(k) = self.kill.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            tracing::warn!(sandbox = %self.id, "killing the VMM of a VM declared dead");
            k.kill();
        }
        Ok(())
    }

    /// The VMM's exit; [`HypervisorError::NotStarted`] before `start`.
    pub async fn wait(&self) -> Result<VmExit, HypervisorError> {
        if !self.info().started {
            return Err(HypervisorError::NotStarted(self.id.clone()));
        }
        self.exit.wait(&self.id).await
    }

    /// The VMM's pid (first, while it runs) and the daemons'.
    pub fn pids(&self) -> Vec<u32> {
        let exited = !self.exit.pending();
        let info = self.info();
        let vmm = info.vmm_pid.filter(|_| !exited);
        vmm.into_iter()
            .chain(info.daemon_pids.iter().copied())
            .collect()
    }

    /// The accelerator chosen by `start`.
    pub fn accelerator(&self) -> Option<(Accelerator, String)> {
        self.info().accelerator.clone()
    }

    /// Records the key of the VM template a launch restored the VM from.
    pub fn set_template(&self, key: String) {
        self.info().template = Some(key);
    }

    /// The key of the VM template the VM was restored from; None when it booted.
    pub fn template(&self) -> Option<String> {
        self.info().template.clone()
    }
}

/// What every backend must do before `start` (shared by the backends' unit tests).
#[cfg(test)]
pub(crate) async fn assert_unstarted_contract(
    vm: &dyn crate::Hypervisor,
    endpoint: crate::AgentEndpoint,
) {
    let not_started = |r: Result<(), HypervisorError>| {
        assert!(matches!(r, Err(HypervisorError::NotStarted(_))), "{r:?}");
    };
    not_started(vm.wait().await.map(drop));
    not_started(vm.pause().await);
    not_started(vm.resume().await);
    not_started(vm.kill().await);
    not_started(vm.hotplug_vcpus(2).await.map(drop));
    not_started(vm.hotplug_memory(1024).await.map(drop));
    assert!(vm.pids().is_empty());
    assert!(vm.accelerator().is_none());
    assert_eq!(vm.agent_endpoint(), endpoint);
    // stop() before start() is a no-op, and idempotent.
    vm.stop().await.unwrap();
    vm.stop().await.unwrap();
}

#[cfg(test)]
mod supervise_tests {
    use super::*;
    use tokio::sync::watch;

    fn exit(code: Option<i32>, signal: Option<i32>) -> Option<VmExit> {
        Some(VmExit { code, signal })
    }

    /// Runs the supervisor over one daemon that exits, then the VMM exiting with `vmm` after
    /// `after`; returns whether it reported a failure, once it has seen the kill go out.
    async fn run(vmm: Option<VmExit>, after: Duration) -> bool {
        let (daemon_tx, daemon_rx) = watch::channel(None);
        let (vmm_tx, vmm_rx) = watch::channel(None);
        let (kill, killed) = KillHandle::for_test();
        let task = tokio::spawn(supervise(
            "sb".into(),
            vec![("virtiofsd", 7, daemon_rx)],
            vmm_rx,
            kill,
        ));
        daemon_tx.send(exit(Some(1), None)).unwrap();
        tokio::time::timeout(Duration::from_secs(5), killed.notified())
            .await
            .expect("the VM is killed at once, whatever happened");
        tokio::time::sleep(after).await;
        if vmm.is_some() {
            vmm_tx.send(vmm).unwrap();
        }
        task.await.unwrap()
    }

    #[tokio::test]
    async fn a_daemon_dying_under_a_running_vmm_is_a_failure() {
        // The VMM ends by our kill (SIGKILL), or its end never shows.
        assert!(run(exit(None, Some(9)), Duration::ZERO).await);
        assert!(run(None, Duration::ZERO).await);
    }

    #[tokio::test]
    async fn a_daemon_following_the_vmm_out_is_no_failure() {
        // The guest powered off: QEMU exits 0, seen a little after the daemon's exit.
        assert!(!run(exit(Some(0), None), VMM_EXIT_GRACE / 5).await);
    }
}
