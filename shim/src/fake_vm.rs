//! Test doubles of the VM side: a fake VM ([`FakeSandbox`]), its factory and fake pod
//! networking (re-exported by [`crate::fake`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use isola_config::Config;
use tokio::sync::watch;

use crate::agent::AgentApi;
use crate::error::{Result, ShimError};
use crate::fake::FakeAgent;
use crate::mounts::{HostBind, RootfsMount};
use crate::network::{Attachment, NetError, PodNetwork};
use crate::sandbox::{Sandbox, SandboxFactory};

#[async_trait]
impl crate::network::PodNetworking for FakeNetworking {
    async fn attach(&self, _id: &str, netns: &Path) -> std::result::Result<Attachment, NetError> {
        self.attached.lock().unwrap().push(netns.to_path_buf());
        if let Some(fail) = *self.fail.lock().unwrap() {
            return Err(fail(netns));
        }
        let network = self.network.lock().unwrap().clone();
        Ok(Attachment {
            network,
            taps: Vec::new(),
        })
    }
    async fn detach(
        &self,
        _id: &str,
        netns: &Path,
        _net: &PodNetwork,
    ) -> std::result::Result<(), NetError> {
        self.detached.lock().unwrap().push(netns.to_path_buf());
        Ok(())
    }
}

/// Makes the error a failing attach of the netns returns.
pub type NetFailure = fn(&Path) -> NetError;

/// Pod networking without network namespaces: "scans" a fixed [`PodNetwork`].
#[derive(Default)]
pub struct FakeNetworking {
    pub network: Mutex<PodNetwork>,
    pub attached: Mutex<Vec<PathBuf>>,
    pub detached: Mutex<Vec<PathBuf>>,
    /// Attach fails with this error.
    pub fail: Mutex<Option<NetFailure>>,
}

/// A fake VM: `kill` makes it "die"; `stop` is recorded.
pub struct FakeSandbox {
    pub agent: Arc<FakeAgent>,
    exit: watch::Sender<Option<String>>,
    pub stops: AtomicUsize,
    pub shared: Mutex<Vec<String>>,
    pub unshared: Mutex<Vec<String>>,
    pub binds: Mutex<Vec<HostBind>>,
    /// The VM can hotplug (else hotplug answers Unimplemented, as QEMU's backend does today).
    pub can_hotplug: AtomicBool,
    /// Hotplug requests: ("vcpus" | "memory", total).
    pub hotplugs: Mutex<Vec<(&'static str, u32)>>,
    /// The pod network it was booted with.
    pub network: Mutex<Option<PodNetwork>>,
    dir: PathBuf,
}

impl FakeSandbox {
    pub fn new(dir: &Path) -> Arc<FakeSandbox> {
        Arc::new(FakeSandbox {
            agent: Arc::new(FakeAgent::default()),
            exit: watch::channel(None).0,
            stops: AtomicUsize::new(0),
            shared: Mutex::new(Vec::new()),
            unshared: Mutex::new(Vec::new()),
            binds: Mutex::new(Vec::new()),
            can_hotplug: AtomicBool::new(false),
            hotplugs: Mutex::new(Vec::new()),
            network: Mutex::new(None),
            dir: dir.to_path_buf(),
        })
    }

    /// The VMM dies on its own.
    pub fn kill(&self) {
        self.agent.vm_died();
        self.exit.send_replace(Some("killed by signal 9".into()));
    }

    pub fn stopped(&self) -> bool {
        self.stops.load(Ordering::SeqCst) > 0
    }

    /// Whether the container `cid`'s rootfs share was taken down.
    pub fn was_unshared(&self, cid: &str) -> bool {
        self.unshared.lock().unwrap().iter().any(|c| c == cid)
    }
}

#[async_trait]
impl Sandbox for FakeSandbox {
    fn agent(&self) -> Arc<dyn AgentApi> {
        self.agent.clone()
    }
    fn pid(&self) -> u32 {
        4242
    }
    fn processes(&self) -> Vec<u32> {
        vec![std::process::id()]
    }
    fn endpoint(&self) -> String {
        "fake".into()
    }
    fn vm_dir(&self) -> PathBuf {
        self.dir.join("vm")
    }
    fn shared_dir(&self) -> PathBuf {
        self.dir.join("shared")
    }
    fn boot_timings(&self) -> isola_sandbox::BootTimings {
        isola_sandbox::BootTimings {
            vmm_ready: std::time::Duration::from_millis(12),
            agent_ready: std::time::Duration::from_millis(345),
        }
    }
    async fn wait(&self) -> String {
        let mut rx = self.exit.subscribe();
        let r = rx
            .wait_for(Option::is_some)
            .await
            .map(|v| v.clone().unwrap_or_default());
        r.unwrap_or_default()
    }
    async fn share_container(
        &self,
        cid: &str,
        _rootfs: Vec<RootfsMount>,
        _bundle_rootfs: PathBuf,
        binds: Vec<HostBind>,
    ) -> Result<()> {
        self.shared.lock().unwrap().push(cid.to_string());
        self.binds.lock().unwrap().extend(binds);
        Ok(())
    }
    async fn unshare_container(&self, cid: &str) -> Result<()> {
        self.unshared.lock().unwrap().push(cid.to_string());
        Ok(())
    }
    async fn stop(&self) -> Result<()> {
        self.stops.fetch_add(1, Ordering::SeqCst);
        self.agent.vm_died();
        self.exit.send_replace(Some("stopped".into()));
        Ok(())
    }
    async fn kill(&self) -> Result<()> {
        self.agent.vm_died();
        self.exit.send_replace(Some("killed by signal 9".into()));
        Ok(())
    }
    async fn hotplug_vcpus(&self, total: u32) -> Result<u32> {
        self.hotplugs.lock().unwrap().push(("vcpus", total));
        if !self.can_hotplug.load(Ordering::SeqCst) {
            return Err(ShimError::Unimplemented(
                "CPU hotplug: not implemented in the fake".into(),
            ));
        }
        Ok(total)
    }
    async fn hotplug_memory(&self, total_mib: u32) -> Result<u32> {
        self.hotplugs.lock().unwrap().push(("memory", total_mib));
        if !self.can_hotplug.load(Ordering::SeqCst) {
            return Err(ShimError::Unimplemented(
                "memory hotplug: not implemented in the fake".into(),
            ));
        }
        Ok(total_mib)
    }
    fn network(&self) -> Option<PodNetwork> {
        self.network.lock().unwrap().clone()
    }
}

/// Hands out one [`FakeSandbox`] (made fresh for each boot after a stop).
pub struct FakeFactory {
    pub current: Mutex<Arc<FakeSandbox>>,
    pub boots: AtomicUsize,
    pub fail: Mutex<Option<String>>,
    /// The configuration of the last boot (the pod's, after sizing and annotations).
    pub booted_with: Mutex<Option<Config>>,
    /// The pod networking seam: what a pod netns "holds".
    pub networking: FakeNetworking,
    /// Where fresh fake VMs keep their directories.
    pub dir: PathBuf,
}

#[async_trait]
impl SandboxFactory for FakeFactory {
    async fn boot(
        &self,
        config: &Config,
        id: &str,
        netns: Option<&Path>,
    ) -> Result<Arc<dyn Sandbox>> {
        if let Some(msg) = self.fail.lock().unwrap().clone() {
            return Err(ShimError::Internal(msg));
        }
        *self.booted_with.lock().unwrap() = Some(config.clone());
        let net = match netns {
            Some(ns) => {
                use crate::network::PodNetworking;
                Some(self.networking.attach(id, ns).await?.network)
            }
            None => None,
        };
        let mut current = self.current.lock().unwrap();
        if current.stopped() {
            let cat = current.agent.cat.load(Ordering::SeqCst);
            *current = FakeSandbox::new(&self.dir);
            current.agent.cat.store(cat, Ordering::SeqCst);
        }
        self.boots.fetch_add(1, Ordering::SeqCst);
        *current.network.lock().unwrap() = net;
        Ok(current.clone())
    }
}
