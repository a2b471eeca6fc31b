//! `containerd-shim-isola-v2 features`: what the runtime supports, as the OCI runtime spec's
//! "features" document (the JSON `runc features` prints). CRI-O asks every runtime for it
//! (e.g. whether recursive read-only mounts or idmapped mounts may be used) and refuses a
//! handler whose runtime cannot answer.
//!
//! The answer describes what a container of an isola pod gets in the guest: youki's
//! libcontainer there (its mount options, namespaces, cgroup v2 only, seccomp through
//! libseccomp), no hooks (host binaries cannot run in the guest; the shim drops them), no
//! AppArmor or SELinux (host policy, dropped), no idmapped mounts, no Intel RDT.

use std::collections::HashMap;

use oci_spec::runtime::{
    ApparmorBuilder, Arch, Capability, CgroupBuilder, FeaturesBuilder, IDMapBuilder,
    LinuxFeatureBuilder, LinuxNamespaceType, LinuxSeccompAction, MountExtensionsBuilder,
    SeccompBuilder, SelinuxBuilder,
};

use crate::error::{Result, ShimError};

/// The mount options libcontainer in the guest understands (its option table).
const MOUNT_OPTIONS: &[&str] = &[
    "async",
    "atime",
    "bind",
    "defaults",
    "dev",
    "diratime",
    "dirsync",
    "exec",
    "mand",
    "noatime",
    "nodev",
    "nodiratime",
    "noexec",
    "nomand",
    "norelatime",
    "nostrictatime",
    "nosuid",
    "private",
    "rbind",
    "relatime",
    "remount",
    "ro",
    "rprivate",
    "rshared",
    "rslave",
    "runbindable",
    "rw",
    "shared",
    "slave",
    "strictatime",
    "suid",
    "sync",
    "unbindable",
];

/// The namespaces a container in the guest may have.
const NAMESPACES: [LinuxNamespaceType; 8] = [
    LinuxNamespaceType::Cgroup,
    LinuxNamespaceType::Ipc,
    LinuxNamespaceType::Mount,
    LinuxNamespaceType::Network,
    LinuxNamespaceType::Pid,
    LinuxNamespaceType::Time,
    LinuxNamespaceType::User,
    LinuxNamespaceType::Uts,
];

/// The seccomp actions, operators and architectures libseccomp (the guest's filter) supports.
const SECCOMP_ACTIONS: [LinuxSeccompAction; 8] = [
    LinuxSeccompAction::ScmpActAllow,
    LinuxSeccompAction::ScmpActErrno,
    LinuxSeccompAction::ScmpActKill,
    LinuxSeccompAction::ScmpActKillProcess,
    LinuxSeccompAction::ScmpActKillThread,
    LinuxSeccompAction::ScmpActLog,
    LinuxSeccompAction::ScmpActTrace,
    LinuxSeccompAction::ScmpActTrap,
];
const SECCOMP_OPERATORS: &[&str] = &[
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_LE",
    "SCMP_CMP_LT",
    "SCMP_CMP_MASKED_EQ",
    "SCMP_CMP_NE",
];
const SECCOMP_ARCHS: [Arch; 3] = [Arch::ScmpArchX86, Arch::ScmpArchX86_64, Arch::ScmpArchX32];

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The features document as JSON.
pub fn document() -> Result<String> {
    let build = |what: &str, e: &dyn std::fmt::Display| {
        ShimError::Internal(format!("building the features document ({what}): {e}"))
    };
    // The spec's names (`CAP_CHOWN`), as serde writes them; Display drops the prefix.
    let capabilities: Vec<String> = all_capabilities()
        .iter()
        .filter_map(|c| serde_json::to_value(c).ok()?.as_str().map(str::to_string))
        .collect();
    let seccomp = SeccompBuilder::default()
        .enabled(true)
        .actions(SECCOMP_ACTIONS.to_vec())
        .operators(strings(SECCOMP_OPERATORS))
        .archs(SECCOMP_ARCHS.to_vec())
        .build()
        .map_err(|e| build("seccomp", &e))?;
    let linux = LinuxFeatureBuilder::default()
        .namespaces(NAMESPACES.to_vec())
        .capabilities(capabilities)
        .cgroup(
            CgroupBuilder::default()
                .v1(false)
                .v2(true)
                .systemd(false)
                .systemd_user(false)
                .rdma(false)
                .build()
                .map_err(|e| build("cgroup", &e))?,
        )
        .seccomp(seccomp)
        .apparmor(
            ApparmorBuilder::default()
                .enabled(false)
                .build()
                .map_err(|e| build("apparmor", &e))?,
        )
        .selinux(
            SelinuxBuilder::default()
                .enabled(false)
                .build()
                .map_err(|e| build("selinux", &e))?,
        )
        .mount_extensions(
            MountExtensionsBuilder::default()
                .idmap(
                    IDMapBuilder::default()
                        .enabled(false)
                        .build()
                        .map_err(|e| build("idmap", &e))?,
                )
                .build()
                .map_err(|e| build("mount extensions", &e))?,
        )
        .build()
        .map_err(|e| build("linux", &e))?;
    let annotations = HashMap::from([(
        "io.github.isola.version".to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
    )]);
    let features = FeaturesBuilder::default()
        .oci_version_min("1.0.0")
        .oci_version_max("1.2.0")
        .hooks(Vec::<String>::new())
        .mount_options(strings(MOUNT_OPTIONS))
        .linux(linux)
        .annotations(annotations)
        .build()
        .map_err(|e| build("document", &e))?;
    serde_json::to_string_pretty(&features).map_err(|e| build("JSON", &e))
}

/// Every capability the OCI spec names (a privileged container in the guest may have all).
fn all_capabilities() -> Vec<Capability> {
    use Capability::*;
    vec![
        AuditControl,
        AuditRead,
        AuditWrite,
        BlockSuspend,
        Bpf,
        CheckpointRestore,
        Chown,
        DacOverride,
        DacReadSearch,
        Fowner,
        Fsetid,
        IpcLock,
        IpcOwner,
        Kill,
        Lease,
        LinuxImmutable,
        MacAdmin,
        MacOverride,
        Mknod,
        NetAdmin,
        NetBindService,
        NetBroadcast,
        NetRaw,
        Perfmon,
        Setfcap,
        Setgid,
        Setpcap,
        Setuid,
        SysAdmin,
        SysBoot,
        SysChroot,
        SysModule,
        SysNice,
        SysPacct,
        SysPtrace,
        SysRawio,
        SysResource,
        SysTime,
        SysTtyConfig,
        Syslog,
        WakeAlarm,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_says_what_the_guest_supports() {
        let text = document().unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["ociVersionMin"], "1.0.0");
        assert_eq!(v["hooks"], serde_json::json!([]), "no hooks in the guest");
        assert!(v["mountOptions"]
            .as_array()
            .unwrap()
            .contains(&"rbind".into()));
        assert!(!v["mountOptions"]
            .as_array()
            .unwrap()
            .contains(&"rro".into()));
        let linux = &v["linux"];
        assert_eq!(linux["cgroup"]["v2"], true);
        assert_eq!(linux["cgroup"]["v1"], false);
        assert_eq!(linux["seccomp"]["enabled"], true);
        assert_eq!(linux["apparmor"]["enabled"], false);
        assert_eq!(linux["selinux"]["enabled"], false);
        assert_eq!(linux["mountExtensions"]["idmap"]["enabled"], false);
        let caps = linux["capabilities"].as_array().unwrap();
        assert!(caps.contains(&"CAP_SYS_ADMIN".into()) && caps.contains(&"CAP_NET_RAW".into()));
        assert_eq!(caps.len(), 41);
        // Round-trips as the spec's type.
        let back: oci_spec::runtime::Features = serde_json::from_str(&text).unwrap();
        assert_eq!(back.oci_version_max(), "1.2.0");
    }
}
