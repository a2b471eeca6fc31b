//! Shared helpers for isola's integration tests.
//!
//! Real-VM tests are named `vm_*` so nextest runs them one at a time (`.config/nextest.toml`).
//! They need the guest image from `make guest` (build/guest/); a missing image is a test
//! failure with a message saying so, never a silent pass.

pub mod bench;
pub mod cluster;
pub mod containerd;
pub mod cri;
pub mod cri_engine;
pub mod cri_leaks;
pub mod cri_port_forward;
pub mod cri_stream;
pub mod crio;
pub mod ctr_child;
pub mod ctr_tasks;
pub mod handlers;
pub mod keeper;
pub mod mounts;
pub mod probe;
pub mod supervisor;
pub mod workload_scripts;

use std::path::{Path, PathBuf};

use isola_config::Config;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository")
        .to_path_buf()
}

/// A guest image file: `$ISOLA_TEST_<VAR>` or build/guest/<name>. Panics with a clear message
/// when it is missing.
pub fn guest_file(var: &str, name: &str) -> PathBuf {
    let path = std::env::var_os(format!("ISOLA_TEST_{var}"))
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("build/guest").join(name));
    assert!(
        path.is_file(),
        "guest image file {} is missing: run `make guest` first (or set ISOLA_TEST_{var})",
        path.display()
    );
    path
}

/// The `uname -r` of the guest image's kernel: `kernel.version` next to the kernel file
/// (build/guest/kernel.version for the default kernel, build/guest/debian/kernel.version for
/// `ISOLA_TEST_KERNEL=build/guest/debian/vmlinux`). Panics when it is missing or empty.
pub fn guest_kernel_release() -> String {
    let file = guest_file("KERNEL", "vmlinux").with_file_name("kernel.version");
    let release = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{}: {e} (run `make guest`)", file.display()));
    let release = release.trim().to_string();
    assert!(!release.is_empty(), "{} is empty", file.display());
    release
}

/// The backend the VM tests run on: `$ISOLA_TEST_HYPERVISOR` (`qemu`, the default, or
/// `cloud-hypervisor`). `make test` runs the ctr suite a second time with Cloud Hypervisor on
/// hosts with hardware KVM, and says why it does not elsewhere.
pub fn test_hypervisor() -> isola_config::HypervisorKind {
    match std::env::var("ISOLA_TEST_HYPERVISOR").as_deref() {
        Ok("cloud-hypervisor") => isola_config::HypervisorKind::CloudHypervisor,
        Ok("qemu") | Err(_) => isola_config::HypervisorKind::Qemu,
        Ok(other) => panic!("ISOLA_TEST_HYPERVISOR={other}: use qemu or cloud-hypervisor"),
    }
}

/// The Cloud Hypervisor binary for tests: `$ISOLA_TEST_CLOUD_HYPERVISOR`, else v49 from
/// ../shared/tools/cloud-hypervisor (what CI has). Panics saying so when it is missing.
pub fn test_cloud_hypervisor() -> PathBuf {
    let p = std::env::var_os("ISOLA_TEST_CLOUD_HYPERVISOR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/tools/cloud-hypervisor/cloud-hypervisor"));
    assert!(
        p.is_file(),
        "{} is missing: Cloud Hypervisor v49 comes from ../shared/tools/cloud-hypervisor (or set \
         ISOLA_TEST_CLOUD_HYPERVISOR)",
        p.display()
    );
    p
}

/// The command name (`/proc/<pid>/comm`, 15 characters) of the test backend's VMM.
pub fn test_vmm_comm() -> &'static str {
    match test_hypervisor() {
        isola_config::HypervisorKind::Qemu => "qemu-system",
        isola_config::HypervisorKind::CloudHypervisor => "cloud-hyperviso",
    }
}

/// A test environment: its own state directory and a configuration using the built image.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub config: Config,
}

impl TestEnv {
    /// The default configuration with the built guest image and a private state directory.
    pub fn new() -> TestEnv {
        // Short base path: Unix socket paths under it must stay within 107 bytes.
        let dir = tempfile::Builder::new()
            .prefix("isola-t")
            .tempdir_in("/tmp")
            .expect("creating a temporary directory");
        let mut config = Config::default();
        config.hypervisor.kernel = guest_file("KERNEL", "vmlinux");
        config.hypervisor.initrd = guest_file("INITRD", "initrd.img");
        config.runtime.state_dir = dir.path().to_path_buf();
        config.agent.dial_timeout_ms = 60_000;
        config.hypervisor.kind = test_hypervisor();
        if config.hypervisor.kind == isola_config::HypervisorKind::CloudHypervisor {
            config.hypervisor.cloud_hypervisor_path = test_cloud_hypervisor();
        }
        config
            .validate(Path::new("<test>"))
            .expect("test configuration is valid");
        TestEnv { dir, config }
    }

    /// Writes the configuration as a TOML file and returns its path.
    pub fn write_config(&self) -> PathBuf {
        let path = self.dir.path().join("configuration.toml");
        std::fs::write(&path, self.config.to_toml_string().expect("serializable")).unwrap();
        path
    }
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

/// Pids of processes whose command line mentions `needle` (e.g. a state directory).
pub fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    processes_matching(needle, false)
}

/// Like [`processes_mentioning`], and also those working in a directory whose path mentions
/// `needle`: a shim CRI-O starts names no directory of CRI-O's on its command line
/// (`-address ""`) but works in the sandbox's bundle there.
pub fn processes_mentioning_or_in(needle: &str) -> Vec<(u32, String)> {
    processes_matching(needle, true)
}

fn processes_matching(needle: &str, or_cwd: bool) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        let in_it = || {
            std::fs::read_link(e.path().join("cwd"))
                .map(|p| p.to_string_lossy().contains(needle))
                .unwrap_or(false)
        };
        if cmd.contains(needle) || (or_cwd && in_it()) {
            found.push((pid, cmd));
        }
    }
    found
}

/// Stops `child`: SIGTERM, up to `grace` for it to exit, then SIGKILL; reaps it either way.
pub fn stop_child(child: &mut std::process::Child, grace: std::time::Duration) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The short process name (`/proc/<pid>/comm`).
pub fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The parent of process `pid` (0 once it is gone).
pub fn parent_pid(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // pid (comm) state ppid ...: the comm may hold spaces, so count from its closing paren.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// The shim serving sandbox `id` (containerd starts it with `-id <id>`); panics unless there is
/// exactly one.
pub fn shim_serving(id: &str) -> u32 {
    let found: Vec<u32> = processes_mentioning(&format!("-id {id} "))
        .into_iter()
        .map(|(pid, _)| pid)
        .filter(|pid| comm(*pid).starts_with("containerd-shim"))
        .collect();
    assert_eq!(found.len(), 1, "the shim of {id}: {found:?}");
    found[0]
}
