//! isola's executor: how a container process, init or exec, becomes its program.
//!
//! libcontainer runs an executor's `validate` and `setup_envs` in the container process after
//! it has joined or created the namespaces, set up the console (a pty slave on fds 0-2), the
//! user and the capabilities, and before it tells its parent that it is ready; `exec` comes
//! last. Compared with libcontainer's default executor, this one:
//!
//! * finds the program as runc does ([`super::lookup`]): a spec without `PATH` still runs
//!   absolute paths and bare names (libcontainer's refuses it outright);
//! * gives a terminal that has no size the default one, in `setup_envs`: before the program
//!   runs and before any size from the host can arrive (the agent learns the master only once
//!   the helper has finished), so it never overwrites one (see [`crate::pty`], "Window size");
//! * installs the container's seccomp filter in an exec'd process right before `execve`
//!   ([`super::seccomp`]), which libcontainer does not do for execs.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::AsFd;
use std::path::PathBuf;

use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{
    Executor, ExecutorError, ExecutorSetEnvsError, ExecutorValidationError,
};
use oci_spec::runtime::Spec;

use super::lookup;
use super::seccomp::{self, ExecSeccomp};
use crate::pty;

/// The executor of every container process the helper starts.
#[derive(Clone, Default)]
pub struct ProcessExecutor {
    /// The process has a terminal (give it the default size if it has none).
    pub terminal: bool,
    /// The container's seccomp filter, for an exec'd process.
    pub seccomp: Option<ExecSeccomp>,
}

/// The program `spec`'s process runs, found as runc finds it.
fn program(spec: &Spec) -> Result<(PathBuf, Vec<String>), String> {
    let process = spec.process().as_ref().ok_or("the spec has no process")?;
    let args = process.args().clone().unwrap_or_default();
    let env = process.env().clone().unwrap_or_default();
    let name = args.first().map(String::as_str).unwrap_or_default();
    let path =
        lookup::resolve(name, lookup::path_var(&env), lookup::probe).map_err(|e| e.to_string())?;
    Ok((path, args))
}

fn cstring(s: &str) -> Result<CString, ExecutorError> {
    CString::new(s).map_err(|_| ExecutorError::Other(format!("{s:?} contains a NUL byte")))
}

impl Executor for ProcessExecutor {
    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        program(spec)
            .map(|_| ())
            .map_err(ExecutorValidationError::ArgValidationError)
    }

    fn setup_envs(&self, envs: HashMap<String, String>) -> Result<(), ExecutorSetEnvsError> {
        if self.terminal {
            // Best effort: a terminal without a size is a nuisance, not a reason to fail the
            // process.
            match pty::set_default_size(std::io::stdin().as_fd()) {
                Ok(true) => {
                    tracing::debug!(size = ?pty::DEFAULT_SIZE, "gave the terminal its default size")
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot give the terminal a window size"),
            }
        }
        DefaultExecutor {}.setup_envs(envs)
    }

    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        // Found before the filter is in: the profile may forbid what finding it takes.
        let (path, args) = program(spec).map_err(ExecutorError::Other)?;
        let path = cstring(&path.to_string_lossy())?;
        let args = args
            .iter()
            .map(|a| cstring(a))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(s) = &self.seccomp {
            seccomp::install(s).map_err(ExecutorError::Other)?;
        }
        // The environment is the process's own (set by setup_envs).
        let err = nix::unistd::execv(&path, &args).unwrap_err();
        Err(ExecutorError::Other(format!("executing {path:?}: {err}")))
    }
}
