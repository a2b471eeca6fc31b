//! Choosing between KVM and TCG.
//!
//! [`choose`] is a pure function of the host facts so every branch is unit-tested;
//! [`probe_host`] gathers those facts.
//!
//! Why /dev/kvm alone is not enough: a paravirtual KVM such as PVM (`kvm_pvm`) provides
//! /dev/kvm inside a VM without nested hardware virtualization, and a stock guest kernel hangs
//! in early boot under it. The CPU flags tell the difference: real KVM needs `vmx` (Intel) or
//! `svm` (AMD) in /proc/cpuinfo.

use crate::{Accelerator, AcceleratorChoice, HypervisorError};

/// Facts about the host that decide the accelerator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// The `flags` lines of /proc/cpuinfo (the whole file is fine too).
    pub cpuinfo: String,
    /// Whether /dev/kvm could be opened read-write.
    pub kvm_openable: bool,
}

/// Whether the cpuinfo text advertises hardware virtualization (`vmx` or `svm` as a flag).
pub fn has_hw_virt(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .filter_map(|l| l.split_once(':').map(|(_, v)| v))
        .flat_map(str::split_whitespace)
        .any(|f| f == "vmx" || f == "svm")
}

/// Picks the accelerator for `choice` from the host facts, with a human-readable reason.
///
/// `Auto` picks KVM only when the CPU has vmx/svm and /dev/kvm opens read-write, otherwise TCG
/// (logging a warning, since TCG is an order of magnitude slower). A forced `Kvm` that cannot
/// work is an error rather than a silent fallback.
/// The warning carries no sandbox id of its own: call it inside a span that has one.
pub fn choose(
    choice: AcceleratorChoice,
    cpuinfo_flags_text: &str,
    kvm_openable: bool,
) -> Result<(Accelerator, String), HypervisorError> {
    let hw = has_hw_virt(cpuinfo_flags_text);
    let kvm_problem = match (hw, kvm_openable) {
        (true, true) => None,
        (true, false) => Some(
            "/dev/kvm cannot be opened read-write (missing, no permission, or the kvm module is \
             not loaded)",
        ),
        (false, true) => Some(
            "/dev/kvm is present but the CPU exposes no vmx/svm (a paravirtual KVM such as PVM \
             cannot boot a stock guest kernel)",
        ),
        (false, false) => Some(
            "the CPU exposes no vmx/svm and /dev/kvm cannot be opened (no hardware \
             virtualization on this host)",
        ),
    };
    match (choice, kvm_problem) {
        (AcceleratorChoice::Tcg, _) => Ok((Accelerator::Tcg, "forced by configuration".into())),
        (AcceleratorChoice::Kvm, None) => Ok((Accelerator::Kvm, "forced by configuration".into())),
        (AcceleratorChoice::Kvm, Some(problem)) => Err(HypervisorError::AcceleratorUnavailable {
            accelerator: Accelerator::Kvm,
            reason: format!(
                "{problem}; the configuration forces KVM (set the accelerator to auto or tcg to \
                 use software emulation)"
            ),
        }),
        (AcceleratorChoice::Auto, None) => Ok((
            Accelerator::Kvm,
            "the CPU exposes vmx/svm and /dev/kvm is usable".into(),
        )),
        (AcceleratorChoice::Auto, Some(problem)) => {
            let reason = format!("{problem}; using TCG software emulation, which is much slower");
            tracing::warn!(%reason, "falling back to TCG");
            Ok((Accelerator::Tcg, reason))
        }
    }
}

/// Why Cloud Hypervisor cannot run a guest on this host, or None when it can.
///
/// Cloud Hypervisor has no software emulation: it needs KVM with hardware virtualization.
/// On a paravirtual KVM (PVM) its API serves and `vm.boot` returns, but the guest's vCPU
/// fails seconds later, so this is checked before anything is spawned, never left to a hung
/// boot. Pure: the host facts are parameters.
pub fn cloud_hypervisor_problem(cpuinfo_flags_text: &str, kvm_openable: bool) -> Option<String> {
    let problem = match (has_hw_virt(cpuinfo_flags_text), kvm_openable) {
        (true, true) => return None,
        (true, false) => {
            "/dev/kvm cannot be opened read-write (missing, no permission, or the kvm \
                          module is not loaded)"
        }
        (false, true) => {
            "/dev/kvm is present but the CPU exposes no vmx/svm (a paravirtual KVM \
                          such as PVM: Cloud Hypervisor's API answers but its guest cannot run)"
        }
        (false, false) => "the CPU exposes no vmx/svm and /dev/kvm cannot be opened",
    };
    Some(format!(
        "Cloud Hypervisor needs hardware KVM and has no software emulation: {problem}; run this \
         pod with hypervisor kind \"qemu\" (which falls back to TCG) or on a node with vmx/svm"
    ))
}

/// [`probe_host`] followed by [`cloud_hypervisor_problem`]: the accelerator Cloud Hypervisor
/// runs with, or [`HypervisorError::AcceleratorUnavailable`] with the reason. `choice` must
/// not be TCG (an [`HypervisorError::InvalidConfig`]).
pub async fn resolve_cloud_hypervisor(
    choice: AcceleratorChoice,
) -> Result<(Accelerator, String), HypervisorError> {
    if choice == AcceleratorChoice::Tcg {
        return Err(HypervisorError::InvalidConfig(
            "the accelerator is tcg but Cloud Hypervisor has no software emulation (set the \
             accelerator to auto or kvm, or use hypervisor kind \"qemu\")"
                .into(),
        ));
    }
    let facts = probe_host().await;
    match cloud_hypervisor_problem(&facts.cpuinfo, facts.kvm_openable) {
        None => Ok((
            Accelerator::Kvm,
            "the CPU exposes vmx/svm and /dev/kvm is usable".into(),
        )),
        Some(reason) => Err(HypervisorError::AcceleratorUnavailable {
            accelerator: Accelerator::Kvm,
            reason,
        }),
    }
}

/// Reads the host facts: /proc/cpuinfo flags and whether /dev/kvm opens read-write.
pub async fn probe_host() -> HostFacts {
    let cpuinfo = match tokio::fs::read_to_string("/proc/cpuinfo").await {
        Ok(text) => text
            .lines()
            .filter(|l| l.starts_with("flags"))
            // All cores share the flags that matter here; one line is enough.
            .take(1)
            .collect::<Vec<_>>()
            .join("\n"),
        Err(e) => {
            tracing::debug!(error = %e, "cannot read /proc/cpuinfo");
            String::new()
        }
    };
    let kvm_openable = tokio::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .await
        .is_ok();
    HostFacts {
        cpuinfo,
        kvm_openable,
    }
}

/// [`probe_host`] followed by [`choose`].
pub async fn resolve(choice: AcceleratorChoice) -> Result<(Accelerator, String), HypervisorError> {
    if choice == AcceleratorChoice::Tcg {
        return choose(choice, "", false);
    }
    let facts = probe_host().await;
    choose(choice, &facts.cpuinfo, facts.kvm_openable)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VMX: &str = "processor\t: 0\nflags\t\t: fpu vme de pse vmx sse2\n";
    const SVM: &str = "flags\t\t: fpu svm lm\n";
    const NONE: &str = "flags\t\t: fpu vme de pse sse2 hypervisor\n";

    #[test]
    fn flags_parsing() {
        assert!(has_hw_virt(VMX));
        assert!(has_hw_virt(SVM));
        assert!(!has_hw_virt(NONE));
        // A substring of another flag or text outside a flags line does not count.
        assert!(!has_hw_virt(
            "flags : vmxfoo svmbar\nmodel name : svm vmx\n"
        ));
        assert!(!has_hw_virt(""));
    }

    #[test]
    fn auto_picks_kvm_with_hw_virt_and_device() {
        let (a, reason) = choose(AcceleratorChoice::Auto, VMX, true).unwrap();
        assert_eq!(a, Accelerator::Kvm);
        assert!(reason.contains("vmx/svm"), "{reason}");
        assert_eq!(
            choose(AcceleratorChoice::Auto, SVM, true).unwrap().0,
            Accelerator::Kvm
        );
    }

    #[test]
    fn auto_falls_back_on_pvm() {
        let (a, reason) = choose(AcceleratorChoice::Auto, NONE, true).unwrap();
        assert_eq!(a, Accelerator::Tcg);
        assert!(reason.contains("no vmx/svm"), "{reason}");
        assert!(reason.contains("PVM"), "{reason}");
        assert!(reason.contains("TCG"), "{reason}");
    }

    #[test]
    fn auto_falls_back_without_device() {
        let (a, reason) = choose(AcceleratorChoice::Auto, VMX, false).unwrap();
        assert_eq!(a, Accelerator::Tcg);
        assert!(reason.contains("cannot be opened"), "{reason}");
        let (a, reason) = choose(AcceleratorChoice::Auto, NONE, false).unwrap();
        assert_eq!(a, Accelerator::Tcg);
        assert!(reason.contains("no hardware virtualization"), "{reason}");
    }

    #[test]
    fn forced_tcg() {
        for (flags, dev) in [(VMX, true), (NONE, false)] {
            let (a, reason) = choose(AcceleratorChoice::Tcg, flags, dev).unwrap();
            assert_eq!(a, Accelerator::Tcg);
            assert_eq!(reason, "forced by configuration");
        }
    }

    #[test]
    fn cloud_hypervisor_needs_hardware_kvm() {
        assert_eq!(cloud_hypervisor_problem(VMX, true), None);
        assert_eq!(cloud_hypervisor_problem(SVM, true), None);
        let pvm = cloud_hypervisor_problem(NONE, true).expect("refused on PVM");
        assert!(pvm.contains("no vmx/svm") && pvm.contains("PVM"), "{pvm}");
        assert!(
            pvm.contains("no software emulation") && pvm.contains("\"qemu\""),
            "{pvm}"
        );
        let nodev = cloud_hypervisor_problem(VMX, false).expect("refused without /dev/kvm");
        assert!(nodev.contains("cannot be opened"), "{nodev}");
        assert!(cloud_hypervisor_problem(NONE, false).is_some());
    }

    #[tokio::test]
    async fn cloud_hypervisor_refuses_tcg_up_front() {
        let err = resolve_cloud_hypervisor(AcceleratorChoice::Tcg)
            .await
            .unwrap_err();
        assert!(matches!(err, HypervisorError::InvalidConfig(_)), "{err:?}");
        assert!(err.to_string().contains("no software emulation"), "{err}");
    }

    #[test]
    fn forced_kvm() {
        let (a, reason) = choose(AcceleratorChoice::Kvm, VMX, true).unwrap();
        assert_eq!(a, Accelerator::Kvm);
        assert_eq!(reason, "forced by configuration");
        for (flags, dev) in [(NONE, true), (VMX, false), (NONE, false)] {
            let err = choose(AcceleratorChoice::Kvm, flags, dev).unwrap_err();
            match &err {
                HypervisorError::AcceleratorUnavailable {
                    accelerator,
                    reason,
                } => {
                    assert_eq!(*accelerator, Accelerator::Kvm);
                    assert!(reason.contains("forces KVM"), "{reason}");
                }
                other => panic!("unexpected error {other:?}"),
            }
            assert!(err.to_string().contains("not usable"), "{err}");
        }
    }
}
