//! Helpers shared by the real-VM tests of both backends (vm.rs, vm_clh.rs).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use isola_hypervisor::{AcceleratorChoice, SharedFsConfig, VmConfig, VsockChoice};

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "isola_hypervisor=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A guest image path from `var`, or the workspace's build/guest/`file`; panics if missing.
pub fn image(var: &str, file: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../build/guest")
            .join(file)
    });
    assert!(
        path.is_file(),
        "guest image {} not found: build the guest images (build/guest/{file}) or set {var}",
        path.display()
    );
    path
}

pub fn binary(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from)
}

/// A VM config for a fresh tempdir: state_dir and shared dir inside it.
pub fn config(dir: &Path, id: &str) -> VmConfig {
    let shared = dir.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    VmConfig {
        id: id.into(),
        state_dir: dir.join("state"),
        qemu_path: binary("ISOLA_TEST_QEMU", "qemu-system-x86_64"),
        kernel: image("ISOLA_TEST_KERNEL", "vmlinux"),
        initrd: image("ISOLA_TEST_INITRD", "initrd.img"),
        firmware: Some("/usr/share/qemu/qboot.rom".into()).filter(|p: &PathBuf| p.exists()),
        accelerator: AcceleratorChoice::Auto,
        vcpus: 1,
        memory_mib: 512,
        shared_fs: Some(SharedFsConfig {
            virtiofsd_path: binary("ISOLA_TEST_VIRTIOFSD", "virtiofsd"),
            shared_dir: shared,
            cache: "auto".into(),
            sandbox: "namespace".into(),
            tag: "isola".into(),
        }),
        vsock: VsockChoice::Auto,
        vhost_user_vsock_path: binary("ISOLA_TEST_VHOST_VSOCK", "vhost-device-vsock"),
        ..VmConfig::default()
    }
}

/// Pids of processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push((pid, cmdline));
        }
    }
    found
}

pub fn assert_cleaned_up(state_dir: &Path) {
    let left = processes_mentioning(&state_dir.display().to_string());
    assert!(left.is_empty(), "processes left behind: {left:?}");
    assert!(!state_dir.exists(), "{} still exists", state_dir.display());
}

pub fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}
