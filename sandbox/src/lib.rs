//! One pod VM: booted from the runtime configuration, with its agent connected.
//!
//! Both the shim and `isola check`/`isola bench` start VMs through [`BootedVm::boot`], so the
//! path a user checks is the path pods take.

mod bringup;
mod console;
pub mod debug_console;
pub mod memfd;
pub mod record;
pub mod shim_metrics;
mod vmconfig;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use isola_agent_client::{AgentClient, ClientError};
use isola_agent_proto::READY_PORT;
use isola_config::Config;
use isola_hypervisor::{Hypervisor, HypervisorError, NetDevice, VmConfig};

pub use console::tail as console_tail;
pub use vmconfig::{vm_config, vm_dir_name, SandboxPaths, MAX_VM_DIR_NAME, SHARED_FS_TAG};

/// Failure to bring a VM up or down.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("creating the sandbox directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("starting the VM: {0}")]
    Start(#[source] HypervisorError),
    #[error("the VM started but its agent did not answer: {source}\n--- last lines of the guest console ({console}) ---\n{tail}")]
    Agent {
        source: ClientError,
        console: PathBuf,
        tail: String,
    },
    #[error("the VM's VMM exited ({exit}) before its agent answered\n--- last lines of the guest console ({console}) ---\n{tail}")]
    Exited {
        exit: isola_hypervisor::VmExit,
        console: PathBuf,
        tail: String,
    },
    #[error("stopping the VM: {0}")]
    Stop(#[source] HypervisorError),
}

/// Makes the hypervisor backend of one VM from its configuration:
/// [`isola_hypervisor::new_vm`] for real VMs, a fake in tests ([`BootedVm::boot_with_backend`]).
pub type NewVm = dyn Fn(VmConfig) -> Arc<dyn Hypervisor> + Send + Sync;

/// How long each boot phase took, from just before the VMM was spawned.
#[derive(Debug, Clone, Copy)]
pub struct BootTimings {
    /// Helper daemons and the VMM running, control channel connected.
    pub vmm_ready: Duration,
    /// The agent answered Health.Check.
    pub agent_ready: Duration,
}

/// A running VM with a connected agent.
pub struct BootedVm {
    pub id: String,
    pub vm: Arc<dyn Hypervisor>,
    pub agent: AgentClient,
    pub paths: SandboxPaths,
    pub timings: BootTimings,
    /// Whether [`BootedVm::boot`] created the shared directory (and so removes it): a caller
    /// that prepared it (the shim mounts it) tears it down itself.
    owns_shared_dir: bool,
}

/// The VM description a pod's VM starts with: [`vm_config`], plus, over hybrid vsock (the
/// returned flag), the port the agent announces its readiness on (the host waits for that
/// before dialing; see isola_agent_proto::READY_PORT for why). `isola template` uses it too, so
/// that its templates are the ones pods look for.
pub fn pod_vm_config(cfg: &Config, id: &str, paths: &SandboxPaths) -> (VmConfig, bool) {
    let mut vm_cfg = vm_config(cfg, id, paths);
    let hybrid = isola_hypervisor::uses_hybrid_vsock(
        vm_cfg.kind,
        vm_cfg.vsock,
        std::path::Path::new(isola_config::VHOST_VSOCK_DEVICE).exists(),
    );
    if hybrid {
        vm_cfg
            .kernel_params
            .push_str(&format!(" agent.ready_port={READY_PORT}"));
    }
    (vm_cfg, hybrid)
}

impl BootedVm {
    /// Boots sandbox `id`'s VM and waits for its agent. On failure nothing is left running.
    pub async fn boot(cfg: &Config, id: &str) -> Result<BootedVm, SandboxError> {
        Self::boot_with_network(cfg, id, Vec::new()).await
    }

    /// [`BootedVm::boot`] with virtio-net devices on the given tap descriptors (the VM's only
    /// copies once it runs: the caller should drop its own).
    pub async fn boot_with_network(
        cfg: &Config,
        id: &str,
        network: Vec<NetDevice>,
    ) -> Result<BootedVm, SandboxError> {
        Self::boot_with_backend(cfg, id, network, &isola_hypervisor::new_vm).await
    }

    /// [`BootedVm::boot_with_network`] on the backend `new_vm` makes from the VM's
    /// configuration (instead of the one [`isola_hypervisor::new_vm`] picks).
    pub async fn boot_with_backend(
        cfg: &Config,
        id: &str,
        network: Vec<NetDevice>,
        new_vm: &NewVm,
    ) -> Result<BootedVm, SandboxError> {
        let paths = SandboxPaths::new(&cfg.runtime.state_dir, id);
        let (mut vm_cfg, hybrid) = pod_vm_config(cfg, id, &paths);
        vm_cfg.network = network;
        let owns_shared_dir = vm_cfg.shared_fs.is_some() && !paths.shared_dir.exists();
        if owns_shared_dir {
            std::fs::create_dir_all(&paths.shared_dir).map_err(|source| SandboxError::Dir {
                path: paths.shared_dir.clone(),
                source,
            })?;
        }
        let started = Instant::now();
        let up = bringup::start(
            id,
            vm_cfg,
            hybrid,
            cfg.agent.dial_timeout(),
            new_vm,
            started,
        )
        .await;
        let bringup::Up {
            vm,
            agent,
            vmm_ready,
        } = match up {
            Ok(up) => up,
            Err(e) => {
                remove_shared_dir(&paths, owns_shared_dir);
                return Err(e);
            }
        };
        let timings = BootTimings {
            vmm_ready,
            agent_ready: started.elapsed(),
        };
        tracing::info!(
            sandbox = id,
            vmm_ms = vmm_ready.as_millis() as u64,
            agent_ms = timings.agent_ready.as_millis() as u64,
            "VM ready"
        );
        Ok(BootedVm {
            id: id.to_string(),
            vm,
            agent,
            paths,
            timings,
            owns_shared_dir,
        })
    }

    /// Stops the VM and removes the sandbox's directories.
    pub async fn stop(&self) -> Result<(), SandboxError> {
        let result = self.vm.stop().await.map_err(SandboxError::Stop);
        remove_shared_dir(&self.paths, self.owns_shared_dir);
        result
    }
}

/// Removes the (empty) shared directory if `owned`. Never recursive: a leftover mount inside it
/// must not lead to deleting the files it exposes.
fn remove_shared_dir(paths: &SandboxPaths, owned: bool) {
    if !owned {
        return;
    }
    match std::fs::remove_dir(&paths.shared_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(dir = %paths.shared_dir.display(), error = %e, "could not remove the shared directory")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use isola_hypervisor::{Accelerator, AgentEndpoint, VmExit};

    use super::*;

    /// A backend that starts (or fails to) without a VMM: nobody serves its agent endpoint.
    struct NoVmm {
        cfg: VmConfig,
        fail: Option<fn() -> HypervisorError>,
        stops: Arc<AtomicUsize>,
        /// How its VMM ends: never (None), or at once.
        exit: Option<VmExit>,
    }

    #[async_trait::async_trait]
    impl Hypervisor for NoVmm {
        async fn start(&self) -> Result<(), HypervisorError> {
            self.fail.map_or(Ok(()), |f| Err(f()))
        }
        async fn stop(&self) -> Result<(), HypervisorError> {
            self.stops.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        async fn wait(&self) -> Result<VmExit, HypervisorError> {
            self.exit
                .ok_or_else(|| HypervisorError::NotStarted(self.cfg.id.clone()))
        }
        async fn kill(&self) -> Result<(), HypervisorError> {
            Err(HypervisorError::NotStarted(self.cfg.id.clone()))
        }
        async fn pause(&self) -> Result<(), HypervisorError> {
            Ok(())
        }
        async fn resume(&self) -> Result<(), HypervisorError> {
            Ok(())
        }
        async fn hotplug_vcpus(&self, total: u32) -> Result<u32, HypervisorError> {
            Ok(total)
        }
        async fn hotplug_memory(&self, total_mib: u32) -> Result<u32, HypervisorError> {
            Ok(total_mib)
        }
        fn agent_endpoint(&self) -> AgentEndpoint {
            AgentEndpoint::HybridVsock {
                path: self.cfg.state_dir.join("nobody.sock"),
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
        fn template(&self) -> Option<String> {
            // A clone whenever templates are on.
            self.cfg.templates.as_ref().map(|_| TEMPLATE.to_string())
        }
    }

    const TEMPLATE: &str = "0123abcd";

    fn config(state_dir: &std::path::Path) -> Config {
        let mut cfg = Config::default();
        cfg.runtime.state_dir = state_dir.to_path_buf();
        // Kernel vsock: no readiness wait, the agent endpoint is dialed right away.
        cfg.hypervisor.vsock = isola_config::Vsock::Vhost;
        cfg.agent.dial_timeout_ms = 200;
        // Booted VMs; the tests of clones turn templates on.
        cfg.factory.template = false;
        cfg
    }

    async fn boot(
        cfg: &Config,
        fail: Option<fn() -> HypervisorError>,
    ) -> (Result<BootedVm, SandboxError>, usize) {
        let (booted, stops, _) = boot_made(cfg, fail, None, Vec::new()).await;
        (booted, stops)
    }

    /// Boots on [`NoVmm`]s; also returns the configuration of each VM made.
    async fn boot_made(
        cfg: &Config,
        fail: Option<fn() -> HypervisorError>,
        exit: Option<VmExit>,
        network: Vec<NetDevice>,
    ) -> (Result<BootedVm, SandboxError>, usize, Vec<VmConfig>) {
        let stops = Arc::new(AtomicUsize::new(0));
        let made = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, m) = (stops.clone(), made.clone());
        let new_vm = move |cfg: VmConfig| -> Arc<dyn Hypervisor> {
            m.lock().unwrap().push(cfg.clone());
            Arc::new(NoVmm {
                cfg,
                fail,
                stops: s.clone(),
                exit,
            })
        };
        let booted = BootedVm::boot_with_backend(cfg, "s1", network, &new_vm).await;
        let made = made.lock().unwrap().clone();
        (booted, stops.load(Ordering::SeqCst), made)
    }

    /// A template directory in the store of `cfg`.
    fn template_dir(cfg: &Config) -> PathBuf {
        let dir = cfg.template_dir().join(TEMPLATE);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ram"), b"x").unwrap();
        dir
    }

    #[tokio::test]
    async fn a_clone_that_never_answers_is_replaced_by_a_boot_on_the_same_taps() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = config(tmp.path());
        cfg.factory.template = true;
        let template = template_dir(&cfg);
        let tap = Arc::new(std::os::fd::OwnedFd::from(
            std::fs::File::open("/dev/null").unwrap(),
        ));
        let nic = NetDevice {
            mac: "02:00:00:00:00:01".into(),
            mtu: 0,
            tap: tap.clone(),
        };
        let (booted, stops, made) = boot_made(&cfg, None, None, vec![nic]).await;
        match booted {
            // The boot's agent does not answer either (nobody serves it).
            Err(SandboxError::Agent { .. }) => {}
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("booted"),
        }
        assert_eq!(made.len(), 2, "a clone, then a boot");
        assert!(made[0].templates.is_some() && made[1].templates.is_none());
        assert!(
            Arc::ptr_eq(&made[1].network[0].tap, &tap),
            "the boot gets the clone's tap"
        );
        assert_eq!(stops, 2, "both VMs are stopped");
        assert!(!template.exists(), "the clone's template is removed");
        drop(made);
        assert_eq!(Arc::strong_count(&tap), 1, "no copy of the tap is kept");
        assert!(!SandboxPaths::new(tmp.path(), "s1").shared_dir.exists());
    }

    #[tokio::test]
    async fn a_vmm_that_exits_ends_the_wait_at_once_and_a_dead_clone_falls_back_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = config(tmp.path());
        cfg.agent.dial_timeout_ms = 60_000;
        let died = VmExit {
            code: None,
            signal: Some(6),
        };
        let t0 = Instant::now();
        let (booted, stops, made) = boot_made(&cfg, None, Some(died), Vec::new()).await;
        match booted {
            Err(e @ SandboxError::Exited { .. }) => {
                assert!(e.to_string().contains("killed by signal 6"), "{e}")
            }
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("booted"),
        }
        assert_eq!((stops, made.len()), (1, 1));
        cfg.factory.template = true;
        let template = template_dir(&cfg);
        let (booted, stops, made) = boot_made(&cfg, None, Some(died), Vec::new()).await;
        assert!(matches!(booted, Err(SandboxError::Exited { .. })));
        assert_eq!((stops, made.len()), (2, 2), "the clone, then the boot");
        assert!(!template.exists());
        assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    }

    #[tokio::test]
    async fn a_backend_that_fails_to_start_keeps_its_error_and_leaves_no_shared_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path());
        let (booted, _) = boot(
            &cfg,
            Some(|| HypervisorError::InvalidConfig("no such machine".into())),
        )
        .await;
        match booted {
            Err(SandboxError::Start(HypervisorError::InvalidConfig(m))) => {
                assert_eq!(m, "no such machine")
            }
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("booted"),
        }
        let paths = SandboxPaths::new(tmp.path(), "s1");
        assert!(!paths.shared_dir.exists(), "the shared directory it made");
    }

    #[tokio::test]
    async fn an_agent_that_never_answers_stops_the_vm_and_says_so() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path());
        let (booted, stops) = boot(&cfg, None).await;
        match booted {
            Err(SandboxError::Agent { console, .. }) => {
                assert!(console.ends_with("console.log"), "{}", console.display())
            }
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("booted"),
        }
        assert_eq!(stops, 1, "the VM is stopped again");
        assert!(!SandboxPaths::new(tmp.path(), "s1").shared_dir.exists());
    }
}
