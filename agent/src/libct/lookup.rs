//! Finding the program a container process runs, as runc does.
//!
//! `process.args[0]` containing a `/` is used as it is (absolute, or relative to `cwd`); a bare
//! name is searched in the directories of the process's own `PATH`. When the spec sets no
//! `PATH` at all (images built `FROM scratch` have no `Env`), the search uses
//! [`DEFAULT_PATH`], the one containerd, Docker and `runc spec` write into specs; the process's
//! environment is left as the spec says. A candidate must be a regular file the process may
//! execute (`faccessat(X_OK, AT_EACCESS)` with its credentials, like runc's check), so a
//! directory or a file without execute permission named first in `PATH` is skipped, and a
//! program that cannot run fails before the container is created, with a message naming it.
//!
//! libcontainer's own executor refuses any spec without `PATH` and accepts only files that
//! are executable by "others"; isola's executor ([`super::executor`]) uses this instead.

use std::path::{Path, PathBuf};

/// The search path used when the process's environment has no `PATH`.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why a program was not found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("exec: {name:?}: executable file not found in $PATH ({path})")]
    NotInPath { name: String, path: String },
    #[error("exec: {name:?}: {reason}")]
    NotExecutable { name: String, reason: String },
    #[error("exec: the process has no program to run (process.args is empty)")]
    NoArgs,
}

/// What a candidate path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Candidate {
    /// A regular file the process may execute.
    Executable,
    /// Something else (the reason is shown when the program was named with a path).
    Not(String),
}

/// The value of `PATH` in `env` (`NAME=value` entries; the last one wins, as in execve).
pub fn path_var(env: &[String]) -> Option<&str> {
    env.iter().rev().find_map(|e| e.strip_prefix("PATH="))
}

/// Resolves `name` with the search path `path` ([`DEFAULT_PATH`] when `None`), asking `probe`
/// what each candidate is.
pub fn resolve(
    name: &str,
    path: Option<&str>,
    probe: impl Fn(&Path) -> Candidate,
) -> Result<PathBuf, LookupError> {
    if name.is_empty() {
        return Err(LookupError::NoArgs);
    }
    if name.contains('/') {
        let p = PathBuf::from(name);
        return match probe(&p) {
            Candidate::Executable => Ok(p),
            Candidate::Not(reason) => Err(LookupError::NotExecutable {
                name: name.to_string(),
                reason,
            }),
        };
    }
    let search = path.unwrap_or(DEFAULT_PATH);
    for dir in search.split(':') {
        // An empty entry is the current directory (POSIX, Go's LookPath).
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(name);
        if probe(&candidate) == Candidate::Executable {
            return Ok(candidate);
        }
    }
    Err(LookupError::NotInPath {
        name: name.to_string(),
        path: match path {
            Some(p) => format!("PATH={p}"),
            None => format!("no PATH in the environment; searched {DEFAULT_PATH}"),
        },
    })
}

/// What `path` is for the calling process (its current credentials and root).
pub fn probe(path: &Path) -> Candidate {
    use nix::unistd::{faccessat, AccessFlags};
    match std::fs::metadata(path) {
        Err(e) => Candidate::Not(e.to_string()),
        Ok(m) if !m.is_file() => Candidate::Not("not a regular file".into()),
        Ok(_) => match faccessat(
            nix::fcntl::AT_FDCWD,
            path,
            AccessFlags::X_OK,
            nix::fcntl::AtFlags::AT_EACCESS,
        ) {
            Ok(()) => Candidate::Executable,
            Err(e) => Candidate::Not(format!("permission to execute: {e}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn fake(files: &[(&str, Candidate)]) -> impl Fn(&Path) -> Candidate {
        let map: HashMap<PathBuf, Candidate> = files
            .iter()
            .map(|(p, c)| (PathBuf::from(p), c.clone()))
            .collect();
        move |p: &Path| {
            map.get(p)
                .cloned()
                .unwrap_or_else(|| Candidate::Not("No such file or directory".into()))
        }
    }

    #[test]
    fn names_with_a_slash_are_used_as_they_are() {
        let probe = fake(&[("/pause", Candidate::Executable)]);
        assert_eq!(
            resolve("/pause", None, &probe).unwrap(),
            Path::new("/pause")
        );
        let e = resolve("./missing", Some("/bin"), &probe).unwrap_err();
        assert!(e.to_string().contains("No such file"), "{e}");
    }

    #[test]
    fn bare_names_use_the_process_path_in_order_skipping_what_cannot_run() {
        let probe = fake(&[
            ("/a/tool", Candidate::Not("not a regular file".into())),
            ("/b/tool", Candidate::Executable),
            ("/c/tool", Candidate::Executable),
        ]);
        assert_eq!(
            resolve("tool", Some("/a:/b:/c"), &probe).unwrap(),
            Path::new("/b/tool")
        );
        let e = resolve("tool", Some("/x:/y"), &probe).unwrap_err();
        assert_eq!(
            e,
            LookupError::NotInPath {
                name: "tool".into(),
                path: "PATH=/x:/y".into()
            }
        );
    }

    #[test]
    fn without_path_the_default_search_path_is_used() {
        let probe = fake(&[("/usr/bin/sh", Candidate::Executable)]);
        assert_eq!(
            resolve("sh", None, &probe).unwrap(),
            Path::new("/usr/bin/sh")
        );
        let e = resolve("nope", None, &probe).unwrap_err().to_string();
        assert!(e.contains("no PATH") && e.contains(DEFAULT_PATH), "{e}");
    }

    #[test]
    fn an_empty_path_entry_is_the_working_directory() {
        let probe = fake(&[("./run", Candidate::Executable)]);
        assert_eq!(
            resolve("run", Some("/bin:"), &probe).unwrap(),
            Path::new("./run")
        );
        assert_eq!(resolve("", None, &probe).unwrap_err(), LookupError::NoArgs);
    }

    #[test]
    fn the_last_path_entry_of_the_environment_wins() {
        let env = vec!["A=1".to_string(), "PATH=/one".into(), "PATH=/two".into()];
        assert_eq!(path_var(&env), Some("/two"));
        assert_eq!(path_var(&["HOME=/".to_string()]), None);
    }

    #[test]
    fn the_real_probe_checks_kind_and_permission() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("run");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o750)).unwrap();
        // Owner-executable only (libcontainer's own check wants the "others" bit).
        assert_eq!(probe(&script), Candidate::Executable);
        let data = dir.path().join("data");
        std::fs::write(&data, "x").unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(probe(&data), Candidate::Not(r) if r.contains("execute")));
        assert!(matches!(probe(dir.path()), Candidate::Not(r) if r.contains("regular")));
        assert!(matches!(probe(&dir.path().join("none")), Candidate::Not(_)));
    }
}
