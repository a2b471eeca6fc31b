//! What an exec'd process takes from its container, by runc's rules (pure).
//!
//! containerd (`ctr task exec`, CRI `ExecSync`/`Exec`) and CRI-O send a copy of the container's
//! `process` with new `args`, so the security settings normally arrive with the exec. A process
//! spec may still leave them out (the OCI spec makes them optional), and runc then applies the
//! container's own, never "none":
//!
//! | field | the exec gets |
//! |---|---|
//! | `linux.seccomp` (not a process field) | always the container's filter |
//! | `capabilities` | its own if set, else the container's |
//! | `noNewPrivileges` | its own if set, else the container's |
//! | `rlimits` | its own if non-empty, else the container's |
//! | `apparmorProfile`, `selinuxLabel` | its own if set, else the container's (both are host policy: the shim drops them, see the shim's `translate`) |
//! | `oomScoreAdj`, `ioPriority`, `scheduler`, `user.umask` | its own if set, else the container's |
//! | `user` (uid, gid, additionalGids), `args`, `env`, `cwd`, `terminal`, `consoleSize` | its own |
//!
//! `noNewPrivileges: false` is normalised to absent for the container and its execs: the two
//! mean the same, but libcontainer installs a seccomp filter *after* dropping capabilities when
//! the field is present, which a process without CAP_SYS_ADMIN cannot do.

use oci_spec::runtime::{LinuxSeccomp, Process, Spec};

/// What the execs of one container inherit, kept from its spec at creation.
#[derive(Debug, Clone, Default)]
pub struct ExecDefaults {
    /// The container's `process`.
    pub process: Process,
    /// The container's `linux.seccomp`.
    pub seccomp: Option<LinuxSeccomp>,
}

impl ExecDefaults {
    /// The defaults of the container whose checked spec is `spec`.
    pub fn of(spec: &Spec) -> ExecDefaults {
        ExecDefaults {
            process: spec.process().clone().unwrap_or_default(),
            seccomp: spec.linux().as_ref().and_then(|l| l.seccomp().clone()),
        }
    }
}

/// `noNewPrivileges: false` becomes absent (see the module docs).
pub fn normalize_no_new_privileges(process: &mut Process) {
    if process.no_new_privileges() == Some(false) {
        process.set_no_new_privileges(None);
    }
}

/// Fills the security settings `exec` leaves out from the container's `process`.
pub fn inherit(exec: &mut Process, container: &Process) {
    if exec.capabilities().is_none() {
        exec.set_capabilities(container.capabilities().clone());
    }
    if exec.no_new_privileges().is_none() {
        exec.set_no_new_privileges(container.no_new_privileges());
    }
    if exec.rlimits().as_ref().map_or(true, |r| r.is_empty()) {
        exec.set_rlimits(container.rlimits().clone());
    }
    if exec
        .apparmor_profile()
        .as_deref()
        .map_or(true, str::is_empty)
    {
        exec.set_apparmor_profile(container.apparmor_profile().clone());
    }
    if exec.selinux_label().as_deref().map_or(true, str::is_empty) {
        exec.set_selinux_label(container.selinux_label().clone());
    }
    if exec.oom_score_adj().is_none() {
        exec.set_oom_score_adj(container.oom_score_adj());
    }
    if exec.io_priority().is_none() {
        exec.set_io_priority(*container.io_priority());
    }
    if exec.scheduler().is_none() {
        exec.set_scheduler(container.scheduler().clone());
    }
    if exec.user().umask().is_none() {
        let umask = container.user().umask();
        exec.user_mut().set_umask(umask);
    }
    normalize_no_new_privileges(exec);
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::Capability;

    const CONTAINER: &str = r#"{
        "args": ["sleep", "100"], "cwd": "/", "env": ["PATH=/bin", "A=container"],
        "user": {"uid": 0, "gid": 0, "umask": 18, "additionalGids": [10]},
        "capabilities": {"bounding": ["CAP_CHOWN", "CAP_NET_BIND_SERVICE"],
                         "effective": ["CAP_CHOWN"], "permitted": ["CAP_CHOWN"]},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 512, "soft": 256}],
        "noNewPrivileges": true,
        "apparmorProfile": "container-profile",
        "selinuxLabel": "system_u:system_r:container_t:s0",
        "oomScoreAdj": 500,
        "ioPriority": {"class": "IOPRIO_CLASS_BE", "priority": 4},
        "scheduler": {"policy": "SCHED_OTHER", "nice": 5}
    }"#;

    fn process(json: &str) -> Process {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_bare_exec_gets_every_security_setting_of_its_container() {
        let container = process(CONTAINER);
        let mut exec =
            process(r#"{"args": ["sh"], "cwd": "/tmp", "user": {"uid": 1000, "gid": 1000}}"#);
        inherit(&mut exec, &container);
        assert_eq!(exec.capabilities(), container.capabilities());
        assert_eq!(exec.no_new_privileges(), Some(true));
        assert_eq!(exec.rlimits(), container.rlimits());
        assert_eq!(
            exec.apparmor_profile().as_deref(),
            Some("container-profile")
        );
        assert_eq!(exec.selinux_label(), container.selinux_label());
        assert_eq!(exec.oom_score_adj(), Some(500));
        assert_eq!(exec.io_priority(), container.io_priority());
        assert_eq!(exec.scheduler(), container.scheduler());
        assert_eq!(exec.user().umask(), Some(18));
        // Identity and what to run stay the exec's own.
        assert_eq!((exec.user().uid(), exec.user().gid()), (1000, 1000));
        assert_eq!(exec.user().additional_gids(), &None);
        assert_eq!(exec.args().as_ref().unwrap(), &["sh".to_string()]);
        assert_eq!(exec.cwd().to_str(), Some("/tmp"));
        assert_eq!(exec.env(), &None);
    }

    #[test]
    fn what_the_exec_says_wins() {
        let container = process(CONTAINER);
        let mut exec = process(
            r#"{"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0, "umask": 63},
                "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"]},
                "rlimits": [{"type": "RLIMIT_NPROC", "hard": 9, "soft": 9}],
                "noNewPrivileges": false, "apparmorProfile": "exec-profile", "oomScoreAdj": -1}"#,
        );
        inherit(&mut exec, &container);
        let caps = exec.capabilities().as_ref().unwrap();
        assert!(caps
            .bounding()
            .as_ref()
            .unwrap()
            .contains(&Capability::Kill));
        assert!(!caps
            .bounding()
            .as_ref()
            .unwrap()
            .contains(&Capability::Chown));
        assert_eq!(exec.rlimits().as_ref().unwrap().len(), 1);
        assert_eq!(exec.rlimits().as_ref().unwrap()[0].hard(), 9);
        // An explicit false is kept as "not set" (the same thing, see the module docs).
        assert_eq!(exec.no_new_privileges(), None);
        assert_eq!(exec.apparmor_profile().as_deref(), Some("exec-profile"));
        assert_eq!(exec.oom_score_adj(), Some(-1));
        assert_eq!(exec.user().umask(), Some(63));
    }

    #[test]
    fn empty_lists_and_strings_count_as_unset() {
        let container = process(CONTAINER);
        let mut exec = process(
            r#"{"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                "rlimits": [], "apparmorProfile": ""}"#,
        );
        inherit(&mut exec, &container);
        assert_eq!(exec.rlimits(), container.rlimits());
        assert_eq!(
            exec.apparmor_profile().as_deref(),
            Some("container-profile")
        );
    }

    #[test]
    fn a_container_without_settings_leaves_a_bare_exec_bare() {
        let container = process(r#"{"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}}"#);
        let mut exec = container.clone();
        inherit(&mut exec, &container);
        assert_eq!(exec, container);
    }

    #[test]
    fn defaults_come_from_the_spec() {
        let spec: Spec = serde_json::from_str(&format!(
            r#"{{"ociVersion": "1.0.2", "process": {CONTAINER},
                "linux": {{"seccomp": {{"defaultAction": "SCMP_ACT_ALLOW",
                  "syscalls": [{{"names": ["chmod"], "action": "SCMP_ACT_ERRNO"}}]}}}}}}"#
        ))
        .unwrap();
        let d = ExecDefaults::of(&spec);
        assert_eq!(d.process.oom_score_adj(), Some(500));
        assert_eq!(d.seccomp.unwrap().syscalls().as_ref().unwrap().len(), 1);
        let bare: Spec = serde_json::from_str(r#"{"ociVersion": "1.0.2", "linux": {}}"#).unwrap();
        assert!(ExecDefaults::of(&bare).seccomp.is_none());
    }
}
