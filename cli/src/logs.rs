//! Where each of a node's isola logs lives (`isola check --verbose`): the same table as
//! docs/observability.md, with this node's paths and, for every pod running now, its own files.

use isola_config::{Config, HypervisorKind};
use isola_sandbox::record::SandboxRecord;

/// The VMM's stderr log file name in a VM directory.
fn vmm_log(kind: &str) -> &'static str {
    if kind == HypervisorKind::CloudHypervisor.to_string() {
        "cloud-hypervisor.log"
    } else {
        "qemu.log"
    }
}

/// (what, where) lines for `cfg` and the pods of `records`.
pub fn locations(cfg: &Config, records: &[SandboxRecord]) -> Vec<(String, String)> {
    let state = &cfg.runtime.state_dir;
    let vm = state.join("vm").join("<sandbox>");
    let mut lines = vec![
        (
            "shim".to_owned(),
            format!(
                "containerd's log (journalctl -u containerd), or CRI-O's; one logfmt line per event \
                 with sandbox_id and container_id{}",
                if cfg.runtime.debug {
                    " (verbose: runtime.debug = true)"
                } else {
                    "; set runtime.debug = true for more"
                }
            ),
        ),
        (
            "guest agent and kernel".to_owned(),
            format!(
                "{} (1 MiB, then console.log.1; agent.log_level = {})",
                vm.join("console.log").display(),
                cfg.agent.log_level
            ),
        ),
        (
            "VMM".to_owned(),
            vm.join(vmm_log(&cfg.hypervisor.kind.to_string()))
                .display()
                .to_string(),
        ),
        (
            "helper daemons".to_owned(),
            format!(
                "{} and {}",
                vm.join("virtiofsd.log").display(),
                vm.join("vhost-device-vsock.log").display()
            ),
        ),
    ];
    for r in records {
        let dir = &r.vm_dir;
        let vmm = vmm_log(&r.hypervisor);
        let exists = |f: &str| dir.join(f).exists();
        let files: Vec<String> = [
            "console.log",
            vmm,
            "virtiofsd.log",
            "vhost-device-vsock.log",
        ]
        .into_iter()
        .filter(|f| exists(f))
        .map(|f| dir.join(f).display().to_string())
        .collect();
        let what = format!("pod {}", r.sandbox_id);
        let detail = if files.is_empty() {
            format!("{} (no log files: the pod is gone)", dir.display())
        } else {
            files.join(", ")
        };
        lines.push((what, detail));
    }
    lines
}

/// Prints [`locations`] for `cfg`, with the pods recorded under its state directory.
pub fn print(cfg: &Config) {
    let records = isola_sandbox::record::list(&cfg.runtime.state_dir).unwrap_or_default();
    println!("logs:");
    for (what, detail) in locations(cfg, &records) {
        println!("  {what:<24} {detail}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_log_is_named_with_this_nodes_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.runtime.state_dir = tmp.path().to_path_buf();
        let vm_dir = tmp.path().join("vm/pod-a");
        std::fs::create_dir_all(&vm_dir).unwrap();
        for f in ["console.log", "cloud-hypervisor.log", "virtiofsd.log"] {
            std::fs::write(vm_dir.join(f), "x").unwrap();
        }
        let rec = SandboxRecord {
            sandbox_id: "pod-a".into(),
            vm_dir: vm_dir.clone(),
            hypervisor: "cloud-hypervisor".into(),
            ..SandboxRecord::default()
        };
        let gone = SandboxRecord {
            sandbox_id: "pod-b".into(),
            vm_dir: tmp.path().join("vm/pod-b"),
            ..SandboxRecord::default()
        };
        let lines = locations(&cfg, &[rec, gone]);
        let text: Vec<String> = lines.iter().map(|(w, d)| format!("{w}: {d}")).collect();
        assert!(
            text[0].contains("containerd") && text[0].contains("runtime.debug"),
            "{text:?}"
        );
        let state = tmp.path().display().to_string();
        assert!(
            text[1].contains(&state) && text[1].contains("console.log"),
            "{text:?}"
        );
        assert!(
            text[2].ends_with("qemu.log"),
            "QEMU is the configured kind: {text:?}"
        );
        let a = text.iter().find(|l| l.starts_with("pod pod-a")).unwrap();
        assert!(
            a.contains("cloud-hypervisor.log") && a.contains("virtiofsd.log"),
            "{a}"
        );
        assert!(
            !a.contains("vhost-device-vsock.log"),
            "only files that exist: {a}"
        );
        let b = text.iter().find(|l| l.starts_with("pod pod-b")).unwrap();
        assert!(b.contains("the pod is gone"), "{b}");
    }
}
