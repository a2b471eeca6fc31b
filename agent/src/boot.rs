//! Keeping boot work off the path to "agent ready".
//!
//! The host cannot talk to the agent before the vsock driver is loaded, but it needs nothing
//! else to get an answer to Check. So PID 1 loads the image's modules in order only up to the
//! vsock transport ([`SERVING_NEEDS`]) before it serves, and a background thread loads the rest
//! (virtio-fs, overlay, networking, block) and enables the cgroup controllers meanwhile.
//! Handlers that need that work (sandbox and container set-up, updates) first await
//! [`settled`]; under TCG this takes ~90 ms off every boot's time to ready.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

use tokio::sync::watch;

use crate::{cgroups, modules};

/// The last module the ttrpc server needs: the virtio vsock transport.
pub const SERVING_NEEDS: &str = "vmw_vsock_virtio_transport.ko";

static SETTLED: OnceLock<watch::Receiver<bool>> = OnceLock::new();

/// Whether this agent is PID 1 of a guest. Only then does it load modules, touch the clock
/// and the RNG, or wait for guest devices: an agent run on a host (tests) must not.
pub fn is_guest_init() -> bool {
    std::process::id() == 1
}

/// Loads the modules the server needs, then hands the rest of the boot work to a background
/// thread. Only for PID 1 of a guest.
pub fn start(started: Instant) {
    let (tx, rx) = watch::channel(false);
    let _ = SETTLED.set(rx);
    let names = match modules::read_list(Path::new(modules::MODULE_LIST)) {
        Ok(names) => names,
        Err(e) => {
            tracing::error!(error = %e, "reading the module list failed");
            Vec::new()
        }
    };
    let split = names
        .iter()
        .position(|n| n == SERVING_NEEDS)
        .map_or(names.len(), |i| i + 1);
    let (now, later) = names.split_at(split);
    let (now, later) = (
        modules::still_needed_here(now),
        modules::still_needed_here(later),
    );
    load(&now, started, "kernel modules for vsock loaded");
    let spawned = std::thread::Builder::new()
        .name("boot".into())
        .spawn(move || {
            load(&later, started, "remaining kernel modules loaded");
            match cgroups::enable_controllers(Path::new(cgroups::CGROUP_ROOT)) {
                Ok(enabled) => {
                    tracing::debug!(?enabled, "cgroup controllers enabled for containers")
                }
                Err(e) => tracing::warn!(error = %e, "cannot enable cgroup controllers"),
            }
            let _ = tx.send(true);
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the boot thread; containers cannot be set up");
    }
}

fn load(names: &[String], started: Instant, what: &str) {
    if names.is_empty() {
        return;
    }
    let dir = Path::new(modules::MODULE_DIR);
    for name in names {
        if let Err(e) = modules::load_one(dir, name) {
            tracing::error!(error = %e, "loading a kernel module failed");
        }
    }
    tracing::info!(
        modules = names.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "{what}"
    );
}

/// Resolves once the background boot work is done (at once outside a guest, where there is
/// none).
pub async fn settled() {
    if let Some(rx) = SETTLED.get() {
        let mut rx = rx.clone();
        // An error means the thread died without sending: nothing more will come, go on.
        let _ = rx.wait_for(|done| *done).await;
    }
}
