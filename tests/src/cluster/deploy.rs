//! isola installed onto the test node from the cluster, as a user does it: the isola-deploy
//! image (`make deploy-image`: build/images/isola-deploy.tar) imported into the node's runtime,
//! and two variants of it built here from the same payload (build/deploy-payload):
//! - `:v2`, the payload plus one file: another version id, for an upgrade;
//! - `:broken`, the payload without the guest kernel: an install that must fail.
//!
//! The installer always gets the test node's own settings ([`NodeSettings`]): the runtime's
//! configuration in the cluster's directory, a restart through the supervisor's pidfile
//! (`signal:<pidfile>:TERM`, as systemd's `Restart=always` would bring it back), and a prefix
//! under the cluster's directory, so nothing lands in the host's /opt and everything left is
//! found and killed with the cluster.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use super::{checks, Cluster, Runtime, NODE};
use crate::containerd::describe;

/// The three images (names inside their archives).
pub const IMAGE: &str = "localhost/isola/isola-deploy:latest";
pub const IMAGE_V2: &str = "localhost/isola/isola-deploy:v2";
pub const IMAGE_BROKEN: &str = "localhost/isola/isola-deploy:broken";

/// The node label and annotations the installer sets (cli/src/deploy/node.rs).
pub const LABEL: &str = "isola.io/runtime";
pub const VERSION_ANNOTATION: &str = "isola.io/version";
pub const HANDLERS_ANNOTATION: &str = "isola.io/handlers";

/// The capabilities an unprivileged installer needs: nsenter into the host's namespaces
/// (SYS_ADMIN, SYS_CHROOT, SYS_PTRACE for /proc/1/ns), signal the runtime (KILL), write the
/// host's files as root (DAC_OVERRIDE, FOWNER, CHOWN, FSETID).
pub const INSTALLER_CAPABILITIES: &[&str] = &[
    "SYS_ADMIN",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "KILL",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "CHOWN",
    "FSETID",
];

/// The host directories an installer on the test node touches, mounted one by one where the
/// node's / cannot be: CRI-O forces HostToContainer propagation on a hostPath that holds its
/// storage root (/ does), which needs a shared or slave mount, and this host's / is private.
/// They are the cluster's directory (prefix, pidfile), CRI-O's drop-ins and socket directory,
/// and /proc.
pub fn host_paths(cluster: &Cluster) -> Result<Vec<String>> {
    let engine = cluster.engine.as_ref().context("no runtime")?;
    Ok([
        cluster.dir().to_path_buf(),
        engine.dir().join("crio.conf.d"),
        engine.dir().join(crate::crio::API_DIR),
        PathBuf::from("/proc"),
    ]
    .iter()
    .map(|p| p.to_string_lossy().into_owned())
    .collect())
}

/// Whether this host's capability bounding set has every capability the kernel knows. CRI-O
/// gives a privileged container all of them (containerd: those it has itself), so where the
/// host lacks one (this CI's containers lack CAP_SYS_RESOURCE) runc refuses a privileged
/// container under CRI-O: "unable to apply caps: operation not permitted".
pub fn host_has_every_capability() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let bounding = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok());
    let last: Option<u32> = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok());
    match (bounding, last) {
        (Some(b), Some(last)) if last < 63 => b == (1u64 << (last + 1)) - 1,
        _ => false,
    }
}

/// Whether a privileged pod can run on `cluster`'s node (see [`host_has_every_capability`]).
pub fn privileged_pods_run(cluster: &Cluster) -> bool {
    cluster.runtime == Runtime::Containerd || host_has_every_capability()
}

/// What the installer is told about the test node.
pub struct NodeSettings {
    pub runtime: &'static str,
    /// containerd's config.toml or CRI-O's drop-in directory.
    pub runtime_config: PathBuf,
    pub restart: String,
    /// Where the installer links containerd's shims (`ISOLA_DEPLOY_SHIM_DIR`): a directory on
    /// the test containerd's `PATH`, not the host's /usr/local/bin.
    pub shim_dir: PathBuf,
    /// The runtime's socket (not the usual one: the test node's runtime is private).
    pub socket: PathBuf,
    pub prefix: PathBuf,
    /// The host process the installer enters (`ISOLA_DEPLOY_HOST_PID`): this test process.
    /// The test host's PID 1 is a sandbox's init that nobody may enter; on a real node it is
    /// the init, the default.
    pub host_pid: u32,
}

impl NodeSettings {
    pub fn of(cluster: &Cluster) -> Result<NodeSettings> {
        let engine = cluster.engine.as_ref().context("no runtime")?;
        let (runtime, runtime_config) = match cluster.runtime {
            Runtime::Containerd => ("containerd", engine.dir().join("config.toml")),
            Runtime::Crio => ("crio", engine.dir().join("crio.conf.d")),
        };
        Ok(NodeSettings {
            runtime,
            runtime_config,
            restart: format!("signal:{}:TERM", cluster.runtime_pidfile().display()),
            socket: engine.socket(),
            shim_dir: engine.dir().join(crate::containerd::NODE_BIN),
            prefix: cluster.dir().join("opt-isola"),
            host_pid: std::process::id(),
        })
    }
}

/// Every file of the runtime's configuration (the file, or the drop-in directory's files) and
/// its bytes: what an uninstall must give back exactly.
pub fn config_snapshot(path: &Path) -> Result<BTreeMap<PathBuf, Vec<u8>>> {
    let mut out = BTreeMap::new();
    if path.is_dir() {
        for e in std::fs::read_dir(path)? {
            let p = e?.path();
            out.insert(p.clone(), std::fs::read(&p)?);
        }
    } else {
        out.insert(path.to_path_buf(), std::fs::read(path)?);
    }
    Ok(out)
}

/// Builds `:v2` and `:broken` from build/deploy-payload (cached by the image script) and imports
/// the three images into the node's runtime.
pub fn import_images(cluster: &Cluster) -> Result<()> {
    let root = crate::repo_root();
    let images = root.join("build/images");
    let payload = root.join("build/deploy-payload");
    let latest = images.join("isola-deploy.tar");
    ensure!(
        latest.is_file() && payload.join("bin/isola").is_file(),
        "{} or {} is missing: run `make deploy-image`",
        latest.display(),
        payload.display()
    );
    let variant =
        |name: &str, image: &str, change: &dyn Fn(&Path) -> Result<()>| -> Result<PathBuf> {
            let dir = root.join(format!("build/deploy-payload-{name}"));
            let _ = std::fs::remove_dir_all(&dir);
            run(Command::new("cp").arg("-a").arg(&payload).arg(&dir))?;
            change(&dir)?;
            let tar = images.join(format!("isola-deploy-{name}.tar"));
            run(Command::new(root.join("scripts/build-deploy-image.sh"))
                .arg(&dir)
                .arg(&tar)
                .env("IMAGE_NAME", image))?;
            Ok(tar)
        };
    let v2 = variant("v2", IMAGE_V2, &|d| {
        Ok(std::fs::write(
            d.join("share/isola/release-note.txt"),
            "the test's second version\n",
        )?)
    })?;
    let broken = variant("broken", IMAGE_BROKEN, &|d| {
        Ok(std::fs::remove_file(d.join("share/isola/vmlinux"))?)
    })?;
    let engine = cluster.engine.as_ref().context("no runtime")?;
    for tar in [latest, v2, broken] {
        engine.import_image(&tar)?;
    }
    Ok(())
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(out.status.success(), "{cmd:?}: {}", describe(&out));
    Ok(())
}

/// The node's labels and annotations.
pub async fn node_metadata(cluster: &Cluster) -> Result<(Value, Value)> {
    let node: Value = serde_json::from_str(
        &checks::kubectl(cluster, &["get", "node", NODE, "-o", "json"]).await?,
    )?;
    Ok((
        node["metadata"]["labels"].clone(),
        node["metadata"]["annotations"].clone(),
    ))
}

/// Whether the node carries `isola.io/runtime=ready`.
pub async fn node_labelled(cluster: &Cluster) -> Result<bool> {
    let (labels, _) = node_metadata(cluster).await?;
    Ok(labels[LABEL] == "ready")
}

/// The version ids installed under `prefix` (`<prefix>/versions/*`).
pub fn installed_versions(prefix: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(prefix.join("versions"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A pod of RuntimeClass `class` that sleeps (the test image, nothing pulled).
pub fn pod(name: &str, class: &str) -> String {
    super::workload::sleeper_pod_of(name, Some(class), "memory: 256Mi")
}

/// The processes whose command line or executable mentions `path` (a shim re-executes
/// itself through /proc/self/exe: its executable, not its command line, names the version).
pub fn processes_under(path: &Path) -> Vec<(u32, String)> {
    let needle = path.to_string_lossy();
    let mut found = crate::processes_mentioning(&needle);
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let exe = std::fs::read_link(e.path().join("exe")).unwrap_or_default();
        if exe.to_string_lossy().contains(needle.as_ref()) && !found.iter().any(|(p, _)| *p == pid)
        {
            found.push((pid, exe.display().to_string()));
        }
    }
    found
}
