//! A private containerd for tests: its own root, state, sockets and log under a short temporary
//! directory (`/tmp/ic.XXXXXX`), the isola shim from the cargo target directory on its
//! `PATH`, and `ISOLA_CONFIG` pointing at a [`TestEnv`] configuration whose state directory lives
//! inside that temporary directory too.
//!
//! Everything a test starts (containerd, shims, their VMs and helpers, `ctr` clients) mentions
//! that directory on its command line, so dropping a [`Containerd`] — also when a test panics —
//! removes tasks and containers, stops containerd, kills whatever is left there, unmounts what is
//! mounted under it and deletes it. A test process killed outright (a nextest timeout) cannot run
//! its destructors: containerd then gets SIGTERM from the kernel (parent-death signal), and the
//! next [`Containerd::start`] on this machine reaps the directories of dead test processes.
//!
//! The shim binary is `<target>/debug/containerd-shim-isola-v2` next to the test executable
//! (built by `cargo nextest run --workspace`), or the one in `$ISOLA_SHIM_DIR`. The test image is
//! `build/images/busybox.tar` from `make images`, or `$ISOLA_TEST_IMAGE`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub use crate::ctr_child::{pseudo_random_bytes, run_with_deadline, CtrChild};
use crate::ctr_child::{wait_task_started, Hold};
pub use crate::mounts::mounts_under;
use crate::supervisor::Policy;
use crate::{processes_mentioning, repo_root, TestEnv};

mod restart;

/// The containerd namespace the tests use.
pub const NAMESPACE: &str = "isola-test";
/// The runtime name `ctr run --runtime` takes for isola.
pub const RUNTIME: &str = "io.containerd.isola.v2";
/// The shim binary containerd looks for on its `PATH` for [`RUNTIME`].
pub const SHIM_BINARY: &str = "containerd-shim-isola-v2";
/// The name `scripts/build-test-image.sh` gives the test image.
pub const TEST_IMAGE: &str = "localhost/isola/busybox:latest";
/// How long one `ctr` invocation may take before the test fails (VMs boot under TCG here).
pub const CTR_TIMEOUT: Duration = Duration::from_secs(180);

/// Short: a CRI pod's VM sockets live at <dir>/s/vm/<64-character id>/ (107-byte limit).
pub(crate) const DIR_PREFIX: &str = "ic.";
pub(crate) const OWNER_FILE: &str = "owner.pid";
/// The directory in a containerd's own (`<dir>/node-bin`) on its `PATH` after the shims under
/// test: the node's /usr/local/bin, where `isola deploy` links its shims.
pub const NODE_BIN: &str = "node-bin";

/// The directory holding the shim binary: `$ISOLA_SHIM_DIR`, else the cargo profile directory of
/// the running test executable (`target/debug/deps/<test>` -> `target/debug`). Panics with a
/// clear message when the shim is not there.
pub fn shim_dir() -> PathBuf {
    let dir = match std::env::var_os("ISOLA_SHIM_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe().expect("the test executable's path");
            let mut dir = exe
                .parent()
                .expect("the test executable's directory")
                .to_path_buf();
            if dir.ends_with("deps") {
                dir.pop();
            }
            dir
        }
    };
    let shim = dir.join(SHIM_BINARY);
    assert!(
        shim.is_file(),
        "{} is missing: build it with `cargo build -p containerd-shim-isola-v2` \
         (cargo nextest run --workspace builds it), or set ISOLA_SHIM_DIR",
        shim.display()
    );
    dir
}

/// The test image tarball: `$ISOLA_TEST_IMAGE`, else build/images/busybox.tar. Panics with a
/// clear message when it is missing.
pub fn test_image_tar() -> PathBuf {
    let path = std::env::var_os("ISOLA_TEST_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("build/images/busybox.tar"));
    assert!(
        path.is_file(),
        "test image {} is missing: run `make images` first (or set ISOLA_TEST_IMAGE)",
        path.display()
    );
    path
}

/// The host's kernel release (`uname -r`).
pub fn host_kernel_release() -> String {
    nix::sys::utsname::uname()
        .expect("uname")
        .release()
        .to_string_lossy()
        .into_owned()
}

/// A command's result for assertion messages: status, then stdout and stderr (each cut to 4 KiB).
pub fn describe(out: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        clip(&out.stdout),
        clip(&out.stderr)
    )
}

fn clip(bytes: &[u8]) -> String {
    const MAX: usize = 4096;
    let s = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX)]).into_owned();
    if bytes.len() > MAX {
        format!("{s}... ({} bytes in all)", bytes.len())
    } else {
        s
    }
}

/// A task as `ctr tasks ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInfo {
    pub id: String,
    pub pid: u32,
    pub status: String,
}

/// What a container left behind on the host (see [`Containerd::leftovers`]).
#[derive(Debug, Default)]
pub struct Leftovers {
    /// Processes (other than containerd itself) mentioning the private directory.
    pub processes: Vec<(u32, String)>,
    /// Mount points under the private directory.
    pub mounts: Vec<String>,
    /// Files, sockets or per-sandbox directories under isola's state directory.
    pub state: Vec<PathBuf>,
}

impl Leftovers {
    pub fn is_empty(&self) -> bool {
        self.processes.is_empty() && self.mounts.is_empty() && self.state.is_empty()
    }
}

/// A private containerd; see the module documentation.
pub struct Containerd {
    dir: PathBuf,
    env: TestEnv,
    isola_config: PathBuf,
    /// containerd, forked and awaited by its supervisor's thread (None once killed).
    daemon: Option<crate::supervisor::Supervisor>,
    /// What the supervisor does when containerd exits on its own.
    policy: crate::supervisor::Policy,
}

impl Containerd {
    /// Starts a private containerd with the default test configuration ([`TestEnv::new`]).
    pub fn start() -> Containerd {
        Containerd::start_in(TestEnv::new(), true, Policy::Never)
    }

    /// Starts a private containerd whose shims use `env`'s configuration (its state directory is
    /// replaced by one inside the private directory).
    pub fn start_with(env: TestEnv) -> Containerd {
        Containerd::start_in(env, false, Policy::Never)
    }

    /// `move_env`: put `env`'s directory (the configuration file) inside the private directory
    /// too, so that a killed test leaves nothing outside it. `policy`: what happens when
    /// containerd exits on its own.
    fn start_in(mut env: TestEnv, move_env: bool, policy: Policy) -> Containerd {
        reap_stale();
        let shim_dir = shim_dir();
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir_in("/tmp")
            .expect("creating the private containerd directory")
            .keep();
        std::fs::write(dir.join(OWNER_FILE), std::process::id().to_string())
            .expect("writing the owner file");
        // Short: CRI sandbox ids are 64 characters, and the VM's sockets under
        // <state>/vm/<id>/ must stay within the 107-byte Unix socket path limit.
        let state_dir = dir.join("s");
        std::fs::create_dir_all(&state_dir).expect("creating isola's state directory");
        std::fs::create_dir_all(dir.join("cni/net.d")).expect("creating the CNI conf directory");
        crate::cri::write_cni_config(&dir).expect("writing the CNI configuration");
        std::fs::create_dir_all(dir.join("fifo")).expect("creating the fifo directory");
        env.config.runtime.state_dir = state_dir;
        if move_env {
            env.dir = tempfile::Builder::new()
                .prefix("env")
                .tempdir_in(&dir)
                .expect("creating the test environment directory");
        }
        let isola_config = env.write_config();
        let config = dir.join("config.toml");
        std::fs::write(&config, containerd_config(&dir, &isola_config))
            .expect("writing the containerd configuration");
        crate::handlers::install_clh_containerd(&config, &isola_config, env.dir.path()).unwrap();
        let daemon = match restart::spawn(&dir, &isola_config, &shim_dir, policy.clone()) {
            Ok(d) => d,
            Err(e) => {
                cleanup_dir(&dir);
                panic!("cannot start containerd: {e} (run `make setup`)");
            }
        };
        let mut c = Containerd {
            dir,
            env,
            isola_config,
            daemon: Some(daemon),
            policy,
        };
        c.wait_ready();
        c
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(why) = self.daemon.as_ref().and_then(|d| d.ended()) {
                panic!("{why} before answering; its log:\n{}", self.log_tail(40));
            }
            if self.socket().exists() {
                let out = run_with_deadline(
                    Command::new("ctr")
                        .arg("--address")
                        .arg(self.socket())
                        .arg("version"),
                    None,
                    Duration::from_secs(10),
                );
                if matches!(&out, Ok(o) if o.status.success()) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not answer on {} within 30 s; its log:\n{}",
                self.socket().display(),
                self.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The private directory everything lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// containerd's gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// isola's state directory (`runtime.state_dir` of the shim's configuration).
    pub fn state_dir(&self) -> &Path {
        &self.env.config.runtime.state_dir
    }

    /// The isola configuration the shims get (`$ISOLA_CONFIG`).
    pub fn isola_config(&self) -> &Path {
        &self.isola_config
    }

    /// The test environment (the isola configuration).
    pub fn env(&self) -> &TestEnv {
        &self.env
    }

    /// The directory for `ctr --fifo-dir`, inside the private directory.
    pub fn fifo_dir(&self) -> PathBuf {
        self.dir.join("fifo")
    }

    /// containerd's pid.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().and_then(|d| d.pid())
    }

    /// containerd's log so far (the shims log through it too).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// The last `n` lines of containerd's log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// `ctr --address <socket> --namespace isola-test`, to add arguments to.
    pub fn ctr_command(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(self.socket())
            .arg("--namespace")
            .arg(NAMESPACE);
        cmd
    }

    /// Runs `ctr <args>` with no stdin; panics if it takes longer than [`CTR_TIMEOUT`].
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_input(args, None)
    }

    /// Runs `ctr <args>` with `input` on its stdin (none: /dev/null).
    pub fn ctr_input(&self, args: &[&str], input: Option<Vec<u8>>) -> Output {
        let mut cmd = self.ctr_command();
        cmd.args(args);
        match run_with_deadline(&mut cmd, input, CTR_TIMEOUT) {
            Ok(out) => out,
            Err(e) => panic!(
                "ctr {}: {e}; containerd's log:\n{}",
                args.join(" "),
                self.log_tail(40)
            ),
        }
    }

    /// Starts `ctr <args>` in the background (stdin /dev/null, output collected).
    pub fn ctr_spawn(&self, args: &[&str]) -> CtrChild {
        let mut cmd = self.ctr_command();
        cmd.args(args);
        CtrChild::spawn(&mut cmd, args.join(" "))
    }

    /// Imports an OCI image tarball; returns the image name it got.
    pub fn import_image(&self, tar: &Path) -> String {
        let out = self.ctr(&["images", "import", &tar.to_string_lossy()]);
        assert!(
            out.status.success(),
            "ctr images import {}: {}",
            tar.display(),
            describe(&out)
        );
        // "unpacking <name> (sha256:...)...done"
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("unpacking "))
            .and_then(|l| l.split_whitespace().next())
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no image name in ctr's output: {}", describe(&out)))
    }

    /// Imports the test image ([`test_image_tar`]) and checks it got [`TEST_IMAGE`] as its name.
    pub fn import_test_image(&self) -> String {
        let name = self.import_image(&test_image_tar());
        assert_eq!(name, TEST_IMAGE, "the test image's name");
        name
    }

    /// The arguments of `ctr run` with isola and the test image, around the caller's options
    /// (e.g. `--rm`, `-d`), the container id and the command.
    pub fn run_args(&self, opts: &[&str], id: &str, cmd: &[&str]) -> Vec<String> {
        self.run_args_with_runtime(RUNTIME, opts, id, cmd)
    }

    /// [`Containerd::run_args`] with another runtime (e.g. `io.containerd.runc.v2`).
    pub fn run_args_with_runtime(
        &self,
        runtime: &str,
        opts: &[&str],
        id: &str,
        cmd: &[&str],
    ) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "run".into(),
            "--runtime".into(),
            runtime.into(),
            "--fifo-dir".into(),
            self.fifo_dir().to_string_lossy().into_owned(),
        ];
        args.extend(opts.iter().map(|s| s.to_string()));
        args.push(TEST_IMAGE.into());
        args.push(id.into());
        args.extend(cmd.iter().map(|s| s.to_string()));
        args
    }

    /// `ctr run --rm --runtime io.containerd.isola.v2 <test image> <id> <cmd...>` in the
    /// foreground; ctr's exit status is the task's.
    pub fn run(&self, id: &str, cmd: &[&str]) -> Output {
        self.run_with(&["--rm"], id, cmd, None)
    }

    /// `ctr run` with isola, options, and optionally stdin.
    pub fn run_with(
        &self,
        opts: &[&str],
        id: &str,
        cmd: &[&str],
        input: Option<Vec<u8>>,
    ) -> Output {
        self.run_with_runtime(RUNTIME, opts, id, cmd, input)
    }

    /// `ctr run` with a runtime, options, and optionally stdin.
    ///
    /// With stdin, its end is held back until the task runs: ctr 1.6 forwards the end of its
    /// stdin to the task (CloseIO) only when it reads it after the task was created, so an
    /// early end would leave e.g. `cat` waiting forever, whatever the runtime.
    pub fn run_with_runtime(
        &self,
        runtime: &str,
        opts: &[&str],
        id: &str,
        cmd: &[&str],
        input: Option<Vec<u8>>,
    ) -> Output {
        let args = self.run_args_with_runtime(runtime, opts, id, cmd);
        let mut command = self.ctr_command();
        command.args(&args);
        let hold: Option<Hold> = input.as_ref().map(|_| {
            let mut ls = self.ctr_command();
            ls.args(["tasks", "ls"]);
            let id = id.to_string();
            Box::new(move |exited: &AtomicBool| wait_task_started(ls, &id, exited, CTR_TIMEOUT))
                as Hold
        });
        let result = CtrChild::spawn_with_input(&mut command, input, hold, args.join(" "))
            .and_then(|mut c| c.wait_timeout(CTR_TIMEOUT));
        match result {
            Ok(out) => out,
            Err(e) => panic!(
                "ctr {}: {e}; containerd's log:\n{}",
                args.join(" "),
                self.log_tail(40)
            ),
        }
    }

    /// The tasks `ctr tasks ls` lists.
    pub fn tasks(&self) -> Vec<TaskInfo> {
        let out = self.ctr(&["tasks", "ls"]);
        assert!(out.status.success(), "ctr tasks ls: {}", describe(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some(TaskInfo {
                    id: f.next()?.to_string(),
                    pid: f.next()?.parse().ok()?,
                    status: f.next()?.to_string(),
                })
            })
            .collect()
    }

    /// The status of task `id` (RUNNING, STOPPED, CREATED, ...), if there is such a task.
    pub fn task_status(&self, id: &str) -> Option<String> {
        self.tasks()
            .into_iter()
            .find(|t| t.id == id)
            .map(|t| t.status)
    }

    /// Waits until task `id` has `status`; panics after `timeout`.
    pub fn wait_task_status(&self, id: &str, status: &str, timeout: Duration) -> TaskInfo {
        let deadline = Instant::now() + timeout;
        loop {
            let tasks = self.tasks();
            if let Some(t) = tasks.iter().find(|t| t.id == id && t.status == status) {
                return t.clone();
            }
            assert!(
                Instant::now() < deadline,
                "task {id} is not {status} after {timeout:?}: {tasks:?}; containerd's log:\n{}",
                self.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until task `id`, started by the background `ctr run` `run`, is RUNNING; panics with
    /// ctr's output as soon as that `ctr run` exits, and after `timeout`.
    pub fn wait_running(&self, id: &str, run: &mut CtrChild, timeout: Duration) -> TaskInfo {
        let deadline = Instant::now() + timeout;
        loop {
            let tasks = self.tasks();
            if let Some(t) = tasks.iter().find(|t| t.id == id && t.status == "RUNNING") {
                return t.clone();
            }
            if run.try_status().is_some() {
                let out = run.wait(Duration::from_secs(5));
                panic!("ctr run {id} ended before its task ran: {}", describe(&out));
            }
            assert!(
                Instant::now() < deadline,
                "task {id} is not RUNNING after {timeout:?}: {tasks:?}; containerd's log:\n{}",
                self.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The container ids `ctr containers ls -q` lists.
    pub fn containers(&self) -> Vec<String> {
        let out = self.ctr(&["containers", "ls", "-q"]);
        assert!(
            out.status.success(),
            "ctr containers ls: {}",
            describe(&out)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Processes whose command line mentions isola's state directory (QEMU, virtiofsd,
    /// vhost-device-vsock of the pods), with their short names.
    pub fn vm_processes(&self) -> Vec<(u32, String)> {
        processes_mentioning(&self.state_dir().to_string_lossy())
            .into_iter()
            .map(|(pid, _)| (pid, crate::comm(pid)))
            .collect()
    }

    /// What is on the host now that should not be once every container is gone: processes
    /// other than containerd mentioning the private directory (shims, VMMs, their helpers),
    /// mounts under it, and anything under isola's state directory but empty directories
    /// directly in it (like `vm/` and `shared/`).
    pub fn leftovers(&self) -> Leftovers {
        let containerd = self.pid();
        let processes = processes_mentioning(&self.dir.to_string_lossy())
            .into_iter()
            .filter(|(pid, _)| Some(*pid) != containerd)
            .collect();
        let mounts = mounts_under(&self.dir);
        let mut state = Vec::new();
        if let Ok(entries) = std::fs::read_dir(self.state_dir()) {
            for e in entries.flatten() {
                let p = e.path();
                // VM templates are a cache kept across pods, like images (tests/tests/templates.rs
                // checks them itself).
                if e.file_name() == "templates" {
                    continue;
                }
                let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
                if !is_dir {
                    state.push(p);
                    continue;
                }
                if let Ok(inner) = std::fs::read_dir(&p) {
                    state.extend(inner.flatten().map(|e| e.path()));
                }
            }
        }
        Leftovers {
            processes,
            mounts,
            state,
        }
    }

    /// Waits up to 15 s for [`Containerd::leftovers`] to be empty; panics naming what is left.
    pub fn assert_nothing_left(&self, after: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = self.leftovers();
            if left.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "left behind after {after}:\n  processes: {:?}\n  mounts: {:?}\n  \
                     under {}: {:?}\ncontainerd's log:\n{}",
                    left.processes,
                    left.mounts,
                    self.state_dir().display(),
                    left.state,
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Best effort: kill and delete every task, delete every container, through containerd.
    fn remove_all(&self) {
        let short = Duration::from_secs(30);
        let ctr = |args: &[&str]| {
            let mut cmd = self.ctr_command();
            cmd.args(args);
            run_with_deadline(&mut cmd, None, short).ok()
        };
        let Some(out) = ctr(&["tasks", "ls", "-q"]) else {
            return;
        };
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            ctr(&["tasks", "kill", "-a", "-s", "SIGKILL", id]);
            ctr(&["tasks", "rm", "-f", id]);
        }
        if let Some(out) = ctr(&["containers", "ls", "-q"]) {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                ctr(&["containers", "rm", id]);
            }
        }
    }

    fn stop_containerd(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            daemon.stop(Duration::from_secs(10));
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            eprintln!(
                "--- private containerd {} (log tail) ---\n{}\n---",
                self.dir.display(),
                self.log_tail(60)
            );
        }
        if self.daemon.is_some() {
            self.remove_all();
        }
        self.stop_containerd();
        cleanup_dir(&self.dir);
    }
}

/// The configuration (version 2) of a private containerd in `dir`.
fn containerd_config(dir: &Path, isola_config: &Path) -> String {
    let d = dir.display();
    format!(
        r#"# A private containerd for isola's tests (tests/src/containerd.rs).
version = 2
root = "{d}/root"
state = "{d}/state"

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd-ttrpc.sock"

[debug]
  level = "debug"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
  stream_server_port = "0"
  sandbox_image = "{pause}"

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{d}/cni/net.d"

# Naming a runtime replaces containerd's built-in list: runc stays the CRI's default.
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.isola]
  runtime_type = "{RUNTIME}"
  pod_annotations = ["io.isola.config.*"]
  privileged_without_host_devices = true

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.isola.options]
  ConfigPath = "{cfg}"
"#,
        cfg = isola_config.display(),
        pause = crate::cri::PAUSE_IMAGE,
    )
}

/// Kills every process mentioning `dir`, unmounts everything under it, removes it.
pub(crate) fn cleanup_dir(dir: &Path) {
    let needle = dir.to_string_lossy().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let procs = crate::processes_mentioning_or_in(&needle);
        if procs.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            eprintln!("processes still mentioning {needle} after SIGKILL: {procs:?}");
            break;
        }
        for (pid, _) in &procs {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for m in mounts_under(dir).iter().rev() {
        if let Err(e) = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("unmounting {m}: {e}");
        }
    }
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!("removing {}: {e}", dir.display());
        }
    }
}

/// Removes the private directories of test processes that died without cleaning up.
pub(crate) fn reap_stale() {
    let Ok(entries) = std::fs::read_dir("/tmp") else {
        return;
    };
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let dir = e.path();
        let owner_alive = match std::fs::read_to_string(dir.join(OWNER_FILE)) {
            Ok(pid) => Path::new(&format!("/proc/{}", pid.trim())).exists(),
            // Being created right now, or from something else: only reap it when old.
            Err(_) => e
                .metadata()
                .and_then(|m| m.modified())
                .map(|t| t.elapsed().unwrap_or_default() < Duration::from_secs(3600))
                .unwrap_or(true),
        };
        if !owner_alive {
            eprintln!("reaping {} (its test process is gone)", dir.display());
            crate::cluster::reap(&dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_names_the_private_paths_and_the_runtime() {
        let c = containerd_config(Path::new("/tmp/isola-c.ab"), Path::new("/x/i.toml"));
        let doc: toml::Value = toml::from_str(&c).expect("valid TOML");
        assert_eq!(doc["version"].as_integer(), Some(2));
        assert_eq!(
            doc["grpc"]["address"].as_str(),
            Some("/tmp/isola-c.ab/containerd.sock")
        );
        let cri = &doc["plugins"]["io.containerd.grpc.v1.cri"];
        assert_eq!(cri["restrict_oom_score_adj"].as_bool(), Some(true));
        assert_eq!(cri["sandbox_image"].as_str(), Some(crate::cri::PAUSE_IMAGE));
        let runc = &cri["containerd"]["runtimes"]["runc"];
        assert_eq!(runc["runtime_type"].as_str(), Some("io.containerd.runc.v2"));
        let isola = &cri["containerd"]["runtimes"]["isola"];
        assert_eq!(isola["runtime_type"].as_str(), Some(RUNTIME));
        assert_eq!(isola["options"]["ConfigPath"].as_str(), Some("/x/i.toml"));
    }

    #[test]
    fn pseudo_random_bytes_are_deterministic_and_varied() {
        let a = pseudo_random_bytes(1000, 7);
        assert_eq!(a, pseudo_random_bytes(1000, 7));
        assert_ne!(a, pseudo_random_bytes(1000, 8));
        assert_eq!(a.len(), 1000);
        let distinct: std::collections::HashSet<u8> = a.iter().copied().collect();
        assert!(distinct.len() > 200);
    }
}
