//! The debug console: a root shell in the guest, outside every container, for diagnosis
//! (`isola debug console <sandbox>`).
//!
//! Served only when the kernel command line carries `agent.debug_console=<port>`, which the
//! runtime adds when its configuration sets `[agent] debug_console = true`. The initrd has no
//! shell: the host puts a static busybox into the sandbox's shared directory before boot, seen
//! here at [`DEBUG_SHELL_GUEST_PATH`] once CreateSandbox has mounted it. Without it a connection
//! gets one line saying so and is closed.
//!
//! Each connection (vsock `<port>`, or `<control socket>.debug` when the agent serves on a Unix
//! socket) gets `busybox sh -i` on a fresh pty, as the session leader with the pty as its
//! controlling terminal, in the agent's (the guest's root) namespaces and cgroup; the bytes are
//! copied both ways unchanged. Debian's static busybox runs its applets without `PATH`
//! (standalone shell), so `ls`, `ps`, `mount`... work although the guest has no `/bin`.
//!
//! At most [`MAX_CONSOLES`] consoles are open at once. A console ends when the connection
//! closes (its read side reaches end of file) or the shell exits; every process of the shell's
//! session is then killed. The shell is forked under the reaper's lock
//! ([`Reaper::spawn_watched`]), so its exit goes to this module and never into the cache of
//! unclaimed exits that container processes are matched against; what the shell leaves behind
//! (orphans re-parented to PID 1 before the session is killed) is reaped like any orphan.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use isola_agent_proto::DEBUG_SHELL_GUEST_PATH;
use nix::fcntl::OFlag;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::cmdline::Listen;
use crate::pty;
use crate::reaper::Reaper;
use crate::stdio::fdio::FdIo;

/// How many debug consoles may be open at once.
pub const MAX_CONSOLES: usize = 4;

/// How long the shell's last output may take to drain once it has exited.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The environment of the shell.
const SHELL_ENV: [(&str, &str); 5] = [
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/"),
    ("TERM", "xterm"),
    ("PS1", "isola-debug:\\w# "),
    ("ISOLA_DEBUG_CONSOLE", "1"),
];

/// The Unix socket of the debug console for a Unix control socket path.
pub fn unix_path(control: &str) -> String {
    format!("{control}.debug")
}

/// A human-readable address of the debug console listener.
pub fn address(listen: &Listen, port: u32) -> String {
    match listen {
        Listen::Vsock(_) => format!("vsock://-1:{port}"),
        Listen::Unix(path) => format!("unix://{}", unix_path(path)),
    }
}

/// Serves the debug console on `port` (vsock) or next to the Unix control socket, on a
/// background task.
pub fn start(listen: &Listen, port: u32, reaper: Reaper) -> io::Result<()> {
    let server = Arc::new(Server {
        shell: PathBuf::from(DEBUG_SHELL_GUEST_PATH),
        reaper,
        slots: Arc::new(Semaphore::new(MAX_CONSOLES)),
    });
    let unix = match listen {
        Listen::Unix(path) => unix_path(path),
        Listen::Vsock(_) => String::new(),
    };
    crate::accept::start(listen, port, &unix, "debug console", server)?;
    tracing::warn!(addr = %address(listen, port), "debug console enabled: root shells in the guest are served");
    Ok(())
}

impl crate::accept::Handler for Arc<Server> {
    fn handle<S>(self, conn: S) -> impl std::future::Future<Output = ()> + Send + 'static
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.serve(conn)
    }
}

/// What every console shares.
struct Server {
    shell: PathBuf,
    reaper: Reaper,
    slots: Arc<Semaphore>,
}

impl Server {
    async fn serve<S>(self: Arc<Self>, mut conn: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Ok(_slot) = self.slots.clone().try_acquire_owned() else {
            refuse(
                &mut conn,
                &format!("too many debug consoles are open (at most {MAX_CONSOLES})"),
            )
            .await;
            return;
        };
        if !self.shell.is_file() {
            refuse(
                &mut conn,
                &format!(
                    "no debug shell at {} in this guest (the runtime puts [agent] \
                     debug_busybox_path there when a pod starts with debug_console = true)",
                    self.shell.display()
                ),
            )
            .await;
            return;
        }
        if let Err(e) = console(&mut conn, &self.shell, &self.reaper).await {
            tracing::warn!(error = %e, "debug console failed");
            refuse(&mut conn, &format!("the debug console failed: {e}")).await;
        }
    }
}

/// Writes one line of explanation and closes the write side.
async fn refuse<S: AsyncWrite + Unpin>(conn: &mut S, why: &str) {
    tracing::info!(why, "refusing a debug console");
    let _ = conn.write_all(format!("isola: {why}\r\n").as_bytes()).await;
    let _ = conn.shutdown().await;
}

/// Opens a pty pair, both ends close-on-exec (so no other child of the agent inherits them).
fn open_pty() -> io::Result<(OwnedFd, OwnedFd)> {
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    nix::pty::grantpt(&master)?;
    nix::pty::unlockpt(&master)?;
    let name = nix::pty::ptsname_r(&master)?;
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&name)?;
    let master = master.as_fd().try_clone_to_owned()?;
    Ok((master, OwnedFd::from(slave)))
}

/// Starts the shell on `slave` as a new session whose controlling terminal it is.
fn spawn_shell(shell: &Path, slave: &OwnedFd) -> io::Result<Pid> {
    let mut cmd = Command::new(shell);
    cmd.args(["sh", "-i"])
        .env_clear()
        .envs(SHELL_ENV)
        .current_dir("/")
        .stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave.try_clone()?));
    // SAFETY: only async-signal-safe calls (setsid, ioctl) run between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()?;
            if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // The child is never waited for through `Child`: the reaper collects it.
    let child = cmd.spawn()?;
    Ok(Pid::from_raw(child.id() as i32))
}

/// Runs one console on `conn` until the connection closes or the shell exits.
async fn console<S>(conn: &mut S, shell: &Path, reaper: &Reaper) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (master, slave) = open_pty()?;
    pty::set_default_size(slave.as_fd())?;
    let (pid, mut exited) = reaper.spawn_watched(|| spawn_shell(shell, &slave))?;
    drop(slave);
    tracing::info!(pid = pid.as_raw(), "debug console opened");
    let master = FdIo::new(master)?;
    let (mut from_master, mut to_master) = tokio::io::split(master);
    let (mut from_conn, mut to_conn) = tokio::io::split(conn);
    let mut reaped = false;
    let end = {
        let mut to_shell = std::pin::pin!(tokio::io::copy(&mut from_conn, &mut to_master));
        let mut from_shell = std::pin::pin!(tokio::io::copy(&mut from_master, &mut to_conn));
        let end = tokio::select! {
            r = &mut to_shell => if r.is_ok() { End::ConnectionClosed } else { End::ShellGone },
            _ = &mut from_shell => End::OutputEnded,
            _ = &mut exited => {
                reaped = true;
                End::ShellGone
            }
        };
        if end == End::ShellGone {
            // Its last output may still be in the pty.
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, &mut from_shell).await;
        }
        end
    };
    kill_session(pid);
    if !reaped {
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, exited).await;
    }
    let _ = to_conn.shutdown().await;
    tracing::info!(pid = pid.as_raw(), ?end, "debug console closed");
    Ok(())
}

/// Why a console ends.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The host closed the connection.
    ConnectionClosed,
    /// Nothing holds the pty any more.
    OutputEnded,
    /// The shell exited (or no longer takes input).
    ShellGone,
}

/// Kills every process of session `sid` (the shell, its jobs, whatever they started).
fn kill_session(sid: Pid) {
    let _ = kill(sid, Signal::SIGKILL);
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if session_of(&stat) == Some(sid.as_raw()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Field 6 (session) of `/proc/<pid>/stat`, counted from the last ')' (the command name may
/// contain anything).
fn session_of(stat: &str) -> Option<i32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    //! The console tests run the host's static busybox (Debian's busybox-static, which
    //! scripts/setup.sh installs) as the shell; they reap children, so they rely on nextest
    //! running each test in its own process.
    use super::*;
    use tokio::io::AsyncReadExt;

    fn server(shell: &Path) -> Arc<Server> {
        Arc::new(Server {
            shell: shell.to_path_buf(),
            reaper: Reaper::start().unwrap(),
            slots: Arc::new(Semaphore::new(MAX_CONSOLES)),
        })
    }

    async fn read_all<R: AsyncRead + Unpin>(r: &mut R) -> String {
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), r.read_to_end(&mut out))
            .await
            .expect("the console ended")
            .unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn a_shell_runs_commands_and_ends_with_exit() {
        let (mut host, guest) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(server(Path::new("/bin/busybox")).serve(guest));
        host.write_all(
            b"echo marker-$((6*7)); echo sid=$(cut -d' ' -f6 /proc/$$/stat) pid=$$\nexit\n",
        )
        .await
        .unwrap();
        let out = read_all(&mut host).await;
        assert!(out.contains("marker-42"), "{out}");
        // The shell leads its own session.
        let line = out.lines().find(|l| l.starts_with("sid=")).expect(&out);
        let (sid, pid) = line.trim().split_once(' ').unwrap();
        assert_eq!(
            sid.trim_start_matches("sid="),
            pid.trim_start_matches("pid=")
        );
        task.await.unwrap();
    }

    #[tokio::test]
    async fn closing_the_connection_kills_the_shell_and_its_jobs() {
        let (mut host, guest) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(server(Path::new("/bin/busybox")).serve(guest));
        host.write_all(b"sleep 1000 & echo job=$!\n").await.unwrap();
        let mut seen = String::new();
        let job = loop {
            let mut buf = [0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(20), host.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "{seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            if let Some(job) = seen
                .lines()
                .filter_map(|l| l.trim().strip_prefix("job="))
                .find_map(|p| p.parse::<i32>().ok())
            {
                break job;
            }
        };
        drop(host);
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .unwrap()
            .unwrap();
        let gone = || {
            std::fs::read_to_string(format!("/proc/{job}/stat"))
                .map_or(true, |s| s.contains(") Z "))
        };
        for _ in 0..100 {
            if gone() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the shell's background job {job} survived the console");
    }

    #[tokio::test]
    async fn a_missing_shell_is_explained_in_one_line() {
        let (mut host, guest) = tokio::io::duplex(4096);
        let task = tokio::spawn(server(Path::new("/nonexistent/busybox")).serve(guest));
        let out = read_all(&mut host).await;
        assert!(
            out.starts_with("isola: no debug shell at /nonexistent/busybox"),
            "{out}"
        );
        assert!(out.contains("debug_console = true"), "{out}");
        assert_eq!(out.lines().count(), 1, "{out}");
        task.await.unwrap();
    }

    #[tokio::test]
    async fn consoles_are_bounded() {
        let srv = server(Path::new("/bin/busybox"));
        let mut open = Vec::new();
        for _ in 0..MAX_CONSOLES {
            let (host, guest) = tokio::io::duplex(4096);
            open.push((host, tokio::spawn(srv.clone().serve(guest))));
        }
        // Let the consoles take their slots.
        for _ in 0..100 {
            if srv.slots.available_permits() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (mut host, guest) = tokio::io::duplex(4096);
        srv.clone().serve(guest).await;
        let out = read_all(&mut host).await;
        assert!(out.contains("too many debug consoles"), "{out}");
        for (host, task) in open {
            drop(host);
            task.await.unwrap();
        }
    }

    #[test]
    fn session_field_and_addresses() {
        assert_eq!(session_of("42 (a b) c) S 1 40 41 0 -1 4194560"), Some(41));
        assert_eq!(session_of("garbage"), None);
        assert_eq!(
            address(&Listen::Unix("/tmp/a.sock".into()), 1027),
            "unix:///tmp/a.sock.debug"
        );
        assert_eq!(address(&Listen::Vsock(1024), 1027), "vsock://-1:1027");
    }
}
