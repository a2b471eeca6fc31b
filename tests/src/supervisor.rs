//! A node's container runtime kept running the way a service manager keeps it: a thread of the
//! test process starts the daemon, waits for it to exit, and — for a node's runtime
//! ([`Policy::Always`]) — starts it again with the same command line when it exited without the
//! harness asking, as systemd does for a unit with `Restart=always` (a pause of
//! [`RESTART_DELAY`] first, at most [`START_LIMIT_BURST`] starts within
//! [`START_LIMIT_INTERVAL`], then it gives up, like `StartLimitBurst`). Each (re)start rewrites
//! the pidfile (`<pid>\n`, replaced atomically) and each restart writes a line into the
//! daemon's log, so `kill -TERM $(cat <pidfile>)` on the host restarts the runtime and the log
//! shows where.
//!
//! The thread also forks the daemon, so that the daemon's parent-death signal (set by the
//! command's `pre_exec`) fires only when the supervision ends or the test process dies; this
//! replaces [`crate::keeper`] for the runtimes. [`Supervisor::stop`] ends the supervision
//! first, then the daemon (SIGTERM, SIGKILL after a grace period); [`Supervisor::kill`]
//! SIGKILLs it without restarting it (the fault tests' "containerd crashed"). The exit is
//! awaited without reaping (`waitid(WNOWAIT)`) and reaped under the lock the signals are sent
//! under, so a signal never reaches a recycled pid.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;

/// The pause before a restart (systemd's default `RestartSec`).
pub const RESTART_DELAY: Duration = Duration::from_millis(100);
/// At most this many starts within [`START_LIMIT_INTERVAL`] (systemd's `StartLimitBurst`)...
pub const START_LIMIT_BURST: usize = 5;
/// ... (systemd's `StartLimitIntervalSec`); beyond, the supervisor gives up.
pub const START_LIMIT_INTERVAL: Duration = Duration::from_secs(10);

/// What happens when the daemon exits without the harness asking.
#[derive(Debug, Clone)]
pub enum Policy {
    /// Nothing: it stays down (a test's private runtime, whose crash is a failure).
    Never,
    /// It is started again, and `pidfile` names the running one (a node's runtime).
    Always { pidfile: PathBuf },
}

/// Builds the daemon's command line, once per (re)start (its output files are opened anew).
pub type CommandFactory = Box<dyn FnMut() -> std::io::Result<Command> + Send>;

/// A supervised daemon; see the module documentation.
pub struct Supervisor {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    name: String,
    log: PathBuf,
    policy: Policy,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    pid: Option<u32>,
    /// The harness is stopping the daemon: no restart.
    stopping: bool,
    /// How many times the daemon was started (the first start included).
    starts: u32,
    /// Why it is down for good, once it is.
    ended: Option<String>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `line` to the daemon's log (best effort).
    fn log_line(&self, line: &str) {
        if let Ok(mut log) = std::fs::OpenOptions::new().append(true).open(&self.log) {
            let _ = writeln!(log, "=== isola tests: {line} ===");
        }
    }
}

impl Supervisor {
    /// Starts `name` with `make`'s command under `policy`; returns once it is spawned. `log` is
    /// the daemon's log, where restarts are marked.
    pub fn start(
        name: &str,
        log: &Path,
        policy: Policy,
        make: CommandFactory,
    ) -> std::io::Result<Supervisor> {
        let shared = Arc::new(Shared {
            name: name.to_string(),
            log: log.to_path_buf(),
            policy,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let (first_tx, first_rx) = mpsc::channel();
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("supervise-{name}"))
            .spawn(move || supervise(s, make, first_tx))?;
        match first_rx.recv() {
            Ok(Ok(())) => Ok(Supervisor {
                shared,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(std::io::Error::other(format!(
                    "the supervisor of {name} ended before starting it"
                )))
            }
        }
    }

    /// The running daemon's pid (None between an exit and its restart, and once it is down).
    pub fn pid(&self) -> Option<u32> {
        self.shared.lock().pid
    }

    /// How many times the daemon was restarted after exiting on its own.
    pub fn restarts(&self) -> u32 {
        self.shared.lock().starts.saturating_sub(1)
    }

    /// Why the daemon is down for good, if it is (it exited and will not be restarted).
    pub fn ended(&self) -> Option<String> {
        self.shared.lock().ended.clone()
    }

    /// Waits up to `timeout` for a running daemon other than `old`; returns its pid.
    pub fn wait_restarted(&self, old: u32, timeout: Duration) -> Option<u32> {
        let st = self.shared.lock();
        let (st, _) = self
            .shared
            .changed
            .wait_timeout_while(st, timeout, |s| {
                s.ended.is_none() && !matches!(s.pid, Some(p) if p != old)
            })
            .unwrap_or_else(|p| p.into_inner());
        st.pid.filter(|p| *p != old)
    }

    /// Ends the supervision, then the daemon: SIGTERM, SIGKILL after `grace`. Returns the pid
    /// it had, if it ran.
    pub fn stop(&mut self, grace: Duration) -> Option<u32> {
        self.end(Signal::SIGTERM, grace)
    }

    /// Ends the supervision and SIGKILLs the daemon (no graceful shutdown, no restart); returns
    /// once it is reaped, with the pid it had.
    pub fn kill(&mut self) -> Option<u32> {
        self.end(Signal::SIGKILL, Duration::from_secs(10))
    }

    fn end(&mut self, signal: Signal, grace: Duration) -> Option<u32> {
        let thread = self.thread.take()?;
        let pid = {
            let mut st = self.shared.lock();
            st.stopping = true;
            let pid = st.pid;
            if let Some(p) = pid {
                let _ = kill(Pid::from_raw(p as i32), signal);
            }
            self.shared.changed.notify_all();
            let (st, _) = self
                .shared
                .changed
                .wait_timeout_while(st, grace, |s| s.pid.is_some())
                .unwrap_or_else(|p| p.into_inner());
            if let Some(p) = st.pid {
                let _ = kill(Pid::from_raw(p as i32), Signal::SIGKILL);
            }
            pid
        };
        let _ = thread.join();
        pid
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

/// The supervising thread: start, wait, restart unless stopping or over the start limit.
fn supervise(
    shared: Arc<Shared>,
    mut make: CommandFactory,
    first: mpsc::Sender<std::io::Result<()>>,
) {
    let mut first = Some(first);
    let mut recent: VecDeque<Instant> = VecDeque::new();
    loop {
        let spawned = make().and_then(|mut cmd| cmd.spawn());
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let why = format!("starting {} failed: {e}", shared.name);
                match first.take() {
                    Some(tx) => {
                        let _ = tx.send(Err(e));
                    }
                    None => shared.log_line(&format!("{why}; the supervisor gives up")),
                }
                shared.lock().ended = Some(why);
                shared.changed.notify_all();
                return;
            }
        };
        let pid = child.id();
        recent.push_back(Instant::now());
        {
            let mut st = shared.lock();
            st.pid = Some(pid);
            st.starts += 1;
            if let Policy::Always { pidfile } = &shared.policy {
                if let Err(e) = write_pidfile(pidfile, pid) {
                    shared.log_line(&format!("writing {}: {e}", pidfile.display()));
                }
            }
            shared.changed.notify_all();
        }
        if let Some(tx) = first.take() {
            let _ = tx.send(Ok(()));
        }
        // The exit, not reaped yet: the pid stays this child's while stop() may signal it.
        while let Err(nix::errno::Errno::EINTR) = waitid(
            Id::Pid(Pid::from_raw(pid as i32)),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
        ) {}
        let mut st = shared.lock();
        let status = child
            .wait()
            .map(|s| s.to_string())
            .unwrap_or_else(|e| format!("not reaped: {e}"));
        st.pid = None;
        if let Policy::Always { pidfile } = &shared.policy {
            remove_pidfile(pidfile, pid);
        }
        shared.changed.notify_all();
        let restart = matches!(shared.policy, Policy::Always { .. }) && !st.stopping;
        if !restart {
            st.ended = Some(format!("{} (pid {pid}) exited: {status}", shared.name));
            shared.changed.notify_all();
            return;
        }
        while recent
            .front()
            .is_some_and(|t| t.elapsed() > START_LIMIT_INTERVAL)
        {
            recent.pop_front();
        }
        if recent.len() >= START_LIMIT_BURST {
            let why = format!(
                "{} (pid {pid}) exited ({status}): started {} times within {:?}, the supervisor \
                 gives up",
                shared.name,
                recent.len(),
                START_LIMIT_INTERVAL
            );
            shared.log_line(&why);
            st.ended = Some(why);
            shared.changed.notify_all();
            return;
        }
        shared.log_line(&format!(
            "{} (pid {pid}) exited ({status}) without the harness asking: the supervisor \
             starts it again (restart {})",
            shared.name, st.starts
        ));
        let (st, _) = shared
            .changed
            .wait_timeout_while(st, RESTART_DELAY, |s| !s.stopping)
            .unwrap_or_else(|p| p.into_inner());
        if st.stopping {
            drop(st);
            shared.lock().ended = Some(format!("{} stopped while restarting", shared.name));
            shared.changed.notify_all();
            return;
        }
    }
}

/// Writes `<pid>\n` to `pidfile` atomically (a reader sees the old or the new one, whole).
fn write_pidfile(pidfile: &Path, pid: u32) -> std::io::Result<()> {
    if let Some(dir) = pidfile.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = pidfile.with_extension("pid.tmp");
    std::fs::write(&tmp, format!("{pid}\n"))?;
    std::fs::rename(&tmp, pidfile)
}

/// Removes `pidfile` if it still names `pid`.
fn remove_pidfile(pidfile: &Path, pid: u32) {
    if read_pidfile(pidfile) == Some(pid) {
        let _ = std::fs::remove_file(pidfile);
    }
}

/// The pid a pidfile names.
pub fn read_pidfile(pidfile: &Path) -> Option<u32> {
    std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper(log: &Path) -> CommandFactory {
        let log = log.to_path_buf();
        Box::new(move || {
            let out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)?;
            let mut cmd = Command::new("sleep");
            cmd.arg("300").stdout(out);
            Ok(cmd)
        })
    }

    fn term(pid: u32) {
        kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    }

    #[test]
    fn an_unasked_exit_is_restarted_with_a_new_pidfile_and_a_log_line() {
        let dir = tempfile::tempdir().unwrap();
        let (log, pidfile) = (dir.path().join("d.log"), dir.path().join("run/d.pid"));
        let policy = Policy::Always {
            pidfile: pidfile.clone(),
        };
        let mut s = Supervisor::start("sleeper", &log, policy, sleeper(&log)).unwrap();
        let first = s.pid().unwrap();
        assert_eq!(read_pidfile(&pidfile), Some(first));
        term(first);
        let second = s
            .wait_restarted(first, Duration::from_secs(10))
            .expect("restarted");
        assert_ne!(second, first);
        assert_eq!(read_pidfile(&pidfile), Some(second));
        assert_eq!(s.restarts(), 1);
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.contains(&format!("sleeper (pid {first}) exited")) && text.contains("restart 1"),
            "{text}"
        );
        assert_eq!(s.stop(Duration::from_secs(5)), Some(second));
        assert!(s.ended().is_some());
        assert!(!pidfile.exists(), "the pidfile outlives the daemon");
        assert!(!Path::new(&format!("/proc/{second}")).exists());
        assert_eq!(s.restarts(), 1, "stop() restarted it");
    }

    #[test]
    fn it_gives_up_beyond_the_start_limit() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("d.log");
        let policy = Policy::Always {
            pidfile: dir.path().join("d.pid"),
        };
        let s = Supervisor::start("sleeper", &log, policy, sleeper(&log)).unwrap();
        let mut pid = s.pid().unwrap();
        for _ in 0..START_LIMIT_BURST - 1 {
            term(pid);
            pid = s
                .wait_restarted(pid, Duration::from_secs(10))
                .expect("restarted");
        }
        term(pid);
        assert_eq!(s.wait_restarted(pid, Duration::from_secs(10)), None);
        let ended = s.ended().expect("given up");
        assert!(ended.contains("gives up"), "{ended}");
        assert_eq!(s.pid(), None);
    }

    #[test]
    fn without_a_restart_policy_an_exit_is_final_and_kill_reaps() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("d.log");
        let s = Supervisor::start("sleeper", &log, Policy::Never, sleeper(&log)).unwrap();
        let pid = s.pid().unwrap();
        term(pid);
        assert_eq!(s.wait_restarted(pid, Duration::from_secs(10)), None);
        assert!(s.ended().unwrap().contains("exited"));
        let mut k = Supervisor::start("sleeper", &log, Policy::Never, sleeper(&log)).unwrap();
        let pid = k.pid().unwrap();
        assert_eq!(k.kill(), Some(pid));
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "not reaped");
    }

    #[test]
    fn a_missing_program_fails_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("d.log");
        let make: CommandFactory = Box::new(|| Ok(Command::new("/nonexistent/daemon")));
        assert!(Supervisor::start("nothing", &log, Policy::Never, make).is_err());
    }
}
