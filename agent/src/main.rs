//! isola-agent: PID 1 of an isola pod VM.
//!
//! As PID 1 it mounts the pseudo filesystems, attaches the console, loads the image's kernel
//! modules, reaps orphans, serves the host's ttrpc requests on vsock and runs the pod's
//! containers (youki's libcontainer, in helper processes: see [`libct`]), their stdio
//! travelling on a second vsock port (see [`stdio`]), and, when enabled, a debug shell (see
//! [`debug_console`]). Options come from the
//! kernel command line (see [`cmdline`]). Run as an ordinary process (tests, debugging) it skips
//! the init duties and reads its options from `$ISOLA_AGENT_CMDLINE`.
//!
//! PID 1 must never exit (the kernel would panic): a failed request answers with an error, a
//! panicking handler answers INTERNAL, and a fatal start-up failure powers the VM off so the
//! host sees the VM end rather than a silent hang.

mod accept;
mod boot;
mod cgroups;
mod cmdline;
mod container;
mod debug_console;
mod error;
mod fdpass;
mod hotplug;
mod init;
mod libct;
mod logging;
mod modules;
mod network;
mod oom;
mod process;
mod pty;
mod ready;
mod reaper;
mod reseed;
mod rpc;
mod sandbox;
mod server;
mod stdio;
mod storage;

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;

fn main() {
    // The libcontainer helper is this binary re-executed (see `libct`): it never serves.
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new(libct::HELPER_ARG)) {
        libct::helper::main();
    }
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new(libct::FACTORY_ARG)) {
        libct::factory::main();
    }
    let started = Instant::now();
    let is_init = boot::is_guest_init();
    let early_problems = if is_init { init::setup() } else { Vec::new() };

    let cmdline = match std::env::var("ISOLA_AGENT_CMDLINE") {
        Ok(s) if !is_init => s,
        _ => std::fs::read_to_string("/proc/cmdline").unwrap_or_default(),
    };
    let opts = cmdline::parse(&cmdline);
    logging::init(
        &format!("isola_agent={},ttrpc=warn", opts.log_level),
        std::io::stderr,
    );
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(panic = %info, "isola-agent panicked");
    }));
    for p in early_problems.iter().chain(&opts.warnings) {
        tracing::warn!("{p}");
    }

    if is_init {
        // The vsock modules now; the rest of the boot work in the background (see boot.rs).
        boot::start(started);
    }

    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")
        .and_then(|rt| rt.block_on(run(opts, is_init, started)));
    if let Err(e) = result {
        tracing::error!(error = format!("{e:#}"), "isola-agent cannot serve");
    }
    if is_init {
        tracing::error!("powering the VM off: the agent cannot continue");
        nix::unistd::sync();
        let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    }
    std::process::exit(1);
}

async fn run(opts: cmdline::AgentOptions, is_init: bool, started: Instant) -> anyhow::Result<()> {
    if !is_init {
        // Outside a VM, container processes orphaned by the libcontainer helper must still
        // come to us (not to the real init) so that we can reap them.
        nix::sys::prctl::set_child_subreaper(true).context("becoming a child subreaper")?;
    }
    let reaper = reaper::Reaper::start().context("installing the SIGCHLD reaper")?;
    let runtime = libct::Runtime::new(reaper.clone(), libct::LIBCONTAINER_ROOT, &opts.log_level);
    let console_reaper = reaper.clone();
    let factory = runtime.clone();
    let containers = Arc::new(container::Containers::new(
        runtime,
        reaper,
        container::CONTAINERS_DIR,
    ));
    let agent = Arc::new(rpc::agent::AgentService::new(containers.clone()));
    let _server = server::start(&opts.listen, agent).await?;
    if let Err(e) = stdio::listener::start(&opts.listen, containers) {
        // Containers still run; only their stdio cannot reach the host.
        tracing::error!(error = %e, addr = %stdio::listener::address(&opts.listen), "cannot accept stdio streams");
    }
    if let Some(port) = opts.debug_console {
        if let Err(e) = debug_console::start(&opts.listen, port, console_reaper) {
            tracing::error!(error = %e, addr = %debug_console::address(&opts.listen, port), "cannot serve the debug console");
        }
    }
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "agent ready"
    );
    if is_init {
        // What the host waits for before it saves a VM template (see isola_agent_proto).
        tokio::spawn(async {
            boot::settled().await;
            eprintln!("{}", isola_agent_proto::CONSOLE_SERVING_LINE);
        });
    }
    if let Some(port) = opts.ready_port {
        ready::announce(port);
    }
    // After the host knows we are ready: the factory's start takes the CPU the boot needs.
    if opts.container_factory {
        factory.start_factory();
    } else {
        tracing::info!("agent.factory=off: every container operation execs a helper");
    }
    // Serve until asked to stop (SIGTERM is ignored for PID 1 by the kernel unless handled).
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    term.recv().await;
    tracing::info!("SIGTERM received; shutting down");
    if is_init {
        // PID 1 does not exit on SIGTERM; the host stops the VM.
        std::future::pending::<()>().await;
    }
    Ok(())
}
