//! Semantic checks run after parsing: numeric ranges, absolute paths, and keys
//! that cannot work with the chosen `hypervisor.kind`.
//!
//! Enumerated keys need no check of their own: they are Rust enums, so a bad
//! value is already rejected by the deserializer.

use std::path::Path;

use crate::model::{
    Accelerator, Config, HypervisorConfig, HypervisorKind, Vsock, MAX_MEMORY_MIB, MAX_VCPUS,
    MIN_MEMORY_MIB, MIN_VCPUS,
};

/// A validation failure before it is attached to a file location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    /// Dotted key, e.g. `hypervisor.vcpus`.
    pub key: &'static str,
    /// The value rendered as TOML.
    pub value: String,
    /// What is wrong.
    pub problem: String,
    /// What to do.
    pub fix: String,
}

/// The first problem found in `config`, if any (keys are checked in file order).
pub(crate) fn check(config: &Config) -> Option<Problem> {
    let h = &config.hypervisor;
    let paths: [(&'static str, &Path, bool); 6] = [
        ("hypervisor.path", &h.path, false),
        (
            "hypervisor.cloud_hypervisor_path",
            &h.cloud_hypervisor_path,
            false,
        ),
        ("hypervisor.kernel", &h.kernel, false),
        ("hypervisor.initrd", &h.initrd, false),
        // An empty firmware means "QEMU's default firmware".
        ("hypervisor.firmware", &h.firmware, true),
        ("hypervisor.virtiofsd_path", &h.virtiofsd_path, false),
    ];
    for (key, path, empty_ok) in paths {
        if let Some(p) = check_path(key, path, empty_ok) {
            return Some(p);
        }
    }
    if let Some(c) = kind_conflict(h) {
        return Some(Problem {
            key: c.key,
            value: toml_string(c.value),
            problem: format!(
                "cannot be used with kind = \"{}\": {}",
                h.kind.as_str(),
                c.reason
            ),
            fix: c.fix.to_owned(),
        });
    }
    if h.vcpus < MIN_VCPUS {
        return Some(Problem {
            key: "hypervisor.vcpus",
            value: h.vcpus.to_string(),
            problem: format!("is too small: a VM needs at least {MIN_VCPUS} vCPU"),
            fix: format!("set it to a number from {MIN_VCPUS} to {MAX_VCPUS}"),
        });
    }
    if h.vcpus > MAX_VCPUS {
        return Some(Problem {
            key: "hypervisor.vcpus",
            value: h.vcpus.to_string(),
            problem: format!("is too large: at most {MAX_VCPUS} vCPUs are supported"),
            fix: format!("set it to a number from {MIN_VCPUS} to {MAX_VCPUS}"),
        });
    }
    if config.factory.max_templates == 0 {
        return Some(Problem {
            key: "factory.max_templates",
            value: "0".to_string(),
            problem: "keeps no template, so every one built would be removed at once".to_string(),
            fix: "set it to 1 or more, or set factory.template = false to boot every VM"
                .to_string(),
        });
    }
    if h.tcg_tb_size_mib > crate::model::MAX_TCG_TB_SIZE_MIB {
        return Some(Problem {
            key: "hypervisor.tcg_tb_size_mib",
            value: h.tcg_tb_size_mib.to_string(),
            problem: format!(
                "is too large: at most {} MiB",
                crate::model::MAX_TCG_TB_SIZE_MIB
            ),
            fix: "set it to 0 (QEMU's default) or a size in MiB such as 32".to_string(),
        });
    }
    if h.memory_mib < MIN_MEMORY_MIB {
        return Some(Problem {
            key: "hypervisor.memory_mib",
            value: h.memory_mib.to_string(),
            problem: format!("is too small: at least {MIN_MEMORY_MIB} MiB is needed"),
            fix: format!("set it to a number from {MIN_MEMORY_MIB} to {MAX_MEMORY_MIB}"),
        });
    }
    if h.memory_mib > MAX_MEMORY_MIB {
        return Some(Problem {
            key: "hypervisor.memory_mib",
            value: h.memory_mib.to_string(),
            problem: format!("is too large: at most {MAX_MEMORY_MIB} MiB (1 TiB) is supported"),
            fix: format!("set it to a number from {MIN_MEMORY_MIB} to {MAX_MEMORY_MIB}"),
        });
    }
    if let Some(p) = check_path(
        "hypervisor.vhost_user_vsock_path",
        &h.vhost_user_vsock_path,
        false,
    ) {
        return Some(p);
    }
    if config.agent.dial_timeout_ms == 0 {
        return Some(Problem {
            key: "agent.dial_timeout_ms",
            value: "0".to_owned(),
            problem: "is not allowed: the runtime would give up on the agent immediately"
                .to_owned(),
            fix: "set it to a positive number of milliseconds (the default is 30000)".to_owned(),
        });
    }
    if let Some(p) = check_path("runtime.state_dir", &config.runtime.state_dir, false) {
        return Some(p);
    }
    if config.pod.overhead_vcpus > MAX_VCPUS {
        return Some(Problem {
            key: "pod.overhead_vcpus",
            value: config.pod.overhead_vcpus.to_string(),
            problem: format!("is too large: a VM has at most {MAX_VCPUS} vCPUs"),
            fix: "set it to a small number of vCPUs (the default is 1)".to_owned(),
        });
    }
    if config.pod.overhead_memory_mib > MAX_MEMORY_MIB {
        return Some(Problem {
            key: "pod.overhead_memory_mib",
            value: config.pod.overhead_memory_mib.to_string(),
            problem: format!("is too large: a VM has at most {MAX_MEMORY_MIB} MiB"),
            fix: "set it to the MiB the guest needs beside the pod (the default is 256)".to_owned(),
        });
    }
    crate::pod::unknown_enabled(&config.pod).map(|name| Problem {
        key: "pod.enable_annotations",
        value: toml_string(name),
        problem: "names no setting a pod annotation can override".to_owned(),
        fix: format!(
            "list only these: {}",
            crate::pod::OVERRIDABLE
                .iter()
                .map(|k| toml_string(k))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

/// A key whose value cannot work with `hypervisor.kind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KindConflict {
    /// Dotted key, e.g. `hypervisor.accelerator`.
    pub key: &'static str,
    /// Its value as written in the TOML file, e.g. `tcg`.
    pub value: &'static str,
    /// Why it cannot work with the kind.
    pub reason: &'static str,
    /// What to do in the configuration file.
    pub fix: &'static str,
}

/// The first key of `h` that its `kind` cannot work with (pure; also checked for a pod whose
/// annotation selects the kind). Keys a kind merely ignores (QEMU's `machine_type`,
/// `firmware`, `vhost_user_vsock_path` under Cloud Hypervisor) are no conflict.
pub(crate) fn kind_conflict(h: &HypervisorConfig) -> Option<KindConflict> {
    if h.kind != HypervisorKind::CloudHypervisor {
        return None;
    }
    if h.accelerator == Accelerator::Tcg {
        return Some(KindConflict {
            key: "hypervisor.accelerator",
            value: Accelerator::Tcg.as_str(),
            reason: "Cloud Hypervisor has no software emulation, it runs guests only with \
                     hardware KVM (vmx/svm)",
            fix: "set accelerator = \"auto\" or \"kvm\", or kind = \"qemu\" for TCG",
        });
    }
    if h.vsock == Vsock::Vhost {
        return Some(KindConflict {
            key: "hypervisor.vsock",
            value: Vsock::Vhost.as_str(),
            reason: "Cloud Hypervisor has no kernel vhost-vsock device, only its own hybrid \
                     vsock (a Unix socket)",
            fix: "set vsock = \"auto\" (or remove the line), or kind = \"qemu\" for kernel \
                  vhost-vsock",
        });
    }
    None
}

fn check_path(key: &'static str, path: &Path, empty_ok: bool) -> Option<Problem> {
    if path.as_os_str().is_empty() {
        if empty_ok {
            return None;
        }
        return Some(Problem {
            key,
            value: "\"\"".to_owned(),
            problem: "is empty".to_owned(),
            fix: "set it to an absolute path, or remove the line to use the default".to_owned(),
        });
    }
    if path.is_absolute() {
        return None;
    }
    let empty_hint = if empty_ok {
        " (or to \"\" for QEMU's default firmware)"
    } else {
        ""
    };
    Some(Problem {
        key,
        value: toml_string(&path.to_string_lossy()),
        problem: "is a relative path: paths in the configuration must be absolute".to_owned(),
        fix: format!("set it to an absolute path starting with `/`{empty_hint}"),
    })
}

/// `s` as a TOML basic string literal, e.g. `"vmlinuz"`.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tcg_cache_size_is_bounded() {
        let mut c = Config::default();
        c.hypervisor.tcg_tb_size_mib = crate::model::MAX_TCG_TB_SIZE_MIB;
        assert_eq!(check(&c), None);
        c.hypervisor.tcg_tb_size_mib = crate::model::MAX_TCG_TB_SIZE_MIB + 1;
        let p = check(&c).unwrap();
        assert_eq!(p.key, "hypervisor.tcg_tb_size_mib");
        assert!(p.fix.contains("32"), "{p:?}");
    }

    #[test]
    fn the_template_store_keeps_at_least_one() {
        let mut c = Config::default();
        c.factory.max_templates = 0;
        let p = check(&c).unwrap();
        assert_eq!(p.key, "factory.max_templates");
        assert!(p.fix.contains("factory.template = false"), "{p:?}");
        c.factory.max_templates = 1;
        assert_eq!(check(&c), None);
    }

    #[test]
    fn defaults_pass() {
        assert_eq!(check(&Config::default()), None);
    }

    #[test]
    fn empty_firmware_is_allowed_but_empty_kernel_is_not() {
        let mut c = Config::default();
        c.hypervisor.firmware = "".into();
        assert_eq!(check(&c), None);
        c.hypervisor.kernel = "".into();
        assert_eq!(check(&c).unwrap().key, "hypervisor.kernel");
    }

    #[test]
    fn bounds_are_inclusive() {
        let mut c = Config::default();
        c.hypervisor.vcpus = MAX_VCPUS;
        c.hypervisor.memory_mib = MIN_MEMORY_MIB;
        assert_eq!(check(&c), None);
        c.hypervisor.memory_mib = MAX_MEMORY_MIB;
        assert_eq!(check(&c), None);
        c.hypervisor.memory_mib = MAX_MEMORY_MIB + 1;
        assert_eq!(check(&c).unwrap().key, "hypervisor.memory_mib");
        c.hypervisor.memory_mib = MIN_MEMORY_MIB;
        c.hypervisor.vcpus = 0;
        assert_eq!(check(&c).unwrap().key, "hypervisor.vcpus");
    }

    #[test]
    fn every_path_key_must_be_absolute() {
        type Setter = fn(&mut Config);
        let cases: [(&str, Setter); 8] = [
            ("hypervisor.path", |c| c.hypervisor.path = "qemu".into()),
            ("hypervisor.cloud_hypervisor_path", |c| {
                c.hypervisor.cloud_hypervisor_path = "cloud-hypervisor".into()
            }),
            ("hypervisor.kernel", |c| {
                c.hypervisor.kernel = "vmlinuz".into()
            }),
            ("hypervisor.initrd", |c| {
                c.hypervisor.initrd = "./i.img".into()
            }),
            ("hypervisor.firmware", |c| {
                c.hypervisor.firmware = "q.rom".into()
            }),
            ("hypervisor.virtiofsd_path", |c| {
                c.hypervisor.virtiofsd_path = "virtiofsd".into()
            }),
            ("hypervisor.vhost_user_vsock_path", |c| {
                c.hypervisor.vhost_user_vsock_path = "bin/v".into()
            }),
            ("runtime.state_dir", |c| c.runtime.state_dir = "run".into()),
        ];
        for (key, set) in cases {
            let mut c = Config::default();
            set(&mut c);
            let p = check(&c).unwrap_or_else(|| panic!("{key} accepted a relative path"));
            assert_eq!(p.key, key);
            assert!(p.problem.contains("relative"), "{p:?}");
        }
    }

    #[test]
    fn cloud_hypervisor_refuses_tcg_and_kernel_vsock() {
        let mut c = Config::default();
        c.hypervisor.kind = HypervisorKind::CloudHypervisor;
        assert_eq!(check(&c), None, "the defaults fit Cloud Hypervisor");
        c.hypervisor.accelerator = Accelerator::Tcg;
        let p = check(&c).expect("tcg refused");
        assert_eq!(
            (p.key, p.value.as_str()),
            ("hypervisor.accelerator", "\"tcg\"")
        );
        assert!(p.problem.contains("no software emulation"), "{p:?}");
        assert!(p.problem.contains("kind = \"cloud-hypervisor\""), "{p:?}");
        c.hypervisor.accelerator = Accelerator::Kvm;
        assert_eq!(check(&c), None);
        c.hypervisor.vsock = Vsock::Vhost;
        let p = check(&c).expect("kernel vsock refused");
        assert_eq!(p.key, "hypervisor.vsock");
        assert!(p.problem.contains("hybrid"), "{p:?}");
        // QEMU takes both.
        c.hypervisor.kind = HypervisorKind::Qemu;
        c.hypervisor.accelerator = Accelerator::Tcg;
        assert_eq!(check(&c), None);
    }

    #[test]
    fn qemu_only_keys_are_ignored_by_cloud_hypervisor() {
        let mut c = Config::default();
        c.hypervisor.kind = HypervisorKind::CloudHypervisor;
        c.hypervisor.machine_type = crate::model::MachineType::Microvm;
        c.hypervisor.firmware = "".into();
        c.hypervisor.vsock = Vsock::VhostUser;
        assert_eq!(check(&c), None);
        assert_eq!(kind_conflict(&c.hypervisor), None);
    }
}
