//! Tasks through `ctr` beyond `ctr run`: detached tasks and their removal, and `ctr` on a
//! pseudo-terminal (`ctr run -t` and `ctr tasks exec -t` need one, and pass its size on with
//! ResizePty).

use std::io::Read;
use std::os::fd::AsRawFd;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::containerd::{describe, Containerd};

impl Containerd {
    /// `ctr run -d` of `cmd` with `runtime` and extra options; waits up to `boot` until the
    /// task runs.
    pub fn run_detached(
        &self,
        runtime: &str,
        opts: &[&str],
        id: &str,
        cmd: &[&str],
        boot: Duration,
    ) {
        let mut all = vec!["-d"];
        all.extend_from_slice(opts);
        let out = self.run_with_runtime(runtime, &all, id, cmd, None);
        assert!(out.status.success(), "ctr run -d {id}: {}", describe(&out));
        self.wait_task_status(id, "RUNNING", boot);
    }

    /// Kills and removes a detached task and its container.
    pub fn kill_and_remove(&self, id: &str) {
        let _ = self.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
        self.wait_task_status(id, "STOPPED", Duration::from_secs(60));
        let rm = self.ctr(&["tasks", "rm", id]);
        assert!(rm.status.success(), "ctr tasks rm: {}", describe(&rm));
        let rm = self.ctr(&["containers", "rm", id]);
        assert!(rm.status.success(), "ctr containers rm: {}", describe(&rm));
    }

    /// Runs `ctr <args>` on a new pseudo-terminal; returns the exit code and what appeared on
    /// the terminal.
    pub fn ctr_on_pty(&self, args: &[&str], timeout: Duration) -> (Option<i32>, String) {
        self.ctr_on_sized_pty(args, timeout, None)
    }

    /// [`Containerd::ctr_on_pty`] on a terminal of `size` (rows, columns).
    pub fn ctr_on_sized_pty(
        &self,
        args: &[&str],
        timeout: Duration,
        size: Option<(u16, u16)>,
    ) -> (Option<i32>, String) {
        let winsize = size.map(|(rows, cols)| nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        });
        let pty = nix::pty::openpty(winsize.as_ref(), None).expect("openpty");
        let slave = std::fs::File::from(pty.slave);
        let mut cmd = self.ctr_command();
        cmd.args(args)
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        let mut child = cmd.spawn().expect("spawning ctr");
        drop(cmd);
        let mut master = std::fs::File::from(pty.master);
        let fd = master.as_raw_fd();
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            let mut buf = [0u8; 4096];
            // EIO once every slave end is closed.
            while let Ok(n) = master.read(&mut buf) {
                if n == 0 {
                    break;
                }
                all.extend_from_slice(&buf[..n]);
            }
            String::from_utf8_lossy(&all).into_owned()
        });
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("ctr {} on a pty (fd {fd}) did not finish", args.join(" "));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (status.code(), reader.join().unwrap())
    }
}
