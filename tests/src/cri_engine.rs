//! The CRI runtime a [`crate::cri::CriEnv`] talks to: a private containerd or a private CRI-O,
//! with what the harness needs of either (socket, directories, log, image import).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Result};

use k8s_cri::v1::LinuxContainerSecurityContext;

use crate::containerd::{describe, run_with_deadline, Containerd};
use crate::crio::Crio;

/// The containerd namespace of the CRI plugin.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// A private CRI runtime.
pub enum Engine {
    Containerd(Containerd),
    Crio(Crio),
}

impl Engine {
    /// "containerd" or "CRI-O", for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Engine::Containerd(_) => "containerd",
            Engine::Crio(_) => "CRI-O",
        }
    }

    /// The private directory (logs, volumes, CNI state go below it).
    pub fn dir(&self) -> &Path {
        match self {
            Engine::Containerd(c) => c.dir(),
            Engine::Crio(c) => c.dir(),
        }
    }

    /// isola's state directory for this runtime's pods.
    pub fn state_dir(&self) -> &Path {
        match self {
            Engine::Containerd(c) => c.state_dir(),
            Engine::Crio(c) => c.state_dir(),
        }
    }

    /// The CRI socket.
    pub fn socket(&self) -> PathBuf {
        match self {
            Engine::Containerd(c) => c.socket(),
            Engine::Crio(c) => c.socket(),
        }
    }

    /// The runtime daemon's pid.
    pub fn pid(&self) -> Option<u32> {
        match self {
            Engine::Containerd(c) => c.pid(),
            Engine::Crio(c) => c.pid(),
        }
    }

    /// The runtime daemon's supervisor (pid, restarts, why it ended).
    pub fn daemon(&self) -> Option<&crate::supervisor::Supervisor> {
        match self {
            Engine::Containerd(c) => c.daemon(),
            Engine::Crio(c) => c.daemon(),
        }
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        match self {
            Engine::Containerd(c) => c.log_tail(n),
            Engine::Crio(c) => c.log_tail(n),
        }
    }

    /// Makes the OCI image tarball `tar` available to CRI under the name its index gives.
    pub fn import_image(&self, tar: &Path) -> Result<()> {
        ensure!(
            tar.is_file(),
            "image {} is missing: run `make images` first",
            tar.display()
        );
        let c = match self {
            Engine::Crio(c) => return c.import_image(tar),
            Engine::Containerd(c) => c,
        };
        let mut cmd = std::process::Command::new("ctr");
        cmd.arg("--address")
            .arg(c.socket())
            .args(["--namespace", CRI_NAMESPACE, "images", "import"])
            .arg(tar);
        let out = run_with_deadline(&mut cmd, None, Duration::from_secs(120))
            .map_err(|e| anyhow!("ctr images import {}: {e}", tar.display()))?;
        if !out.status.success() {
            bail!("ctr images import {}: {}", tar.display(), describe(&out));
        }
        Ok(())
    }

    /// The containerd, for tests that also use `ctr`; None under CRI-O.
    pub fn containerd(&self) -> Option<&Containerd> {
        match self {
            Engine::Containerd(c) => Some(c),
            Engine::Crio(_) => None,
        }
    }
}

impl crate::cri::CriEnv {
    /// Makes the OCI image tarball `tar` available to CRI (see [`Engine::import_image`]).
    pub fn import_image(&self, tar: &Path) -> Result<()> {
        self.engine.import_image(tar)
    }
}

/// The paths kubelet masks and makes read-only in every unprivileged container (its
/// `DefaultMaskedPaths` and `DefaultReadonlyPaths`).
const KUBELET_MASKED: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const KUBELET_READONLY: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// A container's security context as kubelet sends it: an unprivileged container that names
/// no masked or read-only paths gets kubelet's defaults (CRI runtimes take the lists as given).
pub fn as_kubelet_sends(mut s: LinuxContainerSecurityContext) -> LinuxContainerSecurityContext {
    if !s.privileged && s.masked_paths.is_empty() && s.readonly_paths.is_empty() {
        s.masked_paths = KUBELET_MASKED.iter().map(|p| p.to_string()).collect();
        s.readonly_paths = KUBELET_READONLY.iter().map(|p| p.to_string()).collect();
    }
    s
}
