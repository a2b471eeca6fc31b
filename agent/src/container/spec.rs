//! Checking what the host sends before anything is created: ids, the OCI spec of a container,
//! the OCI process of an exec. Pure functions; every problem is an INVALID_ARGUMENT naming it.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxSeccomp, Process, Spec};

use super::inherit;
use crate::error::{AgentError, Result};
use crate::libct::seccomp;

/// The cgroup parent used when the spec names no (usable) cgroup path.
pub const DEFAULT_CGROUP_PARENT: &str = "/isola";

/// The OCI version written when the host's spec has none.
const DEFAULT_OCI_VERSION: &str = "1.0.2";

/// Checks a container id: non-empty, at most 256 bytes, only `[A-Za-z0-9_+.-]`, not `.`/`..`
/// (libcontainer's rule; the id also names directories in the guest).
pub fn check_container_id(id: &str) -> Result<()> {
    let valid_chars = id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.'));
    if id.is_empty() || id.len() > 256 || !valid_chars || id == "." || id == ".." {
        return Err(AgentError::InvalidArgument(format!(
            "container id {id:?} is not valid (1 to 256 characters from A-Z a-z 0-9 _ + - .)"
        )));
    }
    Ok(())
}

/// Checks an exec id: non-empty, at most 256 bytes, no control characters.
pub fn check_exec_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
        return Err(AgentError::InvalidArgument(format!(
            "exec id {id:?} is not valid (1 to 256 printable characters)"
        )));
    }
    Ok(())
}

/// A container's spec as the agent will hand it to libcontainer.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub spec: Spec,
    /// Whether the init process gets a pty.
    pub terminal: bool,
    /// The container's cgroup, relative to the cgroup v2 mount (`/isola/<id>`, ...).
    pub cgroup_path: PathBuf,
}

/// Parses and checks `oci_spec_json` for container `id`. `terminal` is the host's
/// `StdioConfig.terminal`; either it or the spec's `process.terminal` gives the process a pty.
/// Fills in what libcontainer needs and a translated spec may lack: `ociVersion`, a cgroup path
/// (`/isola/<id>` when absent or in systemd `slice:prefix:name` form).
pub fn container_spec(json: &[u8], id: &str, terminal: bool) -> Result<ContainerSpec> {
    let invalid = |what: String| AgentError::InvalidArgument(format!("container {id}: {what}"));
    let mut spec: Spec = serde_json::from_slice(json).map_err(|e| {
        invalid(format!(
            "oci_spec_json is not a valid OCI runtime spec: {e}"
        ))
    })?;
    if spec.version().is_empty() {
        spec.set_version(DEFAULT_OCI_VERSION.to_string());
    } else if !spec.version().starts_with("1.") {
        return Err(invalid(format!(
            "OCI spec version {:?} is not supported (1.x only)",
            spec.version()
        )));
    }
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| invalid("the OCI spec has no root".into()))?;
    if !root.path().is_absolute() {
        return Err(invalid(format!(
            "root.path {} must be an absolute path in the guest",
            root.path().display()
        )));
    }
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| invalid("the OCI spec has no process".into()))?;
    check_process(process).map_err(invalid)?;
    let terminal = terminal || process.terminal().unwrap_or(false);
    let mut process = process.clone();
    process.set_terminal(Some(terminal));
    inherit::normalize_no_new_privileges(&mut process);
    spec.set_process(Some(process));

    let linux = spec
        .linux()
        .as_ref()
        .ok_or_else(|| invalid("the OCI spec has no linux section".into()))?;
    if let Some(profile) = linux.seccomp() {
        check_seccomp(profile).map_err(|e| match e {
            SeccompProblem::Unsupported(what) => {
                AgentError::FailedPrecondition(format!("container {id}: {what}"))
            }
            SeccompProblem::Invalid(what) => invalid(what),
        })?;
    }
    let cgroup_path = cgroup_path(linux.cgroups_path().as_deref(), id);
    if cgroup_path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(invalid(format!(
            "linux.cgroupsPath {} must not contain \"..\"",
            cgroup_path.display()
        )));
    }
    let mut linux = linux.clone();
    linux.set_cgroups_path(Some(cgroup_path.clone()));
    spec.set_linux(Some(linux));
    Ok(ContainerSpec {
        spec,
        terminal,
        cgroup_path,
    })
}

/// Parses and checks the OCI process of an exec; returns it with `terminal` settled as in
/// [`container_spec`] and what it leaves out of its security settings taken from its
/// container's `process` ([`inherit`]).
pub fn exec_process(
    json: &[u8],
    id: &str,
    exec_id: &str,
    terminal: bool,
    container: &Process,
) -> Result<Process> {
    let invalid = |what: String| {
        AgentError::InvalidArgument(format!("container {id} exec {exec_id}: {what}"))
    };
    let mut process: Process = serde_json::from_slice(json)
        .map_err(|e| invalid(format!("process_json is not a valid OCI process: {e}")))?;
    check_process(&process).map_err(invalid)?;
    let terminal = terminal || process.terminal().unwrap_or(false);
    process.set_terminal(Some(terminal));
    inherit::inherit(&mut process, container);
    Ok(process)
}

/// Why a seccomp profile cannot be enforced.
enum SeccompProblem {
    /// This agent cannot (FAILED_PRECONDITION).
    Unsupported(String),
    /// Nobody could (INVALID_ARGUMENT).
    Invalid(String),
}

/// A profile the agent can enforce: never run a container unfiltered that asked for a filter.
fn check_seccomp(profile: &LinuxSeccomp) -> std::result::Result<(), SeccompProblem> {
    if seccomp::uses_notify(profile) {
        return Err(SeccompProblem::Invalid(
            "the seccomp profile uses user notification (SCMP_ACT_NOTIFY or listenerPath): the \
             listener would run on the host and the filter in the guest, which isola does not \
             support"
                .into(),
        ));
    }
    if !cfg!(feature = "seccomp") {
        return Err(SeccompProblem::Unsupported(
            "the spec has a seccomp profile, and this isola-agent was built without seccomp \
             support (feature `seccomp`); rebuild the guest image with `make guest`"
                .into(),
        ));
    }
    Ok(())
}

fn check_process(process: &Process) -> std::result::Result<(), String> {
    match process.args() {
        Some(args) if !args.is_empty() && !args[0].is_empty() => {}
        _ => return Err("process.args is missing or empty".into()),
    }
    if !process.cwd().is_absolute() {
        return Err(format!(
            "process.cwd {} must be an absolute path",
            process.cwd().display()
        ));
    }
    Ok(())
}

/// The cgroup path to use: the spec's when it is a plain path, else `/isola/<id>`.
fn cgroup_path(from_spec: Option<&Path>, id: &str) -> PathBuf {
    match from_spec {
        Some(p) if !p.as_os_str().is_empty() && !p.to_string_lossy().contains(':') => {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                Path::new("/").join(p)
            }
        }
        Some(p) => {
            if !p.as_os_str().is_empty() {
                tracing::warn!(container_id = id, cgroups_path = %p.display(),
                    "systemd-style cgroupsPath is not supported in the guest; using {DEFAULT_CGROUP_PARENT}/{id}");
            }
            Path::new(DEFAULT_CGROUP_PARENT).join(id)
        }
        None => Path::new(DEFAULT_CGROUP_PARENT).join(id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ttrpc::Code;

    const MINIMAL: &str = r#"{
        "ociVersion": "1.0.2",
        "root": {"path": "/run/isola/shared/c1/rootfs"},
        "process": {"args": ["/bin/sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "linux": {}
    }"#;

    fn err_text(r: Result<impl std::fmt::Debug>) -> String {
        let e = r.unwrap_err();
        assert_eq!(e.code(), Code::INVALID_ARGUMENT, "{e}");
        e.to_string()
    }

    #[test]
    fn ids() {
        for good in ["c1", "a.b-c_d+e", &"x".repeat(256)] {
            check_container_id(good).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(257)] {
            assert!(check_container_id(bad).is_err(), "{bad:?}");
        }
        check_exec_id("exec-1 with spaces").unwrap();
        assert!(check_exec_id("").is_err());
        assert!(check_exec_id("a\nb").is_err());
    }

    #[test]
    fn minimal_spec_is_completed() {
        let s = container_spec(MINIMAL.as_bytes(), "c1", false).unwrap();
        assert!(!s.terminal);
        assert_eq!(s.cgroup_path, Path::new("/isola/c1"));
        let linux = s.spec.linux().as_ref().unwrap();
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/isola/c1"))
        );
        assert_eq!(s.spec.process().as_ref().unwrap().terminal(), Some(false));
    }

    #[test]
    fn terminal_comes_from_either_side() {
        let s = container_spec(MINIMAL.as_bytes(), "c1", true).unwrap();
        assert!(s.terminal);
        assert_eq!(s.spec.process().as_ref().unwrap().terminal(), Some(true));
        let with_tty = MINIMAL.replace(r#""cwd": "/""#, r#""cwd": "/", "terminal": true"#);
        assert!(
            container_spec(with_tty.as_bytes(), "c1", false)
                .unwrap()
                .terminal
        );
    }

    #[test]
    fn version_is_filled_in_or_checked() {
        let no_version = MINIMAL.replace(r#""ociVersion": "1.0.2","#, "");
        let s = container_spec(no_version.as_bytes(), "c1", false).unwrap();
        assert_eq!(s.spec.version(), DEFAULT_OCI_VERSION);
        let v2 = MINIMAL.replace("1.0.2", "2.0.0");
        assert!(err_text(container_spec(v2.as_bytes(), "c1", false)).contains("2.0.0"));
    }

    #[test]
    fn cgroup_paths() {
        assert_eq!(
            cgroup_path(Some(Path::new("/kubepods/pod1/c1")), "c1"),
            Path::new("/kubepods/pod1/c1")
        );
        assert_eq!(
            cgroup_path(Some(Path::new("rel/c1")), "c1"),
            Path::new("/rel/c1")
        );
        assert_eq!(
            cgroup_path(Some(Path::new("system.slice:cri:c1")), "c1"),
            Path::new("/isola/c1")
        );
        assert_eq!(
            cgroup_path(Some(Path::new("")), "c1"),
            Path::new("/isola/c1")
        );
        assert_eq!(cgroup_path(None, "c1"), Path::new("/isola/c1"));
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        assert!(err_text(container_spec(b"{not json", "c1", false)).contains("not a valid OCI"));
        assert!(err_text(container_spec(b"42", "c1", false)).contains("not a valid OCI"));
        let no_root = r#"{"process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "linux": {}}"#;
        assert!(err_text(container_spec(no_root.as_bytes(), "c1", false)).contains("no root"));
        let no_process = r#"{"root": {"path": "/r"}, "linux": {}}"#;
        assert!(err_text(container_spec(no_process.as_bytes(), "c1", false)).contains("no process"));
        let no_args = MINIMAL.replace(r#"["/bin/sh"]"#, "[]");
        assert!(err_text(container_spec(no_args.as_bytes(), "c1", false)).contains("args"));
        let escape = MINIMAL.replace(
            r#""linux": {}"#,
            r#""linux": {"cgroupsPath": "/a/../../b"}"#,
        );
        assert!(err_text(container_spec(escape.as_bytes(), "c1", false)).contains("cgroupsPath"));
        let relative = MINIMAL.replace("/run/isola/shared/c1/rootfs", "rootfs");
        assert!(err_text(container_spec(relative.as_bytes(), "c1", false)).contains("absolute"));
        let no_linux = MINIMAL
            .replace(r#","linux": {}"#, "")
            .replace(r#", "linux": {}"#, "");
        let no_linux = no_linux.replace("\"linux\": {}", "\"hostname\": \"h\"");
        assert!(err_text(container_spec(no_linux.as_bytes(), "c1", false)).contains("linux"));
    }

    #[test]
    fn seccomp_profiles_are_enforced_or_refused() {
        let with = |profile: &str| {
            MINIMAL.replace(
                r#""linux": {}"#,
                &format!(r#""linux": {{"seccomp": {profile}}}"#),
            )
        };
        let notify = with(
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]}"#,
        );
        let e = container_spec(notify.as_bytes(), "c1", false).unwrap_err();
        assert_eq!(e.code(), Code::INVALID_ARGUMENT, "{e}");
        assert!(e.to_string().contains("SCMP_ACT_NOTIFY"), "{e}");
        let plain = with(r#"{"defaultAction": "SCMP_ACT_ALLOW"}"#);
        let r = container_spec(plain.as_bytes(), "c1", false);
        if cfg!(feature = "seccomp") {
            assert!(r
                .unwrap()
                .spec
                .linux()
                .as_ref()
                .unwrap()
                .seccomp()
                .is_some());
        } else {
            // Never a container without the filter it asked for.
            let e = r.unwrap_err();
            assert_eq!(e.code(), Code::FAILED_PRECONDITION, "{e}");
            assert!(e.to_string().contains("without seccomp support"), "{e}");
        }
    }

    #[test]
    fn an_explicit_false_no_new_privileges_is_normalised() {
        let nnp = |v: &str| {
            let json = MINIMAL.replace(
                r#""cwd": "/""#,
                &format!(r#""cwd": "/", "noNewPrivileges": {v}"#),
            );
            container_spec(json.as_bytes(), "c1", false)
                .unwrap()
                .spec
                .process()
                .as_ref()
                .unwrap()
                .no_new_privileges()
        };
        assert_eq!(nnp("false"), None);
        assert_eq!(nnp("true"), Some(true));
    }

    #[test]
    fn exec_processes_inherit_from_their_container() {
        let container: Process = serde_json::from_str(
            r#"{"args": ["sleep"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                "noNewPrivileges": true, "oomScoreAdj": 7}"#,
        )
        .unwrap();
        let p = exec_process(
            br#"{"args": ["ls"], "cwd": "/", "user": {"uid": 5, "gid": 5}}"#,
            "c1",
            "e1",
            false,
            &container,
        )
        .unwrap();
        assert_eq!(p.no_new_privileges(), Some(true));
        assert_eq!(p.oom_score_adj(), Some(7));
        assert_eq!(p.user().uid(), 5);
    }

    #[test]
    fn exec_processes() {
        let p = exec_process(
            br#"{"args": ["ls"], "cwd": "/tmp", "user": {"uid": 0, "gid": 0}}"#,
            "c1",
            "e1",
            true,
            &Process::default(),
        )
        .unwrap();
        assert_eq!(p.terminal(), Some(true));
        assert_eq!(p.args().as_ref().unwrap(), &["ls".to_string()]);
        assert!(err_text(exec_process(
            b"nope",
            "c1",
            "e1",
            false,
            &Process::default()
        ))
        .contains("e1"));
        assert!(err_text(exec_process(
            br#"{"cwd": "/", "user": {"uid": 0, "gid": 0}}"#,
            "c1",
            "e1",
            false,
            &Process::default()
        ))
        .contains("args"));
        assert!(err_text(exec_process(
            br#"{"args": ["ls"], "cwd": "tmp", "user": {"uid": 0, "gid": 0}}"#,
            "c1",
            "e1",
            false,
            &Process::default()
        ))
        .contains("cwd"));
    }
}
