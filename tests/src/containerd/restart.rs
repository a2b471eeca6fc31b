//! Starting the private containerd's process, and killing and starting it again under running
//! pods: the fault "containerd crashed and was restarted" (`tests/tests/fault_containerd.rs`).
//!
//! containerd is SIGKILLed (no graceful shutdown: it cannot tell its shims anything) and a new
//! one starts on the same configuration, root, state directory and sockets, as systemd would
//! restart it. Its shims are not its children (a shim v2's `start` spawns the serving shim and
//! exits), so they and their VMs live on, and the new containerd finds them through the
//! `address` files of the bundles under its state directory.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::Containerd;
use crate::keeper::{spawn_kept, Keeper};

/// How long a SIGKILLed containerd may take to be reaped.
const REAP_WITHIN: Duration = Duration::from_secs(10);

/// Spawns containerd on `<dir>/config.toml` with the shims of `shim_dir` first on its `PATH`,
/// `ISOLA_CONFIG=isola_config`, and its output appended to `<dir>/containerd.log`. It is forked
/// from a keeper thread with a parent-death signal (SIGTERM), so that it dies with the test
/// process even when no destructor runs.
pub(super) fn spawn(
    dir: &Path,
    isola_config: &Path,
    shim_dir: &Path,
) -> std::io::Result<(Child, Keeper)> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("containerd.log"))?;
    let path = match std::env::var_os("PATH") {
        Some(p) => {
            let mut dirs = vec![shim_dir.to_path_buf()];
            dirs.extend(std::env::split_paths(&p));
            std::env::join_paths(dirs).map_err(std::io::Error::other)?
        }
        None => shim_dir.as_os_str().to_owned(),
    };
    let mut cmd = Command::new("containerd");
    cmd.arg("--config")
        .arg(dir.join("config.toml"))
        .env("PATH", path)
        .env("ISOLA_CONFIG", isola_config)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: the closure runs in the forked child before exec and only makes the
    // async-signal-safe prctl(2) system call.
    unsafe {
        cmd.pre_exec(|| {
            // If the test process dies without running destructors, containerd goes too.
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
        });
    }
    spawn_kept(cmd)
}

impl Containerd {
    /// SIGKILLs containerd and reaps it: no graceful shutdown, the shims, their VMs and any
    /// `ctr` client are left as they are. Returns the dead containerd's pid. Panics when there
    /// is no running containerd, or when it is not gone within 10 s.
    pub fn kill_containerd(&mut self) -> u32 {
        let mut child = self
            .child
            .take()
            .expect("kill_containerd: containerd is not running");
        let pid = child.id();
        child.kill().expect("SIGKILLing containerd");
        let deadline = Instant::now() + REAP_WITHIN;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                other => panic!("containerd {pid} not reaped after SIGKILL: {other:?}"),
            }
        }
        pid
    }

    /// Starts containerd again after [`Containerd::kill_containerd`]: the same configuration,
    /// root, state and sockets, the log appended to. Returns once it answers `ctr version`.
    pub fn start_containerd(&mut self) {
        assert!(self.child.is_none(), "containerd is already running");
        if let Ok(mut log) = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("containerd.log"))
        {
            let _ = writeln!(log, "=== isola tests: containerd started again ===");
        }
        let shim_dir = super::shim_dir();
        let (child, keeper) = spawn(&self.dir, &self.isola_config, &shim_dir)
            .unwrap_or_else(|e| panic!("cannot start containerd again: {e}"));
        self.child = Some(child);
        // Replacing the keeper ends the old, idle keeper thread; the new one forked this child.
        self._keeper = keeper;
        self.wait_ready();
    }

    /// [`Containerd::kill_containerd`] then [`Containerd::start_containerd`]; returns the old
    /// and the new containerd's pids.
    pub fn restart(&mut self) -> (u32, u32) {
        let old = self.kill_containerd();
        self.start_containerd();
        (old, self.pid().expect("the new containerd"))
    }
}
