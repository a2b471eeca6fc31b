//! The container's seccomp filter on every exec'd process.
//!
//! libcontainer (youki 0.7) installs `linux.seccomp` in a container's init process only: for a
//! tenant (exec) process it rebuilds the spec's `linux` section from namespaces and cgroups and
//! the filter is lost, so `kubectl exec` would run unconfined. runc applies the container's
//! filter to every exec, and so does isola: the exec's [`ExecSeccomp`] travels to the helper
//! next to the process JSON, and the executor ([`super::executor`]) installs the filter in the
//! exec'd process itself, after libcontainer has joined the namespaces and cgroup, set the user
//! and dropped capabilities, right before `execve` (so the program runs filtered from its first
//! instruction, like runc's).
//!
//! Installing a filter needs `no_new_privs` or CAP_SYS_ADMIN. An exec with
//! `noNewPrivileges: true` has the first. Without it (the Kubernetes default), runc installs the
//! filter before dropping capabilities; libcontainer gives the executor no such point, so
//! [`plan`] lets the process keep CAP_SYS_ADMIN (and CAP_SETPCAP, to shrink the bounding set)
//! through libcontainer's capability drop, and the executor drops to the exec's real
//! capabilities right after installing the filter. No program of the container's runs in
//! between: the wider set exists only inside the agent's own code, and if the drop fails the
//! exec fails.

use oci_spec::runtime::{Capability, LinuxCapabilities, LinuxSeccomp, LinuxSeccompAction, Process};
use serde::{Deserialize, Serialize};

/// What the executor does for an exec'd process of a container with a seccomp profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSeccomp {
    /// The container's filter.
    pub profile: LinuxSeccomp,
    /// The capabilities to end with once the filter is in, when the process had to hold
    /// CAP_SYS_ADMIN to install it (see the module docs).
    pub restore_capabilities: Option<LinuxCapabilities>,
}

/// The capabilities that let a process without `no_new_privs` install a filter and then
/// shrink its bounding set.
const INSTALLERS: [Capability; 2] = [Capability::SysAdmin, Capability::Setpcap];

/// Whether the filter uses user notification (SCMP_ACT_NOTIFY), which isola cannot serve: the
/// listener (`listenerPath`) would be a host process and the filter runs in the guest.
pub fn uses_notify(profile: &LinuxSeccomp) -> bool {
    profile.default_action() == LinuxSeccompAction::ScmpActNotify
        || profile.listener_path().is_some()
        || profile
            .syscalls()
            .iter()
            .flatten()
            .any(|s| s.action() == LinuxSeccompAction::ScmpActNotify)
}

/// What an exec with (inherited) `process` needs to run under `profile`; widens `process`'s
/// capabilities when it must hold CAP_SYS_ADMIN until the filter is in.
pub fn plan(process: &mut Process, profile: Option<&LinuxSeccomp>) -> Option<ExecSeccomp> {
    let profile = profile?.clone();
    if process.no_new_privileges() == Some(true) {
        return Some(ExecSeccomp {
            profile,
            restore_capabilities: None,
        });
    }
    // No capability set at all: libcontainer leaves the process with all of the agent's.
    let Some(caps) = process.capabilities().clone() else {
        return Some(ExecSeccomp {
            profile,
            restore_capabilities: None,
        });
    };
    let holds = |set: &Option<oci_spec::runtime::Capabilities>| {
        set.as_ref()
            .is_some_and(|s| INSTALLERS.iter().all(|c| s.contains(c)))
    };
    if holds(caps.effective()) && holds(caps.permitted()) && holds(caps.bounding()) {
        return Some(ExecSeccomp {
            profile,
            restore_capabilities: None,
        });
    }
    let mut wide = caps.clone();
    let widen = |set: &Option<oci_spec::runtime::Capabilities>| {
        let mut s = set.clone().unwrap_or_default();
        s.extend(INSTALLERS);
        Some(s)
    };
    wide.set_bounding(widen(caps.bounding()));
    wide.set_permitted(widen(caps.permitted()));
    wide.set_effective(widen(caps.effective()));
    process.set_capabilities(Some(wide));
    Some(ExecSeccomp {
        profile,
        restore_capabilities: Some(caps),
    })
}

/// Installs the filter in the calling process, then drops to the exec's capabilities
/// (called by the executor, in the exec'd process, right before `execve`).
#[cfg(feature = "seccomp")]
pub fn install(s: &ExecSeccomp) -> Result<(), String> {
    match libcontainer::seccomp::initialize_seccomp(&s.profile) {
        Ok(None) => {}
        Ok(Some(fd)) => {
            // SAFETY: libcontainer handed over the notification fd it opened; nothing else
            // owns it.
            drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
            return Err(
                "the seccomp profile uses SCMP_ACT_NOTIFY, which isola does not support".into(),
            );
        }
        Err(e) => return Err(format!("installing the container's seccomp filter: {e}")),
    }
    if let Some(caps) = &s.restore_capabilities {
        let syscall = libcontainer::syscall::syscall::create_syscall();
        libcontainer::capabilities::drop_privileges(caps, syscall.as_ref())
            .map_err(|e| format!("dropping to the exec's capabilities after seccomp: {e}"))?;
    }
    Ok(())
}

/// Without libseccomp the agent cannot filter: refuse rather than run unconfined (the agent
/// also refuses such containers at creation, see `container::spec`).
#[cfg(not(feature = "seccomp"))]
pub fn install(_: &ExecSeccomp) -> Result<(), String> {
    Err("this isola-agent was built without seccomp support (feature `seccomp`)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROFILE: &str = r#"{"defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["chmod"], "action": "SCMP_ACT_ERRNO", "errnoRet": 95}]}"#;

    fn profile() -> LinuxSeccomp {
        serde_json::from_str(PROFILE).unwrap()
    }

    fn process(extra: &str) -> Process {
        serde_json::from_str(&format!(
            r#"{{"args": ["sh"], "cwd": "/", "user": {{"uid": 1000, "gid": 1000}}{extra}}}"#
        ))
        .unwrap()
    }

    const DEFAULT_CAPS: &str = r#", "capabilities": {"bounding": ["CAP_CHOWN", "CAP_KILL"],
        "effective": ["CAP_CHOWN", "CAP_KILL"], "permitted": ["CAP_CHOWN", "CAP_KILL"]}"#;

    #[test]
    fn no_profile_no_plan() {
        let mut p = process(DEFAULT_CAPS);
        let before = p.clone();
        assert_eq!(plan(&mut p, None), None);
        assert_eq!(p, before);
    }

    #[test]
    fn no_new_privs_needs_no_capability() {
        let mut p = process(&format!("{DEFAULT_CAPS}, \"noNewPrivileges\": true"));
        let before = p.clone();
        let s = plan(&mut p, Some(&profile())).unwrap();
        assert_eq!(s.restore_capabilities, None);
        assert_eq!(s.profile, profile());
        assert_eq!(p, before);
    }

    #[test]
    fn without_no_new_privs_the_process_holds_sys_admin_until_the_filter_is_in() {
        let mut p = process(DEFAULT_CAPS);
        let original = p.capabilities().clone().unwrap();
        let s = plan(&mut p, Some(&profile())).unwrap();
        assert_eq!(s.restore_capabilities.as_ref(), Some(&original));
        let wide = p.capabilities().as_ref().unwrap();
        for set in [wide.bounding(), wide.permitted(), wide.effective()] {
            let set = set.as_ref().unwrap();
            for c in [
                Capability::SysAdmin,
                Capability::Setpcap,
                Capability::Chown,
                Capability::Kill,
            ] {
                assert!(set.contains(&c), "{c:?} missing from {set:?}");
            }
        }
        // What the process would not get anyway stays as it was.
        assert_eq!(wide.inheritable(), original.inheritable());
        assert_eq!(wide.ambient(), original.ambient());
    }

    #[test]
    fn a_process_that_already_may_install_is_left_alone() {
        let all = r#", "capabilities": {"bounding": ["CAP_SYS_ADMIN", "CAP_SETPCAP"],
            "effective": ["CAP_SYS_ADMIN", "CAP_SETPCAP"], "permitted": ["CAP_SYS_ADMIN", "CAP_SETPCAP"]}"#;
        let mut p = process(all);
        let before = p.clone();
        assert_eq!(
            plan(&mut p, Some(&profile())).unwrap().restore_capabilities,
            None
        );
        assert_eq!(p, before);
        // No capability set: libcontainer keeps all of them.
        let mut bare = process("");
        assert_eq!(
            plan(&mut bare, Some(&profile()))
                .unwrap()
                .restore_capabilities,
            None
        );
        assert!(bare.capabilities().is_none());
    }

    #[test]
    fn notify_profiles_are_recognised() {
        assert!(!uses_notify(&profile()));
        let notify: LinuxSeccomp = serde_json::from_str(
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]}"#,
        )
        .unwrap();
        assert!(uses_notify(&notify));
        let listener: LinuxSeccomp = serde_json::from_str(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/seccomp.sock"}"#,
        )
        .unwrap();
        assert!(uses_notify(&listener));
    }

    #[test]
    fn plans_round_trip_as_json() {
        let mut p = process(DEFAULT_CAPS);
        let s = plan(&mut p, Some(&profile())).unwrap();
        let back: ExecSeccomp = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
