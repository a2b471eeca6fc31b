//! The pod VM as the task service sees it: [`SandboxFactory`] boots one and returns a
//! [`Sandbox`]. [`VmFactory`] does it for real with `isola_sandbox::BootedVm`; the unit tests
//! use a fake.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use isola_config::{Config, SharedFs};
use isola_sandbox::{BootedVm, SandboxPaths};
use tokio::sync::OnceCell;

use crate::agent::{AgentApi, TtrpcAgent};
use crate::error::{Result, ShimError};
use crate::mounts::{HostBind, RootfsMount, SharedDir};

/// A booted pod VM with a connected agent, and its host side (shared directory).
#[async_trait]
pub trait Sandbox: Send + Sync {
    /// The agent in the VM.
    fn agent(&self) -> Arc<dyn AgentApi>;
    /// The pid containerd is given for tasks: the VMM's.
    fn pid(&self) -> u32;
    /// The VMM and helper daemons, recorded so `delete` can clean up after a dead shim.
    fn processes(&self) -> Vec<u32>;
    /// Where the agent is reached, for messages.
    fn endpoint(&self) -> String;
    /// The hypervisor's per-VM directory.
    fn vm_dir(&self) -> PathBuf;
    /// The host directory shared with the guest.
    fn shared_dir(&self) -> PathBuf;
    /// Resolves when the VM has exited (for whatever reason), describing how.
    async fn wait(&self) -> String;
    /// Exposes a container's rootfs and binds to the guest (see [`crate::mounts`]).
    async fn share_container(
        &self,
        cid: &str,
        rootfs: Vec<RootfsMount>,
        bundle_rootfs: PathBuf,
        binds: Vec<HostBind>,
    ) -> Result<()>;
    /// Undoes [`share_container`](Self::share_container).
    async fn unshare_container(&self, cid: &str) -> Result<()>;
    /// Stops the VM and removes what it left on the host: helper daemons, sockets, mounts,
    /// directories. Idempotent; also right after the VM died on its own.
    async fn stop(&self) -> Result<()>;
    /// Grows the VM to `total` vCPUs; returns the resulting count.
    /// [`ShimError::Unimplemented`] when the hypervisor cannot (yet).
    async fn hotplug_vcpus(&self, total: u32) -> Result<u32>;
    /// Grows the VM's memory to `total_mib`; returns the resulting size in MiB.
    /// [`ShimError::Unimplemented`] when the hypervisor cannot (yet).
    async fn hotplug_memory(&self, total_mib: u32) -> Result<u32>;
}

/// A hypervisor error from hotplug: Unsupported becomes [`ShimError::Unimplemented`] (the
/// caller decides what that means), anything else is internal.
fn hotplug_error(what: &str, e: isola_hypervisor::HypervisorError) -> ShimError {
    match e {
        isola_hypervisor::HypervisorError::Unsupported(msg) => {
            ShimError::Unimplemented(format!("{what}: {msg}"))
        }
        other => ShimError::Internal(format!("{what}: {other}")),
    }
}

/// Boots sandboxes.
#[async_trait]
pub trait SandboxFactory: Send + Sync {
    /// Boots sandbox `sandbox_id`'s VM from `config`. On failure nothing is left behind.
    async fn boot(&self, config: &Config, sandbox_id: &str) -> Result<Arc<dyn Sandbox>>;
}

/// Boots real VMs with [`BootedVm::boot`].
pub struct VmFactory;

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ShimError::Internal(format!("a blocking task failed: {e}")))?
}

#[async_trait]
impl SandboxFactory for VmFactory {
    async fn boot(&self, config: &Config, sandbox_id: &str) -> Result<Arc<dyn Sandbox>> {
        if config.hypervisor.shared_fs == SharedFs::None {
            return Err(ShimError::FailedPrecondition(
                "hypervisor.shared_fs = \"none\": containers reach the guest through virtio-fs; \
                 set shared_fs = \"virtio-fs\" in the isola configuration"
                    .into(),
            ));
        }
        let paths = SandboxPaths::new(&config.runtime.state_dir, sandbox_id);
        let shared = SharedDir::new(&paths.shared_dir);
        // Before virtiofsd starts: see the propagation note in `mounts`.
        let s = shared.clone();
        blocking(move || s.prepare()).await?;
        let vm = match BootedVm::boot(config, sandbox_id).await {
            Ok(vm) => vm,
            Err(e) => {
                let s = shared.clone();
                if let Err(te) = blocking(move || s.teardown()).await {
                    tracing::warn!(error = %te, "removing the shared directory of a VM that failed to boot");
                }
                return Err(e.into());
            }
        };
        let endpoint = vm.vm.agent_endpoint();
        let agent = Arc::new(TtrpcAgent::new(vm.agent.agent.clone(), endpoint.clone()));
        Ok(Arc::new(VmSandbox {
            vm,
            agent,
            endpoint: format!("{endpoint:?}"),
            shared,
            stopped: OnceCell::new(),
        }))
    }
}

/// A real pod VM.
pub struct VmSandbox {
    vm: BootedVm,
    agent: Arc<TtrpcAgent>,
    endpoint: String,
    shared: SharedDir,
    stopped: OnceCell<()>,
}

#[async_trait]
impl Sandbox for VmSandbox {
    fn agent(&self) -> Arc<dyn AgentApi> {
        self.agent.clone()
    }

    fn pid(&self) -> u32 {
        self.vm.vm.pids().first().copied().unwrap_or(0)
    }

    fn processes(&self) -> Vec<u32> {
        self.vm.vm.pids()
    }

    fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    fn vm_dir(&self) -> PathBuf {
        self.vm.paths.vm_dir.clone()
    }

    fn shared_dir(&self) -> PathBuf {
        self.shared.root().to_path_buf()
    }

    async fn wait(&self) -> String {
        match self.vm.vm.wait().await {
            Ok(exit) => exit.to_string(),
            Err(e) => format!("waiting for the VMM failed: {e}"),
        }
    }

    async fn share_container(
        &self,
        cid: &str,
        rootfs: Vec<RootfsMount>,
        bundle_rootfs: PathBuf,
        binds: Vec<HostBind>,
    ) -> Result<()> {
        let (s, cid) = (self.shared.clone(), cid.to_string());
        blocking(move || s.share_container(&cid, &rootfs, &bundle_rootfs, &binds)).await
    }

    async fn unshare_container(&self, cid: &str) -> Result<()> {
        let (s, cid) = (self.shared.clone(), cid.to_string());
        blocking(move || s.unshare_container(&cid)).await
    }

    async fn stop(&self) -> Result<()> {
        self.stopped
            .get_or_init(|| async {
                // The VMM and virtiofsd first: nothing holds the shared mounts afterwards.
                if let Err(e) = self.vm.vm.stop().await {
                    tracing::warn!(error = %e, "stopping the VM");
                }
                let s = self.shared.clone();
                if let Err(e) = blocking(move || s.teardown()).await {
                    tracing::warn!(error = %e, "removing the shared directory");
                }
                remove_dir_quietly(&self.vm.paths.vm_dir);
            })
            .await;
        Ok(())
    }

    async fn hotplug_vcpus(&self, total: u32) -> Result<u32> {
        self.vm
            .vm
            .hotplug_vcpus(total)
            .await
            .map_err(|e| hotplug_error("CPU hotplug", e))
    }

    async fn hotplug_memory(&self, total_mib: u32) -> Result<u32> {
        self.vm
            .vm
            .hotplug_memory(total_mib)
            .await
            .map_err(|e| hotplug_error("memory hotplug", e))
    }
}

/// Removes an (empty) directory, ignoring that it is gone; never recursive.
fn remove_dir_quietly(dir: &Path) {
    match std::fs::remove_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "left behind"),
    }
}
