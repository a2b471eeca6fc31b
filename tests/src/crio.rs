//! A private CRI-O for tests, as [`crate::containerd::Containerd`] is a private containerd: its
//! own storage (vfs), run root, sockets, CNI configuration, log and isola state under a short
//! temporary directory (`/tmp/ic.XXXXXX`), with the runtime handlers `isola`
//! (`runtime_type = "vm"`, the shim from the cargo target directory, configured as
//! `isola install crio` writes it) and `runc` (with conmon), the test pause image as
//! `pause_image`. Everything it starts mentions that directory, so dropping a [`Crio`] stops
//! CRI-O and removes what is left, as for containerd.
//!
//! CRI-O is not on any registry this project reaches: its binaries come from
//! `../shared/k8s/` (`make k8s` unpacks them into `build/k8s/bin`; `$ISOLA_K8S_BIN` points
//! elsewhere). A missing binary fails the test naming what to do.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::Signal;

use crate::containerd::{cleanup_dir, describe, reap_stale, DIR_PREFIX, OWNER_FILE};
use crate::ctr_child::run_with_deadline;
use crate::supervisor::{Policy, Supervisor};
use crate::{repo_root, TestEnv};

/// The directory holding crio, pinns and the Kubernetes binaries.
pub fn k8s_bin_dir() -> Result<PathBuf> {
    let dir = std::env::var_os("ISOLA_K8S_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("build/k8s/bin"));
    for bin in ["crio", "pinns"] {
        ensure!(
            dir.join(bin).is_file(),
            "{} is missing: run `make k8s` (it unpacks ../shared/k8s/k8s-1.32.13-crio-1.32.13.tar.xz), \
             or set ISOLA_K8S_BIN",
            dir.join(bin).display()
        );
    }
    Ok(dir)
}

/// A running private CRI-O.
pub struct Crio {
    dir: PathBuf,
    env: TestEnv,
    /// CRI-O, forked and awaited by its supervisor's thread.
    daemon: Option<Supervisor>,
}

impl Crio {
    /// Starts a private CRI-O and waits until it answers on its socket.
    pub fn start() -> Result<Crio> {
        Crio::start_in(Policy::Never)
    }

    /// A node's CRI-O: [`Crio::start`], restarted by its supervisor whenever it exits without
    /// the harness asking (same configuration, storage, run root and socket), with its pid in
    /// `pidfile` (rewritten on every start).
    pub fn start_supervised(pidfile: PathBuf) -> Result<Crio> {
        Crio::start_in(Policy::Always { pidfile })
    }

    fn start_in(policy: Policy) -> Result<Crio> {
        let bin = k8s_bin_dir()?;
        reap_stale();
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir_in("/tmp")
            .context("creating the private CRI-O directory")?
            .keep();
        std::fs::write(dir.join(OWNER_FILE), std::process::id().to_string())?;
        let mut env = TestEnv::new();
        env.config.runtime.state_dir = dir.join("s");
        env.dir = tempfile::Builder::new().prefix("env").tempdir_in(&dir)?;
        std::fs::create_dir_all(&env.config.runtime.state_dir)?;
        crate::cri::write_cni_config(&dir)?;
        let isola_config = env.write_config();
        std::fs::create_dir_all(dir.join("crio.conf.d"))?;
        std::fs::create_dir_all(dir.join(API_DIR))?;
        crate::handlers::install_crio(&dir.join("crio.conf.d"), &isola_config, env.dir.path())?;
        std::fs::write(dir.join("policy.json"), POLICY)?;
        let config = dir.join("crio.conf");
        std::fs::write(&config, crio_config(&dir, &bin))?;
        let log = dir.join("crio.log");
        std::fs::File::create(&log)?;
        let (crio, log_path, conf_d) = (bin.join("crio"), log.clone(), dir.join("crio.conf.d"));
        // One command line per (re)start, the log appended to.
        let make = move || -> std::io::Result<Command> {
            let log = std::fs::OpenOptions::new().append(true).open(&log_path)?;
            let mut cmd = Command::new(&crio);
            cmd.arg("--config")
                .arg(&config)
                .arg("--config-dir")
                .arg(&conf_d)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            // SAFETY: only the async-signal-safe prctl(2) runs in the child before exec.
            unsafe {
                cmd.pre_exec(|| {
                    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
                });
            }
            Ok(cmd)
        };
        let daemon = match Supervisor::start("crio", &log, policy, Box::new(make)) {
            Ok(d) => d,
            Err(e) => {
                cleanup_dir(&dir);
                bail!("cannot start {}: {e}", bin.join("crio").display());
            }
        };
        let mut crio = Crio {
            dir,
            env,
            daemon: Some(daemon),
        };
        crio.wait_ready()?;
        Ok(crio)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.socket().exists() {
            if let Some(why) = self.daemon.as_ref().and_then(|d| d.ended()) {
                bail!("{why} before listening; its log:\n{}", self.log_tail(40));
            }
            ensure!(
                Instant::now() < deadline,
                "crio did not listen on {} within 60 s; its log:\n{}",
                self.socket().display(),
                self.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// The private directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// CRI-O's CRI socket, in a directory of its own ([`API_DIR`]).
    pub fn socket(&self) -> PathBuf {
        self.dir.join(API_DIR).join("crio.sock")
    }

    /// isola's state directory for this CRI-O's pods.
    pub fn state_dir(&self) -> &Path {
        &self.env.config.runtime.state_dir
    }

    /// CRI-O's pid.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().and_then(|d| d.pid())
    }

    /// The supervisor of CRI-O (its pid, restarts, why it ended).
    pub fn daemon(&self) -> Option<&Supervisor> {
        self.daemon.as_ref()
    }

    /// The last `n` lines of CRI-O's log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = std::fs::read_to_string(self.dir.join("crio.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Copies the OCI image tarball `tar` into CRI-O's storage (skopeo).
    pub fn import_image(&self, tar: &Path) -> Result<()> {
        ensure!(
            tar.is_file(),
            "image {} is missing: run `make images` first",
            tar.display()
        );
        let name = archive_ref_name(tar)?;
        let d = self.dir.display();
        let mut cmd = Command::new("skopeo");
        cmd.args(["--insecure-policy", "copy", "--quiet"])
            .arg(format!("oci-archive:{}", tar.display()))
            .arg(format!(
                "containers-storage:[vfs@{d}/storage+{d}/run]{name}"
            ));
        let out = run_with_deadline(&mut cmd, None, Duration::from_secs(120))
            .map_err(|e| anyhow::anyhow!("skopeo copy of {}: {e}", tar.display()))?;
        ensure!(
            out.status.success(),
            "skopeo copy of {}: {}",
            tar.display(),
            describe(&out)
        );
        Ok(())
    }

    fn stop(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            daemon.stop(Duration::from_secs(15));
        }
    }
}

impl Drop for Crio {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- private CRI-O {} (log tail) ---\n{}\n---",
                self.dir.display(),
                self.log_tail(60)
            );
        }
        self.stop();
        cleanup_dir(&self.dir);
    }
}

/// The image name an OCI layout archive's index gives its manifest
/// (`org.opencontainers.image.ref.name`, as scripts/build-test-image.sh writes it).
fn archive_ref_name(tar: &Path) -> Result<String> {
    let mut cmd = Command::new("tar");
    cmd.arg("-xOf").arg(tar).arg("index.json");
    let out = run_with_deadline(&mut cmd, None, Duration::from_secs(30))
        .map_err(|e| anyhow::anyhow!("reading the index of {}: {e}", tar.display()))?;
    ensure!(
        out.status.success(),
        "reading the index of {}: {}",
        tar.display(),
        describe(&out)
    );
    let index: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("{} names no image in its index", tar.display()))
}

/// Accept every image: the tests' images are built locally and never signed.
/// The socket's directory in CRI-O's: a host directory an installer pod can mount without it
/// containing CRI-O's storage (CRI-O forces HostToContainer propagation on a hostPath that
/// holds its storage root, which needs a shared or slave mount this host's / is not).
pub const API_DIR: &str = "api";
const POLICY: &str = r#"{"default": [{"type": "insecureAcceptAnything"}]}"#;

/// The configuration of a private CRI-O in `dir`, with its binaries in `bin` (the isola
/// handler is in the drop-in directory).
fn crio_config(dir: &Path, bin: &Path) -> String {
    let d = dir.display();
    format!(
        r#"# A private CRI-O for isola's tests (tests/src/crio.rs).
[crio]
root = "{d}/storage"
runroot = "{d}/run"
storage_driver = "vfs"
log_dir = "{d}/pod-logs-default"
version_file = "{d}/version"
version_file_persist = "{d}/version-persist"
clean_shutdown_file = "{d}/clean.shutdown"

[crio.api]
listen = "{d}/api/crio.sock"
stream_address = "127.0.0.1"
stream_port = "0"

[crio.runtime]
default_runtime = "runc"
cgroup_manager = "cgroupfs"
conmon_cgroup = "pod"
log_level = "debug"
hooks_dir = []
namespaces_dir = "{d}/ns"
pinns_path = "{bin}/pinns"
container_exits_dir = "{d}/exits"
container_attach_socket_dir = "{d}/attach"
absent_mount_sources_to_reject = []

[crio.runtime.runtimes.runc]
runtime_path = "/usr/sbin/runc"
runtime_type = "oci"
runtime_root = "{d}/runc"
monitor_path = "/usr/bin/conmon"

[crio.image]
signature_policy = "{d}/policy.json"
pause_image = "{pause}"
pause_command = ""

[crio.network]
network_dir = "{d}/cni/net.d"
plugin_dirs = ["/usr/lib/cni"]

[crio.metrics]
enable_metrics = false
"#,
        bin = bin.display(),
        pause = crate::cri::PAUSE_IMAGE,
    )
}
