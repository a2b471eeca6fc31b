//! The host side of the debug console (`[agent] debug_console = true`, `isola debug console`).
//!
//! The initrd carries no shell, so the default boot stays as small as it is. When the console
//! is enabled, the pod's VM gets `agent.debug_console=<DEBUG_CONSOLE_PORT>` on its kernel
//! command line ([`kernel_param`], added by [`crate::vm_config`]) and the shim copies the
//! configured static busybox to `<shared_dir>/.isola-debug/busybox` before boot ([`install`]),
//! which the agent sees at [`DEBUG_SHELL_GUEST_PATH`] once CreateSandbox has mounted the shared
//! directory. The copy goes away with the shared directory at teardown.

use std::path::{Path, PathBuf};

pub use isola_agent_proto::DEBUG_SHELL_GUEST_PATH;
use isola_agent_proto::{DEBUG_CONSOLE_PORT, DEBUG_DIR, DEBUG_SHELL};

/// The guest kernel parameter that makes the agent serve the debug console.
pub fn kernel_param() -> String {
    format!("agent.debug_console={DEBUG_CONSOLE_PORT}")
}

/// Where the shell binary goes in the sandbox's shared directory `shared_dir`.
pub fn host_path(shared_dir: &Path) -> PathBuf {
    shared_dir.join(DEBUG_DIR).join(DEBUG_SHELL)
}

/// Copies `busybox` (a static binary) into `shared_dir` for the guest's debug console and
/// returns where it went. Called before the VM boots, while nothing in the guest can write to
/// the shared directory yet.
pub fn install(shared_dir: &Path, busybox: &Path) -> Result<PathBuf, DebugShellError> {
    let target = host_path(shared_dir);
    let dir = shared_dir.join(DEBUG_DIR);
    std::fs::create_dir_all(&dir).map_err(|source| DebugShellError {
        what: format!("creating {}", dir.display()),
        source,
    })?;
    std::fs::copy(busybox, &target).map_err(|source| DebugShellError {
        what: format!(
            "copying the debug console's shell {} (agent.debug_busybox_path) to {}",
            busybox.display(),
            target.display()
        ),
        source,
    })?;
    Ok(target)
}

/// Failure to put the debug console's shell into the shared directory.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct DebugShellError {
    what: String,
    source: std::io::Error,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{vm_config, SandboxPaths};

    #[test]
    fn the_kernel_param_names_the_port_only_when_enabled() {
        assert_eq!(kernel_param(), "agent.debug_console=1027");
        let mut cfg = isola_config::Config::default();
        let paths = SandboxPaths::new(Path::new("/run/isola"), "s1");
        assert!(!vm_config(&cfg, "s1", &paths)
            .kernel_params
            .contains("debug_console"));
        cfg.agent.debug_console = true;
        assert_eq!(
            vm_config(&cfg, "s1", &paths).kernel_params,
            "agent.log=info agent.debug_console=1027"
        );
    }

    #[test]
    fn install_copies_the_shell_where_the_guest_looks() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("bb");
        std::fs::write(&src, b"\x7fELF").unwrap();
        let shared = tmp.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        let at = install(&shared, &src).unwrap();
        assert_eq!(at, shared.join(".isola-debug/busybox"));
        assert_eq!(std::fs::read(&at).unwrap(), b"\x7fELF");
        assert!(DEBUG_SHELL_GUEST_PATH.ends_with(".isola-debug/busybox"));
        let e = install(&shared, &tmp.path().join("missing")).unwrap_err();
        assert!(e.to_string().contains("agent.debug_busybox_path"), "{e}");
    }
}
