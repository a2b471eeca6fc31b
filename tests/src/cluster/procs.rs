//! The cluster's processes: each started with its log in the cluster's directory, dying with
//! the test process (parent-death signal, forked from a thread of its own so it does not die
//! with the thread that started it), and stopped in reverse order.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;

/// The running components, in start order.
pub struct Procs {
    dir: PathBuf,
    running: Mutex<Vec<Running>>,
}

type Running = (String, Child, crate::keeper::Keeper);

impl Procs {
    pub fn new(dir: PathBuf) -> Procs {
        Procs {
            dir,
            running: Mutex::new(Vec::new()),
        }
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    /// Starts `cmd` as component `name`.
    pub fn spawn(&self, name: &str, cmd: &mut Command) -> Result<()> {
        let log = std::fs::File::create(self.log_path(name))?;
        let mut owned = Command::new(cmd.get_program());
        owned
            .args(cmd.get_args())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: only the async-signal-safe prctl(2) runs in the child before exec.
        unsafe {
            owned.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
            });
        }
        let (child, keeper) =
            crate::keeper::spawn_kept(owned).with_context(|| format!("starting {name}"))?;
        self.lock().push((name.to_string(), child, keeper));
        Ok(())
    }

    /// Fails naming a component that exited, with its log.
    pub fn check_alive(&self) -> Result<()> {
        for (name, child, _) in self.lock().iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(self.dir.join(format!("{name}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!("{name} exited ({status}):\n{}", tail.join("\n"));
            }
        }
        Ok(())
    }

    /// Whether component `name` runs.
    pub fn is_running(&self, name: &str) -> bool {
        self.lock()
            .iter_mut()
            .any(|(n, c, _)| n == name && matches!(c.try_wait(), Ok(None)))
    }

    /// The last `n` lines of each component's log.
    pub fn logs_tail(&self, n: usize) -> String {
        let mut out = String::new();
        for (name, _, _) in self.lock().iter() {
            let log = std::fs::read_to_string(self.log_path(name)).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            out.push_str(&format!("--- {name} ---\n"));
            out.push_str(&lines[lines.len().saturating_sub(n)..].join("\n"));
            out.push('\n');
        }
        out
    }

    /// Stops every component, last started first (SIGTERM, then SIGKILL after 10 s).
    pub fn stop_all(&self) {
        loop {
            let Some((_, mut child, _keeper)) = self.lock().pop() else {
                return;
            };
            crate::stop_child(&mut child, Duration::from_secs(10));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}
