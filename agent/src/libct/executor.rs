//! The executor of terminal processes: libcontainer's default executor, plus a window size for
//! a pty that has none (see [`crate::pty`], "Window size").
//!
//! libcontainer runs an executor's `validate` and `setup_envs` in the container process after it
//! has set up the console (the pty slave is fds 0-2) and before it tells its parent that it is
//! ready; `exec` comes after that, when the agent may already be resizing the terminal. So the
//! default size is set in `setup_envs`: before the program runs, and before any size from the
//! host can arrive (the agent learns the master only once the helper has finished), so it
//! never overwrites one.

use std::collections::HashMap;
use std::os::fd::AsFd;

use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{
    Executor, ExecutorError, ExecutorSetEnvsError, ExecutorValidationError,
};
use oci_spec::runtime::Spec;

use crate::pty;

/// [`DefaultExecutor`] that gives the process's terminal the default size first.
#[derive(Clone)]
pub struct TerminalExecutor;

impl Executor for TerminalExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }

    fn setup_envs(&self, envs: HashMap<String, String>) -> Result<(), ExecutorSetEnvsError> {
        // Best effort: a terminal without a size is a nuisance, not a reason to fail the
        // container (a seccomp profile applied just before could even forbid the ioctl).
        match pty::set_default_size(std::io::stdin().as_fd()) {
            Ok(true) => {
                tracing::debug!(size = ?pty::DEFAULT_SIZE, "gave the terminal its default size")
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot give the terminal a window size"),
        }
        DefaultExecutor {}.setup_envs(envs)
    }
}
