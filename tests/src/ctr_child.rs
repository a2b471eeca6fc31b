//! A child process (usually `ctr`) run in the background with its output collected, a deadline
//! on waiting for it, and a kill when dropped: what the containerd tests drive `ctr` with.

use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::containerd::describe;

/// Runs `cmd` to completion with `input` on stdin, collecting its output; kills it and fails
/// after `timeout`.
pub fn run_with_deadline(
    cmd: &mut Command,
    input: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<Output, String> {
    let what = format!("{cmd:?}");
    let mut child = CtrChild::spawn_with_input(cmd, input, None, what)?;
    child.wait_timeout(timeout)
}

/// Something to wait for before closing a child's stdin; the flag says the child has exited.
pub(crate) type Hold = Box<dyn FnOnce(&AtomicBool) + Send>;

/// A background `ctr` (or other) process whose output is collected; killed when dropped.
pub struct CtrChild {
    what: String,
    child: Child,
    exited: Arc<AtomicBool>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    stdin: Option<JoinHandle<()>>,
}

impl CtrChild {
    pub(crate) fn spawn(cmd: &mut Command, what: String) -> CtrChild {
        match CtrChild::spawn_with_input(cmd, None, None, what.clone()) {
            Ok(c) => c,
            Err(e) => panic!("{what}: {e}"),
        }
    }

    pub(crate) fn spawn_with_input(
        cmd: &mut Command,
        input: Option<Vec<u8>>,
        hold: Option<Hold>,
        what: String,
    ) -> Result<CtrChild, String> {
        cmd.stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("cannot run: {e}"))?;
        let exited = Arc::new(AtomicBool::new(false));
        let stdin = match (child.stdin.take(), input) {
            (Some(mut pipe), Some(data)) => {
                let exited = exited.clone();
                Some(std::thread::spawn(move || {
                    let _ = pipe.write_all(&data);
                    if let Some(hold) = hold {
                        hold(&exited);
                    }
                    // Dropping the pipe closes it: EOF for the reader.
                }))
            }
            _ => None,
        };
        // Output lands in shared buffers as it comes, for tests to watch (`wait_for_stdout`).
        let reader = |mut r: Box<dyn Read + Send>, buf: Arc<Mutex<Vec<u8>>>| {
            std::thread::spawn(move || {
                let mut chunk = [0u8; 65536];
                loop {
                    match r.read(&mut chunk) {
                        Ok(0) => break,
                        Ok(n) => buf.lock().unwrap().extend_from_slice(&chunk[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(_) => break,
                    }
                }
            })
        };
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        if let Some(s) = child.stdout.take() {
            readers.push(reader(Box::new(s), stdout.clone()));
        }
        if let Some(s) = child.stderr.take() {
            readers.push(reader(Box::new(s), stderr.clone()));
        }
        Ok(CtrChild {
            what,
            child,
            exited,
            stdout,
            stderr,
            readers,
            stdin,
        })
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has exited (without collecting its output).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for it to exit and returns its output; kills it and fails after `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Output, String> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    let partial = self.collect(ExitStatus::default());
                    return Err(format!(
                        "{} did not finish within {timeout:?}; output so far:\n{}",
                        self.what,
                        describe(&partial)
                    ));
                }
                Err(e) => return Err(format!("waiting for {}: {e}", self.what)),
            }
        };
        Ok(self.collect(status))
    }

    /// Waits like [`CtrChild::wait_timeout`], panicking on a timeout.
    pub fn wait(&mut self, timeout: Duration) -> Output {
        match self.wait_timeout(timeout) {
            Ok(o) => o,
            Err(e) => panic!("{e}"),
        }
    }

    /// What it has written to stdout so far.
    pub fn stdout_so_far(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    /// Waits until its stdout so far satisfies `done`; panics with its output when it exits
    /// first, or after `timeout`.
    pub fn wait_for_stdout(&mut self, timeout: Duration, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let so_far = self.stdout_so_far();
            if done(&so_far) {
                return so_far;
            }
            if self.try_status().is_some() {
                let out = self.wait(Duration::from_secs(5));
                panic!("{} ended first: {}", self.what, describe(&out));
            }
            assert!(
                Instant::now() < deadline,
                "{}: not the expected output after {timeout:?}; stdout so far: {so_far:?}",
                self.what
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn collect(&mut self, status: ExitStatus) -> Output {
        self.exited.store(true, Ordering::Relaxed);
        if let Some(h) = self.stdin.take() {
            let _ = h.join();
        }
        for h in self.readers.drain(..) {
            let _ = h.join();
        }
        Output {
            status,
            stdout: std::mem::take(&mut *self.stdout.lock().unwrap()),
            stderr: std::mem::take(&mut *self.stderr.lock().unwrap()),
        }
    }
}

impl Drop for CtrChild {
    fn drop(&mut self) {
        // A stdin holder waiting for the exit lets go.
        self.exited.store(true, Ordering::Relaxed);
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `n` pseudo-random bytes (xorshift64*), the same for the same seed.
pub fn pseudo_random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(n);
    out
}
/// Polls `ls` (`ctr tasks ls`) until task `id` is RUNNING or STOPPED, or `exited` is set, for
/// at most `timeout`.
pub(crate) fn wait_task_started(mut ls: Command, id: &str, exited: &AtomicBool, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline && !exited.load(Ordering::Relaxed) {
        if let Ok(out) = run_with_deadline(&mut ls, None, Duration::from_secs(10)) {
            let listed = String::from_utf8_lossy(&out.stdout).lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.first() == Some(&id) && matches!(f.get(2), Some(&"RUNNING") | Some(&"STOPPED"))
            });
            if listed {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
