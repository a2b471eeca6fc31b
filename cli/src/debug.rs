//! `isola debug console <sandbox>`: a root shell in a pod's guest, outside every container.
//!
//! Off unless the configuration sets `[agent] debug_console = true`; a pod started while it was
//! off has no console (its agent does not serve one and its guest has no shell), so both the
//! configuration and the pod's record (`debug_console`, written by the shim) must say so. The
//! console is reached on guest vsock port [`DEBUG_CONSOLE_PORT`] through the endpoint the shim
//! recorded: the hybrid vsock socket, or the guest's CID with kernel vsock.
//!
//! With a terminal on stdin, the terminal is put in raw mode (restored on the way out) and
//! every key goes to the guest's pty. Without one (a pipe), the bytes are copied as they come
//! and the end of input is passed on as ^D, which ends the shell once it has read everything
//! before it. The command returns when the guest closes the connection.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;
use isola_agent_client::dial::{hybrid_once, vsock_once};
use isola_agent_proto::DEBUG_CONSOLE_PORT;
use isola_config::Config;
use isola_sandbox::record::SandboxRecord;
use nix::sys::termios::{self, SetArg, Termios};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// `isola debug ...`
#[derive(Subcommand)]
pub enum Debug {
    /// Open a root shell in a pod's guest, outside every container (needs
    /// `[agent] debug_console = true` when the pod started)
    Console {
        /// The sandbox (pod) id, as `isola ps` lists it
        sandbox: String,
    },
}

/// How long connecting to the guest may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The byte a terminal sends for ^D: end of input for the guest's shell.
const EOT: u8 = 0x04;

/// Runs `isola debug ...`.
pub async fn run(explicit: Option<&Path>, what: Debug) -> anyhow::Result<bool> {
    match what {
        Debug::Console { sandbox } => {
            let (cfg, cfg_path) = crate::load_config(explicit)?;
            let record = find_record(&cfg.runtime.state_dir, &sandbox)?;
            check_enabled(&cfg, &cfg_path, &record)?;
            let conn = connect(&record).await?;
            console(conn).await?;
            Ok(true)
        }
    }
}

/// The record of sandbox `id` under `state_dir`, or an error naming the id and `isola ps`.
pub fn find_record(state_dir: &Path, id: &str) -> anyhow::Result<SandboxRecord> {
    let path = SandboxRecord::path(state_dir, id);
    if !path.is_file() {
        bail!(
            "no isola sandbox {id:?} on this node (no {}); `isola ps` lists the sandboxes",
            path.display()
        );
    }
    SandboxRecord::load(&path).with_context(|| format!("reading the record of sandbox {id:?}"))
}

/// Refuses unless the configuration enables the console and the pod booted with it.
pub fn check_enabled(cfg: &Config, cfg_path: &Path, record: &SandboxRecord) -> anyhow::Result<()> {
    if !cfg.agent.debug_console {
        bail!(
            "the debug console is off: set [agent] debug_console = true in {} (pods started \
             after that can be debugged)",
            cfg_path.display()
        );
    }
    if !record.debug_console {
        bail!(
            "this pod was started without the debug console; set [agent] debug_console = true \
             in {} and restart the pod",
            cfg_path.display()
        );
    }
    Ok(())
}

/// A byte stream to the guest.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Where the recorded VM's vsock is reached: the hybrid socket, else the CID.
fn target(record: &SandboxRecord) -> anyhow::Result<Target> {
    if let Some(path) = &record.vsock_socket {
        return Ok(Target::Hybrid(path.clone()));
    }
    if let Some(cid) = record.vsock_cid {
        return Ok(Target::Cid(cid));
    }
    // Records written before the endpoint was recorded: the hybrid socket's usual place.
    let path = record.vm_dir.join("vsock.sock");
    if path.exists() {
        return Ok(Target::Hybrid(path));
    }
    bail!(
        "the record of sandbox {:?} does not say how to reach its guest (neither a hybrid \
         vsock socket nor a vsock CID)",
        record.sandbox_id
    )
}

#[derive(Debug, PartialEq, Eq)]
enum Target {
    Hybrid(PathBuf),
    Cid(u32),
}

async fn connect(record: &SandboxRecord) -> anyhow::Result<Box<dyn Stream>> {
    let id = &record.sandbox_id;
    let target = target(record)?;
    let dial = async {
        Ok::<Box<dyn Stream>, isola_agent_client::DialError>(match &target {
            Target::Hybrid(path) => Box::new(hybrid_once(path, DEBUG_CONSOLE_PORT).await?),
            Target::Cid(cid) => Box::new(vsock_once(*cid, DEBUG_CONSOLE_PORT).await?),
        })
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, dial).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(anyhow::Error::new(e).context(format!(
            "the guest of sandbox {id:?} does not serve the debug console on vsock port \
             {DEBUG_CONSOLE_PORT}"
        ))),
        Err(_) => bail!(
            "the guest of sandbox {id:?} did not answer on vsock port {DEBUG_CONSOLE_PORT} \
             within {CONNECT_TIMEOUT:?}"
        ),
    }
}

/// Restores the terminal's settings when dropped.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Puts the terminal on stdin in raw mode; None when stdin is no terminal.
    fn enter() -> anyhow::Result<Option<RawMode>> {
        let stdin = std::io::stdin();
        if !nix::unistd::isatty(stdin.as_fd()).unwrap_or(false) {
            return Ok(None);
        }
        let saved = termios::tcgetattr(stdin.as_fd()).context("reading the terminal's mode")?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)
            .context("putting the terminal in raw mode")?;
        Ok(Some(RawMode { saved }))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

/// Copies stdin to the guest and the guest to stdout until the guest closes the connection.
async fn console(conn: Box<dyn Stream>) -> anyhow::Result<()> {
    let raw = RawMode::enter()?;
    if raw.is_some() {
        eprint!("isola: debug console (a root shell in the guest, outside every container); `exit` or ^D ends it\r\n");
    }
    let (mut from_guest, mut to_guest) = tokio::io::split(conn);
    // stdin is read on a thread of its own: a read blocked on a terminal must not keep the
    // runtime from shutting down once the guest has closed the connection.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 4096];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.blocking_send(vec![EOT]);
    });
    let input = async {
        while let Some(chunk) = rx.recv().await {
            if to_guest.write_all(&chunk).await.is_err() {
                break;
            }
        }
        // Input is over; the output goes on until the guest closes.
        std::future::pending::<()>().await;
    };
    let output = async {
        let mut stdout = std::io::stdout();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = from_guest.read(&mut buf).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            stdout.write_all(&buf[..n])?;
            stdout.flush()?;
        }
    };
    let result = tokio::select! {
        () = input => Ok(()),
        r = output => r,
    };
    drop(raw);
    result.context("copying the debug console's output")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(debug_console: bool) -> SandboxRecord {
        SandboxRecord {
            sandbox_id: "pod1".into(),
            debug_console,
            ..Default::default()
        }
    }

    #[test]
    fn refusals_name_the_key_and_the_file() {
        let path = Path::new("/etc/isola/configuration.toml");
        let mut cfg = Config::default();
        let off = check_enabled(&cfg, path, &record(true))
            .unwrap_err()
            .to_string();
        assert!(off.contains("[agent] debug_console = true"), "{off}");
        assert!(off.contains("/etc/isola/configuration.toml"), "{off}");
        cfg.agent.debug_console = true;
        let pod = check_enabled(&cfg, path, &record(false))
            .unwrap_err()
            .to_string();
        assert!(
            pod.contains("this pod was started without the debug console"),
            "{pod}"
        );
        assert!(pod.contains("[agent] debug_console = true"), "{pod}");
        assert!(pod.contains("restart the pod"), "{pod}");
        check_enabled(&cfg, path, &record(true)).unwrap();
    }

    #[test]
    fn an_unknown_sandbox_names_the_id_and_isola_ps() {
        let tmp = tempfile::tempdir().unwrap();
        let e = find_record(tmp.path(), "nope").unwrap_err().to_string();
        assert!(e.contains("\"nope\"") && e.contains("isola ps"), "{e}");
        let rec = record(true);
        rec.save(&SandboxRecord::path(tmp.path(), "pod1")).unwrap();
        assert_eq!(find_record(tmp.path(), "pod1").unwrap(), rec);
    }

    #[test]
    fn the_recorded_endpoint_is_used() {
        let mut rec = record(true);
        assert!(target(&rec).is_err(), "nothing recorded, no socket");
        rec.vsock_cid = Some(7);
        assert_eq!(target(&rec).unwrap(), Target::Cid(7));
        rec.vsock_socket = Some("/run/isola/vm/p/vsock.sock".into());
        assert_eq!(
            target(&rec).unwrap(),
            Target::Hybrid("/run/isola/vm/p/vsock.sock".into())
        );
    }
}
