//! `isola deploy install|uninstall`: isola installed onto a node from a payload directory (what
//! the `isola-deploy` image carries), as the DaemonSet `deploy/isola-deploy.yaml` runs it with
//! the node's `/` at `/host`, or by hand on the node with `--host-root /`.
//!
//! Every input is a flag, also read from the environment (`ISOLA_DEPLOY_*`, for the DaemonSet);
//! nothing about the node is guessed. What each step does and why: `install` and `uninstall`;
//! the installed layout: `layout`; versions and their collection: `version`, `gc`; the
//! runtime's configuration, saved and put back byte for byte: `backup`, `register`; how the
//! runtime is restarted: `restart`; the node's label for isola pods, through the API server:
//! `node` (with `kube_api`); whether a terminated pod's DaemonSet is being deleted: `daemonset`.

mod backup;
mod daemonset;
mod gc;
mod install;
pub(crate) mod kube_api;
pub(crate) mod layout;
pub(crate) mod node;
mod register;
pub(crate) mod restart;
mod shim_link;
mod uninstall;
mod version;
mod version_config;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

pub use install::Installed;
use layout::{Handler, Layout};
use register::Runtime;
use restart::Strategy;

#[derive(Subcommand)]
pub enum Deploy {
    /// Install the payload under --prefix (a new version, atomically), register the runtime
    /// handlers with the node's containerd or CRI-O, restart it when its configuration changed,
    /// check the node; idempotent
    Install(InstallArgs),
    /// Undo `isola deploy install`: the runtime's configuration back byte for byte, a restart,
    /// --prefix removed; does nothing (and says so) when nothing is installed
    Uninstall(UninstallArgs),
    /// Exit 0 when this pod's DaemonSet is gone or being deleted (so its SIGTERM means
    /// uninstall), 1 when it is still there (an update, drain or restart) or the API server
    /// cannot say
    ShouldUninstall(daemonset::ShouldUninstallArgs),
}

#[derive(Args)]
pub struct Common {
    /// Where the node's / is mounted in this process's view ("/" on the node itself)
    #[arg(long, env = "ISOLA_DEPLOY_HOST_ROOT")]
    host_root: PathBuf,
    /// The host process whose namespaces the runtime's restart and `isola check` enter from a
    /// pod (nsenter -t): the node's init; another where PID 1 cannot be entered (a node that
    /// is itself a sandbox)
    #[arg(long, env = "ISOLA_DEPLOY_HOST_PID", default_value_t = 1)]
    host_pid: u32,
    /// The install directory on the host; isola owns it entirely
    #[arg(long, env = "ISOLA_DEPLOY_PREFIX", default_value = "/opt/isola")]
    prefix: PathBuf,
    /// How the runtime takes up its new configuration: systemd:<unit>, signal:<pidfile>:<SIG>
    /// (e.g. TERM to a supervised runtime; HUP does not make CRI-O 1.32 take a new handler),
    /// command:<argv...> or none
    #[arg(long, env = "ISOLA_DEPLOY_RESTART")]
    restart: Strategy,
    /// The runtime's socket on the host, waited for after a restart (default: containerd's
    /// /run/containerd/containerd.sock, CRI-O's /run/crio/crio.sock)
    #[arg(long, env = "ISOLA_DEPLOY_RUNTIME_SOCKET")]
    runtime_socket: Option<PathBuf>,
    /// How long to wait for that socket, in seconds
    #[arg(long, env = "ISOLA_DEPLOY_WAIT_SECONDS", default_value_t = 120)]
    wait_seconds: u64,
    #[command(flatten)]
    node: node::NodeArgs,
}

#[derive(Args)]
pub struct InstallArgs {
    #[command(flatten)]
    common: Common,
    /// The node's container runtime
    #[arg(long, env = "ISOLA_DEPLOY_RUNTIME")]
    runtime: Runtime,
    /// containerd's config.toml, or CRI-O's drop-in directory (a host path)
    #[arg(long, env = "ISOLA_DEPLOY_RUNTIME_CONFIG")]
    runtime_config: PathBuf,
    /// The payload directory (bin/, share/isola/), as scripts/build-deploy-payload.sh makes it
    #[arg(long, env = "ISOLA_DEPLOY_PAYLOAD")]
    payload: PathBuf,
    /// A runtime handler, name[:hypervisor] (e.g. isola-clh:cloud-hypervisor); repeatable, or
    /// comma-separated in the environment; default: isola
    #[arg(long, env = "ISOLA_DEPLOY_HANDLERS", value_delimiter = ',')]
    handler: Vec<String>,
    /// containerd only: a directory on containerd's PATH (a host path) for each handler's
    /// shim link, containerd-shim-<handler>-v2 (`shim_link`: containerd 1.6 runs that, not
    /// runtime_path)
    #[arg(long, env = "ISOLA_DEPLOY_SHIM_DIR", default_value = "/usr/local/bin")]
    shim_dir: PathBuf,
    /// Skip `isola check --no-boot` of the installed version (e.g. a scratch host root)
    #[arg(long, env = "ISOLA_DEPLOY_NO_CHECK")]
    no_check: bool,
    /// VM templates in every handler's configuration (`[factory] template`, true or false);
    /// default: as the payload's configuration has it (on)
    #[arg(long, env = "ISOLA_DEPLOY_VM_TEMPLATES")]
    vm_templates: Option<bool>,
}

#[derive(Args)]
pub struct UninstallArgs {
    #[command(flatten)]
    common: Common,
    /// Remove --prefix even while isola processes (pods) still run from it; by default it is
    /// kept for them (the runtime still manages those pods through it) until a later run
    #[arg(long, env = "ISOLA_DEPLOY_FORCE")]
    force: bool,
    /// Ask for the runtime's restart and go on without waiting for it (systemd: `systemctl
    /// restart --no-block`): what the DaemonSet's pod does on its SIGTERM, since that pod's
    /// termination is a call from the kubelet to the runtime, and CRI-O, stopping to restart,
    /// waits for its calls to finish, so it would wait for this uninstall while the uninstall
    /// waits for it
    #[arg(long)]
    no_wait: bool,
}

/// Checks the installed version on the node.
pub trait Checker {
    fn check(&self, layout: &Layout, handlers: &[Handler]) -> anyhow::Result<()>;
}

/// What happens once the node is ready for isola pods, and before it stops being so. With a
/// node name (the DaemonSet) `node::KubeHook` labels the node `isola.io/runtime=ready` (which
/// deploy/runtimeclass-deploy.yaml's `scheduling.nodeSelector` asks for) in `ready` and removes
/// the label in `unready`; without one (by hand on a node) `NoHook` only says so.
pub trait NodeHook {
    fn ready(&self, installed: &Installed) -> anyhow::Result<()>;
    fn unready(&self) -> anyhow::Result<()>;
}

/// The processes, restarter, checker and hook a run uses (fakes in tests).
pub struct Env<'a> {
    pub procs: &'a dyn gc::Processes,
    pub restarter: &'a dyn restart::Restarter,
    pub checker: &'a dyn Checker,
    pub hook: &'a dyn NodeHook,
}

/// `isola check --no-boot` of the current version, once per distinct configuration, run in the
/// host's namespaces (nsenter from a pod) exactly as the shim will run there.
struct IsolaCheck {
    host_pid: u32,
}

impl Checker for IsolaCheck {
    fn check(&self, layout: &Layout, handlers: &[Handler]) -> anyhow::Result<()> {
        let mut done = Vec::new();
        for h in handlers {
            let config = layout.handler_config(h);
            if done.contains(&config) {
                continue;
            }
            let argv = [
                layout.isola().display().to_string(),
                "--config".into(),
                config.display().to_string(),
                "check".into(),
                "--no-boot".into(),
            ];
            let argv = restart::on_host(layout.host_root(), self.host_pid, &argv);
            println!(
                "checking the node for the handler `{}`: {}",
                h.name,
                argv.join(" ")
            );
            let status = std::process::Command::new(&argv[0])
                .args(&argv[1..])
                .status()
                .map_err(|e| anyhow::anyhow!("running {}: {e}", argv[0]))?;
            if !status.success() {
                anyhow::bail!(
                    "`isola check --no-boot` failed for the handler `{}` ({status}): the node \
                     cannot run its pods; fix what its FAIL lines say (above) and run again",
                    h.name
                );
            }
            done.push(config);
        }
        Ok(())
    }
}

/// No labelling here (see [`NodeHook`]).
struct NoHook;

impl NodeHook for NoHook {
    fn ready(&self, i: &Installed) -> anyhow::Result<()> {
        println!(
            "isola {} is installed and registered ({}: {}); no --node-name, so no label: \
             `kubectl label node <node> {}={}` for deploy/runtimeclass-deploy.yaml",
            i.version,
            i.runtime.name(),
            i.handlers.join(", "),
            node::LABEL,
            node::READY
        );
        Ok(())
    }

    fn unready(&self) -> anyhow::Result<()> {
        Ok(())
    }
}

pub fn run(what: Deploy) -> anyhow::Result<bool> {
    if let Deploy::ShouldUninstall(a) = what {
        return daemonset::run(a);
    }
    let common = match &what {
        Deploy::Install(a) => &a.common,
        Deploy::Uninstall(a) => &a.common,
        Deploy::ShouldUninstall(_) => unreachable!("answered above"),
    };
    let layout = Layout::new(&common.host_root, &common.prefix)?;
    // Credentials and node name before anything changes; for an install, a dry run of the
    // label too (a wrong node name or a missing permission found while the node is untouched).
    let kube_hook = kube_api::block_on(node::KubeHook::from_args(&common.node))?;
    if let (Some(h), Deploy::Install(_)) = (&kube_hook, &what) {
        kube_api::block_on(h.preflight())?;
    }
    let hook: &dyn NodeHook = match &kube_hook {
        Some(h) => h,
        None => &NoHook,
    };
    let _lock = lock(&layout)?;
    let procs = gc::ProcFs {
        root: layout.local(std::path::Path::new("/proc")),
    };
    let restarter = restart::Host {
        host_root: common.host_root.clone(),
        host_pid: common.host_pid,
    };
    let checker = IsolaCheck {
        host_pid: common.host_pid,
    };
    let env = Env {
        procs: &procs,
        restarter: &restarter,
        checker: &checker,
        hook,
    };
    let wait = Duration::from_secs(common.wait_seconds);
    match what {
        Deploy::Install(a) => {
            let opts = install::Opts {
                socket: a
                    .common
                    .runtime_socket
                    .unwrap_or_else(|| a.runtime.default_socket().into()),
                layout,
                runtime: a.runtime,
                runtime_config: absolute("--runtime-config", a.runtime_config)?,
                payload: a.payload,
                shim_dir: absolute("--shim-dir", a.shim_dir)?,
                handlers: layout::handlers(&a.handler)?,
                restart: a.common.restart,
                wait,
                check: !a.no_check,
                vm_templates: a.vm_templates,
            };
            install::install(&opts, &env)?;
        }
        Deploy::ShouldUninstall(_) => unreachable!("answered above"),
        Deploy::Uninstall(a) => {
            let opts = uninstall::Opts {
                layout,
                restart: a.common.restart,
                socket: a.common.runtime_socket,
                wait,
                no_wait: a.no_wait,
                force: a.force,
            };
            uninstall::uninstall(&opts, &env)?;
        }
    }
    Ok(true)
}

/// One run at a time per prefix (a new pod's install and an old pod's uninstall could overlap):
/// an exclusive lock on the prefix's parent directory, held until the run ends. Nothing is left
/// behind for it.
fn lock(layout: &Layout) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    let parent = layout
        .prefix()
        .parent()
        .unwrap_or(std::path::Path::new("/"));
    let dir = layout.local(parent);
    std::fs::create_dir_all(&dir)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
    let file = std::fs::File::open(&dir)
        .map_err(|e| anyhow::anyhow!("opening {} to lock it: {e}", dir.display()))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(l),
        Err((file, nix::errno::Errno::EWOULDBLOCK)) => {
            println!(
                "waiting for another isola deploy run under {} to end",
                parent.display()
            );
            nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", dir.display()))
        }
        Err((_, e)) => Err(anyhow::anyhow!("locking {}: {e}", dir.display())),
    }
}

fn absolute(flag: &str, p: PathBuf) -> anyhow::Result<PathBuf> {
    if !p.is_absolute() {
        anyhow::bail!(
            "{flag} {}: must be an absolute path on the host",
            p.display()
        );
    }
    Ok(p)
}

#[cfg(test)]
mod manifest_tests;
#[cfg(test)]
mod node_tests;
#[cfg(test)]
mod tests;
