//! From the runtime configuration to what the hypervisor receives (pure, unit-tested).

use std::path::{Path, PathBuf};

use isola_config::{Accelerator, Config, HypervisorKind, SharedFs, Vsock};
use isola_hypervisor::{AcceleratorChoice, SharedFsConfig, VmConfig, VsockChoice};

/// The virtio-fs tag the agent mounts the sandbox's shared directory by.
pub const SHARED_FS_TAG: &str = "isolafs";

/// Where one sandbox keeps its state (sockets, console log) and its shared directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxPaths {
    /// `<state_dir>/vm/<vm_dir_name(id)>`: owned by the hypervisor backend, removed when the VM
    /// stops. Its Unix sockets must fit in 107 bytes, hence the short name.
    pub vm_dir: PathBuf,
    /// `<state_dir>/shared/<id>`: shared with the guest over virtio-fs.
    pub shared_dir: PathBuf,
}

impl SandboxPaths {
    /// Paths for sandbox `id` under the runtime state directory.
    pub fn new(state_dir: &Path, id: &str) -> Self {
        SandboxPaths {
            vm_dir: state_dir.join("vm").join(vm_dir_name(id)),
            shared_dir: state_dir.join("shared").join(id),
        }
    }
}

/// Longest sandbox id a VM directory is named after as it is.
pub const MAX_VM_DIR_NAME: usize = 40;

/// The VM directory's name for sandbox `id`: the id itself when it is short, else (CRI's
/// 64-character sandbox ids) its first 23 characters, `-` and a 64-bit FNV-1a hash of the
/// whole id in hex: 40 bytes, so that the VM's socket paths leave room for a longer
/// `state_dir` within the 107 bytes a Unix socket path may have.
pub fn vm_dir_name(id: &str) -> String {
    if id.len() <= MAX_VM_DIR_NAME {
        return id.to_string();
    }
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let prefix: String = id.chars().take(23).collect();
    format!("{prefix}-{hash:016x}")
}

/// Builds the hypervisor's VM description for sandbox `id`.
pub fn vm_config(cfg: &Config, id: &str, paths: &SandboxPaths) -> VmConfig {
    let h = &cfg.hypervisor;
    let mut kernel_params = cfg.agent.kernel_param();
    if cfg.agent.debug_console {
        kernel_params.push(' ');
        kernel_params.push_str(&crate::debug_console::kernel_param());
    }
    if !h.kernel_params.trim().is_empty() {
        kernel_params.push(' ');
        kernel_params.push_str(h.kernel_params.trim());
    }
    let memory_mib = u32::try_from(h.memory_mib).unwrap_or(u32::MAX);
    VmConfig {
        id: id.to_string(),
        state_dir: paths.vm_dir.clone(),
        kind: match h.kind {
            HypervisorKind::Qemu => isola_hypervisor::HypervisorKind::Qemu,
            HypervisorKind::CloudHypervisor => isola_hypervisor::HypervisorKind::CloudHypervisor,
        },
        qemu_path: h.path.clone(),
        cloud_hypervisor_path: h.cloud_hypervisor_path.clone(),
        kernel: h.kernel.clone(),
        initrd: h.initrd.clone(),
        kernel_params,
        machine_type: h.machine_type.as_str().to_string(),
        firmware: h.firmware_path().map(Path::to_path_buf),
        accelerator: match h.accelerator {
            Accelerator::Auto => AcceleratorChoice::Auto,
            Accelerator::Kvm => AcceleratorChoice::Kvm,
            Accelerator::Tcg => AcceleratorChoice::Tcg,
        },
        tcg_tb_size_mib: (h.tcg_tb_size_mib > 0).then_some(h.tcg_tb_size_mib),
        vcpus: h.vcpus,
        memory_mib,
        // The configuration has no hotplug keys (yet): the hypervisor's defaults, sized to
        // this host and never below the boot size.
        max_vcpus: isola_hypervisor::default_max_vcpus(h.vcpus, isola_hypervisor::host_cpus()),
        max_memory_mib: isola_hypervisor::default_max_memory_mib(
            memory_mib,
            isola_hypervisor::host_memory_mib(),
        ),
        memory_slots: isola_hypervisor::DEFAULT_MEMORY_SLOTS,
        shared_fs: match h.shared_fs {
            SharedFs::VirtioFs => Some(SharedFsConfig {
                virtiofsd_path: h.virtiofsd_path.clone(),
                shared_dir: paths.shared_dir.clone(),
                cache: h.virtiofsd_cache.as_str().to_string(),
                sandbox: h.virtiofsd_sandbox.as_str().to_string(),
                tag: SHARED_FS_TAG.to_string(),
            }),
            SharedFs::None => None,
        },
        vsock: match h.vsock {
            Vsock::Auto => VsockChoice::Auto,
            Vsock::Vhost => VsockChoice::VhostKernel,
            Vsock::VhostUser => VsockChoice::VhostUser,
        },
        vhost_user_vsock_path: h.vhost_user_vsock_path.clone(),
        agent_port: isola_agent_proto::AGENT_PORT,
        debug: cfg.runtime.debug,
        network: Vec::new(),
        templates: cfg.factory.template.then(|| cfg.template_dir()),
        max_templates: usize::try_from(cfg.factory.max_templates).unwrap_or(usize::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_ids_get_short_distinct_vm_dirs() {
        assert_eq!(vm_dir_name("abc"), "abc");
        let a = "a".repeat(64);
        let mut b = a.clone();
        b.replace_range(63.., "b");
        let (na, nb) = (vm_dir_name(&a), vm_dir_name(&b));
        assert_eq!(na.len(), MAX_VM_DIR_NAME);
        assert!(na.starts_with(&a[..23]), "{na}");
        assert_ne!(
            na, nb,
            "ids differing only at the end get different directories"
        );
        assert_eq!(na, vm_dir_name(&a), "the name is stable across calls");
        let paths = SandboxPaths::new(Path::new("/run/isola"), &a);
        assert_eq!(paths.vm_dir, Path::new("/run/isola/vm").join(&na));
        assert_eq!(paths.shared_dir, Path::new("/run/isola/shared").join(&a));
    }

    #[test]
    fn defaults_map_to_a_virtiofs_vhost_auto_vm() {
        let cfg = Config::default();
        let paths = SandboxPaths::new(Path::new("/run/isola"), "abc");
        let vm = vm_config(&cfg, "abc", &paths);
        assert_eq!(vm.kind, isola_hypervisor::HypervisorKind::Qemu);
        assert_eq!(vm.qemu_path, Path::new("/usr/bin/qemu-system-x86_64"));
        assert_eq!(vm.state_dir, Path::new("/run/isola/vm/abc"));
        assert_eq!(vm.kernel_params, "agent.log=info");
        assert_eq!(vm.machine_type, "q35");
        assert_eq!(
            vm.firmware.as_deref(),
            Some(Path::new("/usr/share/qemu/qboot.rom"))
        );
        assert_eq!(vm.accelerator, AcceleratorChoice::Auto);
        assert_eq!(vm.tcg_tb_size_mib, None, "0: QEMU's default");
        assert_eq!(vm.vsock, VsockChoice::Auto);
        assert_eq!((vm.vcpus, vm.memory_mib), (1, 512));
        assert!(vm.max_vcpus >= 1 && vm.max_memory_mib >= 512);
        assert_eq!(vm.memory_slots, isola_hypervisor::DEFAULT_MEMORY_SLOTS);
        let fs = vm.shared_fs.expect("virtio-fs by default");
        assert_eq!(fs.shared_dir, Path::new("/run/isola/shared/abc"));
        assert_eq!(fs.tag, SHARED_FS_TAG);
        assert_eq!(vm.agent_port, 1024);
    }

    #[test]
    fn overrides_are_carried_through() {
        let text = r#"
            [hypervisor]
            kernel_params = " tsc=reliable "
            firmware = ""
            accelerator = "tcg"
            tcg_tb_size_mib = 32
            vsock = "vhost-user"
            shared_fs = "none"
            vcpus = 2
            memory_mib = 1024
            [agent]
            log_level = "debug"
            [runtime]
            debug = true
        "#;
        let cfg = Config::from_toml_str(text, Path::new("/t.toml")).unwrap();
        let vm = vm_config(&cfg, "x", &SandboxPaths::new(Path::new("/s"), "x"));
        assert_eq!(vm.kernel_params, "agent.log=debug tsc=reliable");
        assert_eq!(vm.firmware, None);
        assert_eq!(vm.accelerator, AcceleratorChoice::Tcg);
        assert_eq!(vm.tcg_tb_size_mib, Some(32));
        assert_eq!(vm.vsock, VsockChoice::VhostUser);
        assert!(vm.shared_fs.is_none());
        assert_eq!((vm.vcpus, vm.memory_mib), (2, 1024));
        assert!(vm.max_vcpus >= 2 && vm.max_memory_mib >= 1024);
        assert!(vm.debug);
    }

    #[test]
    fn cloud_hypervisor_kind_and_binary_are_carried_through() {
        let text = r#"
            [hypervisor]
            kind = "cloud-hypervisor"
            cloud_hypervisor_path = "/opt/clh/cloud-hypervisor"
            accelerator = "kvm"
        "#;
        let cfg = Config::from_toml_str(text, Path::new("/t.toml")).unwrap();
        let vm = vm_config(&cfg, "x", &SandboxPaths::new(Path::new("/s"), "x"));
        assert_eq!(vm.kind, isola_hypervisor::HypervisorKind::CloudHypervisor);
        assert_eq!(
            vm.cloud_hypervisor_path,
            Path::new("/opt/clh/cloud-hypervisor")
        );
        assert_eq!(vm.accelerator, AcceleratorChoice::Kvm);
        // The default binary when the key is left out.
        let mut cfg = Config::default();
        cfg.hypervisor.kind = HypervisorKind::CloudHypervisor;
        let vm = vm_config(&cfg, "x", &SandboxPaths::new(Path::new("/s"), "x"));
        assert_eq!(
            vm.cloud_hypervisor_path,
            Path::new(isola_config::DEFAULT_CLOUD_HYPERVISOR_PATH)
        );
        assert!(isola_hypervisor::uses_hybrid_vsock(vm.kind, vm.vsock, true));
    }
}
