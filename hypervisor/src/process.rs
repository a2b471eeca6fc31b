//! Spawning child processes (VMM, helper daemons) that never outlive their owner.
//!
//! Three layers make sure no child is orphaned:
//! 1. `kill_on_drop(true)`: dropping the [`Child`] (e.g. the owning task or runtime goes away)
//!    SIGKILLs it.
//! 2. `prctl(PR_SET_PDEATHSIG, SIGKILL)` in the child before `exec`, so it is killed when the
//!    owner dies without running destructors (SIGKILL, abort, OOM kill). The child then checks
//!    `getppid()` against the pid it expected, closing the race where the owner died between
//!    `fork` and `prctl`.
//! 3. The backends stop every child explicitly in `stop()`.
//!
//! Each child leads its own process group, and stopping it signals the whole group and waits
//! until the group is empty: a daemon that forks (virtiofsd's namespace sandbox runs its work
//! in a child process) leaves nothing behind when `stop()` returns. A pgid stays reserved while
//! any member lives, so signalling the group after the leader was reaped cannot hit a stranger.
//!
//! Caveat of PDEATHSIG: it fires when the *thread* that forked the child exits, not the whole
//! process. Children are spawned from tokio worker threads, which live as long as the runtime,
//! so this is fine for a shim whose runtime lives as long as the process. Spawning from a
//! short-lived thread (for instance inside `spawn_blocking`, whose threads exit when idle, or
//! from a worker thread that `block_in_place` later hands to the blocking pool) would kill the
//! child when that thread ends.

use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::process::{Child, Command};

use crate::VmExit;

/// How many bytes of a log file [`tail_file`] returns at most.
pub const TAIL_BYTES: u64 = 4096;

/// Failures to spawn or signal a child process.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The file the child's output goes to could not be created.
    #[error("creating log file {} for {name}: {source}", path.display())]
    LogFile {
        /// Which child.
        name: &'static str,
        /// The log file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// `fork`/`exec` failed (binary missing, not executable, ...).
    #[error("spawning {name} ({}): {source}", program.display())]
    Spawn {
        /// Which child.
        name: &'static str,
        /// The binary.
        program: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Waiting for the child failed.
    #[error("waiting for {name} (pid {pid}): {source}")]
    Wait {
        /// Which child.
        name: &'static str,
        /// Its pid.
        pid: u32,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The child did not exit even after SIGKILL.
    #[error("{name} (pid {pid}) did not exit within {timeout_ms} ms of SIGKILL")]
    Stuck {
        /// Which child.
        name: &'static str,
        /// Its pid.
        pid: u32,
        /// The deadline that passed.
        timeout_ms: u64,
    },
}

/// How long to wait for a child to be reaped after SIGKILL before giving up.
const KILL_REAP_TIMEOUT: Duration = Duration::from_secs(5);

/// Spawns `cmd` as a child named `name` (for messages) that dies with its owner; stdin is
/// /dev/null and stdout and stderr are appended to `log` (created or truncated).
pub async fn spawn(name: &'static str, cmd: Command, log: &Path) -> Result<Child, SpawnError> {
    spawn_with(name, cmd, log, false, &[]).await
}

/// [`spawn`], but stdout is a pipe (`child.stdout`) for the caller to drain; only stderr goes
/// to `log`.
pub async fn spawn_piped_stdout(
    name: &'static str,
    cmd: Command,
    log: &Path,
) -> Result<Child, SpawnError> {
    spawn_with(name, cmd, log, true, &[]).await
}

/// [`spawn_piped_stdout`], and the child inherits the descriptors `keep` under the same numbers
/// (their close-on-exec flag is cleared in the child only, between fork and exec, so no other
/// child spawned meanwhile inherits them). The caller keeps them open until this returns.
pub async fn spawn_piped_stdout_keeping(
    name: &'static str,
    cmd: Command,
    log: &Path,
    keep: &[RawFd],
) -> Result<Child, SpawnError> {
    spawn_with(name, cmd, log, true, keep).await
}

async fn spawn_with(
    name: &'static str,
    mut cmd: Command,
    log: &Path,
    pipe_stdout: bool,
    keep: &[RawFd],
) -> Result<Child, SpawnError> {
    let log_err = |source| SpawnError::LogFile {
        name,
        path: log.to_owned(),
        source,
    };
    let stderr = tokio::fs::File::create(log)
        .await
        .map_err(log_err)?
        .into_std()
        .await;
    let stdout = if pipe_stdout {
        Stdio::piped()
    } else {
        Stdio::from(stderr.try_clone().map_err(log_err)?)
    };
    cmd.stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::from(stderr))
        .process_group(0)
        .kill_on_drop(true);
    let parent = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // functions may be called. It calls `prctl`, `getppid` and builds an `io::Error` from an
    // errno or a static message (no allocation: `from_raw_os_error` stores the integer).
    unsafe {
        cmd.pre_exec(move || {
            // SIGKILL is a small positive constant, so the cast to c_ulong is lossless.
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The owner may have died between fork and prctl; PDEATHSIG would then never fire.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    if !keep.is_empty() {
        let keep = keep.to_vec();
        // SAFETY: runs in the forked child before exec; it only calls `fcntl` (async-signal-safe)
        // on descriptors the parent keeps open across the spawn, iterating a Vec allocated
        // before the fork, and builds an `io::Error` from an errno (no allocation).
        unsafe {
            cmd.pre_exec(move || {
                for &fd in &keep {
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
    let program = PathBuf::from(cmd.as_std().get_program());
    cmd.spawn().map_err(|source| SpawnError::Spawn {
        name,
        program,
        source,
    })
}

/// Converts a process exit status into the crate's [`VmExit`].
pub fn exit_of(status: ExitStatus) -> VmExit {
    VmExit {
        code: status.code(),
        signal: status.signal(),
    }
}

/// Sends SIGTERM to `child`, waits up to `grace`, then SIGKILLs it; returns how it exited.
/// A child that already exited is simply reaped.
pub async fn terminate(
    name: &'static str,
    child: &mut Child,
    grace: Duration,
) -> Result<ExitStatus, SpawnError> {
    let Some(pid) = child.id() else {
        // Already reaped by an earlier wait: wait() returns the cached status.
        return child.wait().await.map_err(|source| SpawnError::Wait {
            name,
            pid: 0,
            source,
        });
    };
    let wait_err = |source| SpawnError::Wait { name, pid, source };
    if let Some(status) = child.try_wait().map_err(wait_err)? {
        return Ok(status);
    }
    if let Ok(raw) = i32::try_from(pid) {
        // The whole group; ESRCH means it exited meanwhile, and the wait below reaps it.
        let _ = kill(Pid::from_raw(-raw), Signal::SIGTERM);
    }
    let status = match tokio::time::timeout(grace, child.wait()).await {
        Ok(res) => res.map_err(wait_err)?,
        Err(_) => {
            tracing::debug!(name, pid, "did not exit after SIGTERM; sending SIGKILL");
            kill_and_reap(name, child).await?
        }
    };
    kill_group(name, pid).await?;
    Ok(status)
}

/// SIGKILLs what is left of process group `pgid` (the leader already exited) and waits until
/// the group is empty.
pub async fn kill_group(name: &'static str, pgid: u32) -> Result<(), SpawnError> {
    let Ok(raw) = i32::try_from(pgid) else {
        return Ok(());
    };
    let group = Pid::from_raw(-raw);
    let deadline = tokio::time::Instant::now() + KILL_REAP_TIMEOUT;
    // Members are not our children (they are the leader's): they are reaped by init, so wait
    // for the group to vanish rather than for an exit status.
    while kill(group, Signal::SIGKILL).is_ok() {
        if tokio::time::Instant::now() >= deadline {
            return Err(SpawnError::Stuck {
                name,
                pid: pgid,
                timeout_ms: duration_ms(KILL_REAP_TIMEOUT),
            });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// SIGKILLs `child` and waits (bounded) for it to be reaped.
pub async fn kill_and_reap(
    name: &'static str,
    child: &mut Child,
) -> Result<ExitStatus, SpawnError> {
    let pid = child.id().unwrap_or(0);
    let wait_err = |source| SpawnError::Wait { name, pid, source };
    // start_kill fails only if the child was already reaped; wait() then returns the status.
    let _ = child.start_kill();
    match tokio::time::timeout(KILL_REAP_TIMEOUT, child.wait()).await {
        Ok(res) => res.map_err(wait_err),
        Err(_) => Err(SpawnError::Stuck {
            name,
            pid,
            timeout_ms: duration_ms(KILL_REAP_TIMEOUT),
        }),
    }
}

/// The last [`TAIL_BYTES`] of a text file, lossily decoded; empty if it cannot be read.
pub async fn tail_file(path: &Path) -> String {
    async fn read(path: &Path) -> io::Result<String> {
        let mut f = tokio::fs::File::open(path).await?;
        let len = f.metadata().await?.len();
        f.seek(io::SeekFrom::Start(len.saturating_sub(TAIL_BYTES)))
            .await?;
        let mut buf = Vec::new();
        f.take(TAIL_BYTES).read_to_end(&mut buf).await?;
        Ok(String::from_utf8_lossy(&buf).trim_end().to_owned())
    }
    read(path).await.unwrap_or_default()
}

/// A duration in whole milliseconds, saturating.
pub(crate) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spawn_logs_and_terminates() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sleep.log");
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "echo to-stderr >&2; exec sleep 30"]);
        let mut child = spawn("sleep", cmd, &log).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let status = terminate("sleep", &mut child, Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(exit_of(status).signal, Some(libc::SIGTERM));
        assert_eq!(tail_file(&log).await, "to-stderr");
        // Terminating an already reaped child just returns its status again.
        let again = terminate("sleep", &mut child, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(again, status);
    }

    #[tokio::test]
    async fn terminate_leaves_no_forked_grandchild() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild.pid");
        let mut cmd = Command::new("/bin/sh");
        // The grandchild ignores SIGTERM and outlives its parent unless the group is killed.
        cmd.arg("-c").arg(format!(
            "sh -c 'trap \"\" TERM; echo $$ > {}; exec sleep 30' & wait",
            pidfile.display()
        ));
        let mut child = spawn("forker", cmd, &dir.path().join("l")).await.unwrap();
        let grandchild = loop {
            if let Ok(text) = std::fs::read_to_string(&pidfile) {
                if let Ok(pid) = text.trim().parse::<i32>() {
                    break pid;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        terminate("forker", &mut child, Duration::from_secs(1))
            .await
            .unwrap();
        assert!(
            kill(Pid::from_raw(grandchild), None).is_err(),
            "grandchild {grandchild} survived terminate()"
        );
    }

    #[tokio::test]
    async fn kept_descriptors_are_inherited_and_others_are_not() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let kept = std::fs::File::open("/dev/null").unwrap();
        let other = std::fs::File::open("/dev/null").unwrap();
        let (k, o) = (kept.as_raw_fd(), other.as_raw_fd());
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(format!(
            "test -e /proc/self/fd/{k} && echo kept; test -e /proc/self/fd/{o} && echo leaked; true"
        ));
        let mut child = spawn_piped_stdout_keeping("fds", cmd, &dir.path().join("l"), &[k])
            .await
            .unwrap();
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .await
            .unwrap();
        child.wait().await.unwrap();
        assert_eq!(out.trim(), "kept");
    }

    #[tokio::test]
    async fn sigterm_ignored_then_sigkill() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "trap '' TERM; while :; do sleep 1; done"]);
        let mut child = spawn("stubborn", cmd, &dir.path().join("l")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let status = terminate("stubborn", &mut child, Duration::from_millis(300))
            .await
            .unwrap();
        assert_eq!(exit_of(status).signal, Some(libc::SIGKILL));
    }

    #[tokio::test]
    async fn spawn_missing_binary_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = Command::new("/nonexistent/binary");
        let err = spawn("ghost", cmd, &dir.path().join("l"))
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("ghost") && msg.contains("/nonexistent/binary"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn tail_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        let mut text = "x".repeat(10_000);
        text.push_str("END");
        tokio::fs::write(&p, &text).await.unwrap();
        let tail = tail_file(&p).await;
        assert_eq!(tail.len(), usize::try_from(TAIL_BYTES).unwrap());
        assert!(tail.ends_with("END"));
        assert_eq!(tail_file(&dir.path().join("missing")).await, "");
    }
}
