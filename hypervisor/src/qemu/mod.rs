//! The QEMU backend.
//!
//! `start()`: choose the accelerator, create the state directory, start the helper daemons
//! (vhost-device-vsock when the host has no kernel vhost-vsock, virtiofsd when a directory
//! is shared), spawn QEMU and connect to its QMP socket. With kernel vhost-vsock the guest CID
//! is host-global: when QEMU reports the chosen CID as taken, start retries with another.
//!
//! `stop()`: QMP `quit` with a short deadline, then SIGKILL; stop the daemons; remove the
//! state directory.

use std::path::{Path, PathBuf};
use std::sync::Mutex as StdMutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};
use tracing::Instrument;

use crate::daemons;
use crate::{
    accel, Accelerator, AgentEndpoint, Hypervisor, HypervisorError, VmConfig, VmExit, VsockChoice,
};

pub mod args;
pub mod clone;
pub mod clone_args;
pub mod hotplug;
mod netdev;
pub(crate) mod paths;
pub mod qmp;
mod startup;
pub mod template;

pub use paths::StatePaths;
pub use qmp::VmStatus;

use crate::lifecycle::{Core, Launcher, Running};
use crate::vmm::VmmProcess;
use args::{Boot, FsPlan, HotplugLimits, QemuPlan, VsockPlan};
use qmp::QmpClient;

/// Where the kernel vhost-vsock device node lives.
const VHOST_VSOCK_DEV: &str = "/dev/vhost-vsock";

/// Why kernel vhost-vsock cannot be used, given whether its device exists (the caller looks).
fn kernel_vsock_unavailable(device_present: bool) -> Option<String> {
    (!device_present).then(|| {
        format!(
            "vsock is set to vhost-kernel but {VHOST_VSOCK_DEV} does not exist (load the \
             vhost_vsock module, or use auto/vhost-user)"
        )
    })
}

/// How many CIDs are tried with kernel vhost-vsock before giving up.
const CID_ATTEMPTS: u32 = 5;

/// Deadline for QEMU to set up the machine and answer on QMP.
const VMM_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The vsock transport, resolved from [`VsockChoice`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VsockMode {
    Kernel,
    User,
}

/// A VM run by QEMU. Construct with [`QemuHypervisor::new`] or [`crate::new_qemu`].
pub struct QemuHypervisor {
    cfg: VmConfig,
    paths: StatePaths,
    vsock: VsockMode,
    /// The hotplug ceilings the command line sets.
    limits: HotplugLimits,
    /// The network devices (taken out of `cfg`), until `start` hands them to QEMU.
    net: StdMutex<Vec<crate::NetDevice>>,
    /// The QMP connection of the running VM.
    qmp: Mutex<Option<QmpClient>>,
    /// The kernel vhost-vsock guest CID (the first candidate until `start` settles it).
    cid: StdMutex<u32>,
    core: Core,
}

impl std::fmt::Debug for QemuHypervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QemuHypervisor")
            .field("id", &self.cfg.id)
            .field("state_dir", &self.cfg.state_dir)
            .finish_non_exhaustive()
    }
}

/// A guest CID for kernel vhost-vsock, derived from the sandbox id and the attempt number
/// (FNV-1a), in 3..=u32::MAX-1 (0-2 are reserved, u32::MAX is VMADDR_CID_ANY).
pub fn cid_candidate(id: &str, attempt: u32) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in id.bytes().chain(attempt.to_le_bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    3 + h % (u32::MAX - 3)
}

/// Whether QEMU's stderr says the kernel vhost-vsock CID is taken.
pub fn cid_in_use(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    s.contains("guest cid") && s.contains("in use")
}

impl QemuHypervisor {
    /// A VM for `cfg`; nothing is started. The vsock transport is resolved here (so
    /// `agent_endpoint()` is meaningful before `start`).
    pub fn new(mut cfg: VmConfig) -> Self {
        let net = StdMutex::new(std::mem::take(&mut cfg.network));
        let vsock = match cfg.vsock {
            VsockChoice::VhostKernel => VsockMode::Kernel,
            VsockChoice::VhostUser => VsockMode::User,
            // A stat of a device node: cheap enough for a synchronous constructor.
            VsockChoice::Auto if Path::new(VHOST_VSOCK_DEV).exists() => VsockMode::Kernel,
            VsockChoice::Auto => VsockMode::User,
        };
        let limits = HotplugLimits::resolve(
            &cfg.machine_type,
            cfg.vcpus,
            cfg.memory_mib,
            cfg.max_vcpus,
            cfg.max_memory_mib,
            cfg.memory_slots,
        );
        let cid = StdMutex::new(cid_candidate(&cfg.id, 0));
        let core = Core::new(&cfg.id, &cfg.state_dir);
        Self {
            paths: StatePaths::new(&cfg.state_dir),
            limits,
            net,
            cfg,
            vsock,
            qmp: Mutex::new(None),
            cid,
            core,
        }
    }

    /// The paths inside the state directory.
    pub fn paths(&self) -> &StatePaths {
        &self.paths
    }

    /// QMP `query-status`.
    pub async fn query_status(&self) -> Result<VmStatus, HypervisorError> {
        Ok(self.qmp_client().await?.query_status().await?)
    }

    fn id(&self) -> &str {
        &self.cfg.id
    }

    /// The QMP client of a running VM.
    async fn qmp_client(&self) -> Result<MappedMutexGuard<'_, QmpClient>, HypervisorError> {
        self.core.ensure_running()?;
        MutexGuard::try_map(self.qmp.lock().await, Option::as_mut)
            .map_err(|_| HypervisorError::NotRunning(self.id().to_owned()))
    }

    /// Checks what can be checked before anything is spawned.
    async fn validate(&self) -> Result<(), HypervisorError> {
        let invalid = |m: String| Err(HypervisorError::InvalidConfig(m));
        if self.cfg.id.is_empty() {
            return invalid("the sandbox id is empty".into());
        }
        if self.cfg.vcpus == 0 || self.cfg.memory_mib == 0 {
            return invalid(format!(
                "vcpus ({}) and memory_mib ({}) must be positive",
                self.cfg.vcpus, self.cfg.memory_mib
            ));
        }
        if self.cfg.state_dir.as_os_str().is_empty() {
            return invalid("state_dir is empty".into());
        }
        self.paths.check_socket_lengths()?;
        netdev::validate(&self.net.lock().unwrap_or_else(|e| e.into_inner()))?;
        for (what, p) in [("kernel", &self.cfg.kernel), ("initrd", &self.cfg.initrd)] {
            if !tokio::fs::try_exists(p).await.unwrap_or(false) {
                return invalid(format!("{what} image {} does not exist", p.display()));
            }
        }
        if self.vsock == VsockMode::Kernel {
            let present = tokio::fs::try_exists(VHOST_VSOCK_DEV)
                .await
                .unwrap_or(false);
            if let Some(why) = kernel_vsock_unavailable(present) {
                return invalid(why);
            }
        }
        if let Some(fs) = &self.cfg.shared_fs {
            if !tokio::fs::metadata(&fs.shared_dir)
                .await
                .map(|m| m.is_dir())
                .unwrap_or(false)
            {
                return invalid(format!(
                    "shared directory {} is not a directory",
                    fs.shared_dir.display()
                ));
            }
        }
        Ok(())
    }

    /// Starts the helper daemons concurrently; those that started are pushed into `run`
    /// even if another failed, so the caller can stop them.
    async fn start_daemons(&self, run: &mut Running) -> Result<(), HypervisorError> {
        let p = &self.paths;
        let debug = self.cfg.debug;
        let vsock = async {
            if self.vsock != VsockMode::User {
                return None;
            }
            Some(
                daemons::vsock::start(
                    &self.cfg.vhost_user_vsock_path,
                    p.vhost_vsock_socket.clone(),
                    &p.hybrid_vsock_socket,
                    p.vhost_vsock_log.clone(),
                    debug,
                )
                .await,
            )
        };
        let fs = async {
            let fs = self.cfg.shared_fs.as_ref()?;
            Some(
                daemons::virtiofsd::start(
                    fs,
                    p.virtiofs_socket.clone(),
                    p.virtiofsd_log.clone(),
                    debug,
                )
                .await,
            )
        };
        let (vsock, fs) = tokio::join!(vsock, fs);
        let mut first_err = None;
        for res in [vsock, fs].into_iter().flatten() {
            match res {
                Ok(d) => {
                    tracing::info!(sandbox = %self.id(), daemon = d.name(), pid = d.pid(), "helper daemon ready");
                    self.core.add_daemon_pid(d.pid());
                    run.daemons.push(d);
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), |e| Err(e.into()))
    }

    fn plan(
        &self,
        accelerator: Accelerator,
        tsc_khz: Option<u32>,
        cid: u32,
        net: &netdev::NetFds,
    ) -> QemuPlan {
        let c = &self.cfg;
        QemuPlan {
            name: format!("isola-{}", c.id),
            machine_type: c.machine_type.clone(),
            firmware: c.firmware.clone(),
            accelerator,
            tcg_tb_size_mib: c.tcg_tb_size_mib,
            tsc_khz,
            vcpus: c.vcpus,
            memory_mib: c.memory_mib,
            hotplug: self.limits,
            kernel: c.kernel.clone(),
            initrd: c.initrd.clone(),
            kernel_params: c.kernel_params.clone(),
            qmp_socket: self.paths.qmp_socket.clone(),
            vsock: match self.vsock {
                VsockMode::Kernel => VsockPlan::VhostKernel { cid },
                VsockMode::User => VsockPlan::VhostUser {
                    socket: self.paths.vhost_vsock_socket.clone(),
                },
            },
            shared_fs: c.shared_fs.as_ref().map(|fs| FsPlan {
                socket: self.paths.virtiofs_socket.clone(),
                tag: fs.tag.clone(),
            }),
            net: net.plans(),
            boot: Boot::Cold,
        }
    }

    /// Spawns QEMU and connects QMP, retrying with another CID when kernel vhost-vsock
    /// reports the CID in use.
    async fn start_vmm(
        &self,
        run: &mut Running,
        accelerator: Accelerator,
        tsc_khz: Option<u32>,
        net: &netdev::NetFds,
        boot: &Boot,
        ram_fd: Option<std::os::fd::RawFd>,
    ) -> Result<QmpClient, HypervisorError> {
        let mut inherited = net.inherited();
        inherited.extend(ram_fd);
        let attempts = if self.vsock == VsockMode::Kernel {
            CID_ATTEMPTS
        } else {
            1
        };
        let mut tried = Vec::new();
        for attempt in 0..attempts {
            let cid = cid_candidate(self.id(), attempt);
            let mut plan = self.plan(accelerator, tsc_khz, cid, net);
            plan.boot = boot.clone();
            let args = args::build(&plan);
            tracing::debug!(sandbox = %self.id(), ?args, "qemu command line");
            daemons::remove_if_exists(&self.paths.qmp_socket).await;
            let vmm = VmmProcess::spawn(
                "qemu",
                &self.cfg.qemu_path,
                &args,
                &self.paths.qemu_log,
                &self.paths.console_log,
                self.id(),
                &inherited,
            )
            .await?;
            let pid = vmm.pid();
            let connected =
                startup::connect_qmp(&vmm, &self.paths.qmp_socket, VMM_READY_TIMEOUT, self.id())
                    .await;
            run.vmm = Some(vmm);
            match connected {
                Ok(client) => {
                    *self.cid.lock().unwrap_or_else(|e| e.into_inner()) = cid;
                    self.core.set_vmm_pid(pid);
                    return Ok(client);
                }
                Err(HypervisorError::VmmExitedEarly { stderr_tail, .. })
                    if self.vsock == VsockMode::Kernel && cid_in_use(&stderr_tail) =>
                {
                    tracing::info!(sandbox = %self.id(), cid, "vsock CID in use; retrying with another");
                    tried.push(cid);
                }
                Err(e) => return Err(e),
            }
        }
        Err(HypervisorError::CidExhausted { tried })
    }
}

#[async_trait]
impl Launcher for QemuHypervisor {
    async fn launch(&self, core: &Core, run: &mut Running) -> Result<(), HypervisorError> {
        self.validate().await?;
        let (accelerator, reason) = accel::resolve(self.cfg.accelerator)
            .instrument(tracing::info_span!("accel", sandbox = %self.id()))
            .await?;
        tracing::info!(sandbox = %self.id(), ?accelerator, %reason, "accelerator chosen");
        core.set_accelerator((accelerator, reason));
        // Measured (once, 10 ms) while the daemons start.
        let tsc = matches!(accelerator, Accelerator::Tcg)
            .then(|| tokio::task::spawn_blocking(crate::tsc::host_tsc_khz));
        crate::vmm::create_state_dir(&self.cfg.state_dir).await?;
        self.start_daemons(run).await?;
        let tsc_khz = match tsc {
            Some(measuring) => measuring.await.ok().flatten(),
            None => None,
        };
        // Dropped when this returns: from then on QEMU holds the only tap descriptors.
        let devices = std::mem::take(&mut *self.net.lock().unwrap_or_else(|e| e.into_inner()));
        let mut net = netdev::NetFds::open(devices, self.id()).await;
        let client = match self.start_clone(run, accelerator, tsc_khz, &net).await {
            Some(client) => client,
            None => {
                if run.vmm.is_some() {
                    // A clone's QEMU ran and failed: its daemons served it and are done.
                    clone::discard(run).await;
                    self.core.forget_daemons();
                    net.renew_vhost(self.id()).await;
                    self.start_daemons(run).await?;
                }
                self.start_vmm(run, accelerator, tsc_khz, &net, &Boot::Cold, None)
                    .await?
            }
        };
        *self.qmp.lock().await = Some(client);
        Ok(())
    }

    async fn request_quit(&self) -> bool {
        let Some(mut client) = self.qmp.lock().await.take() else {
            return false;
        };
        if let Err(e) = client.quit().await {
            tracing::debug!(sandbox = %self.id(), error = %e, "QMP quit failed");
        }
        true
    }

    fn vmm_log(&self) -> &Path {
        &self.paths.qemu_log
    }
}

#[async_trait]
impl Hypervisor for QemuHypervisor {
    async fn start(&self) -> Result<(), HypervisorError> {
        self.core.start(self).await
    }

    async fn stop(&self) -> Result<(), HypervisorError> {
        let res = self.core.stop(self).await;
        // A VMM that died on its own leaves its QMP connection behind.
        self.qmp.lock().await.take();
        res
    }

    async fn wait(&self) -> Result<VmExit, HypervisorError> {
        self.core.wait().await
    }

    async fn kill(&self) -> Result<(), HypervisorError> {
        self.core.kill()
    }

    async fn pause(&self) -> Result<(), HypervisorError> {
        self.qmp_client().await?.stop().await?;
        tracing::info!(sandbox = %self.id(), "VM paused");
        Ok(())
    }

    async fn resume(&self) -> Result<(), HypervisorError> {
        self.qmp_client().await?.cont().await?;
        tracing::info!(sandbox = %self.id(), "VM resumed");
        Ok(())
    }

    async fn hotplug_vcpus(&self, total: u32) -> Result<u32, HypervisorError> {
        let mut qmp = self.qmp_client().await?;
        hotplug::plug_vcpus(&mut qmp, self.id(), &self.limits, total).await
    }

    async fn hotplug_memory(&self, total_mib: u32) -> Result<u32, HypervisorError> {
        let mut qmp = self.qmp_client().await?;
        hotplug::plug_memory(
            &mut qmp,
            self.id(),
            &self.limits,
            self.cfg.memory_mib,
            total_mib,
        )
        .await
    }

    fn agent_endpoint(&self) -> AgentEndpoint {
        match self.vsock {
            VsockMode::Kernel => AgentEndpoint::Vsock {
                cid: *self.cid.lock().unwrap_or_else(|e| e.into_inner()),
                port: self.cfg.agent_port,
            },
            VsockMode::User => AgentEndpoint::HybridVsock {
                path: self.paths.hybrid_vsock_socket.clone(),
                port: self.cfg.agent_port,
            },
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

    fn template(&self) -> Option<String> {
        self.core.template()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cids_are_valid_and_vary() {
        let mut seen = std::collections::HashSet::new();
        for attempt in 0..CID_ATTEMPTS {
            let cid = cid_candidate("sandbox-1", attempt);
            assert!((3..u32::MAX).contains(&cid));
            seen.insert(cid);
        }
        assert_eq!(seen.len(), usize::try_from(CID_ATTEMPTS).unwrap());
        assert_eq!(cid_candidate("a", 0), cid_candidate("a", 0));
        assert_ne!(cid_candidate("a", 0), cid_candidate("b", 0));
    }

    #[test]
    fn cid_in_use_detection() {
        assert!(cid_in_use(
            "qemu-system-x86_64: -device vhost-vsock-pci,guest-cid=5: vhost-vsock: unable to set \
             guest cid: Address already in use"
        ));
        assert!(!cid_in_use("qemu-system-x86_64: could not load kernel"));
    }

    fn cfg(dir: &Path) -> VmConfig {
        VmConfig {
            id: "unit".into(),
            state_dir: dir.join("state"),
            kernel: dir.join("missing-kernel"),
            initrd: dir.join("missing-initrd"),
            vsock: VsockChoice::VhostUser,
            ..VmConfig::default()
        }
    }

    #[tokio::test]
    async fn lifecycle_errors_before_start() {
        let dir = tempfile::tempdir().unwrap();
        let vm = QemuHypervisor::new(cfg(dir.path()));
        let endpoint = AgentEndpoint::HybridVsock {
            path: dir.path().join("state/vsock.sock"),
            port: 1024,
        };
        crate::lifecycle::assert_unstarted_contract(&vm, endpoint).await;
    }

    #[tokio::test]
    async fn start_with_missing_kernel_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let vm = QemuHypervisor::new(cfg(dir.path()));
        let err = vm.start().await.unwrap_err();
        assert!(matches!(err, HypervisorError::InvalidConfig(_)), "{err:?}");
        assert!(err.to_string().contains("missing-kernel"), "{err}");
        assert!(!dir.path().join("state").exists());
        assert!(matches!(
            vm.wait().await,
            Err(HypervisorError::NotRunning(_))
        ));
        assert!(matches!(
            vm.start().await,
            Err(HypervisorError::AlreadyStarted(_))
        ));
    }

    #[test]
    fn forced_kernel_vsock_without_device_is_explained() {
        // Pure, so it runs the same on hosts with and without the device.
        let why = kernel_vsock_unavailable(false).expect("refused without the device");
        assert!(
            why.contains("/dev/vhost-vsock") && why.contains("vhost-user"),
            "{why}"
        );
        assert_eq!(kernel_vsock_unavailable(true), None);
    }

    #[tokio::test]
    async fn missing_daemon_binary_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["k", "i"] {
            std::fs::write(dir.path().join(f), b"").unwrap();
        }
        let vm = QemuHypervisor::new(VmConfig {
            kernel: dir.path().join("k"),
            initrd: dir.path().join("i"),
            accelerator: crate::AcceleratorChoice::Tcg,
            vhost_user_vsock_path: "/nonexistent/vhost-device-vsock".into(),
            ..cfg(dir.path())
        });
        let err = vm.start().await.unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/vhost-device-vsock"),
            "{err}"
        );
        assert!(!dir.path().join("state").exists());
        assert!(vm.pids().is_empty());
    }
}
