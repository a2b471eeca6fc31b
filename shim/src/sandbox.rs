//! The pod VM as the task service sees it: [`SandboxFactory`] boots one and returns a
//! [`Sandbox`]. [`VmFactory`] does it for real with `isola_sandbox::BootedVm`, on the
//! hypervisor backend and the pod networking it is given ([`VmFactory::real`]: the
//! configuration's VMM, host networking); the task service's unit tests use a fake factory,
//! `sandbox_tests.rs` runs this one on a fake backend.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use isola_config::{Config, SharedFs};
use isola_hypervisor::NetDevice;
use isola_sandbox::{BootTimings, BootedVm, SandboxPaths};
use oci_spec::runtime::Spec;
use tokio::sync::OnceCell;

use crate::agent::{AgentApi, TtrpcAgent};
use crate::error::{Result, ShimError};
use crate::mounts::{HostBind, RootfsMount, SharedDir};
use crate::network::{HostNetworking, PodNetwork, PodNetworking};

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
    /// Where the host reaches the guest's vsock ports, recorded for `isola debug console`;
    /// None when there is no guest (fakes).
    fn agent_endpoint(&self) -> Option<isola_agent_proto::AgentEndpoint> {
        None
    }
    /// The host directory shared with the guest.
    fn shared_dir(&self) -> PathBuf;
    /// How long the VM took to boot, recorded for `isola ps` and `isola monitor`.
    fn boot_timings(&self) -> BootTimings;
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
    /// Kills the VMM at once (the VM was declared dead): [`wait`](Self::wait) then resolves
    /// and the VM is handled as crashed.
    async fn kill(&self) -> Result<()>;
    /// Grows the VM to `total` vCPUs; returns the resulting count. An error whose code is
    /// Unimplemented when the hypervisor cannot (yet); the hypervisor's own error
    /// ([`ShimError::Hypervisor`]) otherwise.
    async fn hotplug_vcpus(&self, total: u32) -> Result<u32>;
    /// Grows the VM's memory to `total_mib`; returns the resulting size in MiB. Errors as
    /// [`hotplug_vcpus`](Self::hotplug_vcpus).
    async fn hotplug_memory(&self, total_mib: u32) -> Result<u32>;
    /// The pod network the VM's NICs carry (scanned from the pod netns at boot), for the
    /// agent to configure; None without a pod netns.
    fn network(&self) -> Option<PodNetwork>;
}

/// Boots sandboxes.
#[async_trait]
pub trait SandboxFactory: Send + Sync {
    /// Boots sandbox `sandbox_id`'s VM from `config`, with a NIC per pod interface of the
    /// network namespace `netns` (CRI's pod netns) if given. On failure nothing is left behind.
    async fn boot(
        &self,
        config: &Config,
        sandbox_id: &str,
        netns: Option<&Path>,
    ) -> Result<Arc<dyn Sandbox>>;

    /// [`boot`](Self::boot) for the pod whose first container has `spec`: with the network
    /// namespace the spec joins by path (CRI's pod netns), if any.
    async fn boot_pod(
        &self,
        config: &Config,
        sandbox_id: &str,
        spec: &Spec,
    ) -> Result<Arc<dyn Sandbox>> {
        let netns = crate::network::netns_path(spec);
        self.boot(config, sandbox_id, netns.as_deref()).await
    }
}

/// Makes a VM's hypervisor backend from its configuration ([`isola_sandbox::NewVm`]).
pub type Backend = Arc<isola_sandbox::NewVm>;

/// Boots real VMs with [`BootedVm::boot_with_backend`]: the shared directory, the pod
/// network, the VM and its agent, undoing what was done when a step fails.
pub struct VmFactory {
    backend: Backend,
    networking: Arc<dyn PodNetworking>,
}

impl VmFactory {
    /// A factory making each VM's backend with `backend` and carrying the pod network into
    /// it with `networking`.
    pub fn new(backend: Backend, networking: Arc<dyn PodNetworking>) -> VmFactory {
        VmFactory {
            backend,
            networking,
        }
    }

    /// The production factory: the VMM the configuration names
    /// ([`isola_hypervisor::new_vm`]) and [`HostNetworking`].
    pub fn real() -> VmFactory {
        VmFactory::new(Arc::new(isola_hypervisor::new_vm), Arc::new(HostNetworking))
    }
}

impl Default for VmFactory {
    fn default() -> Self {
        VmFactory::real()
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ShimError::Internal(format!("a blocking task failed: {e}")))?
}

#[async_trait]
impl SandboxFactory for VmFactory {
    async fn boot(
        &self,
        config: &Config,
        sandbox_id: &str,
        netns: Option<&Path>,
    ) -> Result<Arc<dyn Sandbox>> {
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
        if config.agent.debug_console {
            let (s, busybox) = (shared.clone(), config.agent.debug_busybox_path.clone());
            let installed = blocking(move || {
                isola_sandbox::debug_console::install(s.root(), &busybox)
                    .map_err(|e| ShimError::FailedPrecondition(e.to_string()))
            })
            .await;
            if let Err(e) = installed {
                let s = shared.clone();
                if let Err(te) = blocking(move || s.teardown()).await {
                    tracing::warn!(error = %te, "removing the shared directory");
                }
                return Err(e);
            }
        }
        let (pod_net, devices) = match netns {
            Some(ns) => match attach_network(self.networking.as_ref(), sandbox_id, ns).await {
                Ok((net, devices)) => (Some((ns.to_path_buf(), net)), devices),
                Err(e) => {
                    let s = shared.clone();
                    if let Err(te) = blocking(move || s.teardown()).await {
                        tracing::warn!(error = %te, "removing the shared directory");
                    }
                    return Err(e);
                }
            },
            None => (None, Vec::new()),
        };
        let booted =
            BootedVm::boot_with_backend(config, sandbox_id, devices, self.backend.as_ref()).await;
        let vm = match booted {
            Ok(vm) => vm,
            Err(e) => {
                if let Some((ns, net)) = &pod_net {
                    detach_network(self.networking.as_ref(), sandbox_id, ns, net).await;
                }
                let s = shared.clone();
                if let Err(te) = blocking(move || s.teardown()).await {
                    tracing::warn!(error = %te, "removing the shared directory of a VM that failed to boot");
                }
                return Err(e.into());
            }
        };
        let endpoint = vm.vm.agent_endpoint();
        let agent = Arc::new(TtrpcAgent::new(vm.agent.clone(), endpoint.clone()));
        Ok(Arc::new(VmSandbox {
            vm,
            agent,
            endpoint: format!("{endpoint:?}"),
            shared,
            pod_net,
            networking: self.networking.clone(),
            stopped: OnceCell::new(),
        }))
    }
}

/// Joins the pod netns's interfaces to taps; the VM's network devices on them.
async fn attach_network(
    networking: &dyn PodNetworking,
    sandbox_id: &str,
    ns: &Path,
) -> Result<(PodNetwork, Vec<NetDevice>)> {
    let attached = networking.attach(sandbox_id, ns).await?;
    let devices = attached
        .network
        .interfaces
        .iter()
        .zip(attached.taps)
        .map(|(i, tap)| NetDevice {
            mac: i.mac.clone(),
            mtu: i.mtu,
            tap: Arc::new(tap),
        })
        .collect();
    Ok((attached.network, devices))
}

/// Undoes [`attach_network`] on the host, quietly.
async fn detach_network(
    networking: &dyn PodNetworking,
    sandbox_id: &str,
    ns: &Path,
    net: &PodNetwork,
) {
    if let Err(e) = networking.detach(sandbox_id, ns, net).await {
        tracing::warn!(sandbox_id, error = %e, "removing the tc redirects from the pod netns");
    }
}

/// A real pod VM.
pub struct VmSandbox {
    vm: BootedVm,
    agent: Arc<TtrpcAgent>,
    endpoint: String,
    shared: SharedDir,
    /// The pod netns and what was found in it.
    pod_net: Option<(PathBuf, PodNetwork)>,
    networking: Arc<dyn PodNetworking>,
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

    fn agent_endpoint(&self) -> Option<isola_agent_proto::AgentEndpoint> {
        Some(self.vm.vm.agent_endpoint())
    }

    fn shared_dir(&self) -> PathBuf {
        self.shared.root().to_path_buf()
    }

    fn boot_timings(&self) -> BootTimings {
        self.vm.timings
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

    async fn kill(&self) -> Result<()> {
        self.vm
            .vm
            .kill()
            .await
            .map_err(|source| ShimError::Hypervisor {
                op: "killing the VMM",
                source: Box::new(source),
            })
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
                if let Some((ns, net)) = &self.pod_net {
                    detach_network(self.networking.as_ref(), &self.vm.id, ns, net).await;
                }
            })
            .await;
        Ok(())
    }

    async fn hotplug_vcpus(&self, total: u32) -> Result<u32> {
        self.vm
            .vm
            .hotplug_vcpus(total)
            .await
            .map_err(|e| ShimError::hypervisor("CPU hotplug", e))
    }

    async fn hotplug_memory(&self, total_mib: u32) -> Result<u32> {
        self.vm
            .vm
            .hotplug_memory(total_mib)
            .await
            .map_err(|e| ShimError::hypervisor("memory hotplug", e))
    }

    fn network(&self) -> Option<PodNetwork> {
        self.pod_net.as_ref().map(|(_, net)| net.clone())
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
