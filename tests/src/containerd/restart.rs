//! Starting the private containerd's process under a [`Supervisor`], and killing and starting it
//! again under running pods: the fault "containerd crashed and was restarted"
//! (`tests/tests/fault_containerd.rs`).
//!
//! A test's containerd is supervised without a restart policy (its crash is a failure); a
//! node's ([`Containerd::start_supervised`]) is started again whenever it exits without the
//! harness asking, as systemd restarts it, with its pid in a pidfile (see
//! [`crate::supervisor`]).
//!
//! [`Containerd::kill_containerd`] SIGKILLs it (no graceful shutdown: it cannot tell its shims
//! anything) without a restart, and [`Containerd::start_containerd`] starts a new one on the
//! same configuration, root, state directory and sockets, as systemd would. Its shims are not its
//! children (a shim v2's `start` spawns the serving shim and exits), so they and their VMs live
//! on, and the new containerd finds them through the `address` files of the bundles under its
//! state directory.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sys::signal::Signal;

use super::Containerd;
use crate::supervisor::{Policy, Supervisor};

/// Starts containerd on `<dir>/config.toml` under `policy`, with the shims of `shim_dir` first
/// on its `PATH`, then `<dir>/node-bin` ([`super::NODE_BIN`]: the node's /usr/local/bin, where
/// an installer links shims), `ISOLA_CONFIG=isola_config`, and its output appended to
/// `<dir>/containerd.log`. The supervisor's thread forks it with a parent-death signal
/// (SIGTERM), so that it dies with the test process even when no destructor runs.
pub(super) fn spawn(
    dir: &Path,
    isola_config: &Path,
    shim_dir: &Path,
    policy: Policy,
) -> std::io::Result<Supervisor> {
    let log = dir.join("containerd.log");
    let path = match std::env::var_os("PATH") {
        Some(p) => {
            let mut dirs = vec![shim_dir.to_path_buf(), dir.join(super::NODE_BIN)];
            dirs.extend(std::env::split_paths(&p));
            std::env::join_paths(dirs).map_err(std::io::Error::other)?
        }
        None => shim_dir.as_os_str().to_owned(),
    };
    std::fs::create_dir_all(dir.join(super::NODE_BIN))?;
    let (config, isola_config, log_path) = (
        dir.join("config.toml"),
        isola_config.to_path_buf(),
        log.clone(),
    );
    let make = move || -> std::io::Result<Command> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let mut cmd = Command::new("containerd");
        cmd.arg("--config")
            .arg(&config)
            .env("PATH", &path)
            .env("ISOLA_CONFIG", &isola_config)
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
        Ok(cmd)
    };
    Supervisor::start("containerd", &log, policy, Box::new(make))
}

impl Containerd {
    /// A node's containerd: [`Containerd::start`], restarted by its supervisor whenever it exits
    /// without the harness asking, with its pid in `pidfile` (rewritten on every start).
    pub fn start_supervised(pidfile: PathBuf) -> Containerd {
        Containerd::start_in(crate::TestEnv::new(), true, Policy::Always { pidfile })
    }

    /// SIGKILLs containerd and reaps it, with no restart: no graceful shutdown, the shims, their
    /// VMs and any `ctr` client are left as they are. Returns the dead containerd's pid. Panics
    /// when there is no running containerd.
    pub fn kill_containerd(&mut self) -> u32 {
        let mut daemon = self
            .daemon
            .take()
            .expect("kill_containerd: containerd is not running");
        daemon
            .kill()
            .expect("kill_containerd: containerd had exited already")
    }

    /// Starts containerd again after [`Containerd::kill_containerd`]: the same configuration,
    /// root, state and sockets, the log appended to, the same restart policy. Returns once it
    /// answers `ctr version`.
    pub fn start_containerd(&mut self) {
        assert!(self.daemon.is_none(), "containerd is already running");
        if let Ok(mut log) = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("containerd.log"))
        {
            let _ = writeln!(log, "=== isola tests: containerd started again ===");
        }
        let shim_dir = super::shim_dir();
        let daemon = spawn(
            &self.dir,
            &self.isola_config,
            &shim_dir,
            self.policy.clone(),
        )
        .unwrap_or_else(|e| panic!("cannot start containerd again: {e}"));
        self.daemon = Some(daemon);
        self.wait_ready();
    }

    /// [`Containerd::kill_containerd`] then [`Containerd::start_containerd`]; returns the old
    /// and the new containerd's pids.
    pub fn restart(&mut self) -> (u32, u32) {
        let old = self.kill_containerd();
        self.start_containerd();
        (old, self.pid().expect("the new containerd"))
    }

    /// The supervisor of the running containerd (its pid, restarts, why it ended).
    pub fn daemon(&self) -> Option<&Supervisor> {
        self.daemon.as_ref()
    }
}
