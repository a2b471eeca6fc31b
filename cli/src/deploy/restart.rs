//! Making the node's runtime read its new configuration, the way the node runs it:
//!
//! - `systemd:<unit>`: `systemctl restart <unit>`. The usual choice for containerd, which has no
//!   configuration reload: its shims are separate processes that containerd reconnects to on
//!   start, so running pods (isola's included) survive.
//! - `signal:<pidfile>:<SIG>`: the signal to the pid in a file of the host, e.g. `TERM` to a
//!   runtime its service manager restarts (the test node's). Not `HUP` for a new handler on
//!   CRI-O 1.32: it re-reads its handlers (`Config.ReloadRuntimes`, drop-ins included) but
//!   RunPodSandbox keeps refusing pods of a handler it did not start with, until it restarts
//!   (tests/tests/k8s_runtime_restart.rs checks this). containerd ignores SIGHUP for its
//!   configuration.
//! - `command:<argv…>`: any command (split on whitespace, no quoting), for nodes without
//!   systemd, e.g. the test node's own restart script.
//! - `none`: nothing; the operator restarts the runtime.
//!
//! With `--host-root` other than `/`, `systemctl` and commands run in the host's namespaces
//! through `nsenter -t 1 -m -u -i -n -p` (the pod needs hostPID and privileges); the pid file is
//! read under the host root and the signal sent directly (hostPID: the same pid namespace).
//!
//! After a restart the runtime is back once its socket answers from another process than the
//! one that answered before (its peer credentials): a runtime still answers for a moment after
//! the signal or `systemctl restart` reached it, while it shuts down, and counting that as
//! "back" would have the installer check, label and go on while the runtime goes down.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::Signal;

/// How to make the runtime take up its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    Systemd(String),
    Signal { pidfile: PathBuf, signal: Signal },
    Command(Vec<String>),
    None,
}

impl FromStr for Strategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Strategy, String> {
        let usage = "expected systemd:<unit>, signal:<pidfile>:<SIG>, command:<argv...> or none";
        let (kind, rest) = s.split_once(':').unwrap_or((s, ""));
        match (kind, rest) {
            ("none", "") => Ok(Strategy::None),
            ("systemd", unit) if !unit.is_empty() && !unit.contains(char::is_whitespace) => {
                Ok(Strategy::Systemd(unit.to_string()))
            }
            ("signal", rest) => {
                let (pidfile, sig) = rest.rsplit_once(':').ok_or(format!(
                    "--restart {s}: {usage}, e.g. signal:/run/crio/crio.pid:TERM"
                ))?;
                let name = if sig.starts_with("SIG") {
                    sig.to_string()
                } else {
                    format!("SIG{sig}")
                };
                let signal = Signal::from_str(&name)
                    .map_err(|_| format!("--restart {s}: unknown signal {sig:?} (e.g. TERM)"))?;
                if !Path::new(pidfile).is_absolute() {
                    return Err(format!(
                        "--restart {s}: the pid file must be an absolute host path"
                    ));
                }
                Ok(Strategy::Signal {
                    pidfile: PathBuf::from(pidfile),
                    signal,
                })
            }
            ("command", argv) if !argv.trim().is_empty() => Ok(Strategy::Command(
                argv.split_whitespace().map(str::to_string).collect(),
            )),
            _ => Err(format!("--restart {s}: {usage}")),
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Strategy::Systemd(u) => write!(f, "systemd:{u}"),
            Strategy::Signal { pidfile, signal } => {
                write!(f, "signal:{}:{}", pidfile.display(), signal.as_str())
            }
            Strategy::Command(argv) => write!(f, "command:{}", argv.join(" ")),
            Strategy::None => write!(f, "none"),
        }
    }
}

/// The argv that runs `argv` in the host's namespaces: as it is on the host itself, through
/// nsenter from a pod into those of the host's process `host_pid` (the node's init, 1, unless
/// --host-pid says otherwise).
pub fn on_host(host_root: &Path, host_pid: u32, argv: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    if host_root != Path::new("/") {
        out.extend(["nsenter", "-t"].map(str::to_string));
        out.push(host_pid.to_string());
        out.extend(["-m", "-u", "-i", "-n", "-p", "--"].map(str::to_string));
    }
    out.extend(argv.iter().cloned());
    out
}

impl Strategy {
    /// Whether the runtime comes back as another process: systemd's restart, or a signal that
    /// ends it (its service manager starts it again). Not a reload signal (HUP), and not a
    /// command, which may do either and has done it when it returns. After such a restart the
    /// process that answered before must not count as the runtime being back: it still
    /// answers for a moment after the signal, while it shuts down.
    pub fn replaces_the_process(&self) -> bool {
        match self {
            Strategy::Systemd(_) => true,
            Strategy::Signal { signal, .. } => matches!(
                signal,
                Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT | Signal::SIGKILL
            ),
            Strategy::Command(_) | Strategy::None => false,
        }
    }
}

/// Restarts (or reloads) the runtime.
pub trait Restarter {
    /// Does it; Ok(true) when something was done. With `blocking` false a systemd restart is
    /// only queued (`systemctl restart --no-block`): the caller does not wait for the runtime.
    fn restart(&self, how: &Strategy, blocking: bool) -> anyhow::Result<bool>;
}

/// What came of [`restart_runtime`].
#[derive(Debug, PartialEq, Eq)]
pub enum Restarted {
    /// `--restart none`: the runtime is left as it is.
    NotAsked,
    /// Asked for and, as the caller wanted, not waited for.
    NotWaited,
    /// Answering on its socket again (after a restart, as a new process) after this long.
    Answering(Duration),
}

/// Restarts the runtime as `how` says and, with `wait`, waits at most that long until it
/// answers on `socket` (its path in this process's view) again, from a new process when `how`
/// replaces it (see [`Strategy::replaces_the_process`]).
///
/// Without `wait` the restart is asked for and not waited for. That is for an uninstall from
/// the DaemonSet's pod on its SIGTERM: that pod's termination is an RPC from the kubelet to
/// the runtime, and CRI-O's shutdown waits for its RPCs to finish, so a restart of CRI-O
/// waited for from there waits on itself (the runtime's socket closed, the node without a
/// runtime) until the wait gives up.
pub fn restart_runtime(
    r: &dyn Restarter,
    how: &Strategy,
    socket: &Path,
    wait: Option<Duration>,
) -> anyhow::Result<Restarted> {
    let before = match wait {
        Some(_) if how.replaces_the_process() => serving_pid(socket),
        _ => None,
    };
    if !r.restart(how, wait.is_some())? {
        return Ok(Restarted::NotAsked);
    }
    match wait {
        None => Ok(Restarted::NotWaited),
        Some(t) => Ok(Restarted::Answering(wait_socket(socket, before, t)?)),
    }
}

/// The pid of the process that answers on the Unix socket `path` (its peer credentials), when
/// one answers and its pid is visible from here. Not pid 1: a socket systemd activates carries
/// systemd's credentials, which stay the same across the runtime's restart.
pub fn serving_pid(path: &Path) -> Option<i32> {
    peer_pid(&std::os::unix::net::UnixStream::connect(path).ok()?)
}

/// The pid of the process at the other end of `s`, when visible from here and not pid 1 (see
/// [`serving_pid`]).
fn peer_pid(s: &std::os::unix::net::UnixStream) -> Option<i32> {
    let c = nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::PeerCredentials).ok()?;
    (c.pid() > 1).then_some(c.pid())
}

/// The real one.
pub struct Host {
    pub host_root: PathBuf,
    /// Whose namespaces are the host's (see [`on_host`]).
    pub host_pid: u32,
}

/// Runs `argv`, failing with its output when it fails.
pub fn run(argv: &[String]) -> anyhow::Result<()> {
    let out = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .output()
        .with_context(|| format!("running {}", argv.join(" ")))?;
    if !out.status.success() {
        anyhow::bail!(
            "`{}` failed ({}): {}{}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Restarter for Host {
    fn restart(&self, how: &Strategy, blocking: bool) -> anyhow::Result<bool> {
        match how {
            Strategy::None => return Ok(false),
            Strategy::Systemd(unit) => {
                let mut argv = vec!["systemctl".to_string(), "restart".into()];
                if !blocking {
                    argv.push("--no-block".into());
                }
                argv.push(unit.clone());
                run(&on_host(&self.host_root, self.host_pid, &argv)).with_context(|| {
                    format!("restarting {unit}; is the runtime a systemd unit of that name? Otherwise pass --restart command:... or signal:...")
                })?;
            }
            Strategy::Command(argv) => run(&on_host(&self.host_root, self.host_pid, argv))
                .context("the --restart command failed; fix it, or restart the runtime yourself and pass --restart none")?,
            Strategy::Signal { pidfile, signal } => {
                let local = self.host_root.join(pidfile.strip_prefix("/").unwrap_or(pidfile));
                let text = std::fs::read_to_string(&local)
                    .with_context(|| format!("reading the runtime's pid file {}", local.display()))?;
                let pid: i32 = text.trim().parse().with_context(|| {
                    format!("{}: not a pid: {:?}", local.display(), text.trim())
                })?;
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), *signal).with_context(|| {
                    format!("sending {signal} to pid {pid} (from {}); the pod needs hostPID", local.display())
                })?;
            }
        }
        Ok(true)
    }
}

/// Waits until something other than the process `old` accepts connections on the Unix socket
/// `path`, at most `timeout`.
pub fn wait_socket(path: &Path, old: Option<i32>, timeout: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        let why = match std::os::unix::net::UnixStream::connect(path) {
            Ok(s) => match old {
                Some(pid) if peer_pid(&s) == Some(pid) => format!(
                    "still answered by the runtime asked to restart (pid {pid}), which has \
                     not exited"
                ),
                _ => return Ok(start.elapsed()),
            },
            Err(e) => e.to_string(),
        };
        if start.elapsed() >= timeout {
            anyhow::bail!(
                "the runtime's socket {} did not answer within {:?} ({why}); see the runtime's \
                 log (journalctl -u containerd / crio), or pass --runtime-socket if it lives elsewhere",
                path.display(),
                timeout
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategies_parse_and_print_back() {
        for s in [
            "none",
            "systemd:containerd",
            "signal:/run/crio/crio.pid:SIGHUP",
            "command:/usr/local/bin/restart containerd now",
        ] {
            assert_eq!(s.parse::<Strategy>().unwrap().to_string(), s);
        }
        assert_eq!(
            "signal:/run/crio.pid:HUP".parse::<Strategy>().unwrap(),
            Strategy::Signal {
                pidfile: "/run/crio.pid".into(),
                signal: Signal::SIGHUP
            }
        );
        assert_eq!(
            "command:a  b".parse::<Strategy>().unwrap(),
            Strategy::Command(vec!["a".into(), "b".into()])
        );
        for bad in [
            "",
            "systemd:",
            "systemd:a b",
            "signal:/p",
            "signal:/p:NOPE",
            "signal:p:HUP",
            "command:",
            "reboot",
            "none:x",
        ] {
            let e = bad.parse::<Strategy>().unwrap_err();
            assert!(e.contains("--restart"), "{bad}: {e}");
        }
    }

    #[test]
    fn commands_enter_the_host_from_a_pod_only() {
        let argv = [
            "systemctl".to_string(),
            "restart".into(),
            "containerd".into(),
        ];
        assert_eq!(on_host(Path::new("/"), 1, &argv), argv);
        let from_pod = on_host(Path::new("/host"), 1, &argv);
        assert_eq!(&from_pod[..3], ["nsenter", "-t", "1"]);
        let elsewhere = on_host(Path::new("/host"), 4242, &argv);
        assert_eq!(&elsewhere[..3], ["nsenter", "-t", "4242"]);
        assert_eq!(&from_pod[from_pod.len() - 3..], argv);
    }

    #[test]
    fn signals_reach_the_pid_in_the_pid_file() {
        let host = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        std::fs::create_dir_all(host.path().join("run")).unwrap();
        std::fs::write(host.path().join("run/rt.pid"), format!("{}\n", child.id())).unwrap();
        let r = Host {
            host_root: host.path().to_path_buf(),
            host_pid: 1,
        };
        let how: Strategy = "signal:/run/rt.pid:TERM".parse().unwrap();
        assert!(r.restart(&how, true).unwrap());
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(15));
        let missing: Strategy = "signal:/run/none.pid:HUP".parse().unwrap();
        let e = r.restart(&missing, true).unwrap_err();
        assert!(format!("{e:#}").contains("pid file"), "{e:#}");
        assert!(!r.restart(&Strategy::None, true).unwrap());
    }

    #[test]
    fn a_failing_command_says_so_with_its_output() {
        let r = Host {
            host_root: "/".into(),
            host_pid: 1,
        };
        let ok: Strategy = "command:true".parse().unwrap();
        assert!(r.restart(&ok, true).unwrap());
        let bad: Strategy = "command:sh -c echo_nope".parse().unwrap();
        let e = format!("{:#}", r.restart(&bad, false).unwrap_err());
        assert!(
            e.contains("echo_nope") && e.contains("--restart none"),
            "{e}"
        );
    }

    #[test]
    fn waiting_for_a_socket_is_bounded() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("s.sock");
        let e = wait_socket(&sock, None, Duration::from_millis(300)).unwrap_err();
        assert!(e.to_string().contains("did not answer"), "{e}");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        assert!(wait_socket(&sock, None, Duration::from_secs(5)).is_ok());
    }

    #[test]
    fn after_a_restart_the_process_asked_to_restart_does_not_count_as_back() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("s.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let me = std::process::id() as i32;
        assert_eq!(serving_pid(&sock), Some(me));
        assert_eq!(serving_pid(&d.path().join("none.sock")), None);
        let e = wait_socket(&sock, Some(me), Duration::from_millis(300)).unwrap_err();
        assert!(
            e.to_string().contains(&format!(
                "still answered by the runtime asked to restart (pid {me})"
            )),
            "{e}"
        );
        assert!(wait_socket(&sock, Some(me + 1), Duration::from_secs(5)).is_ok());
    }

    #[test]
    fn only_a_restart_replaces_the_process() {
        for (s, replaces) in [
            ("systemd:crio", true),
            ("signal:/run/crio.pid:TERM", true),
            ("signal:/run/crio.pid:KILL", true),
            ("signal:/run/crio.pid:HUP", false),
            ("command:/usr/local/bin/restart-runtime", false),
            ("none", false),
        ] {
            let how: Strategy = s.parse().unwrap();
            assert_eq!(how.replaces_the_process(), replaces, "{s}");
        }
    }
}
