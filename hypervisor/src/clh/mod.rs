//! The Cloud Hypervisor backend.
//!
//! `start()`: refuse up front a host without hardware KVM (Cloud Hypervisor has no software
//! emulation: [`crate::accel::resolve_cloud_hypervisor`]), create the state directory, start
//! virtiofsd when a directory is shared, spawn `cloud-hypervisor --api-socket` with its event
//! monitor on a pipe, then over the REST API ([`api`]): `vm.create` with the body
//! [`config::build`] makes, one `vm.add-net` per tap (the descriptor travels as
//! `SCM_RIGHTS`), `vm.boot`. The agent is reached over Cloud Hypervisor's own hybrid vsock
//! (no vhost-device-vsock); the serial console goes through the VMM's stdout into the
//! size-capped console log.
//!
//! `stop()`: `vmm.shutdown` with a short deadline, then SIGKILL; stop virtiofsd; remove the
//! state directory. A guest that reboots or panics ends the VM ([`events`]), as QEMU's
//! `-no-reboot` does.
//!
//! What differs from QEMU: no TCG (KVM only), no machine types or firmware, vsock is always
//! hybrid, memory hotplug is ACPI through `vm.resize` instead of DIMM objects.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Mutex as StdMutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Mutex;

use crate::daemons;
use crate::lifecycle::{Core, Launcher, Running, QUIT_TIMEOUT};
use crate::vmm::{Attempt, VmmProcess};
use crate::{
    Accelerator, AgentEndpoint, Hypervisor, HypervisorError, NetDevice, VmConfig, VmExit,
    DEFAULT_KERNEL_PARAMS, MEMORY_BLOCK_MIB,
};

pub mod api;
pub mod config;
pub mod events;
pub mod fdstream;
mod paths;
pub mod resize;

pub use paths::ClhPaths;

use api::{ApiClient, ApiError};
use config::{ClhPlan, ResizeRequest, VmInfo};
use resize::Ceilings;

/// Name of the VMM in messages.
pub const NAME: &str = "cloud-hypervisor";

/// Deadline for the VMM to answer `vmm.ping` on its API socket.
const VMM_READY_TIMEOUT: Duration = Duration::from_secs(10);

const MIB: u64 = 1024 * 1024;

/// A VM run by Cloud Hypervisor. Construct with [`ClhHypervisor::new`] or
/// [`crate::new_cloud_hypervisor`].
pub struct ClhHypervisor {
    cfg: VmConfig,
    paths: ClhPaths,
    ceilings: Ceilings,
    api: ApiClient,
    /// The network devices (taken out of `cfg`), until `start` hands them to the VMM.
    net: StdMutex<Vec<NetDevice>>,
    /// Serializes resizes (each reads the size, then asks for more); counts the growing
    /// memory resizes.
    resizing: Mutex<u32>,
    core: Core,
}

impl std::fmt::Debug for ClhHypervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClhHypervisor")
            .field("id", &self.cfg.id)
            .field("state_dir", &self.cfg.state_dir)
            .finish_non_exhaustive()
    }
}

/// The hotplug room above boot memory, MiB: whole blocks up to the ceiling, none without
/// memory slots.
fn hotplug_mib(cfg: &VmConfig) -> u32 {
    if cfg.memory_slots == 0 || cfg.max_memory_mib <= cfg.memory_mib {
        return 0;
    }
    (cfg.max_memory_mib - cfg.memory_mib) / MEMORY_BLOCK_MIB * MEMORY_BLOCK_MIB
}

/// The plan [`config::build`] turns into `vm.create`'s body. Pure.
pub fn plan(cfg: &VmConfig, paths: &ClhPaths) -> ClhPlan {
    let mut cmdline = DEFAULT_KERNEL_PARAMS.to_owned();
    if !cfg.kernel_params.trim().is_empty() {
        cmdline.push(' ');
        cmdline.push_str(cfg.kernel_params.trim());
    }
    ClhPlan {
        kernel: cfg.kernel.clone(),
        initrd: cfg.initrd.clone(),
        cmdline,
        vcpus: cfg.vcpus,
        max_vcpus: cfg.max_vcpus.max(cfg.vcpus),
        memory_mib: cfg.memory_mib,
        hotplug_mib: hotplug_mib(cfg),
        vsock_socket: paths.vsock_socket.clone(),
        fs: cfg
            .shared_fs
            .as_ref()
            .map(|fs| (paths.virtiofs_socket.clone(), fs.tag.clone())),
    }
}

/// The VMM's command line: the API socket and the event monitor on descriptor `events_fd`.
/// Pure.
pub fn vmm_args(paths: &ClhPaths, events_fd: i32, debug: bool) -> Vec<String> {
    let mut args = vec![
        "--api-socket".to_owned(),
        format!("path={}", paths.api_socket.display()),
        "--event-monitor".to_owned(),
        format!("fd={events_fd}"),
    ];
    if debug {
        args.push("-vv".to_owned());
    }
    args
}

impl ClhHypervisor {
    /// A VM for `cfg`; nothing is started.
    pub fn new(mut cfg: VmConfig) -> Self {
        let net = StdMutex::new(std::mem::take(&mut cfg.network));
        let paths = ClhPaths::new(&cfg.state_dir);
        let plan = plan(&cfg, &paths);
        let ceilings = Ceilings {
            max_vcpus: plan.max_vcpus,
            max_memory_mib: plan.memory_mib.saturating_add(plan.hotplug_mib),
            memory_slots: if plan.hotplug_mib > 0 {
                cfg.memory_slots
            } else {
                0
            },
        };
        let core = Core::new(&cfg.id, &cfg.state_dir);
        Self {
            api: ApiClient::new(paths.api_socket.clone()),
            paths,
            ceilings,
            cfg,
            net,
            resizing: Mutex::new(0),
            core,
        }
    }

    /// The paths inside the state directory.
    pub fn paths(&self) -> &ClhPaths {
        &self.paths
    }

    /// `vm.info` of the running VM: its configuration and state (the health check).
    pub async fn vm_info(&self) -> Result<VmInfo, HypervisorError> {
        Ok(self.running_api()?.info().await?)
    }

    fn id(&self) -> &str {
        &self.cfg.id
    }

    /// The API client, if the VM runs.
    fn running_api(&self) -> Result<&ApiClient, HypervisorError> {
        self.core.ensure_running().map(|()| &self.api)
    }

    /// Checks what can be checked before anything is spawned.
    async fn validate(&self) -> Result<(), HypervisorError> {
        let invalid = |m: String| Err(HypervisorError::InvalidConfig(m));
        let c = &self.cfg;
        if c.id.is_empty() || c.state_dir.as_os_str().is_empty() {
            return invalid("the sandbox id and state_dir must not be empty".into());
        }
        if c.vcpus == 0 || c.memory_mib == 0 {
            return invalid(format!(
                "vcpus ({}) and memory_mib ({}) must be positive",
                c.vcpus, c.memory_mib
            ));
        }
        if c.vsock == crate::VsockChoice::VhostKernel {
            return invalid(
                "vsock is set to vhost-kernel but Cloud Hypervisor only has its own hybrid vsock \
                 (set vsock to auto)"
                    .into(),
            );
        }
        self.paths.check_socket_lengths()?;
        let bad_mac = {
            let net = self.net.lock().unwrap_or_else(|e| e.into_inner());
            net.iter()
                .find(|d| !crate::net::valid_mac(&d.mac))
                .map(|d| d.mac.clone())
        };
        if let Some(mac) = bad_mac {
            return invalid(format!(
                "network device MAC {mac:?} is not six colon-separated hex octets"
            ));
        }
        for (what, p) in [("kernel", &c.kernel), ("initrd", &c.initrd)] {
            if !tokio::fs::try_exists(p).await.unwrap_or(false) {
                return invalid(format!("{what} image {} does not exist", p.display()));
            }
        }
        if let Some(fs) = &c.shared_fs {
            let is_dir = tokio::fs::metadata(&fs.shared_dir)
                .await
                .map(|m| m.is_dir())
                .unwrap_or(false);
            if !is_dir {
                return invalid(format!(
                    "shared directory {} is not a directory",
                    fs.shared_dir.display()
                ));
            }
        }
        Ok(())
    }

    async fn launch_inner(&self, core: &Core, run: &mut Running) -> Result<(), HypervisorError> {
        let accel = crate::accel::resolve_cloud_hypervisor(self.cfg.accelerator).await?;
        tracing::info!(sandbox = %self.id(), reason = %accel.1, "Cloud Hypervisor can run here");
        core.set_accelerator(accel);
        self.validate().await?;
        crate::vmm::create_state_dir(&self.cfg.state_dir).await?;
        if let Some(fs) = &self.cfg.shared_fs {
            let d = daemons::virtiofsd::start(
                fs,
                self.paths.virtiofs_socket.clone(),
                self.paths.virtiofsd_log.clone(),
                self.cfg.debug,
            )
            .await?;
            tracing::info!(sandbox = %self.id(), daemon = d.name(), pid = d.pid(), "helper daemon ready");
            core.add_daemon_pid(d.pid());
            run.daemons.push(d);
        }
        let (events_rx, events_tx) = events_pipe()?;
        let args = vmm_args(&self.paths, events_tx.as_raw_fd(), self.cfg.debug);
        tracing::debug!(sandbox = %self.id(), ?args, "cloud-hypervisor command line");
        daemons::remove_if_exists(&self.paths.api_socket).await;
        let vmm = VmmProcess::spawn(
            NAME,
            &self.cfg.cloud_hypervisor_path,
            &args,
            &self.paths.vmm_log,
            &self.paths.console_log,
            self.id(),
            &[events_tx.as_raw_fd()],
        )
        .await?;
        // The VMM holds the write end now: the pipe ends when it exits.
        drop(events_tx);
        let kill = vmm.kill_handle();
        let sandbox = self.id().to_owned();
        run.tasks
            .push(tokio::spawn(events::watch(events_rx, sandbox, move |_| {
                kill.kill();
            })));
        let pid = vmm.pid();
        let ready = vmm
            .wait_control(&self.paths.api_socket, VMM_READY_TIMEOUT, |_| async {
                match self.api.ping().await {
                    Ok(ping) => Attempt::Ready(ping),
                    // Bound but not listening yet, or the socket file is not there yet.
                    Err(e) if e.is_connect() => Attempt::NotYet,
                    Err(e) => Attempt::Failed(e.into()),
                }
            })
            .await;
        run.vmm = Some(vmm);
        let ping = ready?;
        tracing::debug!(sandbox = %self.id(), version = %ping.version, pid, "cloud-hypervisor API ready");
        core.set_vmm_pid(pid);
        self.define_and_boot().await
    }

    /// `vm.create`, `vm.add-net` per tap, `vm.boot`. The taps are dropped here: from then on
    /// the VMM holds the only descriptors.
    async fn define_and_boot(&self) -> Result<(), HypervisorError> {
        self.api
            .create(&config::build(&plan(&self.cfg, &self.paths)))
            .await?;
        let devices = std::mem::take(&mut *self.net.lock().unwrap_or_else(|e| e.into_inner()));
        for (i, dev) in devices.iter().enumerate() {
            self.api
                .add_net(&config::net_config(i, dev), dev.tap_fd())
                .await?;
        }
        drop(devices);
        self.api.boot().await?;
        Ok(())
    }

    /// The current vCPU count and memory size, from the VMM.
    async fn current_size(&self, api: &ApiClient) -> Result<(u32, u32), HypervisorError> {
        let info = api.info().await?;
        let memory = info.memory_actual_size.unwrap_or(info.config.memory.size) / MIB;
        Ok((
            info.config.cpus.boot_vcpus,
            u32::try_from(memory).unwrap_or(u32::MAX),
        ))
    }

    fn hotplug_failed(
        &self,
        what: String,
        resource: &'static str,
        reached: u32,
        e: ApiError,
    ) -> HypervisorError {
        HypervisorError::HotplugFailed {
            vm: self.id().to_owned(),
            what,
            resource,
            reached: reached.into(),
            source: Box::new(e.into()),
        }
    }
}

/// A close-on-exec pipe for the event monitor: (tokio read end, write end for the VMM).
fn events_pipe() -> Result<(tokio::net::unix::pipe::Receiver, OwnedFd), HypervisorError> {
    let io = |source: std::io::Error| {
        HypervisorError::Spawn(crate::process::SpawnError::Spawn {
            name: NAME,
            program: PathBuf::from("pipe(2) for --event-monitor"),
            source,
        })
    };
    let (rx, tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
        .map_err(|e| io(e.into()))?;
    let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(rx).map_err(io)?;
    Ok((rx, tx))
}

#[async_trait]
impl Launcher for ClhHypervisor {
    async fn launch(&self, core: &Core, run: &mut Running) -> Result<(), HypervisorError> {
        self.launch_inner(core, run).await
    }

    async fn request_quit(&self) -> bool {
        let api = self.api.clone().with_timeout(QUIT_TIMEOUT);
        if let Err(e) = api.shutdown_vmm().await {
            tracing::debug!(sandbox = %self.id(), error = %e, "vmm.shutdown failed");
        }
        true
    }

    fn vmm_log(&self) -> &std::path::Path {
        &self.paths.vmm_log
    }
}

#[async_trait]
impl Hypervisor for ClhHypervisor {
    async fn start(&self) -> Result<(), HypervisorError> {
        self.core.start(self).await
    }

    async fn stop(&self) -> Result<(), HypervisorError> {
        self.core.stop(self).await
    }

    async fn wait(&self) -> Result<VmExit, HypervisorError> {
        self.core.wait().await
    }

    async fn kill(&self) -> Result<(), HypervisorError> {
        self.core.kill()
    }

    async fn pause(&self) -> Result<(), HypervisorError> {
        self.running_api()?.pause().await?;
        tracing::info!(sandbox = %self.id(), "VM paused");
        Ok(())
    }

    async fn resume(&self) -> Result<(), HypervisorError> {
        self.running_api()?.resume().await?;
        tracing::info!(sandbox = %self.id(), "VM resumed");
        Ok(())
    }

    async fn hotplug_vcpus(&self, total: u32) -> Result<u32, HypervisorError> {
        let api = self.running_api()?;
        let _serial = self.resizing.lock().await;
        let (current, _) = self.current_size(api).await?;
        let Some(target) = resize::vcpus(self.id(), current, &self.ceilings, total)? else {
            return Ok(current);
        };
        let req = ResizeRequest {
            desired_vcpus: Some(target),
            ..ResizeRequest::default()
        };
        api.resize(&req).await.map_err(|e| {
            self.hotplug_failed(format!("{} vCPUs", target - current), "vCPUs", current, e)
        })?;
        tracing::info!(sandbox = %self.id(), from = current, to = target, "vCPUs hot-plugged");
        Ok(target)
    }

    async fn hotplug_memory(&self, total_mib: u32) -> Result<u32, HypervisorError> {
        let api = self.running_api()?;
        let mut plugs = self.resizing.lock().await;
        let (_, current) = self.current_size(api).await?;
        let Some(target) = resize::memory(self.id(), current, *plugs, &self.ceilings, total_mib)?
        else {
            return Ok(current);
        };
        let req = ResizeRequest {
            desired_ram: Some(u64::from(target) * MIB),
            ..ResizeRequest::default()
        };
        api.resize(&req).await.map_err(|e| {
            let what = format!("{} MiB of memory", target - current);
            self.hotplug_failed(what, "MiB of memory", current, e)
        })?;
        *plugs += 1;
        tracing::info!(sandbox = %self.id(), from_mib = current, to_mib = target, "memory hot-plugged");
        Ok(target)
    }

    fn agent_endpoint(&self) -> AgentEndpoint {
        AgentEndpoint::HybridVsock {
            path: self.paths.vsock_socket.clone(),
            port: self.cfg.agent_port,
        }
    }

    fn pids(&self) -> Vec<u32> {
        self.core.pids()
    }

    fn console_log(&self) -> PathBuf {
        self.paths.console_log.clone()
    }

    fn accelerator(&self) -> Option<(Accelerator, String)> {
        self.core.accelerator()
    }
}

#[cfg(test)]
mod api_tests;
#[cfg(test)]
mod tests;
