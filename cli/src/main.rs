//! `isola`: the host CLI of the isola runtime.
//!
//! - `isola check [--no-boot]`: is this host ready to run pods? Boots a throwaway VM unless told
//!   not to; exits 0 only when everything needed works (with a boot: when the agent answered).
//! - `isola ps [--json]`: the node's isola sandboxes, from the records their shims leave.
//! - `isola monitor --listen ADDR`: a Prometheus endpoint (`GET /metrics`) for those sandboxes.
//! - `isola debug console <sandbox>`: a root shell in a pod's guest, outside every container
//!   (only with `[agent] debug_console = true`; see docs/observability.md).
//! - `isola bench boot`: boot-time benchmark against the bare-kernel floor.
//! - `isola install containerd|crio` / `isola uninstall containerd|crio`: the runtime in
//!   containerd's configuration or CRI-O's drop-in directory; `--handler` for a second runtime
//!   handler (e.g. `isola-clh` with `--hypervisor cloud-hypervisor`).
//! - `isola deploy install|uninstall`: isola onto a node from a payload, versioned, registered
//!   and restored byte for byte (the isola-deploy DaemonSet's entrypoint).
//! - `isola operator run|crd`: a controller installing isola on a cluster's nodes from the
//!   IsolaConfig resource, through that DaemonSet.

mod bench;
mod check;
mod debug;
mod deploy;
mod host;
mod install;
mod kernel;
mod logs;
mod metrics;
mod monitor;
mod operator;
mod procfs;
mod ps;
mod report;
mod template;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "isola",
    version,
    about = "isola: every pod in its own lightweight VM"
)]
struct Cli {
    /// Configuration file (default: $ISOLA_CONFIG, /etc/isola/configuration.toml,
    /// $PREFIX/share/isola/configuration.toml)
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Log verbosity for isola's own logs (error, warn, info, debug, trace)
    #[arg(long, global = true, default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check that this host can run isola pods, then boot a throwaway VM
    Check {
        /// Only the host checks; do not boot a VM
        #[arg(long)]
        no_boot: bool,
        /// Also say where each log lives (the shim's, the guest's, the VMM's and the daemons'),
        /// with the files of every pod running now
        #[arg(long, short)]
        verbose: bool,
    },
    /// List the node's isola sandboxes
    Ps {
        /// Machine-readable output (a JSON array)
        #[arg(long)]
        json: bool,
    },
    /// Serve Prometheus metrics of the node's isola sandboxes on GET /metrics
    Monitor {
        /// Address to listen on
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: std::net::SocketAddr,
    },
    /// Diagnose a running pod
    Debug {
        #[command(subcommand)]
        what: debug::Debug,
    },
    /// Benchmarks
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
    /// Hook isola into the host's software
    Install {
        #[command(subcommand)]
        what: install::Install,
    },
    /// Undo `isola install`
    Uninstall {
        #[command(subcommand)]
        what: install::Uninstall,
    },
    /// Install isola onto a node from a payload (what the isola-deploy DaemonSet runs)
    Deploy {
        #[command(subcommand)]
        what: deploy::Deploy,
    },
    /// Install isola on a cluster's nodes from the IsolaConfig resource (a controller)
    Operator {
        #[command(subcommand)]
        what: operator::Operator,
    },
    /// The node's VM templates (pods start by restoring one when [factory] template = true)
    Template {
        #[command(subcommand)]
        what: template::Template,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("isola: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Check { no_boot, verbose } => {
                check::run(cli.config.as_deref(), !no_boot, verbose).await
            }
            Command::Ps { json } => ps::run(cli.config.as_deref(), json),
            Command::Monitor { listen } => monitor::run(cli.config.as_deref(), listen).await,
            Command::Debug { what } => debug::run(cli.config.as_deref(), what).await,
            Command::Bench { which } => bench::run(cli.config.as_deref(), which).await,
            Command::Install { what } => install::install(what),
            Command::Uninstall { what } => install::uninstall(what),
            Command::Deploy { what } => deploy::run(what),
            Command::Operator { what } => operator::run(what).await,
            Command::Template { what } => template::run(cli.config.as_deref(), what).await,
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("isola: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Loads the configuration from `--config` or the standard search order.
pub(crate) fn load_config(
    explicit: Option<&std::path::Path>,
) -> anyhow::Result<(isola_config::Config, PathBuf)> {
    Ok(match explicit {
        Some(p) => (isola_config::Config::load_from(p)?, p.to_path_buf()),
        None => isola_config::Config::load()?,
    })
}

/// A sandbox id for a throwaway VM of this process.
pub(crate) fn throwaway_id(what: &str, n: usize) -> String {
    format!("{what}-{}-{n}", std::process::id())
}
